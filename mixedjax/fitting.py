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
from .criterion import EagerModel, curvature_guess
from .structure import diagonal_mask, from_centred, rectify_theta, to_centred
from ._warn import warn_user
from .threads import blas_threads

__all__ = ["ConvergenceWarning", "FitOutput", "OPTIMIZERS", "check_response", "choose_optimizer",
           "fit_eager"]


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


def check_response(yw, rss, name: str, weighted: bool = False) -> None:
    """Check a response before a fit: ``yw`` the response (less its offset, times
    sqrt(prior weights)), ``rss`` its least-squares residual sum of squares on X.

    A ValueError where its sums of squares leave float64 (the criterion would be
    inf or NaN at every theta) or where X fits it exactly (rss = 0: the criterion
    has no minimum); a warning where X fits it to round-off (sigma and the variance
    components are then round-off, as in lme4's and nlme's fits of such data).
    """
    yw = np.asarray(yw, np.float64)
    big = float(np.max(np.abs(yw))) if yw.size else 0.0
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        yy = float(np.sum(yw * yw))
        rss = float(rss)
    what = f"response {name!r}" + (" times sqrt(weights)" if weighted else "")
    if not (np.isfinite(yy) and np.isfinite(rss)) or big > 1e150:
        raise ValueError(f"the {what} is too large for float64 sums of squares "
                         f"(max |y| = {big:.3g}): rescale it (e.g. divide by a power of 10)")
    if big > 0 and (yy < 1e-300 or big < 1e-155):
        raise ValueError(f"the {what} is too small for float64 sums of squares "
                         f"(max |y| = {big:.3g}): rescale it (e.g. multiply by a power of 10)")
    if rss == 0.0:
        raise ValueError(f"the fixed effects fit the {what} exactly (residual sum of squares "
                         "0): the criterion has no minimum, and sigma and the variance "
                         "components are not defined")
    if rss <= 1e-24 * yy:
        warn_user(f"the fixed effects fit the {what} exactly up to round-off (residual sum "
                  "of squares below 1e-24 of the sum of squares): sigma and the variance "
                  "components are round-off, not estimates")


def choose_optimizer(optimizer: str = "auto") -> str:
    """Resolve ``optimizer``: "auto" is eager BFGS (no compilation, one factorization
    per evaluation); "newton" the compiled exact-Hessian loop."""
    if optimizer == "auto":
        return "bfgs"
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be 'auto' or one of {OPTIMIZERS}, got {optimizer!r}")
    return optimizer


def fit_eager(em: EagerModel, theta0, placement, max_iter: int = 200,
              scale: float = 1.0) -> FitOutput:
    """BFGS in NumPy on the exact gradient, first on the log scale of the covariance
    factors' diagonals and preconditioned by :func:`~mixedjax.criterion.curvature_guess`
    (:func:`mixedjax.optim.minimize_bfgs_eager`).

    ``scale`` (:func:`mixedjax.start.theta_scale`): the search runs in theta / scale.
    Prior weights multiplied by c multiply the optimal theta by c^-1/2 and change
    nothing else, while the optimizer's tolerances and step limits are relative to
    1 + |x|; in theta / scale the search is the same for every c.
    """
    s = em.structure
    # A structure with a column basis is searched in the centred coordinates
    # (structure.to_centred); the record (x, gradient, Hessian) stays in them.
    search = em if not s.basis else EagerModel(em.A.replace_structure(s.plain()), em.reml)

    def value_grad(t):
        f, g = search.value_grad(t * scale)
        return f, g * scale

    with blas_threads(s):
        x0 = to_centred(np.asarray(theta0, np.float64), s)
        opt = optim.minimize_bfgs_eager(
            value_grad, x0 / scale, log_mask=diagonal_mask(s),
            max_iter=max_iter, hess0=lambda t: curvature_guess(t * scale, search.A, placement))
        if scale != 1.0:
            opt = opt._replace(x=opt.x * scale, grad=opt.grad / scale,
                               hess=opt.hess / scale ** 2)
        theta = from_centred(opt.x, s) if s.basis else rectify_theta(opt.x, s)
        obj, sol = em.solve(theta)
    return FitOutput(opt=opt, theta=theta, objective=np.asarray(obj), solution=sol)
