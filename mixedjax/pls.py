"""The profiled REML/ML criterion of a linear mixed model as a pure JAX function.

Model (Bates et al. 2015, "Fitting linear mixed-effects models using lme4",
JSS 67(1), sections 3.1-3.4):  y = X beta + Z Lambda_theta u + eps with
u ~ N(0, sigma^2 I_q), eps ~ N(0, sigma^2 I_n).

For a given theta the criterion needs the Cholesky factor of

    M(theta) = [[Lambda' Z'Z Lambda + I, Lambda' Z'X, Lambda' Z'y],
                [.,                      X'X,         X'y        ],
                [.,                      .,           y'y        ]]

whose pieces are precomputed once (:func:`build_arrays`), so nothing per
evaluation touches the n rows.  The random-effects terms are ordered by
decreasing number of levels.  The first term's diagonal block is block diagonal
(one k0 x k0 block per level): it is factored as a batch of small Cholesky
factors.  Its coupling to the remaining columns ("rest": later terms, then X,
then y) is kept as a sparse list of non-zero (level, column) entries, and the
Schur complement of the first block is formed over precomputed pairs of entries
that share a level (a segment sum, never a dense product).  The rest block, where
crossed terms fill in, is small and factored densely.  This is the blocked
factorization of MixedModels.jl (Bates et al., "MixedModels.jl", JOSS 2019),
written with fixed shapes so that it jit-compiles, differentiates and vmaps.

With L the factor of M, r = L[-1, -1] and pwrss = r^2 (JSS eq. 34):

    ML:   d(theta)   = log|L_Z|^2 + n (1 + log(2 pi pwrss / n))                (eq. 35)
    REML: d_R(theta) = log|L_Z|^2 + log|R_X|^2
                       + (n - p)(1 + log(2 pi pwrss / (n - p)))                (eq. 42)
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import layout as _layout_np
# The NumPy side (structure, precomputation, theta's layout, result containers) is
# in layout, which needs no JAX; its public names are re-exported here.
from .layout import (Factor, PLSArrays, Solution, Structure, bucket,  # noqa: F401
                     initial_theta, lower_bounds, rectify_theta, _tril_indices, _weighted,
                     _layout)

jax.tree_util.register_pytree_node_class(PLSArrays)

__all__ = ["Structure", "PLSArrays", "build_arrays", "objective", "solve", "theta_to_lambdas",
           "initial_theta", "rectify_theta", "lower_bounds", "ResponseMap", "response_map",
           "with_response"]


def to_device(A: PLSArrays) -> PLSArrays:
    """``A`` with its leaves as device arrays (float64, int32 indices)."""
    # Cast in NumPy and transfer with device_put: jnp.asarray compiles a small XLA
    # program per shape or dtype change, tens of milliseconds in a fresh process.
    return jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a)), A)


def build_arrays(terms, X: np.ndarray, y: np.ndarray, pad: bool = True, weights=None,
                 offset=None) -> PLSArrays:
    """:func:`mixedjax.layout.build_arrays` (the blocks of [Z X y]'[Z X y] for
    :func:`objective`), on the device."""
    return to_device(_layout_np.build_arrays(terms, X, y, pad=pad, weights=weights,
                                             offset=offset))


class ResponseMap(NamedTuple):
    """What maps a response vector y to the response parts of :class:`PLSArrays`.

    Only Z'y, X'y and y'y depend on y (DESIGN.md section 2), so a simulation study
    with a fixed design refits from these sums alone.  Rows are already scaled by
    sqrt(prior weight); ``offset`` is subtracted from y first.
    """

    codes0: jax.Array      # (n,) level of the first term
    z0: jax.Array          # (n, k0)
    rest_cols: jax.Array   # (n, K) Z_rest column of each row's entries
    rest_z: jax.Array      # (n, K)
    X: jax.Array           # (n, p) padded
    sqrtw: jax.Array       # (n,)
    offset: jax.Array      # (n,)


def response_map(terms, X: np.ndarray, pad: bool = True, weights=None,
                 offset=None) -> ResponseMap:
    """The :class:`ResponseMap` of a design (same layout as :func:`build_arrays`)."""
    n = X.shape[0]
    sw = np.ones(n) if weights is None else np.sqrt(np.asarray(weights, np.float64))
    off = np.zeros(n) if offset is None else np.asarray(offset, np.float64)
    terms, X, _ = _weighted(terms, X, np.zeros(n), weights, None)
    _, Xp, cols, zvals = _layout(terms, X, pad)
    as_f = lambda a: jnp.asarray(a, dtype=jnp.float64)
    return ResponseMap(codes0=jnp.asarray(terms[0].codes, jnp.int32), z0=as_f(terms[0].Z),
                       rest_cols=jnp.asarray(cols, jnp.int32), rest_z=as_f(zvals),
                       X=as_f(Xp), sqrtw=as_f(sw), offset=as_f(off))


def with_response(A: PLSArrays, R: ResponseMap, y) -> PLSArrays:
    """``A`` with its response parts (Z'y, X'y, y'y) recomputed for response ``y``.

    Pure jnp and O(n) per call: ``jax.vmap(with_response, (None, None, 0))`` maps a
    matrix of simulated responses to a batch of arrays for :func:`objective`.
    """
    s = A.structure
    yw = (jnp.asarray(y, jnp.float64) - R.offset) * R.sqrtw
    b1y = jax.ops.segment_sum(R.z0 * yw[:, None], R.codes0, num_segments=s.m[0])
    if s.q_rest:
        rzy = jax.ops.segment_sum((R.rest_z * yw[:, None]).reshape(-1),
                                  R.rest_cols.reshape(-1), num_segments=s.q_rest)
    else:
        rzy = A.rzy
    return A.replace(b1y=b1y, rzy=rzy, xty=R.X.T @ yw, yty=yw @ yw)


# ----------------------------------------------------------------------------------
# theta <-> Lambda
# ----------------------------------------------------------------------------------
def theta_to_lambdas(theta, structure: Structure):
    """theta -> list of k x k lower-triangular relative covariance factors."""
    out = []
    for k, sl in zip(structure.k, structure.theta_slices):
        r, c = _tril_indices(k)
        out.append(jnp.zeros((k, k), theta.dtype).at[r, c].set(theta[sl]))
    return out


# ----------------------------------------------------------------------------------
# Small batched linear algebra (k is tiny; unrolled loops vectorize over the batch)
# ----------------------------------------------------------------------------------
def _chol_small(A):
    """Cholesky factors of a batch (..., k, k) of small SPD matrices."""
    k = A.shape[-1]
    if k == 1:
        return jnp.sqrt(A)
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        s = A[..., j, j]
        for t in range(j):
            s = s - L[j][t] ** 2
        L[j][j] = jnp.sqrt(s)
        for i in range(j + 1, k):
            s = A[..., i, j]
            for t in range(j):
                s = s - L[i][t] * L[j][t]
            L[i][j] = s / L[j][j]
    zero = jnp.zeros_like(A[..., 0, 0])
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(k)], -1)
                      for i in range(k)], -2)


def _mm_small(a, b):
    """a @ b for small inner dimension, as broadcast-multiply-sum.

    XLA fuses these into elementwise loops; batched tiny dot products instead
    become separate kernels that are slow to compile and to run on CPU.
    """
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _forward_small(L, B):
    """Solve L X = B for a batch of small lower-triangular L (..., k, k), B (..., k, s)."""
    k = L.shape[-1]
    if k == 1:
        return B / L
    rows = []
    for i in range(k):
        s = B[..., i, :]
        for t in range(i):
            s = s - L[..., i, t, None] * rows[t]
        rows.append(s / L[..., i, i, None])
    return jnp.stack(rows, -2)


def _backward_small(L, B):
    """Solve L' X = B for a batch of small lower-triangular L (..., k, k), B (..., k, s)."""
    k = L.shape[-1]
    if k == 1:
        return B / L
    rows = [None] * k
    for i in reversed(range(k)):
        s = B[..., i, :]
        for t in range(i + 1, k):
            s = s - L[..., t, i, None] * rows[t]
        rows[i] = s / L[..., i, i, None]
    return jnp.stack(rows, -2)


def _scale_rest(M, lams, structure: Structure, side: str):
    """Multiply the Z_rest columns (side='right') or rows ('left') of M by Lambda_rest."""
    if side == "left":
        return _scale_rest(M.T, lams, structure, "right").T
    pieces, start = [], 0
    for lam, k, m in zip(lams[1:], structure.k[1:], structure.m[1:]):
        blk = M[:, start:start + k * m].reshape(M.shape[0], m, k)
        pieces.append((blk @ lam).reshape(M.shape[0], m * k))
        start += k * m
    pieces.append(M[:, start:])
    return jnp.concatenate(pieces, axis=1)


# ----------------------------------------------------------------------------------
# Factorization and criterion
# ----------------------------------------------------------------------------------
def dense_w(w_ent, A: PLSArrays):
    """The first term's rows of the off-diagonal factor as a dense (m0 k0, q_rest) matrix."""
    s = A.structure
    Wd = jnp.zeros((s.m[0], s.q_rest, s.k[0]), w_ent.dtype).at[A.ent_a, A.ent_c].add(w_ent)
    return jnp.swapaxes(Wd, 1, 2).reshape(s.m[0] * s.k[0], s.q_rest)


def factor(theta, A: PLSArrays) -> Factor:
    """First block of the blocked Cholesky factorization of M(theta) and the Schur
    complement S of the rest (see module docstring)."""
    s = A.structure
    lams = theta_to_lambdas(theta, s)
    lam0 = lams[0]
    k0 = s.k[0]
    qr, p = s.q_rest, s.p

    # First term: m0 independent k0 x k0 blocks Lambda0' D_a Lambda0 + I.
    M11 = _mm_small(_mm_small(lam0.T, A.d1), lam0) + jnp.eye(k0)
    L11 = _chol_small(M11)
    bxy = jnp.concatenate([A.b1x, A.b1y[..., None]], axis=-1)     # (m0, k0, p + 1)
    w_xy = _forward_small(L11, _mm_small(lam0.T, bxy))              # (m0, k0, p + 1)

    # Schur complement of the rest, unscaled by Lambda_rest:
    #   U = sum_a B_a' Lambda0 M11_a^{-1} Lambda0' B_a = sum_a W_a' W_a.
    u_xy = jnp.einsum("aki,akj->ij", w_xy, w_xy)
    if qr:
        w_ent = _forward_small(L11[A.ent_a], _mm_small(A.ent_v[:, None, :], lam0)
                               .swapaxes(-1, -2))[..., 0]
        if s.dense_w:
            Wd = dense_w(w_ent, A)
            u_zz = Wd.T @ Wd
        else:
            # Each unordered pair once: entries of one level have distinct columns, so
            # i < j lands off the diagonal and its mirror comes from the transpose.
            pair_vals = jnp.sum(w_ent[A.pair_i] * w_ent[A.pair_j], axis=-1)
            half = jnp.zeros((qr, qr), theta.dtype).at[
                A.ent_c[A.pair_i], A.ent_c[A.pair_j]].add(pair_vals)
            u_zz = half + half.T - jnp.diag(jnp.diagonal(half))
        u_zxy = jax.ops.segment_sum(jnp.einsum("ek,ekj->ej", w_ent, w_xy[A.ent_a]), A.ent_c,
                                    num_segments=qr)
        R0 = jnp.block([[A.rzz, A.rzx, A.rzy[:, None]],
                        [A.rzx.T, A.xtx, A.xty[:, None]],
                        [A.rzy[None, :], A.xty[None, :], A.yty[None, None]]])
        U = jnp.block([[u_zz, u_zxy], [u_zxy.T, u_xy]])
        S = _scale_rest(_scale_rest(R0 - U, lams, s, "right"), lams, s, "left")
        S = S + jnp.diag(jnp.concatenate([jnp.ones(qr), jnp.zeros(p + 1)]))
    else:
        w_ent = jnp.zeros((0, k0), theta.dtype)
        R0 = jnp.block([[A.xtx, A.xty[:, None]], [A.xty[None, :], A.yty[None, None]]])
        S = R0 - u_xy
    return Factor(L11=L11, w_ent=w_ent, w_xy=w_xy, S=S)


# The criterion depends on S only through log-determinants of three nested leading
# blocks (Z_rest; Z_rest and X; all), because the Cholesky factor of a leading block
# is the leading block of the Cholesky factor.  Differentiating LAPACK's Cholesky
# twice (for Newton's Hessian) is slow to compile and to run; the custom JVPs below
# reduce every derivative order to matrix products:
#   d log|B| = tr(B^-1 dB),   d B^-1 = -B^-1 dB B^-1.
@jax.custom_jvp
def spd_inverse(S):
    """Inverse of a symmetric positive definite matrix from its Cholesky factor."""
    L = jnp.linalg.cholesky(S)
    Linv = jax.scipy.linalg.solve_triangular(L, jnp.eye(S.shape[-1], dtype=S.dtype),
                                             lower=True)
    return Linv.T @ Linv


@spd_inverse.defjvp
def _spd_inverse_jvp(primals, tangents):
    (S,), (dS,) = primals, tangents
    Sinv = spd_inverse(S)
    return Sinv, -Sinv @ dS @ Sinv


def leading_inverses(S, sizes: tuple[int, ...]):
    """Inverses of the leading blocks S[:k, :k], k in ``sizes``, from one inverse.

    With S^-1 = [[P, Q], [Q', R]] partitioned at k, the leading block's inverse is
    S[:k, :k]^-1 = P - Q R^-1 Q' (the Schur complement in S^-1).  The trailing part
    (X and y columns) is small, so every further block costs O(k^2 (N - k)) instead
    of another O(k^3) inverse, and its derivatives (through ``spd_inverse``'s rule)
    are two dense products per direction in all.
    """
    N = S.shape[-1]
    Sinv = spd_inverse(S)
    out = []
    for k in sizes:
        if k == N:
            out.append(Sinv)
        else:
            Q = Sinv[:k, k:]
            out.append(Sinv[:k, :k] - Q @ spd_inverse(Sinv[k:, k:]) @ Q.T)
    return tuple(out)


def make_leading_logdets(cholesky, inverses):
    """``leading_logdets(S, sizes)``: log det S[:s, :s] for each s in ``sizes`` (0
    gives 0) from one factor ``cholesky(S)``, differentiated by
    d log|B| = tr(B^-1 dB) with the blocks' inverses from ``inverses(S, sizes)``, so
    no derivative passes through the factorization itself.  (:mod:`mixedjax.batchfit`
    builds its LAPACK-free twin from the same rule.)"""

    @functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
    def leading_logdets(S, sizes: tuple[int, ...]):
        L = cholesky(S)
        cum = jnp.concatenate([jnp.zeros(1, S.dtype),
                               2.0 * jnp.cumsum(jnp.log(jnp.diagonal(L)))])
        return cum[jnp.array(sizes)]

    @leading_logdets.defjvp
    def _jvp(sizes, primals, tangents):
        (S,), (dS,) = primals, tangents
        out = leading_logdets(S, sizes)
        nonzero = tuple(k for k in sizes if k)
        invs = dict(zip(nonzero, inverses(S, nonzero)))
        dout = [jnp.sum(invs[k] * dS[:k, :k]) if k else jnp.zeros((), S.dtype) for k in sizes]
        return out, jnp.stack(dout)

    return leading_logdets


leading_logdets = make_leading_logdets(jnp.linalg.cholesky, leading_inverses)


def _log_diag(L):
    return jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1))


