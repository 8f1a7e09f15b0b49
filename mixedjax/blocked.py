"""The profiled criterion and its exact gradient in NumPy, for any design.

:mod:`mixedjax.analytic` covers designs whose rest block S (later terms, X, y) is
small enough for closed-form Hessians.  Large crossed designs (InstEval: 2,972
students crossed with 1,128 lecturers) have a dense S of a thousand columns or
more; there one Newton Hessian costs several dense inverses per parameter pair,
and tracing and compiling the autodiff graph of the compiled path takes seconds.
This module evaluates the criterion and its gradient eagerly, with one Cholesky
factor of S and one inverse per evaluation, the first term's coupling kept as the
sparse entry and pair lists of :class:`~mixedjax.pls.PLSArrays`, so the fit
starts at once and BFGS (:func:`mixedjax.optimize.bfgs_minimize_eager`) needs
about one evaluation per iteration.

Formulas (notation of Bates et al. 2015, JSS 67(1), section 3, and of
:mod:`mixedjax.analytic`).  Per level a of the first term, with Lambda0 its
relative covariance factor and D_a = Z_a'Z_a:

    M_a = Lambda0' D_a Lambda0 + I,   K_a = Lambda0 M_a^-1 Lambda0'.

With B_a = Z_a'[Z_rest X y] (sparse in the Z_rest columns, dense in X and y) and
R0 = [Z_rest X y]'[Z_rest X y], the Schur complement of the first block is

    T = R0 - sum_a B_a' K_a B_a,      S = Lambda_e' T Lambda_e + blockdiag(I, 0),

Lambda_e = blockdiag(Lambda_rest, I_{p+1}), and the criterion (JSS eqs. 35, 42) is

    f = sum_a log|M_a| + sum_s c_s log|S[:s, :s]| + const.

Gradient.  d log|B| = tr(B^-1 dB), and with L = chol(S), L^-1 lower triangular,
S[:s, :s]^-1 padded with zeros equals sum_{i < s} L^-1[i, :]' L^-1[i, :], so

    sum_s c_s S[:s, :s]^-1 = G = sum_i w_i L^-1[i, :]' L^-1[i, :],  w_i = sum_{s > i} c_s,

which is the inverse of one leading block plus a rank-one term (the y row).  For a
later term's theta_t (unit matrix E_t in Lambda_e): d_t f = 2 tr(E_t G Lambda_e' T),
needed only on the diagonal blocks of its levels (O(N^2 k) work).  For the first
term's theta_t, with E = dLambda0/dtheta_t, P = M^-1 and Q_a = B_a G~ B_a',
G~ = Lambda_e G Lambda_e' (the pair lists give the Z_rest part):

    d_t f = sum_a 2 [P Lambda0' D - P Lambda0' Q + P Lambda0' Q Lambda0 P Lambda0' D]_{(c, r)}

where (r, c) is theta_t's position in Lambda0.  The tests check value and gradient
against automatic differentiation of :func:`mixedjax.pls.objective`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg

from . import layout
from .analytic import lambdas_np

__all__ = ["Prepared", "prepare", "value_grad", "value", "solve_np", "curvature_guess"]


class Prepared(NamedTuple):
    """Structure-dependent arrays of one design for :func:`value_grad` (NumPy).

    ``pa`` (P,) first-term level of each unordered pair of entries (i <= j) and
    ``key`` (P,) its flat position (row-major, N = q_rest + p + 1 columns) in the
    lower triangle of the Z_rest block;
    ``pstart``/``plevel`` the start and level of each level's run of pairs (pairs
    come sorted by level); ``po`` (P, k0, k0) the symmetrized outer product
    (v_i v_j' + v_j v_i') / 2 of the two entries' values, so that
    v_i' K v_j = <K, po>.  For a scalar first term the pairs are summed into
    ``Mk``, a sparse (positions x m0) matrix with U's lower-triangle values
    ``Mk @ K`` at the distinct flat positions ``ukeys`` (InstEval: 2.6e6 pairs on
    4e5 positions), so an evaluation is two sparse products with a short vector.
    ``csort`` (order, starts, columns) sums entry rows into Z_rest columns; for a
    scalar first term ``Vsp`` is the coupling as a sparse (m0, q_rest) matrix.  Without
    pair lists (``dense``) the coupling is kept as ``Vd`` (m0, q_rest), dense, for a
    scalar first term, else as ``Vs``, a sparse (m0 k0, q_rest) matrix.
    """

    structure: layout.Structure
    d1: np.ndarray
    bxy: np.ndarray
    ent_a: np.ndarray
    ent_c: np.ndarray
    ent_v: np.ndarray
    R0: np.ndarray
    pa: np.ndarray | None
    pstart: np.ndarray | None
    plevel: np.ndarray | None
    key: np.ndarray | None
    po: np.ndarray | None
    Mk: object | None
    ukeys: np.ndarray | None
    csort: tuple | None
    Vsp: object | None
    dense: bool
    Vs: object | None
    Vd: np.ndarray | None
    n: float
    p: float
    ldw: float


def prepare(A: layout.PLSArrays) -> Prepared:
    """The arrays :func:`value_grad` needs, from a design's (NumPy) ``PLSArrays``."""
    A = A if isinstance(A.d1, np.ndarray) else _to_numpy(A)
    s = A.structure
    qr, k0, m0 = s.q_rest, s.k[0], s.m[0]
    bxy = np.concatenate([A.b1x, A.b1y[..., None]], axis=-1)
    xy = np.block([[A.xtx, A.xty[:, None]], [A.xty[None, :], np.reshape(A.yty, (1, 1))]])
    ent_a = A.ent_a.astype(np.int64)
    ent_c = A.ent_c.astype(np.int64)
    ent_v = A.ent_v
    pa = pstart = plevel = key = po = csort = Vs = Vd = Mk = ukeys = Vsp = None
    if qr:
        R0 = np.block([[A.rzz, A.rzx, A.rzy[:, None]],
                       [np.concatenate([A.rzx.T, A.rzy[None, :]]), xy]])
        if k0 == 1:
            import scipy.sparse
            Vsp = scipy.sparse.csr_matrix((ent_v[:, 0], (ent_a, ent_c)), shape=(m0, qr))
        else:
            order = np.argsort(ent_c, kind="stable")
            starts = np.flatnonzero(np.r_[True, ent_c[order][1:] != ent_c[order][:-1]])
            csort = (order, starts, ent_c[order][starts])
        if s.dense_w and k0 == 1:
            Vd = np.zeros((m0, qr))
            np.add.at(Vd, (ent_a, ent_c), ent_v[:, 0])        # padding: zeros at (0, 0)
        elif s.dense_w:
            import scipy.sparse
            rows = ent_a[:, None] * k0 + np.arange(k0)
            Vs = scipy.sparse.csr_matrix(
                (ent_v.reshape(-1), (rows.reshape(-1), np.repeat(ent_c, k0))),
                shape=(m0 * k0, qr))
        else:
            pi, pj = A.pair_i.astype(np.int64), A.pair_j.astype(np.int64)
            pa = ent_a[pi]
            # Pairs come grouped by level: sums over a level are segment sums.
            pstart = np.flatnonzero(np.r_[True, pa[1:] != pa[:-1]]) if len(pa) else pa
            plevel = pa[pstart]
            # Entries are sorted by (level, column), so c_i <= c_j: (c_j, c_i) is in
            # the lower triangle.
            key = ent_c[pj] * (qr + s.p + 1) + ent_c[pi]
            vi, vj = ent_v[pi], ent_v[pj]
            if k0 == 1:
                Mk, ukeys = _pair_matrix(key, pa, vi[:, 0] * vj[:, 0], m0, qr * (qr + s.p + 1))
                pa = pstart = plevel = key = None
            else:
                po = 0.5 * (vi[:, :, None] * vj[:, None, :] + vj[:, :, None] * vi[:, None, :])
    else:
        R0 = xy
    return Prepared(structure=s, d1=A.d1, bxy=bxy, ent_a=ent_a, ent_c=ent_c, ent_v=ent_v,
                    R0=R0, pa=pa, pstart=pstart, plevel=plevel, key=key, po=po, Mk=Mk, ukeys=ukeys,
                    csort=csort, Vsp=Vsp, dense=bool(s.dense_w), Vs=Vs, Vd=Vd, n=float(A.n),
                    p=float(A.p), ldw=float(A.ldw))


