"""The profiled REML/ML criterion of a linear mixed model as a pure JAX function.

Model (Bates et al. 2015, "Fitting linear mixed-effects models using lme4",
JSS 67(1), sections 3.1-3.4):  y = X beta + Z Lambda_theta u + eps with
u ~ N(0, sigma^2 I_q), eps ~ N(0, sigma^2 I_n).

For a given theta the criterion needs the Cholesky factor of

    M(theta) = [[Lambda' Z'Z Lambda + I, Lambda' Z'X, Lambda' Z'y],
                [.,                      X'X,         X'y        ],
                [.,                      .,           y'y        ]]

whose pieces are precomputed once (:func:`build_arrays`), so nothing per
evaluation touches the n rows.  The random-effects terms are ordered by
decreasing number of levels.  The first term's diagonal block is block diagonal
(one k0 x k0 block per level): it is factored as a batch of small Cholesky
factors.  Its coupling to the remaining columns ("rest": later terms, then X,
then y) is kept as a sparse list of non-zero (level, column) entries, and the
Schur complement of the first block is formed over precomputed pairs of entries
that share a level (a segment sum, never a dense product).  The rest block, where
crossed terms fill in, is small and factored densely.  This is the blocked
factorization of MixedModels.jl (Bates et al., "MixedModels.jl", JOSS 2019),
written with fixed shapes so that it jit-compiles, differentiates and vmaps.

With L the factor of M, r = L[-1, -1] and pwrss = r^2 (JSS eq. 34):

    ML:   d(theta)   = log|L_Z|^2 + n (1 + log(2 pi pwrss / n))                (eq. 35)
    REML: d_R(theta) = log|L_Z|^2 + log|R_X|^2
                       + (n - p)(1 + log(2 pi pwrss / (n - p)))                (eq. 42)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Structure", "PLSArrays", "build_arrays", "objective", "solve", "theta_to_lambdas",
           "initial_theta", "rectify_theta", "lower_bounds", "ResponseMap", "response_map",
           "with_response"]


# ----------------------------------------------------------------------------------
# Static structure and array container
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Structure:
    """Static shape information (hashable, part of the jit cache key).

    ``k``: columns per term; ``m``: (padded) levels per term; ``p``: (padded)
    number of fixed effects.  The real ``n`` and ``p`` are array leaves so that
    designs padded to the same bucket share compiled code.
    """

    k: tuple[int, ...]
    m: tuple[int, ...]
    p: int
    # True when the first term's coupling to the rest is too dense for pair lists
    # (see PAIR_LIMIT): the Schur update is then a dense product.
    dense_w: bool = False

    @property
    def ntheta(self) -> int:
        return sum(k * (k + 1) // 2 for k in self.k)

    @property
    def q_rest(self) -> int:
        return sum(k * m for k, m in zip(self.k[1:], self.m[1:]))

    @property
    def theta_slices(self) -> list[slice]:
        out, start = [], 0
        for k in self.k:
            size = k * (k + 1) // 2
            out.append(slice(start, start + size))
            start += size
        return out


@jax.tree_util.register_pytree_node_class
class PLSArrays:
    """Precomputed cross-products of [Z X y] in the blocked sparse layout.

    First term (m0 levels, k0 columns):
      d1 (m0, k0, k0)   Z0'Z0 blocks;  b1x (m0, k0, p) Z0'X;  b1y (m0, k0) Z0'y.
    First term x later terms, non-zero entries e (sorted by level a):
      ent_a (E,) level of term 0;  ent_c (E,) column of Z_rest;  ent_v (E, k0) values;
      pair_i, pair_j (P,) all pairs i <= j of entries with the same level.
    Later terms (dense): rzz (qr, qr), rzx (qr, p), rzy (qr,).
    Fixed effects: xtx (p, p), xty (p,), yty ().  n, p: real sizes (floats).
    ldw: sum of log prior weights (0 without weights).  With weights every row of
    [Z X y] is multiplied by sqrt(w_i) (and y has the offset subtracted first).
    """

    fields = ("d1", "b1x", "b1y", "ent_a", "ent_c", "ent_v", "pair_i", "pair_j",
              "rzz", "rzx", "rzy", "xtx", "xty", "yty", "n", "p", "ldw")

    def __init__(self, structure: Structure, **arrays):
        self.structure = structure
        for name in self.fields:
            setattr(self, name, arrays[name])

    def tree_flatten(self):
        return tuple(getattr(self, f) for f in self.fields), self.structure

    @classmethod
    def tree_unflatten(cls, structure, children):
        return cls(structure, **dict(zip(cls.fields, children)))

    def replace(self, **changes) -> "PLSArrays":
        arrays = {f: getattr(self, f) for f in self.fields}
        arrays.update(changes)
        return PLSArrays(self.structure, **arrays)


# ----------------------------------------------------------------------------------
# Precomputation (numpy, once per design)
# ----------------------------------------------------------------------------------
def bucket(size: int) -> int:
    """Round ``size`` up to 2^j, 1.25 * 2^j, 1.5 * 2^j or 1.75 * 2^j (waste < 25%).

    Designs whose sizes fall into the same buckets share compiled code.
    """
    if size <= 8:
        return max(size, 1)
    base = 1 << (int(size).bit_length() - 1)
    for mult in (1.0, 1.25, 1.5, 1.75, 2.0):
        cand = int(base * mult)
        if cand >= size:
            return cand
    return 2 * base


def _group_sum(codes: np.ndarray, values: np.ndarray, m: int) -> np.ndarray:
    """Sum rows of ``values`` (n, ...) by integer ``codes`` into (m, ...)."""
    out = np.zeros((m,) + values.shape[1:])
    if len(codes) == 0:
        return out
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    out[sc[starts]] = np.add.reduceat(values[order], starts, axis=0)
    return out


# The Schur update of the rest block sums over all pairs of entries that share a
# first-term level: sum over levels of c (c + 1) / 2 pairs for c entries.  That is
# cheap for InstEval-like data (~2.5e6 pairs) but not for MovieLens-like data (users
# with thousands of ratings: ~2e8 pairs, gigabytes of indices).  Beyond this many pairs
# the update is computed as a dense product W'W with W (m0 k0 x q_rest), whose
# memory is bounded by the dense rest block's size times m0 k0 / q_rest.
PAIR_LIMIT = 50_000_000


class _Scaled(NamedTuple):
    codes: np.ndarray
    Z: np.ndarray
    nlevels: int


def _weighted(terms, X, y, weights, offset):
    """Rows of [Z X y] scaled by sqrt(prior weight), y less its offset (lme4's
    weighted PLS problem, Bates et al. 2015, JSS 67(1), section 3.2)."""
    y = np.asarray(y, np.float64)
    if offset is not None:
        y = y - offset
    if weights is None:
        return [_Scaled(t.codes, t.Z, t.nlevels) for t in terms], X, y
    sw = np.sqrt(np.asarray(weights, np.float64))
    return ([_Scaled(t.codes, t.Z * sw[:, None], t.nlevels) for t in terms],
            X * sw[:, None], y * sw)


def _layout(terms, X, pad):
    """Static structure, padded X and the Z_rest column index of each row's entries."""
    n, p_real = X.shape
    ks = tuple(t.Z.shape[1] for t in terms)
    rb = bucket if pad else (lambda s: max(s, 1))
    ms = tuple(rb(t.nlevels) for t in terms)
    p = rb(p_real) if p_real else 0
    Xp = np.zeros((n, p))
    Xp[:, :p_real] = X
    # Columns of Z_rest: term t, level b, column j -> offset_t + b * k_t + j.
    offsets = np.cumsum([0] + [k * m for k, m in zip(ks[1:], ms[1:])])
    rest_cols = [off + t.codes[:, None] * t.Z.shape[1] + np.arange(t.Z.shape[1])
                 for t, off in zip(terms[1:], offsets[:-1])]
    if rest_cols:
        cols = np.concatenate(rest_cols, axis=1)              # (n, sum k_t)
        zvals = np.concatenate([t.Z for t in terms[1:]], axis=1)
    else:
        cols = np.zeros((n, 0), dtype=np.int64)
        zvals = np.zeros((n, 0))
    return Structure(k=ks, m=ms, p=p), Xp, cols, zvals


