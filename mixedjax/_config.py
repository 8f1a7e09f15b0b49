"""JAX settings mixedjax needs: float64, and a persistent compilation cache."""

from __future__ import annotations

import os

import jax


def configure_jax() -> None:
    jax.config.update("jax_enable_x64", True)
    if os.environ.get("MIXEDJAX_COMPILATION_CACHE", "1") == "0":
        return
    if jax.config.jax_compilation_cache_dir:
        return  # the user chose a cache already
    path = os.environ.get("MIXEDJAX_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "mixedjax", f"jax-{jax.__version__}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", path)
    # Even our smallest compiled fits take ~1 s to compile, far more than a load.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
