"""The cross-products [Z X y]'[Z X y], by block of the factor, in a stable basis.

Everything the criterion needs from the n rows is summed here once per design
(and, for a new response, only its Z'y, X'y and y'y parts, :func:`response_parts`);
no evaluation of the criterion touches the rows again.

Stable basis.  The profiled criterion is invariant under y -> y - X c, and under
X -> X T it changes by the constant 2 log|det T| (REML only).  So, with the
weighted X = Q R (thin QR) and r = y - Q Q'y the least-squares residual, the
blocks are formed from [Z Q r] instead of [Z X y]: Q'Q = I and Q'r = 0 hold
exactly, r'r carries no cancellation from a large offset or a high R^2 (with raw
cross-products y + 1e6 already moves the criterion by 1e-4), and

    criterion(X, y) = criterion(Q, r) + 2 log|det R|   (REML),
    beta = R^-1 (beta~ + Q'y),   vcov(beta) = R^-1 vcov(beta~) R^-T.

Prior weights scale every row of [Z X y] by sqrt(w) (y less its offset first;
Bates et al. 2015, JSS 67(1), section 3.2) and add -sum(log w) to the criterion.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .levels import unique_ints
from .structure import Placement, Structure, basis_matrices

__all__ = ["Blocks", "ResponseMap", "Rows", "build", "row_layout", "basis", "design_blocks",
           "response_map", "response_parts", "with_response", "to_device", "register_pytrees",
           "project", "pairs"]


class Blocks:
    """The blocks of [Z X y]'[Z X y] in the layout of :mod:`mixedjax.structure`.

    First term (m0 levels, k0 columns): ``d0`` (m0, k0, k0) its diagonal blocks;
    ``b0`` (m0, k0, n_b) its coupling to the border columns; its coupling to the
    middle columns as entries ``ent_a`` (level), ``ent_pos`` (flat middle column
    cluster * s + offset) and ``ent_v`` (E, k0), sorted by level; ``pair_i`` /
    ``pair_j`` (P,) every pair i <= j of entries of one level.  Middle: ``amm``
    (n_cl, s, s) its cluster blocks; ``abm`` (n_cl, n_b, s) border x middle.
    Border: ``abb`` (n_b, n_b).  Scalars: ``n`` and ``p`` (real sizes), ``ldw``
    (sum of log prior weights), ``logdet_x`` (2 log|det R|, the stable basis's
    REML constant).  ``rx`` (p, p) R and ``beta0`` (p,) Q'y map beta~ back.
    The columns are [Z_border Q r] (module docstring).
    """

    fields = ("d0", "b0", "ent_a", "ent_pos", "ent_v", "pair_i", "pair_j", "amm", "abm",
              "abb", "n", "p", "ldw", "logdet_x", "rx", "beta0")
    index_fields = ("ent_a", "ent_pos", "pair_i", "pair_j")

    def __init__(self, structure: Structure, **arrays):
        self.structure = structure
        for name in self.fields:
            setattr(self, name, arrays[name])

    def tree_flatten(self):
        return tuple(getattr(self, f) for f in self.fields), self.structure

    @classmethod
    def tree_unflatten(cls, structure, children):
        return cls(structure, **dict(zip(cls.fields, children)))

    def replace(self, **changes) -> "Blocks":
        arrays = {f: getattr(self, f) for f in self.fields}
        arrays.update(changes)
        return Blocks(self.structure, **arrays)

    def replace_structure(self, structure: Structure) -> "Blocks":
        """The same arrays under another structure of the same shape (e.g. without
        its column basis, :meth:`mixedjax.structure.Structure.plain`)."""
        return self if structure is self.structure else Blocks(
            structure, **{f: getattr(self, f) for f in self.fields})

    def numpy(self) -> "Blocks":
        return Blocks(self.structure, **{f: np.asarray(getattr(self, f)) for f in self.fields})


class ResponseMap:
    """What maps a response vector to the response parts of :class:`Blocks`.

    ``sqrtw``/``offset`` (n,); ``q`` (n, p) the orthonormal basis of the weighted
    X; ``codes0`` (n,) and ``z0`` (n, k0) the first term; ``mid_pos`` / ``mid_z``
    (n, K) each row's middle columns (flat cluster * s + offset) and values;
    ``bor_pos`` / ``bor_z`` (n, Kb) its border-term columns and values, rows
    already scaled by sqrt(w).  A pytree once JAX is loaded.
    """

    fields = ("sqrtw", "offset", "q", "codes0", "z0", "mid_pos", "mid_z", "bor_pos", "bor_z")

    def __init__(self, structure: Structure, **arrays):
        self.structure = structure
        for name in self.fields:
            setattr(self, name, arrays[name])

    def tree_flatten(self):
        return tuple(getattr(self, f) for f in self.fields), self.structure

    @classmethod
    def tree_unflatten(cls, structure, children):
        return cls(structure, **dict(zip(cls.fields, children)))


@functools.cache
def register_pytrees() -> None:
    """Register :class:`Blocks` and :class:`ResponseMap` as JAX pytrees (their
    structure is static data), at the first use of JAX."""
    import jax
    jax.tree_util.register_pytree_node_class(Blocks)
    jax.tree_util.register_pytree_node_class(ResponseMap)


def to_device(tree):
    """``tree`` (blocks, a response map, or a tuple of them) on JAX's default device.

    Cast in NumPy and transferred with ``device_put``: ``jnp.asarray`` compiles a
    small program per shape and dtype, tens of milliseconds in a fresh process.
    """
    import jax
    register_pytrees()
    return jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a)), tree)


# ----------------------------------------------------------------------------------
# Row layout and basis
# ----------------------------------------------------------------------------------
class Rows(NamedTuple):
    """Each row's place in the factor (unweighted values, NumPy): the first term's
    level ``codes0`` and values ``z0`` (n, k0); its middle columns ``mid_pos``
    (flat cluster * s + offset) and values ``mid_z`` (n, K); its border-term
    columns ``bor_pos`` and values ``bor_z`` (n, Kb); ``ent_idx`` (n, K) the
    coupling entry (first-term level, middle column) each middle value adds to."""

    codes0: np.ndarray
    z0: np.ndarray
    mid_pos: np.ndarray
    mid_z: np.ndarray
    bor_pos: np.ndarray
    bor_z: np.ndarray
    ent_idx: np.ndarray


def row_layout(terms, s: Structure, place: Placement):
    """(:class:`Rows`, coupling entries (ent_a, ent_pos)) of a design."""
    n = len(terms[0].codes)
    # Each term's columns in the factor's basis (structure.centring_basis).
    zs = [np.asarray(t.Z, np.float64) for t in terms]
    for t, sm in enumerate(basis_matrices(s)):
        if sm is not None:
            zs[t] = zs[t] @ sm[0]
    mid_pos, mid_z = [], []
    for t, start, _, k in s.middle_segments:
        term = terms[t]
        base = place.cluster[t][term.codes] * s.s + start + place.slot[t][term.codes] * k
        mid_pos.append(base[:, None] + np.arange(k))
        mid_z.append(zs[t])
    bor_pos, bor_z = [], []
    for t, start, _, k in s.border_segments:
        term = terms[t]
        bor_pos.append(start + term.codes[:, None] * k + np.arange(k))
        bor_z.append(zs[t])

    def join(parts, dtype):
        return np.concatenate(parts, axis=1).astype(dtype) if parts else np.zeros((n, 0), dtype)

    codes0 = np.asarray(terms[0].codes, np.int64)
    mid_pos = join(mid_pos, np.int64)
    width = max(s.n_cl * s.s, 1)
    key = codes0[:, None] * width + mid_pos                            # (n, K)
    uniq, inv = unique_ints(key, return_inverse=True)
    rows = Rows(codes0=codes0, z0=zs[0], mid_pos=mid_pos,
                mid_z=join(mid_z, np.float64), bor_pos=join(bor_pos, np.int64),
                bor_z=join(bor_z, np.float64), ent_idx=inv.reshape(key.shape).astype(np.int64))
    return rows, uniq // width, uniq % width


def basis(Xw, xp=np, stable: bool = True):
    """(Q, R) of the weighted X = Q R with R's diagonal positive (unique, so log|det R|
    is a sum of logs); (X, I) in the raw basis."""
    p = Xw.shape[1]
    if not (p and stable):
        return Xw, xp.eye(p)
    q, r = xp.linalg.qr(Xw)
    sign = xp.where(xp.diagonal(r) < 0, -1.0, 1.0)
    return q * sign, r * sign[:, None]


def design_blocks(rows: Rows, sw, q, s: Structure, n_ent: int, be, stable: bool = True) -> dict:
    """The blocks of :class:`Blocks` that do not depend on the response (its parts
    are zero), from the rows weighted by ``sw`` = sqrt(prior weight) and the basis
    ``q``; written once for NumPy and JAX (:mod:`mixedjax.fitfn` differentiates it
    in X and the weights)."""
    xp = be.xp
    m0, k0, nb, qb, p = s.m[0], s.k[0], s.n_b, s.q_border, s.p
    z0 = rows.z0 * sw[:, None]
    midz = rows.mid_z * sw[:, None]
    borz = rows.bor_z * sw[:, None]
    Kb = rows.bor_pos.shape[1]
    d0 = be.segment_sum(z0[:, :, None] * z0[:, None, :], rows.codes0, m0)
    zeros1 = xp.zeros((m0, k0, 1))
    b0x = be.segment_sum(z0[:, :, None] * q[:, None, :], rows.codes0, m0)
    if Kb:
        flat = (rows.codes0[:, None, None] * k0 + np.arange(k0)[None, :, None]) * qb \
            + rows.bor_pos[:, None, :]
        b0z = be.segment_sum((z0[:, :, None] * borz[:, None, :]).reshape(-1), flat.reshape(-1),
                             m0 * k0 * qb).reshape(m0, k0, qb)
        b0 = xp.concatenate([b0z, b0x, zeros1], axis=-1)
    else:
        b0 = xp.concatenate([b0x, zeros1], axis=-1)
    out = {"d0": d0, "b0": b0}
    if s.n_cl:
        S = s.s
        cl, col = rows.mid_pos // S, rows.mid_pos % S
        out["ent_v"] = be.segment_sum((midz[:, :, None] * z0[:, None, :]).reshape(-1, k0),
                                      rows.ent_idx.reshape(-1), n_ent)
        flat = (cl[:, :, None] * S + col[:, :, None]) * S + col[:, None, :]
        out["amm"] = be.segment_sum((midz[:, :, None] * midz[:, None, :]).reshape(-1),
                                    flat.reshape(-1), s.n_cl * S * S).reshape(s.n_cl, S, S)
        if p:
            ax = be.segment_sum((midz[:, :, None] * q[:, None, :]).reshape(-1, p),
                                rows.mid_pos.reshape(-1), s.n_cl * S)       # (n_cl s, p)
            ax = xp.swapaxes(ax.reshape(s.n_cl, S, p), 1, 2)
        else:
            ax = xp.zeros((s.n_cl, 0, S))
        parts = [ax, xp.zeros((s.n_cl, 1, S))]
        if Kb:
            flat = (cl[:, :, None] * qb + rows.bor_pos[:, None, :]) * S + col[:, :, None]
            az = be.segment_sum((midz[:, :, None] * borz[:, None, :]).reshape(-1),
                                flat.reshape(-1), s.n_cl * qb * S).reshape(s.n_cl, qb, S)
            parts = [az] + parts
        out["abm"] = xp.concatenate(parts, axis=1)
    else:
        out["ent_v"] = xp.zeros((0, k0))
        out["amm"] = xp.zeros((0, 0, 0))
        out["abm"] = xp.zeros((0, nb, 0))
    qq = xp.eye(p) if stable else q.T @ q
    if Kb:
        flat = rows.bor_pos[:, :, None] * qb + rows.bor_pos[:, None, :]
        zz = be.segment_sum((borz[:, :, None] * borz[:, None, :]).reshape(-1), flat.reshape(-1),
                            qb * qb).reshape(qb, qb)
        zq = (be.segment_sum((borz[:, :, None] * q[:, None, :]).reshape(-1, p),
                             rows.bor_pos.reshape(-1), qb) if p else xp.zeros((qb, 0)))
        top = xp.concatenate([zz, zq, xp.zeros((qb, 1))], axis=1)
        mid = xp.concatenate([zq.T, qq, xp.zeros((p, 1))], axis=1)
        abb = xp.concatenate([top, mid, xp.zeros((1, nb))], axis=0)
    else:
        abb = xp.concatenate([xp.concatenate([qq, xp.zeros((p, 1))], axis=1),
                              xp.zeros((1, nb))], axis=0)
    out["abb"] = abb
    return out


def response_map(rows: Rows, q, s: Structure, sw, off) -> ResponseMap:
    """The :class:`ResponseMap` of a design: rows weighted by ``sw`` = sqrt(prior
    weight), basis ``q``, offset ``off`` (any array library)."""
    return ResponseMap(s, sqrtw=sw, offset=off, q=q, codes0=rows.codes0,
                       z0=rows.z0 * sw[:, None], mid_pos=rows.mid_pos,
                       mid_z=rows.mid_z * sw[:, None], bor_pos=rows.bor_pos,
                       bor_z=rows.bor_z * sw[:, None])


def project(q, y, xp=np, stable: bool = True):
    """(Q'y, y - Q Q'y), with one step of refinement (twice is enough; Parlett)."""
    if q.shape[1] == 0:
        return xp.zeros(0, dtype=y.dtype), y
    c = q.T @ y
    r = y - q @ c
    if stable:
        c2 = q.T @ r
        r = r - q @ c2
        c = c + c2
    return c, r


def response_parts(R: ResponseMap, y, be, stable: bool = True) -> dict:
    """The response parts of :class:`Blocks` for response ``y``: the last column of
    ``b0`` and of ``abm``, the last row of ``abb``, and ``beta0``.

    O(n) and written once for both backends, so ``jax.vmap`` over responses maps a
    matrix of simulated responses to a batch of blocks.
    """
    xp = be.xp
    s = R.structure
    yw = (y - R.offset) * R.sqrtw
    c, r = project(R.q, yw, xp, stable)
    b0y = be.segment_sum(R.z0 * r[:, None], R.codes0, s.m[0])                 # (m0, k0)
    if s.n_cl:
        flat = be.segment_sum((R.mid_z * r[:, None]).reshape(-1), R.mid_pos.reshape(-1),
                              s.n_cl * s.s)
        aby = flat.reshape(s.n_cl, s.s)
    else:
        aby = xp.zeros((0, 0), dtype=r.dtype)
    zy = be.segment_sum((R.bor_z * r[:, None]).reshape(-1), R.bor_pos.reshape(-1), s.q_border)
    # Q'r = 0 exactly in the stable basis; with raw X it is X'y.
    xy = xp.zeros(s.p, dtype=r.dtype) if stable else R.q.T @ r
    row = xp.concatenate([zy, xy, xp.reshape(r @ r, (1,))])
    return {"b0y": b0y, "aby": aby, "row": row, "beta0": c}


def with_response(A: Blocks, R: ResponseMap, y, be, stable: bool = True) -> Blocks:
    """``A`` with its response parts recomputed for response ``y``."""
    xp = be.xp
    parts = response_parts(R, y, be, stable)
    b0 = xp.concatenate([A.b0[..., :-1], parts["b0y"][..., None]], axis=-1)
    abm = A.abm
    if A.structure.n_cl:
        abm = xp.concatenate([A.abm[:, :-1, :], parts["aby"][:, None, :]], axis=1)
    row = parts["row"]
    abb = xp.concatenate([xp.concatenate([A.abb[:-1, :-1], row[:-1, None]], axis=1),
                          row[None, :]], axis=0)
    return A.replace(b0=b0, abm=abm, abb=abb, beta0=parts["beta0"])


# ----------------------------------------------------------------------------------
# The design's blocks (NumPy, once per design)
# ----------------------------------------------------------------------------------
def pairs(ent_a):
    """All pairs (i, j), i <= j, of entries of one level, grouped by level: the pair
    lists ``pair_i``/``pair_j`` of :class:`Blocks` for the sorted levels ``ent_a``."""
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


def build(terms, X: np.ndarray, y: np.ndarray, structure: Structure, placement: Placement,
          weights=None, offset=None, stable: bool = True):
    """(:class:`Blocks`, :class:`ResponseMap`, :class:`Rows`) of a design.

    ``terms``: sequence with ``codes`` (n,), ``Z`` (n, k) and ``nlevels`` in lme4's
    order; ``structure``/``placement`` from :func:`mixedjax.structure.analyze`;
    ``weights`` (prior weights) and ``offset`` one value per row or None;
    ``stable=False`` keeps the raw basis (X itself, y itself).
    """
    from .backend import NUMPY

    s = structure
    n, p = X.shape
    rows, ent_a, ent_pos = row_layout(terms, s, placement)
    sw = np.ones(n) if weights is None else np.sqrt(np.asarray(weights, np.float64))
    q, rx = basis(X * sw[:, None], np, stable)
    if s.dense_coupling:
        pair_i = pair_j = np.zeros(0, np.int64)
    else:
        pair_i, pair_j = pairs(ent_a)
    parts = design_blocks(rows, sw, q, s, len(ent_a), NUMPY, stable)
    A = Blocks(s, ent_a=ent_a, ent_pos=ent_pos, pair_i=pair_i, pair_j=pair_j,
               n=np.float64(n), p=np.float64(p),
               ldw=np.float64(0.0 if weights is None else np.sum(np.log(weights))),
               logdet_x=np.float64(2.0 * np.sum(np.log(np.diagonal(rx))) if (stable and p)
                                   else 0.0),
               rx=rx, beta0=np.zeros(p), **parts)
    off = np.zeros(n) if offset is None else np.asarray(offset, np.float64)
    R = response_map(rows, q, s, sw, off)
    return with_response(A, R, np.asarray(y, np.float64), NUMPY, stable), R, rows
