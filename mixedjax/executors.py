"""Replicates of a simulation study split over processes and machines.

:func:`mixedjax.simulate.refit_many`, :func:`mixedjax.bootstrap.bootstrap`,
:func:`mixedjax.bootstrap.pb_test`, :func:`mixedjax.powersim.power` and
:func:`mixedjax.powersim.power_curve` describe their work as a *job*: a small
picklable object (the model's design, the parameters, the PRNG key's data, the
options) with a method ``run(lo, hi, progress)`` that fits replicates ``lo..hi-1``
and returns one NumPy array per output, each with a leading axis of ``hi - lo``.
Replicate i draws its response from ``fold_in(key, i)`` and every piece uses the
lane count of the whole run, so a replicate's numbers do not depend on the piece
it is fitted in.  Three ways to split the replicates use the one ``run``:

* ``executor=`` -- any :class:`concurrent.futures.Executor` (a
  ``ProcessPoolExecutor``, ``dask.distributed.Client.get_executor()``, ...) gets
  one call of the module-level :func:`run_piece` per piece; the pieces come back
  and are joined in replicate order (:func:`run_replicates`);
* ``replicates=range(lo, hi)`` -- an array job fits only its own range; the
  results of the pieces are joined with the result class's ``concat``;
* :func:`process_replicates` -- the range of this process in a
  ``jax.distributed`` job (each process fits on its own local devices).
"""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np

from .batch import progress_bar
from .threads import local_cpus, one_lane_thread

__all__ = ["check_replicates", "check_executor", "check_pieces", "check_timeout", "split",
           "process_replicates", "local_cpus", "executor_workers", "run_piece", "run_replicates",
           "concat_outputs", "check_parts"]

DEFAULT_WORKERS = 8     # workers assumed when a Dask client cannot say how many it has
# Replicates per piece at least, when the split is left to us.  Every piece runs
# with the lane count of the whole run (so that its numbers are bitwise those of
# the run here), and a run of more than 64 replicates per device has its full
# lane count (mixedjax.batch.chunk_size_for): a piece of 65 or more would get as
# many lanes if it were a run of its own, so no piece pays for idle lanes that
# its own size would not cost anyway.
MIN_PIECE = 65


def check_replicates(replicates, nsim: int) -> range:
    """``replicates`` as a range of replicate numbers within 0..nsim-1 (all of them
    when None); a TypeError or ValueError naming the argument otherwise."""
    if replicates is None:
        return range(nsim)
    if not isinstance(replicates, range):
        raise TypeError(f"replicates must be a range of replicate numbers, e.g. "
                        f"range(0, {nsim}), got {type(replicates).__name__}")
    if replicates.step != 1:
        raise ValueError(f"replicates must be a range with step 1, got {replicates!r}")
    if len(replicates) == 0:
        raise ValueError(f"replicates is empty ({replicates!r})")
    if replicates.start < 0 or replicates.stop > nsim:
        raise ValueError(f"replicates {replicates!r} must lie within 0..{nsim - 1} "
                         f"(nsim = {nsim})")
    return replicates


def check_executor(executor) -> None:
    """A TypeError unless ``executor`` is None or has ``submit`` (as every
    :class:`concurrent.futures.Executor` does)."""
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor must be a concurrent.futures.Executor (with a submit() "
                        f"method), got {type(executor).__name__}")


def check_pieces(pieces, executor) -> int | None:
    """``pieces`` (how many ranges the replicates are split into for ``executor``)
    as an int, or None; a ValueError for anything but a positive integer, or for
    pieces without an executor (the run here is one piece)."""
    if pieces is None:
        return None
    if isinstance(pieces, (bool, np.bool_)) or not isinstance(pieces, (int, np.integer)) \
            or pieces <= 0:
        raise ValueError(f"pieces must be a positive integer, got {pieces!r}")
    if executor is None:
        raise ValueError("pieces splits the replicates over an executor; give executor= "
                         "too (or replicates=range(lo, hi) for one share)")
    return int(pieces)


def check_timeout(timeout, executor) -> float | None:
    """``timeout`` (seconds the pieces sent to ``executor`` may take in all) as a
    float, or None (no limit); a ValueError for anything but a positive number, or
    for a timeout without an executor (the run here is not watched)."""
    if timeout is None:
        return None
    if isinstance(timeout, (bool, np.bool_)) or not isinstance(timeout, (int, float, np.integer,
                                                                          np.floating)) \
            or not np.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if executor is None:
        raise ValueError("timeout limits the pieces sent to an executor; give executor= too")
    return float(timeout)


