"""JAX settings mixedjax needs: float64, and a persistent compilation cache.

Importing JAX takes about 0.3 s, more than a whole eager fit of a small model, and
``import mixedjax`` does not need it: models are built and fitted eagerly in
NumPy, and JAX is imported at the first compiled or traced use.  So when JAX is
not imported yet, the settings go into the environment variables JAX reads when
it is imported (``JAX_ENABLE_X64`` and the cache options), with the same effect
for mixedjax's own code and for the user's; when it is, they are applied with
``jax.config.update``.
"""

from __future__ import annotations

import os
import sys

VERSION = "0.1.0"  # the package version, as pyproject.toml


def _cache_dir(jax_version: str) -> str | None:
    """The compilation cache folder (created), or None: cache off or not writable."""
    if os.environ.get("MIXEDJAX_COMPILATION_CACHE", "1") == "0":
        return None
    path = os.environ.get("MIXEDJAX_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "mixedjax", f"jax-{jax_version}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # read-only home: run without the cache
    return path


# Even our smallest compiled fits take ~1 s to compile, far more than a load.
_CACHE_OPTIONS = {"jax_persistent_cache_min_compile_time_secs": 0.2,
                  "jax_persistent_cache_min_entry_size_bytes": 0}


def configure_jax() -> None:
    if "jax" in sys.modules:
        _configure_imported()
        return
    os.environ["JAX_ENABLE_X64"] = "1"
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # the user chose a cache already
    from importlib.metadata import PackageNotFoundError, version
    try:
        jax_version = version("jax")
    except PackageNotFoundError:
        return
    path = _cache_dir(jax_version)
    if path is None:
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    for name, value in _CACHE_OPTIONS.items():
        os.environ.setdefault(name.upper(), str(value))


def _configure_imported() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    if jax.config.jax_compilation_cache_dir:
        return  # the user chose a cache already
    path = _cache_dir(jax.__version__)
    if path is None:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    for name, value in _CACHE_OPTIONS.items():
        jax.config.update(name, value)