def criterion_parts(F: Factor, A: PLSArrays):
    """(log|L_Z|^2, log|R_X|^2, pwrss) from the factor."""
    qr, p = A.structure.q_rest, A.structure.p
    ld = leading_logdets(F.S, (qr, qr + p, qr + p + 1))
    logdet_z = 2.0 * jnp.sum(_log_diag(F.L11)) + ld[0]
    logdet_x = ld[1] - ld[0]
    pwrss = jnp.exp(ld[2] - ld[1])
    return logdet_z, logdet_x, pwrss


def objective(theta, A: PLSArrays, reml: bool = True):
    """Profiled deviance (ML) or REML criterion at ``theta``; lme4's ``devfun``.

    A pure function of ``theta`` (lme4's layout) and the precomputed arrays:
    ``jax.jit``, ``jax.grad``, ``jax.hessian`` and ``jax.vmap`` apply.
    """
    theta = jnp.asarray(theta, dtype=jnp.float64)
    logdet_z, logdet_x, pwrss = criterion_parts(factor(theta, A), A)
    return _criterion(logdet_z, logdet_x, pwrss, A, reml)


def _criterion(logdet_z, logdet_x, pwrss, A: PLSArrays, reml: bool):
    dof = A.n - A.p if reml else A.n
    # Prior weights scale the residual covariance to sigma^2 W^-1, whose log
    # determinant contributes -sum(log w) (lme4's ldW).
    value = logdet_z + dof * (1.0 + jnp.log(2.0 * math.pi * pwrss / dof)) - A.ldw
    return value + logdet_x if reml else value


