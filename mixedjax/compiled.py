"""The fit as one compiled JAX call: Newton with the autodiff Hessian of the criterion.

:mod:`mixedjax.model` fits eagerly by default and imports this module only for the
compiled path (``optimizer="newton"``, ``LMM.objective``); batched refits
(:mod:`mixedjax.batchfit`) and the differentiable fit (:mod:`mixedjax.fitfn`) use
:func:`fit_arrays` under ``vmap`` and inside their own transformations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import factor, optim
from .backend import jax_backend
from .criterion import from_factor, objective
from .crossprod import Blocks
from .fitting import FitOutput
from .structure import from_centred, rectify_theta, to_centred

__all__ = ["fit_arrays", "value_grad_hess", "newton", "newton_piece", "search_start", "finish",
           "solve", "fit_jit", "objective_jit"]


def value_grad_hess(fun, x, *args):
    """fun(x, *args), its gradient and its Hessian in one pass (forward mode over
    the gradient; for the criterion the gradient is its custom derivative)."""
    def grad_aux(t):
        f, g = jax.value_and_grad(fun)(t, *args)
        return g, (f, g)

    H, (f, g) = jax.jacfwd(grad_aux, has_aux=True)(x)
    return f, g, 0.5 * (H + H.T)


def newton(fun, x0, *args, max_iter=200, gtol: float = 1e-6,
           final: bool = True) -> optim.OptResult:
    """Minimize a scalar JAX function ``fun(x, *args)`` by Newton with its autodiff
    Hessian (:func:`mixedjax.optim.minimize`, traced driver; jit/vmap-able)."""
    drv = optim.traced(batched_eigh=True)
    s = optim.minimize(lambda t: value_grad_hess(fun, t, *args),
                       jnp.asarray(x0, jnp.float64), drv, "newton", max_iter=max_iter, gtol=gtol)
    return optim.record(s, s.H, gtol, drv, final=final)


def solve(theta, A: Blocks, be=None):
    """:func:`mixedjax.factor.solve` at ``theta`` (traced)."""
    be = be or jax_backend()
    return factor.solve(factor.factorize(theta, A, be), A, be)


def _scaled(t, A, reml, scale):
    # The search runs in theta / scale (fitting.fit_eager explains why).
    return objective(t * scale, A, reml)


def _search_structure(A: Blocks) -> Blocks:
    # A structure with a column basis is searched in the centred coordinates
    # (structure.to_centred), as the eager driver does.
    return A.replace_structure(A.structure.plain())


def search_start(theta0, A: Blocks, scale=1.0):
    """The optimizer's coordinates of ``theta0``: centred (:func:`to_centred`) and
    divided by ``scale`` (traced)."""
    return to_centred(jnp.asarray(theta0, jnp.float64), A.structure, jnp) / scale


def fit_arrays(theta0, A: Blocks, reml=True, max_iter=200, optimizer: str = "newton",
               gtol: float = 1e-6, final: bool = True, scale=1.0) -> FitOutput:
    """Fit theta from ``theta0`` by Newton (or BFGS with a difference Hessian at the
    end) and solve for beta, u, sigma at the optimum.

    Pure and jit/vmap-compatible: ``jax.vmap(fit_arrays, (None, 0))`` fits a batch
    of responses that share one design; ``max_iter`` may be traced; ``final=False``
    keeps the optimizer's own status (see :func:`mixedjax.optim.record`).  The
    eigendecompositions are LAPACK-free (:func:`mixedjax.optim.jacobi_eigh`), so the
    batched program never calls batched LAPACK.  ``scale``: the search runs in
    theta / scale (:func:`mixedjax.fitting.fit_eager`); the record is in theta.
    """
    drv = optim.traced(batched_eigh=True)
    scale = jnp.asarray(scale, jnp.float64)
    A_search = _search_structure(A)
    t0 = search_start(theta0, A, scale)
    if optimizer == "bfgs":
        def evaluate(t):
            f, g = jax.value_and_grad(_scaled)(t, A_search, reml, scale)
            return f, g, None
        st = optim.minimize(evaluate, t0, drv, "bfgs", max_iter=max_iter, gtol=gtol)
        hess = optim.fd_hessian(lambda t: jax.grad(_scaled)(t, A_search, reml, scale),
                                st.x, st.g, jnp)
        opt = optim.record(st, hess, gtol, drv, final=final)
    else:
        opt = newton(_scaled, t0, A_search, reml, scale, max_iter=max_iter, gtol=gtol,
                     final=final)
    return finish(opt, A, reml, scale)


def newton_piece(state: optim.LoopState, A: Blocks, reml, max_iter, budget, scale=1.0,
                 gtol: float = 1e-6):
    """Go on with :func:`fit_arrays`' Newton search from ``state`` (a loop state,
    :func:`mixedjax.optim.start_state` of :func:`search_start` for a new fit) for at
    most ``budget`` evaluations: (the loop state, running (status -1) where the budget
    ended it, and the :class:`FitOutput` at its last accepted point, the optimizer's
    own status kept).  Pieces of any size take the steps of one uninterrupted search."""
    drv = optim.traced(batched_eigh=True)
    scale = jnp.asarray(scale, jnp.float64)
    A_search = _search_structure(A)
    st = optim.minimize(lambda t: value_grad_hess(_scaled, t, A_search, reml, scale), None,
                        drv, "newton", max_iter=max_iter, gtol=gtol, state=state,
                        budget=budget)
    return st, finish(optim.record(st, st.H, gtol, drv, final=False), A, reml, scale)


def finish(opt: optim.OptResult, A: Blocks, reml, scale=1.0) -> FitOutput:
    """The fit at the optimizer's record ``opt`` (in the search's coordinates, times
    ``scale``): the record in theta, theta rectified, the criterion and the solve."""
    opt = opt._replace(x=opt.x * scale, grad=opt.grad / scale, hess=opt.hess / scale ** 2)
    s = A.structure
    theta = from_centred(opt.x, s, jnp) if s.basis else rectify_theta(opt.x, s, jnp)
    be = jax_backend()
    F = factor.factorize(theta, A, be)
    sol = factor.solve(F, A, be)
    return FitOutput(opt=opt, theta=theta, objective=from_factor(F, A, reml, be), solution=sol)


fit_jit = jax.jit(fit_arrays, static_argnames=("optimizer", "gtol"))
objective_jit = jax.jit(objective)