def build_arrays(terms, X: np.ndarray, y: np.ndarray, pad: bool = True, weights=None,
                 offset=None) -> PLSArrays:
    """Precompute the blocks of [Z X y]'[Z X y] for :func:`objective`.

    ``terms``: sequence with ``codes`` (n,), ``Z`` (n, k) and ``nlevels``, in lme4
    order.  ``pad`` rounds level counts and p up to buckets (zero blocks factor
    to identity and leave the criterion unchanged) so similar designs share
    compiled code.  ``weights`` (prior weights) and ``offset`` are optional, one
    value per row.
    """
    p_real = X.shape[1]
    n = len(y)
    terms, X, y = _weighted(terms, X, y, weights, offset)
    structure, Xp, cols, zvals = _layout(terms, X, pad)
    m0, qr, p = structure.m[0], structure.q_rest, structure.p

    t0 = terms[0]
    z0 = t0.Z
    d1 = _group_sum(t0.codes, z0[:, :, None] * z0[:, None, :], m0)
    b1x = _group_sum(t0.codes, z0[:, :, None] * Xp[:, None, :], m0)
    b1y = _group_sum(t0.codes, z0 * y[:, None], m0)

    # Entries of Z0' Z_rest: key (level of term 0, rest column).
    ent_a, ent_c, ent_v = _entries(t0.codes, z0, cols, zvals, qr)
    counts = np.bincount(ent_a, minlength=1) if len(ent_a) else np.zeros(1, np.int64)
    counts = counts.astype(np.int64)
    if int(np.sum(counts * (counts + 1) // 2)) > PAIR_LIMIT:
        structure = dataclasses.replace(structure, dense_w=True)
        pair_i = pair_j = np.zeros(0, np.int64)
        if pad:
            ent_a, ent_c, ent_v, _, _ = _pad_entries(ent_a, ent_c, ent_v, pair_i, pair_j)
        pair_i = pair_j = np.zeros(0, np.int64)
    else:
        pair_i, pair_j = _pairs(ent_a)
        if pad:
            ent_a, ent_c, ent_v, pair_i, pair_j = _pad_entries(ent_a, ent_c, ent_v, pair_i,
                                                               pair_j)

    rzz = np.zeros((qr, qr))
    if qr:
        flat_key = cols[:, :, None] * qr + cols[:, None, :]
        prod = zvals[:, :, None] * zvals[:, None, :]
        np.add.at(rzz.reshape(-1), flat_key.reshape(-1), prod.reshape(-1))
    rzx = np.zeros((qr, p))
    rzy = np.zeros(qr)
    for j in range(cols.shape[1]):
        rzx += _group_sum(cols[:, j], zvals[:, j:j + 1] * Xp, qr)
        rzy += _group_sum(cols[:, j], zvals[:, j] * y, qr)
    xtx = Xp.T @ Xp
    # Padded X columns get a unit diagonal: they factor to 1 and add nothing.
    xtx[np.arange(p_real, p), np.arange(p_real, p)] = 1.0
    ldw = 0.0 if weights is None else float(np.sum(np.log(weights)))

    # Cast in NumPy and transfer with device_put: jnp.asarray compiles a small XLA
    # program per shape or dtype change, tens of milliseconds in a fresh process.
    as_f = lambda a: jax.device_put(np.asarray(a, dtype=np.float64))
    as_i = lambda a: jax.device_put(np.asarray(a, dtype=np.int32))
    return PLSArrays(
        structure,
        d1=as_f(d1), b1x=as_f(b1x), b1y=as_f(b1y),
        ent_a=as_i(ent_a), ent_c=as_i(ent_c), ent_v=as_f(ent_v),
        pair_i=as_i(pair_i), pair_j=as_i(pair_j),
        rzz=as_f(rzz), rzx=as_f(rzx), rzy=as_f(rzy),
        xtx=as_f(xtx), xty=as_f(Xp.T @ y), yty=as_f(y @ y),
        n=as_f(n), p=as_f(p_real), ldw=as_f(ldw),
    )


class ResponseMap(NamedTuple):
    """What maps a response vector y to the response parts of :class:`PLSArrays`.

    Only Z'y, X'y and y'y depend on y (DESIGN.md section 2), so a simulation study
    with a fixed design refits from these sums alone.  Rows are already scaled by
    sqrt(prior weight); ``offset`` is subtracted from y first.
    """

    codes0: jax.Array      # (n,) level of the first term
    z0: jax.Array          # (n, k0)
    rest_cols: jax.Array   # (n, K) Z_rest column of each row's entries
    rest_z: jax.Array      # (n, K)
    X: jax.Array           # (n, p) padded
    sqrtw: jax.Array       # (n,)
    offset: jax.Array      # (n,)


def response_map(terms, X: np.ndarray, pad: bool = True, weights=None,
                 offset=None) -> ResponseMap:
    """The :class:`ResponseMap` of a design (same layout as :func:`build_arrays`)."""
    n = X.shape[0]
    sw = np.ones(n) if weights is None else np.sqrt(np.asarray(weights, np.float64))
    off = np.zeros(n) if offset is None else np.asarray(offset, np.float64)
    terms, X, _ = _weighted(terms, X, np.zeros(n), weights, None)
    _, Xp, cols, zvals = _layout(terms, X, pad)
    as_f = lambda a: jnp.asarray(a, dtype=jnp.float64)
    return ResponseMap(codes0=jnp.asarray(terms[0].codes, jnp.int32), z0=as_f(terms[0].Z),
                       rest_cols=jnp.asarray(cols, jnp.int32), rest_z=as_f(zvals),
                       X=as_f(Xp), sqrtw=as_f(sw), offset=as_f(off))


def with_response(A: PLSArrays, R: ResponseMap, y) -> PLSArrays:
    """``A`` with its response parts (Z'y, X'y, y'y) recomputed for response ``y``.

    Pure jnp and O(n) per call: ``jax.vmap(with_response, (None, None, 0))`` maps a
    matrix of simulated responses to a batch of arrays for :func:`objective`.
    """
    s = A.structure
    yw = (jnp.asarray(y, jnp.float64) - R.offset) * R.sqrtw
    b1y = jax.ops.segment_sum(R.z0 * yw[:, None], R.codes0, num_segments=s.m[0])
    if s.q_rest:
        rzy = jax.ops.segment_sum((R.rest_z * yw[:, None]).reshape(-1),
                                  R.rest_cols.reshape(-1), num_segments=s.q_rest)
    else:
        rzy = A.rzy
    return A.replace(b1y=b1y, rzy=rzy, xty=R.X.T @ yw, yty=yw @ yw)


def _entries(codes0, z0, cols, zvals, qr):
    """Non-zero entries of Z0' Z_rest as (level a, column c, k0-vector)."""
    n, k0 = z0.shape
    if cols.shape[1] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, k0))
    a = np.repeat(codes0, cols.shape[1])
    c = cols.reshape(-1)
    v = (z0[:, None, :] * zvals[:, :, None]).reshape(-1, k0)
    key = a * qr + c
    uniq, inv = np.unique(key, return_inverse=True)
    vals = _group_sum(inv.reshape(-1), v, len(uniq))
    return uniq // qr, uniq % qr, vals