def solve(theta, A: PLSArrays, reml: bool = True) -> Solution:
    """Solve the penalized least squares problem at ``theta`` (JSS eqs. 16-18)."""
    theta = jnp.asarray(theta, dtype=jnp.float64)
    s = A.structure
    F = factor(theta, A)
    logdet_z, logdet_x, pwrss = criterion_parts(F, A)
    qr, p = s.q_rest, s.p
    Lr = jnp.linalg.cholesky(F.S)
    # [u_rest; beta] from the rest factor: Lr_A' x = c, c = last row of Lr.
    LA = Lr[:-1, :-1]
    c = Lr[-1, :-1]
    x = jax.scipy.linalg.solve_triangular(LA, c, lower=True, trans="T")
    u_rest, beta = x[:qr], x[qr:]
    # First term: L11' u0 = w_y - W_A x (per level).  The stored entries are not
    # yet scaled by Lambda_rest, so they multiply b_rest = Lambda_rest u_rest.
    wx = F.w_xy[..., :p] @ beta                                       # (m0, k0)
    if qr:
        lams = theta_to_lambdas(theta, s)
        b_rest = _scale_rest(u_rest[None, :], [l.T for l in lams], s, "right")[0]
        contrib = F.w_ent * b_rest[A.ent_c][:, None]
        wx = wx + jax.ops.segment_sum(contrib, A.ent_a, num_segments=s.m[0])
    rhs = F.w_xy[..., p] - wx
    u0 = _backward_small(F.L11, rhs[..., None])[..., 0]
    sigma = jnp.sqrt(pwrss / (A.n - A.p if reml else A.n))
    obj = _criterion(logdet_z, logdet_x, pwrss, A, reml)
    return Solution(beta=beta, u0=u0, u_rest=u_rest, sigma=sigma, pwrss=pwrss,
                    logdet_z=logdet_z, logdet_x=logdet_x, objective=obj, factor=F, Lr=Lr)
