"""Confidence intervals (profile, Wald, bootstrap) against lme4's confint, and
prediction intervals against the dense marginal-model formula."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.linalg import block_diag

import mixedjax
from mixedjax.inference.confint import _Profiler, percent_labels, profile_zeta
from mixedjax.inference.params import parameter_names

from conftest import REF, case_data

with open(REF / "inference_reference.json") as fh:
    INFERENCE = json.load(fh)
with open(REF / "lrt_confint_reference.json") as fh:
    LRT_CI = json.load(fh)
PROFILE = LRT_CI["profile"]


def _num(values):
    return np.array([np.nan if v == "NA" else v for v in values], dtype=float)


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-12)


_MODELS = {
    "sleepstudy": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", ["Subject"]),
    "tablets": ("tablets", "y ~ method + (1 | tablet)", ["tablet", "method"]),
    "penicillin": ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)",
                   ["plate", "sample"]),
    "dyestuff": ("dyestuff", "Yield ~ 1 + (1 | Batch)", ["Batch"]),
    "dyestuff2": ("dyestuff2", "Yield ~ 1 + (1 | Batch)", ["Batch"]),
    "machines": ("machines", "score ~ Machine + (Machine | Worker)", ["Worker", "Machine"]),
}


@pytest.fixture(scope="module")
def fits():
    return {key: mixedjax.lmer(formula, case_data(data, factors))
            for key, (data, formula, factors) in _MODELS.items()}


@pytest.fixture(scope="module")
def profiles(fits):
    """Profile intervals of every fit at 95% (dyestuff also at 90%)."""
    out = {key: fit.confint() for key, fit in fits.items()}
    out["dyestuff_90"] = fits["dyestuff"].confint(level=0.90)
    return out


# ----------------------------------------------------------------------------------
# Profile intervals
# ----------------------------------------------------------------------------------
def test_profile_sleepstudy_matches_lme4(profiles):
    ref = INFERENCE["sleepstudy_confint"]
    ci = profiles["sleepstudy"]
    assert list(ci.index) == ref["names"]
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    assert _rel(ci["2.5 %"], ref["profile_lower"]).max() < 1e-3
    assert _rel(ci["97.5 %"], ref["profile_upper"]).max() < 1e-3
    # A REML fit is profiled on the ML deviance, as lme4: the same intervals as
    # lme4 gives for the ML fit, here on its fine grid.
    fine = PROFILE["sleepstudy_ml"]
    assert _rel(ci["2.5 %"], fine["fine_lower"]).max() < 1e-5
    assert _rel(ci["97.5 %"], fine["fine_upper"]).max() < 1e-5


def test_profile_tablets_matches_lme4(profiles):
    ref = INFERENCE["tablets_confint"]
    ci = profiles["tablets"]
    assert list(ci.index) == ref["names"]
    assert _rel(ci["2.5 %"], ref["profile_lower"]).max() < 1e-3
    assert _rel(ci["97.5 %"], ref["profile_upper"]).max() < 1e-3


@pytest.mark.parametrize("case,key", [("penicillin", "penicillin"), ("dyestuff", "dyestuff"),
                                      ("dyestuff_90", "dyestuff_90"),
                                      ("dyestuff2_singular", "dyestuff2")])
def test_profile_matches_lme4(profiles, case, key):
    ref = PROFILE[case]
    ci = profiles[key]
    assert list(ci.index) == ref["names"]
    assert list(ci.columns) == percent_labels(ref["level"])
    lower, upper = ci.iloc[:, 0].to_numpy(), ci.iloc[:, 1].to_numpy()
    # lme4's default grid and spline interpolation are accurate to about 1e-4;
    # its fine grid (delta = cutoff / 64) to about 1e-6.
    for mine, default, fine in ((lower, ref["lower"], ref["fine_lower"]),
                                (upper, ref["upper"], ref["fine_upper"])):
        zero = _num(fine) == 0
        np.testing.assert_array_equal(mine[zero], 0.0)  # an sd whose profile reaches 0
        assert _rel(mine[~zero], _num(default)[~zero]).max() < 1e-3
        assert _rel(mine[~zero], _num(fine)[~zero]).max() < 1e-5


def test_profile_three_correlations_matches_lme4_fine_grid(profiles):
    # A 3 x 3 covariance: holding one correlation constrains the others.  lme4's
    # default grid warns ("non-monotonic profile", "bad spline fit") and is off by
    # up to 0.15 here; its fine grid agrees with the exact profile.
    ref = PROFILE["machines_slopes"]
    assert ref["warnings"]
    ci = profiles["machines"]
    assert list(ci.index) == ref["names"]
    assert _rel(ci["2.5 %"], ref["fine_lower"]).max() < 1e-5
    assert _rel(ci["97.5 %"], ref["fine_upper"]).max() < 1e-5


@pytest.mark.parametrize("case,key", [("penicillin", "penicillin"), ("dyestuff", "dyestuff"),
                                      ("dyestuff2_singular", "dyestuff2")])
def test_profile_starts_at_ml_estimates(fits, case, key):
    ref = PROFILE[case]
    prof = _Profiler(fits[key])
    assert prof.dev_ml == pytest.approx(ref["ml_deviance"], rel=1e-9)
    np.testing.assert_allclose(prof.s_hat, ref["ml_sdcor"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(prof.beta_hat, ref["ml_fixef"], rtol=1e-7)


def test_zeta_at_bounds_is_the_normal_quantile(fits, profiles):
    fit, ci = fits["dyestuff"], profiles["dyestuff"]
    crit = stats.norm.ppf(0.975)
    for name in ci.index:
        z = profile_zeta(fit, name, ci.loc[name].to_numpy())
        np.testing.assert_allclose(z, [-crit, crit], rtol=1e-7)
    # zeta is 0 at the ML estimate and monotone along the profile.
    ref = PROFILE["dyestuff"]
    # (zeta is the square root of a deviance difference: round-off 1e-12 gives 1e-6)
    assert profile_zeta(fit, "(Intercept)", ref["ml_fixef"])[0] == pytest.approx(0, abs=1e-5)
    grid = np.linspace(ci.loc["sigma"].iloc[0], ci.loc["sigma"].iloc[1], 5)
    assert np.all(np.diff(profile_zeta(fit, "sigma", grid)) > 0)


def test_parm_selects_rows(fits, profiles):
    fit, full = fits["sleepstudy"], profiles["sleepstudy"]
    beta = fit.confint(parm="beta_")
    assert list(beta.index) == ["(Intercept)", "Days"]
    np.testing.assert_allclose(beta.to_numpy(), full.loc[beta.index].to_numpy(), rtol=1e-8)
    theta = fit.confint(parm="theta_")
    assert list(theta.index) == parameter_names(fit)[:4]
    picked = fit.confint(parm=["sigma", "Days"])
    assert list(picked.index) == ["sigma", "Days"]
    np.testing.assert_allclose(picked.to_numpy(), full.loc[["sigma", "Days"]].to_numpy(),
                               rtol=1e-8)


# ----------------------------------------------------------------------------------
# Wald intervals and labels
# ----------------------------------------------------------------------------------
def test_wald_sleepstudy_matches_lme4(fits):
    ref = INFERENCE["sleepstudy_confint"]
    ci = fits["sleepstudy"].confint(method="wald")
    assert list(ci.index) == ref["names"]
    for col, key in (("2.5 %", "wald_lower"), ("97.5 %", "wald_upper")):
        expected = _num(ref[key])
        assert np.all(np.isnan(ci[col].to_numpy()[np.isnan(expected)]))
        ok = ~np.isnan(expected)
        assert _rel(ci[col].to_numpy()[ok], expected[ok]).max() < 1e-6


def test_wald_tablets_level_90(fits):
    ref = LRT_CI["wald"]["tablets_90"]
    ci = fits["tablets"].confint(method="Wald", level=0.9)
    assert list(ci.columns) == ref["columns"]
    assert list(ci.index) == ref["names"]
    for col, key in zip(ref["columns"], ("lower", "upper")):
        expected = _num(ref[key])
        ok = ~np.isnan(expected)
        assert np.all(np.isnan(ci[col].to_numpy()[~ok]))
        assert _rel(ci[col].to_numpy()[ok], expected[ok]).max() < 1e-6


def test_percent_labels_as_r():
    ref = LRT_CI["percent_labels"]
    for level, labels in zip(ref["levels"], ref["labels"]):
        assert percent_labels(level) == labels


# ----------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------
HAS_SIMULATE = importlib.util.find_spec("mixedjax.simulate") is not None


@pytest.mark.skipif(not HAS_SIMULATE, reason="mixedjax.simulate (bootstrap) not available")
def test_boot_uses_bootstrap_percentiles(fits):
    import jax
    fit = fits["dyestuff"]
    key = jax.random.PRNGKey(1)
    ci = fit.confint(method="boot", nsim=40, key=key, level=0.9)
    expected = fit.bootstrap(nsim=40, key=key).intervals(0.9, method="percentile")
    assert list(ci.index) == parameter_names(fit)
    assert list(ci.columns) == ["5 %", "95 %"]
    np.testing.assert_allclose(ci.to_numpy(), expected.loc[ci.index].to_numpy(), rtol=1e-12)


def test_boot_delegates_to_bootstrap_intervals(fits, monkeypatch):
    """The boot method's contract with LMMResult.bootstrap, checked with a stand-in."""
    fit = fits["dyestuff"]
    names = parameter_names(fit)
    table = pd.DataFrame({"lo": np.arange(3.0), "hi": np.arange(3.0) + 10}, index=names)
    calls = []

    class Boot:
        def intervals(self, level, method):
            calls.append((level, method))
            return table.copy()

    def bootstrap(nsim, key):
        calls.append((nsim, key))
        return Boot()

    monkeypatch.setattr(fit, "bootstrap", bootstrap)
    ci = fit.confint(method="boot", level=0.8, nsim=25, key=7, parm=["sigma", "(Intercept)"])
    assert calls == [(25, 7), (0.8, "percentile")]
    assert list(ci.columns) == ["10 %", "90 %"]
    np.testing.assert_array_equal(ci.to_numpy(), table.loc[["sigma", "(Intercept)"]].to_numpy())


