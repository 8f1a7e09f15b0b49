"""``import mixedjax`` and eager fits leave JAX unimported; JAX, once imported,
runs in float64 with mixedjax's cache settings, whichever was imported first."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=environ, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eager_fits_do_not_import_jax():
    res = _run("""
import json, sys, warnings
import numpy as np, pandas as pd
import mixedjax
state = {"after_import": "jax" in sys.modules}
m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"))
str(m.summary())
state["small"] = (m.optinfo["optimizer"], "jax" in sys.modules)
rng = np.random.default_rng(1)
n = 3000
g, h = rng.integers(0, 300, n), rng.integers(0, 200, n)
y = rng.standard_normal(300)[g] + rng.standard_normal(200)[h] + rng.standard_normal(n)
df = pd.DataFrame({"y": y, "g": g.astype(str), "h": h.astype(str)})
c = mixedjax.lmer("y ~ 1 + (1 | g) + (1 | h)", df)
str(c.summary())
state["bfgs"] = (c.optinfo["optimizer"], "jax" in sys.modules)
c.ranef_condvar
state["condvar"] = "jax" in sys.modules
import jax.numpy as jnp
state["dtype"] = str(jnp.zeros(1).dtype)
print(json.dumps(state))
""", MIXEDJAX_COMPILATION_CACHE="0")
    assert res["after_import"] is False
    assert res["small"] == ["BFGS (exact gradient)", False]
    assert res["bfgs"][0].startswith("BFGS") and res["bfgs"][1] is False
    assert res["condvar"] is False         # the conditional variances come from NumPy too
    assert res["dtype"] == "float64"


def test_settings_apply_whether_jax_comes_first_or_later(tmp_path):
    code = """
import json, sys
{first}
import mixedjax
import jax
import jax.numpy as jnp
print(json.dumps({{"x64": bool(jax.config.jax_enable_x64), "dtype": str(jnp.ones(1).dtype),
                  "cache": jax.config.jax_compilation_cache_dir}}))
"""
    for first in ("", "import jax"):
        cache = tmp_path / ("later" if not first else "first")
        res = _run(code.format(first=first), MIXEDJAX_CACHE_DIR=str(cache),
                   MIXEDJAX_COMPILATION_CACHE="1")
        assert res["x64"] and res["dtype"] == "float64"
        assert res["cache"] == str(cache) and cache.is_dir()
    # A cache the user configured is left alone; MIXEDJAX_COMPILATION_CACHE=0 turns ours off.
    mine = str(tmp_path / "mine")
    res = _run(code.format(first=""), JAX_COMPILATION_CACHE_DIR=mine,
               MIXEDJAX_COMPILATION_CACHE="1")
    assert res["cache"] == mine
    res = _run(code.format(first=""), MIXEDJAX_COMPILATION_CACHE="0")
    assert not res["cache"]
