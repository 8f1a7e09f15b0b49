"""The eager (NumPy) optimizers, and the rules they share with the compiled ones.

:func:`newton_minimize_eager` and :func:`bfgs_minimize_eager` follow the same
step, line-search and stopping rules as :func:`mixedjax.optimize.newton_minimize`
and :func:`mixedjax.optimize.bfgs_minimize` (whose module explains them), on NumPy
arrays: a fit of a small model or of a large crossed design then runs without
compiling anything, and without importing JAX at all.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["NewtonResult", "newton_minimize_eager", "bfgs_minimize_eager", "armijo_test"]


class NewtonResult(NamedTuple):
    """Optimization record (all arrays, so it batches under vmap).

    ``status``: 0 gradient test met, 1 step below tolerance, 2 line search could not
    decrease the objective further (round-off level), 3 iteration limit.
    """

    # NumPy arrays from the eager optimizers, jax arrays from the compiled ones.
    x: np.ndarray
    fun: np.ndarray
    grad: np.ndarray
    hess: np.ndarray
    iterations: np.ndarray
    fun_evals: np.ndarray
    status: np.ndarray
    converged: np.ndarray


def _direction(g, H, max_step, xp=np):
    """Newton step from the eigenvalue-modified Hessian, and the Newton decrement.
    ``xp``: jax.numpy (traced) or numpy (eager)."""
    return _direction_eig(g, *xp.linalg.eigh(H), max_step, xp)


def _direction_eig(g, evals, evecs, max_step, xp=np):
    """:func:`_direction` from H's eigendecomposition (ascending eigenvalues)."""
    scale = xp.maximum(xp.max(xp.abs(evals)), 1.0)
    mod = xp.maximum(xp.abs(evals), 1e-10 * scale)
    gv = evecs.T @ g
    step = -evecs @ (gv / mod)
    # At a saddle the gradient is tiny but the curvature is negative: step along
    # the most negative eigenvector, oriented downhill (or arbitrarily when g = 0).
    neg = evals[0] < -1e-8 * scale
    v = evecs[:, 0]
    v = xp.where(gv[0] > 0, -v, v)
    saddle = neg & (xp.linalg.norm(step) < 1e-6)
    step = xp.where(saddle, v * xp.minimum(max_step, 1.0), step)
    norm = xp.linalg.norm(step)
    step = xp.where(norm > max_step, step * (max_step / xp.maximum(norm, 1e-300)), step)
    decrement = xp.sum(gv * gv / mod)
    return step, decrement


def armijo_test(f, slope, xp=np):
    """The line search's acceptance test ``accept(alpha, f_new)`` for a step with
    directional derivative ``slope`` from value ``f`` (arrays of any shape: one fit
    or many lanes; ``xp`` jax.numpy or numpy).

    Armijo's sufficient decrease, with one addition: once the predicted decrease is
    below the round-off of f, the test cannot judge the step, so a step that changes
    f by no more than that round-off is taken.  f carries more than eps * |f| of
    round-off (pwrss is y'y less the fitted part, and n log(pwrss) amplifies that
    cancellation), so the bound is generous.  Without this the iteration can stall
    with |theta - theta*| ~ sqrt(eps); a real increase (a saddle step) is still
    refused.
    """
    tol = 1e-13 * xp.maximum(xp.abs(f), 1.0)
    noise = 1e-10 * xp.maximum(xp.abs(f), 1.0)
    flat = -slope <= noise

    def accept(alpha, fnew):
        return (fnew <= f + 1e-4 * alpha * slope + tol) | (flat & (fnew <= f + noise))

    return accept


