"""The profiled REML/ML criterion, defined once, and its exact derivative.

With L the factor of M(theta) (:mod:`mixedjax.factor`), the criterion of Bates
et al. (2015, JSS 67(1)) is a weighted sum of the log squared diagonal of L:

    ML:   d(theta)   = log|L_Z|^2 + n (1 + log(2 pi pwrss / n))                 (eq. 35)
    REML: d_R(theta) = log|L_Z|^2 + log|R_X|^2
                       + (n - p)(1 + log(2 pi pwrss / (n - p)))                 (eq. 42)

that is  sum_i w_i log L_ii^2 + nu (1 + log(2 pi / nu)) - sum(log w) + [REML]
2 log|det R|,  with nu = n - p (REML) or n (ML), row weights w_i = 1 on the
random-effects rows, 1 (REML) or 0 (ML) on the X rows and nu on the y row
(pwrss = L_yy^2), prior weights w and R the stable basis's triangle
(:mod:`mixedjax.crossprod`).

Its derivative is tr(G dM) with G = L^-T diag(w) L^-1 (the trace rule d log|B| =
tr(B^-1 dB)), which needs G only on the factor's pattern
(:func:`mixedjax.factor.inverse`).  With dM = dLambda' A Lambda + Lambda' A dLambda
+ Lambda' dA Lambda this gives the gradient in theta and in the blocks A:

* a later term's theta_t: 2 sum over its levels of (T Lambda_e G)[r, c] on the
  level's diagonal block ((r, c) theta_t's position in lambda);
* the first term's theta_t: 2 sum_a [w0 P lambda0' D - P lambda0' Q
  + P lambda0' Q lambda0 P lambda0' D]_{(c, r)} with Q_a = B_a G~ B_a' and
  G~ = Lambda_e G Lambda_e';
* the blocks: dA_ij is paired with (Lambda G_M Lambda')_ij, G_M the whole
  factor's G, whose first-term blocks are w0 P + P lambda0' Q lambda0 P and
  -G~ B_a' K_a.

:func:`value_grad` evaluates both eagerly in NumPy; :func:`objective` is the same
definition as a pure JAX function of (theta, blocks) whose custom JVP is that
gradient, so ``jax.grad``, ``jax.hessian``, ``jax.jit`` and ``jax.vmap`` apply and
a Hessian is forward-mode differentiation of the rule.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import factor as fac
from . import routing
from .backend import NUMPY
from .crossprod import Blocks, register_pytrees
from .structure import Structure, basis_matrices, tril_indices

__all__ = ["Weights", "weights", "dof", "value", "from_factor", "gradient", "objective", "weighted_logdet",
           "parts", "condvar", "curvature_guess", "EagerModel"]


class Weights:
    """Row weights of a weighted log-determinant: ``w0`` (first-term rows), ``wm``
    (middle rows), ``wb`` (n_b,) border rows [border terms, X, y]."""

    def __init__(self, w0, wm, wb):
        self.w0, self.wm, self.wb = w0, wm, wb


def dof(A: Blocks, reml, xp):
    """nu = n - p (REML) or n (ML); ``reml`` may be a traced boolean."""
    if isinstance(reml, (bool, np.bool_)):
        return A.n - A.p if reml else A.n
    return xp.where(reml, A.n - A.p, A.n)


def weights(A: Blocks, reml, xp, which: str = "criterion") -> Weights:
    """The row weights of the criterion (``which="criterion"``) or of one of its
    parts: "z" (log|L_Z|^2), "x" (log|R_X|^2), "y" (log pwrss), "zx" (the leading
    [Z, X] block: M[:q+p]^-1 is its G)."""
    s = A.structure
    qb, p = s.q_border, s.p
    one = xp.ones
    if which == "criterion":
        wx = (1.0 if reml else 0.0) if isinstance(reml, (bool, np.bool_)) else \
            xp.where(reml, 1.0, 0.0)
        wb = xp.concatenate([one(qb), wx * one(p), xp.reshape(dof(A, reml, xp), (1,)) * one(1)])
        return Weights(1.0, 1.0, wb)
    table = {"z": (1.0, 1.0, 0.0, 0.0), "x": (0.0, 0.0, 1.0, 0.0), "y": (0.0, 0.0, 0.0, 1.0),
             "zx": (1.0, 1.0, 1.0, 0.0)}
    wz, wm, wx, wy = table[which]
    wb = xp.concatenate([wz * one(qb), wx * one(p), wy * one(1)])
    return Weights(wz, wm, wb)


def _constant(A: Blocks, reml, xp):
    nu = dof(A, reml, xp)
    c = nu * (1.0 + xp.log(2.0 * math.pi / nu)) - A.ldw
    if isinstance(reml, (bool, np.bool_)):
        return c + A.logdet_x if reml else c
    return c + xp.where(reml, A.logdet_x, 0.0)


def weighted_sum(F: fac.Factor, w: Weights, be):
    """sum_i w_i log L_ii^2 over the whole factor."""
    xp = be.xp
    ld0, ldm, ldb = fac.log_diagonals(F, be)
    return w.w0 * ld0 + w.wm * ldm + xp.sum(w.wb * ldb)


def from_factor(F: fac.Factor, A: Blocks, reml, be):
    """The criterion from the factor at theta."""
    return weighted_sum(F, weights(A, reml, be.xp), be) + _constant(A, reml, be.xp)


def value(theta, A: Blocks, reml=True, be=NUMPY, ops=None):
    """The criterion at ``theta`` (NaN or inf where M is not positive definite)."""
    return from_factor(fac.factorize(theta, A, be, ops), A, reml, be)


# ----------------------------------------------------------------------------------
# The gradient (the trace rule on the factor's pattern)
# ----------------------------------------------------------------------------------
def first_term_q(Gt: fac.Inverse, A: Blocks, be, ops, middle: bool = True):
    """Q_a = B_a G~ B_a' (m0, k0, k0) for the first term's levels (without the
    middle-middle part V_a G~_mm V_a' of a dense coupling when not ``middle``)."""
    xp = be.xp
    s = A.structure
    m0, k0, n_b = A.b0.shape
    bg = (A.b0.reshape(m0 * k0, n_b) @ Gt.Gbb).reshape(m0, k0, n_b)    # one product
    Q = be.mm(bg, xp.swapaxes(A.b0, 1, 2))
    if not s.n_cl:
        return Q
    if s.dense_coupling:
        # One cluster: the cross terms are V_a G~_mb b0_a' and its transpose.
        V = ops.coupling(A)                                            # (m0, k0, s)
        bgm = (A.b0.reshape(m0 * k0, n_b) @ Gt.Gbm[0]).reshape(m0, k0, s.s)
        C = bgm @ xp.swapaxes(V, 1, 2)
        Q = Q + C + xp.swapaxes(C, 1, 2)
        return Q + ops.dense_adjoint(Gt.Gmm, A) if middle else Q
    gbm = xp.swapaxes(Gt.Gbm, 1, 2).reshape(s.n_cl * s.s, s.n_b)        # (q_mid, n_b)
    se = xp.einsum("ekp,ep->ek", A.b0[A.ent_a], gbm[A.ent_pos])        # b0_a G~[b, pos_e]
    cross = A.ent_v[:, :, None] * se[:, None, :]
    Q = Q + be.segment_sum(cross + xp.swapaxes(cross, 1, 2), A.ent_a, s.m[0])
    return Q + ops.pair_adjoint(Gt.Gmm, A)


def _diag_products(rows, cols, segments, xp):
    """Level-diagonal blocks of rows @ cols for each segment (term, start, levels,
    k) of the product's rows and columns, summed over levels and any leading batch
    axis -> {term: (k, k)}; ``rows`` (..., N, M) and ``cols`` (..., M, N), O(N M k)."""
    out = {}
    for t, start, nlev, k in segments:
        r = rows[..., start:start + nlev * k, :]
        c = cols[..., :, start:start + nlev * k]
        shp = r.shape[:-2]
        r = r.reshape(shp + (nlev, k, r.shape[-1]))
        c = c.reshape(shp + (c.shape[-2], nlev, k))
        blk = xp.einsum("...lin,...nlj->...ij", r, c)
        out[t] = xp.sum(blk.reshape((-1, k, k)), axis=0)
    return out


def _later_terms(A: Blocks, F: fac.Factor, G: fac.Inverse, w: Weights, be) -> dict:
    """d/dtheta_t for the later terms: 2 sum over levels of (T Lambda_e G)[r, c] on
    each level's diagonal block (module docstring); returned without the factor 2.

    Eagerly, a scalar term away from 0 takes the shortcut (1 / theta_t)
    sum_c (1 - G_cc) over its columns: with Lambda_e' T Lambda_e = S - J and
    (G S)_cc = 1 for the random-effects columns (their row weights sum to 1), only
    G's diagonal is needed, not T, which for one large cluster of scalar terms is
    then never mirrored from its lower triangle."""
    xp = be.xp
    s = A.structure
    lt = tuple(lam.T for lam in F.lams)
    eager = be.name == "numpy" and w.w0 == 1.0 and w.wm == 1.0
    out, general_mid, general_bor = {}, [], []
    for seg in s.middle_segments:
        t, start, nlev, k = seg
        if eager and k == 1 and abs(float(F.lams[t][0, 0])) > routing.SCALAR_SHORTCUT:
            d = np.diagonal(G.Gmm, 0, -2, -1)[:, start:start + nlev]
            out[t] = np.reshape(np.sum(1.0 - d) / F.lams[t][0, 0], (1, 1))
        else:
            general_mid.append(seg)
    for seg in s.border_segments:
        t, start, nlev, k = seg
        if eager and k == 1 and abs(float(F.lams[t][0, 0])) > routing.SCALAR_SHORTCUT:
            d = np.diagonal(G.Gbb)[start:start + nlev]
            out[t] = np.reshape(np.sum(1.0 - d) / F.lams[t][0, 0], (1, 1))
        else:
            general_bor.append(seg)
    if general_mid:
        Tmm = F.Tmm
        if be.name == "numpy" and s.n_cl == 1:
            Tmm = be.symmetrize_lower(Tmm)        # one cluster may hold its lower triangle only
        LGmm = fac.scale_rows(G.Gmm, lt, s.middle_segments, xp)        # Lambda_m G_mm
        LGbm = fac.scale_rows(G.Gbm, lt, s.border_segments, xp)        # Lambda_b G_bm
        a = _diag_products(Tmm, LGmm, general_mid, xp)
        b = _diag_products(xp.swapaxes(F.Tbm, 1, 2), LGbm, general_mid, xp)
        out.update({t: a[t] + b[t] for t in a})
    if general_bor:
        LGbb = fac.scale_rows(G.Gbb, lt, s.border_segments, xp)
        a = _diag_products(F.Tbb, LGbb, general_bor, xp)
        if s.n_cl:
            LGmb = fac.scale_rows(xp.swapaxes(G.Gbm, 1, 2), lt, s.middle_segments, xp)
            b = _diag_products(F.Tbm, LGmb, general_bor, xp)
            a = {t: a[t] + b[t] for t in a}
        out.update(a)
    return out


def gradient(theta, A: Blocks, F: fac.Factor, w: Weights, be, ops, data: bool = False):
    """d/dtheta of sum_i w_i log L_ii^2 (and, with ``data``, its derivatives with
    respect to the float blocks of ``A``, as a dict)."""
    xp = be.xp
    s = A.structure
    G = fac.inverse(F, w.wm, w.wb, be)
    Gt = fac.tilde(G, F, s, xp)
    # A scalar first term with a dense coupling (eagerly, without the data
    # derivatives): Q enters its derivative only through sum_a c_a Q_a, with
    # c_a = -lambda P_a^2 (below), whose middle part is <G~_mm, V' diag(P^2) V>: one
    # symmetric rank-m0 product instead of V G~ V' level by level.
    inner = be.name == "numpy" and s.dense_coupling and s.k[0] == 1 and not data
    Q = first_term_q(Gt, A, be, ops, middle=not inner)
    lams = F.lams
    lam0 = lams[0]
    lam0t = xp.swapaxes(lam0, 0, 1)
    PL = be.mm(F.P, lam0t)
    PLd = be.mm(PL, A.d0)                                              # P lambda0' D
    PLQ = be.mm(PL, Q)
    # For k0 = 1, term_a = w0 P_a lambda d_a - lambda P_a^2 Q_a (1 - lambda^2 P_a d_a = P_a).
    term = w.w0 * PLd - PLQ + be.mm(be.mm(PLQ, lam0), PLd)
    tot = xp.sum(term, axis=0)
    # d/dLambda_e of each term (k x k), then d/dlambda = S^-T d/dLambda_e for a term
    # in a column basis (Lambda_e = S^-1 lambda, structure.factor_lambdas).
    dlam = {0: 2.0 * xp.swapaxes(tot, 0, 1)}
    for t, blk in _later_terms(A, F, G, w, be).items():
        dlam[t] = 2.0 * blk
    grads = {}
    for t, sm in enumerate(basis_matrices(s) if s.basis else [None] * len(s.k)):
        d = dlam[t] if sm is None else xp.asarray(sm[1].T) @ dlam[t]
        r, c = tril_indices(s.k[t])
        grads[t] = d[r, c]
    if inner:
        grads[0] = grads[0] - 2.0 * lam0[0, 0] * ops.weighted_inner(F.P[:, 0, 0] ** 2, Gt.Gmm[0], A)
    g = xp.concatenate([grads[t] for t in range(len(s.k))])
    if not data:
        return g, None
    return g, _data_gradient(A, F, Gt, Q, w, be, ops)


def _data_gradient(A: Blocks, F: fac.Factor, Gt: fac.Inverse, Q, w: Weights, be, ops):
    """d/dA of sum_i w_i log L_ii^2 for the float blocks of A (module docstring)."""
    xp = be.xp
    s = A.structure
    K = F.K
    out = {"d0": w.w0 * K + K @ Q @ K,
           "abb": Gt.Gbb}
    # B_a G~ by columns: the border columns for b0, the middle ones per entry.
    m0, k0, n_b = A.b0.shape
    bg = (A.b0.reshape(m0 * k0, n_b) @ Gt.Gbb).reshape(m0, k0, n_b)
    if s.n_cl:
        gbm = xp.swapaxes(Gt.Gbm, 1, 2).reshape(s.n_cl * s.s, s.n_b)    # G~[mid, b]
        bg = bg + be.segment_sum(A.ent_v[:, :, None] * gbm[A.ent_pos][:, None, :],
                                 A.ent_a, s.m[0])
        # (B_a G~)[:, pos_e] = sum_{e' in a} v_e' G~[pos_e', pos_e] + b0_a G~[b, pos_e]
        col = xp.einsum("ekp,ep->ek", A.b0[A.ent_a], gbm[A.ent_pos])
        if s.dense_coupling:
            V = fac.coupling_dense(A, be)                              # (m0, k0, s)
            col = col + xp.einsum("aks,st->akt", V, Gt.Gmm[0])[A.ent_a, :, A.ent_pos]
        else:
            g = Gt.Gmm.reshape(-1)[fac.pair_flat(A)]
            pi, pj = A.pair_i, A.pair_j
            col = col + be.segment_sum(A.ent_v[pi] * g[:, None], pj, len(A.ent_a))
            col = col + be.segment_sum(xp.where((pi != pj)[:, None], A.ent_v[pj] * g[:, None],
                                                0.0), pi, len(A.ent_a))
        out["ent_v"] = -2.0 * xp.einsum("ekl,el->ek", K[A.ent_a], col)
        out["amm"] = Gt.Gmm
        out["abm"] = 2.0 * Gt.Gbm
    out["b0"] = -2.0 * (K @ bg)
    return out


def condvar(theta, A: Blocks, be=NUMPY, ops=None):
    """Diagonal blocks of (Lambda'Z'Z Lambda + I)^-1 (lme4's condVar before
    scaling): (first term (m0, k0, k0), middle (n_cl, s, s), border (n_b, n_b)).

    They are G for the random-effects rows alone (weights "z"); the first term's
    level blocks are P + P lambda0' Q lambda0 P (module docstring)."""
    xp = be.xp
    ops = ops or fac.default_ops(be)
    F = fac.factorize(theta, A, be, ops)
    w = weights(A, True, xp, "z")
    G = fac.inverse(F, w.wm, w.wb, be)
    Q = first_term_q(fac.tilde(G, F, A.structure, xp), A, be, ops)
    lam0 = F.lams[0]
    PL = F.P @ xp.swapaxes(lam0, 0, 1)
    return F.P + PL @ Q @ xp.swapaxes(PL, -1, -2), G.Gmm, G.Gbb


def curvature_guess(theta, A: Blocks, placement) -> np.ndarray:
    """A cheap diagonal approximation of the criterion's Hessian, on the log scale
    for the diagonal entries of each lambda, for preconditioning the search.

    For a balanced one-way layout the Fisher information of log sigma_b^2 is
    (1/2) sum_a rho_a^2 with rho_a = n_a sigma_b^2 / (sigma^2 + n_a sigma_b^2), the
    shrinkage factor of level a (Searle, Casella & McCulloch, "Variance
    Components", ch. 3, the 1-way classification); in the deviance's units (x 2) and
    for z = log theta (x 4) this is 4 sum_a rho_a^2, with n_a theta^2 in place of
    n_a sigma_b^2 / sigma^2.  Each term is treated as if alone, with n_a the
    level's diagonal of Z'Z; an off-diagonal entry (r, c) takes 4 sum_a rho_ar rho_ac.
    """
    from .structure import factor_lambdas, per_term
    s = A.structure
    lams = factor_lambdas(np.asarray(theta, np.float64), s)
    counts = per_term(np.diagonal(A.d0, 0, -2, -1), np.diagonal(A.amm, 0, -2, -1),
                      np.diagonal(A.abb), s, placement)
    out = []
    for lam, n, k in zip(lams, counts, s.k):
        u = n * np.diagonal(lam) ** 2
        rho = u / (1.0 + u)
        r, c = tril_indices(k)
        out.append(4.0 * np.sum(rho[:, r] * rho[:, c], axis=0))
    h = np.concatenate(out)
    return np.maximum(h, 1e-8 * max(float(np.max(h)), 1.0))


# ----------------------------------------------------------------------------------
# The eager (NumPy) criterion with its gradient
# ----------------------------------------------------------------------------------
class EagerModel:
    """A design's blocks ready for eager evaluation (NumPy, nothing compiled)."""

    def __init__(self, A: Blocks, reml: bool = True):
        self.A = A.numpy() if not isinstance(A.d0, np.ndarray) else A
        self.reml = bool(reml)
        self.ops = fac.SparsePairOps(self.A, NUMPY)
        # The factorization of the last value_grad, for a solve at the same theta
        # (a fit's final solve at its last evaluated point): (theta, Factor).
        self._last = None

    @property
    def structure(self) -> Structure:
        return self.A.structure

    def value(self, theta) -> float:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            f = value(np.asarray(theta, np.float64), self.A, self.reml, NUMPY, self.ops)
        return float(f) if np.isfinite(f) else np.inf

    def solve(self, theta):
        """(criterion, :class:`mixedjax.factor.Solution`) at ``theta`` from one
        factorization; the criterion is inf where M is not positive definite."""
        theta = np.asarray(theta, np.float64)
        last, self._last = self._last, None
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if last is not None and np.array_equal(last[0], theta):
                F = last[1]
            else:
                F = fac.factorize(theta, self.A, NUMPY, self.ops)
            f = from_factor(F, self.A, self.reml, NUMPY)
            sol = fac.solve(F, self.A, NUMPY, self.ops)
        return (float(f) if np.isfinite(f) else np.inf), sol

    def value_grad(self, theta):
        """(criterion, gradient); (inf, NaN) where M is not positive definite."""
        theta = np.asarray(theta, np.float64)
        A = self.A
        self._last = None           # freed before the next factor is made, not after
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            F = fac.factorize(theta, A, NUMPY, self.ops)
            self._last = (theta.copy(), F)
            w = weights(A, self.reml, np)
            f = float(weighted_sum(F, w, NUMPY) + _constant(A, self.reml, np))
            if not np.isfinite(f):
                return np.inf, np.full(theta.shape, np.nan)
            g, _ = gradient(theta, A, F, w, NUMPY, self.ops)
        return f, g


# ----------------------------------------------------------------------------------
# The same definition as a pure JAX function with the gradient as its derivative
# ----------------------------------------------------------------------------------
_PART_WEIGHTS = ("criterion", "z", "x", "y")


@functools.cache
def _jax_funcs():
    import jax
    import jax.numpy as jnp

    from .backend import jax_backend

    be = jax_backend()
    register_pytrees()
    ops = fac.default_ops(be)

    @functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
    def wlogdet(theta, A, reml, which):
        F = fac.factorize(theta, A, be, ops)
        return jnp.stack([weighted_sum(F, weights(A, reml, jnp, w), be) for w in which])

    def _jvp(which, primals, tangents):
        theta, A, reml = primals
        dtheta, dA, _ = tangents
        F = fac.factorize(theta, A, be, ops)
        need_data = any(not isinstance(getattr(dA, f), jax.custom_derivatives.SymbolicZero)
                        for f in ("d0", "b0", "ent_v", "amm", "abm", "abb", "n", "p"))
        vals, outs = [], []
        for name in which:
            w = weights(A, reml, jnp, name)
            vals.append(weighted_sum(F, w, be))
            g, gd = gradient(theta, A, F, w, be, ops, data=need_data)
            out = _tangent(dtheta, g, jnp)
            if need_data:
                for f, gf in gd.items():
                    out = out + _pair(getattr(dA, f), gf, jnp)
                if name == "criterion":
                    # w_y = nu: d/dnu of nu log L_yy^2.
                    ly = 2.0 * jnp.log(F.Lbb[-1, -1])
                    dnu = (_tangent_scalar(dA.n, jnp)
                           - jnp.where(reml, _tangent_scalar(dA.p, jnp), 0.0))
                    out = out + ly * dnu
            outs.append(out)
        return jnp.stack(vals), jnp.stack(outs)

    wlogdet.defjvp(_jvp, symbolic_zeros=True)

    def objective(theta, A, reml=True):
        theta = jnp.asarray(theta, jnp.float64)
        reml = jnp.asarray(reml)
        return wlogdet(theta, A, reml, ("criterion",))[0] + _constant(A, reml, jnp)

    return be, ops, wlogdet, objective


def _tangent(dx, g, jnp):
    import jax
    if isinstance(dx, jax.custom_derivatives.SymbolicZero):
        return jnp.zeros((), g.dtype)
    return jnp.dot(g, dx)


def _tangent_scalar(dx, jnp):
    import jax
    if isinstance(dx, jax.custom_derivatives.SymbolicZero):
        return 0.0
    return dx


def _pair(dx, g, jnp):
    import jax
    if isinstance(dx, jax.custom_derivatives.SymbolicZero):
        return jnp.zeros((), g.dtype)
    return jnp.sum(dx * g)


def objective(theta, A: Blocks, reml=True):
    """The profiled REML criterion (``reml``) or deviance at ``theta``: lme4's
    ``devfun``, as a pure JAX function of theta (lme4's layout) and the blocks."""
    return _jax_funcs()[3](theta, A, reml)


def weighted_logdet(theta, A: Blocks, reml, which: tuple[str, ...]):
    """sum_i w_i log L_ii^2 for each row-weight choice in ``which`` (names of
    :func:`weights`), as a vector (JAX, differentiable: one factorization, one
    selected inverse per choice)."""
    import jax.numpy as jnp
    return _jax_funcs()[2](jnp.asarray(theta, jnp.float64), A, jnp.asarray(reml), tuple(which))


def parts(theta, A: Blocks):
    """(log|L_Z|^2, log|R_X|^2, pwrss) at ``theta`` (JAX, differentiable), log|R_X|^2
    in the original basis of X (the stable basis's constant added)."""
    import jax.numpy as jnp
    ldz, ldx, ly = weighted_logdet(theta, A, True, ("z", "x", "y"))
    return ldz, ldx + A.logdet_x, jnp.exp(ly)
