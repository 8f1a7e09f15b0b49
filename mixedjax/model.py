"""The model and the fit: design -> structure and cross-products -> optimizer -> result.

``LMM.from_formula`` builds the design, works out the factor's typed blocks
(:mod:`mixedjax.structure`) and sums the cross-products once
(:mod:`mixedjax.crossprod`); ``LMM.objective`` is the profiled criterion
(:mod:`mixedjax.criterion`) as a pure JAX function of theta; ``LMM.fit``
minimizes it and returns a new :class:`~mixedjax.result.LMMResult` (the model is
never modified).  ``lmer`` does both in one call, as lme4's ``lmer``.

Which optimizer runs where is decided here (:func:`mixedjax.fitting.choose_optimizer`): by default
BFGS on the exact gradient, eagerly in NumPy (:func:`mixedjax.fitting.fit_eager`), so a fit starts
at once in a fresh process and never imports JAX; ``optimizer="newton"`` runs
Newton with the autodiff Hessian as one compiled call
(:func:`mixedjax.compiled.fit_arrays`), on JAX's default device.
"""

from __future__ import annotations

import copy
import functools
import numbers
import time

import numpy as np
import pandas as pd

from . import crossprod, factor
from .checks import check_flag
from .frames import as_pandas
from ._warn import warn_user
from .backend import NUMPY
from .criterion import EagerModel
from .design import Design, make_design
from .fitting import (ConvergenceWarning, FitOutput, OPTIMIZERS, check_response,
                      choose_optimizer, fit_eager)
from .persist import plain_state
from .start import moment_start, theta_scale
from .structure import (Structure, analyze, centring_basis, diagonal_mask, from_centred,
                        initial_theta, tril_indices)

__all__ = ["LMM", "lmer", "ConvergenceWarning", "FitOutput", "choose_optimizer",
           "OPTIMIZERS"]


