"""Influence diagnostics: exact deletion refits against lme4's influence() and
against lmer on the reduced data, derivative-based refits against exact ones,
hat values against lme4's hatvalues (tests/reference/influence_reference.json,
made by make_influence_reference.R), leverage against finite differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixedjax
from conftest import _load_json
from mixedjax import influence as infl

REF = _load_json("influence_reference.json")
SLEEP = "Reaction ~ Days + (Days | Subject)"
DYE = "Yield ~ 1 + (1 | Batch)"


@pytest.fixture(scope="module")
def by_subject(sleep_fit):
    return (sleep_fit.influence(groups="Subject"),
            sleep_fit.influence(groups="Subject", exact=True, leverage=False))


@pytest.fixture(scope="module")
def dye_fit():
    return mixedjax.lmer(DYE, mixedjax.datasets.load("dyestuff"))


@pytest.fixture(scope="module")
def by_case(dye_fit):
    return dye_fit.influence(), dye_fit.influence(exact=True, leverage=False)


def _varcomp(theta, sigma):
    """lme4's var.cov.comps for (Days | Subject): sigma^2, v[(Int)], C[Days,(Int)], v[Days]."""
    t0, t1, t2 = theta.T
    s2 = sigma ** 2
    return np.stack([s2, s2 * t0 ** 2, s2 * t0 * t1, s2 * (t1 ** 2 + t2 ** 2)], axis=1)


def test_exact_group_deletion_matches_lme4(by_subject, sleep_fit):
    _, exact = by_subject
    ref = REF["sleepstudy_subject"]
    assert list(exact.fixef.index) == ref["units"]
    np.testing.assert_allclose(exact.fixef, ref["fixef_deleted"], rtol=1e-8)
    # influence() refits with lme4's default optimizer tolerances (its own control
    # overrides the caller's), so variance parameters agree to ~1e-4 only.
    np.testing.assert_allclose(exact.se, ref["se_deleted"], rtol=2e-4)
    np.testing.assert_allclose(_varcomp(exact.theta.to_numpy(), exact.sigma.to_numpy()),
                               ref["varcomp_deleted"], rtol=2e-3, atol=0.05)
    # influence.ME's definitions, and lme4's rescaled Cook's distance / opposite sign
    # (Cook's distance uses the full fit's vcov, lme4's to ~1e-5).
    np.testing.assert_allclose(exact.cooks_distance, ref["cooks_influenceME"], rtol=3e-5)
    np.testing.assert_allclose(exact.dfbetas, ref["dfbetas_influenceME"], rtol=2e-4)
    G, p = 18, 2
    np.testing.assert_allclose((G - p) / G * exact.cooks_distance, ref["cooks_lme4"], rtol=3e-5)
    np.testing.assert_allclose(-exact.dfbetas, ref["dfbetas_lme4"], rtol=2e-4)
    np.testing.assert_allclose(exact.dfbeta, exact.fixef - sleep_fit.fixef.to_numpy(),
                               rtol=1e-12)


@pytest.mark.parametrize("subject", ["308", "335"])
def test_exact_equals_lmer_on_subset(by_subject, sleepstudy, subject):
    _, exact = by_subject
    sub = sleepstudy[sleepstudy["Subject"].astype(str) != subject].copy()
    sub["Subject"] = sub["Subject"].cat.remove_unused_categories()
    m = mixedjax.lmer(SLEEP, sub)
    np.testing.assert_allclose(exact.fixef.loc[subject], m.fixef, rtol=1e-8)
    np.testing.assert_allclose(exact.theta.loc[subject], m.theta, rtol=1e-8)
    assert exact.sigma[subject] == pytest.approx(m.sigma, rel=1e-8)
    np.testing.assert_allclose(exact.se.loc[subject], m.stderr, rtol=1e-8)


def test_newton_deletion_close_to_exact(by_subject, by_case):
    """Two Newton steps from the full-data optimum (the default).

    Measured on leave-one-subject-out (sleepstudy): theta within 0.0056, se within
    0.4%, DFBETAS within 0.0016; beta is exact there (balanced design: the GLS
    estimate does not depend on theta).  Leave-one-observation-out (Dyestuff):
    beta within 2e-6 relative, Cook's distance within 0.2%, DFBETAS within 3e-4.
    """
    approx, exact = by_subject
    assert approx.method == "newton" and exact.method == "exact"
    np.testing.assert_allclose(approx.fixef, exact.fixef, rtol=1e-10)
    np.testing.assert_allclose(approx.cooks_distance, exact.cooks_distance, rtol=1e-8)
    np.testing.assert_allclose(approx.theta, exact.theta, atol=0.01)
    np.testing.assert_allclose(approx.se, exact.se, rtol=0.005)
    np.testing.assert_allclose(approx.dfbetas, exact.dfbetas, atol=0.003)
    approx, exact = by_case
    np.testing.assert_allclose(approx.fixef, exact.fixef, rtol=5e-6)
    np.testing.assert_allclose(approx.cooks_distance, exact.cooks_distance, rtol=5e-3)
    np.testing.assert_allclose(approx.dfbetas, exact.dfbetas, atol=1e-3)


