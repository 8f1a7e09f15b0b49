"""Random-effects columns far from zero: the factor works in centred columns Z S with
lambda S^-1-mapped (structure.centring_basis), the optimizer searches there, and
every reported number stays in the model's own columns."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import routing, structure
from mixedjax.model import LMM


def _lower_checks(A, L):
    np.testing.assert_allclose(L @ np.swapaxes(L, -1, -2), A @ np.swapaxes(A, -1, -2),
                               rtol=1e-12, atol=1e-12 * np.max(np.abs(A)) ** 2)
    assert np.all(np.triu(L, 1) == 0.0)
    assert np.all(np.diagonal(L, 0, -2, -1) >= 0.0)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_lower_factor_keeps_the_gram_matrix(k):
    rng = np.random.default_rng(k)
    A = rng.normal(size=(5, k, k))
    A[0, :, 1] = 0.0                                     # singular: a zero column
    A[1] = np.outer(rng.normal(size=k), rng.normal(size=k))   # rank one
    L = structure.lower_factor(A)
    _lower_checks(A, L)
    Lj = jax.jit(lambda a: structure.lower_factor(a, jnp))(jnp.asarray(A))
    np.testing.assert_allclose(Lj, L, rtol=1e-12, atol=1e-14)
    # A lower-triangular A with a non-negative diagonal is its own factor.
    T = np.tril(rng.normal(size=(k, k)))
    T[np.diag_indices(k)] = np.abs(np.diagonal(T))
    np.testing.assert_allclose(structure.lower_factor(T), T, rtol=1e-13, atol=1e-15)


def _data(shift, seed=3, n=300, groups=30):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    b = rng.normal(size=(groups, 2)) * [1.0, 0.5]
    y = 1.0 + 0.4 * x + b[g, 0] + b[g, 1] * x + 0.3 * rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x + shift, "g": g.astype(str)})


def test_basis_only_for_columns_far_from_zero():
    near = LMM.from_formula("y ~ x + (x | g)", _data(0.0))
    far = LMM.from_formula("y ~ x + (x | g)", _data(1e4))
    assert near.structure.basis == ()
    (S,) = far.structure.basis
    np.testing.assert_allclose(np.asarray(S), [[1.0, -np.mean(_data(1e4).x)], [0.0, 1.0]])
    # without an intercept column there is nothing to centre against
    assert LMM.from_formula("y ~ x + (0 + x | g)", _data(1e4)).structure.basis == ()


def test_theta_round_trip_through_the_centred_coordinates():
    model = LMM.from_formula("y ~ x + (x | g)", _data(1e3))
    s = model.structure
    rng = np.random.default_rng(0)
    for _ in range(5):
        phi = np.array([rng.uniform(0.1, 2), rng.normal(), rng.uniform(0.1, 2)])
        theta = structure.from_centred(phi, s)
        np.testing.assert_allclose(structure.to_centred(theta, s), phi, rtol=1e-8)
        # the same covariance: lambda(theta) lambda(theta)' = S lambda(phi) lambda(phi)' S'
        (S,) = [np.asarray(b) for b in s.basis]
        lt = structure.lambdas(theta, s)[0]
        lp = structure.lambdas(phi, s)[0]
        np.testing.assert_allclose(lt @ lt.T, S @ lp @ lp.T @ S.T, rtol=1e-10)


@pytest.mark.parametrize("optimizer", ["bfgs", "newton"])
@pytest.mark.parametrize("shift", [1e3, 1e4, 1e6])
def test_a_shifted_slope_is_the_same_model(shift, optimizer):
    """(1 + x | g) and (1 + (x + c) | g) are one model: the same criterion, slope,
    sigma and slope variance; only the intercepts' covariances move."""
    base = mixedjax.lmer("y ~ x + (x | g)", _data(0.0), optimizer=optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = mixedjax.lmer("y ~ x + (x | g)", _data(shift), optimizer=optimizer)
    assert m.converged
    assert m.objective == pytest.approx(base.objective, rel=1e-9)
    assert m.fixef["x"] == pytest.approx(base.fixef["x"], rel=1e-6)
    assert m.sigma == pytest.approx(base.sigma, rel=1e-6)
    vc, vb = m.varcorr.set_index(["var1", "var2"]), base.varcorr.set_index(["var1", "var2"])
    assert vc.loc[("x", None), "vcov"] == pytest.approx(vb.loc[("x", None), "vcov"], rel=1e-5)
    # the model's own criterion at the reported theta is the reported objective
    assert float(m.model.objective(m.theta)) == pytest.approx(m.objective, rel=1e-10)
    # conditional modes: the slopes are the same; Z b is the same fitted values
    np.testing.assert_allclose(m.ranef["g"]["x"], base.ranef["g"]["x"], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(m.fitted, base.fitted, rtol=1e-7)


def test_the_reported_gradient_is_small_in_the_model_coordinates():
    m = mixedjax.lmer("y ~ x + (x | g)", _data(1e4))
    g = np.asarray(jax.grad(m.model.objective)(jnp.asarray(m.theta)))
    # theta spans 1e4 (the intercept at x = 0): scale each entry by theta
    assert np.max(np.abs(g * np.maximum(np.abs(m.theta), 1.0))) < 1e-4


def test_batched_refits_equal_single_fits():
    fit = mixedjax.lmer("y ~ x + (x | g)", _data(1e4))
    Y = fit.simulate(12, key=3)
    b = fit.refit_many(Y)
    assert b.converged.all()
    for i in range(len(b)):
        single = LMM(dataclasses.replace(fit.model.design, y=Y[i])).fit(theta0=fit.theta)
        assert b.objective[i] == pytest.approx(single.objective, rel=1e-10)
        np.testing.assert_allclose(b.fixef.iloc[i], single.fixef, rtol=1e-6, atol=1e-8)


def test_the_threshold_changes_no_number(monkeypatch):
    """Centring is a choice of basis: below its threshold the fit is the same."""
    d = _data(50.0)
    centred = mixedjax.lmer("y ~ x + (x | g)", d)
    monkeypatch.setattr(routing, "CENTRE_RATIO", np.inf)
    raw = mixedjax.lmer("y ~ x + (x | g)", d)
    assert centred.model.structure.basis and not raw.model.structure.basis
    assert centred.objective == pytest.approx(raw.objective, rel=1e-10)
    np.testing.assert_allclose(centred.fixef, raw.fixef, rtol=1e-6)
    np.testing.assert_allclose(centred.theta, raw.theta, rtol=1e-5)
