"""The model object and the fit driver: design -> objective -> optimizer -> result.

``LMM.from_formula`` builds the design and the precomputed arrays once;
``LMM.objective`` is the profiled criterion as a function of theta; ``LMM.fit``
minimizes it (eagerly in NumPy where it can, see :func:`choose_optimizer`; the
compiled fit is in :mod:`mixedjax.compiled`) and returns a new :class:`LMMResult`
(the model is never modified).  ``lmer`` does both in one call, as lme4's ``lmer``.
"""

from __future__ import annotations

import functools
import time
from typing import NamedTuple

import numpy as np
import pandas as pd

from . import layout
from ._warn import warn_user
from .design import Design, make_design
from .optimize_np import NewtonResult, bfgs_minimize_eager, newton_minimize_eager

__all__ = ["LMM", "lmer", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """The optimizer stopped before meeting its convergence test."""


class FitOutput(NamedTuple):
    """Everything the compiled fit returns (arrays only, so it batches)."""

    opt: NewtonResult
    theta: np.ndarray         # rectified (lme4's sign convention); jax arrays when traced
    solution: layout.Solution


# Above this many columns in the dense "rest" block, an exact Hessian per iteration
# (several dense inverses per parameter) costs far more than the few extra gradient
# iterations BFGS takes, and padding the design to share compiled code buys nothing
# (its fits run eagerly, :mod:`mixedjax.blocked`).
DENSE_REST_FOR_BFGS = 400
OPTIMIZERS = ("newton", "bfgs")


def choose_optimizer(structure: layout.Structure, optimizer: str = "auto",
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


def fit_blocked(theta0, X, reml: bool = True, max_iter: int = 200) -> FitOutput:
    """:func:`~mixedjax.compiled.fit_arrays` with optimizer "bfgs", eagerly: BFGS in
    NumPy on the exact gradient of :mod:`mixedjax.blocked` (``X`` from
    :func:`blocked.prepare`), first on the log scale of the covariance factors'
    diagonals, preconditioned by :func:`blocked.curvature_guess` (see
    :func:`~mixedjax.optimize_np.bfgs_minimize_eager`)."""
    from . import blocked

    s = X.structure
    opt = bfgs_minimize_eager(lambda x: blocked.value_grad(x, X, reml), theta0,
                              max_iter=max_iter, log_mask=np.isfinite(layout.lower_bounds(s)),
                              hess0=lambda x: blocked.curvature_guess(x, X))
    theta = layout.rectify_theta(opt.x, s)
    return FitOutput(opt=opt, theta=theta, solution=blocked.solve_np(theta, X, reml))


def fit_eager(theta0, A: layout.PLSArrays, V, reml: bool = True,
              max_iter: int = 200) -> FitOutput:
    """:func:`~mixedjax.compiled.fit_arrays` by Newton in NumPy with the closed-form
    derivatives of :mod:`mixedjax.analytic` (``A`` as NumPy arrays, ``V`` its dense
    coupling).

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
    theta = layout.rectify_theta(opt.x, A.structure)
    return FitOutput(opt=opt, theta=theta, solution=analytic.solve_np(theta, A, reml, V))


class LMM:
    """A linear mixed model specified by an lme4 formula and a DataFrame.

    Attributes: ``design`` (:class:`~mixedjax.design.Design`), ``arrays`` (the
    precomputed :class:`~mixedjax.pls.PLSArrays`, on the device), ``reml``.
    ``objective(theta)`` is the profiled REML criterion (``reml=True``) or deviance,
    as lme4's ``devfun``.

    The blocks are computed in NumPy when the model is built; JAX is imported, and
    ``arrays`` transferred, at the first use that needs it (``objective``, a
    compiled fit, batched refits).  Eager fits read the NumPy blocks directly.
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
        self.arrays_np = layout.build_arrays(design.terms, design.X, design.y, pad=pad,
                                             weights=design.weights, offset=design.offset)
        self.data_name = data_name

    @functools.cached_property
    def arrays(self):
        """:attr:`arrays_np` on the device (:class:`~mixedjax.pls.PLSArrays`)."""
        from . import pls
        return pls.to_device(self.arrays_np)

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
    def response_map(self):
        """Maps a new response vector to :attr:`arrays` (a :class:`pls.ResponseMap`;
        see :func:`pls.with_response`)."""
        from . import pls
        d = self.design
        return pls.response_map(d.terms, d.X, pad=self.pad, weights=d.weights, offset=d.offset)

    # -- the criterion -----------------------------------------------------------
    @property
    def structure(self) -> layout.Structure:
        return self.arrays_np.structure

    @property
    def ntheta(self) -> int:
        return self.structure.ntheta

    @property
    def theta_names(self) -> list[str]:
        """Names of theta's entries: ``group.row.col`` of each Lambda element."""
        names = []
        for term in self.design.terms:
            rows, cols = layout._tril_indices(term.k)
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
        import jax
        import jax.numpy as jnp

        from . import compiled, pls

        theta = jnp.asarray(theta, dtype=jnp.float64)
        if theta.shape[-1] != self.ntheta:
            raise ValueError(f"theta must have {self.ntheta} entries "
                             f"({self.theta_names}), got {theta.shape[-1]}")
        if isinstance(theta, jax.core.Tracer):
            return pls.objective(theta, self.arrays, self.reml)
        if theta.ndim > 1:
            f = compiled._objective_jit
            return jax.vmap(lambda t: f(t, self.arrays, reml=self.reml))(theta)
        return compiled._objective_jit(theta, self.arrays, reml=self.reml)

    def initial_theta(self) -> np.ndarray:
        """lme4's starting value: identity relative covariance factors."""
        return layout.initial_theta(self.structure)

    def start_theta(self) -> np.ndarray:
        """Where :meth:`fit` starts by default: a moment estimate when every term is
        scalar (:func:`mixedjax.start.moment_start`), else :meth:`initial_theta`."""
        from .start import moment_start
        theta = moment_start(self.arrays_np)
        return self.initial_theta() if theta is None else theta

    # -- fitting -------------------------------------------------------------------
    def fit(self, theta0=None, max_iter: int = 200, optimizer: str = "auto"):
        """Minimize the criterion and return an :class:`~mixedjax.result.LMMResult`.

        ``theta0``: the starting theta (default :meth:`start_theta`).
        ``optimizer``: "newton" (exact Hessian each iteration: closed forms in
        NumPy where :mod:`mixedjax.analytic` applies, else the compiled autodiff
        loop), "bfgs" (exact gradients in NumPy, :mod:`mixedjax.blocked`; cheaper per
        iteration for crossed designs with a large dense block) or "auto" (Newton
        where the closed forms apply, else BFGS).
        """
        from .result import LMMResult

        eager = self._eager_arrays()
        optimizer = choose_optimizer(self.structure, optimizer, closed_form=eager is not None)
        if theta0 is None:
            theta0 = self.start_theta()
        theta0 = np.asarray(theta0, np.float64)
        if theta0.shape != (self.ntheta,):
            raise ValueError(f"theta0 must have {self.ntheta} entries, got {theta0.shape}")
        t0 = time.perf_counter()
        if optimizer == "bfgs":
            out = fit_blocked(theta0, self._blocked(), reml=self.reml, max_iter=max_iter)
        elif eager is not None:
            out = fit_eager(theta0, *eager, reml=self.reml, max_iter=max_iter)
        else:
            import jax

            from . import compiled
            out = compiled._fit_jit(jax.device_put(theta0), self.arrays, reml=self.reml,
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
            self.__dict__["_blocked_arrays"] = blocked.prepare(self.arrays_np)
        return self.__dict__["_blocked_arrays"]

    def _eager_arrays(self):
        """(NumPy arrays, dense coupling) when the closed-form derivatives of
        :mod:`mixedjax.analytic` apply to this design, else None."""
        if "_eager" not in self.__dict__:
            from . import analytic
            V = layout.dense_coupling(self.arrays_np)
            ok = analytic.applicable(self.structure, V is not None)
            self.__dict__["_eager"] = (self.arrays_np, V) if ok else None
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


# The compiled fit lives in mixedjax.compiled (it imports JAX); its names stay
# reachable here for code written against them.
_COMPILED = ("rectify", "fit_arrays", "_fit_jit", "_objective_jit")


def __getattr__(name):
    if name in _COMPILED:
        from . import compiled
        return getattr(compiled, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
