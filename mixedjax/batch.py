"""Running thousands to millions of fits of one design: lanes, chunks and devices.

A batched fit keeps a fixed number of *lanes* (the chunk size), each holding one
replicate's response and the state of its Newton search.  Every call of the compiled
kernel (:func:`mixedjax.batchfit.fit_chunk`) advances all lanes by at most
:data:`mixedjax.routing.STEP_EVALS` evaluations; replicates that finished are
harvested and their lanes refilled with new replicates, the others go on from the
state they stopped in.  Under ``vmap`` a loop runs until its slowest member
finishes, so without this a chunk would cost its slowest replicate's evaluations
(iterations and line-search halvings) times the chunk size; with it the cost is
close to the average.  A search continued from its state takes exactly the steps
of the uninterrupted search, so results do not depend on the chunk size or on the
number of devices.

Memory stays bounded: one chunk of responses and fit state at a time, plus one row
of summaries per replicate.  Each chunk is sharded over the process's local JAX
devices (``jax.sharding.Mesh`` + ``NamedSharding`` on the lane axis); the design
arrays are replicated.  Under ``jax.distributed`` each process fits its own
replicates on its own devices (:func:`mixedjax.executors.process_replicates`):
``jax.devices()`` would list every process's devices, and a chunk sharded over
devices of other processes could not be read back here.  Compiled code is reused
across chunks and calls: one function per (design structure, chunk size, padded
n), for REML and ML fits alike.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import batchfit, routing
from .optim import final_status, start_state
from .crossprod import Blocks, ResponseMap
from .result import SINGULAR_TOL
from .start import theta_scale
from .structure import bucket, diagonal_mask
from .threads import lane_threads

__all__ = ["FitSpec", "fit_spec", "fit_responses", "chunk_size_for", "pad_rows",
           "Lanes", "device_mesh"]

PROGRESS_MIN = 20_000  # show a progress bar by default from this many replicates


class FitSpec(NamedTuple):
    """Everything the kernel needs about one model (arrays only; ``reml`` static).

    ``R`` is the response map with rows padded to ``n_pad``; ``n`` the real rows;
    ``scale`` the size of theta (:func:`mixedjax.start.theta_scale`); ``theta_alt``
    (starts, ntheta) the other starts of a replicate whose fit may sit at a local
    minimum (None: none).
    """

    A: Blocks
    R: ResponseMap
    reml: bool
    theta0: np.ndarray
    n: int
    n_pad: int
    scale: float = 1.0
    theta_alt: np.ndarray | None = None


def pad_rows(R: ResponseMap, n_pad: int) -> ResponseMap:
    """``R`` with zero-weight rows appended up to ``n_pad``: they add nothing to Z'y,
    X'y or y'y, so designs of nearby sizes share compiled code."""
    n = R.codes0.shape[0]
    if n_pad == n:
        return R
    extra = n_pad - n

    def grow(a):
        # NumPy, then one transfer: eager jnp ops would each compile a kernel.
        a = np.asarray(a)
        return jax.device_put(np.concatenate([a, np.zeros((extra,) + a.shape[1:], a.dtype)]))

    return ResponseMap(R.structure, **{f: grow(getattr(R, f)) for f in ResponseMap.fields})


def fit_spec(model, theta0=None) -> FitSpec:
    """The :class:`FitSpec` of an :class:`~mixedjax.model.LMM`, starting at ``theta0``
    (default lme4's start).  Diagonal entries of the start are kept at least 0.05
    (relative to the size of theta): the criterion is even in each column of
    Lambda, so a start exactly at a variance of 0 is a stationary point the
    iteration cannot leave.  lme4's start and a tenth of it are the other starts
    (:func:`fit_responses`)."""
    n = model.design.n
    n_pad = bucket(n)
    scale = theta_scale(model.design.weights)
    lme4_start = model.initial_theta() * scale
    theta0 = lme4_start if theta0 is None else np.asarray(theta0, np.float64)
    diag = diagonal_mask(model.structure)
    theta0 = np.where(diag, np.maximum(np.abs(theta0), 0.05 * scale), theta0)
    alt = [t for t in (lme4_start, 0.1 * lme4_start) if not np.allclose(t, theta0)]
    return FitSpec(A=model.arrays, R=pad_rows(model.response_map, n_pad), reml=model.reml,
                   theta0=theta0, n=n, n_pad=n_pad, scale=scale, theta_alt=np.stack(alt))


def device_mesh():
    """A one-axis mesh over this process's JAX devices (None with a single one)."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return None
    return jax.sharding.Mesh(np.array(devices), ("rep",))


def chunk_size_for(spec: FitSpec, nsim: int, chunk_size: int | None = None) -> int:
    """Lanes per kernel call: a multiple of the local device count.

    By default as many as keep the fit state of a chunk near 256 MB per device
    (512 lanes per CPU device at most: larger chunks fall out of the CPU caches;
    16384 per accelerator); 64 per device when ``nsim`` fits in that.  Only these
    two sizes occur per design, so at most two compilations: a compile costs
    seconds, idle lanes far less.
    """
    ndev = jax.local_device_count()
    if chunk_size is not None:
        if not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return int(math.ceil(chunk_size / ndev) * ndev)
    A = spec.A
    state = sum(int(np.size(getattr(A, f))) for f in ("d0", "b0", "ent_v", "pair_i", "amm",
                                                        "abm", "abb"))
    s = A.structure
    per_lane = 8 * (2 * spec.n_pad + 40 * state * (s.ntheta + 2))
    cap = 512 if jax.default_backend() == "cpu" else 16384
    per_dev = int(max(8, min(cap, 2 ** int(math.log2(max(256e6 / per_lane, 8))))))
    if nsim <= min(64, per_dev) * ndev:
        per_dev = min(64, per_dev)
    return per_dev * ndev


class Lanes(NamedTuple):
    """The state of the lanes between kernel calls (host arrays)."""

    rep: np.ndarray        # replicate index per lane (-1: empty)
    fresh: np.ndarray      # the lane starts a new search at theta0 in the next call
    theta0: np.ndarray     # that search's start
    state: tuple           # the searches' loop states (optim.LoopState, one row per lane)
    Y: np.ndarray          # responses (lanes, n_pad)


def _place(x, mesh):
    if mesh is None:
        return jnp.asarray(x)
    spec = jax.sharding.PartitionSpec("rep", *([None] * (np.ndim(x) - 1)))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))