def _pair_matrix(key, level, value, m0: int, size: int):
    """(Mk, ukeys): pairs summed by position; ``level`` must be nondecreasing except
    for padding pairs at the end (level 0, value 0), which are dropped."""
    import scipy.sparse
    drop = np.flatnonzero(np.diff(level) < 0)
    if len(drop):
        end = drop[0] + 1
        key, level, value = key[:end], level[:end], value[:end]
    mark = np.zeros(size, bool)
    mark[key] = True
    ukeys = np.flatnonzero(mark)
    rank = np.zeros(size, np.int32)
    rank[ukeys] = np.arange(len(ukeys), dtype=np.int32)
    indptr = np.searchsorted(level, np.arange(m0 + 1))
    Mk = scipy.sparse.csc_matrix((value, rank[key], indptr), shape=(len(ukeys), m0))
    return Mk, ukeys


def _to_numpy(A: layout.PLSArrays) -> layout.PLSArrays:
    import jax
    return jax.tree_util.tree_map(np.asarray, A)


def _scale(M, lams, s: layout.Structure, side: str):
    """M Lambda_e (side 'right') or Lambda_e' M ('left'), blockwise by term (the
    first ``M.shape`` columns, or rows, of Lambda_e)."""
    if side == "left":
        return _scale(M.T, lams, s, "right").T
    if all(k == 1 for k in s.k[1:]):
        return M * _scalar_scales(lams, s)[:M.shape[1]]
    out = M.copy()
    start = 0
    for lam, k, m in zip(lams[1:], s.k[1:], s.m[1:]):
        blk = M[:, start:start + k * m].reshape(M.shape[0], m, k)
        out[:, start:start + k * m] = (blk @ lam).reshape(M.shape[0], m * k)
        start += k * m
    return out