def _pairs(ent_a):
    """All unordered pairs (i, j), i <= j, of entries with ent_a[i] == ent_a[j],
    grouped by level (the symmetric Schur update needs each product once)."""
    if len(ent_a) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, ent_a[1:] != ent_a[:-1]])
    counts = np.diff(np.r_[starts, len(ent_a)])
    sizes = counts * (counts + 1) // 2
    grp = np.repeat(np.arange(len(counts)), sizes)
    w = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    # w enumerates the lower triangle row by row: row r holds w in [r(r+1)/2, (r+1)(r+2)/2).
    r = np.floor((np.sqrt(8.0 * w + 1.0) - 1.0) / 2.0).astype(np.int64)
    r += (r + 1) * (r + 2) // 2 <= w
    r -= r * (r + 1) // 2 > w
    c = w - r * (r + 1) // 2
    return starts[grp] + c, starts[grp] + r


def _pad_entries(ent_a, ent_c, ent_v, pair_i, pair_j):
    """Pad entry and pair lists to bucket sizes; padding points at a zero entry."""
    E, P = len(ent_a), len(pair_i)
    Ep, Pp = bucket(E + 1), bucket(max(P, 1))
    k0 = ent_v.shape[1]
    a = np.zeros(Ep, np.int64); a[:E] = ent_a
    c = np.zeros(Ep, np.int64); c[:E] = ent_c
    v = np.zeros((Ep, k0)); v[:E] = ent_v
    pi = np.full(Pp, E, np.int64); pi[:P] = pair_i
    pj = np.full(Pp, E, np.int64); pj[:P] = pair_j
    return a, c, v, pi, pj