class LMM:
    """A linear mixed model specified by an lme4 formula and a DataFrame.

    Attributes: ``design`` (:class:`~mixedjax.design.Design`), ``structure`` and
    ``placement`` (the factor's typed blocks), ``blocks`` (the cross-products,
    NumPy), ``arrays`` (the same on JAX's device, loaded at first use), ``reml``.
    ``objective(theta)`` is the profiled REML criterion (``reml=True``) or deviance,
    as lme4's ``devfun``.
    """

    def __init__(self, design: Design, reml: bool = True, data_name: str | None = None):
        self.design = design
        self.reml = check_flag(reml, "reml")
        s, self.placement = analyze(design.terms, design.p, centring_basis(design.terms))
        self.blocks, self._rmap, self.rows = crossprod.build(
            design.terms, design.X, design.y, s, self.placement, design.weights, design.offset)
        self.data_name = data_name

    @classmethod
    def from_blocks(cls, design: Design, blocks: crossprod.Blocks, placement,
                    reml: bool = True, response_map: crossprod.ResponseMap | None = None,
                    rows: crossprod.Rows | None = None, data_name: str | None = None) -> "LMM":
        """A model from cross-products summed elsewhere (e.g. over the partitions of
        data larger than memory, :mod:`mixedjax.outofcore`) instead of from rows.

        ``blocks`` (:class:`~mixedjax.crossprod.Blocks`) and ``placement`` in the
        layout :func:`mixedjax.structure.analyze` gives for ``design``'s terms, as
        :func:`mixedjax.crossprod.build` would sum them.  ``response_map`` and
        ``rows``, when the rows are at hand: without them the criterion, the fit and
        everything that reads the blocks work, while refits to new responses (which
        map rows) raise; :meth:`start_theta` is then lme4's start and
        :meth:`check_response` reads ``design.y`` as the weighted response less its
        offset (or any vector with the same largest |value| and sum of squares).
        """
        if not isinstance(blocks, crossprod.Blocks):
            raise TypeError(f"blocks must be mixedjax.crossprod.Blocks, got "
                            f"{type(blocks).__name__}")
        if blocks.structure.m != tuple(t.nlevels for t in design.terms):
            raise ValueError(f"blocks have terms of {list(blocks.structure.m)} levels but the "
                             f"design's have {[t.nlevels for t in design.terms]}")
        model = cls.__new__(cls)
        model.design, model.reml = design, check_flag(reml, "reml")
        model.placement, model.blocks = placement, blocks
        model._rmap, model.rows, model.data_name = response_map, rows, data_name
        return model

    @classmethod
    def from_formula(cls, formula: str, data: pd.DataFrame, reml: bool = True,
                     weights=None, offset=None) -> "LMM":
        """Build the model: parse, drop incomplete rows, sum the cross-products.

        ``weights``: prior weights as lme4's ``weights=`` (residual variance
        sigma^2 / w_i); ``offset``: a known term added to the linear predictor.  Each
        is a column name of ``data`` or an array with one value per row.
        """
        check_flag(reml, "reml")
        data = as_pandas(data, "data")
        design = make_design(formula, data, weights=weights, offset=offset)
        name = data.attrs.get("name")
        return cls(design, reml=reml, data_name=name)

    # Pickling keeps the design and the NumPy cross-products; the cached device arrays,
    # the eager criterion and the coupling are rebuilt on first use after loading.
    def __getstate__(self):
        return plain_state(self)

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def structure(self) -> Structure:
        return self.blocks.structure

    @functools.cached_property
    def arrays(self):
        """:attr:`blocks` on JAX's device (a pytree)."""
        return crossprod.to_device(self.blocks)

    @functools.cached_property
    def response_map(self):
        """Maps a new response vector to :attr:`arrays`
        (:func:`mixedjax.crossprod.with_response`), on JAX's device."""
        if self._rmap is None:
            self.require_rows("mapping a new response (refits, simulation, bootstrap)")
        return crossprod.to_device(self._rmap)

    def with_reml(self, reml: bool) -> "LMM":
        """This model with the REML (True) or ML (False) criterion: the same design,
        cross-products and rows, nothing recomputed (so it works for a model built
        from its cross-products too)."""
        model = copy.copy(self)
        model.reml = check_flag(reml, "reml")
        model.__dict__.pop("eager", None)        # bound to the criterion
        return model

    def require_rows(self, what: str) -> None:
        """A ValueError naming ``what`` when the model was built from its cross-products
        without its rows (:meth:`from_blocks`: a fit from partitioned data), whose
        X, Z and y ``what`` reads."""
        if self.rows is None or self._rmap is None:
            raise ValueError(f"{what} reads the model's rows, and this model was built from "
                             "its cross-products without them (a fit from partitioned data, "
                             "or LMM.from_blocks); fit the rows in memory (mixedjax.lmer on a "
                             f"pandas DataFrame) for {what}")

    @functools.cached_property
    def coupling(self):
        """The first term's coupling to the middle block as a dense (m0, k0, columns)
        array (NumPy; None without a middle block), for row-wise solves."""
        return factor.level_coupling(self.blocks, NUMPY) if self.structure.n_cl else None

    @functools.cached_property
    def eager(self) -> EagerModel:
        """The criterion and its gradient in NumPy."""
        return EagerModel(self.blocks, self.reml)

    @property
    def ntheta(self) -> int:
        return self.structure.ntheta

    @property
    def theta_names(self) -> list[str]:
        """Names of theta's entries: ``group.row.col`` of each lambda element."""
        names = []
        for term in self.design.terms:
            rows, cols = tril_indices(term.k)
            for r, c in zip(rows, cols):
                if r == c:
                    names.append(f"{term.group_name}.{term.cnames[r]}")
                else:
                    names.append(f"{term.group_name}.{term.cnames[r]}.{term.cnames[c]}")
        return names

    # -- the criterion -----------------------------------------------------------
    def objective(self, theta):
        """Profiled REML criterion or deviance at ``theta`` (lme4's ``devfun``).

        Pure in ``theta``: ``jax.grad(model.objective)``, ``jax.hessian`` and
        ``jax.vmap`` apply.  Inside a user's own ``jax.jit`` prefer
        ``mixedjax.profiled_objective(theta, model.arrays, model.reml)`` so the
        arrays are arguments, not constants baked into the compiled code.
        """
        import jax
        import jax.numpy as jnp

        from . import compiled
        from .criterion import objective

        theta = jnp.asarray(theta, dtype=jnp.float64)
        if theta.shape[-1:] != (self.ntheta,):
            raise ValueError(f"theta must have {self.ntheta} entries "
                             f"({self.theta_names}), got shape {theta.shape}")
        if isinstance(theta, jax.core.Tracer):
            return objective(theta, self.arrays, self.reml)
        if theta.ndim > 1:
            return jax.vmap(lambda t: compiled.objective_jit(t, self.arrays, self.reml))(theta)
        return compiled.objective_jit(theta, self.arrays, self.reml)

    def initial_theta(self) -> np.ndarray:
        """lme4's starting value: identity relative covariance factors."""
        return initial_theta(self.structure)

    def start_theta(self) -> np.ndarray:
        """Where :meth:`fit` starts by default: a moment estimate when every term is
        scalar and the rows are at hand (:func:`mixedjax.start.moment_start`), else
        :meth:`initial_theta` (relative to the weights' :func:`~mixedjax.start.theta_scale`)
        in the factor's columns (:func:`mixedjax.structure.centring_basis`)."""
        R = self._rmap
        theta = None
        if R is not None:
            _, r = crossprod.project(R.q, (self.design.y - R.offset) * R.sqrtw)
            theta = moment_start(self.design.terms, R.q, r, R.sqrtw)
        if theta is None:
            # lme4's start in the factor's columns: for a term in a centred basis
            # (structure.centring_basis) identity there, not in the raw columns.
            start = self.initial_theta() * theta_scale(self.design.weights)
            return from_centred(start, self.structure)
        return theta

    # -- fitting -------------------------------------------------------------------
    def check_response(self) -> None:
        """What :meth:`fit` checks first (:func:`mixedjax.fitting.check_response`): a
        ValueError where the weighted response's sums of squares leave float64 or X
        fits it exactly, a warning where X fits it to round-off."""
        R = self._rmap
        yw = self.design.y if R is None else (self.design.y - R.offset) * R.sqrtw
        check_response(yw, self.blocks.abb[-1, -1], self.design.response_name,
                       self.design.weights is not None)

    def fit(self, theta0=None, max_iter: int = 200, optimizer: str = "auto"):
        """Minimize the criterion and return an :class:`~mixedjax.result.LMMResult`.

        ``theta0``: the starting theta (default :meth:`start_theta`); ``max_iter``:
        the iteration limit; ``optimizer``: "auto" or "bfgs" (BFGS on the exact
        gradient, eagerly in NumPy) or "newton" (Newton with the exact Hessian, one
        compiled JAX call on JAX's default device).
        """
        from .result import SINGULAR_TOL, LMMResult

        optimizer = choose_optimizer(optimizer)
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) \
                or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.check_response()
        given = theta0 is not None
        if not given:
            theta0 = self.start_theta()
        try:
            theta0 = np.asarray(theta0, np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"theta0 must be numeric, got {theta0!r}") from None
        if theta0.shape != (self.ntheta,):
            raise ValueError(f"theta0 must have {self.ntheta} entries ({self.theta_names}), "
                             f"got shape {theta0.shape}")
        if not np.all(np.isfinite(theta0)):
            raise ValueError(f"theta0 must be finite, got {theta0}")
        scale = theta_scale(self.design.weights)
        lme4_start = from_centred(self.initial_theta() * scale, self.structure)
        t0 = time.perf_counter()
        out = self._optimize(theta0, int(max_iter), optimizer, scale)
        if not np.isfinite(out.opt.fun) and int(out.opt.iterations) == 0:
            if given:
                raise ValueError(
                    f"the criterion cannot be evaluated at theta0={theta0} (the factorization "
                    "of Lambda'Z'Z Lambda + I loses all precision there); give a start "
                    "nearer the optimum, or none")
            theta0 = lme4_start
            out = self._optimize(theta0, int(max_iter), optimizer, scale)
        if not given and not np.array_equal(theta0, lme4_start) and (
                not bool(out.opt.converged) or not np.isfinite(out.objective) or np.any(
                    np.abs(np.asarray(out.theta)[diagonal_mask(self.structure)])
                    < SINGULAR_TOL * scale)):
            # From the moment estimate the search can end at a local minimum with a
            # variance at 0 (few levels, random slopes); such a fit is checked from
            # lme4's start, as batched refits are, and the better converged fit kept.
            alt = self._optimize(lme4_start, int(max_iter), optimizer, scale)
            f0, f1 = float(out.objective), float(alt.objective)
            if bool(alt.opt.converged) and np.isfinite(f1) and (
                    not bool(out.opt.converged) or not np.isfinite(f0)
                    or f1 < f0 - 1e-9 * max(1.0, abs(f0))):
                out, theta0 = alt, lme4_start
        if not np.isfinite(out.objective):
            raise ValueError(
                "the fit failed: the criterion is not finite at the optimizer's last point "
                f"theta={np.asarray(out.theta)} (the response or the random-effects columns "
                "may be too badly scaled; centring or rescaling them helps)")
        elapsed = time.perf_counter() - t0
        result = LMMResult(self, out, theta0=theta0, elapsed=elapsed, optimizer=optimizer)
        if not result.converged:
            big = float(np.max(np.abs(result.theta))) / scale if result.theta.size else 0.0
            # theta is a random-effect sd over sigma: past 1e6 the random effects fit
            # the response to round-off (e.g. y constant within groups), the criterion
            # falls without bound as sigma -> 0, and the solve has lost its digits.
            hint = ("; the random effects fit the response almost exactly (sigma is "
                    f"{1 / big:.1e} of a random-effect sd): sigma is not identified and "
                    "the estimates are round-off" if big > 1e6 else "")
            warn_user(
                f"the optimizer did not converge ({result.optinfo['message']}); "
                f"gradient max |g| = {result.optinfo['grad_max']:.2e} after "
                f"{result.optinfo['iterations']} iterations{hint}", ConvergenceWarning)
        return result

    def _optimize(self, theta0, max_iter: int, optimizer: str, scale: float) -> FitOutput:
        """One run of the chosen optimizer from ``theta0``, searching in theta / scale."""
        if optimizer == "bfgs":
            return fit_eager(self.eager, theta0, self.placement, max_iter=max_iter, scale=scale)
        import jax

        from . import compiled
        out = compiled.fit_jit(jax.device_put(theta0), self.arrays, reml=self.reml,
                               max_iter=max_iter, scale=scale)
        return jax.tree_util.tree_map(np.asarray, out)

    def __repr__(self) -> str:
        d = self.design
        return (f"LMM({d.formula.formula!r}, n={d.n}, p={d.p}, "
                f"terms={[str(t.group_name) for t in d.terms]}, reml={self.reml})")


