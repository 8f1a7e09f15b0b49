"""Batched fits sharded over several devices equal those on one device.

A subprocess forces 4 CPU devices (``--xla_force_host_platform_device_count``), so
each chunk of lanes is split over a 4-device mesh exactly as on a multi-GPU host.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

CODE = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    import mixedjax
    assert jax.device_count() == 4, jax.devices()
    fit = mixedjax.lmer("Reaction ~ Days + (Days | Subject)",
                        mixedjax.datasets.load("sleepstudy"))
    b = fit.refit_many(fit.simulate(40, key=9), chunk_size=16)
    boot = fit.bootstrap(40, key=2, chunk_size=16)
    np.save(sys.argv[1], np.column_stack([b.objective, b.fixef.to_numpy(), b.theta,
                                          b.iterations, boot.replicates.to_numpy()]))
""")


def _columns(fit):
    b = fit.refit_many(fit.simulate(40, key=9), chunk_size=16)
    boot = fit.bootstrap(40, key=2, chunk_size=16)
    return np.column_stack([b.objective, b.fixef.to_numpy(), b.theta, b.iterations,
                            boot.replicates.to_numpy()])


@pytest.mark.slow
def test_four_devices_equal_one(tmp_path, sleep_fit):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                         " --xla_force_host_platform_device_count=4").strip()}
    out = tmp_path / "sharded.npy"
    subprocess.run([sys.executable, "-c", CODE, str(out)], env=env, check=True, timeout=600)
    sharded = np.load(out)
    single = _columns(sleep_fit)
    assert sharded.shape == single.shape == (40, 1 + 2 + 3 + 1 + 6)
    np.testing.assert_allclose(sharded, single, rtol=1e-10, atol=1e-10)
