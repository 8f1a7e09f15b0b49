"""Comparing fits: nlme's ``anova`` of lme and gls fits, and R's ``AIC`` / ``BIC`` tables.

``nlme_anova`` follows nlme's ``anova.lme``: for several fits, a likelihood-ratio
table in the order given (each fit tested against the one before it when their
numbers of parameters differ, with the chi-square statistic 2 |l_i - l_{i-1}| on
|df_i - df_{i-1}| degrees of freedom); for one fit, the sequential F tests of its
fixed-effects terms.  Fits are recognized by their attributes (a ``model`` with a
``kind`` of "lme" or "gls"), so this module does not depend on :mod:`mixedjax.nlme`.

``AIC`` and ``BIC`` are R's ``AIC(m1, m2, ...)`` and ``BIC(...)``: the criterion
of each fit with its number of parameters, for lmer, lme and gls fits alike.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .terms import factor_label

__all__ = ["PrintedTable", "AIC", "BIC", "NlmeAnovaTable", "is_nlme_fit", "nlme_anova",
           "sequential_f"]


def is_nlme_fit(obj) -> bool:
    """Whether ``obj`` is a fitted :func:`mixedjax.lme` or :func:`mixedjax.gls` model."""
    return getattr(getattr(obj, "model", None), "kind", None) in ("lme", "gls")


@dataclass(frozen=True)
class PrintedTable:
    """A test table as R prints it: ``table`` the numbers (a DataFrame), ``heading``
    the lines printed above it.  Indexing (``tab["Chisq"]``) reads columns of
    ``table``; subclasses say how the numbers are formatted (:meth:`body`)."""

    table: pd.DataFrame
    heading: tuple[str, ...] = ()

    def __getitem__(self, key):
        return self.table[key]

    def __len__(self) -> int:
        return len(self.table)

    @property
    def index(self) -> pd.Index:
        return self.table.index

    def lead(self) -> list[str]:
        """The lines above the table."""
        return list(self.heading)

    def body(self) -> list[str]:
        raise NotImplementedError

    def text(self) -> str:
        return "\n".join(self.lead() + self.body())

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        import html
        head = "<br>".join(html.escape(x) for x in self.lead())
        return (f"<p>{head}</p>" if head else "") + self.table.to_html(na_rep="")


@dataclass(frozen=True, repr=False)
class NlmeAnovaTable(PrintedTable):
    """nlme's ``anova`` table.

    ``table``: a DataFrame indexed by model name with columns ``Model``, ``df``,
    ``AIC``, ``BIC``, ``logLik``, ``Test``, ``L.Ratio``, ``p-value`` (several fits),
    or ``numDF``, ``denDF``, ``F-value``, ``p-value`` indexed by term (one fit);
    ``heading``: the lines printed above it.
    """

    def body(self) -> list[str]:
        return _format_table(self.table)


def _format_numbers(values, digits: int = 7) -> list[str]:
    """R's ``format(zapsmall(x))`` as nlme's print methods use it: rounded to
    ``digits`` significant digits of the largest entry, at most ``digits``
    significant digits shown for any entry, trailing zeros common to all entries
    dropped, blanks for missing values."""
    vals = np.asarray(values, float)
    finite = vals[np.isfinite(vals)]
    mx = float(np.max(np.abs(finite))) if finite.size else 0.0
    # R 4.2's zapsmall rounds to digits - log10(max) decimals, a fraction that
    # round() takes to the nearest integer.
    decimals = int(np.floor(max(0.0, digits - np.log10(mx)) + 0.5)) if mx > 0 else digits
    # format() then shows at most ``digits`` significant digits of any entry.
    nonzero = finite[finite != 0]
    if nonzero.size:
        mags = np.floor(np.log10(np.abs(nonzero))).astype(int)
        decimals = min(decimals, max(int(np.max(digits - 1 - mags)), 0))
    decimals = min(decimals, 15)
    rounded = np.round(finite, decimals)
    while decimals > 0 and np.allclose(np.round(rounded, decimals - 1), rounded,
                                       rtol=0, atol=0.5 * 10.0 ** -(decimals + 1)):
        decimals -= 1
    return ["" if not np.isfinite(v) else f"{v:.{decimals}f}" for v in vals]


def _format_pvalues(values) -> list[str]:
    """nlme's printing of p-values: ``format(round(p, 4))``, "<.0001" for those
    that round to 0."""
    vals = np.asarray(values, float)
    rounded = np.round(vals[np.isfinite(vals)], 4)
    decimals = 4
    while decimals > 0 and np.all(np.round(rounded, decimals - 1) == rounded):
        decimals -= 1
    return ["" if not np.isfinite(p) else
            "<.0001" if round(float(p), 4) == 0 else f"{round(float(p), 4):.{decimals}f}"
            for p in vals]


def _format_table(table: pd.DataFrame) -> list[str]:
    cells = {}
    for col in table.columns:
        v = table[col]
        if col == "p-value":
            cells[col] = _format_pvalues(v)
        elif col in ("AIC", "BIC", "logLik", "L.Ratio", "F-value"):
            cells[col] = _format_numbers(v)
        else:
            cells[col] = [str(x) for x in v]
    names = [str(i) for i in table.index]
    wname = max(len(x) for x in names)
    widths = {c: max([len(c)] + [len(x) for x in cells[c]]) for c in table.columns}
    out = [" " * wname + " " + " ".join(c.rjust(widths[c]) for c in table.columns)]
    for i, name in enumerate(names):
        out.append(name.ljust(wname) + " "
                   + " ".join(cells[c][i].rjust(widths[c]) for c in table.columns))
    return out


# ----------------------------------------------------------------------------------
# nlme's anova
# ----------------------------------------------------------------------------------
def nlme_anova(entries) -> NlmeAnovaTable:
    """nlme's ``anova`` of ``(name, fit)`` pairs of lme and gls fits.

    One fit: :func:`sequential_f`.  Several: the likelihood-ratio table of
    nlme's ``anova.lme``, fits in the order given.  As in nlme, all fits must be
    fitted by the same method (REML or ML) to the same response and number of
    observations; lme and gls fits may be mixed.  REML log-likelihoods are
    comparable only between fits with the same fixed effects (Pinheiro & Bates
    2000, section 2.4.2): nlme warns and this function raises ValueError.
    """
    for name, m in entries:
        if not is_nlme_fit(m):
            raise TypeError(f"model {name!r} is a {type(m).__name__}; nlme's anova compares "
                            "lme and gls fits only (use lmer fits in a separate anova)")
    if len(entries) == 1:
        return sequential_f(entries[0][1])
    _check_comparable(entries)
    fits = [m for _, m in entries]
    loglik = np.array([m.loglik for m in fits])
    df = np.array([m.npar for m in fits], dtype=np.int64)
    ddf = np.diff(df)
    tests = [""] + [f"{i} vs {i + 1}" if d != 0 else "" for i, d in enumerate(ddf, start=1)]
    lratio = np.r_[np.nan, np.where(ddf != 0, 2.0 * np.abs(np.diff(loglik)), np.nan)]
    with np.errstate(invalid="ignore"):
        p = np.r_[np.nan, np.where(ddf != 0, stats.chi2.sf(lratio[1:], np.maximum(
            np.abs(ddf), 1)), np.nan)]
    table = pd.DataFrame({
        "Model": np.arange(1, len(fits) + 1), "df": df, "AIC": [m.aic for m in fits],
        "BIC": [m.bic for m in fits], "logLik": loglik, "Test": tests, "L.Ratio": lratio,
        "p-value": p}, index=pd.Index([n for n, _ in entries]))
    if not np.any(ddf != 0):  # nlme leaves the test columns out
        table = table[["Model", "df", "AIC", "BIC", "logLik"]]
    return NlmeAnovaTable(table=table)


def _check_comparable(entries) -> None:
    name0, m0 = entries[0]
    for name, m in entries[1:]:
        if m.model.response != m0.model.response:
            raise ValueError(f"models {name0!r} and {name!r} have different responses "
                             f"({m0.model.response!r} and {m.model.response!r})")
        if m.nobs != m0.nobs:
            raise ValueError(f"all fits must use the same number of observations: "
                             f"{name0!r} uses {m0.nobs} and {name!r} {m.nobs}")
        if not np.array_equal(m.model.y, m0.model.y):
            raise ValueError(f"models {name0!r} and {name!r} were fitted to different data: "
                             "their responses differ")
    methods = {m.method for _, m in entries}
    if len(methods) > 1:
        raise ValueError("all fits must have the same estimation method, got "
                         + ", ".join(f"{n!r}: {m.method}" for n, m in entries)
                         + "; refit them with the same method= (\"ML\" to compare "
                         "fixed effects)")
    if methods == {"REML"}:
        for name, m in entries[1:]:
            if m.model.xnames != m0.model.xnames or not np.allclose(
                    m.model.X, m0.model.X, rtol=1e-12, atol=0):
                raise ValueError(
                    "REML fits can be compared only when their fixed effects are the "
                    f"same; {name0!r} has {m0.model.xnames} and {name!r} has "
                    f"{m.model.xnames}: refit with method=\"ML\" to compare fixed effects")


def _fixed_term_labels(model) -> list[str]:
    """The fixed-effects term (R's label) of each column of ``model.X``."""
    info = model.x_design_info
    column_term = {}
    for term, sl in info.term_slices.items():
        lab = ("(Intercept)" if not term.factors
               else ":".join(factor_label(f) for f in term.factors))
        for j in range(sl.start, sl.stop):
            column_term[j] = lab
    labels = [column_term[j] for j in np.asarray(model.x_perm)]
    return [lab for lab, k in zip(labels, np.asarray(model.x_keep)) if k]


def sequential_f(fit) -> NlmeAnovaTable:
    """Sequential (type I) F tests of an lme or gls fit's fixed-effects terms,
    as nlme's ``anova(fit)``.

    With R upper triangular and R'R = vcov(beta)^-1, c = R beta; the F value of a
    term is the mean of c_j^2 over its columns, each term adjusted for the terms
    before it.  nlme's ``adjustSigma`` scales an ML lme fit's vcov by N / (N - p)
    (gls fits already carry that scale).  Denominator df: nlme's containment df
    of the term (lme), N - p (gls).
    """
    model = fit.model
    labels = _fixed_term_labels(model)
    beta = fit.fixef.to_numpy()
    V = fit.vcov.to_numpy()
    n, p = fit.nobs, model.p
    if model.kind == "lme" and not fit.reml:
        V = V * n / (n - p)
    c = np.linalg.cholesky(np.linalg.inv(V)).T @ beta
    col_df = np.asarray(fit.fixed_df, dtype=np.int64)
    terms = list(dict.fromkeys(labels))
    num_df, den_df, fval = [], [], []
    for t in terms:
        cols = [j for j, lab in enumerate(labels) if lab == t]
        num_df.append(len(cols))
        den_df.append(int(col_df[cols[0]]))
        fval.append(float(np.sum(c[cols] ** 2) / len(cols)))
    pval = stats.f.sf(fval, num_df, den_df)
    table = pd.DataFrame({"numDF": num_df, "denDF": den_df, "F-value": fval,
                          "p-value": pval}, index=pd.Index(terms))
    heading = (f"Denom. DF: {n - p}",) if model.kind == "gls" else ()
    return NlmeAnovaTable(table=table, heading=heading)


# ----------------------------------------------------------------------------------
# AIC and BIC tables
# ----------------------------------------------------------------------------------
def _criterion_table(models, named, column: str, value):
    entries = [(f"m{i}", m) for i, m in enumerate(models)] + list(named.items())
    if not entries:
        raise ValueError(f"{column} needs at least one fitted model")
    for name, m in entries:
        if not all(hasattr(m, a) for a in ("loglik", "npar", "nobs")):
            raise TypeError(f"model {name!r} must be a fitted model (lmer, lme or gls), "
                            f"got {type(m).__name__}")
    if len(entries) == 1:
        return float(value(entries[0][1]))
    if len({m.nobs for _, m in entries}) > 1:
        warnings.warn("models are not all fitted to the same number of observations",
                      UserWarning, stacklevel=3)
    return pd.DataFrame({"df": [int(m.npar) for _, m in entries],
                         column: [float(value(m)) for _, m in entries]},
                        index=pd.Index([n for n, _ in entries]))


def AIC(*models, k: float = 2.0, **named_models):
    """Akaike's criterion -2 log L + k df of each fit, as R's ``AIC(m1, m2, ...)``.

    One fit: the number.  Several: a DataFrame with columns ``df`` (the number of
    parameters) and ``AIC``, rows named ``m0``, ``m1``, ... or by keyword
    (``AIC(slope=m1, intercept=m0)``).  The log-likelihood is each fit's own
    (the REML one for REML fits, as R's ``logLik``), so criteria of REML fits with
    different fixed effects are not comparable.  Warns when the fits use
    different numbers of observations.
    """
    return _criterion_table(models, named_models, "AIC",
                            lambda m: -2.0 * m.loglik + float(k) * m.npar)


def BIC(*models, **named_models):
    """Schwarz's criterion -2 log L + log(n) df of each fit, as R's ``BIC(...)``.

    n is the number of observations, N - p for REML lme and gls fits (nlme's
    ``logLik`` convention) and N for lmer fits (lme4's).  Returns a number for one
    fit, else a DataFrame with columns ``df`` and ``BIC`` (see :func:`AIC`).
    """
    return _criterion_table(models, named_models, "BIC", lambda m: m.bic)
