"""Damped Newton minimization with exact derivatives, as one jit-compilable loop.

theta is small (a handful to a few dozen entries), so each iteration computes the
exact gradient and Hessian by autodiff, modifies the Hessian's eigenvalues to be
positive (|lambda|, floored; Nocedal & Wright, "Numerical Optimization", 2nd ed.,
section 3.4), caps the step length, and backtracks until the Armijo condition
holds.  Near a stationary point with negative curvature (a saddle), the step
follows the most negative eigenvector instead.  The loop is a ``lax.while_loop``
with fixed shapes, so the whole fit is one compiled call and can be ``vmap``-ed:
every batch member stops on its own (its state is frozen once converged) and the
loop runs until the slowest one does.

Why Newton rather than lme4's derivative-free BOBYQA: with exact Hessians the
iteration converges quadratically, so the optimum is found to machine precision
in a few iterations, and the stopping rule can be a gradient test instead of a
change in the objective.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from . import optimize_np as _np_impl
# The eager optimizers live in optimize_np (no JAX import); re-exported here.
from .optimize_np import NewtonResult, bfgs_minimize_eager, newton_minimize_eager  # noqa: F401

__all__ = ["NewtonResult", "newton_minimize", "newton_minimize_eager", "bfgs_minimize",
           "bfgs_minimize_eager", "armijo_test", "backtrack"]


def _direction(g, H, max_step, xp=jnp):
    """Newton step and decrement (:func:`mixedjax.optimize_np._direction`), traced by
    default."""
    return _np_impl._direction(g, H, max_step, xp)


def armijo_test(f, slope, xp=jnp):
    """:func:`mixedjax.optimize_np.armijo_test`, traced by default."""
    return _np_impl.armijo_test(f, slope, xp)


class _State(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    H: jax.Array
    it: jax.Array
    nfev: jax.Array
    status: jax.Array  # -1 while running


def backtrack(fun, x, f, g, step, args):
    """Halve the step from alpha = 1 until :func:`armijo_test` accepts it (at most 40
    halvings); ``fun(x, *args)`` traced.  Returns (alpha, f(x + alpha step), accepted,
    number of evaluations)."""
    accept = armijo_test(f, jnp.dot(g, step))

    def cond(c):
        alpha, fnew, k = c
        return ~accept(alpha, fnew) & (k < 40)

    def body(c):
        alpha, _, k = c
        alpha = alpha * 0.5
        fnew = fun(x + alpha * step, *args)
        return alpha, jnp.where(jnp.isfinite(fnew), fnew, jnp.inf), k + 1

    alpha, fnew, k = jax.lax.while_loop(cond, body, (jnp.array(2.0), jnp.array(jnp.inf), 0))
    return alpha, fnew, accept(alpha, fnew), k


def newton_minimize(fun: Callable, x0, *args, max_iter: int = 200, gtol: float = 1e-6,
                    xtol: float = 1e-10, max_step: float = 2.0) -> NewtonResult:
    """Minimize ``fun(x, *args)`` from ``x0`` by damped Newton with exact Hessian.

    Converged means: the Newton decrement g' H^-1 g (the predicted reduction,
    twice over, in the objective's own units) is below ``gtol`` and the Hessian has
    no clearly negative eigenvalue.  Iteration continues past that to round-off
    (tiny steps cost little once the rate is quadratic) and stops when the step is
    below ``xtol`` (relative), the line search stalls, or ``max_iter`` is reached.
    """
    value_and_grad = jax.value_and_grad(fun)
    hessian = jax.hessian(fun)
    x0 = jnp.asarray(x0, dtype=jnp.float64)
    nx = x0.shape[0]
    # The derivatives and the objective each appear once in the compiled loop (compile
    # time grows with every copy): an iteration first differentiates at x, then tests
    # convergence, then line-searches to the next x.
    state = _State(x0, jnp.array(jnp.inf), jnp.zeros(nx), jnp.zeros((nx, nx)),
                   jnp.array(0), jnp.array(0), jnp.array(-1))

    def body(s: _State) -> _State:
        f, g = value_and_grad(s.x, *args)
        H = hessian(s.x, *args)
        step, _ = _direction(g, H, max_step * jnp.maximum(1.0, jnp.linalg.norm(s.x)))
        alpha, _, ok, nls = backtrack(fun, s.x, f, g, step, args)
        xnew = jnp.where(ok, s.x + alpha * step, s.x)
        small = jnp.max(jnp.abs(alpha * step)) <= xtol * (1.0 + jnp.max(jnp.abs(s.x)))
        # A zero gradient ends the search only at a minimum: at a stationary point
        # with negative curvature (e.g. a variance landing exactly on 0 from above,
        # where the criterion is even) the saddle step moves on.
        stationary = (jnp.max(jnp.abs(g)) == 0.0) & jnp.all(step == 0.0)
        status = jnp.where(stationary, 0, jnp.where(~ok, 2, jnp.where(small, 1, -1)))
        status = jnp.where((status < 0) & (s.it + 1 >= max_iter), 3, status)
        # The returned point is where f, g and H were evaluated; once stopped the last
        # (tiny or rejected) step is not taken, so the record stays consistent.
        x_out = jnp.where(status < 0, xnew, s.x)
        return _State(x_out, f, g, H, s.it + 1, s.nfev + nls + 1, status)

    state = jax.lax.while_loop(lambda s: s.status < 0, body, state)
    _, decrement = _direction(state.g, state.H, max_step)
    evals = jnp.linalg.eigvalsh(state.H)
    scale = jnp.maximum(jnp.max(jnp.abs(evals)), 1.0)
    converged = (decrement <= gtol) & (evals[0] >= -1e-6 * scale) & jnp.all(
        jnp.isfinite(state.g))
    return NewtonResult(x=state.x, fun=state.f, grad=state.g, hess=state.H,
                        iterations=state.it, fun_evals=state.nfev, status=state.status,
                        converged=converged)


class _BState(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    Hinv: jax.Array
    it: jax.Array
    nfev: jax.Array
    status: jax.Array  # -1 while running


def _fd_hessian(grad, x, args):
    """Hessian by central differences of the exact gradient (symmetrized).

    2 * len(x) gradient evaluations: far cheaper than the exact Hessian when one
    evaluation factors a large dense block, and accurate to ~1e-7 relative.
    """
    h = 1e-4 * (1.0 + jnp.abs(x))
    eye = jnp.eye(x.shape[0], dtype=x.dtype)

    def column(j):
        e = eye[j] * h[j]
        return (grad(x + e, *args) - grad(x - e, *args)) / (2.0 * h[j])

    H = jax.lax.map(column, jnp.arange(x.shape[0]))
    return 0.5 * (H + H.T)


def bfgs_minimize(fun: Callable, x0, *args, max_iter: int = 200, gtol: float = 1e-6,
                  xtol: float = 1e-10, max_step: float = 2.0) -> NewtonResult:
    """Minimize ``fun(x, *args)`` by BFGS with exact (autodiff) gradients.

    For models whose criterion factors a large dense block (crossed designs with
    thousands of levels) each exact Hessian costs several times a gradient per
    parameter; BFGS needs about one gradient per iteration (Nocedal & Wright,
    "Numerical Optimization", 2nd ed., algorithm 6.1, with the initial scaling of
    eq. 6.20 and a backtracking Armijo line search).  Convergence uses the same test
    as :func:`newton_minimize` (decrement g' H^-1 g below ``gtol``), with H from
    central differences of the exact gradient at the final point, which is also the
    ``hess`` returned.
    """
    value_and_grad = jax.value_and_grad(fun)
    grad = jax.grad(fun)
    x0 = jnp.asarray(x0, dtype=jnp.float64)
    nx = x0.shape[0]
    f0, g0 = value_and_grad(x0, *args)
    state = _BState(x0, f0, g0, jnp.eye(nx), jnp.array(0), jnp.array(1), jnp.array(-1))

    def line_search(x, f, g, step):
        slope = jnp.dot(g, step)
        tol = 1e-13 * jnp.maximum(jnp.abs(f), 1.0)

        def cond(c):
            alpha, fnew, _, k = c
            return ~(fnew <= f + 1e-4 * alpha * slope + tol) & (k < 40)

        def body(c):
            alpha, _, _, k = c
            alpha = jnp.where(k == 0, 1.0, alpha * 0.5)
            fnew, gnew = value_and_grad(x + alpha * step, *args)
            fnew = jnp.where(jnp.isfinite(fnew), fnew, jnp.inf)
            return alpha, fnew, gnew, k + 1

        alpha, fnew, gnew, k = jax.lax.while_loop(
            cond, body, (jnp.array(1.0), jnp.array(jnp.inf), jnp.zeros_like(g), 0))
        ok = fnew <= f + 1e-4 * alpha * slope + tol
        return alpha, fnew, gnew, ok, k

    def body(s: _BState) -> _BState:
        step = -s.Hinv @ s.g
        limit = max_step * jnp.maximum(1.0, jnp.linalg.norm(s.x))
        norm = jnp.linalg.norm(step)
        step = jnp.where(norm > limit, step * (limit / norm), step)
        alpha, fnew, gnew, ok, nls = line_search(s.x, s.f, s.g, step)
        sk = alpha * step
        yk = gnew - s.g
        sy = jnp.dot(sk, yk)
        # First step: scale the identity to the curvature seen along it (eq. 6.20).
        H0 = jnp.where(s.it == 0, sy / jnp.maximum(jnp.dot(yk, yk), 1e-300), 1.0) * s.Hinv
        rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        V = jnp.eye(nx) - rho * jnp.outer(sk, yk)
        Hnew = jnp.where(ok & (sy > 1e-12 * jnp.linalg.norm(sk) * jnp.linalg.norm(yk)),
                         V @ H0 @ V.T + rho * jnp.outer(sk, sk), s.Hinv)
        decrement = jnp.dot(gnew, Hnew @ gnew)
        small = jnp.max(jnp.abs(sk)) <= xtol * (1.0 + jnp.max(jnp.abs(s.x)))
        status = jnp.where(~ok, 2, jnp.where(jnp.max(jnp.abs(gnew)) == 0.0, 0,
                           jnp.where(decrement <= 1e-3 * gtol, 0, jnp.where(small, 1, -1))))
        status = jnp.where((status < 0) & (s.it + 1 >= max_iter), 3, status)
        take = ok
        return _BState(jnp.where(take, s.x + sk, s.x), jnp.where(take, fnew, s.f),
                       jnp.where(take, gnew, s.g), Hnew, s.it + 1, s.nfev + nls, status)

    state = jax.lax.while_loop(lambda s: s.status < 0, body, state)
    H = _fd_hessian(grad, state.x, args)
    _, decrement = _direction(state.g, H, max_step)
    evals = jnp.linalg.eigvalsh(H)
    scale = jnp.maximum(jnp.max(jnp.abs(evals)), 1.0)
    converged = (decrement <= gtol) & (evals[0] >= -1e-6 * scale) & jnp.all(
        jnp.isfinite(state.g))
    return NewtonResult(x=state.x, fun=state.f, grad=state.g, hess=H,
                        iterations=state.it, fun_evals=state.nfev + 2 * nx,
                        status=state.status, converged=converged)
