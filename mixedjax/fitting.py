"""Fitting a model's cross-products: the optimizer choice, the eager driver and what a
fit returns.

:class:`FitOutput` holds arrays only, so the compiled fit (:mod:`mixedjax.compiled`)
returns the same record and batches.  :func:`fit_eager` runs
:func:`mixedjax.optim.minimize_bfgs_eager` in NumPy on the exact gradient
(:class:`mixedjax.criterion.EagerModel`) with the BLAS threads its sizes pay for
(:mod:`mixedjax.threads`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import factor, optim
from .backend import NUMPY
from .criterion import EagerModel, curvature_guess
from .structure import diagonal_mask, rectify_theta
from .threads import blas_threads

__all__ = ["ConvergenceWarning", "FitOutput", "OPTIMIZERS", "choose_optimizer", "fit_eager"]


class ConvergenceWarning(UserWarning):
    """The optimizer stopped before meeting its convergence test."""


class FitOutput(NamedTuple):
    """What a fit returns (arrays only, so the compiled fit batches): the optimizer's
    record, theta in lme4's sign convention, the criterion there and the solve."""

    opt: optim.OptResult
    theta: np.ndarray
    objective: np.ndarray
    solution: factor.Solution


OPTIMIZERS = ("newton", "bfgs")


def choose_optimizer(optimizer: str = "auto") -> str:
    """Resolve ``optimizer``: "auto" is eager BFGS (no compilation, one factorization
    per evaluation); "newton" the compiled exact-Hessian loop."""
    if optimizer == "auto":
        return "bfgs"
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be 'auto' or one of {OPTIMIZERS}, got {optimizer!r}")
    return optimizer


def fit_eager(em: EagerModel, theta0, placement, max_iter: int = 200) -> FitOutput:
    """BFGS in NumPy on the exact gradient, first on the log scale of the covariance
    factors' diagonals and preconditioned by :func:`~mixedjax.criterion.curvature_guess`
    (:func:`mixedjax.optim.minimize_bfgs_eager`)."""
    s = em.structure
    with blas_threads(s):
        opt = optim.minimize_bfgs_eager(
            em.value_grad, theta0, log_mask=diagonal_mask(s), max_iter=max_iter,
            hess0=lambda x: curvature_guess(x, em.A, placement))
        theta = rectify_theta(opt.x, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            F = factor.factorize(theta, em.A, NUMPY, em.ops)
            sol = factor.solve(F, em.A, NUMPY, em.ops)
        obj = em.value(theta)
    return FitOutput(opt=opt, theta=theta, objective=np.asarray(obj), solution=sol)