def test_case_deletion_matches_lme4(by_case):
    approx, exact = by_case
    ref = REF["dyestuff_case"]
    np.testing.assert_allclose(exact.fixef, ref["fixef_deleted"], rtol=1e-9)
    np.testing.assert_allclose(exact.se, ref["se_deleted"], rtol=1e-6)
    np.testing.assert_allclose(exact.cooks_distance, ref["cooks_influenceME"], rtol=1e-5)
    np.testing.assert_allclose(exact.dfbetas, ref["dfbetas_influenceME"], rtol=1e-5,
                               atol=1e-8)
    frame = approx.to_frame()
    assert list(frame.columns) == ["hat", "leverage", "cooks_distance",
                                   "dfbetas_(Intercept)"]
    assert len(frame) == 30


@pytest.mark.parametrize("name, formula, data, weights", [
    ("sleepstudy", SLEEP, "sleepstudy", None),
    ("sleepstudy_weighted", SLEEP, "sleepstudy", "w"),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin", None),
    ("dyestuff", DYE, "dyestuff", None),
])
def test_hat_values_match_lme4_at_its_theta(name, formula, data, weights):
    df = mixedjax.datasets.load(data)
    df["w"] = 0.5 + (np.arange(1, len(df) + 1) % 7) / 4
    model = mixedjax.LMM.from_formula(formula, df, weights=weights)
    f = mixedjax.fit_fn(model)
    ref = REF["hat"][name]
    theta = jnp.atleast_1d(jnp.asarray(ref["theta"]))     # JSON unboxes length-1 vectors
    hat = infl.hat_values(f.layout, model.arrays, theta, f._X, f._w)
    np.testing.assert_allclose(hat, ref["hat"], rtol=1e-9, atol=1e-12)


def test_hat_and_leverage_by_group(by_subject, sleep_fit):
    approx, _ = by_subject
    hat = infl.hatvalues(sleep_fit)
    np.testing.assert_allclose(hat, REF["hat"]["sleepstudy"]["hat"], rtol=1e-5)
    codes = sleep_fit.model.design.terms[0].codes
    np.testing.assert_allclose(approx.hat, np.bincount(codes, weights=hat.to_numpy()),
                               rtol=1e-12)
    # theta's response to y adds leverage.
    assert np.all(approx.leverage > approx.hat)


@jax.jit
def _fitted(theta, L, A, X):
    return infl.fitted_at(theta, L, A, X, True)


def test_leverage_is_total_derivative_of_fitted(by_case, dye_fit):
    """leverage_i = d fitted_i / d y_i with theta refitted (central differences)."""
    approx, _ = by_case
    f = mixedjax.fit_fn(dye_fit)
    y = jnp.asarray(dye_fit.model.design.y)
    for i in (0, 22):
        h = 1e-4 * abs(float(y[i]))
        vals = []
        for sgn in (1, -1):
            yy = y.at[i].add(sgn * h)
            vals.append(_fitted(f(yy).theta, f.layout, f.arrays(yy), f._X)[i])
        fd = float(vals[0] - vals[1]) / (2 * h)
        assert approx.leverage.iloc[i] == pytest.approx(fd, rel=1e-6)
        assert approx.hat.iloc[i] == pytest.approx(REF["hat"]["dyestuff"]["hat"][i], rel=1e-5)


def test_linear_method_is_first_order(dye_fit, by_case):
    """The linear approximation is beta + (d beta / d w_i)(-w_i); the derivative is
    checked against central differences of refits in the weight."""
    lin = dye_fit.influence(method="linear", leverage=False)
    f = mixedjax.fit_fn(dye_fit)
    y, w = dye_fit.model.design.y, np.ones(30)
    h = 1e-4
    up, down = f(y, None, w + h * np.eye(30)[4]), f(y, None, w - h * np.eye(30)[4])
    slope = float(up.beta[0] - down.beta[0]) / (2 * h)
    assert lin.fixef.iloc[4, 0] == pytest.approx(dye_fit._beta[0] - slope, rel=1e-10)
    # It errs by the order of the leverage (~0.16 here) relative to the exact change.
    _, exact = by_case
    ratio = lin.dfbeta.iloc[:, 0] / exact.dfbeta.iloc[:, 0]
    assert np.all((ratio > 0.6) & (ratio < 1.0))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(groups="Patient"), ValueError, r"unknown group column\(s\) \['Patient'\]"),
    (dict(groups=3), TypeError, "groups must be None, a column name"),
    (dict(method="jackknife"), ValueError, "method must be one of"),
    (dict(steps=0), ValueError, "steps must be a positive integer"),
])
def test_bad_input(sleep_fit, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sleep_fit.influence(**kwargs)


def test_warns_when_a_deletion_empties_a_fixed_effects_column():
    X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    W = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])     # unit "b" holds x's only non-zero
    with pytest.warns(UserWarning, match=r"without data.*\['b \(x\)'\]"):
        infl._warn_empty_columns(W, X, ["a", "b"], ["(Intercept)", "x"])