# ----------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------
def test_confint_bad_input(fits):
    fit = fits["dyestuff"]
    with pytest.raises(ValueError, match="unknown confint method"):
        fit.confint(method="bca")
    for level in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="level must be strictly between 0 and 1"):
            fit.confint(method="wald", level=level)
    with pytest.raises(TypeError, match="level must be a number"):
        fit.confint(method="wald", level="0.95")
    with pytest.raises(ValueError, match=r"unknown parameter name\(s\) \['sd_Days\|Batch'\]"):
        fit.confint(parm="sd_Days|Batch")
    with pytest.raises(ValueError, match="unknown boot_type"):
        fit.confint(method="boot", boot_type="bca")


# ----------------------------------------------------------------------------------
# Prediction intervals
# ----------------------------------------------------------------------------------
def _dense_marginal(fit):
    """Z, Sigma (block diagonal over terms and levels) and V = Z Sigma Z' + sigma^2 I."""
    d = fit.model.design
    zs, sigmas = [], []
    for t, cov in zip(d.terms, fit.covariances):
        Zt = np.zeros((d.n, t.nlevels * t.k))
        for j in range(t.k):
            Zt[np.arange(d.n), t.codes * t.k + j] = t.Z[:, j]
        zs.append(Zt)
        sigmas.append(np.kron(np.eye(t.nlevels), cov))
    Z, Sigma = np.hstack(zs), block_diag(*sigmas)
    return Z, Sigma, Z @ Sigma @ Z.T + fit.sigma ** 2 * np.eye(d.n)


