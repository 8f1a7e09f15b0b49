"""Batched refits, simulation, bootstrap and the parametric-bootstrap LRT."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax.model import LMM
from mixedjax.simulate import simulate_design

CASES = {
    # formula, data, varcomp override making some replicates singular
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy",
                   {"Subject": [[600.0, 0.0], [0.0, 0.5]]}),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin",
                   {"plate": 0.7, "sample": 0.02}),
    "pastes": ("strength ~ 1 + (1 | batch/cask)", "pastes", None),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def batch(request):
    formula, data, varcomp = CASES[request.param]
    fit = mixedjax.lmer(formula, mixedjax.datasets.load(data))
    params = None
    if varcomp is not None:
        names = [t.group_name for t in fit.model.design.terms]
        if len(set(names)) == len(names):
            params = {"varcomp": varcomp}
    Y = fit.simulate(100, key=7, params=params)
    return fit, Y, fit.refit_many(Y)


def test_every_replicate_equals_its_single_fit(batch):
    fit, Y, b = batch
    assert len(b) == 100 and b.converged.all()
    for i in range(len(b)):
        design = dataclasses.replace(fit.model.design, y=Y[i])
        # Same start as the batch (the fitted theta, as lme4's refit): same iterates.
        single = LMM(design, reml=True).fit(theta0=fit.theta)
        assert b.objective[i] == pytest.approx(single.objective, rel=1e-10)
        if i % 10 == 0:   # from lme4's default start: the same optimum
            other = LMM(design, reml=True).fit()
            assert other.objective == pytest.approx(single.objective, rel=1e-10)
        # The optimizer stops once the Newton decrement is below 1e-6 and the step
        # stalls at round-off; batched (vmapped) arithmetic stalls at slightly
        # different points, so estimates agree to ~1e-6 (the criterion to 1e-10).
        tol = 2e-6
        np.testing.assert_allclose(b.fixef.iloc[i], single.fixef, rtol=tol, atol=tol)
        np.testing.assert_allclose(b.stderr.iloc[i], single.stderr, rtol=100 * tol)
        assert b.sigma[i] == pytest.approx(single.sigma, rel=tol)
        # A zero variance is flat to first order: compare the sds, not theta's sign.
        np.testing.assert_allclose(np.abs(b.theta[i]), np.abs(single.theta), atol=2e-5)
        assert b.singular[i] == single.singular


def test_batch_contains_singular_replicates():
    formula, data, varcomp = CASES["sleepstudy"]
    fit = mixedjax.lmer(formula, mixedjax.datasets.load(data))
    b = fit.refit_many(fit.simulate(100, key=7, params={"varcomp": varcomp}))
    assert 0 < b.singular.sum() < len(b)


def test_replicate_as_full_result(batch):
    fit, Y, b = batch
    r = b.result(3)
    assert r.objective == pytest.approx(b.objective[3], rel=1e-10)
    np.testing.assert_allclose(r.fitted + r.residuals, Y[3], rtol=1e-12)


def test_simulated_moments_one_way_design():
    """Balanced one-way design: E(mean) = mu, E(MS_between) = sigma^2 + n sigma_b^2,
    E(MS_within) = sigma^2 (Searle, Casella & McCulloch 1992, section 3.3)."""
    g, per = 30, 6
    df = pd.DataFrame({"g": np.repeat(np.arange(g), per).astype(str)})
    params = {"beta": {"(Intercept)": 5.0}, "varcomp": {"g": 4.0}, "sigma": 1.5}
    Y = simulate_design("y ~ 1 + (1 | g)", df, params, nsim=2000, key=11)
    groups = Y.reshape(2000, g, per)
    means = groups.mean(axis=2)
    msb = per * means.var(axis=1, ddof=1)
    msw = groups.var(axis=2, ddof=1).mean(axis=1)
    for est, want in [(Y.mean(axis=1), 5.0), (msb, 1.5 ** 2 + per * 4.0), (msw, 1.5 ** 2)]:
        se = est.std(ddof=1) / np.sqrt(len(est))
        assert abs(est.mean() - want) < 4 * se


def test_bootstrap_intervals_and_pb_test(sleep_fit, sleepstudy):
    boot = sleep_fit.bootstrap(300, key=5)
    names = mixedjax.inference.params.parameter_names(sleep_fit)
    assert list(boot.replicates.columns) == names
    pct = boot.intervals(0.9)
    basic = boot.intervals(0.9, method="basic")
    assert list(pct.columns) == ["5 %", "95 %"]
    assert (pct["5 %"] < pct["95 %"]).all()
    np.testing.assert_allclose(basic["5 %"], 2 * boot.estimate - pct["95 %"])
    # The fixed effects' bootstrap SE is close to the model-based SE.
    np.testing.assert_allclose(boot.summary().loc[["(Intercept)", "Days"], "std. error"],
                               sleep_fit.stderr, rtol=0.2)

    m0 = mixedjax.lmer("Reaction ~ Days + (1 | Subject)", sleepstudy)
    res = mixedjax.pb_test(m0, sleep_fit, 100, key=3)
    ml0 = LMM(m0.model.design, reml=False).fit()
    ml1 = LMM(sleep_fit.model.design, reml=False).fit()
    assert res.table.loc["LRT", "stat"] == pytest.approx(ml0.objective - ml1.objective, rel=1e-8)
    assert res.table.loc["LRT", "df"] == 2
    p = res.table.loc["PBtest", "p.value"]
    assert 1 / 101 <= p <= 1 and p == pytest.approx((1 + np.sum(
        res.lrt_replicates[res.converged] >= res.table.loc["LRT", "stat"])) / 101)


@pytest.mark.parametrize("Y, match", [
    (np.zeros((3, 7)), "must be \\(nsim, 180\\)"),
    (np.full((2, 180), np.nan), "non-finite"),
])
def test_bad_response_matrix(sleep_fit, Y, match):
    with pytest.raises(ValueError, match=match):
        sleep_fit.refit_many(Y)


@pytest.mark.parametrize("kwargs, match", [
    ({"nsim": 0}, "nsim must be a positive integer"),
    ({"nsim": 2, "params": {"beta": [1.0]}}, "beta must have 2 entries"),
    ({"nsim": 2, "params": {"theta": [1.0]}}, "theta must have 3 entries"),
    ({"nsim": 2, "params": {"tau": 1.0}}, "unknown parameter"),
    ({"nsim": 2, "params": {"varcomp": {"Subject": 1.0}}}, "must be 2 x 2"),
])
def test_bad_simulation_input(sleep_fit, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sleep_fit.simulate(**kwargs)


def test_sharded_refits_equal_single_device(tmp_path):
    """Each chunk is sharded over all JAX devices; with 4 forced CPU devices the
    estimates equal those of one device."""
    code = textwrap.dedent("""
        import json, sys, numpy as np, jax, mixedjax
        assert jax.device_count() == 4, jax.devices()
        fit = mixedjax.lmer("Reaction ~ Days + (Days | Subject)",
                            mixedjax.datasets.load("sleepstudy"))
        Y = fit.simulate(30, key=9)
        b = fit.refit_many(Y, chunk_size=16)
        np.save(sys.argv[1], np.column_stack([b.objective, b.fixef.to_numpy(), b.theta]))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "sharded.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True)
    fit = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"))
    b = fit.refit_many(fit.simulate(30, key=9), chunk_size=16)
    want = np.column_stack([b.objective, b.fixef.to_numpy(), b.theta])
    np.testing.assert_allclose(np.load(out), want, rtol=1e-9, atol=1e-9)