# ----------------------------------------------------------------------------------
# theta <-> Lambda
# ----------------------------------------------------------------------------------
def _tril_indices(k: int):
    """Row/column indices of the lower triangle in column-major order (lme4's theta)."""
    rows, cols = [], []
    for j in range(k):
        for i in range(j, k):
            rows.append(i)
            cols.append(j)
    return np.array(rows), np.array(cols)


def theta_to_lambdas(theta, structure: Structure):
    """theta -> list of k x k lower-triangular relative covariance factors."""
    out = []
    for k, sl in zip(structure.k, structure.theta_slices):
        r, c = _tril_indices(k)
        out.append(jnp.zeros((k, k), theta.dtype).at[r, c].set(theta[sl]))
    return out


def initial_theta(structure: Structure) -> np.ndarray:
    """lme4's starting value: identity factors (diagonal 1, off-diagonal 0)."""
    parts = []
    for k in structure.k:
        r, c = _tril_indices(k)
        parts.append((r == c).astype(np.float64))
    return np.concatenate(parts)


def lower_bounds(structure: Structure) -> np.ndarray:
    """lme4's bounds: 0 for diagonal elements of Lambda, -inf otherwise."""
    parts = []
    for k in structure.k:
        r, c = _tril_indices(k)
        parts.append(np.where(r == c, 0.0, -np.inf))
    return np.concatenate(parts)


