"""Starting values for theta.

lme4 starts every fit at theta = 1 (identity relative covariance factors).  For
models whose terms are all scalar a moment estimate costs a few sparse products
and usually lands near the optimum: an InstEval-shaped fit then takes about half
the evaluations, and a balanced design (Dyestuff, Penicillin, Pastes) starts at
the REML estimate itself, which equals the ANOVA estimate there when positive.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import routing
from .levels import unique_ints

__all__ = ["MomentSums", "moment_sums", "moment_theta", "moment_start", "theta_scale"]


def theta_scale(weights) -> float:
    """The size of theta that the scale of the prior weights implies, (mean w)^-1/2.

    Weights c w give the same fit as w with sigma^2 multiplied by c and the relative
    covariance factors by c^-1/2 (residual variance sigma^2 / w_i; lme4's theta is
    relative to sigma), so starts and the optimizer's coordinates are taken
    relative to this size.  1 without weights.
    """
    if weights is None:
        return 1.0
    m = float(np.mean(np.asarray(weights, np.float64)))
    return 1.0 / math.sqrt(m) if np.isfinite(m) and m > 0 else 1.0


def _level_sums(codes, z, m, x) -> np.ndarray:
    """Z'x for a scalar term's Z (value ``z`` of row i in column ``codes[i]``):
    per-level sums, (m,) for a vector ``x`` and (m, c) for a matrix."""
    if x.ndim == 1:
        return np.bincount(codes, weights=z * x, minlength=m)
    return np.stack([np.bincount(codes, weights=z * x[:, j], minlength=m)
                     for j in range(x.shape[1])], axis=1).reshape(m, x.shape[1])


def _cross_levels(ct, zt, co, zo, m_o):
    """The non-zero entries (row, col, value) of Z_t'Z_o for two scalar terms."""
    key, inverse = unique_ints(ct * m_o + co, return_inverse=True)
    return key // m_o, key % m_o, np.bincount(inverse.reshape(-1), weights=zt * zo)


class MomentSums(NamedTuple):
    """The sums of the moment equations (:func:`moment_theta`) for scalar terms, of
    rows reweighted to mean prior weight 1 (w / mean w: the same estimate, theta /
    ``size``; :func:`theta_scale`), so that they stay far from overflow and
    underflow.

    ``n`` rows and ``p`` fixed effects; ``rss`` = r'r; per term t in lme4's order
    ``counts[t]`` = diag(Z_t'Z_t) (m_t,), ``zq[t]`` = B_t = Z_t'Q (m_t, p) and
    ``zr[t]`` = Z_t'r (m_t,); ``cross[(t, o)]`` for t < o the non-zero entries of
    Z_t'Z_o as (levels of t, levels of o, values); ``size`` the theta scale of the
    original weights, by which the estimate is multiplied back.
    """

    n: int
    p: int
    rss: float
    counts: list
    zq: list
    zr: list
    cross: dict
    size: float = 1.0


def moment_sums(terms, q: np.ndarray, r: np.ndarray, sw: np.ndarray) -> MomentSums | None:
    """The :class:`MomentSums` of a design's rows, or None when a term is not scalar.

    ``terms``: codes, Z, nlevels in lme4's order; ``q``, ``r``: the weighted stable
    basis and residual (:mod:`mixedjax.crossprod`); ``sw``: sqrt(prior weights).
    """
    if any(t.Z.shape[1] != 1 for t in terms):
        return None
    size = theta_scale(sw * sw)
    sw, r = sw * size, r * size
    codes = [np.asarray(t.codes, np.int64) for t in terms]
    zs = [t.Z[:, 0] * sw for t in terms]
    ms = [int(t.nlevels) for t in terms]
    cross = {(t, o): _cross_levels(codes[t], zs[t], codes[o], zs[o], ms[o])
             for t in range(len(terms)) for o in range(t + 1, len(terms))}
    return MomentSums(
        n=q.shape[0], p=q.shape[1], rss=float(r @ r),
        counts=[np.bincount(c, weights=z * z, minlength=m) for c, z, m in zip(codes, zs, ms)],
        zq=[_level_sums(c, z, m, q) for c, z, m in zip(codes, zs, ms)],
        zr=[_level_sums(c, z, m, r) for c, z, m in zip(codes, zs, ms)],
        cross=cross, size=size)


