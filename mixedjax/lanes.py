"""Many small fits at once, written lane-wise: every matrix entry is an array over lanes.

Under ``jax.vmap`` the batch axis of a fit's k x k blocks ends up as the major axis,
and XLA on CPU runs each of the hundreds of tiny matrix operations of a Newton
iteration as its own kernel over (lanes, m0, k, k) arrays; the cost follows the
number of operations, not the arithmetic.  Here the closed-form criterion of
:mod:`mixedjax.analytic` is instead written with small matrices whose *entries*
are arrays: shape (m0, lanes) for per-level quantities, (lanes,) for global ones,
or a constant of the design.  Every operation is then elementwise over long
contiguous arrays (XLA fuses them into a few loops), and entries known to be zero
(the upper triangle of Lambda, absent couplings) are skipped while tracing.  For
sleepstudy the criterion costs about 8 times less per lane than the vmapped form.

The formulas, and the Newton iteration (:func:`newton`), are those of
:mod:`mixedjax.analytic` and :func:`mixedjax.batchfit.newton`; only the data layout
differs.  Used by :func:`mixedjax.batchfit.fit_chunk` for designs that are small
enough (:func:`applicable`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import analytic, pls
from .optimize import armijo_test

__all__ = ["applicable", "Data", "data", "value_grad_hess", "newton"]

# The kernel is unrolled entry by entry, so its size (and XLA's compile time) grows
# with (ntheta * Ns)^2, Ns = q_rest + p + 1.  Measured on 2 CPU cores, compiling the
# chunk kernel: sleepstudy (ntheta 3, Ns 3) 3.3 s lane-wise vs 2.9 s vmapped, but
# ntheta 3 with Ns 5 takes 6.5 s vs 3.3 s; a scalar intercept crossed with a second
# factor (ntheta 2, Ns 5) 2.9 s vs 3.1 s.  Beyond this budget the vmapped kernel is
# used: it compiles faster and its run time is within a few times.
MAX_SIZE = 100


def applicable(structure: pls.Structure, dense_coupling: bool) -> bool:
    """Whether the lane-wise kernel handles this design."""
    ns = structure.q_rest + structure.p + 1
    return (analytic.applicable(structure, dense_coupling)
            and (structure.ntheta * ns) ** 2 <= MAX_SIZE)


# ----------------------------------------------------------------------------------
# Small matrices of arrays; None is a structural zero
# ----------------------------------------------------------------------------------
def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _mul(a, b):
    if a is None or b is None:
        return None
    if isinstance(a, float) and a == 1.0:
        return b
    if isinstance(b, float) and b == 1.0:
        return a
    return a * b


def _neg(a):
    return None if a is None else -a


def mm(A, B):
    """Matrix product of two nested lists."""
    inner = len(B)
    out = []
    for row in A:
        out_row = []
        for j in range(len(B[0])):
            acc = None
            for t in range(inner):
                acc = _add(acc, _mul(row[t], B[t][j]))
            out_row.append(acc)
        out.append(out_row)
    return out


def tr(A):
    return [list(col) for col in zip(*A)]


def madd(A, B, sign=1.0):
    if sign == 1.0:
        return [[_add(a, b) for a, b in zip(ra, rb)] for ra, rb in zip(A, B)]
    return [[_add(a, _neg(b)) for a, b in zip(ra, rb)] for ra, rb in zip(A, B)]


def eye(n):
    return [[1.0 if i == j else None for j in range(n)] for i in range(n)]


def sum_levels(A):
    """Sum each per-level entry (m0, lanes) over the levels."""
    return [[None if a is None else jnp.sum(a, axis=0) for a in row] for row in A]


def _zero_to_float(a, like):
    return jnp.zeros_like(like) if a is None else jnp.broadcast_to(a, like.shape)


def chol(S):
    """Lower Cholesky factor of a symmetric matrix of lane arrays (lower triangle read)."""
    n = len(S)
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        s = S[j][j]
        for t in range(j):
            s = _add(s, _neg(_mul(L[j][t], L[j][t])))
        L[j][j] = jnp.sqrt(s)
        for i in range(j + 1, n):
            s = S[i][j]
            for t in range(j):
                s = _add(s, _neg(_mul(L[i][t], L[j][t])))
            L[i][j] = None if s is None else s / L[j][j]
    return L


def tri_inv(L):
    """Inverse of a lower-triangular matrix of lane arrays."""
    n = len(L)
    X = [[None] * n for _ in range(n)]
    for j in range(n):
        X[j][j] = 1.0 / L[j][j]
        for i in range(j + 1, n):
            s = None
            for t in range(j, i):
                s = _add(s, _mul(L[i][t], X[t][j]))
            X[i][j] = None if s is None else -s / L[i][i]
    return X


def trace(A):
    acc = None
    for i in range(len(A)):
        acc = _add(acc, A[i][i])
    return acc


def trace_prod(A, B):
    """tr(A B)."""
    acc = None
    for i in range(len(A)):
        for t in range(len(B)):
            acc = _add(acc, _mul(A[i][t], B[t][i]))
    return acc


def lead(A, s):
    return [row[:s] for row in A[:s]]


# ----------------------------------------------------------------------------------
# Design data in lane-wise form
# ----------------------------------------------------------------------------------
class Data(NamedTuple):
    """Lane-wise response parts: b1y (m0, k0, lanes), rzy (q_rest, lanes),
    xty (p, lanes), yty (lanes,)."""

    b1y: jax.Array
    rzy: jax.Array
    xty: jax.Array
    yty: jax.Array


def data(A: pls.PLSArrays, R: pls.ResponseMap, Y) -> Data:
    """The response parts of every row of ``Y`` (lanes, n), lanes last."""
    Ab = jax.vmap(lambda y: pls.with_response(A, R, y))(Y)
    rzy = Ab.rzy if A.structure.q_rest else jnp.zeros((Y.shape[0], 0))
    return Data(b1y=jnp.moveaxis(Ab.b1y, 0, -1), rzy=jnp.moveaxis(rzy, 0, -1),
                xty=jnp.moveaxis(Ab.xty, 0, -1), yty=Ab.yty)


def _blocks(A: pls.PLSArrays, V, D: Data):
    """D (k0 x k0), C (k0 x Ns), per-level entries (m0, 1 or lanes), and R0 (Ns x Ns)
    as nested lists.  The design arrays may be traced (one compiled kernel serves
    every design of a structure), so only structural zeros are skipped."""
    s = A.structure
    k0, qr, p = s.k[0], s.q_rest, s.p
    C = []
    for k in range(k0):
        row = [V[:, k, c][:, None] for c in range(qr)]
        row += [A.b1x[:, k, j][:, None] for j in range(p)]
        row.append(D.b1y[:, k, :])
        C.append(row)
    ns = qr + p + 1
    R0 = [[None] * ns for _ in range(ns)]
    for i in range(qr):
        for j in range(qr):
            R0[i][j] = A.rzz[i, j]
        for j in range(p):
            R0[i][qr + j] = R0[qr + j][i] = A.rzx[i, j]
        R0[i][ns - 1] = R0[ns - 1][i] = D.rzy[i]
    for i in range(p):
        for j in range(p):
            R0[qr + i][qr + j] = A.xtx[i, j]
        R0[qr + i][ns - 1] = R0[ns - 1][qr + i] = D.xty[i]
    R0[ns - 1][ns - 1] = D.yty
    Dm = [[A.d1[:, k, l][:, None] for l in range(k0)] for k in range(k0)]
    return Dm, C, R0


# ----------------------------------------------------------------------------------
# The criterion and its derivatives (formulas of mixedjax.analytic)
# ----------------------------------------------------------------------------------
def _solution(Ls, qr, p, nu, like):
    """beta, standard errors and sigma from the factor of S (JSS eqs. 16-18, 54)."""
    ns = len(Ls)
    zero = jnp.zeros_like(like)
    x = [None] * (ns - 1)
    for i in reversed(range(ns - 1)):
        acc = Ls[ns - 1][i]
        for t in range(i + 1, ns - 1):
            acc = _add(acc, _neg(_mul(Ls[t][i], x[t])))
        x[i] = _zero_to_float(acc, zero) / Ls[i][i]
    sigma = jnp.sqrt(Ls[ns - 1][ns - 1] ** 2 / nu)
    Rinv = tri_inv([row[qr:qr + p] for row in Ls[qr:qr + p]])
    se = []
    for j in range(p):
        acc = None
        for i in range(j, p):
            acc = _add(acc, _mul(Rinv[i][j], Rinv[i][j]))
        se.append(sigma * jnp.sqrt(acc))
    return jnp.stack(x[qr:], -1), jnp.stack(se, -1), sigma


def value_grad_hess(theta, A: pls.PLSArrays, V, D: Data, reml, order: int = 2):
    """Criterion (lanes,), gradient (lanes, nt) and Hessian (lanes, nt, nt) at
    ``theta`` (lanes, nt) for the responses ``D``; as :func:`analytic.value_grad_hess`
    lane by lane.  ``reml``: a boolean (may be traced).  ``order`` -1 gives
    (criterion, beta, standard errors, sigma) instead."""
    s = A.structure
    k0, qr, p = s.k[0], s.q_rest, s.p
    ns = qr + p + 1
    K = analytic.constants(s)
    n0 = K.E0.shape[0]
    nt = theta.shape[1]
    th = [theta[:, j] for j in range(nt)]
    ri, ci = [int(v) for v in K.ri], [int(v) for v in K.ci]

    lam0 = [[None] * k0 for _ in range(k0)]
    for i in range(n0):
        lam0[ri[i]][ci[i]] = th[i]
    Dm, C, R0 = _blocks(A, V, D)
    Q = mm(Dm, lam0)
    M = madd(mm(tr(lam0), Q), eye(k0))
    L = chol(M)
    Linv = tri_inv(L)
    P = mm(tr(Linv), Linv)
    logdet_m = None
    for j in range(k0):
        logdet_m = _add(logdet_m, 2.0 * jnp.log(L[j][j]))
    U = mm(lam0, P)
    T = mm(U, tr(lam0))
    Ct = tr(C)
    Hm = madd(R0, sum_levels(mm(Ct, mm(T, C))), -1.0)

    # Lambda_e: the later terms' factors (kron with the identity over levels), then I.
    lam_e = [[None] * ns for _ in range(ns)]
    F = []                                    # (position list) per rest direction
    start, idx = 0, n0
    for k, m in zip(s.k[1:], s.m[1:]):
        rr, cc = pls._tril_indices(k)
        for a_r, a_c in zip(rr, cc):
            pos = [(start + lv * k + int(a_r), start + lv * k + int(a_c)) for lv in range(m)]
            for (i, j) in pos:
                lam_e[i][j] = th[idx]
            F.append(pos)
            idx += 1
        start += k * m
    for i in range(qr, ns):
        lam_e[i][i] = 1.0
    lam_et = tr(lam_e)
    S = mm(lam_et, mm(Hm, lam_e))
    for i in range(qr):
        S[i][i] = _add(S[i][i], 1.0)
    Ls = chol(S)

    reml = jnp.asarray(reml)
    nu = jnp.where(reml, A.n - A.p, A.n)
    coef = {qr: jnp.where(reml, 0.0, 1.0), qr + p: jnp.where(reml, 1.0 - nu, -nu), ns: nu}
    sizes = [sz for sz in (qr, qr + p, ns) if sz]
    value = jnp.sum(logdet_m, axis=0) + nu * (1.0 + jnp.log(2.0 * math.pi / nu)) - A.ldw
    cum, ldiag = {}, None
    for j in range(ns):
        ldiag = _add(ldiag, 2.0 * jnp.log(Ls[j][j]))
        cum[j + 1] = ldiag
    for sz in sizes:
        value = value + coef[sz] * cum[sz]
    if order == 0:
        return value, None, None
    if order < 0:
        return (value,) + _solution(Ls, qr, p, nu, value)

    Lsinv = tri_inv(Ls)
    N = madd(eye(k0), mm(T, Dm), -1.0)
    KP = mm(P, tr(Q))
    CN = mm(Ct, N)                             # Ns x k0, per level
    CU = mm(Ct, U)
    cn = [[CN[r][ri[i]] for r in range(ns)] for i in range(n0)]
    cu = [[CU[r][ci[i]] for r in range(ns)] for i in range(n0)]

    def lev_outer(terms):
        """sum_a of sum_t w_t x_t y_t' as an Ns x Ns list (w per level or None=1)."""
        out = [[None] * ns for _ in range(ns)]
        for r in range(ns):
            for c in range(ns):
                acc = None
                for w, x, y in terms:
                    acc = _add(acc, _mul(w, _mul(x[r], y[c])) if w is not None
                               else _mul(x[r], y[c]))
                out[r][c] = None if acc is None else jnp.sum(acc, axis=0)
        return out

    def sym(X):
        return madd(X, tr(X))

    def apply_lam(X):
        return mm(lam_et, mm(X, lam_e))

    def f_right(X, pos):
        """X F_r for F_r with ones at ``pos``."""
        out = [[None] * ns for _ in range(ns)]
        for (i, j) in pos:
            for r in range(ns):
                out[r][j] = _add(out[r][j], X[r][i])
        return out

    dH0 = [[[_neg(a) for a in row] for row in
            lev_outer([(None, cn[i], cu[i]), (None, cu[i], cn[i])])] for i in range(n0)]
    dS = [apply_lam(dH0[i]) for i in range(n0)]
    lamH = mm(lam_et, Hm)
    for pos in F:
        dS.append(sym(f_right(lamH, pos)))

    grad_terms = [None] * nt
    for i in range(n0):
        grad_terms[i] = 2.0 * jnp.sum(KP[ci[i]][ri[i]], axis=0)
    Binv, Z = {}, {}
    for sz in sizes:
        Li = lead(Lsinv, sz)
        Binv[sz] = mm(tr(Li), Li)
        Z[sz] = [mm(Binv[sz], lead(dS[i], sz)) for i in range(nt)]
        for i in range(nt):
            grad_terms[i] = _add(grad_terms[i], _mul(coef[sz], trace(Z[sz][i])))
    zero = jnp.zeros_like(value)
    grad = jnp.stack([_zero_to_float(g, zero) for g in grad_terms], axis=-1)
    if order == 1:
        return value, grad, None

    DN = mm(Dm, N)
    DU = mm(Dm, U)
    H = [[None] * nt for _ in range(nt)]
    for i in range(nt):
        for j in range(i, nt):
            if j < n0:
                h = jnp.sum(_add(_mul(P[ci[j]][ci[i]], DN[ri[i]][ri[j]]),
                                 _neg(_mul(KP[ci[j]][ri[i]], KP[ci[i]][ri[j]]))), axis=0) * 2.0
                X = lev_outer([(_neg(DU[ri[j]][ci[i]]), cn[i], cu[j]),
                               (_neg(DN[ri[j]][ri[i]]), cu[i], cu[j]),
                               (P[ci[j]][ci[i]], cn[j], cn[i]),
                               (_neg(KP[ci[j]][ri[i]]), cn[j], cu[i])])
                d2S = apply_lam([[_neg(a) for a in row] for row in sym(X)])
            elif i < n0:
                h = None
                d2S = sym(f_right(mm(lam_et, dH0[i]), F[j - n0]))
            else:
                h = None
                FtH = tr(f_right(tr(Hm), F[i - n0]))         # F_i' H
                d2S = sym(f_right(FtH, F[j - n0]))
            for sz in sizes:
                t = _add(trace_prod(Binv[sz], lead(d2S, sz)),
                         _neg(trace_prod(Z[sz][i], Z[sz][j])))
                h = _add(h, _mul(coef[sz], t))
            H[i][j] = H[j][i] = h
    hess = jnp.stack([jnp.stack([_zero_to_float(h, zero) for h in row], -1) for row in H], -2)
    return value, grad, hess


