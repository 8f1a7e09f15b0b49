"""BLAS threads for eager fits.

An eager fit's dense work is LAPACK and BLAS calls on the factor's dense blocks.
OpenBLAS splits each call over all cores by default; that pays only for large
blocks, and when two fits run side by side (joblib, two notebooks, Dask workers on
one machine) each one's threads wait on the other's: on 2 cores two InstEval-sized
fits took 2 to 20 s each instead of 1 s.  So a fit limits BLAS to one thread while
it runs, unless its dense block is large enough for threads to pay
(:data:`mixedjax.routing.THREADED_WORK`); small fits never reach BLAS's threading and are left
alone.  The limit is set with threadpoolctl, for NumPy's and SciPy's OpenBLAS
alike, and restored afterwards.

Users choose: ``MIXEDJAX_BLAS_THREADS=n`` (environment) or
:func:`set_blas_threads` fixes the count for every fit (0: leave BLAS alone), and
a fit inside ``threadpoolctl.threadpool_limits(...)`` never raises that limit.

Batched refits on a CPU run their lanes in :func:`lane_threads` Python threads,
each calling the compiled kernel on its own share of the replicates (XLA runs the
calls side by side; one call on small lanes keeps one core busy):
``MIXEDJAX_LANE_THREADS=n`` sets the count, default the CPUs this process may use,
and the pieces of a run split over an executor use one each (the executor already
runs one piece per core).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

from . import routing

__all__ = ["blas_threads", "set_blas_threads", "local_cpus", "lane_threads", "one_lane_thread"]

_LANES: contextvars.ContextVar = contextvars.ContextVar("mixedjax_lane_threads", default=None)


def local_cpus() -> int:
    """The CPUs this process may use (``os.process_cpu_count()`` where Python has it):
    the size of a standard process pool made without ``max_workers``."""
    count = getattr(os, "process_cpu_count", os.cpu_count)
    return max(1, int(count() or 1))


def lane_threads() -> int:
    """Threads a batched fit on a CPU runs its lanes in (module docstring)."""
    if _LANES.get() is not None:
        return _LANES.get()
    n = _env_count("MIXEDJAX_LANE_THREADS", 1)
    return local_cpus() if n is None else n


def _env_count(name: str, least: int) -> int | None:
    """The integer in environment variable ``name`` (at least ``least``), None when
    it is not set; a ValueError naming the variable otherwise."""
    env = os.environ.get(name, "")
    if env == "":
        return None
    try:
        n = int(env)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {env!r}") from None
    if n < least:
        raise ValueError(f"{name} must be >= {least}, got {n}")
    return n


@contextlib.contextmanager
def one_lane_thread():
    """A context in which batched fits run their lanes in one thread (an executor's
    piece)."""
    token = _LANES.set(1)
    try:
        yield
    finally:
        _LANES.reset(token)


_CHOICE: dict[str, int | None] = {"threads": None}


def set_blas_threads(n: int | None) -> None:
    """Use ``n`` BLAS threads in every eager fit (0: do not touch BLAS's setting;
    None: the default rule of the module docstring)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"the number of BLAS threads must be None or an integer >= 0, got {n!r}")
    _CHOICE["threads"] = n


def _chosen() -> int | None:
    if _CHOICE["threads"] is not None:
        return _CHOICE["threads"]
    return _env_count("MIXEDJAX_BLAS_THREADS", 0)


@functools.cache
def _controller():
    # SciPy's LAPACK (the eager factorization's large blocks) links its own
    # OpenBLAS, loaded with scipy.linalg: load it first, or the controller would
    # limit NumPy's library alone and SciPy's would run on all cores.
    import scipy.linalg  # noqa: F401
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def dense_work(structure) -> float:
    """Flops of the dense factorization and inverse of one evaluation."""
    s = structure
    return 2.0 * s.n_cl * s.s ** 3 + 2.0 * s.n_b ** 3 + 2.0 * s.n_cl * s.s ** 2 * s.n_b


def blas_threads(structure):
    """A context in which an eager fit of ``structure`` runs (module docstring)."""
    n = _chosen()
    if n == 0:
        return contextlib.nullcontext()
    if n is None:
        work = dense_work(structure)
        if work < routing.SMALL_WORK or work >= routing.THREADED_WORK:
            return contextlib.nullcontext()
        n = 1
    return _limit(n)


@contextlib.contextmanager
def _limit(n: int):
    ctrl = _controller()
    current = [info.num_threads for info in ctrl.select(user_api="blas").lib_controllers]
    # Never raise a limit the caller set (threadpool_limits around the fit).
    n = min([n] + current) if current else n
    with ctrl.limit(limits=n, user_api="blas"):
        yield