def test_refits_do_not_depend_on_pieces_or_lane_threads(monkeypatch):
    """Searches continued from their state in pieces of any number of evaluations,
    in one or several lane threads, give the numbers of one uninterrupted search."""
    from mixedjax import routing, threads

    fit = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"))
    Y = fit.simulate(150, key=11)

    def table(evals, lane_threads):
        monkeypatch.setattr(routing, "STEP_EVALS", evals)
        monkeypatch.setenv("MIXEDJAX_LANE_THREADS", str(lane_threads))
        b = fit.refit_many(Y, chunk_size=32)
        return np.column_stack([b.objective, b.fixef.to_numpy(), b.theta, b.iterations])

    want = table(1000, 1)
    for evals, lanes in [(1, 1), (6, 2), (4, 3)]:
        np.testing.assert_allclose(table(evals, lanes), want, rtol=1e-12, atol=1e-12)
    with threads.one_lane_thread():
        assert threads.lane_threads() == 1
    monkeypatch.setenv("MIXEDJAX_LANE_THREADS", "0")
    with pytest.raises(ValueError, match="MIXEDJAX_LANE_THREADS"):
        threads.lane_threads()


def test_bootstrap_in_lane_threads_equals_one_thread(monkeypatch):
    """Lane threads draw their replicates from one simulator (its block cache shared
    under a lock): the same bootstrap as in one thread."""
    fit = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"))
    tables = []
    for lanes in (1, 3):
        monkeypatch.setenv("MIXEDJAX_LANE_THREADS", str(lanes))
        b = fit.bootstrap(120, key=4, chunk_size=16, progress=False).batch
        tables.append(np.column_stack([b.objective, b.fixef.to_numpy(), b.theta]))
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-12, atol=1e-12)