# ----------------------------------------------------------------------------------
# Newton over lanes (the rules of mixedjax.batchfit.newton, batch axis explicit)
# ----------------------------------------------------------------------------------
class _State(NamedTuple):
    x: jax.Array       # (lanes, nt)
    conv: jax.Array
    it: jax.Array
    status: jax.Array


def _eigh(H, sweeps: int):
    """Eigenvalues and eigenvectors of symmetric matrices (lanes, n, n) by cyclic
    Jacobi rotations (as :func:`mixedjax.batchfit.jacobi_eigh`, unsorted), entry-wise
    over lanes."""
    n = H.shape[-1]
    A0 = tuple(tuple(0.5 * (H[:, i, j] + H[:, j, i]) for j in range(n)) for i in range(n))
    one, zero = jnp.ones_like(H[:, 0, 0]), jnp.zeros_like(H[:, 0, 0])
    V0 = tuple(tuple(one if i == j else zero for j in range(n)) for i in range(n))

    def rotate(A, V, p, q):
        A = [list(r) for r in A]
        V = [list(r) for r in V]
        apq = A[p][q]
        tau = (A[q][q] - A[p][p]) / (2.0 * jnp.where(apq == 0.0, 1.0, apq))
        t = jnp.sign(tau) / (jnp.abs(tau) + jnp.sqrt(1.0 + tau * tau))
        t = jnp.where(tau == 0.0, 1.0, t)
        t = jnp.where(apq == 0.0, 0.0, t)
        c = 1.0 / jnp.sqrt(1.0 + t * t)
        s = t * c
        rp, rq = A[p][:], A[q][:]
        A[p] = [c * a - s * b for a, b in zip(rp, rq)]
        A[q] = [s * a + c * b for a, b in zip(rp, rq)]
        for r in range(n):
            ap, aq = A[r][p], A[r][q]
            A[r][p], A[r][q] = c * ap - s * aq, s * ap + c * aq
            vp, vq = V[r][p], V[r][q]
            V[r][p], V[r][q] = c * vp - s * vq, s * vp + c * vq
        return A, V

    def sweep(_, carry):
        A, V = carry
        for p in range(n - 1):
            for q in range(p + 1, n):
                A, V = rotate(A, V, p, q)
        return tuple(map(tuple, A)), tuple(map(tuple, V))

    A, V = jax.lax.fori_loop(0, sweeps, sweep, (A0, V0))
    return [A[i][i] for i in range(n)], V


