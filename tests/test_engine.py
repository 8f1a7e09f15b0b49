"""Conformance of the one engine: every backend x design family x (value, gradient,
Hessian, data gradient, solve, conditional variances) against a dense O(n^3)
oracle of the criterion (JSS 67(1) eqs. 35/42 on the full [Z Lambda, X, y] matrix)
and its automatic derivatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from mixedjax import crossprod, criterion, factor, routing, structure
from mixedjax.backend import NUMPY, jax_backend
from mixedjax.design import make_design


def _data(seed=0, n=240):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 8, n)
    b = rng.integers(0, 3, n)
    c = rng.integers(0, 5, n)
    h = rng.integers(0, 6, n)
    x = rng.normal(size=n)
    u = rng.normal(size=8)[a] + 0.5 * rng.normal(size=(8, 3))[a, b] + 0.4 * rng.normal(size=6)[h]
    y = 2.0 + x + u + (0.3 + 0.2 * rng.normal(size=6)[h]) * x + rng.normal(size=n)
    return pd.DataFrame({"a": a.astype(str), "b": b.astype(str), "c": c.astype(str),
                         "h": h.astype(str), "x": x, "y": y, "xs": x + 30.0,
                         "w": rng.uniform(0.5, 2.0, n), "off": rng.normal(size=n)})


FAMILIES = {
    "one_factor": ("y ~ x + (1 | a)", {}),
    "one_factor_slope": ("y ~ x + (1 + x | a)", {}),
    "nested_2": ("y ~ x + (1 | a/b)", {}),
    "nested_3": ("y ~ x + (1 | a/b/c)", {}),
    "nested_slopes": ("y ~ x + (1 + x | a) + (1 | a:b)", {}),
    "crossed": ("y ~ x + (1 | a) + (1 | h)", {}),
    "partially_crossed": ("y ~ x + (1 | a/b) + (1 | h)", {}),
    "crossed_vector": ("y ~ x + (1 + x | h) + (1 + x | a)", {}),
    "uncorrelated": ("y ~ x + (x || a) + (1 | h)", {}),
    "weights_offset": ("y ~ x + (1 + x | a) + (1 | h)", {"weights": "w", "offset": "off"}),
    "no_fixed": ("y ~ 0 + (1 | a) + (1 | h)", {}),
    # a slope far from zero: the factor works in centred columns (structure.centring_basis)
    "centred_first": ("y ~ x + (1 + xs | a) + (1 | h)", {}),
    "centred_later": ("y ~ x + (1 | a) + (1 + xs | h)", {}),
}


def _model(name, reml=True, stable=True):
    formula, kw = FAMILIES[name]
    d = make_design(formula, _data(), **kw)
    s, place = structure.analyze(d.terms, d.p, structure.centring_basis(d.terms))
    assert bool(s.basis) == name.startswith("centred")
    A, _, _ = crossprod.build(d.terms, d.X, d.y, s, place, d.weights, d.offset, stable)
    return d, A, place


def _theta(s, seed=1):
    rng = np.random.default_rng(seed)
    diag = structure.diagonal_mask(s)
    theta = np.where(diag, rng.uniform(0.3, 1.4, s.ntheta), rng.uniform(-0.4, 0.4, s.ntheta))
    # a design in a centred basis is evaluated where its fits land: covariances of
    # moderate size in the centred columns
    return structure.from_centred(theta, s)


class Dense:
    """The criterion from the full n-row matrices (any array library)."""

    def __init__(self, d):
        self.d = d
        n = d.n
        self.Z = []
        for t in d.terms:
            Z = np.zeros((n, t.nlevels * t.k))
            for j in range(t.k):
                Z[np.arange(n), t.codes * t.k + j] = t.Z[:, j]
            self.Z.append(Z)
        self.w = np.ones(n) if d.weights is None else d.weights
        self.y = d.y - (0.0 if d.offset is None else d.offset)
        self.s = structure.Structure(k=tuple(t.k for t in d.terms),
                                     m=tuple(t.nlevels for t in d.terms), p=d.p)

    def matrix(self, theta, xp):
        lams = structure.lambdas(theta, self.s, xp)
        ZL = xp.concatenate([Z @ xp.kron(xp.eye(t.nlevels), lam)
                             for Z, t, lam in zip(self.Z, self.d.terms, lams)], axis=1)
        sw = np.sqrt(self.w)[:, None]
        B = xp.concatenate([ZL * sw, self.d.X * sw, self.y[:, None] * sw], axis=1)
        q, p = ZL.shape[1], self.d.p
        return B.T @ B + xp.diag(xp.concatenate([xp.ones(q), xp.zeros(p + 1)])), q, p

    def value(self, theta, reml, xp=jnp):
        M, q, p = self.matrix(theta, xp)
        ld = 2.0 * xp.log(xp.diagonal(xp.linalg.cholesky(M)))
        n = self.d.n
        nu = n - p if reml else n
        f = (xp.sum(ld[:q]) + nu * (1.0 + xp.log(2.0 * np.pi * xp.exp(ld[-1]) / nu))
             - np.sum(np.log(self.w)))
        return f + xp.sum(ld[q:q + p]) if reml else f

    def solve(self, theta, reml):
        M, q, p = self.matrix(np.asarray(theta), np)
        x = np.linalg.solve(M[:-1, :-1], M[:-1, -1])
        pwrss = M[-1, -1] - M[-1, :-1] @ x
        nu = self.d.n - p if reml else self.d.n
        Mzz_inv = np.linalg.inv(M[:q, :q])
        return x[q:], x[:q], np.sqrt(pwrss / nu), Mzz_inv


CASES = [(name, reml) for name in FAMILIES for reml in (True, False)]


@pytest.mark.parametrize("name,reml", CASES)
def test_numpy_value_and_gradient_equal_dense_oracle(name, reml):
    d, A, _ = _model(name, reml)
    em = criterion.EagerModel(A, reml)
    dense = Dense(d)
    ref_grad = jax.jit(jax.value_and_grad(lambda t: dense.value(t, reml)))
    for seed in (1, 2, 3):
        theta = _theta(A.structure, seed)
        f, g = em.value_grad(theta)
        f0, g0 = ref_grad(jnp.asarray(theta))
        assert abs(f - float(f0)) <= 1e-10 * abs(float(f0))
        np.testing.assert_allclose(g, g0, rtol=1e-8, atol=1e-8 * np.max(np.abs(g0)))
        assert em.value(theta) == pytest.approx(f, rel=1e-14)


def _value_grad_hess(fun, theta, thetas):
    """Value, gradient, Hessian at theta and values over thetas, in one compiled call."""
    return jax.jit(lambda t, ts: (fun(t), jax.grad(fun)(t), jax.hessian(fun)(t),
                                  jax.vmap(fun)(ts)))(theta, thetas)


@pytest.mark.parametrize("name,reml", [(n, True) for n in FAMILIES] + [("crossed_vector", False)])
def test_jax_objective_gradient_hessian_equal_dense_oracle(name, reml):
    d, A, _ = _model(name, reml)
    Aj = crossprod.to_device(A)
    dense = Dense(d)
    theta = jnp.asarray(_theta(A.structure, 4))
    thetas = jnp.stack([theta, jnp.asarray(_theta(A.structure, 5))])
    f, g, H, batch = _value_grad_hess(lambda t: criterion.objective(t, Aj, reml), theta, thetas)
    f0, g0, H0, _ = _value_grad_hess(lambda t: dense.value(t, reml), theta, thetas[:1])
    assert abs(float(f - f0)) <= 1e-10 * abs(float(f0))
    np.testing.assert_allclose(g, g0, rtol=1e-8, atol=1e-8 * float(jnp.max(jnp.abs(g0))))
    np.testing.assert_allclose(H, H0, rtol=1e-7, atol=1e-7 * float(jnp.max(jnp.abs(H0))))
    # vmap over thetas agrees with a single evaluation
    assert float(batch[0]) == pytest.approx(float(f), rel=1e-13)


_SYMMETRIC = ("d0", "amm", "abb")


@pytest.mark.parametrize("name", ["one_factor_slope", "nested_slopes", "partially_crossed",
                                  "crossed_vector", "weights_offset"])
def test_block_derivatives_equal_autodiff_of_the_definition(name):
    """The custom derivative with respect to the blocks equals automatic
    differentiation straight through the factorization (same definition), for
    symmetric perturbations of the symmetric blocks."""
    _, A, _ = _model(name)
    Aj = crossprod.to_device(A)
    theta = jnp.asarray(_theta(A.structure, 6))
    be = jax_backend()
    rule = jax.jit(jax.grad(lambda t, B: criterion.objective(t, B, True), argnums=1,
                            allow_int=True))(theta, Aj)
    plain = jax.jit(jax.grad(lambda t, B: criterion.value(t, B, True, be), argnums=1,
                             allow_int=True))(theta, Aj)
    for f in ("d0", "b0", "ent_v", "amm", "abm", "abb", "n", "p", "ldw", "logdet_x"):
        a, b = np.asarray(getattr(rule, f)), np.asarray(getattr(plain, f))
        if f in _SYMMETRIC and a.ndim >= 2:
            a, b = 0.5 * (a + np.swapaxes(a, -1, -2)), 0.5 * (b + np.swapaxes(b, -1, -2))
        if a.size:
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9 * max(np.max(np.abs(b)), 1.0),
                                       err_msg=f)


@pytest.mark.parametrize("name,reml", CASES)
def test_solve_and_conditional_variances_equal_dense_oracle(name, reml):
    d, A, place = _model(name, reml)
    s = A.structure
    theta = _theta(s, 7)
    F = factor.factorize(theta, A, NUMPY)
    sol = factor.solve(F, A, NUMPY)
    beta0, u0, sigma0, Mzz_inv = Dense(d).solve(theta, reml)
    np.testing.assert_allclose(sol.beta, beta0, rtol=1e-8, atol=1e-10)
    us = structure.per_term(sol.u0, sol.u_mid, sol.u_border, s, place)
    u = np.concatenate([x.reshape(-1) for x in us])
    np.testing.assert_allclose(u, u0, rtol=1e-8, atol=1e-10)
    nu = d.n - d.p if reml else d.n
    assert np.sqrt(sol.pwrss / nu) == pytest.approx(sigma0, rel=1e-10)
    blocks = structure.per_term_blocks(*criterion.condvar(theta, A), s, place)
    start = 0
    for t, blk in zip(d.terms, blocks):
        for lvl in range(t.nlevels):
            idx = start + lvl * t.k + np.arange(t.k)
            np.testing.assert_allclose(blk[lvl], Mzz_inv[np.ix_(idx, idx)], rtol=1e-8,
                                       atol=1e-12)
        start += t.nlevels * t.k
    # The same solve traced in JAX.
    be = jax_backend()
    solj = jax.jit(lambda t, B: factor.solve(factor.factorize(t, B, be), B, be))(
        jnp.asarray(theta), crossprod.to_device(A))
    np.testing.assert_allclose(solj.beta, sol.beta, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["crossed_vector", "crossed"])
def test_dense_coupling_equals_pairs(monkeypatch, name):
    """Past PAIR_LIMIT the first term's coupling is a dense product: same numbers
    (for a scalar first term the eager gradient takes it through one weighted
    product, criterion.gradient)."""
    monkeypatch.setattr(routing, "PAIR_WEIGHT", 0.0)        # pairs cost nothing
    _, A, _ = _model(name)
    monkeypatch.setattr(routing, "PAIR_LIMIT", 0)
    monkeypatch.setattr(routing, "MAX_BORDER", 0)           # and no border
    _, Ad, _ = _model(name)
    assert Ad.structure.dense_coupling and not A.structure.dense_coupling
    theta = _theta(A.structure, 8)
    f, g = criterion.EagerModel(A).value_grad(theta)
    fd, gd = criterion.EagerModel(Ad).value_grad(theta)
    assert fd == pytest.approx(f, rel=1e-12)
    np.testing.assert_allclose(gd, g, rtol=1e-9)
    gj = jax.grad(lambda t: criterion.objective(t, crossprod.to_device(Ad), True))(jnp.asarray(theta))
    np.testing.assert_allclose(gj, g, rtol=1e-9)


def test_blocks_follow_the_design():
    """Nested terms keep clusters of one level; a crossed term joins them into one
    cluster or, with few levels, goes to the dense border."""
    assert _model("nested_2")[1].structure.n_cl == 8          # one cluster per a
    s = _model("partially_crossed")[1].structure
    assert s.border and s.n_cl == 8                           # h in the border
    assert _model("crossed")[1].structure.n_cl in (0, 1)
    assert _model("nested_3")[1].structure.s == 1 + 3         # a with its a:b levels


@pytest.mark.parametrize("name", ["nested_3", "partially_crossed", "crossed_vector",
                                  "nested_slopes"])
def test_layout_from_level_pairs_equals_layout_from_rows(monkeypatch, name):
    """The layout analysis reads only which levels meet (level_pairs), so the layout
    from the pairs equals the one from the rows; its edges read in chunks of 5 give
    the same clusters as in one piece."""
    formula, kw = FAMILIES[name]
    d = make_design(formula, _data(), **kw)
    whole = structure.analyze(d.terms, d.p)
    pairs = structure.level_pairs(d.terms)
    for t, keys in zip(d.terms[1:], pairs):
        expect = np.unique(d.terms[0].codes * t.nlevels + t.codes)
        np.testing.assert_array_equal(keys, expect)
    monkeypatch.setattr(routing, "ENTRY_CHUNK", 5)
    s, place = structure.analyze_pairs(pairs, [t.Z.shape[1] for t in d.terms],
                                       [t.nlevels for t in d.terms], d.p)
    assert s == whole[0]
    for got, want in zip(place.cluster + place.slot, whole[1].cluster + whole[1].slot):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["crossed", "crossed_vector", "partially_crossed", "nested_slopes"])
def test_pair_operator_numpy_equals_scipy(monkeypatch, name):
    """The pair sums by NumPy weighted counts (small designs) and by a SciPy sparse
    matrix (large ones) give the same value and gradient."""
    monkeypatch.setattr(routing, "PAIR_WEIGHT", 0.0)        # keep the middle and pairs
    _, A, _ = _model(name)
    if not A.structure.n_cl:
        pytest.skip("no middle block")
    theta = _theta(A.structure, 5)
    f, g = criterion.EagerModel(A).value_grad(theta)
    monkeypatch.setattr(routing, "SPARSE_OPERATOR", 0)
    fs, gs = criterion.EagerModel(A).value_grad(theta)
    assert fs == pytest.approx(f, rel=1e-13)
    np.testing.assert_allclose(gs, g, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sa, sb", [
    ((50, 2, 2), (50, 2, 2)), ((50, 2, 2), (2, 2)), ((2, 2), (50, 2, 2)), ((50, 1, 1), (50, 1, 3)),
    ((50, 2, 2), (50, 2, 3)), ((50, 3, 3), (50, 3, 3)), ((4, 50, 2, 2), (50, 2, 2)),
    ((50, 4, 3), (3, 5)), ((50, 2, 0), (50, 0, 2)), ((3, 3), (3, 2)),
])
def test_numpy_level_products_equal_matmul(monkeypatch, sa, sb):
    """NUMPY.mm (BLAS on stacked rows, entries written out for small blocks,
    matmul otherwise) is a @ b, transposed views included."""
    monkeypatch.setattr(routing, "SMALL_PRODUCT", 0)        # every route on small data
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=sa), rng.normal(size=sb)
    np.testing.assert_allclose(NUMPY.mm(a, b), a @ b, rtol=1e-14, atol=1e-14)
    at = np.swapaxes(rng.normal(size=sa[:-2] + sa[-2:][::-1]), -1, -2)
    np.testing.assert_allclose(NUMPY.mm(at, b), at @ b, rtol=1e-14, atol=1e-14)
