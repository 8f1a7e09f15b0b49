"""The eager criterion and gradient of mixedjax.blocked against automatic
differentiation of pls.objective, and the eager BFGS fit against the compiled one."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import blocked, layout, pls
from mixedjax import model as model_mod
from conftest import _load_json, no_h_effect_data


def _crossed(seed, n=300, ng=25, nh=9):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, ng, n)
    h = rng.integers(0, nh, n)
    x = rng.standard_normal(n)
    y = (1.0 + 0.5 * x + rng.standard_normal(ng)[g] + 0.7 * rng.standard_normal(nh)[h] * (1 + x)
         + rng.standard_normal(n))
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "h": h.astype(str),
                         "w": rng.uniform(0.5, 2.0, n)})


# (formula, data, weights): nested, crossed, vector-valued later terms, several terms
# on one factor, prior weights, no later term.
CASES = [
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy", None),
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin", None),
    ("strength ~ 1 + (1 | batch/cask)", "pastes", None),
    ("y ~ x + (1 + x | g) + (1 + x | h)", 1, None),
    ("y ~ x + (1 | g) + (0 + x | h) + (1 | h)", 2, None),
    ("y ~ x + (x || g) + (1 | h)", 3, "w"),
]


def _model(case, reml=True, dense=False):
    formula, data, weights = case
    data = mixedjax.datasets.load(data) if isinstance(data, str) else _crossed(data)
    old = layout.PAIR_LIMIT
    if dense:
        layout.PAIR_LIMIT = 0          # the dense-coupling path of MovieLens-sized data
    try:
        return mixedjax.LMM.from_formula(formula, data, reml=reml, weights=weights)
    finally:
        layout.PAIR_LIMIT = old


def _autodiff(m, reml):
    return jax.jit(jax.value_and_grad(lambda t: pls.objective(t, m.arrays, reml)))


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_value_and_gradient_equal_autodiff(case, dense):
    for reml in (True, False):
        m = _model(case, reml, dense)
        assert m.structure.dense_w == (dense and m.structure.q_rest > 0)
        X = blocked.prepare(m.arrays)
        ad = _autodiff(m, reml)
        rng = np.random.default_rng(7)
        thetas = [m.initial_theta() + 0.4 * rng.standard_normal(m.ntheta) for _ in range(2)]
        # A later term's variance at exactly zero and near zero (the gradient's
        # general form, and the scalar shortcut's small-theta guard).
        for value in (0.0, 2e-3):
            t = thetas[0].copy()
            t[-1] = value
            thetas.append(t)
        for theta in thetas:
            f, g = blocked.value_grad(theta, X, reml)
            f0, g0 = ad(jnp.asarray(theta))
            assert f == pytest.approx(float(f0), rel=1e-12)
            np.testing.assert_allclose(g, np.asarray(g0), rtol=1e-8,
                                       atol=1e-9 * max(1.0, float(np.max(np.abs(g0)))))
            assert blocked.value(theta, X, reml) == f


def test_not_positive_definite_gives_inf():
    m = _model(CASES[1])
    X = blocked.prepare(m.arrays)
    bad = X._replace(R0=-np.abs(X.R0))
    f, g = blocked.value_grad(m.initial_theta(), bad)
    assert f == np.inf and np.all(np.isnan(g))


@pytest.mark.parametrize("case", CASES[1:], ids=[c[0] for c in CASES[1:]])
def test_eager_bfgs_fit_equals_compiled_newton(case):
    m = _model(case)
    bfgs = m.fit(optimizer="bfgs")
    assert bfgs.optinfo["optimizer"].startswith("BFGS") and bfgs.converged
    ref = model_mod._fit_jit(jnp.asarray(m.initial_theta()), m.arrays, reml=True, max_iter=200,
                             optimizer="newton")
    assert bfgs.objective == pytest.approx(float(ref.solution.objective), rel=1e-10)
    np.testing.assert_allclose(np.abs(bfgs.theta), np.abs(np.asarray(ref.theta)), rtol=1e-4,
                               atol=1e-5)
    p = m.design.p
    np.testing.assert_allclose(bfgs.fixef.to_numpy(), np.asarray(ref.solution.beta)[:p],
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(bfgs.sigma, float(ref.solution.sigma), rtol=1e-6)
    # The NumPy solution has the compiled one's layout: spherical effects agree.
    sol = blocked.solve_np(bfgs.theta, blocked.prepare(m.arrays))
    ref_sol = pls.solve(jnp.asarray(bfgs.theta), m.arrays, True)
    np.testing.assert_allclose(sol.u0, np.asarray(ref_sol.u0), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(sol.u_rest, np.asarray(ref_sol.u_rest), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(sol.Lr, np.asarray(ref_sol.Lr), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(sol.factor.w_ent, np.asarray(ref_sol.factor.w_ent), rtol=1e-7,
                               atol=1e-9)


def test_large_design_is_unpadded_and_fits_eagerly():
    """A design with a large dense block: no padding, BFGS by default, the compiled
    objective agrees at the optimum, which meets the convergence test by autodiff:
    Newton's decrement g' H^-1 g <= 1e-6 (the criterion within 5e-7 of its minimum)."""
    data = _crossed(11, n=6000, ng=900, nh=450)
    m = mixedjax.LMM.from_formula("y ~ x + (1 | g) + (1 | h)", data)
    assert not m.pad and m.structure.m == tuple(t.nlevels for t in m.design.terms)
    fit = m.fit()
    assert fit.optinfo["optimizer"].startswith("BFGS") and fit.converged
    assert float(m.objective(fit.theta)) == pytest.approx(fit.objective, rel=1e-12)
    f = lambda t: pls.objective(t, m.arrays, True)
    theta = jnp.asarray(fit.theta)
    g, H = np.asarray(jax.grad(f)(theta)), np.asarray(jax.hessian(f)(theta))
    assert np.all(np.linalg.eigvalsh(H) > 0)
    assert float(g @ np.linalg.solve(H, g)) <= 1e-6


def test_singular_fit_leaves_the_log_scale():
    """A variance estimated at zero: the log-scale phase hands over to theta itself
    and the fit converges to the boundary as the compiled Newton fit does."""
    m = mixedjax.LMM.from_formula("y ~ 1 + (1 | g) + (1 | h)", no_h_effect_data(5))
    fit = m.fit(optimizer="bfgs")
    ref = model_mod._fit_jit(jnp.asarray(m.initial_theta()), m.arrays, reml=True, max_iter=200,
                             optimizer="newton")
    assert fit.converged
    assert fit.objective == pytest.approx(float(ref.solution.objective), rel=1e-10)
    np.testing.assert_allclose(np.abs(fit.theta), np.abs(np.asarray(ref.theta)), atol=1e-4)


@pytest.mark.parametrize("name, formula", [
    ("Dyestuff", "Yield ~ 1 + (1|Batch)"),
    ("Penicillin", "diameter ~ 1 + (1|plate) + (1|sample)"),
])
def test_curvature_guess_approximates_the_log_scale_hessian(name, formula):
    """For scalar one-way and crossed terms the guess (the one-way information
    4 sum_a rho_a^2) is within a factor of 2 of the diagonal of the Hessian in
    z = log theta at the optimum.  (It treats each term as if alone, so an outer
    nested term, whose levels the inner term partly explains, is overestimated:
    Pastes' batch 35 against 8.)"""
    m = mixedjax.LMM.from_formula(formula, mixedjax.datasets.load(name))
    fit = m.fit(optimizer="bfgs")
    th = np.abs(fit.theta)
    X = m._blocked()
    H = np.asarray(jax.hessian(lambda t: pls.objective(t, m.arrays, True))(jnp.asarray(th)))
    hz = np.diag(H) * th ** 2
    guess = blocked.curvature_guess(th, X)
    assert guess.shape == th.shape and np.all(guess > 0)
    np.testing.assert_array_less(guess, 2.0 * hz)
    np.testing.assert_array_less(hz, 2.0 * guess)


CROSSED = _load_json("crossed_reference.json")


@pytest.mark.parametrize("name", sorted(CROSSED))
def test_crossed_bfgs_fit_matches_lme4(name):
    """Designs past the closed-form path (a dense block of 80 to 100 columns), fitted
    by the eager BFGS, against lme4 (tests/reference/make_crossed_reference.R)."""
    ref = CROSSED[name]
    data = pd.read_csv(Path(__file__).parent / "reference" / "crossed.csv")
    m = mixedjax.lmer(ref["formula"], data, reml=ref["reml"])
    assert m.optinfo["optimizer"].startswith("BFGS") and m.converged
    assert m.singular == ref["singular"]
    assert m.objective == pytest.approx(ref["objective"], rel=1e-8)
    assert m.sigma == pytest.approx(ref["sigma"], rel=1e-4)
    se = pd.Series(ref["stderr"])
    np.testing.assert_allclose(m.stderr[se.index], se, rtol=1e-4)
    fe = pd.Series(ref["fixef"])
    assert np.all(np.abs(m.fixef[fe.index] - fe) <= 1e-4 * se)
    np.testing.assert_allclose(m.theta, ref["theta"], atol=1e-5)