def rectify_theta(theta: np.ndarray, structure: Structure) -> np.ndarray:
    """Flip the sign of each Lambda column with a negative diagonal element.

    The criterion depends on Lambda only through Lambda Lambda', which is unchanged,
    so theta can be optimized unconstrained and mapped to lme4's convention after.
    """
    theta = np.array(theta, dtype=np.float64, copy=True)
    for k, sl in zip(structure.k, structure.theta_slices):
        r, c = _tril_indices(k)
        block = theta[sl]
        for j in range(k):
            col = c == j
            diag = np.flatnonzero(col & (r == j))[0]
            if block[diag] < 0:
                block[col] = -block[col]
        theta[sl] = block
    return theta


# ----------------------------------------------------------------------------------
# Small batched linear algebra (k is tiny; unrolled loops vectorize over the batch)
# ----------------------------------------------------------------------------------
def _chol_small(A):
    """Cholesky factors of a batch (..., k, k) of small SPD matrices."""
    k = A.shape[-1]
    if k == 1:
        return jnp.sqrt(A)
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        s = A[..., j, j]
        for t in range(j):
            s = s - L[j][t] ** 2
        L[j][j] = jnp.sqrt(s)
        for i in range(j + 1, k):
            s = A[..., i, j]
            for t in range(j):
                s = s - L[i][t] * L[j][t]
            L[i][j] = s / L[j][j]
    zero = jnp.zeros_like(A[..., 0, 0])
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(k)], -1)
                      for i in range(k)], -2)


def _mm_small(a, b):
    """a @ b for small inner dimension, as broadcast-multiply-sum.

    XLA fuses these into elementwise loops; batched tiny dot products instead
    become separate kernels that are slow to compile and to run on CPU.
    """
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _forward_small(L, B):
    """Solve L X = B for a batch of small lower-triangular L (..., k, k), B (..., k, s)."""
    k = L.shape[-1]
    if k == 1:
        return B / L
    rows = []
    for i in range(k):
        s = B[..., i, :]
        for t in range(i):
            s = s - L[..., i, t, None] * rows[t]
        rows.append(s / L[..., i, i, None])
    return jnp.stack(rows, -2)


