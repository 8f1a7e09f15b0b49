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

import numpy as np

from .batch import progress_bar

__all__ = ["check_replicates", "check_executor", "check_pieces", "split", "process_replicates",
           "run_piece", "run_replicates", "concat_outputs", "check_parts"]

DEFAULT_WORKERS = 8     # workers assumed when an executor does not say how many it has
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


def _workers(executor) -> int:
    """How many calls ``executor`` runs at once, where it says so."""
    # The standard pools keep their size in _max_workers (set from max_workers);
    # a Dask client's executor reaches the client's thread count.
    n = getattr(executor, "_max_workers", None)
    if isinstance(n, int) and n > 0:
        return n
    client = getattr(executor, "_client", None)
    nthreads = getattr(client, "nthreads", None)
    if callable(nthreads):
        try:
            return max(1, sum(nthreads().values()))
        except Exception:       # a client that cannot answer now: use the default
            pass
    return DEFAULT_WORKERS


def run_piece(job, lo: int, hi: int) -> dict:
    """What a worker runs: replicates ``lo..hi-1`` of ``job`` (no progress bar)."""
    return job.run(lo, hi, False)


def run_replicates(job, replicates: range, executor=None, pieces: int | None = None,
                   progress: bool | None = None) -> dict:
    """The outputs of ``job`` for ``replicates``, in replicate order.

    Without an executor the job runs here, in one call.  With one, the replicates
    are split into ``pieces`` ranges (default: two per worker of the executor, at
    least 65 replicates each), each sent as ``run_piece(job.piece(lo, hi), lo, hi)``;
    the first failure (a worker that died, an exception in a worker) cancels the
    pieces not yet started and raises a RuntimeError naming the replicates.
    """
    if executor is None:
        return job.run(replicates.start, replicates.stop, progress)
    n = len(replicates)
    if pieces is None:
        pieces = min(2 * _workers(executor), max(1, n // MIN_PIECE))
    ranges = split(replicates, pieces)
    futures = []
    try:
        for r in ranges:
            futures.append(executor.submit(run_piece, job.piece(r.start, r.stop),
                                           r.start, r.stop))
        bar = progress_bar(n, progress, getattr(job, "desc", "fits"))
        outputs = [None] * len(ranges)
        for i, fut in _completed(futures):
            outputs[i] = _result(fut, ranges[i])
            if bar is not None:
                bar.update(len(ranges[i]))
        if bar is not None:
            bar.close()
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return concat_outputs(outputs)


def _completed(futures):
    """(index, future) as the futures finish; in submission order for futures that
    are not :class:`concurrent.futures.Future` (``as_completed`` needs those)."""
    if all(isinstance(f, concurrent.futures.Future) for f in futures):
        index = {id(f): i for i, f in enumerate(futures)}
        for fut in concurrent.futures.as_completed(futures):
            yield index[id(fut)], fut
    else:
        yield from enumerate(futures)


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