def split(replicates: range, pieces: int) -> list[range]:
    """``replicates`` cut into ``pieces`` consecutive ranges whose sizes differ by at
    most one (fewer when there are fewer replicates)."""
    n = len(replicates)
    pieces = max(1, min(int(pieces), n))
    bounds = [replicates.start + (n * j) // pieces for j in range(pieces + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def process_replicates(nsim: int) -> range:
    """The replicates of this process in a ``jax.distributed`` job: the
    ``jax.process_index()``-th of ``jax.process_count()`` consecutive ranges of
    0..nsim-1 (all of them in a single process).  Pass it as ``replicates=`` and
    join the processes' results with the result class's ``concat``."""
    import jax

    return split(range(nsim), jax.process_count())[jax.process_index()]


def executor_workers(executor) -> int:
    """How many calls ``executor`` is taken to run at once when the split is left to
    :func:`run_replicates`: the thread count of the default Dask client for a
    ``distributed`` executor, else :func:`local_cpus` (a standard pool does not say
    its size publicly; pass ``pieces=`` for a pool of another size)."""
    if type(executor).__module__.split(".")[0] == "distributed":
        try:
            import distributed
            return max(1, sum(distributed.default_client().nthreads().values()))
        except Exception:       # no default client, or one that cannot answer now
            return DEFAULT_WORKERS
    return local_cpus()


def run_piece(job, lo: int, hi: int) -> dict:
    """What a worker runs: replicates ``lo..hi-1`` of ``job`` (no progress bar)."""
    with one_lane_thread():
        return job.run(lo, hi, False)


def run_replicates(job, replicates: range, executor=None, pieces: int | None = None,
                   progress: bool | None = None, timeout: float | None = None) -> dict:
    """The outputs of ``job`` for ``replicates``, in replicate order.

    Without an executor the job runs here, in one call.  With one, the replicates
    are split into ``pieces`` ranges (default: two per worker of the executor, see
    :func:`executor_workers`, at least 65 replicates each), each sent as
    ``run_piece(job.piece(lo, hi), lo, hi)``.  The first failure (a worker that
    died, an exception in a worker) or, with ``timeout`` (seconds from the first
    submission), a run not finished in time cancels the pieces not yet done and
    raises a RuntimeError naming the replicates.
    """
    if executor is None:
        return job.run(replicates.start, replicates.stop, progress)
    n = len(replicates)
    if pieces is None:
        pieces = min(2 * executor_workers(executor), max(1, n // MIN_PIECE))
    ranges = split(replicates, pieces)
    deadline = None if timeout is None else time.monotonic() + timeout
    futures = []
    try:
        for r in ranges:
            futures.append(executor.submit(run_piece, job.piece(r.start, r.stop),
                                           r.start, r.stop))
        bar = progress_bar(n, progress, getattr(job, "desc", "fits"))
        outputs = [None] * len(ranges)
        try:
            for i, fut in _completed(futures, deadline):
                outputs[i] = _result(fut, ranges[i])
                if bar is not None:
                    bar.update(len(ranges[i]))
        except (concurrent.futures.TimeoutError, TimeoutError) as err:
            late = [f"{r.start}..{r.stop - 1}" for r, o in zip(ranges, outputs) if o is None]
            raise RuntimeError(f"the executor did not return the fits of replicates "
                               f"{', '.join(late)} within timeout={timeout:g} s; the run is "
                               "abandoned (a hung or overloaded worker; pieces already "
                               "running may go on in the workers)") from err
        if bar is not None:
            bar.close()
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return concat_outputs(outputs)


def _completed(futures, deadline: float | None):
    """(index, future) as the futures finish; in submission order for futures that
    are not :class:`concurrent.futures.Future` (``as_completed`` needs those).  A
    :class:`concurrent.futures.TimeoutError` once ``deadline`` (``time.monotonic``)
    has passed."""
    def left():
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    if all(isinstance(f, concurrent.futures.Future) for f in futures):
        index = {id(f): i for i, f in enumerate(futures)}
        for fut in concurrent.futures.as_completed(futures, timeout=left()):
            yield index[id(fut)], fut
    else:
        for i, fut in enumerate(futures):
            if deadline is not None:
                try:
                    fut.exception(timeout=left())
                except (concurrent.futures.TimeoutError, TimeoutError):
                    raise
                except Exception:    # a failed or cancelled piece: _result reports it
                    pass
            yield i, fut


def _result(fut, r: range) -> dict:
    what = f"replicates {r.start}..{r.stop - 1}"
    try:
        out = fut.result()
    except concurrent.futures.BrokenExecutor as err:
        raise RuntimeError(f"a worker process of the executor ended abruptly (killed, or "
                           f"it exited) while fitting {what}; the run is abandoned "
                           f"({type(err).__name__}: {err})") from err
    except concurrent.futures.CancelledError as err:
        raise RuntimeError(f"the executor cancelled the fits of {what}") from err
    except Exception as err:
        raise RuntimeError(f"the fits of {what} failed in a worker "
                           f"({type(err).__name__}: {err})") from err
    if not isinstance(out, dict):
        raise RuntimeError(f"the executor returned a {type(out).__name__} for {what}, "
                           "not the fits")
    return out


def concat_outputs(parts: list) -> dict:
    """Outputs of consecutive pieces joined along the replicate axis (nested dicts
    joined key by key)."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: concat_outputs([p[k] for p in parts]) for k in first}
    return np.concatenate([np.asarray(p) for p in parts], axis=0)


def check_parts(parts, kind: type, span) -> list:
    """``parts`` (results of one run's pieces, all of type ``kind``) in replicate
    order, their replicate ranges ``span(part)`` disjoint; TypeError/ValueError
    otherwise."""
    parts = list(parts)
    if not parts:
        raise ValueError(f"no {kind.__name__} to join")
    for p in parts:
        if not isinstance(p, kind):
            raise TypeError(f"can only join {kind.__name__} objects, got {type(p).__name__}")
    ranges = [span(p) for p in parts]
    order = sorted(range(len(parts)), key=lambda i: ranges[i].start)
    for a, b in zip(order[:-1], order[1:]):
        if ranges[b].start < ranges[a].stop:
            raise ValueError(f"the pieces overlap: replicates {ranges[a].start}.."
                             f"{ranges[a].stop - 1} and {ranges[b].start}..{ranges[b].stop - 1}")
    return [parts[i] for i in order]