def _scalar_scales(lams, s: layout.Structure):
    """The diagonal of Lambda_e when every later term is scalar."""
    parts = [np.full(m, lam[0, 0]) for lam, m in zip(lams[1:], s.m[1:])]
    return np.concatenate(parts + [np.ones(s.p + 1)])


def _first_term(lam0, d1):
    """Per level: P = M^-1 (m0, k0, k0) and log|M| summed."""
    k0 = lam0.shape[0]
    M = lam0.T @ d1 @ lam0 + np.eye(k0)
    if k0 == 1:
        return 1.0 / M, float(np.sum(np.log(M)))
    L = np.linalg.cholesky(M)
    logdet = 2.0 * float(np.sum(np.log(np.diagonal(L, 0, -2, -1))))
    return np.linalg.inv(M), logdet


def _schur(lams, P, X: Prepared):
    """T = R0 - sum_a B_a' K_a B_a (N x N), K_a = Lambda0 P_a Lambda0'.  When every
    later term is scalar only the lower triangle of its Z_rest block is valid (all
    that LAPACK's Cholesky reads)."""
    s = X.structure
    qr, lam0 = s.q_rest, lams[0]
    K = lam0 @ P @ lam0.T                                              # (m0, k0, k0)
    Kb = K @ X.bxy                                                     # (m0, k0, p+1)
    T = X.R0.copy()
    # einsum, not matmul: NumPy's and SciPy's OpenBLAS keep separate thread pools,
    # and waking NumPy's between LAPACK calls halves LAPACK's speed on 2 cores.
    T[qr:, qr:] -= np.einsum("akp,akq->pq", X.bxy, Kb)
    if not qr:
        return T
    # Z_rest x (X, y): entry e adds v_e' K_a b_a to row c_e.
    if X.Vsp is not None:
        zx = X.Vsp.T @ Kb[:, 0, :]
    else:
        order, starts, cols = X.csort
        zx = np.zeros((qr, X.bxy.shape[-1]))
        zx[cols] = np.add.reduceat(np.einsum("ek,ekq->eq", X.ent_v, Kb[X.ent_a])[order], starts)
    T[:qr, qr:] -= zx
    T[qr:, :qr] -= zx.T
    if X.dense:
        W = _dense_w(lam0, P, X)
        T[:qr, :qr] -= scipy.linalg.blas.dsyrk(1.0, W, trans=1, lower=1)
    elif X.Mk is not None:
        T[:qr].reshape(-1)[X.ukeys] -= X.Mk @ K[:, 0, 0]
    else:
        vals = np.einsum("pkl,pkl->p", X.po, K[X.pa])
        T[:qr].reshape(-1)[:] -= np.bincount(X.key, vals, minlength=qr * T.shape[0])
    if any(k > 1 for k in s.k[1:]):
        # Lambda_e mixes columns within a level's block, which reads both triangles.
        T[:qr, :qr] = np.tril(T[:qr, :qr]) + np.tril(T[:qr, :qr], -1).T
    return T


