"""Replicates split over processes give the numbers of the in-process run.

``executor=`` (a process pool of two spawned workers, a Dask cluster) and
``replicates=range(lo, hi)`` shares joined with ``concat`` against one in-process
call, for refit_many, bootstrap, pb_test, power and power_curve (same replicates,
same numbers); bad arguments get errors naming them; a worker that dies mid-run
gives a RuntimeError within a bounded time, not a hang.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax.bootstrap import BootstrapResult, PBTestResult
from mixedjax.executors import split
from mixedjax.powersim import PowerCurve, PowerResult
from mixedjax.simulate import BatchResult

NSIM = 12
# A scalar random-effects term: the smallest kernel for each worker to compile.
FORMULA = "Reaction ~ Days + (1 | Subject)"
SHARES = [range(6, 12), range(0, 5), range(5, 6)]      # uneven, out of order
POWER_DESIGN = pd.DataFrame({"g": np.repeat(np.arange(6), 4).astype(str),
                             "trt": np.tile(["A", "B"], 12)})
POWER_ARGS = dict(formula="y ~ trt + (1 | g)", test="trtB", nsim=8, key=4,
                  params={"beta": [0.0, 1.0], "VarCorr": {"g": 1.0}, "sigma": 1.0})


def _close(a, b):
    """Equal to 1e-10 (bitwise on one machine; a worker's BLAS may round otherwise)."""
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-10,
                               atol=1e-10)


@pytest.fixture(scope="module")
def pool():
    # spawn, not fork: the parent has JAX's threads running.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as p:
        yield p


@pytest.fixture(scope="module")
def fit(sleepstudy):
    return mixedjax.lmer(FORMULA, sleepstudy)


@pytest.fixture(scope="module")
def boot(fit):
    return fit.bootstrap(NSIM, key=3)


