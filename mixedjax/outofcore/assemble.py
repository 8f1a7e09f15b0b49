"""From the merged per-partition sums to the engine's :class:`~mixedjax.crossprod.Blocks`.

The partitions summed the cross-products of [Z Q1 r1] by term pair, in level
coordinates that do not depend on how the factor will be laid out
(:mod:`mixedjax.outofcore.partition`).  Here, on the client:

* the basis is made orthonormal to round-off (Q1 = X_w R1^-1 from the global R is
  orthonormal only to cond(X) * eps): with R2 the Cholesky factor of Q1'Q1,
  Q = Q1 R2^-1 and r = r1 - Q Q'r1 are the in-memory basis and residual, and every
  block changes by a small triangular map (a second CholeskyQR step, done on the
  sums instead of the rows);
* the factor's layout is worked out by :func:`mixedjax.structure.analyze_pairs`
  from the level pairs of the first term with each later one (which levels meet:
  all that the in-memory analysis reads of the rows);
* the blocks are filled in that layout.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from .. import start
from ..crossprod import Blocks, pairs
from ..design import independent_columns
from ..levels import split_keys
from ..structure import analyze_pairs

__all__ = ["basis_from_r", "orthonormal_sums", "assemble", "moment_theta"]


def basis_from_r(R: np.ndarray, p_full: int, weighted: bool, tol: float = 1e-7) -> dict:
    """The fixed-effects basis from the R factor of [X, (X_w,) y_w] (pass 2).

    ``keep`` (p_full,): columns not aliased with earlier ones (judged on X, as the
    in-memory :func:`mixedjax.design.independent_columns`: R'R = X'X gives the same
    norms and projections); ``R1`` (p, p): R of the kept weighted columns with a
    positive diagonal; ``c1`` (p,): Q'y_w.
    """
    Rx = R[:, :p_full]
    keep = independent_columns(Rx, tol) if p_full else np.zeros(0, bool)
    sel = np.flatnonzero(keep) + (p_full if weighted else 0)
    ycol = R.shape[1] - 1
    Rk = np.linalg.qr(R[:, np.r_[sel, ycol]], mode="r")
    p = int(keep.sum())
    sign = np.where(np.diagonal(Rk)[:p] < 0, -1.0, 1.0)
    return {"keep": keep, "R1": Rk[:p, :p] * sign[:, None], "c1": Rk[:p, p] * sign, "p": p}


def orthonormal_sums(sums: dict, basis: dict) -> dict:
    """The sums of [Z Q r] from those of [Z Q1 r1] (module docstring): ``ztq``,
    ``ztr``, ``rr`` replaced; ``rx`` = R2 R1 (X_w = Q rx) and ``beta0`` = Q'y_w."""
    p = basis["p"]
    out = dict(sums)
    if p == 0:
        out.update(rx=np.zeros((0, 0)), beta0=np.zeros(0))
        return out
    R2 = np.linalg.cholesky(sums["G"]).T
    R2inv = scipy.linalg.solve_triangular(R2, np.eye(p))
    c2 = scipy.linalg.solve_triangular(R2, sums["qr"], trans="T")          # Q'r1
    out["ztq"] = [zq @ R2inv for zq in sums["ztq"]]
    out["ztr"] = [zr - zq @ c2 for zr, zq in zip(sums["ztr"], out["ztq"])]
    out["rr"] = sums["rr"] - float(c2 @ c2)      # |r1 - Q c2|^2 with Q'r1 = c2
    out["rx"] = R2 @ basis["R1"]
    out["beta0"] = R2 @ basis["c1"] + c2
    return out


class Pairs:
    """Access to the sparse Z_s'Z_t entries in either order: levels and (E, k_s, k_t)."""

    def __init__(self, pairs: dict, ms: list):
        self.pairs, self.ms = pairs, ms

    def __call__(self, s: int, t: int):
        bound = max(self.ms[s], self.ms[t])
        if s < t:
            keys, vals = self.pairs[(s, t)]
            a, b = split_keys(keys, self.ms[t], bound)
            return a, b, vals
        keys, vals = self.pairs[(t, s)]
        a, b = split_keys(keys, self.ms[s], bound)
        return b, a, np.swapaxes(vals, 1, 2)