def newton_minimize_eager(vgh: Callable, fun: Callable, x0, max_iter: int = 200,
                          gtol: float = 1e-6, xtol: float = 1e-10,
                          max_step: float = 2.0) -> NewtonResult:
    """:func:`newton_minimize` in NumPy, for closed-form derivatives.

    ``vgh(x)`` returns (f, gradient, Hessian) and ``fun(x)`` the value, both on NumPy
    arrays.  The rules (step, line search, stopping, convergence test) are those of
    :func:`newton_minimize`, so both reach the same point; nothing is compiled,
    which makes a small model's first fit take milliseconds instead of seconds.
    """
    x = np.asarray(x0, dtype=np.float64).copy()
    it = nfev = 0
    status = -1
    f, g, H = np.inf, np.zeros_like(x), np.zeros((x.size, x.size))
    ahead = None
    while status < 0:
        if ahead is None:
            f, g, H = vgh(x)
            nfev += 1
        else:
            f, g, H = ahead
        f = float(f)
        step, _ = _direction(g, H, max_step * max(1.0, float(np.linalg.norm(x))), xp=np)
        accept = armijo_test(f, float(g @ step), xp=np)
        # The full step is usually taken: evaluating the derivatives there at once
        # saves the separate value call.  Not when the step is already below xtol
        # (the search ends there either way).
        tiny = np.max(np.abs(step)) <= xtol * (1.0 + np.max(np.abs(x)))
        trial = None if tiny else vgh(x + step)
        fnew = float(fun(x + step) if tiny else trial[0])
        alpha, fnew, nls = 1.0, fnew if np.isfinite(fnew) else np.inf, 1
        while not accept(alpha, fnew) and nls < 40:
            alpha *= 0.5
            fnew = float(fun(x + alpha * step))
            fnew = fnew if np.isfinite(fnew) else np.inf
            nls += 1
        ok = accept(alpha, fnew)
        small = np.max(np.abs(alpha * step)) <= xtol * (1.0 + np.max(np.abs(x)))
        stationary = np.max(np.abs(g)) == 0.0 and np.all(step == 0.0)
        status = 0 if stationary else 2 if not ok else 1 if small else -1
        if status < 0 and it + 1 >= max_iter:
            status = 3
        ahead = trial if (status < 0 and alpha == 1.0) else None
        if status < 0:
            x = x + alpha * step
        it += 1
        nfev += nls
    _, decrement = _direction(g, H, max_step, xp=np)
    evals = np.linalg.eigvalsh(H)
    scale = max(np.max(np.abs(evals)), 1.0)
    converged = bool(decrement <= gtol and evals[0] >= -1e-6 * scale and np.all(np.isfinite(g)))
    return NewtonResult(x=x, fun=np.asarray(f), grad=np.asarray(g), hess=np.asarray(H),
                        iterations=np.asarray(it), fun_evals=np.asarray(nfev),
                        status=np.asarray(status), converged=np.asarray(converged))


def _bfgs_update(Hinv, sk, yk, first: bool = False):
    """BFGS inverse-Hessian update (Nocedal & Wright, eq. 6.17), skipped without
    positive curvature along the step; ``first``: the identity it starts from is
    first scaled to the curvature seen along the step (eq. 6.20)."""
    sy = float(sk @ yk)
    if not sy > 1e-12 * np.linalg.norm(sk) * np.linalg.norm(yk):
        return Hinv
    if first:
        Hinv = Hinv * (sy / max(float(yk @ yk), 1e-300))
    rho = 1.0 / sy
    V = np.eye(len(sk)) - rho * np.outer(sk, yk)
    return V @ Hinv @ V.T + rho * np.outer(sk, sk)


def _bfgs_loop(value_grad, x, f, g, Hinv, it, max_iter, gtol, xtol, max_step, stop=None,
               final: float = 1e-3):
    """Iterations of :func:`bfgs_minimize` in NumPy from (x, f, g) with inverse
    Hessian ``Hinv`` (None: the identity, scaled after the first step as there),
    until the decrement is below ``final * gtol``; ``stop(x)`` ends the loop early
    (status -2).  Returns (x, f, g, Hinv, iterations, evaluations, status)."""
    scale_first = Hinv is None
    Hinv = np.eye(x.size) if Hinv is None else Hinv
    nfev, status = 0, -1
    while status == -1:
        step = -Hinv @ g
        limit = max_step * max(1.0, float(np.linalg.norm(x)))
        norm = float(np.linalg.norm(step))
        if norm > limit:
            step = step * (limit / norm)
        slope = float(g @ step)
        tol = 1e-13 * max(abs(f), 1.0)
        alpha, fnew, gnew, nls = 1.0, np.inf, g, 0
        while nls < 40:
            fnew, gnew = value_grad(x + alpha * step)
            fnew = float(fnew) if np.isfinite(fnew) else np.inf
            nls += 1
            if fnew <= f + 1e-4 * alpha * slope + tol:
                break
            alpha *= 0.5
        ok = fnew <= f + 1e-4 * alpha * slope + tol
        sk = alpha * step
        if ok:
            Hinv = _bfgs_update(Hinv, sk, gnew - g, first=scale_first)
            scale_first = False
        decrement = float(gnew @ Hinv @ gnew) if ok else np.inf
        small = np.max(np.abs(sk)) <= xtol * (1.0 + np.max(np.abs(x)))
        status = (2 if not ok else 0 if (np.max(np.abs(gnew)) == 0.0 or decrement <= final * gtol)
                  else 1 if small else -1)
        if status == -1 and it + 1 >= max_iter:
            status = 3
        if ok:
            x, f, g = x + sk, fnew, gnew
            if status == -1 and stop is not None and stop(x):
                status = -2
        it += 1
        nfev += nls
    return x, f, g, Hinv, it, nfev, status


def _modified_inverse(H):
    """Inverse of H with its eigenvalues replaced by |lambda| (floored), as in
    :func:`_direction`."""
    evals, evecs = np.linalg.eigh(H)
    mod = np.maximum(np.abs(evals), 1e-10 * max(float(np.max(np.abs(evals))), 1.0))
    return (evecs / mod) @ evecs.T


