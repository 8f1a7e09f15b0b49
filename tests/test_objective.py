"""The profiled criterion as a pure JAX function: values against lme4 at fixed theta,
the blocked sparse path against a dense computation, and JAX transformations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import criterion, crossprod, structure
from mixedjax.compiled import fit_arrays

from conftest import CASES, EXTRA, case_data

FIXED = EXTRA["fixed_theta"]


def _model(case: str, reml: bool):
    spec = CASES[case]
    df = case_data(spec["data"], spec["factors"].split(","))
    return mixedjax.LMM.from_formula(spec["formula"], df, reml=reml)


def _blocks(design, stable=True):
    s, place = structure.analyze(design.terms, design.p)
    return crossprod.build(design.terms, design.X, design.y, s, place, stable=stable)[0]


@pytest.mark.parametrize("case", sorted(FIXED))
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_objective_at_fixed_theta_equals_lme4(case, method):
    """lme4's devfun at four thetas (start, 0.5x, 1.5x+0.1, mixed signs)."""
    ref = FIXED[case][method]
    m = _model(case, reml=method == "reml")
    got = np.asarray(m.objective(np.array(ref["thetas"])))      # batched over rows
    np.testing.assert_allclose(got, ref["objective"], rtol=1e-9)


@pytest.mark.parametrize("case", sorted(EXTRA["extra_fits"]))
def test_extra_models_at_start_theta(case):
    ref = EXTRA["extra_fits"][case]
    df = case_data(ref["data"], ref["factors"], ref.get("na_rows"))
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        m = mixedjax.LMM.from_formula(ref["formula"], df, reml=bool(ref["reml"]))
    got = float(m.objective(np.array(ref["fixed_theta"]["theta"], dtype=float)))
    assert got == pytest.approx(ref["fixed_theta"]["objective"], rel=1e-9)


# --------------------------------------------------------------------------------
# A plain dense computation of the same criterion (JSS eqs. 34-42), for comparison.
# --------------------------------------------------------------------------------
def dense_objective(theta, design, reml):
    n, p = design.X.shape
    blocks, lam_blocks = [], []
    lams = structure.lambdas(np.asarray(theta, float), _structure(design))
    for t, lam in zip(design.terms, lams):
        Zt = np.zeros((n, t.nlevels * t.k))
        for j in range(t.k):
            Zt[np.arange(n), t.codes * t.k + j] = t.Z[:, j]
        blocks.append(Zt)
        lam_blocks.append(np.kron(np.eye(t.nlevels), lam))
    Z = np.hstack(blocks)
    q = Z.shape[1]
    Lam = np.zeros((q, q))
    off = 0
    for lb in lam_blocks:
        Lam[off:off + lb.shape[0], off:off + lb.shape[0]] = lb
        off += lb.shape[0]
    ZL = Z @ Lam
    X, y = design.X, design.y
    M = np.block([[ZL.T @ ZL + np.eye(q), ZL.T @ X], [X.T @ ZL, X.T @ X]])
    sol = np.linalg.solve(M, np.concatenate([ZL.T @ y, X.T @ y]))
    u, beta = sol[:q], sol[q:]
    r = y - X @ beta - ZL @ u
    pwrss = r @ r + u @ u
    A = ZL.T @ ZL + np.eye(q)
    ld_z = np.linalg.slogdet(A)[1]
    schur = X.T @ X - X.T @ ZL @ np.linalg.solve(A, ZL.T @ X)
    ld_x = np.linalg.slogdet(schur)[1]
    dof = n - p if reml else n
    val = ld_z + dof * (1 + math.log(2 * math.pi * pwrss / dof))
    return val + ld_x if reml else val


def _structure(design):
    return structure.Structure(k=tuple(t.k for t in design.terms),
                         m=tuple(t.nlevels for t in design.terms), p=design.p)


