"""The blocked layout of [Z X y]'[Z X y] for :mod:`mixedjax.pls`, in NumPy.

Everything here is computed once per design and needs no JAX: the static
:class:`Structure`, the precomputed blocks (:class:`PLSArrays`, NumPy leaves from
:func:`build_arrays`; :func:`mixedjax.pls.build_arrays` transfers them to the
device), theta's layout and bounds, and the containers of a solution.  The eager
fits (:mod:`mixedjax.analytic`, :mod:`mixedjax.blocked`) use only this module, so a
model is built and fitted without importing JAX; :mod:`mixedjax.pls`, which
registers :class:`PLSArrays` as a pytree, is imported at the first traced use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["Structure", "PLSArrays", "build_arrays", "initial_theta", "rectify_theta",
           "lower_bounds", "Factor", "Solution", "dense_coupling"]


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

    as_f = lambda a: np.asarray(a, dtype=np.float64)
    as_i = lambda a: np.asarray(a, dtype=np.int32)
    return PLSArrays(
        structure,
        d1=as_f(d1), b1x=as_f(b1x), b1y=as_f(b1y),
        ent_a=as_i(ent_a), ent_c=as_i(ent_c), ent_v=as_f(ent_v),
        pair_i=as_i(pair_i), pair_j=as_i(pair_j),
        rzz=as_f(rzz), rzx=as_f(rzx), rzy=as_f(rzy),
        xtx=as_f(xtx), xty=as_f(Xp.T @ y), yty=as_f(y @ y),
        n=as_f(n), p=as_f(p_real), ldw=as_f(ldw),
    )


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


def _tril_indices(k: int):
    """Row/column indices of the lower triangle in column-major order (lme4's theta)."""
    rows, cols = [], []
    for j in range(k):
        for i in range(j, k):
            rows.append(i)
            cols.append(j)
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)


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


class Factor(NamedTuple):
    """Blocked Cholesky factor of M(theta), first part, and the rest's Schur complement.

    L = [[L11, 0], [W', Lr]]: L11 (m0, k0, k0) is the block-diagonal factor of the
    first term; W, the first term's rows of the off-diagonal part, is kept as
    per-entry vectors ``w_ent`` (E, k0) for Z_rest columns and ``w_xy``
    (m0, k0, p + 1) for the X and y columns; ``S`` is the Schur complement of the
    first block in M (rest = Z_rest, X, y), with Lr = chol(S).
    """

    # NumPy arrays from the eager paths, jax arrays from pls.
    L11: np.ndarray
    w_ent: np.ndarray
    w_xy: np.ndarray
    S: np.ndarray


class Solution(NamedTuple):
    """Conditional estimates at theta: beta, spherical u, sigma and factor pieces."""

    beta: np.ndarray        # (p,)
    u0: np.ndarray          # (m0, k0) spherical random effects of the first term
    u_rest: np.ndarray      # (q_rest,)
    sigma: np.ndarray
    pwrss: np.ndarray
    logdet_z: np.ndarray
    logdet_x: np.ndarray
    objective: np.ndarray
    factor: Factor
    Lr: np.ndarray          # chol(S), the dense factor of the rest


DENSE_COUPLING = 32768  # m0 * k0 * q_rest up to which the coupling is kept dense


def dense_coupling(A: PLSArrays) -> np.ndarray | None:
    """The first term's coupling to Z_rest as a dense (m0, k0, q_rest) array, or None
    when the design has no later terms or it would exceed ``DENSE_COUPLING`` entries
    (see :class:`mixedjax.batchfit.Coupling`)."""
    s = A.structure
    qr = s.q_rest
    if not qr or s.m[0] * s.k[0] * qr > DENSE_COUPLING:
        return None
    V = np.zeros((s.m[0], qr, s.k[0]))
    np.add.at(V, (np.asarray(A.ent_a), np.asarray(A.ent_c)), np.asarray(A.ent_v))
    return np.swapaxes(V, 1, 2)