def moment_theta(sums: MomentSums, floor: float = 0.05, cap: float = 100.0) -> np.ndarray | None:
    """A starting theta from the moment equations of scalar terms, or None when they
    are singular or the residual sum of squares is not positive.

    An analysis-of-variance estimate: sums of squares of the residuals equated to
    their expectations (Searle, Casella & McCulloch, "Variance Components", ch. 5,
    with the fixed effects' share made exact; SAS PROC MIXED starts from the related
    MIVQUE0 estimates).  With the weighted X = Q R, M = I - Q Q', r = M y, and for
    term t with D_t = diag(Z_t'Z_t), the between sum of squares
    SSB_t = r'Z_t D_t^-1 Z_t'r and RSS = r'r have expectations

        E SSB_t = sigma^2 tr(D_t^-1 Z_t'M Z_t) + sum_o sigma_o^2 ||D_t^-1/2 Z_t'M Z_o||_F^2
        E RSS   = sigma^2 (n - p)              + sum_o sigma_o^2 tr(Z_o'M Z_o)

    Equating them to their values gives T + 1 linear equations in sigma^2 and the
    sigma_t^2; Z_t'M Z_o = Z_t'Z_o - B_t B_o' (B_t = Z_t'Q) is sparse less low
    rank, so every quantity is one of the cross-products in ``sums``
    (:class:`MomentSums`).  Estimates at or below zero start at ``floor``; ``floor``
    and ``cap`` are relative to ``sums.size``.
    """
    n, p, rss = sums.n, sums.p, float(sums.rss)
    if not (np.isfinite(rss) and rss > 0 and n > p + 1):
        return None
    counts, B, zy = sums.counts, sums.zq, sums.zr
    T = len(counts)
    inv = [np.divide(1.0, c, out=np.zeros_like(c), where=c > 0) for c in counts]
    BtB = [b.T @ b for b in B]
    BDB = [b.T @ (b * iv[:, None]) for b, iv in zip(B, inv)]
    ssb = np.array([float(np.sum(z ** 2 * iv)) for z, iv in zip(zy, inv)])
    C = np.zeros((T, T))
    for t in range(T):
        for o in range(T):
            if t == o:
                C[t, t] = (float(np.sum(counts[t])) - 2.0 * float(np.sum(B[t] * B[t]))
                           + float(np.sum(BDB[t] * BtB[t])))
                continue
            row, col, val = sums.cross[(t, o)] if t < o else _swap(sums.cross[(o, t)])
            C[t, o] = float(np.sum(BDB[t] * BtB[o]))
            # In chunks of entries: a crossed design can have millions of them.
            chunk = routing.ENTRY_CHUNK
            for lo in range(0, len(val), chunk):
                r, c, v = row[lo:lo + chunk], col[lo:lo + chunk], val[lo:lo + chunk]
                vi = v * inv[t][r]
                C[t, o] += float(vi @ v) - 2.0 * float(
                    vi @ np.einsum("ej,ej->e", B[t][r], B[o][c]))
    E = np.zeros((T + 1, T + 1))
    E[0, 0] = n - p
    E[0, 1:] = [float(np.sum(c)) - float(np.trace(bb)) for c, bb in zip(counts, BtB)]
    E[1:, 0] = [float(np.sum(c > 0)) - float(np.sum(b * b * iv[:, None]))
                for c, b, iv in zip(counts, B, inv)]
    E[1:, 1:] = C
    try:
        est = np.linalg.solve(E, np.r_[rss, ssb])
    except np.linalg.LinAlgError:
        return None
    total = rss / (n - p)
    sigma2 = est[0] if np.isfinite(est[0]) and est[0] > 0.05 * total else 0.05 * total
    var = np.where(np.isfinite(est[1:]), np.maximum(est[1:], 0.0), 0.0)
    return np.clip(np.sqrt(var / sigma2), floor, cap) * sums.size


def _swap(entries):
    """Entries (row, col, value) of a matrix as those of its transpose."""
    row, col, val = entries
    return col, row, val


def moment_start(terms, q: np.ndarray, r: np.ndarray, sw: np.ndarray, floor: float = 0.05,
                 cap: float = 100.0) -> np.ndarray | None:
    """A starting theta from moment estimates when every term is scalar, else None:
    :func:`moment_theta` of the rows' :func:`moment_sums` (Searle, Casella &
    McCulloch, "Variance Components", ch. 5).

    ``terms``: codes, Z, nlevels in lme4's order; ``q``, ``r``: the weighted stable
    basis and residual (:mod:`mixedjax.crossprod`); ``sw``: sqrt(prior weights).
    Estimates at or below zero start at ``floor``; ``floor`` and ``cap`` are
    relative to :func:`theta_scale` of the weights.
    """
    sums = moment_sums(terms, q, r, sw)
    return None if sums is None else moment_theta(sums, floor, cap)