def _random_design(rng, kind: str):
    """Small random designs: crossed, nested, partially crossed, vector-valued crossed."""
    n = 160
    a = rng.integers(0, 12, n)
    if kind == "nested":
        b = a * 3 + rng.integers(0, 3, n)       # b nested in a
    elif kind == "partial":
        b = np.where(rng.random(n) < 0.7, a // 2, rng.integers(0, 9, n))
    else:
        b = rng.integers(0, 7, n)
    df = pd.DataFrame({"a": a.astype(str), "b": b.astype(str), "x": rng.normal(size=n),
                       "z": rng.normal(size=n)})
    df["y"] = 1 + df.x + rng.normal(size=n) + 0.5 * rng.normal(size=12)[a]
    formulas = {
        "crossed": "y ~ x + (1 | a) + (1 | b)",
        "nested": "y ~ x + (1 | a) + (1 | b)",
        "partial": "y ~ x + (1 | a) + (1 | b)",
        "vector_crossed": "y ~ x + (1 + x | a) + (1 + z | b)",
        "three_terms": "y ~ x + (1 + x | a) + (1 | b) + (0 + z | b)",
    }
    return mixedjax.make_design(formulas[kind], df)


DESIGNS = ["crossed", "nested", "partial", "vector_crossed", "three_terms"]


@pytest.mark.parametrize("kind", DESIGNS)
@pytest.mark.parametrize("reml", [True, False])
def test_blocked_path_equals_dense(kind, reml):
    rng = np.random.default_rng(42)
    design = _random_design(rng, kind)
    for stable in (True, False):
        A = _blocks(design, stable)
        eager = criterion.EagerModel(A, reml)
        Aj = crossprod.to_device(A)
        for _ in range(3):
            theta = rng.normal(size=A.structure.ntheta)
            want = dense_objective(theta, design, reml)
            assert float(criterion.objective(theta, Aj, reml)) == pytest.approx(want, rel=1e-10)
            assert eager.value(theta) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("case", ["penicillin_crossed", "pastes_nested", "machines_nested"])
def test_reference_designs_equal_dense(case):
    m = _model(case, reml=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        theta = np.abs(rng.normal(size=m.ntheta)) + 0.1
        assert float(m.objective(theta)) == pytest.approx(
            dense_objective(theta, m.design, True), rel=1e-10)


@pytest.mark.parametrize("case", ["sleepstudy_reml", "penicillin_crossed", "orthodont_slopes",
                                  pytest.param("oats_splitplot", marks=pytest.mark.slow)])
def test_gradient_matches_finite_differences(case):
    m = _model(case, reml=True)
    theta = m.initial_theta() * 0.8 + 0.05
    g = np.asarray(jax.grad(m.objective)(theta))
    h = 1e-5
    fd = np.array([(float(m.objective(theta + h * e)) - float(m.objective(theta - h * e))) / (2 * h)
                   for e in np.eye(len(theta))])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_gradient_through_sparse_path_matches_finite_differences():
    design = _random_design(np.random.default_rng(3), "vector_crossed")
    A = crossprod.to_device(_blocks(design))
    theta = np.random.default_rng(4).normal(size=A.structure.ntheta)
    g = np.asarray(jax.grad(criterion.objective)(theta, A, True))
    h = 1e-5
    fd = np.array([(float(criterion.objective(theta + h * e, A, True))
                    - float(criterion.objective(theta - h * e, A, True))) / (2 * h)
                   for e in np.eye(len(theta))])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_hessian_is_symmetric_and_positive_at_optimum(sleep_fit):
    H = np.asarray(jax.hessian(sleep_fit.model.objective)(sleep_fit.theta))
    np.testing.assert_allclose(H, H.T, rtol=1e-10, atol=1e-10)
    assert np.linalg.eigvalsh(H).min() > 0
    # Hessian by autodiff agrees with central differences of the exact gradient.
    grad = jax.grad(sleep_fit.model.objective)
    h = 1e-5
    fd = np.column_stack([(np.asarray(grad(sleep_fit.theta + h * e))
                           - np.asarray(grad(sleep_fit.theta - h * e))) / (2 * h)
                          for e in np.eye(3)])
    np.testing.assert_allclose(H, fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_vanishes_at_optimum(case):
    spec = CASES[case]
    m = mixedjax.lmer(spec["formula"], case_data(spec["data"], spec["factors"].split(",")),
                      reml=spec["reml"] == "TRUE")
    g = np.asarray(jax.grad(m.model.objective)(m.theta))
    assert np.max(np.abs(g)) < 1e-5
    assert m.optinfo["grad_max"] < 1e-5
    assert m.optinfo["iterations"] < 30


def test_vmap_and_jit_equal_loop(sleep_fit):
    model = sleep_fit.model
    thetas = np.random.default_rng(1).normal(size=(7, model.ntheta))
    looped = np.array([float(model.objective(t)) for t in thetas])
    vmapped = np.asarray(jax.vmap(model.objective)(thetas))
    jitted = np.asarray(jax.jit(jax.vmap(model.objective))(thetas))
    pure = np.asarray(jax.jit(jax.vmap(criterion.objective, (0, None, None)))(
        thetas, model.arrays, True))
    np.testing.assert_allclose(vmapped, looped, rtol=1e-12)
    np.testing.assert_allclose(jitted, looped, rtol=1e-12)
    np.testing.assert_allclose(pure, looped, rtol=1e-12)


def test_batched_fit_equals_single_fits(sleepstudy):
    """vmap of the compiled fit over responses sharing one design."""
    model = mixedjax.LMM.from_formula("Reaction ~ Days + (Days | Subject)", sleepstudy)
    rng = np.random.default_rng(7)
    ys = sleepstudy.Reaction.to_numpy() + rng.normal(scale=20.0, size=(4, len(sleepstudy)))
    arrays = []
    for y in ys:
        df = sleepstudy.assign(Reaction=y)
        arrays.append(mixedjax.LMM.from_formula("Reaction ~ Days + (Days | Subject)", df).arrays)
    batched = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *arrays)
    out = jax.jit(jax.vmap(fit_arrays, (None, 0)))(jnp.asarray(model.initial_theta()), batched)
    for i, y in enumerate(ys):
        single = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy.assign(Reaction=y))
        np.testing.assert_allclose(np.asarray(out.theta[i]), single.theta, rtol=1e-8, atol=1e-10)
        assert float(out.objective[i]) == pytest.approx(single.objective, rel=1e-12)


@pytest.mark.parametrize("case", [pytest.param("penicillin_crossed", marks=pytest.mark.slow),
                                  "sleepstudy_reml"])
def test_bfgs_reaches_newtons_optimum(case):
    m = _model(case, reml=True)
    newton = m.fit(optimizer="newton")
    bfgs = m.fit(optimizer="bfgs")
    assert bfgs.converged and bfgs.optinfo["optimizer"].startswith("BFGS")
    assert bfgs.objective == pytest.approx(newton.objective, rel=1e-10)
    np.testing.assert_allclose(bfgs.theta, newton.theta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bfgs.fixef, newton.fixef, rtol=1e-6)


def test_unknown_optimizer(sleep_fit):
    with pytest.raises(ValueError, match="optimizer must be"):
        sleep_fit.model.fit(optimizer="nelder-mead")


def test_newton_moves_off_a_stationary_point_with_negative_curvature():
    """From lme4's start theta = 1 the damped step lands exactly on theta = 0, where
    the even criterion has a zero gradient but is a local maximum in theta."""
    m = mixedjax.lmer("diameter ~ 1 + (1 | plate)", mixedjax.datasets.load("penicillin"))
    assert m.converged
    assert m.objective == pytest.approx(613.2560240, rel=1e-8)   # lme4's REML criterion
    assert m.theta[0] == pytest.approx(0.15354, rel=1e-3)