def _replicate(tree, mesh):
    if mesh is None:
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


_FIELDS = batchfit.FitSummary._fields


def _alloc(nsim: int, spec: FitSpec) -> dict[str, np.ndarray]:
    nt, p = len(spec.theta0), spec.A.structure.p
    shapes = {"theta": (nt,), "beta": (p,), "stderr": (p,)}
    out = {f: np.zeros((nsim,) + shapes.get(f, ())) for f in _FIELDS}
    out["converged"] = np.zeros(nsim, bool)
    out["iterations"] = np.zeros(nsim, np.int64)
    out["status"] = np.zeros(nsim, np.int64)
    return out


def fit_responses(spec: FitSpec, rows: Callable[[np.ndarray], np.ndarray], nsim: int,
                  chunk_size: int | None = None, max_iter: int = 100,
                  progress: bool | None = None, desc: str = "fits",
                  starts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Fit ``spec``'s design to responses ``rows(idx)`` for idx in 0..nsim-1.

    ``rows(idx)`` returns the responses of replicates ``idx`` as an array
    (len(idx), n_pad).  ``starts`` (nsim, ntheta): a start per replicate in place
    of ``spec.theta0``.  Returns one array per :class:`~mixedjax.batchfit.FitSummary`
    field with a leading axis of length ``nsim`` (beta/stderr padded to the
    structure's p).
    """
    B = chunk_size_for(spec, nsim, chunk_size)
    mesh = device_mesh()
    A, R = _replicate((spec.A, spec.R), mesh)
    out = _alloc(nsim, spec)
    theta0 = np.asarray(spec.theta0, np.float64)
    run = _Run(spec, rows, out, B, mesh, (A, R), theta0, starts,
               (jnp.asarray(max_iter, jnp.int64), jnp.asarray(routing.STEP_EVALS, jnp.int64),
                jnp.asarray(spec.reml), jnp.asarray(spec.scale, jnp.float64)),
               progress_bar(nsim, progress, desc))
    # Compile the kernel on a second thread while the first responses are drawn
    # (drawing compiles its own function): on a cold start the two compilations
    # overlap instead of adding up.  The warm-up call runs on zero responses and is
    # discarded; on a warm cache it costs a few milliseconds.
    warm = threading.Thread(target=_warm_up, args=run.args(run.empty()), daemon=True)
    warm.start()
    groups = _groups(nsim, B, mesh)
    bounds = [nsim * g // groups for g in range(groups + 1)]
    if groups == 1:
        run.lanes(0, nsim, warm)
    else:
        with concurrent.futures.ThreadPoolExecutor(groups) as pool:
            futures = [pool.submit(run.lanes, lo, hi, warm)
                       for lo, hi in zip(bounds[:-1], bounds[1:])]
            for f in futures:
                f.result()
    if run.bar is not None:
        run.bar.close()
    if spec.theta_alt is not None and len(spec.theta_alt):
        _other_starts(spec, rows, out, B, max_iter)
    return out


def _groups(nsim: int, chunk: int, mesh) -> int:
    """Threads to run the lanes in: :func:`mixedjax.threads.lane_threads` on a single
    CPU device when there is more than one chunk of work; one otherwise (several
    devices share each call's lanes already)."""
    if mesh is not None or jax.default_backend() != "cpu":
        return 1
    return max(1, min(lane_threads(), -(-nsim // chunk)))


class _Run(NamedTuple):
    """One batched run: what every group of lanes shares."""

    spec: FitSpec
    rows: Callable
    out: dict
    B: int
    mesh: object
    consts: tuple
    theta0: np.ndarray
    starts: np.ndarray | None
    flags: tuple
    bar: object

    def empty(self) -> Lanes:
        """Lanes holding no replicate, each set to start fresh (placeholder states of
        the right shapes and types)."""
        B = self.B
        state = jax.tree_util.tree_map(
            lambda a: np.tile(np.asarray(a), (B,) + (1,) * np.ndim(a)),
            start_state(np.zeros_like(self.theta0)))
        return Lanes(rep=np.full(B, -1), fresh=np.ones(B, bool),
                     theta0=np.tile(self.theta0, (B, 1)), state=state,
                     Y=np.zeros((B, self.spec.n_pad)))

    def args(self, lanes: Lanes) -> tuple:
        """The arguments of :func:`mixedjax.batchfit.fit_chunk` for ``lanes``."""
        state = jax.tree_util.tree_map(lambda a: _place(a, self.mesh), lanes.state)
        return (state, _place(lanes.fresh, self.mesh), _place(lanes.theta0, self.mesh),
                *self.consts, _place(lanes.Y, self.mesh), *self.flags)

    def lanes(self, lo: int, hi: int, warm: threading.Thread) -> None:
        """Fit replicates lo..hi-1 in one set of lanes, into ``out``."""
        lanes, next_rep, left = self.empty(), lo, hi - lo
        while left > 0:
            lanes, next_rep = _refill(lanes, next_rep, hi, self.rows, self.theta0,
                                      self.starts)
            live = lanes.rep >= 0
            warm.join()
            state, res = batchfit.fit_chunk(*self.args(lanes))
            state, res = jax.tree_util.tree_map(np.asarray, (state, res))
            # A lane is finished when its search stopped (on its own or at max_iter).
            stop = live & (state.status != -1)
            idx = lanes.rep[stop]
            for f in _FIELDS:
                self.out[f][idx] = getattr(res, f)[stop]
            self.out["status"][idx] = final_status(res.status[stop], res.converged[stop])
            left -= int(stop.sum())
            if self.bar is not None:
                self.bar.update(int(stop.sum()))
            lanes = lanes._replace(rep=np.where(stop, -1, lanes.rep),
                                   fresh=np.zeros(self.B, bool), state=state)


def _other_starts(spec: FitSpec, rows, out: dict, chunk_size: int, max_iter: int) -> None:
    """Refit from each of ``spec.theta_alt`` the replicates whose fit may sit at a
    local minimum, and keep the best fit (in ``out``).

    The profiled criterion can have local minima where a variance component is 0
    (random slopes with few groups; Newton in theta, which is even in each column
    of Lambda, stops there as at any other stationary point), so those fits and the
    ones that did not converge are checked against lme4's start, theta = 1, and a
    start near 0 (from which Newton reaches an optimum at 0 that it misses from
    theta = 1); the same lane count, so the compiled kernel is reused.
    """
    diag = diagonal_mask(spec.A.structure)
    suspect = ~out["converged"].astype(bool) | np.any(
        np.abs(out["theta"][:, diag]) < SINGULAR_TOL * spec.scale, axis=1)
    idx = np.flatnonzero(suspect)
    if not idx.size:
        return
    # Every start's refits share the lanes of one pass: a pass costs about its
    # longest fit whether its lanes are full or not.
    m = len(idx)
    starts = np.concatenate([np.tile(np.asarray(t, np.float64), (m, 1)) for t in spec.theta_alt])
    alts = fit_responses(spec._replace(theta_alt=None), lambda j: rows(idx[np.asarray(j) % m]),
                         len(starts), chunk_size=chunk_size, max_iter=max_iter,
                         progress=False, starts=starts)
    for k in range(len(spec.theta_alt)):
        alt = {f: v[k * m:(k + 1) * m] for f, v in alts.items()}
        first, second = out["objective"][idx], alt["objective"]
        conv1, conv2 = out["converged"][idx].astype(bool), alt["converged"].astype(bool)
        tol = 1e-9 * np.maximum(np.abs(first), 1.0)
        better = conv2 & (~conv1 | (second < first - tol) | ~np.isfinite(first))
        take = idx[better]
        for f in out:
            out[f][take] = alt[f][better]


def _warm_up(*args) -> None:
    try:
        jax.block_until_ready(batchfit.fit_chunk(*args))
    except Exception:       # the real call reports any error
        pass


def _refill(lanes: Lanes, next_rep: int, nsim: int, rows, theta0, starts=None):
    """Put the next replicates into empty lanes, each a new search from ``theta0`` or
    its row of ``starts``.  Lanes left empty at the end copy a live lane (response
    and state), so they never outlast the live lanes."""
    empty = np.flatnonzero(lanes.rep < 0)
    take = min(len(empty), nsim - next_rep)
    rep, fresh, start, Y = lanes.rep.copy(), lanes.fresh.copy(), lanes.theta0.copy(), lanes.Y
    state = lanes.state
    if take:
        new = np.arange(next_rep, next_rep + take)
        slots = empty[:take]
        Y = Y.copy()
        Y[slots] = rows(new)
        rep[slots] = new
        start[slots] = theta0 if starts is None else starts[new]
        fresh[slots] = True
        next_rep += take
    idle = rep < 0
    if idle.any() and (~idle).any():
        src = np.flatnonzero(~idle)[0]
        Y = Y.copy() if Y is lanes.Y else Y
        Y[idle] = Y[src]
        start[idle] = start[src]
        fresh[idle] = fresh[src]
        state = jax.tree_util.tree_map(lambda a: np.where(_rows(idle, a), a[src], a), state)
    return Lanes(rep, fresh, start, state, Y), next_rep


def _rows(mask: np.ndarray, a: np.ndarray) -> np.ndarray:
    return mask.reshape((-1,) + (1,) * (a.ndim - 1))


def progress_bar(nsim: int, progress: bool | None, desc: str):
    """A tqdm bar over ``nsim`` fits when ``progress`` (None: from PROGRESS_MIN fits on)."""
    if progress is None:
        progress = nsim >= PROGRESS_MIN
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=nsim, desc=desc, unit="fit")
