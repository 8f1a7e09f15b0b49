"""Starting values for theta.

lme4 starts every fit at theta = 1 (identity relative covariance factors).  For
models whose terms are all scalar a moment estimate costs a few small products of
the precomputed blocks and usually lands near the optimum: an InstEval-shaped fit
then takes 5 evaluations instead of 10, and a balanced design (Dyestuff,
Penicillin, Pastes) starts at the REML estimate itself, which equals the ANOVA
estimate there when positive.
"""

from __future__ import annotations

import numpy as np

from .layout import PLSArrays

__all__ = ["moment_start"]


def moment_start(A: PLSArrays, floor: float = 0.05, cap: float = 100.0) -> np.ndarray | None:
    """A starting theta from moment estimates when every term is scalar, else None.

    An analysis-of-variance estimate: sums of squares of the residuals equated to
    their expectations (Searle, Casella & McCulloch, "Variance Components", ch. 5,
    here with the fixed effects' share made exact; SAS PROC MIXED starts from the
    related MIVQUE0 estimates).  With M = I - X (X'X)^- X', r = M y, and for term t with
    D_t = diag(Z_t'Z_t) (entries n_a), the between sum of squares
    SSB_t = r'Z_t D_t^-1 Z_t'r and RSS = r'r have expectations

        E SSB_t = sigma^2 tr(D_t^-1 Z_t'M Z_t) + sum_o sigma_o^2 ||D_t^-1/2 Z_t'M Z_o||_F^2
        E RSS   = sigma^2 (n - p)              + sum_o sigma_o^2 tr(Z_o'M Z_o)

    Equating them to their values gives T + 1 linear equations in sigma^2 and the
    sigma_t^2.  Z_t'M Z_o = Z_t'Z_o - Z_t'X (X'X)^- X'Z_o is sparse less low rank,
    so every norm and trace comes from the precomputed cross-products in
    O(entries x p), with no pass over the n rows.  (The X part matters: in a
    balanced crossed design the intercept absorbs the other factor's share of
    each level's sum.)  Estimates at or below zero start at ``floor``.  A start
    near the optimum saves most of the search from theta = 1 (lme4's start).
    """
    s = A.structure
    if any(k != 1 for k in s.k):
        return None
    T = len(s.k)
    xtx, xty, yty = np.asarray(A.xtx), np.asarray(A.xty), float(A.yty)
    try:
        Xi = np.linalg.inv(xtx) if xtx.size else np.zeros((0, 0))
    except np.linalg.LinAlgError:
        return None
    beta = Xi @ xty
    n, p_real = float(A.n), float(A.p)
    rss = yty - float(xty @ beta)
    if not (np.isfinite(rss) and rss > 0 and n > p_real + 1):
        return None
    bounds = np.cumsum([0] + list(s.m[1:]))
    spans = list(zip(bounds[:-1], bounds[1:]))
    rzz, rzx, rzy = np.asarray(A.rzz), np.asarray(A.rzx), np.asarray(A.rzy)
    diag_rest = np.diagonal(rzz)
    counts = [np.asarray(A.d1)[:, 0, 0]] + [diag_rest[a:b] for a, b in spans]
    B = [np.asarray(A.b1x)[:, 0, :]] + [rzx[a:b] for a, b in spans]       # Z_t'X
    zy = [np.asarray(A.b1y)[:, 0]] + [rzy[a:b] for a, b in spans]
    inv = [np.divide(1.0, c, out=np.zeros_like(c), where=c > 0) for c in counts]
    U = [b @ Xi for b in B]                                              # Z_t'X (X'X)^-
    BtB = [b.T @ b for b in B]
    UDU = [u.T @ (u * iv[:, None]) for u, iv in zip(U, inv)]
    ssb = np.array([float(np.sum((z - b @ beta) ** 2 * iv)) for z, b, iv in zip(zy, B, inv)])

    C = np.zeros((T, T))
    for t in range(T):
        # ||D^-1/2 (D - B Xi B')||^2 for the term with itself (Z_t'Z_t = D_t).
        C[t, t] = (float(np.sum(counts[t])) - 2.0 * float(np.sum(U[t] * B[t]))
                   + float(np.sum(UDU[t] * BtB[t])))
    ent_a, ent_c = np.asarray(A.ent_a, np.int64), np.asarray(A.ent_c, np.int64)
    rest_term = np.searchsorted(bounds, ent_c, side="right")        # 1-based term index
    v = np.asarray(A.ent_v)[:, 0]
    for o in range(1, T):
        sel = rest_term == o
        a, c, vo = ent_a[sel], ent_c[sel] - bounds[o - 1], v[sel]
        low = float(np.sum(UDU[0] * BtB[o]))
        cross = float(np.sum(vo * np.einsum("ej,ej->e", U[0][a], B[o][c]) * inv[0][a]))
        C[0, o] = float(np.sum(vo ** 2 * inv[0][a])) - 2.0 * cross + low
        low = float(np.sum(UDU[o] * BtB[0]))
        cross = float(np.sum(vo * np.einsum("ej,ej->e", U[o][c], B[0][a]) * inv[o][c]))
        C[o, 0] = float(np.sum(vo ** 2 * inv[o][c])) - 2.0 * cross + low
        for t in range(1, T):
            if t != o:
                blk = rzz[bounds[t - 1]:bounds[t], bounds[o - 1]:bounds[o]]
                C[t, o] = (float(np.sum(blk ** 2 * inv[t][:, None]))
                           - 2.0 * float(np.sum(blk * (U[t] @ B[o].T) * inv[t][:, None]))
                           + float(np.sum(UDU[t] * BtB[o])))
    E = np.zeros((T + 1, T + 1))
    E[0, 0] = n - p_real
    E[0, 1:] = [float(np.sum(c)) - float(np.sum(Xi * bb)) for c, bb in zip(counts, BtB)]
    E[1:, 0] = [float(np.sum(c > 0)) - float(np.sum(u * b * iv[:, None]))
                for c, u, b, iv in zip(counts, U, B, inv)]
    E[1:, 1:] = C
    try:
        est = np.linalg.solve(E, np.r_[rss, ssb])
    except np.linalg.LinAlgError:
        return None
    total = rss / (n - p_real)
    sigma2 = est[0] if np.isfinite(est[0]) and est[0] > 0.05 * total else 0.05 * total
    var = np.where(np.isfinite(est[1:]), np.maximum(est[1:], 0.0), 0.0)
    return np.clip(np.sqrt(var / sigma2), floor, cap)