def _backward_small(L, B):
    """Solve L' X = B for a batch of small lower-triangular L (..., k, k), B (..., k, s)."""
    k = L.shape[-1]
    if k == 1:
        return B / L
    rows = [None] * k
    for i in reversed(range(k)):
        s = B[..., i, :]
        for t in range(i + 1, k):
            s = s - L[..., t, i, None] * rows[t]
        rows[i] = s / L[..., i, i, None]
    return jnp.stack(rows, -2)


def _scale_rest(M, lams, structure: Structure, side: str):
    """Multiply the Z_rest columns (side='right') or rows ('left') of M by Lambda_rest."""
    if side == "left":
        return _scale_rest(M.T, lams, structure, "right").T
    pieces, start = [], 0
    for lam, k, m in zip(lams[1:], structure.k[1:], structure.m[1:]):
        blk = M[:, start:start + k * m].reshape(M.shape[0], m, k)
        pieces.append((blk @ lam).reshape(M.shape[0], m * k))
        start += k * m
    pieces.append(M[:, start:])
    return jnp.concatenate(pieces, axis=1)


# ----------------------------------------------------------------------------------
# Factorization and criterion
# ----------------------------------------------------------------------------------
class Factor(NamedTuple):
    """Blocked Cholesky factor of M(theta), first part, and the rest's Schur complement.

    L = [[L11, 0], [W', Lr]]: L11 (m0, k0, k0) is the block-diagonal factor of the
    first term; W, the first term's rows of the off-diagonal part, is kept as
    per-entry vectors ``w_ent`` (E, k0) for Z_rest columns and ``w_xy``
    (m0, k0, p + 1) for the X and y columns; ``S`` is the Schur complement of the
    first block in M (rest = Z_rest, X, y), with Lr = chol(S).
    """

    L11: jax.Array
    w_ent: jax.Array
    w_xy: jax.Array
    S: jax.Array


def dense_w(w_ent, A: PLSArrays):
    """The first term's rows of the off-diagonal factor as a dense (m0 k0, q_rest) matrix."""
    s = A.structure
    Wd = jnp.zeros((s.m[0], s.q_rest, s.k[0]), w_ent.dtype).at[A.ent_a, A.ent_c].add(w_ent)
    return jnp.swapaxes(Wd, 1, 2).reshape(s.m[0] * s.k[0], s.q_rest)


def factor(theta, A: PLSArrays) -> Factor:
    """First block of the blocked Cholesky factorization of M(theta) and the Schur
    complement S of the rest (see module docstring)."""
    s = A.structure
    lams = theta_to_lambdas(theta, s)
    lam0 = lams[0]
    k0 = s.k[0]
    qr, p = s.q_rest, s.p

    # First term: m0 independent k0 x k0 blocks Lambda0' D_a Lambda0 + I.
    M11 = _mm_small(_mm_small(lam0.T, A.d1), lam0) + jnp.eye(k0)
    L11 = _chol_small(M11)
    bxy = jnp.concatenate([A.b1x, A.b1y[..., None]], axis=-1)     # (m0, k0, p + 1)
    w_xy = _forward_small(L11, _mm_small(lam0.T, bxy))              # (m0, k0, p + 1)

    # Schur complement of the rest, unscaled by Lambda_rest:
    #   U = sum_a B_a' Lambda0 M11_a^{-1} Lambda0' B_a = sum_a W_a' W_a.
    u_xy = jnp.einsum("aki,akj->ij", w_xy, w_xy)
    if qr:
        w_ent = _forward_small(L11[A.ent_a], _mm_small(A.ent_v[:, None, :], lam0)
                               .swapaxes(-1, -2))[..., 0]
        if s.dense_w:
            Wd = dense_w(w_ent, A)
            u_zz = Wd.T @ Wd
        else:
            # Each unordered pair once: entries of one level have distinct columns, so
            # i < j lands off the diagonal and its mirror comes from the transpose.
            pair_vals = jnp.sum(w_ent[A.pair_i] * w_ent[A.pair_j], axis=-1)
            half = jnp.zeros((qr, qr), theta.dtype).at[
                A.ent_c[A.pair_i], A.ent_c[A.pair_j]].add(pair_vals)
            u_zz = half + half.T - jnp.diag(jnp.diagonal(half))
        u_zxy = jax.ops.segment_sum(jnp.einsum("ek,ekj->ej", w_ent, w_xy[A.ent_a]), A.ent_c,
                                    num_segments=qr)
        R0 = jnp.block([[A.rzz, A.rzx, A.rzy[:, None]],
                        [A.rzx.T, A.xtx, A.xty[:, None]],
                        [A.rzy[None, :], A.xty[None, :], A.yty[None, None]]])
        U = jnp.block([[u_zz, u_zxy], [u_zxy.T, u_xy]])
        S = _scale_rest(_scale_rest(R0 - U, lams, s, "right"), lams, s, "left")
        S = S + jnp.diag(jnp.concatenate([jnp.ones(qr), jnp.zeros(p + 1)]))
    else:
        w_ent = jnp.zeros((0, k0), theta.dtype)
        R0 = jnp.block([[A.xtx, A.xty[:, None]], [A.xty[None, :], A.yty[None, None]]])
        S = R0 - u_xy
    return Factor(L11=L11, w_ent=w_ent, w_xy=w_xy, S=S)


