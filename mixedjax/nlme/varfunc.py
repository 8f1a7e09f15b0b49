"""Variance functions: within-group heteroscedasticity, as nlme's ``varFunc`` classes.

The within-group errors have Var(eps_ij) = sigma^2 g(v_ij, delta)^2, where v is a
variance covariate (a column, or the fitted values), delta the variance
parameters and g the *standard-deviation multiplier* (Pinheiro & Bates 2000,
section 5.2.1, eq. 5.8-5.10):

=================  ===============================  ======================
class              g(v, delta)                      unconstrained parameter
=================  ===============================  ======================
``VarIdent``       delta_s (delta_1 = 1)            log delta_s
``VarPower``       |v|^delta                        delta
``VarExp``         exp(delta v)                     delta
``VarFixed``       sqrt(|v|)                        (none)
=================  ===============================  ======================

``| s`` after the covariate gives one delta per stratum of ``s`` (VarIdent:
ratios relative to the first stratum in the data, sorted by groups, as nlme).
A ``VarFunc`` is a specification; :meth:`VarFunc.bind` evaluates it on the data
and returns a hashable :class:`BoundVar` (used as a static jit argument) plus
the per-row covariate and stratum arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..design import model_matrix
from .grouping import Form, group_codes, label, parse_form

__all__ = ["VarFunc", "VarIdent", "VarPower", "VarExp", "VarFixed", "BoundVar", "StructSpec",
           "sd_multiplier", "covariate_values", "NO_VARIANCE"]

_FITTED = ("fitted", "fitted(.)", "fitted()")


@dataclass(frozen=True)
class StructSpec:
    """What the compiled likelihood must know of a structure: its kind and sizes.

    Kept minimal because it is part of the jit cache key: fits that differ only in
    names, forms or starting values share compiled code.
    """

    kind: str
    nparams: int
    size: int = 1


# Run-time codes of the variance functions with parameters delta.
DELTA_CODES = {"ident": 0, "power": 1, "exp": 2}


@dataclass(frozen=True)
class BoundVar:
    """A variance function evaluated on the data.

    ``start``: unconstrained initial values; ``names``: parameter names as nlme's
    ``coef(varStruct, unconstrained = FALSE)``; ``strata``: stratum labels (first =
    VarIdent's reference).
    """

    kind: str
    form: str
    names: tuple[str, ...]
    strata: tuple[str, ...]
    start: tuple[float, ...]
    fixed: bool
    uses_fitted: bool
    description: str

    @property
    def nparams(self) -> int:
        return len(self.start)

    @property
    def spec(self) -> StructSpec:
        # VarIdent, VarPower and VarExp share one compiled form ("delta"), the
        # function being chosen at run time by ``code``: fits comparing variance
        # functions on the same data compile once.
        if self.kind in DELTA_CODES:
            return StructSpec("delta", self.nparams)
        return StructSpec(self.kind, self.nparams)

    @property
    def code(self) -> int:
        return DELTA_CODES.get(self.kind, 0)

    def param_index(self, strat: np.ndarray) -> np.ndarray:
        """Per row, the index into [0, delta...] of the row's parameter."""
        if self.kind == "ident":
            return strat
        if self.kind in ("power", "exp"):
            return strat + 1
        return np.zeros_like(strat)

    def natural(self, params) -> np.ndarray:
        """Unconstrained -> reported values (``coef(..., unconstrained = FALSE)``)."""
        params = np.asarray(params, dtype=np.float64)
        return np.exp(params) if self.kind == "ident" else params


NO_VARIANCE = BoundVar(kind="none", form="", names=(), strata=(), start=(), fixed=True,
                       uses_fitted=False, description="")


def sd_multiplier(spec: StructSpec, params, cov, index, code):
    """g(v, delta) for every (padded) row: the residual sd relative to sigma.

    Pinheiro & Bates (2000), eq. 5.10 and table 5.1.  ``index`` picks each row's
    parameter from [0, delta...] (VarIdent's reference stratum takes the 0);
    ``code`` (DELTA_CODES) selects VarIdent, VarPower or VarExp at run time.
    """
    if spec.kind == "fixed":
        return jnp.sqrt(jnp.abs(cov))
    if spec.kind != "delta":
        return jnp.ones_like(cov)
    e = jnp.concatenate([jnp.zeros(1, cov.dtype), params])[index]
    # All three are evaluated; the unused ones get inputs that cannot overflow, so
    # no infinity reaches the derivatives of the selected one.
    power = jnp.power(jnp.where(code == 1, jnp.abs(cov), 1.0), e)
    expo = jnp.exp(jnp.where(code == 2, e * cov, 0.0))
    ident = jnp.exp(jnp.where(code == 0, e, 0.0))
    return jnp.where(code == 0, ident, jnp.where(code == 1, power, expo))


def covariate_values(data: pd.DataFrame, expr: str, where: str) -> np.ndarray:
    """A numeric covariate: a column or a patsy expression of one numeric column."""
    if expr in data.columns:
        col = data[expr]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise TypeError(f"{where}: covariate {expr!r} must be numeric, got dtype "
                            f"{col.dtype}")
        return col.to_numpy(dtype=np.float64)
    mat, _ = model_matrix(f"0 + {expr}", data, f"{where} covariate")
    if mat.shape[1] != 1:
        raise TypeError(f"{where}: covariate {expr!r} must be one numeric column")
    return mat[:, 0]


class VarFunc:
    """Base class of the variance functions (a specification; see module docstring)."""

    kind = ""
    default_form = "~ 1"
    needs_covariate = True

    def __init__(self, form: str | None = None, value=None, fixed: bool = False):
        form = self.default_form if form is None else form
        self._form: Form = parse_form(form, type(self).__name__)
        if self.needs_covariate and self._form.covariate is None:
            raise ValueError(f"{type(self).__name__}({form!r}) needs a variance covariate, "
                             "e.g. '~ age' or '~ fitted'")
        if len(self._form.levels) > 1:
            raise ValueError(f"{type(self).__name__}({form!r}): strata cannot be nested "
                             "('/'); use an interaction 'a*b'")
        self.form = self._form.text
        self.value = value
        self.fixed = bool(fixed)

    def __repr__(self) -> str:
        extra = "" if self.value is None else f", value={self.value!r}"
        extra += ", fixed=True" if self.fixed else ""
        return f"{type(self).__name__}({self.form!r}{extra})"

    @property
    def covariate(self) -> str | None:
        return self._form.covariate

    @property
    def uses_fitted(self) -> bool:
        return self.covariate is not None and self.covariate.replace(" ", "") in _FITTED

    def columns(self) -> list[str]:
        """Data columns the function reads (for missing-value handling)."""
        from ..formula import formula_variables
        cols = [c for lev in self._form.levels for c in lev]
        if self.covariate is not None and not self.uses_fitted:
            cols += formula_variables(self.covariate)
        return cols

    def _strata(self, data: pd.DataFrame, order: np.ndarray):
        """Stratum code per row, labels in order of first appearance in sorted data."""
        if not self._form.levels:
            return np.zeros(len(data), np.int64), ("",)
        codes, _, keys = group_codes(data, self._form.levels[0])
        labels = ["*".join(label(v) for v in k) for k in keys]  # nlme's "a*b" strata
        first = pd.unique(codes[order])
        remap = np.empty(len(labels), np.int64)
        remap[first] = np.arange(len(first))
        return remap[codes], tuple(labels[c] for c in first)

    def bind(self, data: pd.DataFrame, order: np.ndarray):
        """Evaluate on ``data`` (``order``: nlme's sorted row order).

        Returns ``(BoundVar, covariate per row, stratum code per row)``; the
        covariate is a placeholder (ones) when it is the fitted values.
        """
        strat, strata = self._strata(data, order)
        if self.covariate is None or self.uses_fitted:
            cov = np.ones(len(data))
        else:
            cov = covariate_values(data, self.covariate, type(self).__name__)
        names, start = self._parameters(strata, strat, cov)
        bound = BoundVar(kind=self.kind, form=self.form, names=tuple(names),
                         strata=strata, start=tuple(float(v) for v in start),
                         fixed=self.fixed or len(start) == 0, uses_fitted=self.uses_fitted,
                         description=self.description)
        return bound, cov, strat

    def _values(self, names, default, transform):
        """Initial values (user's natural scale) -> unconstrained, in ``names`` order."""
        if self.value is None:
            return [default] * len(names)
        if isinstance(self.value, dict):
            unknown = set(self.value) - set(names)
            if unknown:
                raise ValueError(f"{type(self).__name__}: value names {sorted(unknown)} "
                                 f"are not parameters; parameters: {list(names)}")
            vals = [self.value.get(nm) for nm in names]
            if any(v is None for v in vals):
                raise ValueError(f"{type(self).__name__}: value must give every parameter "
                                 f"{list(names)}")
        else:
            vals = np.broadcast_to(np.asarray(self.value, dtype=np.float64),
                                   (len(names),)).tolist() if np.ndim(self.value) == 0 \
                else list(np.asarray(self.value, dtype=np.float64))
            if len(vals) != len(names):
                raise ValueError(f"{type(self).__name__}: value has {len(vals)} entries for "
                                 f"{len(names)} parameters {list(names)}")
        return [transform(float(v)) for v in vals]

    def _check_strata(self, strat: np.ndarray, strata) -> None:
        counts = np.bincount(strat, minlength=len(strata))
        lone = [s for s, c in zip(strata, counts) if c < 2]
        if lone and len(strata) > 1:
            raise ValueError(f"{type(self).__name__}({self.form!r}): stratum/strata {lone} "
                             "have a single observation; its variance cannot be estimated")


class VarIdent(VarFunc):
    """Different variances per stratum: ``VarIdent("~ 1 | Sex")`` (nlme ``varIdent``).

    sd multiplier delta_s for stratum s with delta = 1 for the first stratum in the
    (group-sorted) data; ``value`` gives initial ratios (dict by stratum or list).
    """

    kind = "ident"
    needs_covariate = False
    description = "Different standard deviations per stratum"

    def __init__(self, form: str = "~ 1", value=None, fixed: bool = False):
        super().__init__(form, value, fixed)
        if not self._form.levels:
            raise ValueError(f"VarIdent({form!r}) needs a stratifying factor: '~ 1 | g'")

    def _parameters(self, strata, strat, cov):
        self._check_strata(strat, strata)

        def log_ratio(v):
            if v <= 0:
                raise ValueError(f"VarIdent: initial ratios must be positive, got {v}")
            return float(np.log(v))
        return strata[1:], self._values(strata[1:], 0.0, log_ratio)


class _CovariateVar(VarFunc):
    param = ""

    def _parameters(self, strata, strat, cov):
        if len(strata) > 1:
            self._check_strata(strat, strata)
            names = strata
        else:
            names = (self.param,)
        return names, self._values(names, 0.0, float)


class VarPower(_CovariateVar):
    """Power of a covariate: sd multiplier |v|^delta (nlme ``varPower``).

    ``VarPower()`` / ``VarPower("~ fitted")`` use the fitted values, updated by
    alternating fits as nlme does; ``"~ age | Sex"`` gives one power per stratum.
    """

    kind = "power"
    default_form = "~ fitted"
    param = "power"
    description = "Power of variance covariate"


class VarExp(_CovariateVar):
    """Exponential of a covariate: sd multiplier exp(delta v) (nlme ``varExp``)."""

    kind = "exp"
    default_form = "~ fitted"
    param = "expon"
    description = "Exponential of variance covariate"


class VarFixed(VarFunc):
    """Variance proportional to a covariate: sd multiplier sqrt(|v|) (nlme ``varFixed``)."""

    kind = "fixed"
    description = "fixed weights"

    def __init__(self, form: str):
        super().__init__(form, None, True)
        if self._form.levels:
            raise ValueError(f"VarFixed({form!r}) takes no strata")

    def _parameters(self, strata, strat, cov):
        if self.uses_fitted:
            raise ValueError("VarFixed needs a data column as covariate, not the fitted "
                             "values")
        if np.any(cov == 0):
            raise ValueError(f"VarFixed({self.form!r}): the covariate is 0 in "
                             f"{int(np.sum(cov == 0))} row(s); variances must be positive")
        return (), []
