"""The model object and the fit driver: design -> objective -> optimizer -> result.

``LMM.from_formula`` builds the design and the precomputed arrays once;
``LMM.objective`` is the profiled criterion as a function of theta; ``LMM.fit``
runs the compiled Newton iteration and returns a new :class:`LMMResult` (the model
is never modified).  ``lmer`` does both in one call, as lme4's ``lmer``.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import pls
from ._warn import warn_user
from .design import Design, make_design
from .optimize import (NewtonResult, bfgs_minimize, bfgs_minimize_eager, newton_minimize,
                       newton_minimize_eager)

__all__ = ["LMM", "lmer", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """The optimizer stopped before meeting its convergence test."""


class FitOutput(NamedTuple):
    """Everything the compiled fit returns (arrays only, so it batches)."""

    opt: NewtonResult
    theta: jax.Array          # rectified (lme4's sign convention)
    solution: pls.Solution


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


# Above this many columns in the dense "rest" block, an exact Hessian per iteration
# (several dense inverses per parameter) costs far more than the few extra gradient
# iterations BFGS takes, and padding the design to share compiled code buys nothing
# (its fits run eagerly, :mod:`mixedjax.blocked`).
DENSE_REST_FOR_BFGS = 400
OPTIMIZERS = ("newton", "bfgs")


def choose_optimizer(structure: pls.Structure, optimizer: str = "auto",
                     closed_form: bool = False) -> str:
    """Resolve ``optimizer="auto"`` to "newton" or "bfgs" for a model structure.

    "auto" is Newton where the closed-form Hessian of :mod:`mixedjax.analytic`
    applies (``closed_form``), else BFGS with the eager exact gradient of
    :mod:`mixedjax.blocked`: both start at once, while a Newton fit through
    autodiff compiles for seconds.
    """
    if optimizer == "auto":
        return "newton" if closed_form else "bfgs"
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be 'auto' or one of {OPTIMIZERS}, got {optimizer!r}")
    return optimizer


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


def fit_blocked(theta0, X, reml: bool = True, max_iter: int = 200) -> FitOutput:
    """:func:`fit_arrays` with optimizer "bfgs", eagerly: BFGS in NumPy on the exact
    gradient of :mod:`mixedjax.blocked` (``X`` from :func:`blocked.prepare`), first on
    the log scale of the covariance factors' diagonals, preconditioned by
    :func:`blocked.curvature_guess` (see :func:`~mixedjax.optimize.bfgs_minimize_eager`)."""
    from . import blocked

    s = X.structure
    opt = bfgs_minimize_eager(lambda x: blocked.value_grad(x, X, reml), theta0,
                              max_iter=max_iter, log_mask=np.isfinite(pls.lower_bounds(s)),
                              hess0=lambda x: blocked.curvature_guess(x, X))
    theta = pls.rectify_theta(opt.x, s)
    return FitOutput(opt=opt, theta=theta, solution=blocked.solve_np(theta, X, reml))


def fit_eager(theta0, A: pls.PLSArrays, V, reml: bool = True,
              max_iter: int = 200) -> FitOutput:
    """:func:`fit_arrays` by Newton in NumPy with the closed-form derivatives of
    :mod:`mixedjax.analytic` (``A`` as NumPy arrays, ``V`` its dense coupling).

    For the small designs where those apply, compiling the jitted fit takes
    seconds while the whole eager fit takes milliseconds; the iteration rules are
    those of :func:`~mixedjax.optimize.newton_minimize`, so both reach the same
    optimum.
    """
    from . import analytic

    blocks = analytic.rest_blocks(A, V)
    opt = newton_minimize_eager(lambda x: analytic.value_grad_hess(x, A, reml, V, blocks=blocks),
                                lambda x: analytic.value(x, A, reml, V, blocks=blocks),
                                theta0, max_iter=max_iter)
    theta = pls.rectify_theta(opt.x, A.structure)
    return FitOutput(opt=opt, theta=theta, solution=analytic.solve_np(theta, A, reml, V))


_fit_jit = jax.jit(fit_arrays, static_argnames=("reml", "max_iter", "optimizer"))
_objective_jit = jax.jit(pls.objective, static_argnames=("reml",))


class LMM:
    """A linear mixed model specified by an lme4 formula and a DataFrame.

    Attributes: ``design`` (:class:`~mixedjax.design.Design`), ``arrays`` (the
    precomputed :class:`~mixedjax.pls.PLSArrays`), ``reml``.  ``objective(theta)`` is
    the profiled REML criterion (``reml=True``) or deviance, as lme4's ``devfun``.
    """

    def __init__(self, design: Design, reml: bool = True, pad: bool | None = None,
                 data_name: str | None = None):
        self.design = design
        self.reml = bool(reml)
        if pad is None:
            # Padding shares compiled code between similar small designs; a large
            # crossed design is fitted eagerly and padding would only enlarge S.
            q_rest = sum(t.k * t.nlevels for t in design.terms[1:])
            pad = q_rest <= DENSE_REST_FOR_BFGS
        self.pad = bool(pad)
        self.arrays = pls.build_arrays(design.terms, design.X, design.y, pad=pad,
                                       weights=design.weights, offset=design.offset)
        self.data_name = data_name

    @classmethod
    def from_formula(cls, formula: str, data: pd.DataFrame, reml: bool = True,
                     pad: bool | None = None, weights=None, offset=None) -> "LMM":
        """Build the model: parse, drop incomplete rows, precompute the blocks.

        ``weights``: prior weights as lme4's ``weights=`` (residual variance
        sigma^2 / w_i); ``offset``: a known term added to the linear predictor.  Each
        is a column name of ``data`` or an array with one value per row.
        """
        design = make_design(formula, data, weights=weights, offset=offset)
        name = data.attrs.get("name") if isinstance(data, pd.DataFrame) else None
        return cls(design, reml=reml, pad=pad, data_name=name)

    @functools.cached_property
    def response_map(self) -> pls.ResponseMap:
        """Maps a new response vector to :attr:`arrays` (see :func:`pls.with_response`)."""
        d = self.design
        return pls.response_map(d.terms, d.X, pad=self.pad, weights=d.weights, offset=d.offset)

    # -- the criterion -----------------------------------------------------------
    @property
    def structure(self) -> pls.Structure:
        return self.arrays.structure

    @property
    def ntheta(self) -> int:
        return self.structure.ntheta

    @property
    def theta_names(self) -> list[str]:
        """Names of theta's entries: ``group.row.col`` of each Lambda element."""
        names = []
        for term in self.design.terms:
            rows, cols = pls._tril_indices(term.k)
            for r, c in zip(rows, cols):
                if r == c:
                    names.append(f"{term.group_name}.{term.cnames[r]}")
                else:
                    names.append(f"{term.group_name}.{term.cnames[r]}.{term.cnames[c]}")
        return names

    def objective(self, theta):
        """Profiled REML criterion or deviance at ``theta`` (lme4's ``devfun``).

        Pure in ``theta``: ``jax.grad(model.objective)``, ``jax.hessian`` and
        ``jax.vmap`` apply.  Inside a user's own ``jax.jit`` prefer
        ``mixedjax.pls.objective(theta, model.arrays, model.reml)`` so the arrays
        are arguments, not constants baked into the compiled code.
        """
        theta = jnp.asarray(theta, dtype=jnp.float64)
        if theta.shape[-1] != self.ntheta:
            raise ValueError(f"theta must have {self.ntheta} entries "
                             f"({self.theta_names}), got {theta.shape[-1]}")
        if isinstance(theta, jax.core.Tracer):
            return pls.objective(theta, self.arrays, self.reml)
        if theta.ndim > 1:
            return jax.vmap(lambda t: _objective_jit(t, self.arrays, reml=self.reml))(theta)
        return _objective_jit(theta, self.arrays, reml=self.reml)

    def initial_theta(self) -> np.ndarray:
        return pls.initial_theta(self.structure)

    # -- fitting -------------------------------------------------------------------
    def fit(self, theta0=None, max_iter: int = 200, optimizer: str = "auto"):
        """Minimize the criterion and return an :class:`~mixedjax.result.LMMResult`.

        ``optimizer``: "newton" (exact Hessian each iteration: closed forms in
        NumPy where :mod:`mixedjax.analytic` applies, else the compiled autodiff
        loop), "bfgs" (exact gradients in NumPy, :mod:`mixedjax.blocked`; cheaper per
        iteration for crossed designs with a large dense block) or "auto" (Newton
        where the closed forms apply, else BFGS).
        """
        from .result import LMMResult

        eager = self._eager_arrays()
        optimizer = choose_optimizer(self.structure, optimizer, closed_form=eager is not None)
        theta0 = self.initial_theta() if theta0 is None else np.asarray(theta0, np.float64)
        if theta0.shape != (self.ntheta,):
            raise ValueError(f"theta0 must have {self.ntheta} entries, got {theta0.shape}")
        t0 = time.perf_counter()
        if optimizer == "bfgs":
            out = fit_blocked(theta0, self._blocked(), reml=self.reml, max_iter=max_iter)
        elif eager is not None:
            out = fit_eager(theta0, *eager, reml=self.reml, max_iter=max_iter)
        else:
            out = _fit_jit(jnp.asarray(theta0), self.arrays, reml=self.reml,
                           max_iter=max_iter, optimizer=optimizer)
            out = jax.tree_util.tree_map(np.asarray, out)
        elapsed = time.perf_counter() - t0
        result = LMMResult(self, out, theta0=theta0, elapsed=elapsed, optimizer=optimizer)
        if not result.converged:
            warn_user(
                f"the optimizer did not converge ({result.optinfo['message']}); "
                f"gradient max |g| = {result.optinfo['grad_max']:.2e} after "
                f"{result.optinfo['iterations']} iterations", ConvergenceWarning)
        return result

    def _blocked(self):
        """The prepared arrays of :mod:`mixedjax.blocked` (built once per model)."""
        if "_blocked_arrays" not in self.__dict__:
            from . import blocked
            self.__dict__["_blocked_arrays"] = blocked.prepare(self.arrays)
        return self.__dict__["_blocked_arrays"]

    def _eager_arrays(self):
        """(NumPy arrays, dense coupling) when the closed-form derivatives of
        :mod:`mixedjax.analytic` apply to this design, else None."""
        if "_eager" not in self.__dict__:
            from . import analytic, batchfit
            V = batchfit.coupling(self.arrays).V
            ok = analytic.applicable(self.structure, V is not None)
            A = jax.tree_util.tree_map(np.asarray, self.arrays)
            self.__dict__["_eager"] = (A, None if V is None else np.asarray(V)) if ok else None
        return self.__dict__["_eager"]

    def __repr__(self) -> str:
        d = self.design
        return (f"LMM({d.formula.formula!r}, n={d.n}, p={d.p}, "
                f"terms={[str(t.group_name) for t in d.terms]}, reml={self.reml})")


def lmer(formula: str, data: pd.DataFrame, reml: bool = True, theta0=None,
         max_iter: int = 200, weights=None, offset=None):
    """Fit a linear mixed model by REML (default) or ML, as lme4's ``lmer``.

    >>> import mixedjax
    >>> m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)",
    ...                   mixedjax.datasets.load("sleepstudy"))
    >>> round(m.objective, 3)
    1743.628
    """
    model = LMM.from_formula(formula, data, reml=reml, weights=weights, offset=offset)
    return model.fit(theta0=theta0, max_iter=max_iter)