def direction(g, H, max_step):
    """:func:`mixedjax.batchfit._direction` for all lanes: the step from the
    eigenvalue-modified Hessian, the Newton decrement, the smallest eigenvalue and
    the scale."""
    n = g.shape[1]
    evals, V = _eigh(H, 6 if n <= 4 else 10)
    scale = jnp.maximum(functools.reduce(jnp.maximum, [jnp.abs(e) for e in evals]), 1.0)
    mod = [jnp.maximum(jnp.abs(e), 1e-10 * scale) for e in evals]
    gv = [sum(V[r][j] * g[:, r] for r in range(n)) for j in range(n)]
    step = jnp.stack([-sum(V[r][j] * gv[j] / mod[j] for j in range(n)) for r in range(n)], -1)
    emin, vmin, gvmin = evals[0], [V[r][0] for r in range(n)], gv[0]
    for j in range(1, n):
        take = evals[j] < emin
        emin = jnp.where(take, evals[j], emin)
        vmin = [jnp.where(take, V[r][j], v) for r, v in enumerate(vmin)]
        gvmin = jnp.where(take, gv[j], gvmin)
    v = jnp.stack(vmin, -1)
    v = jnp.where((gvmin > 0)[:, None], -v, v)
    norm = jnp.sqrt(jnp.sum(step * step, axis=1))
    saddle = (emin < -1e-8 * scale) & (norm < 1e-6)
    step = jnp.where(saddle[:, None], v * jnp.minimum(max_step, 1.0)[:, None], step)
    norm = jnp.sqrt(jnp.sum(step * step, axis=1))
    step = jnp.where((norm > max_step)[:, None],
                     step * (max_step / jnp.maximum(norm, 1e-300))[:, None], step)
    decrement = sum(gv[j] * gv[j] / mod[j] for j in range(n))
    return step, decrement, emin, scale


