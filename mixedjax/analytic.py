"""Closed-form value, gradient and Hessian of the profiled criterion (small designs).

Automatic differentiation of :func:`mixedjax.pls.objective` is exact, but a Newton
Hessian by forward-over-forward mode repeats the whole factorization for every pair
of directions, and the traced graph takes seconds to compile.  For the designs that
dominate simulation studies and small fits (one grouping factor, or a first term
whose coupling to the later terms is small enough to keep dense), the criterion
and its first two derivatives have short closed forms built from k x k matrices per
level of the first term and one small dense matrix S.  This module evaluates them
with plain array operations, so the same code runs

* in NumPy, eagerly (no compilation: a small model is fitted in milliseconds from
  a cold start), and
* in ``jax.numpy`` under ``vmap`` without any LAPACK call (batched LAPACK can hang
  jaxlib 0.10 on CPU; see :mod:`mixedjax.batchfit`).

The formulas (notation of Bates et al. 2015, JSS 67(1), section 3; the profiled
criterion is their eqs. 35 and 42).  Write the first term's relative covariance
factor Lambda0 = sum_j theta_j E_j (E_j the unit matrix at theta_j's position) and,
per level a of that term, D_a = Z_a'Z_a, M_a = Lambda0' D_a Lambda0 + I,
P_a = M_a^-1.  Eliminating the first term from the penalized system leaves

    H = R0 - sum_a C_a' T_a C_a,      T_a = Lambda0 P_a Lambda0',

with R0 = [Z_rest X y]'[Z_rest X y] and C_a = Z_a'[Z_rest X y]; scaling by
Lambda_e = blockdiag(Lambda_rest, I) gives the Schur complement
S = Lambda_e' H Lambda_e + blockdiag(I, 0).  Because a Cholesky factor's leading
block factors the leading block, the criterion is a sum of log-determinants

    f = sum_a log|M_a| + sum_s c_s log|S[:s, :s]| + const,
    s in (q_rest, q_rest + p, q_rest + p + 1),

with (c_s) = (0, 1 - nu, nu) for REML and (1, -nu, nu) for ML (nu the residual
degrees of freedom).  Then, with dM_i = E_i' D Lambda0 + Lambda0' D E_i,
U = Lambda0 P and N = I - T D,

    d_i log|M| = 2 tr(P Lambda0' D E_i)
    d_ij log|M| = 2 tr(P E_i' D E_j) - 2 tr(P dM_i P Lambda0' D E_j)
    d_i T = N E_i U' + (.)'
    d_ij T = X_ij + X_ij',  X_ij = -(d_i T) D E_j U' + N E_j (P E_i' - P dM_i U')
    d log|B| = tr(B^-1 dB),  d2 log|B| = tr(B^-1 d2B) - tr(B^-1 dB_i B^-1 dB_j),

and S is bilinear in Lambda_rest, whose entries are linear in theta.  The tests
check every piece against automatic differentiation of ``pls.objective``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from . import layout

__all__ = ["applicable", "Constants", "constants", "value_grad_hess", "value"]

# Largest rest block (q_rest + p + 1) the closed forms are used for: every theta
# direction carries an S-sized matrix, and every pair of directions one more.
MAX_REST = 48


class Constants(NamedTuple):
    """Structure-only arrays: E0 (n0, k0, k0) unit matrices of the first term's
    theta, at rows ri and columns ci; F (nr, Ns, Ns) derivatives of Lambda_e for the
    later terms' theta; J (Ns, Ns) Lambda_e at theta_rest = 0; D0 (Ns,) the
    identity added to S; I, Jj (n0, n0) the index grids of pairs of directions."""

    E0: np.ndarray
    F: np.ndarray
    J: np.ndarray
    D0: np.ndarray
    ri: np.ndarray
    ci: np.ndarray
    I: np.ndarray
    Jj: np.ndarray


def applicable(structure: layout.Structure, dense_coupling: bool) -> bool:
    """Whether the closed forms apply: no later terms, or a dense coupling of the
    first term to them (see :class:`mixedjax.batchfit.Coupling`) and a small rest."""
    if structure.q_rest == 0:
        return structure.p + 1 <= MAX_REST
    return dense_coupling and structure.q_rest + structure.p + 1 <= MAX_REST


@functools.lru_cache(maxsize=64)
def constants(structure: layout.Structure) -> Constants:
    k0 = structure.k[0]
    qr, p = structure.q_rest, structure.p
    ns = qr + p + 1
    r, c = layout._tril_indices(k0)
    E0 = np.zeros((len(r), k0, k0))
    E0[np.arange(len(r)), r, c] = 1.0
    F = []
    start = 0
    for k, m in zip(structure.k[1:], structure.m[1:]):
        rr, cc = layout._tril_indices(k)
        for ri, ci in zip(rr, cc):
            Fr = np.zeros((ns, ns))
            lv = start + np.arange(m) * k
            Fr[lv + ri, lv + ci] = 1.0
            F.append(Fr)
        start += k * m
    F = np.stack(F) if F else np.zeros((0, ns, ns))
    J = np.diag(np.concatenate([np.zeros(qr), np.ones(p + 1)]))
    D0 = np.concatenate([np.ones(qr), np.zeros(p + 1)])
    I, Jj = np.meshgrid(np.arange(len(r)), np.arange(len(r)), indexing="ij")
    return Constants(E0, F, J, D0, r, c, I, Jj)


# ----------------------------------------------------------------------------------
# Array back ends: NumPy (eager, LAPACK) and jax.numpy (traced, LAPACK-free)
# ----------------------------------------------------------------------------------
class _Ops(NamedTuple):
    xp: object
    mm: object          # batched matrix product
    spd_small: object   # (..., k, k) SPD -> (inverse, log-determinant)
    chol_inv: object    # (n, n) SPD -> (inverse of its Cholesky factor, log|diag|)


def _np_spd_small(M):
    k = M.shape[-1]
    # Closed forms for the common 1 x 1 and 2 x 2 blocks (LAPACK's call overhead
    # dominates at this size).  M = Lambda' D Lambda + I is SPD with eigenvalues >= 1.
    if k == 1:
        return 1.0 / M, np.log(M[..., 0, 0])
    if k == 2:
        a, b, d = M[..., 0, 0], M[..., 1, 0], M[..., 1, 1]
        det = a * d - b * b
        P = np.empty_like(M)
        P[..., 0, 0] = d / det
        P[..., 1, 1] = a / det
        P[..., 0, 1] = P[..., 1, 0] = -b / det
        return P, np.log(det)
    L = np.linalg.cholesky(M)
    Linv = np.linalg.inv(L)
    return np.swapaxes(Linv, -1, -2) @ Linv, 2.0 * np.sum(np.log(np.diagonal(L, 0, -2, -1)), -1)


def _np_chol_inv(S):
    L = np.linalg.cholesky(S)
    return np.linalg.inv(L), np.log(np.diagonal(L))


def _jnp_ops():
    import jax.numpy as jnp

    from . import batchfit, pls

    def mm(a, b):
        # Tiny inner dimensions: broadcast-multiply-sum fuses into elementwise loops
        # under vmap, where batched tiny dot products are slow on CPU (see pls._mm_small).
        if a.shape[-1] <= 16:
            return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)
        return a @ b

    def spd_small(M):
        k = M.shape[-1]
        L = pls._chol_small(M)
        eye = jnp.broadcast_to(jnp.eye(k, dtype=M.dtype), M.shape)
        Linv = pls._forward_small(L, eye)
        return (mm(jnp.swapaxes(Linv, -1, -2), Linv),
                2.0 * jnp.sum(jnp.log(jnp.diagonal(L, 0, -2, -1)), -1))

    def chol_inv(S):
        L = batchfit.chol(S)
        return batchfit.tri_inv(L), jnp.log(jnp.diagonal(L))

    return _Ops(jnp, mm, spd_small, chol_inv)


_NP_OPS = _Ops(np, np.matmul, _np_spd_small, _np_chol_inv)


def _ops(xp) -> _Ops:
    return _NP_OPS if xp is np else _jnp_ops()


def _t(x, xp):
    return xp.swapaxes(x, -1, -2)


# ----------------------------------------------------------------------------------
# The criterion and its derivatives
# ----------------------------------------------------------------------------------
def _coefficients(A, reml, xp):
    """(nu, c_qr, c_qrp, c_all) of the log-determinant form (module docstring)."""
    if xp is np and isinstance(reml, (bool, np.bool_)):
        nu = float(A.n - A.p) if reml else float(A.n)
        return nu, 0.0 if reml else 1.0, 1.0 - nu if reml else -nu, nu
    nu = xp.where(reml, A.n - A.p, A.n)
    c_qr = xp.where(reml, 0.0, 1.0)
    c_qrp = xp.where(reml, 1.0 - nu, -nu)
    return nu, c_qr, c_qrp, nu


def rest_blocks(A, V, xp=np):
    """C (m0, k0, Ns) = Z0_a'[Z_rest X y] and R0 (Ns, Ns) = [Z_rest X y]'[Z_rest X y]."""
    s = A.structure
    qr = s.q_rest
    parts = ([V] if qr else []) + [A.b1x, A.b1y[..., None]]
    C = xp.concatenate(parts, axis=-1)
    xy = xp.concatenate([xp.concatenate([A.xtx, A.xty[:, None]], axis=1),
                         xp.concatenate([A.xty[None, :], xp.reshape(A.yty, (1, 1))], axis=1)])
    if not qr:
        return C, xy
    zr = xp.concatenate([A.rzx, A.rzy[:, None]], axis=1)
    R0 = xp.concatenate([xp.concatenate([A.rzz, zr], axis=1),
                         xp.concatenate([zr.T, xy], axis=1)])
    return C, R0


def value_grad_hess(theta, A: layout.PLSArrays, reml, V=None, order: int = 2, blocks=None):
    """The profiled criterion at ``theta`` and, up to ``order`` (0, 1 or 2), its
    gradient and Hessian (None where not asked for).

    ``A``: the model's arrays (NumPy arrays for eager use, jax arrays inside a
    trace); ``V``: the dense first-term coupling (m0, k0, q_rest), required when the
    design has later terms; ``reml``: a boolean (may be traced); ``blocks``:
    :func:`rest_blocks` of ``A`` and ``V`` when already computed.  Equals
    ``pls.objective`` and its derivatives (module docstring gives the formulas).
    """
    xp = np if isinstance(theta, np.ndarray) else _jnp_module()
    ops = _ops(xp)
    mm = ops.mm
    s = A.structure
    k0, qr, p = s.k[0], s.q_rest, s.p
    ns = qr + p + 1
    K = constants(s)
    n0 = K.E0.shape[0]
    E0, F, J = K.E0, K.F, K.J
    nt = theta.shape[0]
    nr = nt - n0
    eye0 = np.eye(k0)

    if xp is np:
        lam0 = np.zeros((k0, k0))
        lam0[K.ri, K.ci] = theta[:n0]
    else:
        lam0 = xp.einsum("i,ikl->kl", theta[:n0], E0)
    d1 = A.d1
    Q = mm(d1, lam0)                                     # D Lambda0
    M = mm(lam0.T, Q) + eye0
    P, logdet_m = ops.spd_small(M)
    Qt = _t(Q, xp)                                       # Lambda0' D
    U = mm(lam0, P)
    T = mm(U, lam0.T)

    C, R0 = rest_blocks(A, V, xp) if blocks is None else blocks

    def contract(X):
        """sum_a C_a' X_a C_a for X (..., m0, k0, k0) -> (..., Ns, Ns)."""
        return xp.einsum("akr,...aks->...rs", C, mm(X, C))

    Hm = R0 - contract(T)
    lam_e = J + xp.einsum("r,rij->ij", theta[n0:], F) if nr else xp.asarray(J)
    lam_et = lam_e.T
    S = mm(mm(lam_et, Hm), lam_e) + np.diag(K.D0)
    nu, c_qr, c_qrp, c_all = _coefficients(A, reml, xp)
    Linv, logdiag = ops.chol_inv(S)
    cum = xp.cumsum(2.0 * logdiag)
    value = xp.sum(logdet_m) + nu * (1.0 + xp.log(2.0 * math.pi / nu)) - A.ldw
    sizes = [(size, c) for size, c in ((qr, c_qr), (qr + p, c_qrp), (ns, c_all)) if size]
    for size, c in sizes:
        value = value + c * cum[size - 1]
    if order == 0:
        return value, None, None
    N = eye0 - mm(T, d1)

    # Derivatives.  E_i is a unit matrix (1 at (r_i, c_i)), so every product with
    # it picks a row or column: d_i T = n_i u_i' + u_i n_i' with n_i = N[:, r_i],
    # u_i = U[:, c_i], and the second-order terms reduce to outer products of such
    # columns with per-level scalar weights.
    ri, ci = K.ri, K.ci
    KP = mm(P, Qt)                                       # P Lambda0' D
    g_m = 2.0 * xp.sum(KP[:, ci, ri], axis=0)
    CN = mm(_t(C, xp), N)                                # C_a' N  (m0, Ns, k0)
    CU = mm(_t(C, xp), U)
    cn, cu = CN[:, :, ri], CU[:, :, ci]                  # (m0, Ns, n0)
    if xp is np:        # as matrix products: NumPy's einsum does not use BLAS here
        half = cn.transpose(2, 1, 0) @ cu.transpose(2, 0, 1)               # (n0, Ns, Ns)
        dH0 = -(half + _t(half, xp))
    else:
        dH0 = -(xp.einsum("ari,asi->irs", cn, cu) + xp.einsum("ari,asi->irs", cu, cn))
    dS0 = mm(mm(lam_et[None], dH0), lam_e[None])
    if nr:
        W = mm(mm(lam_et, Hm)[None], F)                  # Lambda_e' H F_r
        dS = xp.concatenate([dS0, W + _t(W, xp)])
    else:
        dS = dS0

    grad = xp.concatenate([g_m, xp.zeros(nr)]) if nr else g_m
    blocks = []
    for size, c in sizes:
        Li = Linv[:size, :size]
        Binv = mm(Li.T, Li)
        Z = mm(Binv[None], dS[:, :size, :size])
        grad = grad + c * xp.einsum("rii->r", Z)
        blocks.append((size, c, Binv, Z))
    if order == 1:
        return value, grad, None

    # Second order, first term (i, j index theta0; all arrays (m0, n0, n0) or with Ns):
    #   d_ij log|M| = 2 [P[c_j, c_i] (D N)[r_i, r_j] - KP[c_j, r_i] KP[c_i, r_j]]
    #   C' X_ij C = -DU[r_j, c_i] cn_i cu_j' - DN[r_j, r_i] cu_i cu_j'
    #               + P[c_j, c_i] cn_j cn_i' - KP[c_j, r_i] cn_j cu_i'
    DN = mm(d1, N)
    DU = mm(d1, U)
    I, Jj = K.I, K.Jj
    p_ji = P[:, ci[Jj], ci[I]]
    kp_ji = KP[:, ci[Jj], ri[I]]
    H_m = 2.0 * xp.sum(p_ji * DN[:, ri[I], ri[Jj]] - kp_ji * KP[:, ci[I], ri[Jj]], axis=0)
    cn_i, cn_j = cn[:, :, I], cn[:, :, Jj]               # (m0, Ns, n0, n0)
    cu_i, cu_j = cu[:, :, I], cu[:, :, Jj]

    w = xp.stack([-DU[:, ri[Jj], ci[I]], -DN[:, ri[Jj], ri[I]], p_ji, -kp_ji])
    x = xp.stack([cn_i, cu_i, cn_j, cn_j])
    y = xp.stack([cu_j, cu_j, cn_i, cu_i])
    if xp is np:
        n0_ = w.shape[-1]
        wx = (w[:, :, None] * x).transpose(3, 4, 2, 0, 1).reshape(n0_, n0_, ns, -1)
        X = wx @ y.transpose(3, 4, 0, 1, 2).reshape(n0_, n0_, -1, ns)
    else:
        X = xp.einsum("taij,tarij,tasij->ijrs", w, x, y)
    d2H00 = -(X + _t(X, xp))
    d2S00 = mm(mm(lam_et, d2H00), lam_e)
    if nr:
        Y = mm(mm(lam_et[None, None], dH0[:, None]), F[None])       # (n0, nr, Ns, Ns)
        d2S0r = Y + _t(Y, xp)
        Z2 = mm(mm(_t(F, xp)[:, None], Hm[None, None]), F[None])    # (nr, nr, Ns, Ns)
        d2Srr = Z2 + _t(Z2, xp)
        top = xp.concatenate([d2S00, d2S0r], axis=1)
        bottom = xp.concatenate([xp.swapaxes(d2S0r, 0, 1), d2Srr], axis=1)
        d2S = xp.concatenate([top, bottom], axis=0)
        hess = _add_block(xp.zeros((nt, nt)), H_m, n0, xp)
    else:
        d2S = d2S00
        hess = H_m
    for size, c, Binv, Z in blocks:
        if xp is np:
            Zf = Z.reshape(nt, -1)
            hess = hess + c * (np.tensordot(d2S[:, :, :size, :size], Binv.T, axes=([2, 3], [0, 1]))
                               - Zf @ _t(Z, xp).reshape(nt, -1).T)
        else:
            hess = hess + c * (xp.einsum("ij,rsji->rs", Binv, d2S[:, :, :size, :size])
                               - xp.einsum("rij,tji->rt", Z, Z))
    return value, grad, 0.5 * (hess + hess.T)