# The criterion depends on S only through log-determinants of three nested leading
# blocks (Z_rest; Z_rest and X; all), because the Cholesky factor of a leading block
# is the leading block of the Cholesky factor.  Differentiating LAPACK's Cholesky
# twice (for Newton's Hessian) is slow to compile and to run; the custom JVPs below
# reduce every derivative order to matrix products:
#   d log|B| = tr(B^-1 dB),   d B^-1 = -B^-1 dB B^-1.
@jax.custom_jvp
def spd_inverse(S):
    """Inverse of a symmetric positive definite matrix from its Cholesky factor."""
    L = jnp.linalg.cholesky(S)
    Linv = jax.scipy.linalg.solve_triangular(L, jnp.eye(S.shape[-1], dtype=S.dtype),
                                             lower=True)
    return Linv.T @ Linv


@spd_inverse.defjvp
def _spd_inverse_jvp(primals, tangents):
    (S,), (dS,) = primals, tangents
    Sinv = spd_inverse(S)
    return Sinv, -Sinv @ dS @ Sinv


def leading_inverses(S, sizes: tuple[int, ...]):
    """Inverses of the leading blocks S[:k, :k], k in ``sizes``, from one inverse.

    With S^-1 = [[P, Q], [Q', R]] partitioned at k, the leading block's inverse is
    S[:k, :k]^-1 = P - Q R^-1 Q' (the Schur complement in S^-1).  The trailing part
    (X and y columns) is small, so every further block costs O(k^2 (N - k)) instead
    of another O(k^3) inverse, and its derivatives (through ``spd_inverse``'s rule)
    are two dense products per direction in all.
    """
    N = S.shape[-1]
    Sinv = spd_inverse(S)
    out = []
    for k in sizes:
        if k == N:
            out.append(Sinv)
        else:
            Q = Sinv[:k, k:]
            out.append(Sinv[:k, :k] - Q @ spd_inverse(Sinv[k:, k:]) @ Q.T)
    return tuple(out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def leading_logdets(S, sizes: tuple[int, ...]):
    """log det S[:s, :s] for each s in ``sizes`` (0 gives 0), from one Cholesky."""
    L = jnp.linalg.cholesky(S)
    cum = jnp.concatenate([jnp.zeros(1, S.dtype),
                           2.0 * jnp.cumsum(jnp.log(jnp.diagonal(L)))])
    return cum[jnp.array(sizes)]


@leading_logdets.defjvp
def _leading_logdets_jvp(sizes, primals, tangents):
    (S,), (dS,) = primals, tangents
    out = leading_logdets(S, sizes)
    nonzero = tuple(k for k in sizes if k)
    invs = dict(zip(nonzero, leading_inverses(S, nonzero)))
    dout = [jnp.sum(invs[k] * dS[:k, :k]) if k else jnp.zeros((), S.dtype) for k in sizes]
    return out, jnp.stack(dout)


def _log_diag(L):
    return jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1))


