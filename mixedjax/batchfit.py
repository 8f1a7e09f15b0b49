"""Fitting one design to many responses at once: the vmapped kernel.

Each replicate is :func:`mixedjax.compiled.fit_arrays` (Newton with the autodiff
Hessian of the one criterion, LAPACK-free eigendecompositions) on the blocks of
its response (:func:`mixedjax.crossprod.with_response`: only the response parts
change), summarized to fixed-shape arrays.  :func:`fit_chunk` vmaps it over a
chunk of responses; :mod:`mixedjax.batch` feeds chunks and devices.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import factor
from .backend import jax_backend
from .compiled import fit_arrays
from .criterion import dof
from .crossprod import Blocks, ResponseMap, with_response

__all__ = ["FitSummary", "fit_one", "fit_chunk", "summary_at"]


class FitSummary(NamedTuple):
    """What a batched fit keeps of each replicate (fixed shapes).

    ``theta``: rectified (lme4's sign convention); ``theta_raw``: the optimizer's
    point (a restart from it continues the same iteration; theta itself for a
    design searched in centred columns, :func:`mixedjax.structure.to_centred`); ``beta``/``stderr``:
    fixed effects and their standard errors; ``sigma``, ``objective``;
    ``converged``, ``iterations``, ``status`` as in :class:`mixedjax.optim.OptResult`.
    """

    theta: jax.Array
    theta_raw: jax.Array
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


def fit_one(theta0, A: Blocks, reml, max_iter, scale=1.0) -> FitSummary:
    """Fit theta by Newton from ``theta0`` and summarize the fit (pure, vmappable;
    ``reml``, ``max_iter`` and ``scale`` (:func:`mixedjax.compiled.fit_arrays`) may
    be traced)."""
    out = fit_arrays(theta0, A, reml, max_iter, final=False, scale=scale)
    sigma, se = summary_at(out.solution, A, reml)
    # A restart maps its start to the search's coordinates (fit_arrays), so a
    # design searched in centred columns restarts from theta itself.
    raw = out.theta if A.structure.basis else out.opt.x
    return FitSummary(theta=out.theta, theta_raw=raw, beta=out.solution.beta, stderr=se,
                      sigma=sigma, objective=out.objective, converged=out.opt.converged,
                      iterations=out.opt.iterations, status=out.opt.status)


@jax.jit
def fit_chunk(theta0, A: Blocks, R: ResponseMap, Y, max_iter, reml,
              scale=1.0) -> FitSummary:
    """Fit every row of ``Y`` (B, n) from its row of ``theta0`` (B, ntheta), each
    for at most its entry of ``max_iter`` (B,) iterations, by REML when the boolean
    ``reml`` is true, else by ML; ``scale``: the size of theta
    (:func:`mixedjax.start.theta_scale`).

    One compiled function per (design structure, B, n): the iteration caps and the
    REML flag are arguments, so first passes, continuations and REML and ML fits
    share it.
    """
    be = jax_backend()

    def one(t0, y, cap):
        return fit_one(t0, with_response(A, R, y, be), reml, cap, scale)

    return jax.vmap(one)(theta0, Y, max_iter)
