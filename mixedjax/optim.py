"""One optimizer: damped Newton or BFGS with Armijo backtracking, two drivers.

The rules (Nocedal & Wright, "Numerical Optimization", 2nd ed.):

* **direction**: Newton's step from the Hessian with its eigenvalues replaced by
  |lambda| (floored; section 3.4), or at a saddle (tiny gradient, negative
  curvature) a step along the most negative eigenvector; BFGS's -H^-1 g with the
  inverse-Hessian update of eq. 6.17 (skipped without positive curvature), the
  identity first scaled by eq. 6.20 unless a preconditioner is given.  Steps are
  capped at ``max_step`` (1 + |x|).
* **line search**: backtracking from alpha = 1 by halving until Armijo's test
  holds (at most 40 halvings), with a round-off allowance (:func:`armijo_test`).
* **stopping** (status): 0 the decrement g' H^-1 g is below ``dtol`` (or the
  gradient is exactly zero), 1 the accepted step is below ``xtol`` (1 + |x|),
  2 the line search cannot decrease f further, 3 the iteration limit; 4 (reported)
  status 0 whose point fails the convergence test below.
* **convergence** (reported): the decrement with the final Hessian is below
  ``gtol`` and that Hessian has no clearly negative eigenvalue.  A run stopped at
  the limit that passes this test reports status 0, never "converged" with
  "iteration limit".

Both methods are one loop whose body evaluates the function once, at the trial
point, and then either accepts it (a new iterate: next direction) or halves the
step.  The body is written once; a :class:`Driver` runs it as a Python loop over
NumPy (:data:`EAGER`) or as ``lax.while_loop`` over JAX arrays
(:func:`traced`), which ``jit`` compiles and ``vmap`` batches (every batch member
stops on its own; its state is frozen once stopped).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["OptResult", "Driver", "EAGER", "traced", "minimize", "start_state", "LoopState",
           "direction", "armijo_test", "fd_hessian", "final_test", "safe_eigh", "STATUS"]

STATUS = {0: "gradient test met", 1: "step below tolerance",
          2: "line search cannot decrease the objective further (round-off level)",
          3: "iteration limit reached",
          4: "stopped where the convergence test fails (the final Hessian is not positive "
             "definite or the gradient test is not met with it)"}
MAX_HALVINGS = 40
MAX_ESCAPES = 3     # steps off a saddle in one eager BFGS run


class OptResult(NamedTuple):
    """The optimizer's record: ``x`` the last accepted point with ``fun``, ``grad``
    and ``hess`` (the Hessian there: exact for Newton, by differences for BFGS),
    ``iterations`` (accepted steps), ``fun_evals``, ``status`` (see
    :data:`STATUS`) and ``converged``."""

    x: object
    fun: object
    grad: object
    hess: object
    iterations: object
    fun_evals: object
    status: object
    converged: object


class Driver(NamedTuple):
    """How the loop runs: ``xp`` the array library, ``loop(cond, body, state)``,
    ``sel(c, a, b)`` (a where c, else b; trees), ``eigh`` (ascending)."""

    xp: object
    loop: Callable
    sel: Callable
    eigh: Callable


def _py_loop(cond, body, state):
    while cond(state):
        state = body(state)
    return state


def _py_sel(c, a, b):
    return a if c else b


def safe_eigh(H):
    """``numpy.linalg.eigh``, with NaN eigenvalues (and identity vectors) for a matrix
    that is not finite (a difference Hessian taken next to where the criterion is
    not defined) instead of LAPACK's error, so the convergence test fails on it
    rather than the fit raising."""
    H = np.asarray(H)
    if not np.all(np.isfinite(H)):
        return np.full(H.shape[-1], np.nan), np.eye(H.shape[-1])
    return np.linalg.eigh(H)


EAGER = Driver(np, _py_loop, _py_sel, safe_eigh)


@functools.cache
def traced(batched_eigh: bool = False) -> Driver:
    """The JAX driver; ``batched_eigh`` uses the LAPACK-free Jacobi eigensolver
    (for ``vmap``: batched LAPACK can hang jaxlib's CPU thread pool)."""
    import jax
    import jax.numpy as jnp

    def sel(c, a, b):
        return jax.tree_util.tree_map(lambda x, y: jnp.where(c, x, y), a, b)

    eigh = jacobi_eigh if batched_eigh else jnp.linalg.eigh
    return Driver(jnp, jax.lax.while_loop, sel, eigh)


# ----------------------------------------------------------------------------------
# The rules
# ----------------------------------------------------------------------------------
def direction(g, H, max_step, drv: Driver, inverse: bool = False):
    """(step, decrement, saddle): Newton's step from the eigenvalue-modified Hessian
    ``H`` (or, with ``inverse``, -H g for BFGS's inverse Hessian), capped at
    ``max_step``; the decrement g' H^-1 g; whether the step leaves a saddle."""
    xp = drv.xp
    if inverse:
        step = -(H @ g)
        decrement = -xp.dot(g, step)
        saddle = xp.asarray(False)
    else:
        evals, evecs = drv.eigh(H)
        scale = xp.maximum(xp.max(xp.abs(evals)), 1.0)
        mod = xp.maximum(xp.abs(evals), 1e-10 * scale)
        gv = evecs.T @ g
        step = -evecs @ (gv / mod)
        # At a saddle the gradient is tiny but the curvature negative: step along
        # the most negative eigenvector, downhill (or either way when g = 0).
        v = evecs[:, 0]
        v = xp.where(gv[0] > 0, -v, v)
        saddle = (evals[0] < -1e-8 * scale) & (xp.linalg.norm(step) < 1e-6)
        step = xp.where(saddle, v * xp.minimum(max_step, 1.0), step)
        decrement = xp.sum(gv * gv / mod)
    norm = xp.linalg.norm(step)
    # The ratio's numerator is at most its denominator: no overflow, none for inf.
    step = step * (xp.minimum(norm, max_step) / xp.maximum(norm, 1e-300))
    return step, decrement, saddle


def armijo_test(f, slope, xp=np):
    """``accept(alpha, f_new)``: Armijo's sufficient decrease for a step with
    directional derivative ``slope`` from value ``f``, with one addition: once the
    predicted decrease is below the round-off of f, a step that changes f by no
    more than that round-off is taken (f carries more than eps |f| of round-off:
    n log(pwrss) amplifies the cancellation in pwrss), so the iteration does not
    stall at |x - x*| ~ sqrt(eps); a real increase is still refused."""
    tol = 1e-13 * xp.maximum(xp.abs(f), 1.0)
    noise = 1e-10 * xp.maximum(xp.abs(f), 1.0)
    flat = -slope <= noise

    def accept(alpha, fnew):
        return (fnew <= f + 1e-4 * alpha * slope + tol) | (flat & (fnew <= f + noise))

    return accept


def _bfgs_update(Hinv, sk, yk, scale_first, xp):
    """Inverse-Hessian update (eq. 6.17); with ``scale_first`` the matrix is first
    scaled by s'y / y'y (eq. 6.20).  Skipped without positive curvature."""
    sy = xp.dot(sk, yk)
    ok = sy > 1e-12 * xp.linalg.norm(sk) * xp.linalg.norm(yk)
    H0 = xp.where(scale_first, sy / xp.maximum(xp.dot(yk, yk), 1e-300), 1.0) * Hinv
    rho = 1.0 / xp.where(ok, sy, 1.0)
    V = xp.eye(sk.shape[0]) - rho * xp.outer(sk, yk)
    return xp.where(ok, V @ H0 @ V.T + rho * xp.outer(sk, sk), Hinv), ok


def fd_hessian(grad: Callable, x, g, xp=np, h: float = 1e-5):
    """Hessian by forward differences of the exact gradient (n evaluations,
    ~1e-5 relative error; symmetrized).  Eagerly, a column whose forward point
    falls where the function is not defined is taken backwards."""
    n = x.shape[0]
    step = h * (1.0 + xp.abs(x))

    def column(j):
        e = xp.where(xp.arange(n) == j, step[j], 0.0)
        col = (grad(x + e) - g) / step[j]
        if xp is np and not np.all(np.isfinite(col)):
            col = (g - grad(x - e)) / step[j]
        return col

    cols = [column(j) for j in range(n)]
    H = xp.stack(cols)
    return 0.5 * (H + H.T)


def final_test(g, H, gtol, drv: Driver):
    """(converged, min eigenvalue): the decrement with ``H`` below ``gtol`` and no
    clearly negative curvature (module docstring)."""
    xp = drv.xp
    evals, evecs = drv.eigh(H)
    scale = xp.maximum(xp.max(xp.abs(evals)), 1.0)
    mod = xp.maximum(xp.abs(evals), 1e-10 * scale)
    gv = evecs.T @ g
    decrement = xp.sum(gv * gv / mod)
    ok = (decrement <= gtol) & (evals[0] >= -1e-6 * scale) & xp.all(xp.isfinite(g))
    return ok, evals[0]


# ----------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------
class LoopState(NamedTuple):
    x: object        # last accepted point, with f, g and H (Hessian or inverse)
    f: object
    g: object
    H: object
    step: object     # direction from x
    slope: object    # g' step
    alpha: object
    trial: object    # x + alpha step, evaluated next
    first: object    # the trial is the starting point
    scale: object    # BFGS: scale the first update (eq. 6.20)
    it: object
    nls: object
    nfev: object
    status: object   # -1 while running


def start_state(x0, drv: Driver = EAGER, hess0=None) -> LoopState:
    """The loop's state before its first evaluation, at ``x0`` (``hess0``: BFGS's
    starting inverse Hessian, default the identity scaled after the first step)."""
    xp = drv.xp
    x0 = xp.asarray(x0, dtype=xp.float64)
    n = x0.shape[0]
    H0 = xp.eye(n) if hess0 is None else xp.asarray(hess0, dtype=xp.float64)
    zero_v = xp.zeros_like(x0)
    return LoopState(x=x0, f=xp.asarray(xp.inf), g=zero_v, H=H0, step=zero_v,
                     slope=xp.asarray(0.0), alpha=xp.asarray(1.0), trial=x0,
                     first=xp.asarray(True), scale=xp.asarray(hess0 is None),
                     it=xp.asarray(0), nls=xp.asarray(0), nfev=xp.asarray(0),
                     status=xp.asarray(-1))


def minimize(evaluate: Callable, x0, drv: Driver = EAGER, method: str = "newton",
             hess0=None, max_iter=200, gtol: float = 1e-6, dtol: float | None = None,
             xtol: float = 1e-10, max_step: float = 2.0, stop: Callable | None = None,
             step_stop: bool = False, state: LoopState | None = None, budget=None):
    """Minimize from ``x0``; returns the final :class:`LoopState`-like record
    (x, f, g, H, iterations, evaluations, status).

    ``evaluate(x)`` returns (f, g, H) for "newton" (H the Hessian) and (f, g, None)
    for "bfgs".  ``hess0``: BFGS's starting inverse Hessian (default the identity,
    scaled after the first step).  ``dtol``: the decrement that ends the search
    (status 0), default 1e-3 gtol.  ``stop(x)``, eager only: end the run early
    after an accepted step (status -2), e.g. to change coordinates.  ``step_stop``:
    also end (status 1) once the next step is below ``xtol`` |x| in every coordinate, without
    evaluating it -- for a search from a good Hessian, whose predicted step is the
    step it would take.

    ``state`` (in place of ``x0`` and ``hess0``): go on from a state this function
    returned; ``budget``: evaluate at most this many times in this call, leaving the
    state running (status -1) where it stopped.  A run continued in pieces so takes
    the same steps as one uninterrupted run, whatever the pieces.
    """
    xp = drv.xp
    bfgs = method == "bfgs"
    if dtol is None:
        dtol = 1e-3 * gtol if bfgs else 1e-12 * gtol
    if state is None:
        state = start_state(x0, drv, hess0)

    def body(s: LoopState) -> LoopState:
        fe, ge, He = evaluate(s.trial)
        fe = xp.where(xp.isfinite(fe), fe, xp.inf)
        accept = s.first | armijo_test(s.f, s.slope, xp)(s.alpha, fe)
        accept = accept & xp.isfinite(fe)
        if bfgs:
            upd, _ = _bfgs_update(s.H, s.trial - s.x, ge - s.g, s.scale, xp)
            Hn = drv.sel(s.first, s.H, upd)
            scale_n = s.scale & s.first
        else:
            Hn, scale_n = He, s.scale
        limit = max_step * xp.maximum(1.0, xp.linalg.norm(s.trial))
        step, dec, saddle = direction(ge, Hn, limit, drv, inverse=bfgs)
        it_n = xp.where(s.first, s.it, s.it + 1)
        small = (~s.first) & (xp.max(xp.abs(s.trial - s.x)) <= xtol * (1.0 + xp.max(xp.abs(s.x))))
        stationary = ((dec <= dtol) & ~saddle) | xp.all(step == 0.0)
        if step_stop:
            # Relative to each coordinate, so that one heading for 0 (a singular
            # fit) is followed there as before.
            small = small | ((~s.first) & xp.all(xp.abs(step) <= xtol * xp.abs(s.trial)))
        st_acc = xp.where(stationary, 0, xp.where(small, 1, xp.where(it_n >= max_iter, 3, -1)))
        acc = LoopState(x=s.trial, f=fe, g=ge, H=Hn, step=step, slope=xp.dot(ge, step),
                        alpha=xp.asarray(1.0), trial=s.trial + step, first=xp.asarray(False),
                        scale=scale_n, it=it_n, nls=xp.asarray(0), nfev=s.nfev + 1,
                        status=st_acc)
        alpha = 0.5 * s.alpha
        # A start where f is not finite cannot be searched from.
        rej = s._replace(alpha=alpha, trial=s.x + alpha * s.step, nls=s.nls + 1,
                         nfev=s.nfev + 1,
                         status=xp.where(s.first | (s.nls + 1 >= MAX_HALVINGS), 2, -1))
        new = drv.sel(accept, acc, rej)
        if stop is not None and bool(accept) and int(new.status) < 0 and stop(new.x):
            new = new._replace(status=-2)
        return drv.sel(s.status >= 0, s, new)

    if budget is None:
        return drv.loop(lambda s: s.status == -1, body, state)
    out, _ = drv.loop(lambda c: (c[0].status == -1) & (c[1] < budget),
                      lambda c: (body(c[0]), c[1] + 1), (state, xp.asarray(0)))
    return out


def final_status(status, converged, xp=np):
    """Past the convergence test, a stop on a tiny step, at round-off or at the
    iteration limit is reported as the test met (status 0); a stop on the loop's
    own test that fails the convergence test is status 4."""
    status = xp.where(~converged & (status == 0), 4, status)
    return xp.where(converged & (status >= 1) & (status <= 3), 0, status)


def record(s, hess, gtol: float, drv: Driver, final: bool = True) -> OptResult:
    """The :class:`OptResult` of a finished loop, with ``hess`` the Hessian at the
    final point for the convergence test (module docstring); ``final=False`` keeps
    the loop's own status (a batched run continued in pieces maps it at the end)."""
    xp = drv.xp
    conv, _ = final_test(s.g, hess, gtol, drv)
    status = final_status(s.status, conv, xp) if final else s.status
    return OptResult(x=s.x, fun=s.f, grad=s.g, hess=hess, iterations=s.it,
                     fun_evals=s.nfev, status=status, converged=conv)


def jacobi_eigh(A, sweeps: int | None = None):
    """Eigenvalues (ascending) and eigenvectors of a small symmetric matrix by cyclic
    Jacobi rotations (Golub & Van Loan, "Matrix Computations", 4th ed., section
    8.5), in plain jnp: no LAPACK, so it batches under ``vmap``."""
    import jax
    import jax.numpy as jnp

    n = A.shape[-1]
    if n == 1:
        return A[0], jnp.ones((1, 1), A.dtype)
    sweeps = sweeps if sweeps is not None else (6 if n <= 4 else 10)
    pairs = [(p, q) for p in range(n - 1) for q in range(p + 1, n)]

    def rotate(carry, pq):
        A, V = carry
        p, q = pq
        apq = A[p, q]
        tau = (A[q, q] - A[p, p]) / (2.0 * jnp.where(apq == 0.0, 1.0, apq))
        t = jnp.sign(tau) / (jnp.abs(tau) + jnp.sqrt(1.0 + tau * tau))
        t = jnp.where(tau == 0.0, 1.0, t)
        t = jnp.where(apq == 0.0, 0.0, t)
        c = 1.0 / jnp.sqrt(1.0 + t * t)
        s = t * c
        rp, rq = A[p, :], A[q, :]
        A = A.at[p, :].set(c * rp - s * rq).at[q, :].set(s * rp + c * rq)
        cp, cq = A[:, p], A[:, q]
        A = A.at[:, p].set(c * cp - s * cq).at[:, q].set(s * cp + c * cq)
        vp, vq = V[:, p], V[:, q]
        V = V.at[:, p].set(c * vp - s * vq).at[:, q].set(s * vp + c * vq)
        return A, V

    def sweep(_, carry):
        for pq in pairs:
            carry = rotate(carry, pq)
        return carry

    A = 0.5 * (A + A.T)
    A, V = jax.lax.fori_loop(0, sweeps, sweep, (A, jnp.eye(n, dtype=A.dtype)))
    evals = jnp.diagonal(A)
    order = jnp.argsort(evals)
    return evals[order], V[:, order]


# ----------------------------------------------------------------------------------
# The eager BFGS fit of a covariance-parameter problem
# ----------------------------------------------------------------------------------
def minimize_bfgs_eager(value_grad: Callable, x0, log_mask=None, hess0=None,
                        max_iter: int = 200, gtol: float = 1e-6) -> OptResult:
    """BFGS in NumPy, first on the log scale of the ``log_mask`` entries, then
    checked and if need be finished in x with a difference Hessian.

    The masked entries (the diagonal of covariance factors, positive at ``x0``) are
    searched as x = exp(z), the log-Cholesky parametrization of nlme's
    ``pdLogChol`` (Pinheiro & Bates 2000, section 6.1.1): there a variance
    component's criterion is close to quadratic, whereas in x its curvature ranges
    over orders of magnitude (InstEval: 1e5 for students and lecturers, 1e2 for
    departments).  ``hess0(x)``, a positive diagonal approximation of the Hessian
    in those coordinates, preconditions the search.  The log phase ends once the
    decrement is met (status 0) or an entry falls below 1e-3 (a variance heading
    for zero, which z cannot reach); the x phase starts from the inverse of the
    modified difference Hessian and re-measures it after a longer search.
    """
    x = np.asarray(x0, np.float64).copy()
    n = x.size
    it = nfev = 0
    status = -1
    if log_mask is not None and np.any(log_mask) and np.all(x[log_mask] > 0):
        mask = np.asarray(log_mask, bool)

        def from_z(z):
            return np.where(mask, np.exp(np.where(mask, z, 0.0)), z)

        def evaluate_z(z):
            xz = from_z(z)
            f, g = value_grad(xz)
            return f, g * np.where(mask, xz, 1.0), None

        z0 = np.where(mask, np.log(np.where(mask, x, 1.0)), x)
        H0 = None if hess0 is None else np.diag(1.0 / np.asarray(hess0(from_z(z0)), np.float64))
        s = minimize(evaluate_z, z0, EAGER, "bfgs", hess0=H0, max_iter=max_iter, gtol=gtol,
                     dtol=gtol, stop=lambda z: bool(np.any(z[mask] < math.log(1e-3))))
        x = from_z(s.x)
        f, g = float(s.f), s.g / np.where(mask, x, 1.0)
        it, nfev, status = int(s.it), int(s.nfev), int(s.status)
    else:
        f, g = value_grad(x)
        nfev = 1
    grad = lambda xx: value_grad(xx)[1]
    H = fd_hessian(grad, x, g)
    nfev += n
    if it >= max_iter and not direction(g, H, np.inf, EAGER)[1] <= 1e-3 * gtol:
        status = 3
    else:
        for escape in range(MAX_ESCAPES + 1):
            if not np.all(np.isfinite(g)):
                break
            x, f, g, H, k, m, status = _finish_bfgs(value_grad, grad, x, f, g, H,
                                                    max(max_iter - it, 1), gtol)
            it, nfev = it + k, nfev + m
            conv, emin = final_test(g, H, gtol, EAGER)
            if conv or escape == MAX_ESCAPES or it >= max_iter:
                break
            # A stationary point with negative curvature (theta = 0 of a variance
            # whose optimum is positive: the gradient vanishes there by symmetry):
            # BFGS cannot leave it by itself; step down along that curvature.
            left = _leave_saddle(value_grad, x, f, g, H)
            if left is None:
                break
            x, f, g, m = left
            nfev += m
            H = fd_hessian(grad, x, g)
            nfev += n
    s = LoopState(x=x, f=np.asarray(f), g=g, H=H, step=None, slope=None, alpha=None,
                  trial=None, first=None, scale=None, it=np.asarray(it), nls=None,
                  nfev=np.asarray(nfev), status=np.asarray(status))
    return record(s, H, gtol, EAGER)


def _finish_bfgs(value_grad, grad, x, f, g, H, max_iter, gtol):
    """BFGS in x from the modified inverse of the difference Hessian ``H`` at x,
    to round-off; returns (x, f, g, H, iterations, evaluations, status)."""
    # Newton steps with the difference Hessian, updated by BFGS, to round-off:
    # the first step alone takes the gradient down by the difference Hessian's
    # relative error (~1e-5).  After one or two short steps the curvature has not
    # changed beyond that error, so the difference Hessian stays the record.
    known = [x.copy(), f, g]

    def evaluate_x(xx):
        # The search starts where the last one ended: its (f, g) are known.
        if known and np.array_equal(xx, known[0]):
            _, fk, gk = known
            known.clear()
            return fk, gk, None
        known.clear()
        return (*value_grad(xx), None)

    s = minimize(evaluate_x, x, EAGER, "bfgs", hess0=_modified_inverse(H),
                 max_iter=max_iter, gtol=gtol, dtol=0.0, step_stop=True)
    nfev = int(s.nfev) - 1
    if int(s.it) > 2:
        H = fd_hessian(grad, s.x, s.g)
        nfev += x.size
    return s.x, float(s.f), s.g, H, int(s.it), nfev, int(s.status)


def _leave_saddle(value_grad, x, f, g, H):
    """One Newton iteration of :func:`minimize` from x with the difference Hessian
    ``H``: at a saddle :func:`direction` steps along H's most negative eigenvector,
    and the loop's line search accepts the point; (x, f, g, evaluations), or None
    when H has no negative curvature or no step is accepted."""
    evals = safe_eigh(H)[0]
    if not (np.all(np.isfinite(evals)) and evals[0] < 0):
        return None
    known = [x.copy()]

    def evaluate(xx):
        # The start's (f, g) are known; H stays the difference Hessian.
        if known and np.array_equal(xx, known[0]):
            known.clear()
            return f, g, H
        known.clear()
        return (*value_grad(xx), H)

    s = minimize(evaluate, x, EAGER, "newton", max_iter=1, dtol=0.0)
    if int(s.it) < 1:
        return None
    return s.x, float(s.f), s.g, int(s.nfev) - 1


def _modified_inverse(H):
    """Inverse of H with its eigenvalues replaced by |lambda| (floored), as in
    :func:`direction`; the identity where H is not finite."""
    evals, evecs = safe_eigh(H)
    if not np.all(np.isfinite(evals)):
        return np.eye(H.shape[0])
    mod = np.maximum(np.abs(evals), 1e-10 * max(float(np.max(np.abs(evals))), 1.0))
    return (evecs / mod) @ evecs.T