def _dense_prediction(fit, x0, z0):
    """BLUP prediction c'y and its prediction error variance Var(c'y - x0'beta - z0'b)
    from the marginal model (Henderson's BLUP written with V^-1)."""
    d = fit.model.design
    Z, Sigma, V = _dense_marginal(fit)
    Vi = np.linalg.inv(V)
    G = np.linalg.inv(d.X.T @ Vi @ d.X)
    P = Vi - Vi @ d.X @ G @ d.X.T @ Vi
    c = Vi @ d.X @ G @ x0 + P @ Z @ Sigma @ z0
    pev = c @ V @ c - 2.0 * c @ Z @ Sigma @ z0 + z0 @ Sigma @ z0
    return c @ d.y, pev


@pytest.mark.parametrize("key", ["sleepstudy", "penicillin"])
def test_prediction_interval_fitted_rows_match_dense_formula(fits, key):
    fit = fits[key]
    pi = fit.predict_interval(level=0.9)
    assert list(pi.columns) == ["fit", "se", "lwr", "upr"]
    np.testing.assert_allclose(pi["fit"], fit.predict(), rtol=1e-12)
    Z, _, _ = _dense_marginal(fit)
    z = stats.norm.ppf(0.95)
    for i in (0, 7, 61, 130):
        pred, pev = _dense_prediction(fit, fit.model.design.X[i], Z[i])
        assert pi["fit"].iloc[i] == pytest.approx(pred, rel=1e-10)
        assert pi["se"].iloc[i] ** 2 == pytest.approx(pev + fit.sigma ** 2, rel=1e-9)
        assert pi["lwr"].iloc[i] == pytest.approx(pred - z * np.sqrt(pev + fit.sigma ** 2),
                                                  rel=1e-9)