def _dense_w(lam0, P, X: Prepared):
    """W (m0 k0, q_rest) dense with W'W = sum_a V_a' K_a V_a: W_a = C_a' Lambda0' V_a,
    C_a C_a' = P_a."""
    if X.structure.k[0] == 1:
        return X.Vd * (np.sqrt(P[:, 0, 0]) * lam0[0, 0])[:, None]
    C = np.linalg.cholesky(P)
    F = np.swapaxes(C, -1, -2) @ lam0.T                                # (m0, k0, k0)
    import scipy.sparse
    blocks = scipy.sparse.block_diag(list(F), format="csr")
    return np.asarray((blocks @ X.Vs).todense())


def _coefficients(X: Prepared, reml: bool):
    """(dof, s1): the criterion weights G = inv(S[:s1, :s1]) + dof l l'."""
    qr, N = X.structure.q_rest, X.R0.shape[0]
    dof = X.n - X.p if reml else X.n
    return dof, (N - 1 if reml else qr)


def _rest_block(theta, X: Prepared):
    """(lams, P, log|M| summed, T, S): the first term's blocks and the Schur
    complement S = Lambda_e' T Lambda_e + blockdiag(I, 0) of the rest (module
    docstring); S's Z_rest block is valid in its lower triangle."""
    s = X.structure
    lams = lambdas_np(theta, s)
    P, logdet1 = _first_term(lams[0], X.d1)
    T = _schur(lams, P, X)
    if all(k == 1 for k in s.k[1:]):
        lv = _scalar_scales(lams, s)
        S = T * np.outer(lv, lv)
    else:
        S = _scale(_scale(T, lams, s, "right"), lams, s, "left")
    qr = s.q_rest
    S[np.arange(qr), np.arange(qr)] += 1.0
    return lams, P, logdet1, T, S


def _criterion(L, logdet1: float, X: Prepared, reml: bool):
    """(criterion, log|L_Z|^2, log|R_X|^2, pwrss) from L = chol(S) (JSS eqs. 35, 42)."""
    qr, N = X.structure.q_rest, L.shape[0]
    ld = 2.0 * np.log(np.diagonal(L))
    dof = X.n - X.p if reml else X.n
    logdet_z = logdet1 + float(np.sum(ld[:qr]))
    logdet_x = float(np.sum(ld[qr:N - 1]))
    pwrss = L[N - 1, N - 1] ** 2
    f = logdet_z + dof * (1.0 + math.log(2.0 * math.pi * pwrss / dof)) - X.ldw
    return (f + logdet_x if reml else f), logdet_z, logdet_x, pwrss


