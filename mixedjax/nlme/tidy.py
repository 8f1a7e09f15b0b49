"""Tidy tables of lme and gls fits, as broom.mixed's ``tidy.lme`` / ``glance.lme``
and ``tidy.gls`` / ``glance.gls``.

lme, ``tidy`` stacks (fixed effects first, as broom.mixed binds them):

* ``"fixed"``: nlme's ``summary(m)$tTable`` (estimate, std.error, containment
  df, t statistic, p-value; ML fits carry nlme's sqrt(N / (N - p)) inflation of
  the standard errors), with ``conf_int=True`` the intervals of
  ``intervals(m, which = "fixed")`` (t quantiles with the containment df and
  the uninflated standard errors);
* ``"ran_pars"``: ``getVarCov(m)`` in lower-triangle column-major order,
  named ``sd_(Intercept)``, ``cor_age.(Intercept)``, ``sd_age`` (broom.mixed's
  lme names: one underscore, and the row term before the column term in
  correlations, unlike its merMod names), then ``sd_Observation`` (group
  ``Residual``); ``scales="vcov"`` gives ``var_`` / ``cov_`` rows instead.
  With ``conf_int=True`` the sd/cor rows get ``intervals(m, which =
  "var-cov")$reStruct`` and the residual row NaN, as broom.mixed does.  Models
  with more than one grouping level get no ``ran_pars`` rows and a warning
  (broom.mixed: "ran_pars not yet implemented for multiple levels of nesting");
* ``"var_model"``: the variance function's parameters as broom.mixed's
  ``tidy(m$modelStruct$varStruct)``: ``coef(varStruct, unconstrained = FALSE,
  allCoef = TRUE)`` (VarIdent: every stratum, the reference at 1), group
  ``varIdent(1 | Sex)``-style, and an ``estimated`` column when the function's
  values were fixed; no rows without a variance function (nor for VarFixed,
  which has no parameters).

gls, ``tidy`` is the tTable (``term``, ``estimate``, ``std.error``,
``statistic``, ``p.value``; no df column), with ``conf_int=True`` nlme's
``confint.gls`` intervals: estimate -/+ qnorm((1 + level) / 2) std.error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats

from .._warn import warn_user
from ..checks import check_effects
from ..inference.confint import check_level

__all__ = ["tidy_lme", "glance_lme", "tidy_gls", "glance_gls", "LME_EFFECTS"]

LME_EFFECTS = ("fixed", "ran_pars", "var_model")
_R_VARFUNC = {"ident": "varIdent", "power": "varPower", "exp": "varExp", "fixed": "varFixed"}
_RENAME = {"Value": "estimate", "Std.Error": "std.error", "DF": "df", "t-value": "statistic",
           "p-value": "p.value"}


def _check_conf_int(conf_int) -> bool:
    if not isinstance(conf_int, (bool, np.bool_)):
        raise TypeError(f"conf_int must be True or False, got {type(conf_int).__name__}")
    return bool(conf_int)


def _ttable(result) -> pd.DataFrame:
    return result.coef_table.rename(columns=_RENAME).rename_axis("term").reset_index()


def _lme_fixed(result, conf_int, level) -> pd.DataFrame:
    out = _ttable(result)
    if conf_int:
        ci = result.intervals(level=level, which="fixed").fixed
        out["conf.low"] = ci["lower"].to_numpy()
        out["conf.high"] = ci["upper"].to_numpy()
    out.insert(0, "effect", "fixed")
    out.insert(1, "group", None)
    return out


def _lme_ran_pars(result, scales, conf_int, level) -> pd.DataFrame | None:
    if scales not in ("sdcor", "vcov"):
        raise ValueError(f"unrecognized ran_pars scale {scales!r}; use 'sdcor' or 'vcov'")
    model = result.model
    if len(model.levels) > 1 or len(model.terms) != 1:
        warn_user("ran_pars rows are not available for multiple levels of nesting or "
                  "blocked random-effects structures (as in broom.mixed): none returned")
        return None
    term, cov = model.terms[0], result.covariances[0]
    group = model.levels[term.level].name
    first, second = ("sd", "cor") if scales == "sdcor" else ("var", "cov")
    sd = np.sqrt(np.diag(cov))
    names, values, ci_keys = [], [], []
    for c in range(term.k):          # column-major lower triangle, as R's lower.tri
        for r in range(c, term.k):
            if r == c:
                names.append(f"{first}_{term.cnames[r]}")
                values.append(sd[r] if scales == "sdcor" else cov[r, r])
                ci_keys.append(f"sd({term.cnames[r]})")
            else:
                names.append(f"{second}_{term.cnames[r]}.{term.cnames[c]}")
                values.append(cov[r, c] / (sd[r] * sd[c]) if scales == "sdcor"
                              else cov[r, c])
                ci_keys.append(f"cor({term.cnames[c]},{term.cnames[r]})")
    names.append(f"{first}_Observation")
    values.append(result.sigma if scales == "sdcor" else result.sigma ** 2)
    out = pd.DataFrame({"effect": "ran_pars", "group": [group] * (len(names) - 1)
                        + ["Residual"], "term": names,
                        "estimate": np.asarray(values, dtype=np.float64)})
    if conf_int:
        if scales != "sdcor":
            warn_user("confidence intervals for ran_pars are only available on the sdcor "
                      "scale: returning NaN")
            low = high = np.full(len(names), np.nan)
        else:
            table = result.intervals(level=level, which="var-cov").restruct[group]
            low = np.append(table.loc[ci_keys, "lower"].to_numpy(), np.nan)
            high = np.append(table.loc[ci_keys, "upper"].to_numpy(), np.nan)
        out["conf.low"], out["conf.high"] = low, high
    return out


def _var_model(result) -> pd.DataFrame | None:
    bvar, weights = result.model.bvar, result.model.weights
    if weights is None or bvar.kind not in _R_VARFUNC or bvar.kind == "fixed":
        return None
    rhs = weights.form.strip().lstrip("~").split("|")
    if weights.covariate is None:
        covariate = "1"
    else:
        covariate = "fitted(.)" if weights.uses_fitted else " ".join(weights.covariate.split())
    strata = (" | " + " * ".join(v.strip() for v in rhs[1].split("*"))) if len(rhs) > 1 else ""
    group = f"{_R_VARFUNC[bvar.kind]}({covariate}{strata})"
    values = result.varstruct
    terms, estimates = list(values), list(values.values())
    if bvar.kind == "ident":     # allCoef = TRUE adds the reference stratum's 1
        terms, estimates = [bvar.strata[0]] + terms, [1.0] + estimates
    out = pd.DataFrame({"effect": "var_model", "group": group, "term": terms,
                        "estimate": np.asarray(estimates, dtype=np.float64)})
    if bvar.fixed:
        out["estimated"] = [bvar.kind == "ident" and i == 0 for i in range(len(terms))]
    return out


def tidy_lme(result, effects=LME_EFFECTS, scales: str = "sdcor", conf_int: bool = False,
             conf_level: float = 0.95) -> pd.DataFrame:
    """One row per estimate, as broom.mixed's ``tidy(m)`` of an nlme ``lme`` fit.

    Columns ``effect``, ``group``, ``term``, ``estimate``, then with the fixed
    effects ``std.error``, ``df``, ``statistic``, ``p.value``, and with
    ``conf_int=True`` ``conf.low``, ``conf.high``; cells that do not apply are
    NaN (R's NA) or None.  See the module notes for the rows.  The intervals
    have coverage ``conf_level`` (broom.mixed 0.2.9.4 calls ``intervals(m)``
    without its ``conf.level``, so its lme intervals are always 95%).
    """
    effects = check_effects(effects, LME_EFFECTS, " for an lme fit")
    conf_int = _check_conf_int(conf_int)
    level = check_level(conf_level, "conf_level")
    parts = []
    if "fixed" in effects:
        parts.append(_lme_fixed(result, conf_int, level))
    if "ran_pars" in effects:
        ran = _lme_ran_pars(result, scales, conf_int, level)
        if ran is not None:
            parts.append(ran)
    if "var_model" in effects:
        var = _var_model(result)
        if var is not None:
            parts.append(var)
    if not parts:
        return pd.DataFrame(columns=["effect", "group", "term", "estimate"])
    estimated = any("estimated" in p.columns for p in parts)
    columns = (["effect", "group", "term", "estimate"] + (["estimated"] if estimated else [])
               + (["std.error", "df", "statistic", "p.value"] if "fixed" in effects else [])
               + (["conf.low", "conf.high"] if conf_int else []))
    out = pd.concat(parts, ignore_index=True).reindex(columns=columns)
    out["group"] = out["group"].astype(object).where(out["group"].notna(), None)
    if estimated:   # broom.mixed: rows of other effects count as estimated
        out["estimated"] = out["estimated"].astype(object).where(out["estimated"].notna(),
                                                                 True).astype(bool)
    return out


def glance_lme(result) -> pd.DataFrame:
    """broom.mixed's ``glance(m)`` of an lme fit: ``nobs``, ``sigma``, ``logLik``,
    ``AIC``, ``BIC`` (nlme's BIC, with N - p observations for REML fits), and for
    ML fits ``deviance`` (-2 log-likelihood; R's ``deviance`` of a REML lme fit is
    NA, a column broom.mixed drops)."""
    out = pd.DataFrame({"nobs": [int(result.nobs)], "sigma": [float(result.sigma)],
                        "logLik": [float(result.loglik)], "AIC": [float(result.aic)],
                        "BIC": [float(result.bic)]})
    if not result.reml:
        out["deviance"] = float(result.objective)
    return out


def tidy_gls(result, conf_int: bool = False, conf_level: float = 0.95) -> pd.DataFrame:
    """One row per coefficient, as broom.mixed's ``tidy(m)`` of an nlme ``gls`` fit:
    ``term``, ``estimate``, ``std.error``, ``statistic``, ``p.value`` from
    ``summary(m)$tTable``; with ``conf_int=True`` ``confint.gls``'s normal
    intervals estimate -/+ qnorm((1 + level) / 2) std.error."""
    conf_int = _check_conf_int(conf_int)
    level = check_level(conf_level, "conf_level")
    out = _ttable(result).drop(columns=["df"])
    if conf_int:
        half = scipy.stats.norm.ppf(0.5 + level / 2) * result.stderr.to_numpy()
        out["conf.low"] = out["estimate"].to_numpy() - half
        out["conf.high"] = out["estimate"].to_numpy() + half
    return out


def glance_gls(result) -> pd.DataFrame:
    """broom.mixed's ``glance(m)`` of a gls fit: ``sigma``, ``df`` (p), ``logLik``,
    ``AIC``, ``BIC``, ``df.residual`` (N - p)."""
    p = int(result.model.p)
    return pd.DataFrame({"sigma": [float(result.sigma)], "df": [p],
                         "logLik": [float(result.loglik)], "AIC": [float(result.aic)],
                         "BIC": [float(result.bic)], "df.residual": [int(result.nobs) - p]})
