"""fit_fn: the fit as a differentiable JAX function of (y, X, weights).

Derivatives (implicit function theorem) against central finite differences of
tight Newton refits, the fixed-theta derivative against the closed-form GLS
derivative, jit/vmap/jvp/jacrev agreement, the singular-fit convention, and bad
input.  Refits use the fit's own Newton iteration, which stops at round-off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixedjax
from mixedjax import crossprod, structure

MODELS = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
    "dyestuff2": ("Yield ~ 1 + (1 | Batch)", "dyestuff2"),   # singular: theta = 0
    # Simulated without a random slope: the fit is singular with correlation -1
    # (theta[2] = 0, a zero second column of Lambda).
    "sleepstudy_singular": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
}


def _data(name):
    df = mixedjax.datasets.load(MODELS[name][1])
    if name == "sleepstudy_singular":
        rng = np.random.default_rng(2)
        subject = df["Subject"].cat.codes.to_numpy()
        df["Reaction"] = (250 + 10 * df["Days"] + 30 * rng.normal(size=18)[subject] +
                          25 * rng.normal(size=len(df)))
    return df


@pytest.fixture(scope="module", params=[
    pytest.param(n, marks=pytest.mark.slow) if n == "penicillin" else n for n in sorted(MODELS)])
def case(request):
    fit = mixedjax.lmer(MODELS[request.param][0], _data(request.param))
    return request.param, fit, mixedjax.fit_fn(fit)


@pytest.fixture(scope="module")
def sleep(sleep_fit):
    return sleep_fit, mixedjax.fit_fn(sleep_fit)


def _flat(params):
    return jnp.concatenate([params.beta, params.theta, params.sigma[None]])


def test_primal_equals_lmer(case):
    _, fit, f = case
    out = f(fit.model.design.y)
    np.testing.assert_allclose(out.beta, fit.fixef.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(out.theta, fit.theta, rtol=1e-7, atol=1e-10)
    assert float(out.sigma) == pytest.approx(fit.sigma, rel=1e-10)
    assert float(out.objective) == pytest.approx(fit.objective, rel=1e-12)
    np.testing.assert_allclose(out.vcov, fit.vcov.to_numpy(), rtol=1e-9)
    assert float(out.converged) == 1.0


def test_jacobian_matches_finite_differences(case):
    """d(beta, theta, sigma)/dy by the IFT equals central differences of refits."""
    name, fit, f = case
    y = jnp.asarray(fit.model.design.y)
    J = np.asarray(jax.jacrev(lambda yy: _flat(f(yy)))(y))
    rows = np.linspace(0, len(y) - 1, 4).astype(int)
    for i in rows:
        h = 1e-4 * max(abs(float(y[i])), 1.0)
        e = jnp.zeros_like(y).at[i].set(h)
        fd = (np.asarray(_flat(f(y + e))) - np.asarray(_flat(f(y - e)))) / (2 * h)
        scale = np.max(np.abs(J), axis=1)
        err = np.abs(J[:, i] - fd)
        assert np.all(err <= 1e-6 * scale + 1e-12), (name, i, J[:, i], fd)
    if name == "dyestuff2":
        # Singular fit: theta stays at 0, its derivative is 0, and beta, sigma are
        # those of ordinary least squares (theta held at 0): d beta/dy = 1/n.
        assert abs(fit.theta[0]) < 1e-12
        np.testing.assert_array_equal(J[1], 0.0)
        np.testing.assert_allclose(J[0], 1.0 / len(y), rtol=1e-12)
        resid = np.asarray(y) - np.mean(np.asarray(y))
        np.testing.assert_allclose(J[2], resid / (np.sqrt(resid @ resid) * np.sqrt(len(y) - 1)),
                                   rtol=1e-9)
    if name == "sleepstudy_singular":
        assert abs(fit.theta[2]) < 1e-8 and abs(fit.theta[1]) > 0.01
        np.testing.assert_array_equal(J[4], 0.0)      # theta[2] held at zero


def test_x_and_weight_derivatives_match_finite_differences(sleep):
    """jvp along a joint direction in (y, X, weights) equals central differences."""
    fit, f = sleep
    d = fit.model.design
    rng = np.random.default_rng(0)
    y, X = jnp.asarray(d.y), jnp.asarray(d.X)
    w = jnp.asarray(0.5 + rng.uniform(size=d.n))
    dy, dX = jnp.asarray(rng.normal(size=d.n)), jnp.asarray(rng.normal(size=X.shape))
    dw = jnp.asarray(rng.normal(size=d.n))
    _, tan = jax.jvp(lambda a, b, c: _flat(f(a, b, c)), (y, X, w), (dy, dX, dw))
    h = 1e-5
    fd = (_flat(f(y + h * dy, X + h * dX, w + h * dw)) -
          _flat(f(y - h * dy, X - h * dX, w - h * dw))) / (2 * h)
    np.testing.assert_allclose(tan, fd, rtol=1e-6)
    # The same jvp program along y alone agrees with reverse mode.
    _, tan_y = jax.jvp(lambda a, b, c: _flat(f(a, b, c)), (y, X, w), (dy, 0 * dX, 0 * dw))
    J = jax.jacrev(lambda a: _flat(f(a, X, w)))(y)
    np.testing.assert_allclose(tan_y, J @ dy, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jax.grad(lambda a: f(a, X, w).sigma)(y), J[-1], rtol=1e-10,
                               atol=1e-14)


def test_arrays_equal_build_arrays(case):
    """The jnp rebuild of the cross-products equals crossprod.build (numpy)."""
    _, fit, f = case
    d = fit.model.design
    rng = np.random.default_rng(1)
    y = d.y + rng.normal(size=d.n)
    X = d.X + 0.1 * rng.normal(size=d.X.shape)
    w = 0.3 + rng.uniform(size=d.n)
    A = f.arrays(y, X, w)
    B = crossprod.build(d.terms, X, y, fit.model.structure, fit.model.placement, weights=w,
                        offset=d.offset)[0]
    for name in B.fields:
        a, b = np.asarray(getattr(A, name)), np.asarray(getattr(B, name))
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(b).max(
            initial=0.0)), err_msg=name)


def test_arrays_with_offset_and_weights(sleepstudy):
    df = sleepstudy.copy()
    df["off"] = np.sin(np.arange(len(df)))
    df["w"] = 0.5 + (np.arange(len(df)) % 7) / 4
    model = mixedjax.LMM.from_formula("Reaction ~ Days + (Days | Subject)", df,
                                      weights="w", offset="off")
    f = mixedjax.fit_fn(model)
    d = model.design
    A = f.arrays(d.y)       # X and weights default to the model's
    for name in model.arrays.fields:
        np.testing.assert_allclose(getattr(A, name), getattr(model.arrays, name),
                                   rtol=1e-12, atol=1e-9, err_msg=name)


def _dense_gls_derivative(fit, theta, w):
    """(X'V^-1 X)^-1 X'V^-1 with V = Z Lambda Lambda' Z' + W^-1, formed densely."""
    d = fit.model.design
    lams = structure.lambdas(np.asarray(theta, float), fit.model.structure)
    V = np.diag(1.0 / w)
    for t, lam in zip(d.terms, lams):
        Z = np.zeros((d.n, t.nlevels * t.k))
        for j in range(t.k):
            Z[np.arange(d.n), t.codes * t.k + j] = t.Z[:, j]
        ZL = Z @ np.kron(np.eye(t.nlevels), lam)
        V += ZL @ ZL.T
    Vi_X = np.linalg.solve(V, d.X)
    return np.linalg.solve(d.X.T @ Vi_X, Vi_X.T)


def test_fixed_theta_derivative_is_gls(sleep):
    fit, f = sleep
    d = fit.model.design
    w = 0.5 + (np.arange(d.n) % 7) / 4
    theta = np.array([0.8, 0.1, 0.3])
    J = jax.jacrev(lambda yy: f.at_theta(theta, yy, weights=w).beta)(jnp.asarray(d.y))
    np.testing.assert_allclose(J, _dense_gls_derivative(fit, theta, w), rtol=1e-9, atol=1e-13)


def test_jit_vmap_agree_with_single_calls(sleep):
    fit, f = sleep
    y = np.asarray(fit.model.design.y)
    Y = jnp.asarray(np.stack([y, 1.1 * y, y + 5 * np.sin(np.arange(len(y)))]))
    batched = jax.jit(jax.vmap(f))(Y)
    for k in range(Y.shape[0]):
        single = f(Y[k])
        np.testing.assert_allclose(batched.beta[k], single.beta, rtol=1e-9)
        np.testing.assert_allclose(batched.theta[k], single.theta, rtol=1e-7)
        np.testing.assert_allclose(batched.sigma[k], single.sigma, rtol=1e-9)
    # Scaling y scales beta and sigma and leaves theta unchanged.
    np.testing.assert_allclose(batched.beta[1], 1.1 * batched.beta[0], rtol=1e-9)
    np.testing.assert_allclose(batched.theta[1], batched.theta[0], rtol=1e-6)


def test_fit_fn_from_formula(sleepstudy, sleep):
    fit, _ = sleep
    f = mixedjax.fit_fn("Reaction ~ Days + (Days | Subject)", sleepstudy)
    np.testing.assert_allclose(f(fit.model.design.y).beta, fit.fixef.to_numpy(), rtol=1e-10)
    assert f.coef_names == ["(Intercept)", "Days"]
    assert f.theta_names == fit.model.theta_names


@pytest.mark.parametrize("call, exc, match", [
    (lambda f, y, X: f(y[:-1]), ValueError, "length n = 180"),
    (lambda f, y, X: f(y, X[:, :1]), ValueError, r"X must have shape \(n, p\) = \(180, 2\)"),
    (lambda f, y, X: f(y, X, -np.ones(len(y))), ValueError, "non-negative"),
    (lambda f, y, X: f(y, X, np.ones(3)), ValueError, "weights must be a vector"),
    (lambda f, y, X: f(np.array(["a"] * len(y))), TypeError, "y must be a numeric"),
    (lambda f, y, X: f.at_theta([1.0], y), ValueError, "theta must have 3 entries"),
])
def test_bad_input(sleep, call, exc, match):
    fit, f = sleep
    with pytest.raises(exc, match=match):
        call(f, fit.model.design.y, fit.model.design.X)


def test_bad_model_arguments(sleepstudy):
    with pytest.raises(TypeError, match="formula string, an LMM or an LMMResult"):
        mixedjax.fit_fn(42)
    with pytest.raises(ValueError, match="data is required"):
        mixedjax.fit_fn("Reaction ~ Days + (1 | Subject)")
    model = mixedjax.LMM.from_formula("Reaction ~ Days + (Days | Subject)", sleepstudy)
    with pytest.raises(ValueError, match="only accepted with a formula"):
        mixedjax.fit_fn(model, sleepstudy)
    with pytest.raises(ValueError, match="theta0 must have 3 entries"):
        mixedjax.fit_fn(model, theta0=[1.0])
