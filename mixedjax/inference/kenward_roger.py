"""Kenward-Roger adjusted covariance, F statistic and denominator df.

Kenward & Roger (1997), "Small sample inference for fixed effects from restricted
maximum likelihood", Biometrics 53, 983-997; as implemented in pbkrtest (Halekoh &
Hojsgaard 2014, JSS 59(9), section 3; ``vcovAdj``, ``KRmodcomp``, ``Lb_ddf``):

* variance parameters gamma in which Sigma = sum_r gamma_r G_r is linear: for each
  random-effects term the distinct entries of its covariance matrix
  sigma^2 Lambda Lambda' (G_r = Z_t (I ⊗ E_ij) Z_t'), then the residual
  variance (G = I);
* P_r = -X'Σ^-1 G_r Σ^-1 X,  Q_rs = X'Σ^-1 G_r Σ^-1 G_s Σ^-1 X,
  IE2_rs = tr(Σ^-1 G_r Σ^-1 G_s) - 2 tr(Φ Q_rs) + tr(Φ P_r Φ P_s)  (twice the
  expected REML information), W = 2 IE2^-1;
* Φ_A = Φ + 2 Φ U Φ,  U = sum_rs W_rs (Q_rs - P_r Φ P_s)  (pbkrtest sets R = 0);
* for L of rank q: Θ = L'(L Φ L')^-1 L, A1 = sum W_rs tr(ΘΦP_rΦ) tr(ΘΦP_sΦ),
  A2 = sum W_rs tr(ΘΦP_rΦ ΘΦP_sΦ), and the scaled F with its denominator df
  (Kenward & Roger 1997, section 4).

No n x n matrix is formed: with V = I + Z Ψ Z' (Σ = σ² V, Ψ = Λ Λ') the Woodbury
identity gives V^-1 = I - Z K Z', K = Λ (Λ'Z'ZΛ + I)^-1 Λ', so every quantity
above is a product of q x q and q x p matrices (Z'V^-1 Z = (I - SK) S with
S = Z'Z, Z'V^-1X = (I - SK) Z'X, ...).  Time O(n k^2 + q^3 + g q^2 p) and memory
O(q^2) for q random effects and g variance parameters.  With prior weights the
rows of Z and X are scaled by sqrt(w) and the residual covariance is σ² W^-1
(pbkrtest ignores weights).

KR is defined for REML fits only; an ML fit raises a ValueError, as lmerTest does
(pbkrtest silently refits by REML).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg as sla

from ..structure import Structure, lambdas

__all__ = ["KRPieces", "kr_pieces", "kr_test", "kr_contrast", "check_reml", "gls_at",
           "MAX_RANDOM_EFFECTS"]

# The q x q work arrays cost q^2 memory and q^3 time: refuse clearly beyond this many
# random effects (raise it, e.g. ``kenward_roger.MAX_RANDOM_EFFECTS = 20000``, on a
# machine with the memory) rather than exhaust memory.
MAX_RANDOM_EFFECTS = 6000


class KRPieces(NamedTuple):
    """Adjusted covariance and what the df formulas need.

    ``Phi`` unadjusted vcov of beta; ``PhiA`` the adjusted one; ``P`` (g, p, p);
    ``W`` (g, g) = 2 IE2^-1.
    """

    Phi: np.ndarray
    PhiA: np.ndarray
    P: np.ndarray
    W: np.ndarray


def check_reml(result) -> None:
    if not result.reml:
        raise ValueError("Kenward-Roger's method is only available for REML fits; refit "
                         "with reml=True (or use ddf='Satterthwaite')")


# ----------------------------------------------------------------------------------
# Cross-products and the Woodbury pieces
# ----------------------------------------------------------------------------------
class _Blocks(NamedTuple):
    idx: list          # per term: (m_t, k_t) indices into the q random effects
    S: np.ndarray      # Z'Z (q, q)
    ZX: np.ndarray     # Z'X (q, p)
    XX: np.ndarray     # X'X (p, p)
    lam: np.ndarray    # Lambda (q, q)
    n: int
    Zy: np.ndarray     # Z'y (q,)
    Xy: np.ndarray     # X'y (p,)
    yy: float


def _cross_products(design, theta) -> _Blocks:
    """Z'Z, Z'X, X'X (and the response's products) by segment sums, and Lambda.

    Rows are scaled by sqrt(prior weight) and the response has its offset removed,
    as in the weighted PLS problem the fit solves.
    """
    terms = design.terms
    X = design.X
    y = np.asarray(design.y, np.float64)
    off = getattr(design, "offset", None)
    if off is not None:
        y = y - off
    w = getattr(design, "weights", None)
    sw = None if w is None else np.sqrt(np.asarray(w, np.float64))
    if sw is not None:
        X = X * sw[:, None]
        y = y * sw
    q_total = sum(t.nlevels * t.k for t in terms)
    if q_total > MAX_RANDOM_EFFECTS:
        raise ValueError(f"Kenward-Roger needs dense {q_total} x {q_total} matrices for this "
                         f"model's {q_total} random effects (limit MAX_RANDOM_EFFECTS = "
                         f"{MAX_RANDOM_EFFECTS}); use ddf='Satterthwaite'")
    idx, zs, cols = [], [], []
    start = 0
    for t in terms:
        m, k = t.nlevels, t.k
        idx.append(start + np.arange(m * k).reshape(m, k))
        z = t.Z if sw is None else t.Z * sw[:, None]
        zs.append(z)
        cols.append(start + t.codes[:, None] * k + np.arange(k))
        start += m * k
    q = start
    cols = np.concatenate(cols, axis=1)                      # (n, sum k)
    zv = np.concatenate(zs, axis=1)
    key = (cols[:, :, None] * q + cols[:, None, :]).ravel()
    S = np.bincount(key, (zv[:, :, None] * zv[:, None, :]).ravel(), minlength=q * q)
    S = S.reshape(q, q)
    ZX = np.zeros((q, X.shape[1]))
    np.add.at(ZX, cols.ravel(), (zv[:, :, None] * X[:, None, :]).reshape(-1, X.shape[1]))
    lam = np.zeros((q, q))
    lams = lambdas(np.asarray(theta, np.float64), _structure(terms))
    for ix, lt in zip(idx, lams):
        lt = np.asarray(lt)
        rows = ix[:, :, None]
        cols_ = ix[:, None, :]
        lam[np.broadcast_to(rows, (ix.shape[0],) + lt.shape),
            np.broadcast_to(cols_, (ix.shape[0],) + lt.shape)] = lt
    Zy = np.bincount(cols.ravel(), (zv * y[:, None]).ravel(), minlength=q)
    return _Blocks(idx=idx, S=S, ZX=ZX, XX=X.T @ X, lam=lam, n=X.shape[0], Zy=Zy,
                   Xy=X.T @ y, yy=float(y @ y))


def _structure(terms):
    return Structure(k=tuple(t.k for t in terms), m=tuple(t.nlevels for t in terms), p=0)


def gls_at(design, theta, reml: bool = True):
    """beta-hat, sigma and vcov(beta) at ``theta`` by generalized least squares in the
    q-space (no JAX): beta = (X'V^-1X)^-1 X'V^-1 y, sigma^2 = r'V^-1 r / (n - p) (REML)
    or / n (ML), vcov = sigma^2 (X'V^-1X)^-1, with V^-1 = I - Z K Z'."""
    b = _cross_products(design, theta)
    q = b.S.shape[0]
    M = b.lam.T @ b.S @ b.lam + np.eye(q)
    K = b.lam @ sla.cho_solve(sla.cho_factor(M, lower=True), b.lam.T)
    XVX = b.XX - b.ZX.T @ K @ b.ZX
    XVy = b.Xy - b.ZX.T @ K @ b.Zy
    beta = np.linalg.solve(XVX, XVy)
    rvr = b.yy - b.Zy @ K @ b.Zy - beta @ XVy
    dof = b.n - len(beta) if reml else b.n
    sigma = float(np.sqrt(rvr / dof))
    V = sigma ** 2 * np.linalg.inv(XVX)
    return beta, sigma, 0.5 * (V + V.T)


class _Woodbury(NamedTuple):
    ZVX: np.ndarray    # Z'V^-1 X
    ZVZ: np.ndarray    # Z'V^-1 Z
    ZV2X: np.ndarray   # Z'V^-2 X
    RR: np.ndarray     # I - S K  (Z'V^-1 = RR Z')
    XVX: np.ndarray
    XV2X: np.ndarray
    XV3X: np.ndarray
    trV2: float


def _woodbury(b: _Blocks) -> _Woodbury:
    q = b.S.shape[0]
    M = b.lam.T @ b.S @ b.lam + np.eye(q)
    cf = sla.cho_factor(M, lower=True)
    K = b.lam @ sla.cho_solve(cf, b.lam.T)
    KS = K @ b.S
    RR = np.eye(q) - KS.T                                 # I - S K (S, K symmetric)
    ZVX = RR @ b.ZX
    ZVZ = RR @ b.S
    ZVZ = 0.5 * (ZVZ + ZVZ.T)
    ZV2X = RR @ ZVX
    KZX = K @ b.ZX
    XVX = b.XX - b.ZX.T @ KZX
    XV2X = XVX - ZVX.T @ KZX
    XV3X = XV2X - ZV2X.T @ KZX
    trV2 = b.n - 2.0 * np.trace(KS) + np.sum(KS * KS.T)
    return _Woodbury(ZVX=ZVX, ZVZ=ZVZ, ZV2X=ZV2X, RR=RR, XVX=XVX, XV2X=XV2X, XV3X=XV3X,
                     trV2=float(trV2))


# ----------------------------------------------------------------------------------
# The variance parameters gamma and the products with G_r
# ----------------------------------------------------------------------------------
def _gammas(terms):
    """(term index, i, j) for each covariance entry (i >= j, column-major as
    VarCorr's lower triangle), then None for the residual variance."""
    out = []
    for ti, t in enumerate(terms):
        for j in range(t.k):
            for i in range(j, t.k):
                out.append((ti, i, j))
    out.append(None)
    return out


def _pairs(i, j):
    """Index pairs of E_ij + E_ji (E_ii once)."""
    return [(i, j)] if i == j else [(i, j), (j, i)]


def _quad(Bl, Br, idx, i, j):
    """Bl' D Br with D = I_m ⊗ (E_ij + E_ji) on one term's rows."""
    out = 0.0
    for a, b in _pairs(i, j):
        out = out + Bl[idx[:, a]].T @ Br[idx[:, b]]
    return out


def _apply_d(B, idx, i, j, q):
    """D B for D = I_m ⊗ (E_ij + E_ji) on one term's rows (q x p result)."""
    out = np.zeros((q, B.shape[1]))
    for a, b in _pairs(i, j):
        out[idx[:, a]] += B[idx[:, b]]
    return out


def _ktrace_random(C, idx_t, idx_u, rt, ru):
    """tr(D_r C D_s C) for D_r on term t, D_s on term u (C symmetric)."""
    Ctu = C[idx_t[:, :, None, None], idx_u[None, None, :, :]]  # (m_t, k_t, m_u, k_u)
    total = 0.0
    for i, j in _pairs(*rt):
        for k, l in _pairs(*ru):
            # tr(E_ij C_tu E_kl C_ut) summed over level pairs = sum C[a j, b k] C[a i, b l]
            total += np.sum(Ctu[:, j, :, k] * Ctu[:, i, :, l])
    return total


def _diag_blocks(RR, ZVZ, idx):
    """Diagonal k x k blocks (per level) of Z'V^-2 Z = RR ZVZ for one term."""
    rows = RR[idx]                                           # (m, k, q)
    cols = ZVZ[:, idx]                                       # (q, m, k)
    return np.einsum("akc,caj->akj", rows, cols)


def _kr_matrices(b: _Blocks, wb: _Woodbury, sigma: float, terms):
    """P (g, p, p), Q (g, g, p, p) and Ktrace (g, g) on Sigma = sigma^2 V."""
    gam = _gammas(terms)
    g, p, q = len(gam), b.XX.shape[0], b.S.shape[0]
    s2 = sigma ** 2
    P = np.zeros((g, p, p))
    for r, gr in enumerate(gam):
        if gr is None:
            P[r] = -wb.XV2X / s2 ** 2
        else:
            P[r] = -_quad(wb.ZVX, wb.ZVX, b.idx[gr[0]], gr[1], gr[2]) / s2 ** 2
    # Y_s = Z'V^-1 G_s V^-1 X (random s) or Z'V^-2 X (residual), in q x p.
    Y = [wb.ZV2X if gs is None else wb.ZVZ @ _apply_d(wb.ZVX, b.idx[gs[0]], gs[1], gs[2], q)
         for gs in gam]
    Q = np.zeros((g, g, p, p))
    K = np.zeros((g, g))
    dblocks = [_diag_blocks(wb.RR, wb.ZVZ, ix) for ix in b.idx]
    for r, gr in enumerate(gam):
        for s, gs in enumerate(gam):
            if gr is None and gs is None:
                Q[r, s] = wb.XV3X
                K[r, s] = wb.trV2
            elif gr is None:
                Q[r, s] = (_quad(wb.ZVX, wb.ZV2X, b.idx[gs[0]], gs[1], gs[2])).T
                K[r, s] = sum(np.sum(dblocks[gs[0]][:, a, c]) for a, c in _pairs(gs[2], gs[1]))
            else:
                Q[r, s] = _quad(wb.ZVX, Y[s], b.idx[gr[0]], gr[1], gr[2])
                if gs is None:
                    K[r, s] = sum(np.sum(dblocks[gr[0]][:, a, c])
                                  for a, c in _pairs(gr[2], gr[1]))
                else:
                    K[r, s] = _ktrace_random(wb.ZVZ, b.idx[gr[0]], b.idx[gs[0]],
                                             gr[1:], gs[1:])
    return P, Q / s2 ** 3, K / s2 ** 2


def kr_pieces(result, theta=None, sigma=None) -> KRPieces:
    """pbkrtest's ``vcovAdj``: the Kenward-Roger adjusted covariance of beta-hat.

    ``theta`` and ``sigma`` default to the fit's estimates (pass others to evaluate
    the adjustment elsewhere, e.g. at another program's estimates).
    """
    check_reml(result)
    result.model.require_rows("the Kenward-Roger adjustment")
    d = result.model.design
    theta = result.theta if theta is None else np.asarray(theta, np.float64)
    sigma = result.sigma if sigma is None else float(sigma)
    b = _cross_products(d, theta)
    wb = _woodbury(b)
    P, Q, Kt = _kr_matrices(b, wb, sigma, d.terms)
    Phi = np.linalg.inv(wb.XVX) * sigma ** 2
    Phi = 0.5 * (Phi + Phi.T)
    PhiP = np.einsum("ij,rjk->rik", Phi, P)                  # Phi P_r
    IE2 = (Kt - 2.0 * np.einsum("ij,rsji->rs", Phi, Q)
           + np.einsum("rij,sji->rs", PhiP, PhiP))
    IE2 = 0.5 * (IE2 + IE2.T)
    condi = np.min(np.abs(np.linalg.eigvalsh(IE2)))
    W = 2.0 * (np.linalg.inv(IE2) if condi > 1e-10 else np.linalg.pinv(IE2))
    W = 0.5 * (W + W.T)
    PPhiP = np.einsum("rij,sjk->rsik", P, PhiP)              # P_r Phi P_s
    U = np.einsum("rs,rsij->ij", W, Q - PPhiP)
    U = 0.5 * (U + U.T)
    PhiA = Phi + 2.0 * Phi @ U @ Phi
    return KRPieces(Phi=Phi, PhiA=0.5 * (PhiA + PhiA.T), P=P, W=W)


def _full_row_rank(L: np.ndarray) -> np.ndarray:
    """An orthonormal basis of L's row space when L is row-rank deficient
    (pbkrtest's ``force_full_rank``; the F test depends only on the row space)."""
    rank = np.linalg.matrix_rank(L)
    if rank == L.shape[0]:
        return L
    _, _, vt = np.linalg.svd(L, full_matrices=False)
    return vt[:rank]


def _a_terms(kp: KRPieces, L: np.ndarray, Phi: np.ndarray):
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    TP = Theta @ Phi
    u = np.einsum("ij,rjk,kl->ril", TP, kp.P, Phi)           # Theta Phi P_r Phi
    tr = np.einsum("rii->r", u)
    A1 = float(tr @ kp.W @ tr)
    A2 = float(np.einsum("rs,rij,sji->", kp.W, u, u))
    return A1, A2


def _ddf(A1, A2, q):
    """Kenward & Roger's denominator df and F scaling (pbkrtest's ``.KR_adjust``)."""
    B = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
    V0 = 1.0 + c1 * B
    V1 = 1.0 - c2 * B
    V2 = 1.0 - c3 * B
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    num = 1.0 - A2 / q
    ratio = 1.0 if (abs(num) < 1e-14 and abs(V1) < 1e-14) else num / V1
    rho = ratio ** 2 * V0 / V2 / q
    df2 = 4.0 + (q + 2) / (q * rho - 1.0)
    scale = 1.0 if abs(df2 - 2.0) < 1e-2 else df2 * (1.0 - A2 / q) / (df2 - 2.0)
    return df2, scale


def kr_test(kp: KRPieces, beta: np.ndarray, L, rhs=None) -> dict:
    """Kenward-Roger F test of L beta = rhs (pbkrtest's ``KRmodcomp`` with a
    restriction matrix, as lmerTest's ``contestMD`` calls it).

    Returns ``F`` (scaled), ``F_unscaled`` (Wald / q with Φ_A), ``numdf``, ``dendf``,
    ``scaling``.
    """
    L = np.atleast_2d(np.asarray(L, np.float64))
    if rhs is not None:
        # pbkrtest tests L (beta - betaH) with betaH = ginv(L) rhs.
        beta = beta - np.linalg.pinv(L) @ np.broadcast_to(np.asarray(rhs, np.float64),
                                                          (L.shape[0],))
    L = _full_row_rank(L)
    q = L.shape[0]
    if q == 0:
        return dict(F=np.nan, F_unscaled=np.nan, numdf=0, dendf=np.nan, scaling=np.nan)
    diff = L @ beta
    A1, A2 = _a_terms(kp, L, kp.Phi)
    df2, scale = _ddf(A1, A2, q)
    wald = float(diff @ np.linalg.solve(L @ kp.PhiA @ L.T, diff))
    return dict(F=scale * wald / q, F_unscaled=wald / q, numdf=q, dendf=df2, scaling=scale)


def kr_contrast(kp: KRPieces, l) -> tuple[float, float]:
    """Adjusted variance l'Φ_A l and df of one linear function (pbkrtest's
    ``Lb_ddf``, lmerTest's Kenward-Roger t test)."""
    l = np.atleast_2d(np.asarray(l, np.float64))
    A1, A2 = _a_terms(kp, l, kp.Phi)
    df2, _ = _ddf(A1, A2, 1)
    return float(l[0] @ kp.PhiA @ l[0]), df2