# lmer's control= entries and the LMM.fit argument each sets.
_CONTROL = {"max_iter": "max_iter"}


def lmer(formula: str, data: pd.DataFrame, reml: bool = True, theta0=None,
         max_iter: int | None = None, weights=None, offset=None, optimizer: str = "auto",
         control: dict | None = None):
    """Fit a linear mixed model by REML (default) or ML, as lme4's ``lmer``.

    ``weights``, ``offset``: as lme4's (a column name or one value per row);
    ``optimizer``: "auto" or "bfgs" (eager BFGS on the exact gradient) or "newton"
    (the compiled exact-Hessian Newton loop), as :meth:`LMM.fit`; ``control``: a dict
    of optimizer settings, as lme4's ``control = lmerControl(...)``: ``max_iter``
    (the iteration limit, default 200; also accepted as the argument ``max_iter``).
    ``mixedjax.lmer`` passes a Dask DataFrame to :func:`mixedjax.outofcore.lmer`
    (data larger than memory, the same estimates).

    >>> import mixedjax
    >>> m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)",
    ...                   mixedjax.datasets.load("sleepstudy"))
    >>> round(m.objective, 3)
    1743.628
    """
    settings = {"max_iter": max_iter}
    if control is not None:
        if not isinstance(control, dict):
            raise TypeError(f"control must be a dict such as {{'max_iter': 500}}, got "
                            f"{type(control).__name__}")
        unknown = [k for k in control if k not in _CONTROL]
        if unknown:
            raise ValueError(f"unknown control setting(s) {unknown}; lmer's control "
                             f"accepts {sorted(_CONTROL)}")
        for key, value in control.items():
            arg = _CONTROL[key]
            if settings[arg] is not None and settings[arg] != value:
                raise ValueError(f"{arg} is given both as an argument ({settings[arg]!r}) "
                                 f"and in control ({value!r}); give it once")
            settings[arg] = value
    if settings["max_iter"] is None:
        settings["max_iter"] = 200
    model = LMM.from_formula(formula, data, reml=reml, weights=weights, offset=offset)
    return model.fit(theta0=theta0, optimizer=optimizer, **settings)
