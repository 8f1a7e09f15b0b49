"""The one blocked Cholesky factorization of M(theta), its selected inverse, and the solve.

Notation of Bates et al. (2015, JSS 67(1), section 3) and of
:mod:`mixedjax.structure` (blocks first / middle / border).  Per level a of the
first term, with lambda0 its relative covariance factor and D_a = Z_a'Z_a,

    M_a = lambda0' D_a lambda0 + I,   P_a = M_a^-1,   K_a = lambda0 P_a lambda0'.

Eliminating the first term leaves the Schur complement of the other columns,

    S = Lambda_e' T Lambda_e + J,   T = R0 - sum_a B_a' K_a B_a,

where R0 is [Z_middle, Z_border, X, y]'[...], B_a = Z_a'[...] the first term's
coupling (sparse in the middle columns), Lambda_e = blockdiag(Lambda_middle,
Lambda_border, I_{p+1}) and J the identity on the random-effects columns.  S has
the typed blocks [[S_mm, .], [S_bm, S_bb]] with S_mm block diagonal over clusters,
so its factor is

    L_mm,c = chol(S_mm,c),   L_bm,c = S_bm,c L_mm,c^-T,
    L_bb = chol(S_bb - sum_c L_bm,c L_bm,c').

The first term's pairs of coupling entries give the middle part of B'KB (a segment
sum over pairs, never a dense product); only where those pairs are too many (one
large cluster) is the coupling kept as a dense matrix (:class:`mixedjax.crossprod.Blocks`).

Every log-determinant of the criterion is a weighted sum of log L_ii^2 over the
rows of the whole factor (first: log|M_a|; middle and border: 2 log of L's
diagonal), with row weights w (module :mod:`mixedjax.criterion`).  Its derivative
is tr(G dM) with

    G = L^-T diag(w) L^-1,

needed only on the pattern of the factor (a selected inverse; Takahashi et al.
1973, Erisman & Tinney 1975).  With V = L_bb^-1, W_b = diag(w_border) and
Y_c = L_bm,c L_mm,c^-1:

    G_bb = V' W_b V,   G_bm,c = -G_bb Y_c,   G_mm,c = w_m L_mm,c^-T L_mm,c^-1 + Y_c' G_bb Y_c.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import routing
from .crossprod import Blocks
from .structure import Structure, factor_lambdas

__all__ = ["Factor", "Inverse", "factorize", "log_diagonals", "inverse", "scale_cols",
           "scale_rows", "tilde", "solve", "Solution", "back_vcov", "row_norms",
           "level_coupling", "random_effects", "fitted", "coupling_dense", "PairOps",
           "default_ops"]


class Factor(NamedTuple):
    """The factor at theta, with the pieces its derivatives reuse.

    ``lams`` each term's lambda; ``L0``/``P``/``K`` (m0, k0, k0) per first-term
    level; ``logdet0`` sum_a log|M_a|; ``T*`` the unscaled Schur complement's blocks
    (``T_mm`` symmetric, or valid in its lower triangle for one cluster of scalar
    terms, where nothing reads the rest); ``Lmm`` (n_cl, s, s), ``Lbm`` (n_cl, n_b,
    s), ``Lbb`` (n_b, n_b); ``Lmm_inv`` the inverses of small middle blocks (at most
    :data:`mixedjax.routing.UNROLL` columns, several clusters), which an evaluation
    with its gradient applies three times, else None.
    """

    lams: tuple
    L0: object
    P: object
    K: object
    logdet0: object
    Tmm: object
    Tbm: object
    Tbb: object
    Lmm: object
    Lbm: object
    Lbb: object
    Lmm_inv: object = None


# ----------------------------------------------------------------------------------
# Lambda scaling over the typed blocks
# ----------------------------------------------------------------------------------
def scale_cols(M, lams, segments, xp):
    """M Lambda on M's last axis: each segment (term, start, levels, k) of columns is
    multiplied by its term's lambda level by level; other columns are unchanged."""
    if not segments:
        return M
    pieces, cursor = [], 0
    for t, start, nlev, k in segments:
        if start > cursor:
            pieces.append(M[..., cursor:start])
        blk = M[..., start:start + nlev * k]
        if k == 1:
            pieces.append(blk * lams[t][0, 0])
        else:
            shp = blk.shape[:-1]
            pieces.append((blk.reshape(shp + (nlev, k)) @ lams[t]).reshape(shp + (nlev * k,)))
        cursor = start + nlev * k
    if cursor < M.shape[-1]:
        pieces.append(M[..., cursor:])
    # one segment over all columns: no copy into a new array (a dense cluster of
    # thousands of columns is scaled four times per evaluation)
    return pieces[0] if len(pieces) == 1 else xp.concatenate(pieces, axis=-1)