def value_grad(theta, X: Prepared, reml: bool = True, grad: bool = True):
    """Profiled REML criterion (or deviance) at ``theta`` and its gradient.

    Returns (value, gradient) as (float, ndarray); value is +inf where S is not
    positive definite (the gradient is then NaN).
    """
    s = X.structure
    theta = np.asarray(theta, np.float64)
    qr, N = s.q_rest, X.R0.shape[0]
    lams, P, logdet1, T, S = _rest_block(theta, X)
    lam0 = lams[0]
    scalar = all(k == 1 for k in s.k[1:])
    L, info = scipy.linalg.lapack.dpotrf(S, lower=1, clean=1, overwrite_a=1)
    if info != 0:
        return np.inf, np.full(theta.shape, np.nan)
    f, _, _, _ = _criterion(L, logdet1, X, reml)
    dof, s1 = _coefficients(X, reml)
    if not grad:
        return f, None
    G = _weights_matrix(L, s1, dof)                                   # lower triangle
    g = np.zeros_like(theta)
    slices = s.theta_slices
    lams_t = [l.T for l in lams]
    full = {}

    def sym(name, M):
        if name not in full:
            full[name] = np.tril(M) + np.tril(M, -1).T
        return full[name]

    # Later terms: d_t f = 2 tr(E_t G Lambda_e' T) over each level's diagonal block.
    # For a scalar term (Lambda_e = lambda_c on its columns) Lambda_e' T Lambda_e =
    # S - J and (G S)[c, c] = 1 for c < q_rest reduce this to
    # (2 / theta_t) sum_c (1 - G[c, c]), which needs no product with T; near
    # theta_t = 0 the general form avoids the division.
    start = 0
    diagG = np.diagonal(G)
    for t, (k, m) in enumerate(zip(s.k[1:], s.m[1:]), start=1):
        cols = slice(start, start + k * m)
        if k == 1 and abs(lams[t][0, 0]) > 1e-3:
            g[slices[t]] = 2.0 / lams[t][0, 0] * np.sum(1.0 - diagG[cols])
        else:
            Y = _scale(sym("G", G)[cols], lams_t, s, "right")           # (G Lambda_e')[cols]
            Tf = sym("T", T)
            Z = np.einsum("bkn,nbl->bkl", Y.reshape(m, k, N), Tf[:, cols].reshape(N, m, k))
            Zs = Z.sum(axis=0)                                        # (k, k): [c, r] entries
            r, c = layout._tril_indices(k)
            g[slices[t]] = 2.0 * Zs[c, r]
        start += k * m
    # First term: Q_a = B_a G~ B_a', G~ = Lambda_e G Lambda_e'.
    if scalar:
        lv = _scalar_scales(lams, s)
        Gt = G                                                        # scaled in place
        Gt *= lv[:, None]
        Gt *= lv[None, :]
    else:
        Gt = _scale(_scale(sym("G", G), lams_t, s, "right"), lams_t, s, "left")
    dense1 = X.dense and s.k[0] == 1
    Q = _q_blocks(Gt, X, zz=not dense1)
    if dense1:
        # The Z_rest part of sum_a -2 theta P_a^2 Q_a is <G~_zz, V' diag(2 theta P^2) V>:
        # one symmetric rank-k product on the dense coupling instead of V G~ per level.
        th0 = lam0[0, 0]
        C = scipy.linalg.blas.dsyrk(1.0, X.Vd * (np.sqrt(2.0 * abs(th0)) * P[:, 0, 0])[:, None],
                                    trans=1, lower=1)
        Gzz = Gt[:qr, :qr]
        inner = 2.0 * np.einsum("ij,ij->", Gzz, C) - np.dot(np.diagonal(Gzz), np.diagonal(C))
        g[slices[0]] -= np.sign(th0) * inner
    D = X.d1
    PLd = P @ lam0.T @ D                                               # P Lambda0' D
    PLQ = P @ lam0.T @ Q
    term = PLd - PLQ + PLQ @ lam0 @ PLd
    tot = term.sum(axis=0)
    r, c = layout._tril_indices(s.k[0])
    g[slices[0]] += 2.0 * tot[c, r]
    return f, g


def value(theta, X: Prepared, reml: bool = True) -> float:
    """The criterion alone (:func:`value_grad` without the gradient)."""
    return value_grad(theta, X, reml, grad=False)[0]


