"""Tidy tables of a fit, as broom.mixed's ``tidy.merMod`` and ``glance.merMod``.

``tidy`` stacks, in this order whatever order ``effects`` lists them in (as
broom.mixed does):

* ``"fixed"``: the fixed-effects table of ``summary(m)``; with a df method
  (``ddf_method``, default ``"Satterthwaite"``) it is lmerTest's, which is what
  ``library(lmerTest); tidy(m)`` gives (``df`` and ``p.value`` columns; with
  ``"Kenward-Roger"`` the adjusted standard errors); ``ddf_method=None`` gives
  lme4's (estimate, std.error, statistic: no ``df`` or ``p.value`` column);
* ``"ran_pars"``: the standard deviations and correlations of each term
  (``sd__(Intercept)``, ``cor__(Intercept).Days``), then the residual standard
  deviation (``sd__Observation``, group ``Residual``), in the order of
  ``as.data.frame(VarCorr(m), order = "lower.tri")``; ``scales="vcov"`` gives
  variances and covariances (``var__``, ``cov__``) instead;
* ``"ran_vals"``: the conditional modes with their conditional standard deviations;
* ``"ran_coefs"``: lme4's ``coef(m)`` in long form.

Confidence intervals (``conf_int=True``), as broom.mixed computes them:

* fixed effects with a df method: estimate -/+ qt((1 + level) / 2, df) std.error
  whatever ``conf_method`` is (broom.mixed warns that it ignores
  ``conf.method`` there, and so does this function); without a df method,
  ``confint(m, method = conf_method)`` (``"Wald"``, ``"profile"``, ``"boot"``);
* variance parameters: ``confint(m, method = conf_method)`` (NaN for Wald);
* conditional modes: estimate -/+ qnorm((1 + level) / 2) std.error (Wald only);
* per-level coefficients: NaN, with a warning.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ._warn import warn_user
from .checks import check_effects
from .inference.effects import ran_coefs, ran_vals
from .structure import tril_indices

# The df, interval and sd/cor modules load JAX: they are imported where used, so that
# glance (and import mixedjax.tidy) stays in NumPy.

__all__ = ["tidy", "glance", "EFFECTS"]

EFFECTS = ("fixed", "ran_pars", "ran_vals", "ran_coefs")
_COLUMNS = ["effect", "group", "level", "term", "estimate", "std.error", "statistic", "df",
            "p.value", "conf.low", "conf.high"]
_FIXED_RENAME = {"Estimate": "estimate", "Std. Error": "std.error", "t value": "statistic",
                 "df": "df", "Pr(>|t|)": "p.value"}


def _check_conf_method(conf_method) -> str:
    methods = {"wald": "Wald", "profile": "profile", "boot": "boot", "bootstrap": "boot"}
    if not isinstance(conf_method, str) or conf_method.lower() not in methods:
        raise ValueError(f"unknown conf_method {conf_method!r}; use 'Wald', 'profile' or "
                         "'boot'")
    return methods[conf_method.lower()]


def _fixed(result, ddf_method, conf_int, level, conf_method, ci_kwargs) -> pd.DataFrame:
    from .inference.tables import coef_table, t_quantile
    table = coef_table(result, ddf=ddf_method)
    if ddf_method is None:
        table = table.drop(columns=["df", "Pr(>|t|)"])
    out = table.rename(columns=_FIXED_RENAME).rename_axis("term").reset_index()
    if conf_int:
        if ddf_method is not None:
            if conf_method != "Wald":
                warn_user(f"conf_method={conf_method!r} is ignored for the fixed effects when "
                          f"ddf_method={ddf_method!r} (t-based Wald intervals, as broom.mixed); "
                          f"pass ddf_method=None for {conf_method} intervals")
            q = np.array([t_quantile((1.0 + level) / 2.0, df) for df in table["df"]])
            half = q * out["std.error"].to_numpy()
            out["conf.low"] = out["estimate"].to_numpy() - half
            out["conf.high"] = out["estimate"].to_numpy() + half
        else:
            ci = _confint(result, "beta_", conf_method, level, ci_kwargs)
            out["conf.low"], out["conf.high"] = ci[:, 0], ci[:, 1]
    out.insert(0, "effect", "fixed")
    return out


def _confint(result, parm, conf_method, level, ci_kwargs) -> np.ndarray:
    from .inference.confint import confint
    return confint(result, method=conf_method, level=level, parm=parm,
                   **ci_kwargs).to_numpy()


def _ran_pars(result, scales, conf_int, level, conf_method, ci_kwargs) -> pd.DataFrame:
    from .inference.params import sdcor_values
    if scales not in ("sdcor", "vcov"):
        raise ValueError(f"unrecognized ran_pars scale {scales!r}; use 'sdcor' or 'vcov'")
    if conf_int and scales == "vcov" and conf_method != "Wald":
        raise ValueError("intervals for the variance parameters are on the sd/cor scale; "
                         "use scales='sdcor' with conf_int=True")
    first, second = ("sd", "cor") if scales == "sdcor" else ("var", "cov")
    groups, terms, covs = [], [], []
    seen: dict[str, int] = {}
    for t, cov in zip(result.model.design.terms, result.covariances):
        count = seen.get(t.group_name, 0)
        seen[t.group_name] = count + 1
        grp = t.group_name if count == 0 else f"{t.group_name}.{count}"
        for r, c in zip(*tril_indices(t.k)):
            groups.append(grp)
            terms.append(f"{first}__{t.cnames[r]}" if r == c
                         else f"{second}__{t.cnames[c]}.{t.cnames[r]}")
            covs.append(cov[r, c])
    groups.append("Residual")
    terms.append(f"{first}__Observation")
    if scales == "sdcor":
        estimate = np.asarray(sdcor_values(result), np.float64)
    else:
        estimate = np.asarray(covs + [result.sigma ** 2], np.float64)
    out = pd.DataFrame({"effect": "ran_pars", "group": groups, "term": terms,
                        "estimate": estimate})
    if conf_int:
        ci = _confint(result, "theta_", conf_method, level, ci_kwargs)
        out["conf.low"], out["conf.high"] = ci[:, 0], ci[:, 1]
    return out


def _ran_vals(result, conf_int, level, conf_method) -> pd.DataFrame:
    out = ran_vals(result)
    if conf_int:
        if conf_method != "Wald":
            raise ValueError("only Wald intervals are available for the conditional modes "
                             "(effects='ran_vals'); use conf_method='Wald'")
        from .inference.tables import t_quantile
        half = t_quantile((1.0 + level) / 2.0, math.inf) * out["std.error"].to_numpy()
        out["conf.low"] = out["estimate"].to_numpy() - half
        out["conf.high"] = out["estimate"].to_numpy() + half
    out.insert(0, "effect", "ran_vals")
    return out


def _ran_coefs(result, conf_int) -> pd.DataFrame:
    out = ran_coefs(result)
    if conf_int:
        warn_user("intervals are not available for the per-level coefficients "
                  "(effects='ran_coefs'): returning NaN")
        out["conf.low"] = np.nan
        out["conf.high"] = np.nan
    out.insert(0, "effect", "ran_coefs")
    return out


def tidy(result, effects=("fixed", "ran_pars"), scales: str = "sdcor", conf_int: bool = False,
         conf_level: float = 0.95, conf_method: str = "Wald",
         ddf_method: str | None = "Satterthwaite", **kwargs) -> pd.DataFrame:
    """One row per estimate, as broom.mixed's ``tidy(m)`` of an lmerTest fit.

    Columns (those that apply): ``effect``, ``group``, ``level``, ``term``,
    ``estimate``, ``std.error``, ``statistic``, ``df``, ``p.value``, ``conf.low``,
    ``conf.high``; a cell that does not apply is NaN (R's NA).  See the module
    notes for what each effect type and interval is.  ``kwargs`` go to
    :func:`mixedjax.inference.confint.confint` (``nsim``, ``key`` for
    ``conf_method="boot"``).
    """
    from .inference.confint import check_level
    from .inference.tables import normalize_ddf
    effects = check_effects(effects, EFFECTS)
    if not isinstance(conf_int, (bool, np.bool_)):
        raise TypeError(f"conf_int must be True or False, got {type(conf_int).__name__}")
    level = check_level(conf_level, "conf_level")
    conf_method = _check_conf_method(conf_method)
    ddf_method = normalize_ddf(ddf_method)
    parts = []
    if "fixed" in effects:
        parts.append(_fixed(result, ddf_method, conf_int, level, conf_method, kwargs))
    if "ran_pars" in effects:
        parts.append(_ran_pars(result, scales, conf_int, level, conf_method, kwargs))
    if "ran_vals" in effects:
        parts.append(_ran_vals(result, conf_int, level, conf_method))
    if "ran_coefs" in effects:
        parts.append(_ran_coefs(result, conf_int))
    out = pd.concat(parts, ignore_index=True)
    for col in ("group", "level"):
        if col in out.columns:   # object columns keep None (R's NA) apart from names
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out[[c for c in _COLUMNS if c in out.columns]]


def glance(result) -> pd.DataFrame:
    """One row of fit statistics, as broom.mixed's ``glance(m)``: ``nobs``,
    ``sigma``, ``logLik``, ``AIC``, ``BIC``, then ``REMLcrit`` (REML fits) or
    ``deviance`` (ML fits), and ``df.residual``."""
    crit = "REMLcrit" if result.reml else "deviance"
    return pd.DataFrame({"nobs": [int(result.nobs)], "sigma": [float(result.sigma)],
                         "logLik": [float(result.loglik)], "AIC": [float(result.aic)],
                         "BIC": [float(result.bic)], crit: [float(result.objective)],
                         "df.residual": [int(result.df_resid)]})