def assemble(sums: dict, ms: list, ks: list, p: int, n: int, ldw: float):
    """(:class:`~mixedjax.crossprod.Blocks`, :class:`~mixedjax.structure.Placement`)
    from the sums of [Z Q r] (:func:`orthonormal_sums`); ``ms``/``ks`` the terms'
    levels and widths in lme4's order, ``p`` fixed effects, ``n`` rows, ``ldw`` the
    sum of log prior weights."""
    pair = Pairs(sums["pairs"], ms)
    s, pl = analyze_pairs([sums["pairs"][(0, t)][0] for t in range(1, len(ms))], ks, ms, p)
    S, qb, nb = s.s, s.q_border, s.n_b
    mstart = {t: st for t, st, _, _ in s.middle_segments}
    bstart = {t: st for t, st, _, _ in s.border_segments}
    ztz, ztq, ztr = sums["ztz"], sums["ztq"], sums["ztr"]

    def mcol(t, lv):        # (cluster, column within the cluster) of level lv's columns
        return pl.cluster[t][lv], mstart[t] + pl.slot[t][lv] * ks[t]

    def bcol(t, lv):
        return bstart[t] + lv * ks[t]

    b0 = np.zeros((ms[0], ks[0], nb))
    b0[:, :, qb:qb + p] = ztq[0]
    b0[:, :, -1] = ztr[0]
    abb = np.zeros((nb, nb))
    abb[qb:qb + p, qb:qb + p] = np.eye(p)
    abb[-1, -1] = sums["rr"]
    amm = np.zeros((s.n_cl, S, S))
    abm = np.zeros((s.n_cl, nb, S))
    ent = []
    for t in range(1, len(ms)):
        a, lv, v = pair(0, t)
        if t in bstart:
            for j in range(ks[t]):
                b0[a, :, bcol(t, lv) + j] = v[:, :, j]
            continue
        # the flat middle column of each level of t, then of each entry
        pos = (pl.cluster[t] * S + mstart[t] + pl.slot[t] * ks[t])[lv]
        del lv
        for j in range(ks[t]):
            ent.append((a, pos + j if j else pos, v[:, :, j]))
    lv_all = [np.arange(m) for m in ms]
    for t in bstart:
        rows = bcol(t, lv_all[t])
        for i in range(ks[t]):
            for j in range(ks[t]):
                abb[rows + i, rows + j] = ztz[t][:, i, j]
            abb[rows + i, qb:qb + p] = ztq[t][:, i, :]
            abb[qb:qb + p, rows + i] = ztq[t][:, i, :].T
            abb[rows + i, -1] = abb[-1, rows + i] = ztr[t][:, i]
    for t in mstart:
        cl, col = mcol(t, lv_all[t])
        for i in range(ks[t]):
            for j in range(ks[t]):
                amm[cl, col + i, col + j] = ztz[t][:, i, j]
            for c in range(p):
                abm[cl, qb + c, col + i] = ztq[t][:, i, c]
            abm[cl, qb + p, col + i] = ztr[t][:, i]
    for t in range(1, len(ms)):
        for u in range(t + 1, len(ms)):
            lt, lu, v = pair(t, u)
            for i in range(ks[t]):
                for j in range(ks[u]):
                    if t in mstart and u in mstart:
                        (cl, ct), (_, cu) = mcol(t, lt), mcol(u, lu)
                        amm[cl, ct + i, cu + j] = amm[cl, cu + j, ct + i] = v[:, i, j]
                    elif t in bstart and u in bstart:
                        rt, ru = bcol(t, lt) + i, bcol(u, lu) + j
                        abb[rt, ru] = abb[ru, rt] = v[:, i, j]
                    elif t in bstart:
                        cl, cu = mcol(u, lu)
                        abm[cl, bcol(t, lt) + i, cu + j] = v[:, i, j]
                    else:
                        cl, ct = mcol(t, lt)
                        abm[cl, bcol(u, lu) + j, ct + i] = v[:, i, j]
    if ent:
        ent_a, ent_pos, ent_v = _sorted_entries(ent, max(s.n_cl * S, 1))
        del ent
    else:
        ent_a = ent_pos = np.zeros(0, np.int64)
        ent_v = np.zeros((0, ks[0]))
    # The structure decides whether the coupling is kept dense, on the same level
    # pairs as in memory, so the blocks are laid out as crossprod.build's.
    if s.dense_coupling:
        pair_i = pair_j = np.zeros(0, np.int64)
    else:
        pair_i, pair_j = pairs(ent_a)
    rx = sums["rx"]
    A = Blocks(s, d0=ztz[0], b0=b0, ent_a=ent_a, ent_pos=ent_pos, ent_v=ent_v, pair_i=pair_i,
               pair_j=pair_j, amm=amm, abm=abm, abb=abb, n=np.float64(n), p=np.float64(p),
               ldw=np.float64(ldw),
               logdet_x=np.float64(2.0 * np.sum(np.log(np.diagonal(rx))) if p else 0.0),
               rx=rx, beta0=sums["beta0"])
    return A, pl


