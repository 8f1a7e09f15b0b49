"""Simulation, batched refits, parametric bootstrap and the parametric-bootstrap LRT.

Batched fits are checked replicate by replicate against single fits (``LMM.fit``
from lme4's default start), on a random-slope model, a crossed and a nested design,
with parameters that make some replicates singular.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedjax
from mixedjax.inference.params import parameter_names, sdcor_values
from mixedjax.model import LMM
from mixedjax.simparams import as_key
from mixedjax.simulate import refit_many

NSIM = 100
CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy",
                   {"VarCorr": {"Subject": [[600.0, 0.0], [0.0, 0.5]]}}),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin",
                   {"VarCorr": {"plate": 0.7, "sample": 0.01}}),
    "pastes": ("strength ~ 1 + (1 | batch/cask)", "pastes", {"VarCorr": {"cask:batch": 8.0,
                                                                       "batch": 0.3}}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    formula, data, params = CASES[request.param]
    fit = mixedjax.lmer(formula, mixedjax.datasets.load(data))
    Y = fit.simulate(NSIM, key=7, params=params)
    batch = fit.refit_many(Y)
    singles = [LMM(dataclasses.replace(fit.model.design, y=Y[i]), reml=True).fit()
               for i in range(NSIM)]
    return fit, Y, batch, singles


def test_every_replicate_equals_its_single_fit(case):
    fit, Y, b, singles = case
    assert len(b) == NSIM and b.converged.all()
    theta = np.array([s.theta for s in singles])
    beta = np.array([s.fixef.to_numpy() for s in singles])
    # Both are rectified (lme4's signs); a zero variance's column is ~0 in both.
    np.testing.assert_allclose(b.theta, theta, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.fixef.to_numpy(), beta, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.sigma, [s.sigma for s in singles], rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.objective, [s.objective for s in singles], rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.stderr.to_numpy(), [s.stderr.to_numpy() for s in singles],
                               rtol=1e-7)
    assert list(b.singular) == [s.singular for s in singles]
    assert 0 < b.singular.sum() < NSIM


def test_replicate_as_full_result_and_sdcor(case):
    fit, Y, b, singles = case
    r = b[5]
    assert r.objective == pytest.approx(b.objective[5], abs=1e-8)
    np.testing.assert_allclose(r.fitted + r.residuals, Y[5], rtol=1e-12)
    assert list(b.sdcor.columns) == parameter_names(fit)[:len(fit.theta) + 1]
    np.testing.assert_allclose(b.sdcor.iloc[5].to_numpy(),
                               sdcor_values(singles[5]), atol=1e-7)
    np.testing.assert_array_equal(b.response(-1), Y[-1])
    assert "did not converge" in repr(b)


def test_weights_and_offset_in_batched_refits(sleepstudy):
    """Prior weights and an offset enter the batched fits as they enter lmer."""
    data = sleepstudy.assign(w=np.where(sleepstudy["Days"] < 5, 1.0, 2.5),
                             off=0.3 * sleepstudy["Days"])
    fit = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", data, weights="w", offset="off")
    Y = fit.simulate(NSIM, key=3)
    b = fit.refit_many(Y)
    for i in range(0, NSIM, 10):
        single = LMM(dataclasses.replace(fit.model.design, y=Y[i]), reml=True).fit()
        np.testing.assert_allclose(b.theta[i], single.theta, atol=1e-8)
        np.testing.assert_allclose(b.fixef.iloc[i], single.fixef, atol=1e-8)
        assert b.objective[i] == pytest.approx(single.objective, abs=1e-8)


def test_simulated_moments_one_way_design():
    """Balanced one-way layout: E(ybar) = mu, E(MS_between) = sigma^2 + J tau^2,
    E(MS_within) = sigma^2 (Searle, Casella & McCulloch 1992, section 3.3)."""
    G, J, nsim = 30, 6, 2000
    data = pd.DataFrame({"g": np.repeat(np.arange(G), J).astype(str)})
    params = {"beta": {"(Intercept)": 5.0}, "sd": {"g": 2.0}, "sigma": 1.5}
    Y = mixedjax.simulate_design("y ~ 1 + (1 | g)", data, params, nsim=nsim, key=11)
    cells = Y.reshape(nsim, G, J)
    msb = J * cells.mean(axis=2).var(axis=1, ddof=1)
    msw = cells.var(axis=2, ddof=1).mean(axis=1)
    for est, want in [(Y.mean(axis=1), 5.0), (msb, 1.5 ** 2 + J * 4.0), (msw, 1.5 ** 2)]:
        assert abs(est.mean() - want) < 4 * est.std(ddof=1) / np.sqrt(nsim)
    # MS_within / sigma^2 is chi-square with G (J - 1) df: its variance too.
    dfw = G * (J - 1)
    assert np.var(msw) == pytest.approx(2 * 1.5 ** 4 / dfw, rel=0.15)


def test_random_slope_covariance_and_weights():
    """Per-group least-squares slopes recover the slope variance; prior weights scale
    the residual variance to sigma^2 / w; the offset shifts the mean."""
    G, nsim = 40, 400
    days = np.tile(np.arange(8.0), G)
    data = pd.DataFrame({"g": np.repeat(np.arange(G), 8).astype(str), "x": days,
                         "w": np.where(days < 4, 1.0, 4.0), "off": np.full(8 * G, 3.0)})
    params = {"beta": [1.0, 0.5], "sd": {"g": [1.0, 0.8]}, "cor": {"g": 0.5}, "sigma": 0.5}
    Y = mixedjax.simulate_design("y ~ x + (x | g)", data, params, nsim=nsim, key=4,
                                 weights="w", offset="off")
    xc = np.arange(8.0) - 3.5
    cells = Y.reshape(nsim, G, 8)
    slopes = cells @ xc / (xc @ xc)
    # Var(slope_g) = tau_slope^2 + Var of the weighted-noise LS slope.
    noise = 0.25 * np.sum(xc ** 2 / np.where(np.arange(8) < 4, 1.0, 4.0)) / (xc @ xc) ** 2
    assert slopes.var(axis=1, ddof=1).mean() == pytest.approx(0.64 + noise, rel=0.05)
    means = cells.mean(axis=(1, 2))
    assert abs(means.mean() - (1.0 + 0.5 * 3.5 + 3.0)) < 4 * means.std() / np.sqrt(nsim)
    resid = cells - cells.mean(axis=2, keepdims=True) - slopes[..., None] * xc
    var_lo, var_hi = resid[..., :4].var(), resid[..., 4:].var()
    assert var_lo / var_hi == pytest.approx(4.0, rel=0.15)


def test_keys_are_reproducible(sleep_fit):
    a = sleep_fit.simulate(3, key=5)
    b = sleep_fit.simulate(6, key=as_key(5))
    np.testing.assert_array_equal(a, b[:3])
    assert not np.allclose(a, sleep_fit.simulate(3, key=6))
    cond = sleep_fit.simulate(2000, key=1, use_u=True)
    resid = cond - sleep_fit.fitted.to_numpy()
    assert resid.std() == pytest.approx(sleep_fit.sigma, rel=0.02)


@pytest.fixture(scope="module")
def boot(sleep_fit):
    return sleep_fit.bootstrap(200, key=5)


def test_bootstrap_replicates_intervals_summary(sleep_fit, boot):
    names = parameter_names(sleep_fit)
    assert list(boot.replicates.columns) == names
    assert boot.converged.shape == (200,) and boot.converged.all()
    np.testing.assert_allclose(boot.batch.response(17), sleep_fit.simulate(200, key=5)[17])
    pct = boot.intervals()
    assert list(pct.columns) == ["2.5 %", "97.5 %"] and list(pct.index) == names
    assert (pct["2.5 %"] < boot.estimate).all() and (boot.estimate < pct["97.5 %"]).all()
    lo = np.quantile(boot.replicates["Days"], 0.05, method="weibull")
    basic = boot.intervals(0.9, method="basic")
    assert list(basic.columns) == ["5 %", "95 %"]
    assert basic.loc["Days", "95 %"] == pytest.approx(2 * sleep_fit.fixef["Days"] - lo)
    # The bootstrap SE of the fixed effects is close to the model-based SE.
    summ = boot.summary()
    np.testing.assert_allclose(summ.loc[["(Intercept)", "Days"], "std. error"],
                               sleep_fit.stderr, rtol=0.2)
    assert summ.loc["sigma", "bias"] == pytest.approx(
        boot.replicates["sigma"].mean() - sleep_fit.sigma)


def test_bootstrap_leaves_out_fits_that_did_not_converge(sleep_fit):
    short = sleep_fit.bootstrap(100, key=5, max_iter=3)
    bad = ~short.converged
    assert 0 < bad.sum() < 100
    assert short.replicates[bad].isna().all().all()
    assert short.replicates[~bad].notna().all().all()
    assert f"{bad.sum()} did not converge" in repr(short)
    lo = np.nanquantile(short.replicates["Days"], 0.025, method="weibull")
    assert short.intervals().loc["Days", "2.5 %"] == pytest.approx(lo)


def test_pb_test_against_direct_ml_fits(sleepstudy):
    """A covariate with no effect: the LRT is that of two ML fits, and the bootstrap
    p-value agrees with the chi-square one within Monte Carlo error."""
    data = sleepstudy.assign(noise=np.random.default_rng(3).normal(size=len(sleepstudy)))
    m0 = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", data)
    m1 = mixedjax.lmer("Reaction ~ Days + noise + (Days | Subject)", data)
    nsim = 200
    res = mixedjax.pb_test(m1, m0, nsim, key=3)
    ml0 = LMM(m0.model.design, reml=False).fit()
    ml1 = LMM(m1.model.design, reml=False).fit()
    lrt = ml0.objective - ml1.objective
    anova = mixedjax.anova(m0, m1)
    assert res.table.loc["LRT", "stat"] == pytest.approx(lrt, abs=1e-7)
    assert res.table.loc["LRT", "stat"] == pytest.approx(anova["Chisq"].iloc[1], abs=1e-6)
    assert res.table.loc["LRT", "df"] == 1
    p_chi = res.table.loc["LRT", "p.value"]
    assert p_chi == pytest.approx(stats.chi2.sf(lrt, 1))
    p = res.p_value
    ok = res.converged
    assert p == pytest.approx((1 + np.sum(res.lrt_replicates[ok] >= lrt)) / (1 + ok.sum()))
    assert 1 / (nsim + 1) <= p <= 1
    assert abs(p - p_chi) < 4 * np.sqrt(p_chi * (1 - p_chi) / nsim) + 0.02
    assert "PBtest" in repr(res)


@pytest.mark.parametrize("Y, err, match", [
    (np.zeros((3, 7)), ValueError, r"Y must be \(nsim, 180\)"),
    (np.zeros((2, 3, 180)), ValueError, r"Y must be \(nsim, 180\)"),
    (np.zeros((0, 180)), ValueError, "no rows"),
    (np.full((2, 180), np.nan), ValueError, "non-finite"),
    ([["a"] * 180], TypeError, "numeric"),
])
def test_bad_response_matrix(sleep_fit, Y, err, match):
    with pytest.raises(err, match=match):
        sleep_fit.refit_many(Y)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"nsim": 0}, ValueError, "nsim must be a positive integer"),
    ({"nsim": -3}, ValueError, "nsim must be a positive integer"),
    ({"nsim": 2.5}, TypeError, "nsim must be a positive integer"),
    ({"key": "seed"}, TypeError, "key must be"),
    ({"params": {"beta": [1.0]}}, ValueError, "beta must have 2 entries"),
    ({"params": {"beta": {"days": 1.0}}}, ValueError, "unknown fixed effect"),
    ({"params": {"theta": [1.0]}}, ValueError, "theta must have 3 entries"),
    ({"params": {"tau": 1.0}}, ValueError, "unknown parameter"),
    ({"params": {"sigma": -1.0}}, ValueError, "sigma must be positive"),
    ({"params": {"VarCorr": {"Subject": 1.0}}}, ValueError, "must be 2 x 2"),
    ({"params": {"VarCorr": {"Subj": [[1, 0], [0, 1]]}}}, ValueError, "unknown"),
    ({"params": {"VarCorr": {"Subject": [[1, 2], [2, 1]]}}}, ValueError, "semi-definite"),
    ({"params": {"sd": {"Subject": [1.0, 1.0]}, "cor": {"Subject": 1.5}}}, ValueError,
     "not a correlation"),
    ({"params": {"theta": [1, 0, 1], "sd": {"Subject": [1, 1]}}}, ValueError, "once"),
    ({"params": [1, 2]}, TypeError, "params must be a dict"),
])
def test_bad_simulation_input(sleep_fit, kwargs, err, match):
    with pytest.raises(err, match=match):
        sleep_fit.simulate(**{"nsim": 2, **kwargs})


def test_bad_design_and_bootstrap_input(sleep_fit, sleepstudy, boot):
    data = sleepstudy.drop(columns="Reaction")
    with pytest.raises(ValueError, match="needs params"):
        mixedjax.simulate_design("Reaction ~ Days + (1 | Subject)", data, {"beta": [1, 1]})
    with pytest.raises(ValueError, match="lacks fixed effect"):
        mixedjax.simulate_design("Reaction ~ Days + (1 | Subject)", data,
                                 {"beta": {"Days": 1.0}, "sigma": 1.0, "sd": {"Subject": 1}})
    with pytest.raises(ValueError, match="level must be strictly between"):
        boot.intervals(1.2)
    with pytest.raises(ValueError, match="method must be"):
        boot.intervals(method="bca")
    with pytest.raises(IndexError, match="out of range"):
        boot.batch.result(200)
    with pytest.raises(TypeError, match="must be an integer"):
        boot.batch.result(1.0)
    with pytest.raises(TypeError, match="fitted model"):
        refit_many("model", np.zeros((1, 180)))


def test_bad_pb_test_input(sleep_fit, sleepstudy):
    with pytest.raises(ValueError, match="same number of parameters"):
        mixedjax.pb_test(sleep_fit, sleep_fit, 10)
    other = mixedjax.lmer("Reaction ~ 1 + (1 | Subject)", sleepstudy.iloc[:170])
    with pytest.raises(ValueError, match="different data"):
        mixedjax.pb_test(other, sleep_fit, 10)