def _add_block(hess, block, n0, xp):
    nt = hess.shape[0]
    pad = xp.concatenate([xp.concatenate([block, xp.zeros((n0, nt - n0))], axis=1),
                          xp.zeros((nt - n0, nt))])
    return hess + pad


def value(theta, A: layout.PLSArrays, reml, V=None, blocks=None):
    """The criterion alone (as ``pls.objective``), from the same formulas."""
    return value_grad_hess(theta, A, reml, V, order=0, blocks=blocks)[0]


def _jnp_module():
    import jax.numpy as jnp
    return jnp


# ----------------------------------------------------------------------------------
# Eager (NumPy) fit: no compilation
# ----------------------------------------------------------------------------------
def lambdas_np(theta, structure: layout.Structure) -> list[np.ndarray]:
    """:func:`pls.theta_to_lambdas` in NumPy."""
    out = []
    for k, sl in zip(structure.k, structure.theta_slices):
        r, c = layout._tril_indices(k)
        lam = np.zeros((k, k))
        lam[r, c] = theta[sl]
        out.append(lam)
    return out


def solve_np(theta, A: layout.PLSArrays, reml: bool, V=None) -> layout.Solution:
    """:func:`pls.solve` in NumPy for the designs of :func:`applicable` (the same
    factor layout, so a result built from it behaves as one from the compiled path).

    ``A`` holds NumPy arrays; ``V`` is the dense first-term coupling when there are
    later terms.
    """
    s = A.structure
    k0, qr, p = s.k[0], s.q_rest, s.p
    lams = lambdas_np(theta, s)
    lam0 = lams[0]
    L11 = np.linalg.cholesky(lam0.T @ A.d1 @ lam0 + np.eye(k0))
    bxy = np.concatenate([A.b1x, A.b1y[..., None]], axis=-1)
    w_xy = np.linalg.solve(L11, lam0.T @ bxy)
    xy = np.block([[A.xtx, A.xty[:, None]], [A.xty[None, :], np.reshape(A.yty, (1, 1))]])
    if qr:
        W = np.linalg.solve(L11, lam0.T @ V)                           # (m0, k0, qr)
        ent_a, ent_c = np.asarray(A.ent_a), np.asarray(A.ent_c)
        w_ent = W[ent_a, :, ent_c] * (np.abs(A.ent_v).sum(-1) > 0)[:, None]
        R0 = np.block([[A.rzz, A.rzx, A.rzy[:, None]], [np.concatenate(
            [A.rzx.T, A.rzy[None, :]]), xy]])
        Wall = np.concatenate([W, w_xy], axis=-1)
        lam_e = _lambda_e(lams, s)
        S = lam_e.T @ (R0 - np.einsum("akr,aks->rs", Wall, Wall)) @ lam_e
        S = S + np.diag(constants(s).D0)
    else:
        w_ent = np.zeros((0, k0))
        S = xy - np.einsum("akr,aks->rs", w_xy, w_xy)
    Lr = np.linalg.cholesky(S)
    d = np.log(np.diagonal(Lr))
    logdet_z = 2.0 * np.sum(np.log(np.diagonal(L11, 0, -2, -1))) + 2.0 * np.sum(d[:qr])
    logdet_x = 2.0 * np.sum(d[qr:qr + p])
    pwrss = Lr[-1, -1] ** 2
    x = np.linalg.solve(Lr[:-1, :-1].T, Lr[-1, :-1])
    u_rest, beta = x[:qr], x[qr:]
    wx = w_xy[..., :p] @ beta
    if qr:
        b_rest = _lambda_e(lams, s)[:qr, :qr] @ u_rest
        wx = wx + W @ b_rest
    u0 = np.linalg.solve(np.swapaxes(L11, -1, -2), (w_xy[..., p] - wx)[..., None])[..., 0]
    nu = A.n - A.p if reml else A.n
    obj = (logdet_z + nu * (1.0 + np.log(2.0 * math.pi * pwrss / nu)) - A.ldw
           + (logdet_x if reml else 0.0))
    F = layout.Factor(L11=L11, w_ent=w_ent, w_xy=w_xy, S=S)
    return layout.Solution(beta=beta, u0=u0, u_rest=u_rest, sigma=np.sqrt(pwrss / nu),
                        pwrss=pwrss, logdet_z=logdet_z, logdet_x=logdet_x, objective=obj,
                        factor=F, Lr=Lr)


def _lambda_e(lams, structure: layout.Structure) -> np.ndarray:
    """Lambda_e = blockdiag(Lambda_rest, I_{p+1}) as a dense matrix."""
    blocks = [np.kron(np.eye(m), lam) for lam, m in zip(lams[1:], structure.m[1:])]
    blocks.append(np.eye(structure.p + 1))
    n = sum(b.shape[0] for b in blocks)
    out = np.zeros((n, n))
    i = 0
    for b in blocks:
        out[i:i + b.shape[0], i:i + b.shape[0]] = b
        i += b.shape[0]
    return out