def _weights_matrix(L, s1: int, dof: float):
    """G = sum_s c_s S[:s, :s]^-1 (zero padded) = inv(S[:s1, :s1]) + dof l l',
    l the last row of L^-1 (module docstring); only its lower triangle is valid.

    REML (s1 = N - 1) overwrites ``L``: with S^-1 from L in place and c its last
    row, inv(S[:N-1, :N-1]) padded is S^-1 - c c' / c_N and l = L_NN c, so
    G = S^-1 + (dof - 1) L_NN^2 c c', one rank-one update and no N x N temporaries.
    """
    N = L.shape[0]
    if s1 == N - 1:
        lnn2 = L[N - 1, N - 1] ** 2
        Sinv, _ = scipy.linalg.lapack.dpotri(L, lower=1, overwrite_c=1)
        c = Sinv[N - 1, :].copy()
        return scipy.linalg.blas.dsyr((dof - 1.0) * lnn2, c, lower=1, a=Sinv, overwrite_a=1)
    G = np.zeros((N, N))
    if s1:
        inv, _ = scipy.linalg.lapack.dpotri(L[:s1, :s1], lower=1)
        G[:s1, :s1] = inv
    e = np.zeros(N)
    e[-1] = 1.0
    l = scipy.linalg.solve_triangular(L, e, lower=True, trans="T", check_finite=False)
    G += dof * np.outer(l, l)
    return G


def _q_blocks(Gt, X: Prepared, zz: bool = True):
    """Q_a = B_a G~ B_a' (m0, k0, k0) for the first term's levels, reading only the
    lower triangle of G~ (without the Z_rest x Z_rest part unless ``zz``)."""
    s = X.structure
    qr, k0, m0 = s.q_rest, s.k[0], s.m[0]
    bxy = X.bxy
    Gxy = np.tril(Gt[qr:, qr:]) + np.tril(Gt[qr:, qr:], -1).T
    Q = np.einsum("akp,pq,alq->akl", bxy, Gxy, bxy)
    if not qr:
        return Q
    # Cross terms: entry e adds v_e s_e' + s_e v_e', s_e = b_a G~[c_e, xy].
    if X.Vsp is not None:
        Q[:, 0, 0] += 2.0 * np.sum((X.Vsp @ Gt[qr:, :qr].T) * bxy[:, 0, :], axis=1)
    else:
        se = np.einsum("ekq,qe->ek", bxy[X.ent_a], Gt[qr:, X.ent_c])
        cross = X.ent_v[:, :, None] * se[:, None, :]
        Q += _level_sum(X.ent_a, cross + np.swapaxes(cross, 1, 2), m0)
    if not zz:
        return Q
    if X.dense:
        # Z_rest part v_e' (V_a G~)[:, c_e] per entry, with V G~ from the sparse V.
        Gzz = np.tril(Gt[:qr, :qr]) + np.tril(Gt[:qr, :qr], -1).T
        VG = np.asarray(X.Vs @ Gzz).reshape(m0, k0, qr)
        vg = VG[X.ent_a, :, X.ent_c]                                   # (E, k0)
        Q += _level_sum(X.ent_a, X.ent_v[:, :, None] * vg[:, None, :], m0)
        return Q
    # Ordered pairs: i < j counts twice, i = j (the entries themselves) once.
    if X.Mk is not None:
        Q[:, 0, 0] += 2.0 * (X.Mk.T @ Gt.reshape(-1)[X.ukeys])
    elif len(X.key):
        g = Gt.reshape(-1)[X.key]
        # add.at: padded pairs form a second run of level 0.
        np.add.at(Q, X.plevel, 2.0 * np.add.reduceat(X.po * g[:, None, None], X.pstart, axis=0))
    gd = Gt[X.ent_c, X.ent_c]
    Q -= _level_sum(X.ent_a, X.ent_v[:, :, None] * X.ent_v[:, None, :] * gd[:, None, None], m0)
    return Q


def _level_sum(levels, vals, m0):
    out = np.zeros((m0,) + vals.shape[1:])
    flat = vals.reshape(len(levels), -1)
    for j in range(flat.shape[1]):
        out.reshape(m0, -1)[:, j] = np.bincount(levels, flat[:, j], minlength=m0)
    return out


