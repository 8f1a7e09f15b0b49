"""Power by simulation against exact answers, power curves, plots and bad input.

The study: G groups of J observations, a three-level treatment assigned to whole
groups (balanced), random group intercepts.  The REML fit then reproduces the
classical between-group analysis, whose Satterthwaite df are exactly G - 3, so the
t statistic of a treatment contrast is noncentral t and the F statistic of the
treatment term noncentral F (Searle, Casella & McCulloch 1992, section 3.6): the
simulated power must match within Monte Carlo error.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedjax
from mixedjax.powersim import PowerResult, resize_design

matplotlib.use("Agg")

G, J = 12, 4
TAU2, SIGMA = 1.0, 1.0
BETA = [0.0, 2.0, 1.0]            # (Intercept), trtB, trtC
PARAMS = {"beta": BETA, "VarCorr": {"g": TAU2}, "sigma": SIGMA}
FORMULA = "y ~ trt + (1 | g)"
NSIM = 1000


def design(groups: int = G, per: int = J) -> pd.DataFrame:
    g = np.repeat(np.arange(groups), per)
    return pd.DataFrame({"g": g.astype(str), "trt": np.array(list("ABC"))[g % 3]})


def exact_t_power(groups: int, alpha: float = 0.05) -> float:
    var_mean = TAU2 + SIGMA ** 2 / J                     # variance of a group mean
    se = np.sqrt(var_mean * 2 / (groups / 3))
    df = groups - 3
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = BETA[1] / se
    return stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp)


def exact_f_power(groups: int, alpha: float = 0.05) -> float:
    mu = np.array([0.0, BETA[1], BETA[2]])
    lam = (groups / 3) * np.sum((mu - mu.mean()) ** 2) / (TAU2 + SIGMA ** 2 / J)
    df2 = groups - 3
    return stats.ncf.sf(stats.f.ppf(1 - alpha, 2, df2), 2, df2, lam)


def within_mc_error(res: PowerResult, exact: float, nsim: int) -> bool:
    return abs(res.power - exact) < 4 * np.sqrt(exact * (1 - exact) / nsim)


@pytest.fixture(scope="module")
def t_power():
    return mixedjax.power(design(), FORMULA, PARAMS, test="trtB", nsim=NSIM, key=1)


def test_satterthwaite_t_power_is_exact(t_power):
    assert t_power.n_failed == 0 and t_power.nsim == NSIM and t_power.nobs == G * J
    assert within_mc_error(t_power, exact_t_power(G), NSIM)
    assert t_power.se == pytest.approx(np.sqrt(t_power.power * (1 - t_power.power) / NSIM))
    k = int(round(t_power.power * NSIM))
    lo, hi = stats.binomtest(k, NSIM).proportion_ci(0.95, method="exact")
    assert (t_power.lower, t_power.upper) == pytest.approx((lo, hi))
    assert "Satterthwaite t test of 'trtB'" in repr(t_power)
    fig = t_power.plot()
    assert len(fig.axes) == 1


@pytest.mark.slow
def test_satterthwaite_f_power_is_exact():
    res = mixedjax.power(design(), FORMULA, PARAMS, test="trt", nsim=NSIM, key=2)
    assert res.test == "Satterthwaite F test of term 'trt'"
    assert within_mc_error(res, exact_f_power(G), NSIM)


def test_p_values_equal_single_fits(t_power):
    """The p-values of replicate 0 from separate fits of its simulated response."""
    y = mixedjax.simulate_design(FORMULA, design(), PARAMS, nsim=1, key=1)[0]
    data = design().assign(y=y)
    fit = mixedjax.lmer(FORMULA, data)
    p_t = fit.coef_table().loc["trtB", "Pr(>|t|)"]
    assert t_power.pvalues[0] == pytest.approx(p_t, rel=1e-6)
    wald = mixedjax.power(design(), FORMULA, PARAMS, test="wald:trtB", nsim=100, key=1)
    z = fit.fixef["trtB"] / fit.stderr["trtB"]
    assert wald.pvalues[0] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-6)
    lrt = mixedjax.power(design(), FORMULA, PARAMS, test="lrt:trt", nsim=100, key=1)
    full = mixedjax.lmer(FORMULA, data, reml=False)
    null = mixedjax.lmer("y ~ 1 + (1 | g)", data, reml=False)
    assert lrt.pvalues[0] == pytest.approx(
        stats.chi2.sf(null.objective - full.objective, 2), rel=1e-6)
    reduced = mixedjax.power(design(), FORMULA, PARAMS, test="y ~ 1 + (1 | g)", nsim=100,
                             key=1)
    np.testing.assert_allclose(reduced.pvalues, lrt.pvalues, rtol=1e-9)


def test_power_curve_along_groups_and_plot():
    pc = mixedjax.power_curve(design(), FORMULA, PARAMS, along="n_groups", values=[6, 12],
                              test="trtB", nsim=300, key=3)
    assert list(pc.table.columns) == ["size", "power", "se", "lower", "upper", "nobs",
                                      "n_failed"]
    assert list(pc.table["size"]) == [6, 12] and list(pc.table["nobs"]) == [24, 48]
    for res, size in zip(pc.results, [6, 12]):
        assert within_mc_error(res, exact_t_power(size), 300)
    assert pc.table["power"].iloc[0] < pc.table["power"].iloc[1]
    fig = pc.plot()
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and ax.get_xlabel() == "n groups"
    # A design function giving the same designs gives the same curve.
    curve = mixedjax.power_curve(lambda size: design(size), FORMULA, PARAMS,
                                 values=[6, 12], test="trtB", nsim=300, key=3)
    pd.testing.assert_frame_equal(curve.table, pc.table)


def test_resize_design():
    d = design(3, 2)
    more = resize_design(d, "g", "n_groups", 7)
    assert more["g"].nunique() == 7 and len(more) == 14
    assert list(more["g"].iloc[::2]) == ["0", "1", "2", "0.1", "1.1", "2.1", "0.2"]
    assert list(more["trt"].iloc[::2]) == list("ABCABCA")
    longer = resize_design(d, "g", "n_per_group", 5)
    assert len(longer) == 15 and (longer.groupby("g").size() == 5).all()


def test_power_of_a_null_effect_is_the_level():
    params = {**PARAMS, "beta": [0.0, 0.0, 0.0]}
    res = mixedjax.power(design(), FORMULA, params, test="trtB", nsim=NSIM, key=4)
    assert within_mc_error(res, 0.05, NSIM)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"test": "nope"}, ValueError, "unknown coefficient"),
    ({"test": "t:trt"}, ValueError, "unknown coefficient"),
    ({"test": "F:trtB"}, ValueError, "unknown term"),
    ({"test": "anova:trt"}, ValueError, "unknown test"),
    ({"test": 3}, TypeError, "test must be a string"),
    ({"test": "y ~ trt + (1 | g)"}, ValueError, "not smaller"),
    ({"nsim": 0}, ValueError, "nsim must be a positive integer"),
    ({"alpha": 1.5}, ValueError, "alpha must be strictly between"),
    ({"params": {"beta": BETA, "sigma": 1.0}}, ValueError, "needs params"),
    ({"params": {**PARAMS, "beta": [1.0]}}, ValueError, "beta must have 3 entries"),
    ({"design": [1, 2]}, TypeError, "DataFrame"),
])
def test_bad_power_input(kwargs, err, match):
    args = {"design": design(), "formula": FORMULA, "params": PARAMS, "test": "trtB",
            "nsim": 10, **kwargs}
    with pytest.raises(err, match=match):
        mixedjax.power(**args)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"along": "n_items"}, ValueError, "along must be"),
    ({"values": []}, ValueError, "study sizes"),
    ({"values": [0, 4]}, ValueError, "positive integers"),
    ({"group": "h"}, ValueError, "grouping column 'h'"),
    ({"design": "data"}, TypeError, "DataFrame or a function"),
    ({"design": lambda size: None}, TypeError, "not a DataFrame"),
])
def test_bad_power_curve_input(kwargs, err, match):
    args = {"design": design(), "formula": FORMULA, "params": PARAMS, "values": [6],
            "test": "trtB", "nsim": 10, **kwargs}
    with pytest.raises(err, match=match):
        mixedjax.power_curve(**args)


def test_unused_model_columns_are_not_needed():
    """The response column may be absent or hold anything: only the design counts."""
    d = design().assign(y=np.nan)
    res = mixedjax.power(d, FORMULA, PARAMS, test="trtB", nsim=100, key=1)
    ref = mixedjax.power(design(), FORMULA, PARAMS, test="trtB", nsim=100, key=1)
    np.testing.assert_array_equal(res.pvalues, ref.pvalues)
