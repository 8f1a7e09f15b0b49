"""What the fit must not depend on: a shift or scale of the response, the scale of a
covariate, the order of the rows, the labels of the levels; and the one definition of
the criterion: the objective a fit reports is the model's objective at its theta."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax.design import lme4_term_order

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    return mixedjax.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_fit(sleep):
    return mixedjax.lmer(FORMULA, sleep)


def _model(data, formula=FORMULA, reml=True):
    return mixedjax.LMM.from_formula(formula, data, reml=reml)


@pytest.mark.parametrize("shift", [1e4, 1e6, 1e8, -1e8])
@pytest.mark.parametrize("reml", [True, False])
def test_criterion_is_exact_under_a_response_shift(sleep, sleep_fit, shift, reml):
    """The profiled criterion is invariant under y -> y + X c; the cross-products are
    formed in a basis where no digits are lost to the offset."""
    theta = sleep_fit.theta
    base = _model(sleep, reml=reml)
    moved = _model(sleep.assign(Reaction=sleep.Reaction + shift), reml=reml)
    f0 = base.eager.value(theta)
    assert moved.eager.value(theta) == pytest.approx(f0, rel=1e-10)
    assert float(moved.objective(theta)) == pytest.approx(f0, rel=1e-10)


def test_fit_of_a_shifted_response_differs_only_in_the_intercept(sleep, sleep_fit):
    shifted = mixedjax.lmer(FORMULA, sleep.assign(Reaction=sleep.Reaction + 1e7))
    assert shifted.converged
    np.testing.assert_allclose(shifted.theta, sleep_fit.theta, rtol=1e-7, atol=1e-9)
    assert shifted.objective == pytest.approx(sleep_fit.objective, rel=1e-10)
    assert shifted.sigma == pytest.approx(sleep_fit.sigma, rel=1e-7)
    assert shifted.fixef["Days"] == pytest.approx(sleep_fit.fixef["Days"], rel=1e-7)
    assert shifted.fixef["(Intercept)"] - 1e7 == pytest.approx(
        sleep_fit.fixef["(Intercept)"], rel=1e-7)
    np.testing.assert_allclose(shifted.stderr, sleep_fit.stderr, rtol=1e-6)


def test_shift_by_a_covariate_moves_only_its_coefficient():
    """y -> y + 1e6 x: the slope moves by 1e6, nothing else (y ~ x + (1|g))."""
    rng = np.random.default_rng(3)
    g = rng.integers(0, 30, 600)
    x = rng.normal(size=600)
    y = 1 + 2 * x + rng.normal(size=30)[g] + rng.normal(size=600)
    df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    m0 = mixedjax.lmer("y ~ x + (1 | g)", df)
    m1 = mixedjax.lmer("y ~ x + (1 | g)", df.assign(y=df.y + 1e6 + 1e6 * df.x))
    assert m1.converged
    assert m1.objective == pytest.approx(m0.objective, rel=1e-10)
    np.testing.assert_allclose(m1.theta, m0.theta, rtol=1e-7)
    assert m1.fixef["x"] - 1e6 == pytest.approx(m0.fixef["x"], rel=1e-7)


@pytest.mark.parametrize("reml", [True, False])
def test_response_scale(sleep, sleep_fit, reml):
    """y -> c y: theta unchanged, sigma, beta and the BLUPs times c, the criterion
    plus nu log c^2 (nu = n - p for REML, n for ML)."""
    c = 1e-3
    m0 = sleep_fit if reml else mixedjax.lmer(FORMULA, sleep, reml=False)
    m1 = mixedjax.lmer(FORMULA, sleep.assign(Reaction=c * sleep.Reaction), reml=reml)
    nu = m0.nobs - len(m0.fixef) if reml else m0.nobs
    assert m1.objective == pytest.approx(m0.objective + nu * np.log(c ** 2), rel=1e-10)
    np.testing.assert_allclose(m1.theta, m0.theta, rtol=1e-6)
    assert m1.sigma == pytest.approx(c * m0.sigma, rel=1e-7)
    np.testing.assert_allclose(m1.fixef, c * m0.fixef, rtol=1e-7)
    np.testing.assert_allclose(m1.ranef["Subject"], c * m0.ranef["Subject"], rtol=1e-5,
                               atol=1e-9)


@pytest.mark.parametrize("reml", [True, False])
def test_covariate_scale(sleep, sleep_fit, reml):
    """x -> c x in the fixed part only (X -> X T): beta_x / c, theta unchanged, the
    REML criterion plus log c^2 (log|R_X|^2), the deviance unchanged."""
    c = 1e4
    formula = "Reaction ~ Days + (1 | Subject)"
    df = sleep.assign(D2=c * sleep.Days)
    m0 = mixedjax.lmer(formula, df, reml=reml)
    m1 = mixedjax.lmer("Reaction ~ D2 + (1 | Subject)", df, reml=reml)
    shift = np.log(c ** 2) if reml else 0.0
    assert m1.objective == pytest.approx(m0.objective + shift, rel=1e-10)
    np.testing.assert_allclose(m1.theta, m0.theta, rtol=1e-7)
    assert m1.fixef["D2"] == pytest.approx(m0.fixef["Days"] / c, rel=1e-8)
    assert m1.stderr["D2"] == pytest.approx(m0.stderr["Days"] / c, rel=1e-6)


FAMILIES = {
    "nested": "y ~ x + (1 | a/b)",
    "crossed_slopes": "y ~ x + (1 + x | a) + (1 | h)",
}


def _grouped(seed=0, n=400):
    rng = np.random.default_rng(seed)
    a, b, h = rng.integers(0, 12, n), rng.integers(0, 4, n), rng.integers(0, 9, n)
    x = rng.normal(size=n)
    y = (1 + x + rng.normal(size=12)[a] + 0.5 * rng.normal(size=(12, 4))[a, b]
         + 0.7 * rng.normal(size=9)[h] + 0.3 * rng.normal(size=12)[a] * x + rng.normal(size=n))
    return pd.DataFrame({"a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b],
                         "h": [f"h{i}" for i in h], "x": x, "y": y})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_row_permutation_and_relabeling(family):
    formula = FAMILIES[family]
    df = _grouped()
    m0 = mixedjax.lmer(formula, df)
    rng = np.random.default_rng(11)
    perm = df.iloc[rng.permutation(len(df))]
    m1 = mixedjax.lmer(formula, perm)
    assert m1.objective == pytest.approx(m0.objective, rel=1e-10)
    np.testing.assert_allclose(m1.theta, m0.theta, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(m1.fixef, m0.fixef, rtol=1e-8)

    # new labels whose sorted order differs from the old one
    new = {f"a{i}": f"z{(7 * i) % 12:02d}" for i in range(12)}
    relabeled = df.assign(a=df.a.map(new))
    m2 = mixedjax.lmer(formula, relabeled)
    assert m2.objective == pytest.approx(m0.objective, rel=1e-10)
    np.testing.assert_allclose(m2.theta, m0.theta, rtol=1e-6, atol=1e-8)
    r0 = m0.ranef["a"].rename(index=new).sort_index()
    np.testing.assert_allclose(m2.ranef["a"].sort_index(), r0, rtol=1e-5, atol=1e-8)


DESIGNS = {
    "one_factor": "y ~ x + (1 | a)",
    "slopes": "y ~ x + (1 + x | a)",
    "nested_3": "y ~ x + (1 | a/b/h)",
    "partially_crossed": "y ~ x + (1 | a/b) + (1 | h)",
    "crossed_vector": "y ~ x + (1 + x | a) + (1 + x | h)",
    "uncorrelated": "y ~ x + (x || a) + (1 | h)",
}


# the compiled (newton) fit of every design compiles a program each: two by default
@pytest.mark.parametrize("name,optimizer", [
    (name, opt) if opt == "bfgs" or name in ("slopes", "partially_crossed")
    else pytest.param(name, opt, marks=pytest.mark.slow)
    for name in sorted(DESIGNS) for opt in ("bfgs", "newton")])
def test_reported_objective_is_the_models_objective(name, optimizer):
    m = _model(_grouped(seed=5), DESIGNS[name]).fit(optimizer=optimizer)
    model = m.model
    assert float(model.objective(m.theta)) == pytest.approx(m.objective, rel=1e-12)
    assert model.eager.value(m.theta) == pytest.approx(m.objective, rel=1e-12)


def test_term_order_follows_lme4():
    """lme4 reorders terms by rev(order(nl)) only when the numbers of levels are not
    already non-increasing, so tied terms come out in reverse formula order
    (checked against lme4 1.1: y ~ x + (1|a) + (0+x|a) + (1|b) gives b, a:x, a:1)."""
    assert lme4_term_order([5, 5, 20]) == [2, 1, 0]
    assert lme4_term_order([5, 5]) == [0, 1]
    assert lme4_term_order([20, 5, 5]) == [0, 1, 2]
    assert lme4_term_order([3, 10, 3, 7]) == [1, 3, 2, 0]
    df = _grouped()                       # a: 12 levels, h: 9
    d = mixedjax.make_design("y ~ x + (1 | h) + (0 + x | h) + (1 | a)", df)
    assert [(t.group_name, t.cnames) for t in d.terms] == [
        ("a", ["(Intercept)"]), ("h", ["x"]), ("h", ["(Intercept)"])]
    d = mixedjax.make_design("y ~ x + (1 | a) + (0 + x | a)", df)
    assert [t.cnames for t in d.terms] == [["(Intercept)"], ["x"]]
