"""Closed-form derivatives (mixedjax.analytic) against automatic differentiation,
the eager NumPy fit against the compiled fit, and the batched kernel with them."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import analytic, batchfit, pls
from mixedjax import model as model_mod

CASES = [
    ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    ("Reaction ~ Days + (Days || Subject)", "sleepstudy"),
    ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
    ("strength ~ 1 + (1 | batch/cask)", "pastes"),
    ("Yield ~ 1 + (1 | Batch)", "dyestuff"),
]


def _random_design(seed):
    """A first term with a random slope crossed with a second vector-valued term."""
    rng = np.random.default_rng(seed)
    n = 160
    g = rng.integers(0, 12, n)
    h = rng.integers(0, 5, n)
    x = rng.standard_normal(n)
    y = (1.0 + 0.5 * x + rng.standard_normal(12)[g] + rng.standard_normal(12)[g] * x
         + rng.standard_normal(5)[h] * (1 + 0.3 * x) + rng.standard_normal(n))
    data = pd.DataFrame({"y": y, "x": x, "g": g, "h": h, "w": rng.uniform(0.5, 2.0, n)})
    return data


def _models():
    for formula, name in CASES:
        yield formula, mixedjax.datasets.load(name), None
    data = _random_design(3)
    yield "y ~ x + (1 + x | g) + (1 + x | h)", data, None
    yield "y ~ x + (1 + x | g) + (1 | h)", data, "w"


def _ad_reference(A, C):
    """Value, gradient and Hessian by automatic differentiation of the factor-based
    criterion (``reml`` traced, so REML and ML share one compilation)."""
    def f(theta, reml):
        return batchfit.objective(theta, A, reml, C)

    return jax.jit(lambda t, reml: (f(t, reml), jax.grad(f)(t, reml), jax.hessian(f)(t, reml)))


@pytest.mark.parametrize("case", list(range(len(CASES) + 2)))
def test_closed_forms_equal_autodiff(case):
    formula, data, weights = list(_models())[case]
    m = mixedjax.LMM.from_formula(formula, data, weights=weights)
    A = m.arrays
    C = batchfit.coupling(A)
    assert analytic.applicable(A.structure, C.V is not None)
    reference = _ad_reference(A, C)
    traced = jax.jit(lambda t, reml: analytic.value_grad_hess(t, A, reml, C.V))
    rng = np.random.default_rng(case)
    An = jax.tree_util.tree_map(np.asarray, A)
    Vn = None if C.V is None else np.asarray(C.V)
    for reml in (True, False):
        for _ in range(3):
            theta = np.asarray(m.initial_theta()) + 0.4 * rng.standard_normal(m.ntheta)
            f0, g0, H0 = (np.asarray(a) for a in reference(jnp.asarray(theta), reml))
            for f, g, H in (analytic.value_grad_hess(theta, An, reml, Vn),          # NumPy
                            traced(jnp.asarray(theta), reml)):                     # traced
                assert abs(float(f) - f0) <= 1e-12 * abs(f0)
                assert np.max(np.abs(np.asarray(g) - g0)) <= 1e-9 * max(1.0, np.max(np.abs(g0)))
                assert np.max(np.abs(np.asarray(H) - H0)) <= 1e-9 * np.max(np.abs(H0))
            assert abs(analytic.value(theta, An, reml, Vn) - f0) <= 1e-12 * abs(f0)


@pytest.mark.parametrize("reml", [True, False])
def test_closed_forms_equal_pls_objective(reml):
    m = mixedjax.LMM.from_formula("Reaction ~ Days + (Days | Subject)",
                                  mixedjax.datasets.load("sleepstudy"), reml=reml)
    theta = np.array([0.8, 0.1, 0.3])
    f, g, H = analytic.value_grad_hess(theta, jax.tree_util.tree_map(np.asarray, m.arrays), reml)
    t = jnp.asarray(theta)
    assert abs(f - float(pls.objective(t, m.arrays, reml))) <= 1e-11 * abs(f)
    np.testing.assert_allclose(g, jax.grad(pls.objective)(t, m.arrays, reml), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(H, jax.hessian(pls.objective)(t, m.arrays, reml), rtol=1e-8,
                               atol=1e-8)


@pytest.mark.parametrize("case", list(range(len(CASES) + 2)))
def test_eager_fit_equals_compiled_fit(case):
    formula, data, weights = list(_models())[case]
    m = mixedjax.LMM.from_formula(formula, data, weights=weights)
    assert m._eager_arrays() is not None
    eager = m.fit()
    compiled = model_mod._fit_jit(jnp.asarray(m.initial_theta()), m.arrays, reml=True,
                                  max_iter=200, optimizer="newton")
    compiled = jax.tree_util.tree_map(np.asarray, compiled)
    assert eager.converged
    assert abs(eager.objective - float(compiled.solution.objective)) <= 1e-10 * abs(eager.objective)
    np.testing.assert_allclose(eager.theta, compiled.theta, atol=1e-7)
    np.testing.assert_allclose(eager.fixef.values, compiled.solution.beta[:m.design.p],
                               rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(eager._sol.u0, compiled.solution.u0, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(eager._sol.u_rest, compiled.solution.u_rest, rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(eager._sol.factor.w_ent, compiled.solution.factor.w_ent,
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(eager._sol.Lr, compiled.solution.Lr, rtol=1e-6, atol=1e-8)


def test_eager_fit_singular_and_large_designs():
    # Dyestuff2: the variance goes to 0 and the fit is reported singular.
    fit = mixedjax.lmer("Yield ~ 1 + (1 | Batch)", mixedjax.datasets.load("dyestuff2"))
    assert fit.model._eager_arrays() is not None
    assert fit.singular and fit.converged
    # A first term coupled to a large later term is left to the compiled path.
    rng = np.random.default_rng(0)
    n = 4000
    data = pd.DataFrame({"y": rng.standard_normal(n), "a": rng.integers(0, 400, n),
                         "b": rng.integers(0, 300, n)})
    m = mixedjax.LMM.from_formula("y ~ 1 + (1 | a) + (1 | b)", data)
    assert m._eager_arrays() is None


def test_batched_kernel_uses_closed_forms():
    fit = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"))
    Y = np.asarray(fit.simulate(40, key=7))
    batch = fit.refit_many(Y, progress=False)
    for j in (0, 17, 39):
        data = mixedjax.datasets.load("sleepstudy").assign(Reaction=Y[j])
        single = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", data, theta0=fit.theta)
        np.testing.assert_allclose(batch.theta[j], single.theta, atol=1e-7)
        np.testing.assert_allclose(batch.fixef.values[j], single.fixef.values, rtol=1e-8)
