"""No wrong number, no raw traceback: degenerate data, extreme scales and bad starts.

Each test is a data set on which a fit once gave a wrong number reported as
converged, or a raw NumPy error; the data are in tests/reference/repro.  lme4's
values quoted here are from lme4 1.1 on the same CSV files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import optim
from mixedjax.fitting import ConvergenceWarning

REPRO = Path(__file__).parent / "reference" / "repro"


@pytest.fixture(scope="module")
def sleep():
    return mixedjax.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def dfile():
    return pd.read_csv(REPRO / "D.csv")


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = mixedjax.lmer(*args, **kwargs)
    return m, caught


# ----------------------------------------------------------------------------------
# Prior weights: a common factor changes sigma and theta only
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("formula", ["y ~ x + (1|g)", "y ~ x + (x|g)"])
@pytest.mark.parametrize("w", [1e-20, 1e-50, 1e-300, 1e100, 1e250])
def test_uniform_weights_do_not_move_beta(dfile, formula, w):
    """Weights c give the unweighted fit with sigma * c^1/2 and theta * c^-1/2
    (residual variance sigma^2 / w); lme4 itself moves beta at c = 1e-20
    ([0.6741, 0.0231])."""
    base = mixedjax.lmer(formula, dfile)
    m, caught = _quiet_fit(formula, dfile, weights=np.full(len(dfile), w))
    assert m.converged and not caught
    assert "limit" not in m.optinfo["message"]
    np.testing.assert_allclose(m.fixef, base.fixef, rtol=1e-6, atol=1e-8)
    assert m.objective == pytest.approx(base.objective, rel=1e-9)
    assert m.sigma / np.sqrt(w) == pytest.approx(base.sigma, rel=1e-6)
    np.testing.assert_allclose(m.theta * np.sqrt(w), base.theta, rtol=1e-4, atol=1e-4)
    if formula == "y ~ x + (1|g)":
        np.testing.assert_allclose(m.fixef, [0.6850381, 0.2463772], atol=5e-7)


def test_uniform_weights_newton(dfile):
    """The compiled Newton fit searches in the same scaled coordinates."""
    model = mixedjax.LMM.from_formula("y ~ x + (1|g)", dfile, weights=np.full(len(dfile), 1e-20))
    m = model.fit(optimizer="newton")
    assert m.converged
    np.testing.assert_allclose(m.fixef, [0.6850381, 0.2463772], atol=5e-7)


def test_weights_too_extreme_are_a_clear_error(dfile):
    with pytest.raises(ValueError, match="too large"):
        mixedjax.lmer("y ~ x + (1|g)", dfile, weights=np.full(len(dfile), 1e305))


# ----------------------------------------------------------------------------------
# Badly scaled random-effects columns
# ----------------------------------------------------------------------------------
def test_uncentred_random_slope_reaches_the_centred_optimum():
    """x near 1e4 in a random slope: lme4 stops at -5.977668 (singular); the model is
    the same as with x centred (a reparametrization of the random term), whose
    optimum is -7.755369."""
    d = pd.read_csv(REPRO / "xbig_slope.csv")
    m, _ = _quiet_fit("y ~ x + (x | g)", d)
    centred, _ = _quiet_fit("y ~ x + (x | g)", d.assign(x=d.x - d.x.mean()))
    assert m.converged
    assert centred.objective == pytest.approx(-7.755369, abs=1e-5)
    assert m.objective <= centred.objective + 1e-6
    np.testing.assert_allclose(m.fixef["x"], centred.fixef["x"], rtol=1e-4)


def test_eight_row_slope_design_fits():
    """lme4 stops on this 8-row design at REML criterion 7.187803; it once raised
    LinAlgError here.  Searched in centred columns, the fit converges to the
    optimum of the same model with x0 centred (6.1483: two groups whose intercept
    variance is 1e9 residual variances, so the criterion is exact to ~1e-4 only)."""
    d = pd.read_csv(REPRO / "phaseC_min.csv")
    m, caught = _quiet_fit("y ~ x0 + (x0 | g0)", d)
    centred, _ = _quiet_fit("y ~ x0 + (x0 | g0)", d.assign(x0=d.x0 - d.x0.mean()))
    assert m.converged and not caught
    assert m.optinfo["coordinates"] == "centred random-effects columns"
    assert m.objective == pytest.approx(centred.objective, abs=1e-3)
    assert m.objective < 7.187803 - 1.0
    np.testing.assert_allclose(m.fixef["x0"], centred.fixef["x0"], rtol=1e-3)


def test_high_r_squared_criterion_is_exact():
    """repro/highR2.csv (R^2 near 1): at a fixed theta the REML criterion of
    y ~ x0 + (1 | g0) equals a 50-digit computation
    (reference/make_highr2_reference.py); raw cross-products were off by 4e-4."""
    d = pd.read_csv(REPRO / "highR2.csv")
    model = mixedjax.LMM.from_formula("y ~ x0 + (1 | g0)", d)
    theta = np.array([1.2791222933900102])
    reference = -172.05167589957013629
    assert model.eager.value(theta) == pytest.approx(reference, rel=1e-11)
    assert float(model.objective(theta)) == pytest.approx(reference, rel=1e-11)
    m = mixedjax.lmer("y ~ x0 + (1 | g0)", d)
    assert m.converged
    assert m.objective <= reference + 1e-9 * abs(reference)


def test_shifted_random_slope_matches_unshifted(sleep):
    """Days + 1e4 in a random slope is the same model as Days (lme4: 1743.628)."""
    m, _ = _quiet_fit("Reaction ~ Days + (Days | Subject)", sleep.assign(Days=sleep.Days + 1e4))
    assert m.objective == pytest.approx(1743.6282722, abs=1e-5)
    assert m.fixef["Days"] == pytest.approx(10.467286, abs=1e-5)


def test_nested_uncorrelated_slopes_fit():
    """A nested design with three uncorrelated slopes: once 'Eigenvalues did not
    converge' (LAPACK, from a difference Hessian with NaN entries)."""
    rng = np.random.default_rng(7)
    n = 40
    a = rng.integers(0, 3, n)
    d = pd.DataFrame({"a": [f"a{v}" for v in a],
                      "b": [f"b{v}" for v in a * 3 + rng.integers(0, 3, n)]})
    for j, scale in zip((1, 2, 3), (1.0, 100.0, 1.0)):
        d[f"x{j}"] = rng.normal(size=n) * scale + 1000.0
    d["y"] = rng.normal(size=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = mixedjax.lmer("y ~ x1 + (x1 + x2 + x3 || a/b)", d)
    assert np.isfinite(m.objective) and np.all(np.isfinite(m.theta))


# ----------------------------------------------------------------------------------
# Degenerate responses
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("formula", ["Reaction ~ Days + (1|Subject)",
                                     "Reaction ~ Days + (Days|Subject)"])
@pytest.mark.parametrize("response", ["constant", "exact"])
def test_response_fitted_exactly_warns(sleep, formula, response):
    """A constant response and Reaction = 2 Days (lme4 fits both, with warnings):
    finite numbers, the fixed effects exact, and a warning that sigma and the
    variance components are round-off."""
    y = np.full(len(sleep), 300.0) if response == "constant" else 2.0 * sleep.Days
    with pytest.warns(UserWarning, match="exactly up to round-off"):
        m = mixedjax.lmer(formula, sleep.assign(Reaction=y))
    expected = [300.0, 0.0] if response == "constant" else [0.0, 2.0]
    np.testing.assert_allclose(m.fixef, expected, atol=1e-9)
    assert np.isfinite(m.objective) and m.sigma < 1e-10


def test_zero_response_is_a_clear_error(sleep):
    with pytest.raises(ValueError, match="exactly"):
        mixedjax.lmer("Reaction ~ Days + (1|Subject)", sleep.assign(Reaction=0.0))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("factor,match", [(1e152, "too large"), (1e200, "too large"),
                                          (1e-172, "too small"), (1e-300, "too small")])
def test_response_out_of_float64_range_is_a_clear_error(sleep, factor, match):
    with pytest.raises(ValueError, match=match):
        mixedjax.lmer("Reaction ~ Days + (1|Subject)",
                      sleep.assign(Reaction=sleep.Reaction * factor))


@pytest.mark.parametrize("factor", [1e-140, 1e140])
def test_response_scale_moves_the_criterion_by_a_constant(sleep, factor):
    """y -> c y: the REML criterion moves by (n - p) log c^2, nothing else changes."""
    f = "Reaction ~ Days + (Days|Subject)"
    base = mixedjax.lmer(f, sleep)
    m = mixedjax.lmer(f, sleep.assign(Reaction=sleep.Reaction * factor))
    assert m.converged
    shift = 178 * 2.0 * np.log(factor)
    assert m.objective - shift == pytest.approx(base.objective, rel=1e-9)
    np.testing.assert_allclose(m.theta, base.theta, rtol=1e-4, atol=1e-5)


def test_lme_constant_response_warns(sleep):
    """nlme's lme fits a constant response to a log-likelihood of 5027 without a word;
    here the fit warns that sigma is round-off."""
    with pytest.warns(UserWarning, match="exactly up to round-off"):
        m = mixedjax.lme("Reaction ~ Days", sleep.assign(Reaction=300.0),
                         random="~ 1 | Subject")
    np.testing.assert_allclose(np.asarray(m.fixef, float), [300.0, 0.0], atol=1e-8)


def test_cli_constant_response_has_no_traceback(tmp_path, sleep, capsys):
    from mixedjax.cli import main
    path = tmp_path / "const.csv"
    sleep.assign(Reaction=0.0).to_csv(path, index=False)
    assert main(["fit", str(path), "Reaction ~ Days + (1 | Subject)"]) == 2
    assert "exactly" in capsys.readouterr().err


# ----------------------------------------------------------------------------------
# Starts and the iteration limit
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("theta0,match", [([np.nan], "finite"), ([np.inf], "finite"),
                                          ([1e10], "cannot be evaluated"),
                                          ("a", "numeric"), ([1.0, 2.0], "entries")])
def test_bad_theta0_is_a_clear_error(sleep, theta0, match):
    with pytest.raises((ValueError, TypeError), match=match):
        mixedjax.lmer("Reaction ~ Days + (1|Subject)", sleep, theta0=theta0)


@pytest.mark.parametrize("max_iter", [-1, 0, 1.5, True])
def test_bad_max_iter_is_a_clear_error(sleep, max_iter):
    with pytest.raises(ValueError, match="max_iter"):
        mixedjax.lmer("Reaction ~ Days + (1|Subject)", sleep, max_iter=max_iter)


@pytest.mark.parametrize("max_iter", [1, 2, 3])
@pytest.mark.parametrize("optimizer", ["bfgs", "newton"])
def test_iteration_limit_is_never_reported_as_converged(sleep, max_iter, optimizer):
    model = mixedjax.LMM.from_formula("Reaction ~ Days + (Days|Subject)", sleep)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = model.fit(max_iter=max_iter, optimizer=optimizer)
    msg = m.optinfo["message"]
    assert not (m.converged and "limit" in msg)
    if not m.converged:
        assert any(issubclass(w.category, ConvergenceWarning) for w in caught)


# ----------------------------------------------------------------------------------
# The optimizer's eager rules on non-finite input
# ----------------------------------------------------------------------------------
def test_eager_eigh_of_a_non_finite_matrix():
    evals, evecs = optim.safe_eigh(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    assert np.all(np.isnan(evals)) and evecs.shape == (2, 2)
    ok, _ = optim.final_test(np.zeros(2), np.full((2, 2), np.nan), 1e-6, optim.EAGER)
    assert not ok


def test_difference_hessian_steps_back_from_an_undefined_region():
    """Forward points past x = 1 + 1e-7 are undefined (NaN gradient): the columns are
    taken backwards."""
    def grad(x):
        return np.where(x > 1.0 + 1e-7, np.nan, 2.0 * (x - 1.0))
    x = np.ones(2)
    H = optim.fd_hessian(grad, x, grad(x))
    np.testing.assert_allclose(H, 2.0 * np.eye(2), rtol=1e-6)


def test_bfgs_from_a_point_with_undefined_neighbours():
    def value_grad(x):
        if x[0] > 1.0 + 1e-7:
            return np.inf, np.full(2, np.nan)
        return float(np.sum((x - 1.0) ** 2)), 2.0 * (x - 1.0)
    res = optim.minimize_bfgs_eager(value_grad, np.array([0.2, 0.3]))
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-6)


# ----------------------------------------------------------------------------------
# Batched refits: a fit at a local minimum is checked against other starts
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,start", [("a", [1.0, -1.0, 5.0]), ("b", [1.0, -1.0, 0.1])])
def test_batched_refit_leaves_a_local_minimum(name, start):
    """A random slope with five groups (ML): Newton from ``start`` stops at a
    singular local minimum (34.545, 43.699), and from lme4's start too; the batched
    refit checks it against lme4's start and a start near 0 and agrees with the
    single fits (34.282, 43.626)."""
    d = pd.read_csv(REPRO / f"slope_local_min_{name}.csv")
    f = "y ~ x + (x | g)"
    m = mixedjax.lmer(f, d, reml=False)
    Y = np.stack([d.y.to_numpy(), d.y.to_numpy()[::-1]])
    batch = m.refit_many(Y, theta0=np.asarray(start))
    single = [mixedjax.lmer(f, d.assign(y=y), reml=False).objective for y in Y]
    assert batch.converged.all()
    np.testing.assert_allclose(batch.objective, single, rtol=1e-8)


# ----------------------------------------------------------------------------------
# Found by benchmarks/probes.py
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [1e200, 1e-200, 1e300, 1e-300])
def test_covariate_on_an_extreme_scale_is_kept(dfile, factor):
    """x * 1e200 is not aliased: the rank test is relative to each column's norm,
    which once overflowed (1e-200: underflowed) and dropped the column."""
    base = mixedjax.lmer("y ~ x + (1|g)", dfile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mixedjax.lmer("y ~ x + (1|g)", dfile.assign(x=dfile.x * factor))
    assert list(m.fixef.index) == ["(Intercept)", "x"]
    assert m.converged
    np.testing.assert_allclose(m.theta, base.theta, rtol=1e-6)
    assert m.fixef["x"] * factor == pytest.approx(base.fixef["x"], rel=1e-8)
    assert m.fixef["(Intercept)"] == pytest.approx(base.fixef["(Intercept)"], rel=1e-8)
    # REML's log|X'V^-1 X| moves by 2 log(factor); the deviance does not move.
    assert m.objective == pytest.approx(base.objective + 2 * np.log(factor), rel=1e-9)


@pytest.mark.parametrize("reml", ["no", "yes", 2, None])
def test_reml_must_be_a_flag(sleep, reml):
    with pytest.raises(TypeError, match="reml must be True or False"):
        mixedjax.lmer("Reaction ~ Days + (1|Subject)", sleep, reml=reml)


def test_numbers_in_an_object_column_are_numeric(dfile):
    """An object column of numbers is a covariate, as R reads it, not a factor with
    one level per value; an object column of complex numbers is a TypeError."""
    base = mixedjax.lmer("y ~ x + (1|g)", dfile)
    obj = dfile.assign(x=dfile.x.astype(object))
    obj.loc[obj.index[3], "x"] = None
    m = mixedjax.lmer("y ~ x + (1|g)", obj)
    assert list(m.fixef.index) == ["(Intercept)", "x"] and m.nobs == len(dfile) - 1
    assert m.n_dropped == 1
    assert m.objective != pytest.approx(base.objective)   # one row fewer, same model
    full = mixedjax.lmer("y ~ x + (1|g)", dfile.assign(x=dfile.x.astype(object)))
    assert full.objective == pytest.approx(base.objective, rel=1e-12)
    with pytest.raises(TypeError, match="column 'x' has complex values"):
        mixedjax.lmer("y ~ x + (1|g)", dfile.assign(x=dfile.x.astype(complex).astype(object)))


@pytest.mark.parametrize("optimizer", ["bfgs", "newton"])
@pytest.mark.parametrize("formula,k,optimum", [
    ("Reaction ~ Days + (1|Subject)", 1, 1786.4650854),
    ("Reaction ~ Days + (Days|Subject)", 3, 1743.6282720)])
def test_start_at_zero_leaves_the_saddle(sleep, optimizer, formula, k, optimum):
    """theta = 0 is a stationary point (the criterion is even in each variance's
    factor); lme4 from start = 0 reaches the optimum, and so must both methods."""
    m, caught = _quiet_fit(formula, sleep, theta0=[0.0] * k, optimizer=optimizer)
    assert m.converged and not caught
    assert m.objective == pytest.approx(optimum, abs=1e-6)


def test_response_constant_within_groups_is_flagged(sleep):
    """y constant within each subject: the random intercepts fit it exactly, the
    criterion falls without bound as sigma -> 0 (lme4 stops at theta 3e4).  The fit
    must not pass as converged and must say why its numbers are round-off."""
    y = sleep.groupby("Subject", observed=True).Reaction.transform("mean")
    with pytest.warns(mixedjax.ConvergenceWarning, match="random effects fit the response"):
        m = mixedjax.lmer("Reaction ~ 1 + (1|Subject)", sleep.assign(Reaction=y))
    assert not m.converged


@pytest.mark.parametrize("optimizer", ["bfgs", "newton"])
def test_singular_fit_from_the_moment_start_is_checked_from_lme4s(optimizer):
    """A design where the moment start leads to a local minimum with two variances
    at 0 (28.9117) while lme4's start (theta = 1) lies below it (28.8373) and leads
    to 26.0966: the fit is checked from lme4's start and keeps the better one
    (found by the thorough hypothesis profile)."""
    d = pd.DataFrame({
        "x": [-2.249148, -0.566925, 1.438216, 0.327970, 0.699823, -0.903404, 0.547263,
              0.935699, 0.005422, 0.581553, -0.123649, 0.706636],
        "g0": ["L1", "L3", "L0", "L3", "L0", "L2", "L4", "L4", "L3", "L0", "L4", "L4"],
        "g1": ["L0", "L1", "L0", "L0", "L1", "L0", "L0", "L1", "L1", "L2", "L1", "L0"],
        "y": [-0.023273, -0.844960, 1.551456, 1.370822, 0.147562, -0.388446, np.nan,
              3.321443, 0.299749, 2.773788, 1.030606, np.nan]})
    formula = "y ~ x + (x || g0) + (1 | g1)"
    model = mixedjax.LMM.from_formula(formula, d)
    local, _ = _quiet_fit(formula, d, optimizer=optimizer, theta0=model.start_theta())
    assert local.objective == pytest.approx(28.9117278, abs=1e-6)
    m, _ = _quiet_fit(formula, d, optimizer=optimizer)
    assert m.converged
    assert m.objective == pytest.approx(26.0966, abs=1e-3)
    assert m.objective <= model.eager.value(model.initial_theta())
    np.testing.assert_array_equal(m.optinfo["theta0"], model.initial_theta())