def _sorted_entries(ent: list, width: int):
    """(ent_a, ent_pos, ent_v) of the coupling entries, sorted by level and then
    column as :class:`~mixedjax.crossprod.Blocks` keeps them.  One later term in
    the middle (the usual large crossed design) delivers them in that order
    already: its level pairs come sorted and a cluster's slots follow the level
    order; then nothing is sorted or copied again (millions of entries)."""
    if len(ent) == 1:
        a, pos, v = ent[0]
        a, pos = a.astype(np.int64, copy=False), pos.astype(np.int64, copy=False)
        key = a * width + pos
        ordered = bool(np.all(key[1:] > key[:-1]))
        del key
        if ordered:
            return a, pos, np.ascontiguousarray(v)
    ent_a = np.concatenate([e[0] for e in ent]).astype(np.int64)
    ent_pos = np.concatenate([e[1] for e in ent]).astype(np.int64)
    order = np.argsort(ent_a * width + ent_pos, kind="stable")
    ent_a, ent_pos = ent_a[order], ent_pos[order]
    return ent_a, ent_pos, np.concatenate([e[2] for e in ent], axis=0)[order]


def moment_theta(sums: dict, ms: list, ks: list, n: int, p: int, mean_w: float,
                 floor: float = 0.05, cap: float = 100.0):
    """:func:`mixedjax.start.moment_theta` (the moment equations of Searle, Casella &
    McCulloch, "Variance Components", ch. 5) from the sums of [Z Q r]
    (:func:`orthonormal_sums`) instead of the rows: every quantity the equations
    read is one of these cross-products.  None when a term is not scalar.
    ``mean_w``: the mean prior weight (1 without)."""
    if any(k != 1 for k in ks):
        return None
    # The equations read rows reweighted to mean weight 1 (start.MomentSums): Z and r
    # scale by `size`, so cross-products of two of them by size^2.
    size = start.theta_scale([mean_w])
    sq = size ** 2
    pair = Pairs(sums["pairs"], ms)
    cross = {}
    for st in sums["pairs"]:
        a, b, v = pair(*st)
        cross[st] = (a, b, v[:, 0, 0] * sq)
    moments = start.MomentSums(n=n, p=p, rss=float(sums["rr"]) * sq,
                               counts=[z[:, 0, 0] * sq for z in sums["ztz"]],
                               zq=[zq[:, 0, :] * size for zq in sums["ztq"]],
                               zr=[zr[:, 0] * sq for zr in sums["ztr"]], cross=cross,
                               size=size)
    return start.moment_theta(moments, floor, cap)
