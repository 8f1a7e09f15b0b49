"""The compiled (JAX) side of the fit driver: the jit-compiled, vmap-able fit.

:mod:`mixedjax.model` fits eagerly where it can and imports this module only for
the compiled path (``optimizer="newton"`` on a design without closed forms,
``LMM.objective``, batched refits), so ``import mixedjax`` and eager fits never
import JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import pls
from .model import FitOutput
from .optimize import bfgs_minimize, newton_minimize

__all__ = ["rectify", "fit_arrays"]


def rectify(theta, structure: pls.Structure):
    """jnp version of :func:`pls.rectify_theta` (usable inside jit/vmap)."""
    parts = []
    for k, sl in zip(structure.k, structure.theta_slices):
        rows, cols = pls._tril_indices(k)
        block = theta[sl]
        diag_pos = np.array([np.flatnonzero((cols == j) & (rows == j))[0] for j in range(k)])
        signs = jnp.where(block[diag_pos] < 0, -1.0, 1.0)
        parts.append(block * signs[cols])
    return jnp.concatenate(parts)


def fit_arrays(theta0, A: pls.PLSArrays, reml: bool = True, max_iter: int = 200,
               optimizer: str = "newton") -> FitOutput:
    """Fit theta from ``theta0`` and solve for beta, u, sigma at the optimum.

    ``optimizer``: "newton" (exact Hessian) or "bfgs" (exact gradients).  Pure and
    jit/vmap-compatible: ``jax.vmap(fit_arrays, (None, 0))`` fits a batch of
    responses that share one design.
    """
    minimize = bfgs_minimize if optimizer == "bfgs" else newton_minimize
    opt = minimize(pls.objective, theta0, A, reml, max_iter=max_iter)
    theta = rectify(opt.x, A.structure)
    return FitOutput(opt=opt, theta=theta, solution=pls.solve(theta, A, reml))


_fit_jit = jax.jit(fit_arrays, static_argnames=("reml", "max_iter", "optimizer"))
_objective_jit = jax.jit(pls.objective, static_argnames=("reml",))