def newton(vgh, fun, x0, max_iter, gtol: float = 1e-6, xtol: float = 1e-10,
           max_step: float = 2.0):
    """Minimize lane-wise: ``vgh(x)`` gives (f, g, H) and ``fun(x)`` f for all lanes
    of ``x`` (lanes, nt).  Each lane follows :func:`mixedjax.batchfit.newton` exactly
    (same direction, line search and stopping rules) and is frozen once it stops,
    as under ``vmap``; ``max_iter`` (lanes,) caps each lane."""
    lanes_n = x0.shape[0]
    state = _State(x0, jnp.zeros(lanes_n, bool), jnp.zeros(lanes_n, jnp.int32),
                   jnp.full(lanes_n, -1, jnp.int32))

    def line_search(x, f, g, step, active):
        accept = armijo_test(f, jnp.sum(g * step, axis=1))

        def need(c):
            alpha, fnew, k = c
            return active & ~accept(alpha, fnew) & (k < 40)

        def body(c):
            alpha, fnew, k = c
            go = need(c)
            alpha = jnp.where(go, alpha * 0.5, alpha)
            fn = fun(x + alpha[:, None] * step)
            fn = jnp.where(jnp.isfinite(fn), fn, jnp.inf)
            return alpha, jnp.where(go, fn, fnew), k + go.astype(k.dtype)

        init = (jnp.full(lanes_n, 2.0), jnp.full(lanes_n, jnp.inf), jnp.zeros(lanes_n, jnp.int32))
        alpha, fnew, _ = jax.lax.while_loop(lambda c: jnp.any(need(c)), body, init)
        return alpha, accept(alpha, fnew)

    def body(s: _State) -> _State:
        active = s.status < 0
        f, g, H = vgh(s.x)
        norm_x = jnp.sqrt(jnp.sum(s.x * s.x, axis=1))
        step, decrement, min_eval, scale = direction(g, H, max_step * jnp.maximum(1.0, norm_x))
        conv = ((decrement <= gtol) & (min_eval >= -1e-6 * scale)
                & jnp.all(jnp.isfinite(g), axis=1))
        alpha, ok = line_search(s.x, f, g, step, active)
        xnew = jnp.where(ok[:, None], s.x + alpha[:, None] * step, s.x)
        small = (jnp.max(jnp.abs(alpha[:, None] * step), axis=1)
                 <= xtol * (1.0 + jnp.max(jnp.abs(s.x), axis=1)))
        stationary = (jnp.max(jnp.abs(g), axis=1) == 0.0) & jnp.all(step == 0.0, axis=1)
        status = jnp.where(stationary, 0, jnp.where(~ok, 2, jnp.where(small, 1, -1)))
        status = jnp.where((status < 0) & (s.it + 1 >= max_iter), 3, status)
        x_out = jnp.where(((status < 0) | ((status == 3) & ok))[:, None], xnew, s.x)
        keep = ~active
        return _State(x=jnp.where(keep[:, None], s.x, x_out),
                      conv=jnp.where(keep, s.conv, conv),
                      it=jnp.where(keep, s.it, s.it + 1),
                      status=jnp.where(keep, s.status, status).astype(jnp.int32))

    s = jax.lax.while_loop(lambda s: jnp.any(s.status < 0), body, state)
    return s.x, s.conv, s.it, s.status