def test_split_covers_any_range():
    for n, k in [(12, 3), (7, 7), (5, 9), (100, 6)]:
        parts = split(range(10, 10 + n), k)
        assert [i for r in parts for i in r] == list(range(10, 10 + n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_bootstrap_through_a_process_pool_and_in_shares(fit, boot, pool):
    remote = fit.bootstrap(NSIM, key=3, executor=pool, pieces=3)
    _close(remote.replicates, boot.replicates)
    np.testing.assert_array_equal(remote.converged, boot.converged)
    shares = [fit.bootstrap(NSIM, key=3, replicates=r) for r in SHARES]
    assert list(shares[0].replicates.index) == list(SHARES[0])
    joined = BootstrapResult.concat(shares)
    pd.testing.assert_frame_equal(joined.replicates, boot.replicates, check_exact=True)
    pd.testing.assert_frame_equal(joined.intervals(), boot.intervals(), check_exact=True)
    np.testing.assert_array_equal(joined.batch.response(7), boot.batch.response(7))
    np.testing.assert_array_equal(shares[0].batch.response(7), boot.batch.response(7))
    assert shares[0].batch[7].objective == pytest.approx(boot.batch[7].objective, rel=1e-9)


def test_refit_many_through_a_process_pool_and_in_shares(fit, pool):
    Y = fit.simulate(NSIM, key=5)
    whole = fit.refit_many(Y)
    remote = fit.refit_many(Y, executor=pool, pieces=2)
    for a, b in [(remote.fixef, whole.fixef), (remote.sdcor, whole.sdcor),
                 (remote.objective, whole.objective)]:
        _close(a, b)
    np.testing.assert_array_equal(remote.iterations, whole.iterations)
    joined = BatchResult.concat([fit.refit_many(Y, replicates=r) for r in SHARES])
    pd.testing.assert_frame_equal(joined.fixef, whole.fixef, check_exact=True)
    np.testing.assert_array_equal(joined.theta, whole.theta)
    np.testing.assert_array_equal(joined.response(11), Y[11])


def test_pb_test_in_shares(sleep_fit, fit):
    whole = mixedjax.pb_test(fit, sleep_fit, nsim=NSIM, key=2)
    joined = PBTestResult.concat([mixedjax.pb_test(fit, sleep_fit, nsim=NSIM, key=2,
                                                   replicates=r) for r in SHARES])
    np.testing.assert_array_equal(joined.lrt_replicates, whole.lrt_replicates)
    pd.testing.assert_frame_equal(joined.table, whole.table, check_exact=True)
    assert joined.extremes == whole.extremes


@pytest.mark.slow
def test_pb_test_through_a_process_pool(sleep_fit, fit, pool):
    whole = mixedjax.pb_test(fit, sleep_fit, nsim=NSIM, key=2)
    remote = mixedjax.pb_test(fit, sleep_fit, nsim=NSIM, key=2, executor=pool, pieces=2)
    _close(remote.lrt_replicates, whole.lrt_replicates)
    pd.testing.assert_frame_equal(remote.table, whole.table)


def test_power_in_shares():
    args = dict(POWER_ARGS, test="wald:trtB")
    whole = mixedjax.power(POWER_DESIGN, **args)
    joined = PowerResult.concat([mixedjax.power(POWER_DESIGN, replicates=r, **args)
                                 for r in (range(3, 8), range(0, 3))])
    np.testing.assert_array_equal(joined.pvalues, whole.pvalues)
    assert repr(joined) == repr(whole)


@pytest.mark.slow
def test_power_and_power_curve_through_a_process_pool_and_in_shares(pool):
    whole = mixedjax.power(POWER_DESIGN, **POWER_ARGS)
    remote = mixedjax.power(POWER_DESIGN, executor=pool, pieces=2, **POWER_ARGS)
    _close(remote.pvalues, whole.pvalues)
    assert (remote.power, remote.lower, remote.upper) == (whole.power, whole.lower,
                                                          whole.upper)
    shares = [mixedjax.power(POWER_DESIGN, replicates=r, **POWER_ARGS)
              for r in (range(3, 8), range(0, 3))]
    np.testing.assert_array_equal(PowerResult.concat(shares).pvalues, whole.pvalues)

    args = dict(POWER_ARGS, values=[6, 8], along="n_groups")
    curve = mixedjax.power_curve(POWER_DESIGN, **args)
    remote = mixedjax.power_curve(POWER_DESIGN, executor=pool, pieces=2, **args)
    pd.testing.assert_frame_equal(remote.table, curve.table, rtol=1e-10)
    joined = PowerCurve.concat([mixedjax.power_curve(POWER_DESIGN, replicates=r, **args)
                                for r in (range(0, 5), range(5, 8))])
    pd.testing.assert_frame_equal(joined.table, curve.table, check_exact=True)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"replicates": range(0, 13)}, ValueError, r"replicates range\(0, 13\) must lie within"),
    ({"replicates": range(-1, 3)}, ValueError, "must lie within 0..11"),
    ({"replicates": range(0, 12, 2)}, ValueError, "step 1"),
    ({"replicates": range(4, 4)}, ValueError, "replicates is empty"),
    ({"replicates": [0, 1, 2]}, TypeError, "replicates must be a range"),
    ({"executor": object()}, TypeError, "executor must be a concurrent.futures.Executor"),
    ({"executor": "processes"}, TypeError, "executor must be"),
    ({"pieces": 0, "executor": concurrent.futures.ThreadPoolExecutor(1)}, ValueError,
     "pieces must be a positive integer"),
    ({"pieces": 2}, ValueError, "pieces splits the replicates over an executor"),
])
def test_bad_executor_arguments(sleep_fit, fit, kwargs, err, match):
    calls = [lambda: sleep_fit.bootstrap(NSIM, key=1, **kwargs),
             lambda: sleep_fit.refit_many(np.zeros((NSIM, 180)), **kwargs),
             lambda: mixedjax.pb_test(fit, sleep_fit, nsim=NSIM, **kwargs),
             lambda: mixedjax.power(POWER_DESIGN, **dict(POWER_ARGS, nsim=NSIM), **kwargs)]
    for call in calls:
        with pytest.raises(err, match=match):
            call()


def test_joining_pieces_of_different_runs_is_refused(fit, boot):
    a = fit.bootstrap(NSIM, key=3, replicates=range(0, 6))
    with pytest.raises(ValueError, match="overlap"):
        BootstrapResult.concat([a, boot])
    other = fit.bootstrap(NSIM, key=4, replicates=range(6, 12))
    with pytest.raises(ValueError, match="different keys"):
        BootstrapResult.concat([a, other])
    with pytest.raises(TypeError, match="can only join BootstrapResult"):
        BootstrapResult.concat([a, a.batch])
    with pytest.raises(ValueError, match="no BootstrapResult"):
        BootstrapResult.concat([])


class _DyingPool(concurrent.futures.Executor):
    """A process pool whose first piece runs os._exit in its worker."""

    def __init__(self, pool):
        self.pool, self.calls = pool, 0

    def submit(self, fn, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            return self.pool.submit(os._exit, 7)
        return self.pool.submit(fn, *args, **kwargs)


def test_a_worker_that_dies_gives_a_clear_error(fit):
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as p:
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match=r"worker process .* ended abruptly .*"
                                               r"replicates \d+\.\.\d+"):
            fit.bootstrap(NSIM, key=1, executor=_DyingPool(p), pieces=3)
        assert time.perf_counter() - t0 < 120


class _FailingJob:
    def piece(self, lo, hi):
        return self

    def run(self, lo, hi, progress):
        raise FloatingPointError("no")


