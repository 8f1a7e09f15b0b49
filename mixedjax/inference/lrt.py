"""Likelihood-ratio tests: lme4's ``anova`` of nested models and lmerTest's ``ranova``.

For nested models M0 in M1 the statistic 2 (l_1 - l_0) is referred to a
chi-square distribution with npar_1 - npar_0 degrees of freedom (Wilks'
theorem; lme4's ``anova.merMod``).  Log-likelihoods are ML log-likelihoods:
REML fits are refitted with ML first, as lme4 does unless ``refit=False``;
REML criteria are comparable only between models with the same fixed effects
(Pinheiro & Bates 2000, "Mixed-Effects Models in S and S-PLUS", section 2.4.2).
A variance parameter tested at the boundary of its range makes the chi-square
reference conservative (Self & Liang 1987); lme4 and lmerTest report it as is,
and so does this module.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import patsy
from scipy import stats

from ..structure import lower_bounds, tril_indices
from ..design import make_design, r_column_name, r_name
from ..formula import rename_quoted
from .compare import NlmeAnovaTable, PrintedTable, is_nlme_fit, nlme_anova

__all__ = ["anova", "ranova", "refit_ml", "LRTTable", "REFIT_NOTE"]

REFIT_NOTE = "refitting model(s) with ML (instead of REML)"
_SPAN_TOL = 1e-8


def refit_ml(result):
    """The model of ``result`` fitted by maximum likelihood (lme4's ``refitML``).

    The model's cross-products are reused (:meth:`LMM.with_reml
    <mixedjax.model.LMM.with_reml>`), so the data are not needed; the
    optimization starts from the REML estimates, as lme4's does.
    """
    model = result.model.with_reml(False)
    return model.fit(theta0=_lift_start(result.theta, model.structure))


def _lift_start(theta, structure) -> np.ndarray:
    """A start with the diagonal elements of Lambda at least 0.1.

    At a diagonal element of exactly 0 the criterion, even in it, has a zero
    derivative there, so a start on that boundary could not leave it.
    """
    lower = lower_bounds(structure)
    theta = np.asarray(theta, float).copy()
    diag = np.isfinite(lower)
    theta[diag] = np.maximum(np.abs(theta[diag]), 0.1)
    return theta


def _start_from_fit(result, design) -> np.ndarray:
    """Start for a reduced model: each term's covariance block in the full fit
    (restricted to the term's columns), or lme4's default where there is none."""
    parts = []
    for t in design.terms:
        rows, cols = tril_indices(t.k)
        start = (rows == cols).astype(float)
        for tf, lam in zip(result.model.design.terms, result._lambdas):
            if tf.group == t.group and set(t.cnames) <= set(tf.cnames):
                idx = [tf.cnames.index(c) for c in t.cnames]
                cov = (lam @ lam.T)[np.ix_(idx, idx)]
                try:
                    start = np.linalg.cholesky(cov)[rows, cols]
                except np.linalg.LinAlgError:  # a singular block: keep the default
                    pass
                break
        parts.append(start)
    return np.concatenate(parts)


# ----------------------------------------------------------------------------------
# The returned table
# ----------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class LRTTable(PrintedTable):
    """A likelihood-ratio test table as lme4's ``anova`` prints it.

    ``table``: the numbers (a DataFrame indexed by model name, columns ``npar``,
    ``AIC``, ``BIC``, ``logLik``, ``deviance``, ``Chisq``, ``Df``, ``Pr(>Chisq)``);
    ``heading``: the lines printed above it (data, models with their formulas);
    ``note``: lme4's message when REML fits were refitted with ML, else None.
    """

    note: str | None = None

    def lead(self) -> list[str]:
        return ([self.note] if self.note else []) + list(self.heading)

    def body(self) -> list[str]:
        return format_lrt_table(self.table)


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    for cut, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p < cut:
            return mark
    return " "


def _format_column(values, digits: int = 5) -> list[str]:
    """Common decimals so that every entry shows ``digits`` significant digits
    (R's ``format(x, digits = 5)`` as ``print.anova`` uses it)."""
    vals = np.asarray(values, float)
    finite = vals[np.isfinite(vals) & (vals != 0)]
    decimals = 0
    if finite.size:
        mags = np.floor(np.log10(np.abs(finite))).astype(int)
        decimals = int(min(max(np.max(digits - 1 - mags), 0), 15))
    out = []
    for v in vals:
        if not np.isfinite(v):
            out.append("")
        elif float(v).is_integer() and abs(v) < 1e15 and decimals == 0:
            out.append(str(int(v)))
        else:
            out.append(f"{v:.{decimals}f}")
    return out


def format_lrt_table(table: pd.DataFrame) -> list[str]:
    """Text lines of an LRT table (R's ``print.anova`` layout with significance stars)."""
    pcol = "Pr(>Chisq)"
    cols = [c for c in table.columns if c != pcol]
    cells = {c: (_format_column(table[c], 5) if c not in ("npar", "Df")
                 else [("" if not np.isfinite(v) else str(int(v))) for v in table[c]])
             for c in cols}
    pvals = table[pcol].to_numpy(float)
    cells[pcol] = ["" if not np.isfinite(p) else ("< 2.2e-16" if p < 2.2e-16 else f"{p:.4g}")
                   for p in pvals]
    cells[""] = [_stars(p) for p in pvals]
    header = cols + [pcol, ""]
    names = [str(i) for i in table.index]
    wname = max(len(x) for x in names)
    widths = [max([len(h)] + [len(x) for x in cells[h]]) for h in header]
    out = [" " * wname + " " + " ".join(h.rjust(w) for h, w in zip(header, widths))]
    for i, name in enumerate(names):
        row = [cells[h][i].rjust(w) if h else cells[h][i].ljust(w)
               for h, w in zip(header, widths)]
        out.append(name.ljust(wname) + " " + " ".join(row))
    if any(_stars(p).strip() for p in pvals):
        out += ["---", "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"]
    return out


# ----------------------------------------------------------------------------------
# anova
# ----------------------------------------------------------------------------------
def anova(*models, refit: bool = True, **named_models) -> LRTTable | NlmeAnovaTable:
    """Likelihood-ratio tests of nested models, as lme4's ``anova(m0, m1, ...)``.

    Models given by position are named ``m0``, ``m1``, ...; by keyword
    (``anova(small=f0, big=f1)``) they carry the keyword.  Models are sorted by
    their number of parameters and each is tested against the one before it.
    REML fits are refitted with ML (``LRTTable.note`` says so, as lme4's
    message); ``refit=False`` compares REML criteria instead, valid only for
    models with the same fixed effects.

    Raises ValueError for fewer than two models, models fitted to different
    data, models that are not nested, and ``refit=False`` with different fixed
    effects.

    lme and gls fits (:func:`mixedjax.lme`, :func:`mixedjax.gls`) are compared
    by nlme's rules instead (:func:`mixedjax.inference.compare.nlme_anova`): in
    the order given, without refitting (``refit`` does not apply), columns
    ``Model``, ``df``, ``AIC``, ``BIC``, ``logLik``, ``Test``, ``L.Ratio``,
    ``p-value``; one such fit gives nlme's sequential F tests.
    """
    from ..result import LMMResult

    entries = [(f"m{i}", m) for i, m in enumerate(models)] + list(named_models.items())
    if any(is_nlme_fit(m) for _, m in entries):
        _check_unique_names(entries)
        return nlme_anova(entries)
    if len(entries) < 2:
        raise ValueError("anova compares two or more fitted models (likelihood-ratio "
                         "tests); for F tests of one model's fixed effects use "
                         "result.anova()")
    _check_unique_names(entries)
    for name, m in entries:
        if not isinstance(m, LMMResult):
            raise TypeError(f"model {name!r} must be a fitted model (LMMResult), got "
                            f"{type(m).__name__}")
    _check_same_data(entries)
    fits, note = _likelihood_fits(entries, refit)
    order = sorted(range(len(fits)), key=lambda i: fits[i][1].npar)  # stable, as R's order
    fits = [fits[i] for i in order]
    for (n0, f0), (n1, f1) in zip(fits[:-1], fits[1:]):
        _check_nested(n0, f0, n1, f1)
    table = _lrt_table(fits)
    data_name = fits[0][1].model.data_name
    heading = ((f"Data: {data_name}",) if data_name else ()) + ("Models:",) + tuple(
        f"{n}: {f.formula}" for n, f in fits)
    return LRTTable(table=table, heading=heading, note=note)


def _check_unique_names(entries) -> None:
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")


def _check_same_data(entries) -> None:
    name0, m0 = entries[0]
    d0 = m0.model.design
    for name, m in entries[1:]:
        d = m.model.design
        if d.n != d0.n:
            raise ValueError(f"models were fitted to different data: {name0!r} uses "
                             f"{d0.n} observations and {name!r} {d.n}")
        # (a design without rows holds a summary of its response: compared alike)
        if d.y.shape != d0.y.shape or not np.array_equal(d.y, d0.y):
            raise ValueError(f"models were fitted to different data: the responses of "
                             f"{name0!r} and {name!r} differ")


def _likelihood_fits(entries, refit: bool):
    """Fits whose log-likelihoods are compared, and lme4's refit message (or None)."""
    remls = [m.reml for _, m in entries]
    if not any(remls):
        return list(entries), None
    if refit:
        return [(n, refit_ml(m) if m.reml else m) for n, m in entries], REFIT_NOTE
    if not all(remls):
        ml = [n for n, m in entries if not m.reml]
        raise ValueError(f"refit=False compares REML criteria, but {ml} are ML fits; "
                         "fit all models with the same method or use refit=True")
    name0, m0 = entries[0]
    for name, m in entries[1:]:
        d0, d = m0.model.design, m.model.design
        same_x = d.X.shape == d0.X.shape and np.allclose(d.X, d0.X, rtol=1e-12, atol=0)
        if d.xnames != d0.xnames or not same_x:
            raise ValueError(
                "refit=False compares REML criteria, which is valid only for models "
                f"with the same fixed effects; {name0!r} has {d0.xnames} and {name!r} "
                f"has {d.xnames}; use refit=True (ML) to compare fixed effects")
    return list(entries), None


def _span_contains(B: np.ndarray, A: np.ndarray) -> bool:
    """Whether every column of A lies in the column space of B."""
    if A.shape[1] == 0:
        return True
    if B.shape[1] == 0:
        return not np.any(A)
    coef = np.linalg.lstsq(B, A, rcond=None)[0]
    resid = np.linalg.norm(A - B @ coef, axis=0)
    return bool(np.all(resid <= _SPAN_TOL * np.maximum(np.linalg.norm(A, axis=0), 1.0)))


def _same_grouping(t0, t1) -> bool:
    """Whether two terms' grouping factors partition the rows identically."""
    if t0.nlevels != t1.nlevels:
        return False
    pairs = np.unique(np.stack([t0.codes, t1.codes], axis=1), axis=0)
    return len(pairs) == t0.nlevels


def _check_nested(name0, f0, name1, f1) -> None:
    """Raise unless model 0 is a special case of model 1.

    Fixed effects: the column space of X_0 lies in that of X_1.  Random effects:
    each term of model 0 has a term in model 1 with the same grouping whose
    columns span its own, so its covariance is a restriction of that term's.
    """
    d0, d1 = f0.model.design, f1.model.design
    if f0.model.rows is None or f1.model.rows is None:
        _check_nested_by_name(name0, d0, name1, d1)
        return
    if not _span_contains(d1.X, d0.X):
        raise ValueError(f"models {name0!r} and {name1!r} are not nested: the fixed "
                         f"effects of {name0!r} ({d0.xnames}) are not within those of "
                         f"{name1!r} ({d1.xnames})")
    for t0 in d0.terms:
        if not any(_same_grouping(t0, t1) and _span_contains(t1.Z, t0.Z) for t1 in d1.terms):
            raise ValueError(f"models {name0!r} and {name1!r} are not nested: the random "
                             f"term ({t0.expr} | {t0.group_name}) of {name0!r} is not "
                             f"contained in a random term of {name1!r}")


def _check_nested_by_name(name0, d0, name1, d1) -> None:
    """:func:`_check_nested` for designs without rows (fits from partitioned data):
    model 0's fixed-effect columns are among model 1's by name, and each of its
    random terms has a term of model 1 with the same grouping factor and levels
    whose columns include its own by name."""
    missing = [x for x in d0.xnames if x not in d1.xnames]
    if missing:
        raise ValueError(f"models {name0!r} and {name1!r} are not nested: the fixed "
                         f"effects {missing} of {name0!r} are not among those of {name1!r} "
                         f"({d1.xnames})")
    for t0 in d0.terms:
        if not any(t1.group == t0.group and t1.levels == t0.levels
                   and set(t0.cnames) <= set(t1.cnames) for t1 in d1.terms):
            raise ValueError(f"models {name0!r} and {name1!r} are not nested: the random "
                             f"term ({t0.expr} | {t0.group_name}) of {name0!r} is not "
                             f"contained in a random term of {name1!r}")


def _lrt_table(fits) -> pd.DataFrame:
    loglik = np.array([f.loglik for _, f in fits])
    npar = np.array([f.npar for _, f in fits])
    chisq = np.r_[np.nan, 2.0 * np.maximum(0.0, np.diff(loglik))]
    df = np.r_[np.nan, np.diff(npar)].astype(float)
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, stats.chi2.sf(chisq, np.where(df > 0, df, 1.0)), np.nan)
    return pd.DataFrame({
        "npar": npar, "AIC": [f.aic for _, f in fits], "BIC": [f.bic for _, f in fits],
        "logLik": loglik, "deviance": -2.0 * loglik, "Chisq": chisq, "Df": df,
        "Pr(>Chisq)": p}, index=pd.Index([n for n, _ in fits]))


# ----------------------------------------------------------------------------------
# ranova
# ----------------------------------------------------------------------------------
def ranova(result) -> pd.DataFrame:
    """Likelihood-ratio test of each random-effects term, as lmerTest's ``ranova``.

    Each term ``(a + b | g)`` is reduced by dropping one of its non-intercept
    terms at a time (respecting marginality; dropping the last leaves
    ``(1 | g)``), and a term ``(1 | g)`` is removed; each reduced model is refitted
    with the same criterion (REML or ML) and compared with the full model.  When
    no random term is left the reduced model is a linear model, whose (REML)
    log-likelihood is computed in closed form.

    Returns a DataFrame with columns ``npar``, ``logLik``, ``AIC``, ``LRT``,
    ``Df``, ``Pr(>Chisq)`` and rows ``<none>`` (the full model) and one per
    reduction, named as lmerTest names them (``Days in (Days | Subject)``,
    ``(1 | plate)``); ``attrs["heading"]`` holds lmerTest's heading and
    ``attrs["formulae"]`` the reduced models' formulas.
    """
    design = result.model.design
    parsed = design.formula
    if design.frame is None:
        raise ValueError("ranova needs the model frame of the fit (design.frame), "
                         "which this design does not have")
    rows = {"<none>": (result.npar, result.loglik)}
    formulae = {}
    for label, terms in _reductions(parsed.random):
        if terms:
            formula = f"{parsed.response} ~ {parsed.fixed} + " + " + ".join(terms)
            rows[label] = _refit_reduced(formula, result)
        else:
            formula = f"{parsed.response} ~ {parsed.fixed}"
            rows[label] = _lm_loglik(design, result.reml)
        formulae[label] = formula
    npar = np.array([v[0] for v in rows.values()], float)
    loglik = np.array([v[1] for v in rows.values()], float)
    lrt = np.r_[np.nan, 2.0 * (loglik[0] - loglik[1:])]
    df = np.r_[np.nan, npar[0] - npar[1:]]
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, stats.chi2.sf(lrt, np.where(df > 0, df, 1.0)), np.nan)
    out = pd.DataFrame({"npar": npar.astype(int), "logLik": loglik,
                        "AIC": -2.0 * loglik + 2.0 * npar, "LRT": lrt, "Df": df,
                        "Pr(>Chisq)": p}, index=pd.Index(list(rows)))
    out.attrs["heading"] = ("ANOVA-like table for random-effects: Single term deletions",
                            "Model:", result.formula)
    out.attrs["formulae"] = formulae
    return out


def _lhs_text(expr: str) -> str:
    """A term's left-hand side spaced as R deparses it (``0 + Days``, ``a:b``), column
    names as R writes them (```my days```)."""
    text = re.sub(r"\s*([+*-])\s*", r" \1 ", rename_quoted(expr.strip(), r_name))
    return re.sub(r"\s*([:^])\s*", r"\1", text).replace("**", "^")


def _group_text(term) -> str:
    """A term's grouping factor as R writes it (```my g`:b``)."""
    return ":".join(r_name(g) for g in term.group)


def _reductions(random_terms):
    """(row label, remaining random terms as formula text) for each reduction,
    as lmerTest's ``get_newforms``."""
    written = [f"({_lhs_text(t.expr)} | {_group_text(t)})" for t in random_terms]
    out = []
    for i, term in enumerate(random_terms):
        others = written[:i] + written[i + 1:]
        desc = patsy.ModelDesc.from_formula(term.expr)
        has_int = any(not t.factors for t in desc.rhs_termlist)
        labelled = [t for t in desc.rhs_termlist if t.factors]
        if not labelled:
            out.append((written[i], others))
            continue
        for t in labelled:
            if any(set(t.factors) < set(u.factors) for u in labelled):
                continue  # marginality: a main effect stays while its interaction does
            rest = [u.name() for u in labelled if u is not t]
            if not rest:
                lhs = "1"
            else:
                lhs = " + ".join(rest) if has_int else "0 + " + " + ".join(rest)
            reduced = f"({lhs} | {_group_text(term)})"
            label = f"{r_column_name(t.name())} in {written[i]}"
            # R's formula update drops a term that is already there.
            kept = list(dict.fromkeys(written[:i] + [reduced] + written[i + 1:]))
            out.append((label, kept))
    return out


def _refit_reduced(formula: str, result):
    """(npar, log-likelihood) of ``formula`` fitted to the fit's model frame."""
    from ..model import LMM

    d = result.model.design
    with warnings.catch_warnings():
        # The full fit has already reported rank-deficient fixed effects.
        warnings.filterwarnings("ignore", message="fixed-effect model matrix is rank")
        kwargs = {}
        if getattr(d, "weights", None) is not None:
            kwargs["weights"] = d.weights
        if getattr(d, "offset", None) is not None:
            kwargs["offset"] = d.offset
        design = make_design(formula, d.frame, **kwargs)
    model = LMM(design, reml=result.reml, data_name=result.model.data_name)
    fit = model.fit(theta0=_lift_start(_start_from_fit(result, design), model.structure))
    if fit.nobs != result.nobs:
        raise ValueError("number of rows in use has changed in a reduced model: "
                         "remove missing values first")
    return fit.npar, fit.loglik


def _lm_loglik(design, reml: bool):
    """(npar, log-likelihood) of the linear model without random effects.

    ML: -2 l = n (1 + log(2 pi RSS / n)) - sum log w; REML (R's ``logLik.lm``):
    -2 l_R = (n - p)(1 + log(2 pi RSS / (n - p))) + log|X'WX| - sum log w.
    """
    X, y = design.X, design.y
    n, p = X.shape
    w = np.ones(n) if getattr(design, "weights", None) is None else design.weights
    off = 0.0 if getattr(design, "offset", None) is None else design.offset
    sw = np.sqrt(w)
    Xw, yw = X * sw[:, None], (y - off) * sw
    if p:
        beta = np.linalg.lstsq(Xw, yw, rcond=None)[0]
        rss = float(np.sum((yw - Xw @ beta) ** 2))
    else:
        rss = float(yw @ yw)
    dof = n - p if reml else n
    dev = dof * (1.0 + math.log(2.0 * math.pi * rss / dof)) - float(np.sum(np.log(w)))
    if reml and p:
        dev += np.linalg.slogdet(Xw.T @ Xw)[1]
    return p + 1, -0.5 * dev