def bfgs_minimize_eager(value_grad: Callable, x0, max_iter: int = 200, gtol: float = 1e-6,
                        xtol: float = 1e-10, max_step: float = 2.0,
                        log_mask=None, hess0=None) -> NewtonResult:
    """:func:`bfgs_minimize` in NumPy: ``value_grad(x)`` returns (f, gradient).

    ``log_mask`` (boolean, optional) marks entries that are positive at ``x0`` and
    scale-like (the diagonal of a covariance factor).  The search then runs first
    in z with x = exp(z) on those entries, the log-Cholesky parametrization of
    nlme's ``pdLogChol`` (Pinheiro & Bates, "Mixed-Effects Models in S and
    S-PLUS", section 6.1.1): there the criterion of a variance component is close
    to quadratic, whereas in x its curvature ranges over orders of magnitude
    (InstEval: 1e5 for students and lecturers, 1e2 for departments) and BFGS
    spends its iterations learning that scale (32 evaluations against 17).
    ``hess0(x)``, optional, returns a positive diagonal approximation of the
    Hessian in the search variables (z for the ``log_mask`` entries); its inverse
    starts the search in place of the scaled identity.  The
    result is then checked, and if need be finished, in x itself, with the inverse
    Hessian from forward differences of the exact gradient (n evaluations, ~1e-5
    relative error, far below what the test distinguishes).  That second phase
    also takes over when an entry heads for zero (a singular fit), which z cannot
    reach.  Steps, line search and stopping rules are those of
    :func:`bfgs_minimize`; the convergence test is Newton's decrement with that
    difference Hessian.
    """
    x = np.asarray(x0, dtype=np.float64).copy()
    nx = x.size
    it = nfev = 0
    if log_mask is not None and np.any(log_mask) and np.all(x[log_mask] > 0):
        mask = np.asarray(log_mask, bool)

        def from_z(z):
            return np.where(mask, np.exp(np.where(mask, z, 0.0)), z)

        def value_grad_z(z):
            xz = from_z(z)
            fz, gz = value_grad(xz)
            return fz, gz * np.where(mask, xz, 1.0)

        z = np.where(mask, np.log(np.where(mask, x, 1.0)), x)
        f, g = value_grad_z(z)
        # Leave z once the test itself is met (the polish below takes it to
        # round-off), or once a scale entry falls below 1e-3: a variance heading for
        # zero.
        # A diagonal curvature guess replaces the scaled identity: one scale for
        # all entries makes the first steps of weakly determined terms (InstEval's
        # 14 departments against 2,972 students) far too short.
        H0 = None if hess0 is None else np.diag(1.0 / np.asarray(hess0(from_z(z)), np.float64))
        z, f, g, _, it, nfev, status = _bfgs_loop(
            value_grad_z, z, float(f), g, H0, 0, max_iter, gtol, xtol, max_step,
            stop=lambda z: bool(np.any(z[mask] < math.log(1e-3))), final=1.0)
        x = from_z(z)
        g = g / np.where(mask, x, 1.0)
        nfev += 1
    else:
        f, g = value_grad(x)
        nfev += 1
    f = float(f)
    H = _fd_hessian_forward(value_grad, x, g)
    nfev += nx
    status = 0
    _, decrement = _direction(g, H, max_step, xp=np)
    if not decrement <= 1e-3 * gtol and it >= max_iter:
        status = 3
    elif not decrement <= 1e-3 * gtol:
        # Newton steps with the difference Hessian, updated by BFGS.  After one or
        # two short steps the curvature has not changed beyond the difference
        # Hessian's own error, so it stays the record; a longer search is measured
        # again.
        it0 = it
        x, f, g, _, it, n, status = _bfgs_loop(value_grad, x, f, g, _modified_inverse(H), it,
                                              max_iter, gtol, xtol, max_step)
        nfev += n
        if it - it0 > 2:
            H = _fd_hessian_forward(value_grad, x, g)
            nfev += nx
    _, decrement = _direction(g, H, max_step, xp=np)
    evals = np.linalg.eigvalsh(H)
    scale = max(float(np.max(np.abs(evals))), 1.0)
    converged = bool(decrement <= gtol and evals[0] >= -1e-6 * scale and np.all(np.isfinite(g)))
    return NewtonResult(x=x, fun=np.asarray(f), grad=np.asarray(g), hess=H,
                        iterations=np.asarray(it), fun_evals=np.asarray(nfev),
                        status=np.asarray(status), converged=np.asarray(converged))


def _fd_hessian_forward(value_grad, x, g):
    h = 1e-5 * (1.0 + np.abs(x))
    cols = []
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = h[j]
        cols.append((value_grad(x + e)[1] - g) / h[j])
    H = np.array(cols)
    return 0.5 * (H + H.T)
