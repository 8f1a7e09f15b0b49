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


# ----------------------------------------------------------------------------------
# The lane-wise kernel (mixedjax.lanes)
# ----------------------------------------------------------------------------------
def _lane_cases():
    data = _random_design(5)
    return [("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"), None),
            ("Yield ~ 1 + (1 | Batch)", mixedjax.datasets.load("dyestuff"), None),
            ("y ~ x + (1 | g) + (1 | h)", data.assign(h=data.h % 2), "w"),
            # Outside the compile budget of lanes.applicable, but the formulas hold:
            ("y ~ 1 + (1 + x | g) + (1 | h)", data.iloc[:60].assign(h=data.h[:60] % 2), None)]


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_lane_kernel_equals_closed_forms(case):
    from mixedjax import batch, lanes

    formula, data, weights = _lane_cases()[case]
    fit = mixedjax.lmer(formula, data, weights=weights)
    spec = batch.fit_spec(fit.model, fit.theta)
    A, R, C = spec.A, spec.R, spec.C
    assert lanes.applicable(A.structure, C.V is not None) == (case < 3)
    Y = np.asarray(fit.simulate(6, key=1))
    Y = jnp.asarray(np.pad(Y, ((0, 0), (0, spec.n_pad - Y.shape[1]))))
    rng = np.random.default_rng(case)
    theta = jnp.asarray(spec.theta0[None] + 0.3 * rng.standard_normal((6, len(spec.theta0))))
    D = lanes.data(A, R, Y)
    kernel = jax.jit(lambda t, D, reml, order: lanes.value_grad_hess(t, A, C.V, D, reml, order),
                     static_argnums=3)
    for reml in (True, False):
        f, g, H = kernel(theta, D, reml, 2)
        f0, g0, H0 = jax.jit(jax.vmap(lambda t, y: analytic.value_grad_hess(
            t, pls.with_response(A, R, y), reml, C.V)))(theta, Y)
        np.testing.assert_allclose(f, f0, rtol=1e-12)
        np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(g0))))
        np.testing.assert_allclose(H, H0, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(H0))))
        obj, beta, se, sigma = kernel(theta, D, reml, -1)
        b, s_, sg, o = jax.jit(jax.vmap(lambda t, y: batchfit.solve_summary(
            t, pls.with_response(A, R, y), reml, C)))(theta, Y)
        np.testing.assert_allclose(beta, b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(se, s_, rtol=1e-10)
        np.testing.assert_allclose(sigma, sg, rtol=1e-12)
        np.testing.assert_allclose(obj, o, rtol=1e-12)


def test_lane_direction_equals_vmapped():
    from mixedjax import lanes

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 6):
        G = rng.standard_normal((40, n, n))
        H = G + np.swapaxes(G, 1, 2)                      # indefinite
        H[:10] = G[:10] @ np.swapaxes(G[:10], 1, 2)       # positive definite
        g = rng.standard_normal((40, n))
        g[5] = 0.0                                        # a stationary lane
        ms = np.full(40, 2.0)
        a = jax.jit(lanes.direction)(jnp.asarray(g), jnp.asarray(H), jnp.asarray(ms))
        b = jax.jit(jax.vmap(batchfit._direction))(jnp.asarray(g), jnp.asarray(H),
                                                   jnp.asarray(ms))
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)


def test_lane_fit_equals_vmapped_fit(monkeypatch):
    from mixedjax import batch, lanes

    fit = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"))
    spec = batch.fit_spec(fit.model, fit.theta)
    Y = np.asarray(fit.simulate(64, key=11))
    Y = jnp.asarray(np.pad(Y, ((0, 0), (0, spec.n_pad - Y.shape[1]))))
    theta0 = jnp.tile(jnp.asarray(spec.theta0), (64, 1))
    cap = jnp.full(64, 100)
    args = (theta0, spec.A, spec.R, spec.C, Y, cap, jnp.asarray(True))
    via_lanes = jax.jit(batchfit._fit_lanes)(*args)
    monkeypatch.setattr(lanes, "applicable", lambda *a: False)
    vmapped = jax.jit(batchfit.fit_chunk.__wrapped__)(*args)
    np.testing.assert_array_equal(via_lanes.status, vmapped.status)
    np.testing.assert_array_equal(via_lanes.converged, vmapped.converged)
    assert np.max(np.abs(np.asarray(via_lanes.iterations) - np.asarray(vmapped.iterations))) <= 1
    for field in ("theta", "beta", "stderr", "sigma", "objective"):
        np.testing.assert_allclose(getattr(via_lanes, field), getattr(vmapped, field),
                                   rtol=1e-8, atol=1e-8)
