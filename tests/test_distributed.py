"""A two-process ``jax.distributed`` job on 127.0.0.1: each process refits its own
replicates (``replicates=process_replicates(nsim)``) on its own CPU devices (one;
two in the slow run), and the joined shares equal the run of one process.

Under ``jax.distributed`` ``jax.devices()`` lists the devices of every process; a
chunk sharded over all of them could not be read back by either process, so the
batched fits shard over the process's local devices only.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax.bootstrap import BootstrapResult
from mixedjax.simulate import BatchResult

NSIM = 12
# A scalar random-effects term: the smallest kernel to compile in each process.
FORMULA = "Reaction ~ Days + (1 | Subject)"

CODE = textwrap.dedent("""
    import sys
    import jax
    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid, initialization_timeout=60,
                               heartbeat_timeout_seconds=10, shutdown_timeout_seconds=10)
    ndev = int(sys.argv[4])
    assert jax.process_count() == 2 and jax.device_count() == 2 * ndev, jax.devices()
    assert jax.local_device_count() == ndev
    import mixedjax
    from mixedjax.executors import process_replicates
    fit = mixedjax.lmer("FORMULA", mixedjax.datasets.load("sleepstudy"))
    mine = process_replicates(NSIM)
    fit.bootstrap(NSIM, key=3, replicates=mine).save(out + ".boot")
    fit.refit_many(fit.simulate(NSIM, key=5), replicates=mine).save(out + ".refit")
""").replace("NSIM", str(NSIM)).replace("FORMULA", FORMULA)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ndev", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_two_processes_each_refit_their_share(tmp_path, sleepstudy, ndev):
    # With one CPU device per process the kernels are those of this process; with
    # two, each process shards its chunks (of 128 lanes, not 64 as here: the last
    # digits of a vmapped kernel may differ with its width) over its own devices.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if "host_platform_device_count" not in f]
    if ndev > 1:
        flags.append(f"--xla_force_host_platform_device_count={ndev}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    port = _free_port()
    outs = [str(tmp_path / f"p{i}") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", CODE, str(port), str(i), outs[i],
                               str(ndev)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    boot = BootstrapResult.concat([mixedjax.load(o + ".boot") for o in outs])
    parts = [mixedjax.load(o + ".boot").batch.replicate_range for o in outs]
    assert parts == [range(0, NSIM // 2), range(NSIM // 2, NSIM)]
    fit = mixedjax.lmer(FORMULA, sleepstudy)
    single = fit.bootstrap(NSIM, key=3)
    pd.testing.assert_frame_equal(boot.replicates, single.replicates, rtol=1e-10, atol=1e-10)

    refit = BatchResult.concat([mixedjax.load(o + ".refit") for o in outs])
    whole = fit.refit_many(fit.simulate(NSIM, key=5))
    pd.testing.assert_frame_equal(refit.fixef, whole.fixef, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(refit.objective, whole.objective, rtol=1e-12)
    np.testing.assert_array_equal(refit.response(3), whole.response(3))


def test_process_replicates_in_one_process():
    from mixedjax.executors import process_replicates
    assert process_replicates(7) == range(0, 7)