class _RangeJob:
    """Returns each replicate's number: shows how the replicates were split."""

    def piece(self, lo, hi):
        return self

    def run(self, lo, hi, progress):
        return {"rep": np.arange(lo, hi), "piece": np.full(hi - lo, lo)}


def test_default_split_two_pieces_per_worker_of_65_replicates_or_more(monkeypatch):
    from mixedjax import executors
    from mixedjax.executors import run_replicates

    monkeypatch.setattr(executors, "local_cpus", lambda: 2)
    with concurrent.futures.ThreadPoolExecutor(2) as p:
        for reps, npieces in [(range(0, 300), 4), (range(0, 129), 1), (range(10, 140), 2),
                              (range(0, 5000), 4)]:
            out = run_replicates(_RangeJob(), reps, p)
            np.testing.assert_array_equal(out["rep"], np.asarray(reps))
            assert len(np.unique(out["piece"])) == npieces
        out = run_replicates(_RangeJob(), range(0, 10), p, pieces=10)
        assert len(np.unique(out["piece"])) == 10


def test_workers_of_a_standard_pool_are_this_machines_cpus():
    from mixedjax.executors import executor_workers, local_cpus

    assert local_cpus() >= 1
    with concurrent.futures.ThreadPoolExecutor(1) as p:
        assert executor_workers(p) == local_cpus()


class _SlowJob:
    """Piece 0 returns at once, the others sleep (a hung worker)."""

    def piece(self, lo, hi):
        return self

    def run(self, lo, hi, progress):
        if lo > 0:
            time.sleep(2)
        return {"rep": np.arange(lo, hi)}


def test_a_run_not_back_within_its_timeout_names_the_late_replicates():
    from mixedjax.executors import run_replicates

    with concurrent.futures.ThreadPoolExecutor(3) as p:
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match=r"did not return the fits of replicates "
                                               r"4\.\.7, 8\.\.11 within timeout=0\.3 s"):
            run_replicates(_SlowJob(), range(0, 12), p, pieces=3, timeout=0.3)
        assert time.perf_counter() - t0 < 1.8     # the late pieces sleep 2 s
        out = run_replicates(_SlowJob(), range(0, 4), p, pieces=1, timeout=60)
        np.testing.assert_array_equal(out["rep"], np.arange(4))


class _Deferred:
    """A future that is not a concurrent.futures.Future (as some executors return)."""

    def __init__(self, fut):
        self.fut = fut

    def result(self, timeout=None):
        return self.fut.result(timeout)

    def exception(self, timeout=None):
        return self.fut.exception(timeout)

    def cancel(self):
        return self.fut.cancel()


class _ForeignPool:
    def __init__(self, pool):
        self.pool = pool

    def submit(self, fn, *args):
        return _Deferred(self.pool.submit(fn, *args))


def test_timeout_applies_to_futures_of_other_kinds():
    from mixedjax.executors import run_replicates

    with concurrent.futures.ThreadPoolExecutor(2) as p:
        with pytest.raises(RuntimeError, match=r"replicates 6\.\.11 within timeout"):
            run_replicates(_SlowJob(), range(0, 12), _ForeignPool(p), pieces=2, timeout=0.3)


@pytest.mark.parametrize("timeout, executor, message", [
    (0, True, "timeout must be a positive number"),
    (-1.0, True, "timeout must be a positive number"),
    (float("nan"), True, "timeout must be a positive number"),
    ("10", True, "timeout must be a positive number"),
    (True, True, "timeout must be a positive number"),
    (10, False, "timeout limits the pieces sent to an executor"),
])
def test_bad_timeout_is_refused(fit, timeout, executor, message):
    pool = concurrent.futures.ThreadPoolExecutor(1) if executor else None
    with pytest.raises(ValueError, match=message):
        fit.bootstrap(NSIM, key=1, executor=pool, timeout=timeout)


def test_an_exception_in_a_worker_names_the_replicates():
    from mixedjax.executors import run_replicates

    with concurrent.futures.ThreadPoolExecutor(2) as p:
        with pytest.raises(RuntimeError, match=r"replicates 0\.\.4 failed in a worker "
                                               r"\(FloatingPointError: no\)"):
            run_replicates(_FailingJob(), range(0, 10), p, pieces=2)


@pytest.mark.slow
def test_dask_cluster_bootstrap_equals_in_process(fit, boot):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        from mixedjax.executors import executor_workers
        assert executor_workers(client.get_executor()) == 2
        remote = fit.bootstrap(NSIM, key=3, executor=client.get_executor(), pieces=2)
    _close(remote.replicates, boot.replicates)
    pd.testing.assert_frame_equal(remote.intervals(), boot.intervals(), rtol=1e-10)
