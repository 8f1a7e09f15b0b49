"""Fitting one design to many responses at once: the vmapped kernel.

Each replicate is the Newton search of :func:`mixedjax.compiled.fit_arrays` (the
autodiff Hessian of the one criterion, LAPACK-free eigendecompositions) on the
blocks of its response (:func:`mixedjax.crossprod.with_response`: only the response
parts change), run in pieces of a few evaluations
(:func:`mixedjax.compiled.newton_piece`) and summarized to fixed-shape arrays.
:func:`fit_chunk` vmaps a piece over a chunk of responses; :mod:`mixedjax.batch`
feeds chunks and devices.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import factor, optim
from .backend import jax_backend
from .compiled import newton_piece, search_start
from .criterion import dof
from .crossprod import Blocks, ResponseMap, with_response

__all__ = ["FitSummary", "fit_one", "fit_chunk", "summary_at"]


class FitSummary(NamedTuple):
    """What a batched fit keeps of each replicate (fixed shapes).

    ``theta``: rectified (lme4's sign convention); ``beta``/``stderr``: fixed effects
    and their standard errors; ``sigma``, ``objective``; ``converged``,
    ``iterations``, ``status`` as in :class:`mixedjax.optim.OptResult`.
    """

    theta: jax.Array
    beta: jax.Array
    stderr: jax.Array
    sigma: jax.Array
    objective: jax.Array
    converged: jax.Array
    iterations: jax.Array
    status: jax.Array


def summary_at(sol: factor.Solution, A: Blocks, reml):
    """(sigma, standard errors of beta) from a solve (JSS eqs. 16-18, 54)."""
    be = jax_backend()
    sigma = jnp.sqrt(sol.pwrss / dof(A, reml, jnp))
    Li = be.tri_inv(jnp.tril(sol.rxx))
    V = factor.back_vcov(A.rx, Li.T @ Li, be)
    return sigma, sigma * jnp.sqrt(jnp.diagonal(V))


def fit_one(state, A: Blocks, reml, max_iter, budget, scale=1.0):
    """Go on with one replicate's Newton fit from the loop ``state`` for at most
    ``budget`` evaluations (:func:`mixedjax.compiled.newton_piece`); returns the loop
    state and the :class:`FitSummary` at its last accepted point (pure, vmappable;
    ``reml``, ``max_iter``, ``budget`` and ``scale`` may be traced)."""
    state, out = newton_piece(state, A, reml, max_iter, budget, scale)
    sigma, se = summary_at(out.solution, A, reml)
    summary = FitSummary(theta=out.theta, beta=out.solution.beta, stderr=se, sigma=sigma,
                         objective=out.objective,
                         converged=out.opt.converged, iterations=out.opt.iterations,
                         status=out.opt.status)
    return state, summary


@jax.jit
def fit_chunk(state, fresh, theta0, A: Blocks, R: ResponseMap, Y, max_iter, budget, reml,
              scale=1.0):
    """Go on with the fit of every row of ``Y`` (B, n) for at most ``budget``
    evaluations: from the loop ``state`` (one entry per row), or, where ``fresh``,
    from a new search at that row of ``theta0`` (B, ntheta).  Each fit stops after
    ``max_iter`` iterations in all, by REML when the boolean ``reml`` is true, else by
    ML; ``scale``: the size of theta (:func:`mixedjax.start.theta_scale`).  Returns
    the loop states and the :class:`FitSummary` of each row.

    One compiled function per (design structure, B, n): the budget, the iteration
    cap and the REML flag are arguments, so every call of a run, and REML and ML
    fits, share it.
    """
    be = jax_backend()
    drv = optim.traced(batched_eigh=True)

    def one(st, new, t0, y):
        start = optim.start_state(search_start(t0, A, scale), drv)
        st = jax.tree_util.tree_map(lambda a, b: jnp.where(new, a, b), start, st)
        return fit_one(st, with_response(A, R, y, be), reml, max_iter, budget, scale)

    return jax.vmap(one)(state, fresh, theta0, Y)