def scale_rows(M, lams, segments, xp):
    """Lambda' M on M's second-last axis (see :func:`scale_cols`)."""
    return xp.swapaxes(scale_cols(xp.swapaxes(M, -1, -2), lams, segments, xp), -1, -2)


def _transposed(lams):
    return tuple(lam.T for lam in lams)


# ----------------------------------------------------------------------------------
# The factorization
# ----------------------------------------------------------------------------------
def _first_term(lam0, d0, be):
    xp = be.xp
    k0 = lam0.shape[0]
    lam0t = xp.swapaxes(lam0, 0, 1)
    M = be.mm(lam0t, be.mm(d0, lam0)) + xp.eye(k0, dtype=d0.dtype)
    L0 = be.chol(M)
    P = be.chol_inverse(L0)
    logdet0 = 2.0 * xp.sum(xp.log(xp.diagonal(L0, 0, -2, -1)))
    K = be.mm(lam0, be.mm(P, lam0t))
    return L0, P, K, logdet0


def pair_flat(A: Blocks):
    """Flat index (cluster, row, col) in the (n_cl, s, s) middle block of each pair
    (i <= j, same level; entries sorted so column_i <= column_j: lower triangle)."""
    s = A.structure.s
    pi, pj = A.pair_i, A.pair_j
    ci, cj = A.ent_pos[pi], A.ent_pos[pj]
    return (cj // s) * (s * s) + (cj % s) * s + (ci % s)


def coupling_dense(A: Blocks, be):
    """The first term's coupling to the middle as a dense (m0, k0, s) array (one
    cluster)."""
    xp = be.xp
    s = A.structure
    V = be.segment_sum(A.ent_v, A.ent_a * s.s + A.ent_pos, s.m[0] * s.s)   # (m0 s, k0)
    return xp.swapaxes(V.reshape(s.m[0], s.s, s.k[0]), 1, 2)


def _schur(F0, A: Blocks, be, ops):
    """The unscaled Schur complement T = R0 - sum_a B_a' K_a B_a by blocks."""
    xp = be.xp
    s = A.structure
    _, _, K, _ = F0
    Kb = be.mm(K, A.b0)                                                # (m0, k0, n_b)
    m0, k0, n_b = A.b0.shape
    Tbb = A.abb - xp.swapaxes(A.b0.reshape(m0 * k0, n_b), 0, 1) @ Kb.reshape(m0 * k0, n_b)
    if not s.n_cl:
        return None, None, Tbb
    if s.dense_coupling:
        # One cluster: border x middle is sum_a (K_a b0_a)' V_a, one product.
        V = ops.coupling(A)                                            # (m0, k0, s)
        tbm = xp.swapaxes(Kb.reshape(m0 * k0, n_b), 0, 1) @ V.reshape(m0 * k0, s.s)
        return A.amm - ops.dense_update(K, A), A.abm - tbm[None], Tbb
    # Border x middle: entry e adds (K_a b0_a)' v_e to column pos_e.
    w = xp.einsum("ekp,ek->ep", Kb[A.ent_a], A.ent_v)                   # (E, n_b)
    tbm = be.segment_sum(w, A.ent_pos, s.n_cl * s.s)                   # (n_cl s, n_b)
    Tbm = A.abm - xp.swapaxes(tbm.reshape(s.n_cl, s.s, s.n_b), 1, 2)
    return A.amm - ops.pair_update(K, A), Tbm, Tbb


def factorize(theta, A: Blocks, be, ops=None) -> Factor:
    """The blocked Cholesky factor of M(theta) (module docstring)."""
    xp = be.xp
    s = A.structure
    ops = ops or default_ops(be)
    lams = tuple(factor_lambdas(theta, s, xp))
    F0 = _first_term(lams[0], A.d0, be)
    Tmm, Tbm, Tbb = _schur(F0, A, be, ops)
    bseg = s.border_segments
    Sbb = scale_rows(scale_cols(Tbb, lams, bseg, xp), lams, bseg, xp)
    if s.q_border:
        Sbb = Sbb + xp.diag(xp.concatenate([xp.ones(s.q_border, Sbb.dtype),
                                            xp.zeros(s.p + 1, Sbb.dtype)]))
    if s.n_cl:
        mseg = s.middle_segments
        Smm = scale_rows(scale_cols(Tmm, lams, mseg, xp), lams, mseg, xp)
        Smm = Smm + xp.eye(s.s, dtype=Smm.dtype)
        Sbm = scale_rows(scale_cols(Tbm, lams, mseg, xp), lams, bseg, xp)
        Lmm = be.chol(Smm[0])[None] if s.n_cl == 1 else be.chol(Smm)
        Lmm_inv = be.tri_inv(Lmm) if s.n_cl > 1 and s.s <= routing.UNROLL else None
        Lbm = xp.swapaxes(mid_solve(Lmm, xp.swapaxes(Sbm, -1, -2), be, Li=Lmm_inv), -1, -2)
        Sbb = Sbb - xp.einsum("cbs,cds->bd", Lbm, Lbm)
    else:
        Lmm = Lbm = Lmm_inv = None
    Lbb = be.chol(Sbb)
    L0, P, K, logdet0 = F0
    return Factor(lams=lams, L0=L0, P=P, K=K, logdet0=logdet0, Tmm=Tmm, Tbm=Tbm, Tbb=Tbb,
                  Lmm=Lmm, Lbm=Lbm, Lbb=Lbb, Lmm_inv=Lmm_inv)


def mid_solve(Lmm, B, be, trans: bool = False, Li=None):
    """L_mm,c^-1 B_c (or L_mm,c^-T B_c) for every cluster c; ``Li``: the inverses
    of the L_mm,c when known (:attr:`Factor.Lmm_inv`)."""
    if Li is not None:
        return be.solve_lower(Lmm, B, trans, Li)
    if Lmm.shape[0] == 1:
        return be.solve_lower(Lmm[0], B[0], trans)[None]
    return be.solve_lower(Lmm, B, trans)


def log_diagonals(F: Factor, be):
    """(sum_a log|M_a|, sum over the middle of log L_ii^2, log L_ii^2 of the border)."""
    xp = be.xp
    mid = (2.0 * xp.sum(xp.log(xp.diagonal(F.Lmm, 0, -2, -1)))
           if F.Lmm is not None else xp.zeros((), F.Lbb.dtype))
    return F.logdet0, mid, 2.0 * xp.log(xp.diagonal(F.Lbb))


# ----------------------------------------------------------------------------------
# Selected inverse
# ----------------------------------------------------------------------------------
class Inverse(NamedTuple):
    """G = L^-T diag(w) L^-1 on the factor's pattern: ``Gmm`` (n_cl, s, s), ``Gbm``
    (n_cl, n_b, s), ``Gbb`` (n_b, n_b) (the first term's blocks follow from these,
    :func:`mixedjax.criterion.first_term_q`)."""

    Gmm: object
    Gbm: object
    Gbb: object


def inverse(F: Factor, w_mid, w_border, be) -> Inverse:
    """The selected inverse G of the module docstring for middle-row weight ``w_mid``
    (a scalar) and border-row weights ``w_border`` (n_b,)."""
    xp = be.xp
    V = be.tri_inv(F.Lbb)
    Gbb = xp.swapaxes(V, 0, 1) @ (w_border[:, None] * V)
    if F.Lmm is None:
        return Inverse(None, None, Gbb)
    Li = F.Lmm_inv
    Y = xp.swapaxes(mid_solve(F.Lmm, xp.swapaxes(F.Lbm, -1, -2), be, trans=True, Li=Li),
                    -1, -2)
    Gbm = -Gbb @ Y                                                     # Y: (n_cl, n_b, s)
    if Li is not None:
        inv = be.chol_inverse(F.Lmm, Li)
    elif F.Lmm.shape[0] == 1:
        inv = be.chol_inverse(F.Lmm[0])[None]
    else:
        inv = be.chol_inverse(F.Lmm)
    Gmm = w_mid * inv + xp.swapaxes(Y, -1, -2) @ (Gbb @ Y)
    return Inverse(Gmm, Gbm, Gbb)


def tilde(G: Inverse, F: Factor, s: Structure, xp) -> Inverse:
    """G~ = Lambda_e G Lambda_e' (G in the unscaled coordinates of T)."""
    lt = _transposed(F.lams)
    mseg, bseg = s.middle_segments, s.border_segments
    Gbb = scale_rows(scale_cols(G.Gbb, lt, bseg, xp), lt, bseg, xp)
    if G.Gmm is None:
        return Inverse(None, None, Gbb)
    Gmm = scale_rows(scale_cols(G.Gmm, lt, mseg, xp), lt, mseg, xp)
    Gbm = scale_rows(scale_cols(G.Gbm, lt, mseg, xp), lt, bseg, xp)
    return Inverse(Gmm, Gbm, Gbb)


# ----------------------------------------------------------------------------------
# Coupling operations (pairs or dense), per backend
# ----------------------------------------------------------------------------------
class PairOps:
    """The first term's middle-middle Schur update and its adjoint, as sums over the
    pairs of coupling entries (JAX and NumPy; :mod:`mixedjax.criterion` may replace
    it with a precomputed sparse operator for NumPy)."""

    def __init__(self, be):
        self.be = be

    def pair_update(self, K, A: Blocks):
        """sum_a V_a' K_a V_a on the middle block (lower triangle, then mirrored)."""
        be, xp = self.be, self.be.xp
        s = A.structure
        vi, vj = A.ent_v[A.pair_i], A.ent_v[A.pair_j]
        vals = xp.einsum("pk,pkl,pl->p", vi, K[A.ent_a[A.pair_i]], vj)
        low = be.segment_sum(vals, pair_flat(A), s.n_cl * s.s * s.s)
        low = low.reshape(s.n_cl, s.s, s.s)
        return low + xp.swapaxes(low, -1, -2) * (1.0 - xp.eye(s.s, dtype=low.dtype))

    def pair_adjoint(self, Gt_mm, A: Blocks):
        """sum over one level's pairs of v_i v_j' G~[c_i, c_j] (both orders): the
        middle part of Q_a = B_a G~ B_a' (m0, k0, k0)."""
        be, xp = self.be, self.be.xp
        s = A.structure
        g = Gt_mm.reshape(-1)[pair_flat(A)]
        vi, vj = A.ent_v[A.pair_i], A.ent_v[A.pair_j]
        outer = vi[:, :, None] * vj[:, None, :]
        both = outer + xp.where((A.pair_i != A.pair_j)[:, None, None],
                                xp.swapaxes(outer, 1, 2), 0.0)
        return be.segment_sum(both * g[:, None, None], A.ent_a[A.pair_i], s.m[0])

    def coupling(self, A: Blocks):
        """The first term's coupling to the middle, dense (m0, k0, s) (one cluster)."""
        return coupling_dense(A, self.be)

    def dense_update(self, K, A: Blocks):
        """sum_a V_a' K_a V_a (one cluster)."""
        xp = self.be.xp
        V = self.coupling(A)
        m0, k0, s = V.shape
        KV = (K @ V).reshape(m0 * k0, s)
        return (xp.swapaxes(V.reshape(m0 * k0, s), 0, 1) @ KV)[None]

    def weighted_inner(self, c, Gt_mm, A: Blocks):
        """<G~_mm, sum_a c_a V_a' V_a> for a scalar first term and c >= 0, which is
        sum_a c_a V_a G~_mm V_a' (one cluster)."""
        xp = self.be.xp
        V = self.coupling(A)[:, 0, :]
        return xp.sum(Gt_mm * ((V * c[:, None]).T @ V))

    def dense_adjoint(self, Gt_mm, A: Blocks):
        """V_a G~_mm V_a' (m0, k0, k0) (one cluster)."""
        xp = self.be.xp
        V = self.coupling(A)
        m0, k0, s = V.shape
        VG = (V.reshape(m0 * k0, s) @ Gt_mm[0]).reshape(m0, k0, s)      # one product
        return VG @ xp.swapaxes(V, 1, 2)


class SparsePairOps(PairOps):
    """:class:`PairOps` for NumPy with the pair sums as one sparse matrix, built once.

    The update's value at a pair's position is v_i' K_a v_j = <K_a, (v_i v_j' +
    v_j v_i') / 2>, linear in the per-level K, so the whole middle update is one
    sparse (positions x m0 k0^2) product with the stacked K; its transpose, with
    off-diagonal positions counted twice, is the adjoint (InstEval: 2.6e6 pairs,
    one sparse product each way).  For one cluster of scalar terms the update
    stays in the lower triangle (nothing reads the rest; mirroring a 1,000-column
    block would cost more than the product)."""

    def __init__(self, A: Blocks, be):
        super().__init__(be)
        s = A.structure
        self.lower_only = s.n_cl == 1 and all(s.k[t] == 1 for t in s.middle)
        self.op = None
        if not s.n_cl or s.dense_coupling:
            return
        k0 = s.k[0]
        pi, pj = A.pair_i, A.pair_j
        vi, vj = A.ent_v[pi], A.ent_v[pj]
        po = vi[:, :, None] * vj[:, None, :]
        po = 0.5 * (po + np.swapaxes(po, 1, 2))
        pos = pair_flat(A)
        rows = np.repeat(pos, k0 * k0)
        cols = (A.ent_a[pi][:, None] * (k0 * k0) + np.arange(k0 * k0)).reshape(-1)
        size = s.n_cl * s.s * s.s
        if len(rows) > routing.SPARSE_OPERATOR:
            # imported here: SciPy's sparse package costs 0.1 s to import, more
            # than a small model's whole fit
            from scipy.sparse import csr_matrix
            self.op = csr_matrix((po.reshape(-1), (rows, cols)),
                                 shape=(size, s.m[0] * k0 * k0))
        else:
            self.op = _Triplets(rows, cols, po.reshape(-1), size, s.m[0] * k0 * k0)
        diag = np.zeros((s.n_cl, s.s, s.s), bool)
        diag[:, np.arange(s.s), np.arange(s.s)] = True
        self.mult = np.where(diag.reshape(-1), 1.0, 2.0)

    def pair_update(self, K, A: Blocks):
        if self.op is None:
            return super().pair_update(K, A)
        s = A.structure
        low = (self.op @ K.reshape(-1)).reshape(s.n_cl, s.s, s.s)
        if self.lower_only:
            return low
        return low + np.swapaxes(low, -1, -2) * (1.0 - np.eye(s.s))

    def pair_adjoint(self, Gt_mm, A: Blocks):
        if self.op is None:
            return super().pair_adjoint(Gt_mm, A)
        s = A.structure
        g = Gt_mm.reshape(-1) * self.mult
        return (self.op.T @ g).reshape(s.m[0], s.k[0], s.k[0])

    def dense_update(self, K, A: Blocks):
        """V' K V as W'W with W_a = L0_a^-1 lambda0' V_a (one symmetric rank-k product)."""
        U = _gram_lower(self._dense_w(K, A))
        if self.lower_only:
            return U[None]
        # The upper triangle of U is zero: U + U' has the full matrix off the diagonal
        # and twice it on the diagonal (one pass instead of two triangle copies).
        full = U + U.T
        full[np.diag_indices_from(full)] *= 0.5
        return full[None]

    def coupling(self, A: Blocks):
        if "V" not in self.__dict__:
            self.V = coupling_dense(A, self.be)                         # (m0, k0, s)
        return self.V

    def weighted_inner(self, c, Gt_mm, A: Blocks):
        W = self.coupling(A)[:, 0, :] * np.sqrt(c)[:, None]
        C = _gram_lower(W)                                              # lower triangle
        # <G, C> over the whole of the symmetric C from its lower triangle, in one
        # contiguous pass (G is symmetric: G' is G, in the other memory order).
        G = Gt_mm if Gt_mm.flags.c_contiguous or not Gt_mm.T.flags.c_contiguous else Gt_mm.T
        return 2.0 * np.vdot(G, C) - np.dot(np.diagonal(G), np.diagonal(C))

    def _dense_w(self, K, A: Blocks):
        s = A.structure
        V = self.coupling(A)
        if s.k[0] == 1:
            return V[:, 0, :] * np.sqrt(np.maximum(K[:, 0, 0], 0.0))[:, None]
        e, U = np.linalg.eigh(K)                                       # K = C C'
        C = U * np.sqrt(np.maximum(e, 0.0))[:, None, :]
        return (np.swapaxes(C, 1, 2) @ V).reshape(-1, s.s)


def _gram_lower(W: np.ndarray) -> np.ndarray:
    """W'W in the lower triangle (upper triangle zero), C-ordered, by one symmetric
    rank-k BLAS product.  BLAS works in column order: the C-ordered W is handed over
    as the column-ordered W', and the column-ordered upper triangle it returns is
    the C-ordered lower one, so neither W nor the result is copied or read across
    its rows (the dense coupling of a MovieLens-sized model: 180 MB and half a
    second per evaluation)."""
    import scipy.linalg
    W = np.ascontiguousarray(W)
    return scipy.linalg.blas.dsyrk(1.0, W.T, trans=0, lower=0).T


class _Triplets:
    """A sparse matrix as (row, col, value) triplets with its two products in NumPy
    alone (a weighted count per row or column)."""

    def __init__(self, rows, cols, vals, nrow, ncol):
        self.rows, self.cols, self.vals, self.shape = rows, cols, vals, (nrow, ncol)

    def __matmul__(self, x):
        return np.bincount(self.rows, weights=self.vals * x[self.cols], minlength=self.shape[0])

    @property
    def T(self):
        return _Triplets(self.cols, self.rows, self.vals, self.shape[1], self.shape[0])


def default_ops(be):
    return PairOps(be)


# ----------------------------------------------------------------------------------
# The solve
# ----------------------------------------------------------------------------------
class Solution(NamedTuple):
    """Conditional estimates at theta (Bates et al. 2015, eqs. 16-18): ``beta`` in the
    original basis; spherical random effects ``u0`` (m0, k0), ``u_mid`` (n_cl, s),
    ``u_border`` (q_border,); ``pwrss``; ``rxx`` the X block of the factor (for
    vcov in the stable basis)."""

    beta: object
    u0: object
    u_mid: object
    u_border: object
    pwrss: object
    rxx: object


def solve(F: Factor, A: Blocks, be, ops=None) -> Solution:
    """Back-substitution for [u; beta~] = L_A^-T c (c the y row of L), block by
    block, then beta = R^-1 (beta~ + Q'y)."""
    xp = be.xp
    s = A.structure
    qb, p = s.q_border, s.p
    Lb = F.Lbb
    Vb = be.tri_inv(Lb[:-1, :-1])
    xb = xp.swapaxes(Vb, 0, 1) @ Lb[-1, :-1]                            # border unknowns
    u_border, beta_t = xb[:qb], xb[qb:]
    lams = F.lams
    # B_a Lambda_e x over the border (dense) and, below, the middle entries.
    xfull = xp.concatenate([scale_cols(xb[None, :], _transposed(lams), s.border_segments,
                                       xp)[0], -xp.ones(1, xb.dtype)])  # y column: -1
    r0 = A.b0 @ xfull                                                  # (m0, k0): B x - b_y
    if s.n_cl:
        cm = F.Lbm[:, -1, :]                                           # y row of L_bm
        rhs = cm - xp.einsum("cbs,b->cs", F.Lbm[:, :-1, :], xb)
        u_mid = mid_solve(F.Lmm, rhs[..., None], be, trans=True, Li=F.Lmm_inv)[..., 0]
        bm = scale_cols(u_mid, _transposed(lams), s.middle_segments, xp).reshape(-1)
        r0 = r0 + be.segment_sum(A.ent_v * bm[A.ent_pos][:, None], A.ent_a, s.m[0])
    else:
        u_mid = None
    lam0 = lams[0]
    # u0_a = P_a lambda0' (b_y - B_a Lambda_e x)
    u0 = -(F.P @ (xp.swapaxes(lam0, 0, 1) @ r0[..., None]))[..., 0]
    beta = _back(A.rx, beta_t + A.beta0, be)
    return Solution(beta=beta, u0=u0, u_mid=u_mid, u_border=u_border,
                    pwrss=Lb[-1, -1] ** 2, rxx=Lb[qb:qb + p, qb:qb + p])


def _back(R, x, be):
    """R^-1 x for the upper-triangular R of the stable basis."""
    xp = be.xp
    if R.shape[0] == 0:
        return x
    Ri = be.tri_inv(xp.swapaxes(R, 0, 1))                              # (R')^-1, lower
    return xp.swapaxes(Ri, 0, 1) @ x


def back_vcov(R, V, be):
    """R^-1 V R^-T: the covariance of beta from that of beta~."""
    xp = be.xp
    if R.shape[0] == 0:
        return V
    Ri = xp.swapaxes(be.tri_inv(xp.swapaxes(R, 0, 1)), 0, 1)           # R^-1
    return Ri @ V @ xp.swapaxes(Ri, 0, 1)


_ = np  # NumPy is the default array library of the eager path


# ----------------------------------------------------------------------------------
# Rows: quadratic forms a' M^-1 a and fitted values
# ----------------------------------------------------------------------------------
def level_coupling(A: Blocks, be):
    """The first term's coupling to the middle as a dense (m0, k0, n_cl * s) array."""
    xp = be.xp
    s = A.structure
    q = s.n_cl * s.s
    V = be.segment_sum(A.ent_v, A.ent_a * q + A.ent_pos, s.m[0] * q)          # (m0 q, k0)
    return xp.swapaxes(V.reshape(s.m[0], q, s.k[0]), 1, 2)


def row_norms(F: Factor, A: Blocks, level, a0, a_rest, be, coupling=None):
    """|L_A^-1 a|^2 = a' M_A^-1 a for rows a = [a0; a_rest] in the factor's
    coordinates (M_A: M without its y row and column; Henderson's prediction error
    variance and the hat values both are such forms).

    ``level`` (N,) the first term's level of each row (any level where ``a0`` is 0),
    ``a0`` (N, k0) = lambda0' z0; ``a_rest`` (N, n_cl s + n_b - 1) the middle
    (cluster layout) and border columns (Z_border, then X in the stable basis),
    scaled by Lambda'.  Forward substitution through the blocks: the first term's
    factor, its coupling (B_a' lambda0 L0_a^-T, dense for these rows), the
    clusters, the border.
    """
    xp = be.xp
    s = A.structure
    qm = s.n_cl * s.s
    L0inv = be.tri_inv(F.L0)[level]                                     # (N, k0, k0)
    v0 = xp.einsum("nij,nj->ni", L0inv, a0)
    t = xp.einsum("ij,nj->ni", F.lams[0], xp.einsum("nji,nj->ni", L0inv, v0))
    cb = xp.einsum("nkb,nk->nb", A.b0[level][:, :, :-1], t)
    cb = scale_cols(cb, F.lams, s.border_segments, xp)
    total = xp.sum(v0 * v0, axis=1)
    rb = a_rest[:, qm:] - cb
    if s.n_cl:
        V = coupling if coupling is not None else level_coupling(A, be)
        cm = xp.einsum("nkq,nk->nq", V[level], t).reshape(-1, s.n_cl, s.s)
        cm = scale_cols(cm, F.lams, s.middle_segments, xp)
        rm = a_rest[:, :qm].reshape(-1, s.n_cl, s.s) - cm
        vm = xp.swapaxes(mid_solve(F.Lmm, xp.moveaxis(rm, 0, -1), be, Li=F.Lmm_inv), 1, 2)
        vm = xp.moveaxis(vm, 1, 0)                                     # (N, n_cl, s)
        total = total + xp.sum(vm * vm, axis=(1, 2))
        rb = rb - xp.einsum("cbs,ncs->nb", F.Lbm[:, :-1, :], vm)
    vb = rb @ xp.swapaxes(be.tri_inv(F.Lbb[:-1, :-1]), 0, 1)
    return total + xp.sum(vb * vb, axis=1)


def random_effects(F: Factor, sol: Solution, A: Blocks, xp):
    """b = Lambda u in the factor's layout: (first (m0, k0), middle (n_cl, s),
    border (q_border,))."""
    s = A.structure
    lt = _transposed(F.lams)
    b0 = sol.u0 @ xp.swapaxes(F.lams[0], 0, 1)
    bm = scale_cols(sol.u_mid, lt, s.middle_segments, xp) if s.n_cl else None
    bb = scale_cols(sol.u_border[None, :], lt, s.border_segments, xp)[0]
    return b0, bm, bb


def fitted(F: Factor, sol: Solution, A: Blocks, rows, X, offset, xp):
    """X beta + Z b (+ offset) for the design's rows (:class:`mixedjax.crossprod.Rows`)."""
    b0, bm, bb = random_effects(F, sol, A, xp)
    eta = X @ sol.beta + xp.sum(rows.z0 * b0[rows.codes0], axis=1) + offset
    if bm is not None and rows.mid_pos.shape[1]:
        eta = eta + xp.sum(rows.mid_z * bm.reshape(-1)[rows.mid_pos], axis=1)
    if rows.bor_pos.shape[1]:
        eta = eta + xp.sum(rows.bor_z * bb[rows.bor_pos], axis=1)
    return eta