def criterion_parts(F: Factor, A: PLSArrays):
    """(log|L_Z|^2, log|R_X|^2, pwrss) from the factor."""
    qr, p = A.structure.q_rest, A.structure.p
    ld = leading_logdets(F.S, (qr, qr + p, qr + p + 1))
    logdet_z = 2.0 * jnp.sum(_log_diag(F.L11)) + ld[0]
    logdet_x = ld[1] - ld[0]
    pwrss = jnp.exp(ld[2] - ld[1])
    return logdet_z, logdet_x, pwrss


def objective(theta, A: PLSArrays, reml: bool = True):
    """Profiled deviance (ML) or REML criterion at ``theta``; lme4's ``devfun``.

    A pure function of ``theta`` (lme4's layout) and the precomputed arrays:
    ``jax.jit``, ``jax.grad``, ``jax.hessian`` and ``jax.vmap`` apply.
    """
    theta = jnp.asarray(theta, dtype=jnp.float64)
    logdet_z, logdet_x, pwrss = criterion_parts(factor(theta, A), A)
    return _criterion(logdet_z, logdet_x, pwrss, A, reml)


def _criterion(logdet_z, logdet_x, pwrss, A: PLSArrays, reml: bool):
    dof = A.n - A.p if reml else A.n
    # Prior weights scale the residual covariance to sigma^2 W^-1, whose log
    # determinant contributes -sum(log w) (lme4's ldW).
    value = logdet_z + dof * (1.0 + jnp.log(2.0 * math.pi * pwrss / dof)) - A.ldw
    return value + logdet_x if reml else value


class Solution(NamedTuple):
    """Conditional estimates at theta: beta, spherical u, sigma and factor pieces."""

    beta: jax.Array        # (p,)
    u0: jax.Array          # (m0, k0) spherical random effects of the first term
    u_rest: jax.Array      # (q_rest,)
    sigma: jax.Array
    pwrss: jax.Array
    logdet_z: jax.Array
    logdet_x: jax.Array
    objective: jax.Array
    factor: Factor
    Lr: jax.Array          # chol(S), the dense factor of the rest


def solve(theta, A: PLSArrays, reml: bool = True) -> Solution:
    """Solve the penalized least squares problem at ``theta`` (JSS eqs. 16-18)."""
    theta = jnp.asarray(theta, dtype=jnp.float64)
    s = A.structure
    F = factor(theta, A)
    logdet_z, logdet_x, pwrss = criterion_parts(F, A)
    qr, p = s.q_rest, s.p
    Lr = jnp.linalg.cholesky(F.S)
    # [u_rest; beta] from the rest factor: Lr_A' x = c, c = last row of Lr.
    LA = Lr[:-1, :-1]
    c = Lr[-1, :-1]
    x = jax.scipy.linalg.solve_triangular(LA, c, lower=True, trans="T")
    u_rest, beta = x[:qr], x[qr:]
    # First term: L11' u0 = w_y - W_A x (per level).  The stored entries are not
    # yet scaled by Lambda_rest, so they multiply b_rest = Lambda_rest u_rest.
    wx = F.w_xy[..., :p] @ beta                                       # (m0, k0)
    if qr:
        lams = theta_to_lambdas(theta, s)
        b_rest = _scale_rest(u_rest[None, :], [l.T for l in lams], s, "right")[0]
        contrib = F.w_ent * b_rest[A.ent_c][:, None]
        wx = wx + jax.ops.segment_sum(contrib, A.ent_a, num_segments=s.m[0])
    rhs = F.w_xy[..., p] - wx
    u0 = _backward_small(F.L11, rhs[..., None])[..., 0]
    sigma = jnp.sqrt(pwrss / (A.n - A.p if reml else A.n))
    obj = _criterion(logdet_z, logdet_x, pwrss, A, reml)
    return Solution(beta=beta, u0=u0, u_rest=u_rest, sigma=sigma, pwrss=pwrss,
                    logdet_z=logdet_z, logdet_x=logdet_x, objective=obj, factor=F, Lr=Lr)