def solve_np(theta, X: Prepared, reml: bool = True) -> layout.Solution:
    """:func:`mixedjax.pls.solve` in NumPy over the same layout (padded or not), so a
    result built from it behaves as one from the compiled path."""
    s = X.structure
    theta = np.asarray(theta, np.float64)
    qr, N, k0 = s.q_rest, X.R0.shape[0], s.k[0]
    p = N - 1 - qr
    lams, _, logdet1, _, S = _rest_block(theta, X)
    lam0 = lams[0]
    # Full symmetric S for the stored factor (the evaluation keeps one triangle).
    S = np.tril(S) + np.tril(S, -1).T
    # SciPy's LAPACK, not np.linalg: see _schur on the two OpenBLAS thread pools.
    Lr, info = scipy.linalg.lapack.dpotrf(S, lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError("the rest block is not positive definite at theta")
    obj, logdet_z, logdet_x, pwrss = _criterion(Lr, logdet1, X, reml)
    x = scipy.linalg.solve_triangular(Lr[:-1, :-1], Lr[-1, :-1], lower=True, trans="T")
    u_rest, beta = x[:qr], x[qr:]
    M11 = lam0.T @ X.d1 @ lam0 + np.eye(k0)
    L11 = np.sqrt(M11) if k0 == 1 else np.linalg.cholesky(M11)
    w_xy = np.linalg.solve(L11, lam0.T @ X.bxy)                       # (m0, k0, p + 1)
    w_ent = np.linalg.solve(L11[X.ent_a], (X.ent_v @ lam0)[:, :, None])[..., 0]
    wx = w_xy[..., :p] @ beta
    if qr:
        b_rest = _scale(u_rest[None, :], [l.T for l in lams], s, "right")[0][:qr]
        wx = wx + _level_sum(X.ent_a, w_ent * b_rest[X.ent_c][:, None], s.m[0])
    u0 = np.linalg.solve(np.swapaxes(L11, -1, -2), (w_xy[..., p] - wx)[..., None])[..., 0]
    dof = X.n - X.p if reml else X.n
    F = layout.Factor(L11=L11, w_ent=w_ent, w_xy=w_xy, S=S)
    return layout.Solution(beta=beta, u0=u0, u_rest=u_rest, sigma=np.sqrt(pwrss / dof),
                        pwrss=pwrss, logdet_z=logdet_z, logdet_x=logdet_x, objective=obj,
                        factor=F, Lr=Lr)


def curvature_guess(theta, X: Prepared) -> np.ndarray:
    """A cheap diagonal approximation of the criterion's Hessian, on the log scale
    for the diagonal entries of each Lambda, for preconditioning the search.

    For a balanced one-way layout the Fisher information of log sigma_b^2 is
    (1/2) sum_a rho_a^2 with rho_a = n_a sigma_b^2 / (sigma^2 + n_a sigma_b^2), the
    shrinkage factor of level a (Searle, Casella & McCulloch, "Variance
    Components", ch. 3, the 1-way classification); in the deviance's units (x 2) and for
    z = log theta = (log sigma_b^2 - log sigma^2) / 2 (x 4) this is
    4 sum_a rho_a^2, with n_a theta^2 in place of n_a sigma_b^2 / sigma^2.  Each
    term is treated as if alone, with n_a the level's diagonal of Z'Z; an
    off-diagonal entry (r, c) takes 4 sum_a rho_ar rho_ac.
    """
    s = X.structure
    lams = lambdas_np(np.asarray(theta, np.float64), s)
    counts = [np.diagonal(X.d1, 0, -2, -1)]
    diag_rest = np.diagonal(X.R0)[:s.q_rest]
    start = 0
    for k, m in zip(s.k[1:], s.m[1:]):
        counts.append(diag_rest[start:start + k * m].reshape(m, k))
        start += k * m
    out = []
    for lam, n, k in zip(lams, counts, s.k):
        u = n * np.diagonal(lam) ** 2
        rho = u / (1.0 + u)
        r, c = layout._tril_indices(k)
        out.append(4.0 * np.sum(rho[:, r] * rho[:, c], axis=0))
    h = np.concatenate(out)
    return np.maximum(h, 1e-8 * max(float(np.max(h)), 1.0))