def test_prediction_interval_new_data_and_population_level(fits):
    fit = fits["sleepstudy"]
    V = fit.vcov.to_numpy()
    cov = fit.covariances[0]
    new = pd.DataFrame({"Days": [2.0, 8.5], "Subject": ["308", "new"]})
    x = np.column_stack([np.ones(2), new["Days"]])
    z = x  # the term's columns are (Intercept), Days
    fixed_var = np.einsum("ni,ij,nj->n", x, V, x)
    re_var = np.einsum("ni,ij,nj->n", z, cov, z)
    s2 = fit.sigma ** 2

    pop = fit.predict_interval(new, re_form="~0")
    np.testing.assert_allclose(pop["fit"], x @ fit.fixef.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(pop["se"] ** 2, fixed_var + re_var + s2, rtol=1e-10)
    mean_only = fit.predict_interval(new, re_form="~0", include_residual=False,
                                     include_re_variance=False)
    np.testing.assert_allclose(mean_only["se"] ** 2, fixed_var, rtol=1e-10)

    # A level seen in the fit: its BLUP and the joint error; a new level: as a new group.
    cond = fit.predict_interval(new, allow_new_levels=True)
    Zd, _, _ = _dense_marginal(fit)
    level = fit.model.design.terms[0].levels.index("308")
    z0 = np.zeros(Zd.shape[1])
    z0[2 * level:2 * level + 2] = z[0]
    pred, pev = _dense_prediction(fit, x[0], z0)
    assert cond["fit"].iloc[0] == pytest.approx(pred, rel=1e-10)
    assert cond["se"].iloc[0] ** 2 == pytest.approx(pev + s2, rel=1e-9)
    assert cond["se"].iloc[1] == pytest.approx(pop["se"].iloc[1], rel=1e-12)


def test_prediction_interval_bad_input(fits):
    fit = fits["sleepstudy"]
    with pytest.raises(ValueError, match="level must be strictly between 0 and 1"):
        fit.predict_interval(level=1.0)
    with pytest.raises(TypeError, match="newdata must be a pandas DataFrame"):
        fit.predict_interval(newdata={"Days": [1.0]})
    with pytest.raises(TypeError, match="include_residual must be True or False"):
        fit.predict_interval(include_residual="yes")
    with pytest.raises(ValueError, match="not in the fit"):
        fit.predict_interval(pd.DataFrame({"Days": [1.0], "Subject": ["new"]}))
