"""Estimated marginal means and their pairwise contrasts, as R's emmeans.

Lenth's emmeans (Searle, Speed & Milliken 1980, "Population marginal means in the
linear model", The American Statistician 34(4)): the reference grid holds every
combination of the levels of the model's factors, with each numeric covariate at
its mean over the model frame.  The marginal mean of a level (or a combination of
levels) of the ``specs`` factors averages the grid's predictions over the other
factors with equal weights: emmean = l'beta with l the average of the grid's
model-matrix rows.  Standard errors, df and t tests come from
:class:`~mixedjax.inference.tables.Tester` (Satterthwaite, Kenward-Roger with the
adjusted covariance as emmeans' ``lmer.df = "kenward-roger"``, residual, or none);
confidence limits are estimate +- t_{df, (1+level)/2} SE.

Pairwise contrasts ("a - b" for a before b) are tested within each ``by`` group,
with p-values adjusted for the family of that group: Tukey's studentized range
(``P(Q_{k, df} > |t| sqrt 2)``, k the number of means), Bonferroni, Holm or none.
A mean whose l is not estimable (a missing cell in a model with aliased columns)
is reported as NaN, as emmeans reports "nonEst".
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import patsy

from ..formula import formula_variables
from . import terms as tm
from .kenward_roger import check_reml
from .tables import Tester, normalize_ddf, t_quantile

__all__ = ["emmeans", "EmmeansResult", "ADJUST_METHODS", "p_adjust"]

ADJUST_METHODS = ("tukey", "bonferroni", "holm", "none")
_DDF_LABEL = {"Satterthwaite": "satterthwaite", "Kenward-Roger": "kenward-roger",
              "residual": "residual", None: "asymptotic"}


class EmmeansResult:
    """Marginal means (``.emmeans``) and pairwise contrasts (``.contrasts``)."""

    def __init__(self, emmeans, contrasts, specs, by, averaged_over, ddf, adjust, level,
                 family_sizes, L):
        self.emmeans = emmeans
        self.contrasts = contrasts
        self.specs = specs
        self.by = by
        self.averaged_over = averaged_over
        self.ddf = ddf
        self.adjust = adjust
        self.level = level
        self.family_sizes = family_sizes
        self.L = L  # rows: the linear functions of beta giving each mean

    def _notes(self, contrasts: bool) -> list[str]:
        notes = []
        if self.averaged_over:
            notes.append("Results are averaged over the levels of: "
                         + ", ".join(self.averaged_over))
        notes.append(f"Degrees-of-freedom method: {_DDF_LABEL[self.ddf]}")
        if not contrasts:
            notes.append(f"Confidence level used: {self.level:g}")
        elif self.adjust != "none":
            k = sorted(set(self.family_sizes))
            size = " or ".join(str(s) for s in k)
            what = (f"{self.adjust} method for comparing a family of {size} estimates"
                    if self.adjust == "tukey" else f"{self.adjust} method for "
                    f"{' or '.join(str(s * (s - 1) // 2) for s in k)} tests")
            notes.append(f"P value adjustment: {what}")
        return notes

    def _block(self, df: pd.DataFrame, contrasts: bool) -> str:
        shown = df.copy()
        for col in shown.columns:
            if pd.api.types.is_float_dtype(shown[col]):
                digits = 4 if col in ("p.value",) else 3
                shown[col] = shown[col].map(lambda v, d=digits: _fmt(v, d))
        text = shown.to_string(index=False)
        return "\n".join([text, ""] + self._notes(contrasts))

    def __repr__(self) -> str:
        return "\n".join(["$emmeans", self._block(self.emmeans, False), "",
                          "$contrasts", self._block(self.contrasts, True)])

    def _repr_html_(self) -> str:
        return ("<b>emmeans</b>" + self.emmeans.to_html(index=False, float_format="%.4g")
                + "<b>contrasts</b>"
                + self.contrasts.to_html(index=False, float_format="%.4g"))


def _fmt(v, digits):
    if v is None or not np.isfinite(v):
        return "NA" if (v is None or np.isnan(v)) else ("Inf" if v > 0 else "-Inf")
    if digits == 4:                       # p-values, as emmeans prints them
        return "<.0001" if v < 1e-4 else f"{v:.4f}"
    return f"{v:.{digits}g}"


def p_adjust(p: np.ndarray, method: str) -> np.ndarray:
    """Bonferroni or Holm adjustment of a family of p-values (R's ``p.adjust``)."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    if method == "holm":
        order = np.argsort(p, kind="stable")
        adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out = np.empty(m)
        out[order] = np.minimum(1.0, adj)
        return out
    return p


# ----------------------------------------------------------------------------------
# The reference grid
# ----------------------------------------------------------------------------------
def _raw_variables(code: str, frame) -> list[str]:
    if code in frame.columns:
        return [code]
    quoted = re.fullmatch(r"Q\([\"'](.*)[\"']\)", code)
    if quoted:
        return [quoted.group(1)]
    return [v for v in formula_variables(code) if v in frame.columns]


def _grid_factors(design, frame) -> dict[str, list]:
    """{variable: levels} of the data columns that enter X as categorical factors."""
    info = design.x_design_info
    out: dict[str, list] = {}
    for factor, fi in info.factor_infos.items():
        if fi.type != "categorical":
            continue
        raw = _raw_variables(factor.code, frame)
        if len(raw) != 1:
            raise ValueError(f"emmeans cannot build a reference grid for the factor "
                             f"{factor.code!r} (it should involve exactly one data column)")
        out.setdefault(raw[0], list(fi.categories))
    return out


def _covariates(design, frame, factors) -> dict[str, float]:
    """Numeric data columns of the fixed part (not used as factors), at their means."""
    names = []
    for factor, fi in design.x_design_info.factor_infos.items():
        if fi.type == "numerical":
            names += [v for v in _raw_variables(factor.code, frame) if v not in names]
    both = [v for v in names if v in factors]
    if both:
        raise ValueError(f"variables {both} enter the model both as factors and as numbers; "
                         "emmeans cannot average over them")
    return {v: float(np.mean(frame[v].to_numpy(dtype=np.float64))) for v in names}


def _grid_frame(frame, factors: dict, covariates: dict) -> pd.DataFrame:
    """Every combination of factor levels (first factor fastest), covariates at means."""
    names = list(factors)
    combos = list(itertools.product(*[range(len(factors[v])) for v in reversed(names)]))
    data = {}
    for pos, v in enumerate(reversed(names)):
        idx = [c[pos] for c in combos]
        values = [factors[v][i] for i in idx]
        col = frame[v]
        if isinstance(col.dtype, pd.CategoricalDtype):
            data[v] = pd.Categorical(values, categories=col.cat.categories)
        else:
            data[v] = pd.Series(values, dtype=object if col.dtype == object else col.dtype)
    n = len(combos)
    for v, mean in covariates.items():
        data[v] = np.full(n, mean)
    return pd.DataFrame(data)[names + list(covariates)] if names else pd.DataFrame(data)


def _grid_matrix(design, grid: pd.DataFrame):
    """Full (permuted) and kept model-matrix rows of the grid."""
    full = np.asarray(patsy.build_design_matrices([design.x_design_info], grid,
                                                  NA_action="raise")[0], dtype=np.float64)
    full = full[:, design.x_perm]
    return full, full[:, design.x_keep]


def _nonestimable_basis(design, frame) -> np.ndarray | None:
    """Null space of the full X (columns orthogonal to which l must be to be estimable)."""
    if np.all(design.x_keep):
        return None
    full, _ = _grid_matrix(design, frame)
    _, sv, vt = np.linalg.svd(full, full_matrices=True)
    rank = int(np.sum(sv > 1e-8 * sv[0]))
    return vt[rank:]


def _label(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _as_names(x, what: str) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        text = x.strip()
        text = re.sub(r"^(pairwise|revpairwise)?\s*~", "", text).strip()
        parts = [p.strip() for p in re.split(r"[*+:]", text) if p.strip()]
        if not parts:
            raise ValueError(f"{what} {x!r} names no variable")
        return parts
    if isinstance(x, (list, tuple)) and all(isinstance(v, str) for v in x) and x:
        return [v.strip() for v in x]
    raise TypeError(f"{what} must be a variable name, a formula such as '~ N', or a list "
                    f"of names; got {x!r}")


# ----------------------------------------------------------------------------------
# Means and contrasts
# ----------------------------------------------------------------------------------
def emmeans(result, specs, by=None, ddf="Satterthwaite", adjust: str = "tukey",
            level: float = 0.95) -> EmmeansResult:
    """Estimated marginal means of ``specs`` (per ``by`` group) and pairwise contrasts.

    ``specs``: a factor name, ``"~ N"``, ``"V:N"``, ``"~ N | V"`` (by V) or a list of
    names; ``by``: a factor name or list; ``ddf``: "Satterthwaite", "Kenward-Roger",
    "residual" or None; ``adjust``: "tukey", "bonferroni", "holm" or "none";
    ``level``: confidence level of the means' intervals.
    """
    method = normalize_ddf(ddf)
    if method == "Kenward-Roger":
        check_reml(result)
    if isinstance(specs, str) and "|" in specs:         # "~ N | V": by V
        if by is not None:
            raise ValueError("give the by variables either after '|' in specs or as by=")
        specs, by = specs.split("|", 1)
    adj = adjust.strip().lower() if isinstance(adjust, str) else adjust
    if adj not in ADJUST_METHODS:
        raise ValueError(f"unknown p-value adjustment {adjust!r}; use one of {ADJUST_METHODS}")
    if isinstance(level, bool) or not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be a number between 0 and 1, got {level!r}")
    spec_vars, by_vars = _as_names(specs, "specs"), _as_names(by, "by")
    design = result.model.design
    frame = tm.model_frame(design)
    factors = _grid_factors(design, frame)
    for v in spec_vars + by_vars:
        if v not in factors:
            raise ValueError(f"{v!r} is not a factor of the fixed effects; the model's "
                             f"factors are {list(factors)}")
    overlap = set(spec_vars) & set(by_vars)
    if overlap:
        raise ValueError(f"{sorted(overlap)} appear in both specs and by")

    tester = Tester(result, method)
    em, Ls = _means(design, frame, factors, spec_vars, by_vars, tester, level)
    contrasts, sizes = _pairwise(tester, em, Ls, spec_vars, by_vars, adj)
    averaged = [v for v in factors if v not in spec_vars + by_vars]
    return EmmeansResult(em, contrasts, spec_vars, by_vars, averaged, method, adj, level,
                         sizes, Ls)


def _means(design, frame, factors, spec_vars, by_vars, tester, level):
    """The means table and the rows L (one per mean) of the linear functions of beta.

    Rows: by groups slowest, the first spec variable fastest.  Each l averages the
    reference grid's model-matrix rows with the mean's levels (equal weights).
    """
    grid = _grid_frame(frame, factors, _covariates(design, frame, factors))
    full_rows, rows = _grid_matrix(design, grid)
    basis = _nonestimable_basis(design, frame)
    keys = spec_vars + by_vars
    order_vars = list(reversed(by_vars)) + list(reversed(spec_vars))
    grid_levels = {v: grid[v].astype(object).to_numpy() for v in keys}
    records, Ls = [], []
    for combo in itertools.product(*[factors[v] for v in order_vars]):
        levels = dict(zip(order_vars, combo))
        mask = np.ones(len(grid), dtype=bool)
        for v in keys:
            mask &= grid_levels[v] == levels[v]
        l, lf = rows[mask].mean(axis=0), full_rows[mask].mean(axis=0)
        estimable = basis is None or np.max(np.abs(basis @ lf)) <= 1e-6 * max(
            1.0, np.max(np.abs(lf)))
        rec = {v: _label(levels[v]) for v in keys}
        rec.update(_mean_row(tester, l, level) if estimable else _na_mean())
        records.append(rec)
        Ls.append(l)
    em = pd.DataFrame(records, columns=keys + ["emmean", "SE", "df", "lower.CL", "upper.CL"])
    return em, np.array(Ls)


def _mean_row(tester: Tester, l, level) -> dict:
    r = tester.t_test(l)
    crit = t_quantile(0.5 + level / 2.0, r["df"])
    est, se = r["Estimate"], r["Std. Error"]
    return {"emmean": est, "SE": se, "df": r["df"], "lower.CL": est - crit * se,
            "upper.CL": est + crit * se}


def _na_mean() -> dict:
    return {k: np.nan for k in ("emmean", "SE", "df", "lower.CL", "upper.CL")}


def _pairwise(tester, em, Ls, spec_vars, by_vars, adjust):
    groups = em.groupby(by_vars, sort=False).indices if by_vars else {(): np.arange(len(em))}
    records, sizes = [], []
    for key, idx in groups.items():
        idx = [i for i in idx if np.isfinite(em["emmean"].iloc[i])]
        names = [" ".join(em.iloc[i][v] for v in spec_vars) for i in idx]
        fam = []
        for (a, ia), (b, ib) in itertools.combinations(zip(names, idx), 2):
            r = tester.t_test(Ls[ia] - Ls[ib])
            rec = {"contrast": f"{a} - {b}"}
            key_t = key if isinstance(key, tuple) else (key,)
            rec.update({v: k for v, k in zip(by_vars, key_t)})
            rec.update({"estimate": r["Estimate"], "SE": r["Std. Error"], "df": r["df"],
                        "t.ratio": r["t value"], "p.value": r["Pr(>|t|)"]})
            fam.append(rec)
        sizes.append(len(idx))
        if fam:
            _adjust_family(fam, len(idx), adjust)
        records += fam
    cols = ["contrast"] + by_vars + ["estimate", "SE", "df", "t.ratio", "p.value"]
    return pd.DataFrame(records, columns=cols), sizes


def _adjust_family(fam: list[dict], k: int, adjust: str) -> None:
    """Replace the p-values of one family of pairwise contrasts among k means by
    adjusted ones (in place)."""
    p = np.array([f["p.value"] for f in fam])
    if adjust == "tukey":
        t = np.abs(np.array([f["t.ratio"] for f in fam]))
        p = _ptukey_upper(t * np.sqrt(2.0), k, np.array([f["df"] for f in fam]))
    else:
        p = p_adjust(p, adjust)
    for f, pv in zip(fam, p):
        f["p.value"] = float(pv)


def _ptukey_upper(q, k, df):
    """P(Q > q) of the studentized range of k means with df (inf: the normal limit)."""
    if k < 2:
        return np.full(len(q), np.nan)
    from scipy.stats import studentized_range   # slow to import: only when needed

    df = np.where(np.isfinite(df), df, 1e7)   # the df -> inf limit, to ~1e-7
    return np.asarray(studentized_range.sf(q, k, df), dtype=np.float64)
