"""Text and HTML summaries of a fit, in the layout of lme4's ``summary.merMod``."""

from __future__ import annotations

import functools
import html

import numpy as np
import pandas as pd

__all__ = ["Summary"]


def _fmt(x: float, digits: int = 4) -> str:
    """Format like R's signif-based printing: ``digits`` significant digits."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "NA"
    if x == 0:
        return "0"
    mag = int(np.floor(np.log10(abs(x))))
    decimals = max(digits - 1 - mag, 0)
    return f"{x:.{decimals}f}"


def _table(rows: list[list[str]], header: list[str], align_left: set[int]) -> list[str]:
    rows = [list(r) + [""] * (len(header) - len(r)) for r in rows]  # ragged: lower triangle
    widths = [max(len(str(r[j])) for r in rows + [header]) for j in range(len(header))]
    out = []
    for r in [header] + rows:
        cells = [str(c).ljust(w) if j in align_left else str(c).rjust(w)
                 for j, (c, w) in enumerate(zip(r, widths))]
        out.append(" " + " ".join(cells).rstrip())
    return out


_NEGLIGIBLE = 1e-16  # variances below round-off of the largest one print as 0
SIGNIF_LEGEND = "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"
_DDF_TITLE = {"Satterthwaite": "Satterthwaite's method", "Kenward-Roger": "Kenward-Roger's method",
              "residual": "residual degrees of freedom"}


def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    for cut, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p < cut:
            return mark
    return ""


def _common_decimals(values, digits: int, cap: int = 6) -> int:
    """Decimals that show the smallest non-zero |value| with ``digits`` significant digits."""
    vals = np.abs(np.asarray(values, dtype=float))
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if not len(vals):
        return 0
    return int(min(max(digits - 1 - np.floor(np.log10(vals.min())), 0), cap))


def _format_pvalues(p) -> list[str]:
    """R's format.pval(digits = 3): '< 2e-16' below machine epsilon, scientific below
    0.001, otherwise fixed with enough decimals for 3 significant digits."""
    p = np.asarray(p, dtype=float)
    out = []
    fixed = p[np.isfinite(p) & (p >= 1e-3)]
    dec = _common_decimals(fixed, 3) if len(fixed) else 0
    for v in p:
        if not np.isfinite(v):
            out.append("NA")
        elif v < np.finfo(float).eps:
            out.append("< 2e-16")
        elif v < 1e-3:
            out.append(f"{v:.2e}")
        else:
            out.append(f"{v:.{dec}f}")
    return out


class Summary:
    """Summary of an :class:`~mixedjax.result.LMMResult`; ``print`` it or show it."""

    def __init__(self, result, ddf: str | None = None):
        self.result = result
        if ddf is not None:
            from .inference.tables import normalize_ddf
            ddf = normalize_ddf(ddf)
            if ddf == "Kenward-Roger":
                from .inference.kenward_roger import check_reml
                check_reml(result)
        self.ddf = ddf

    # -- pieces -------------------------------------------------------------------------
    def header(self) -> list[str]:
        m = self.result
        method = "REML" if m.reml else "maximum likelihood"
        title = f"Linear mixed model fit by {method}"
        if self.ddf is not None:
            title += f". t-tests use {_DDF_TITLE[self.ddf]}"
        lines = [title, f"Formula: {m.formula}"]
        if m.model.data_name:
            lines.append(f"   Data: {m.model.data_name}")
        lines.append("")
        if m.reml:
            lines.append(f"REML criterion at convergence: {m.objective:.1f}")
        else:
            stats = [("AIC", f"{m.aic:.1f}"), ("BIC", f"{m.bic:.1f}"),
                     ("logLik", f"{m.loglik:.1f}"), ("deviance", f"{m.deviance:.1f}"),
                     ("df.resid", f"{m.df_resid}")]
            w = [max(len(a), len(b)) for a, b in stats]
            lines.append(" ".join(a.rjust(x) for (a, _), x in zip(stats, w)))
            lines.append(" ".join(b.rjust(x) for (_, b), x in zip(stats, w)))
        return lines

    def scaled_residuals(self) -> pd.Series | None:
        """Quantiles of the Pearson residuals; None for a fit whose rows are not at
        hand (a partitioned fit loaded from a file)."""
        if self.result.residuals is None:
            return None
        r = self.result.residuals.to_numpy() / self.result.sigma
        w = self.result.model.design.weights
        if w is not None:   # Pearson residuals, as lme4's summary
            r = r * np.sqrt(w)
        q = np.quantile(r, [0, 0.25, 0.5, 0.75, 1.0])
        return pd.Series(q, index=["Min", "1Q", "Median", "3Q", "Max"])

    def random_effects_rows(self) -> list[list[str]]:
        m = self.result
        vc = m.varcorr
        # A variance at the boundary is zero up to round-off (theta ~ 1e-19, not lme4's
        # exact 0): shown as 0 rather than as 40 digits of noise.
        floor = _NEGLIGIBLE * np.nanmax(np.abs(vc.vcov.to_numpy()))
        sd_floor = np.sqrt(floor)

        def cell(x, tiny):
            return _fmt(0.0 if abs(x) < tiny else x)

        rows = []
        for grp, block in vc.groupby("grp", sort=False):
            if grp == "Residual":
                continue
            variances = block[block.var2.isna()]
            corrs = block[block.var2.notna()]
            names = list(variances.var1)
            for i, (_, r) in enumerate(variances.iterrows()):
                corr_cells = []
                for j in range(i):
                    c = corrs[(corrs.var1 == names[j]) & (corrs.var2 == names[i])].sdcor
                    corr_cells.append(f"{c.iloc[0]:.2f}" if len(c) else "")
                rows.append([grp if i == 0 else "", r.var1, cell(r.vcov, floor),
                             cell(r.sdcor, sd_floor), " ".join(corr_cells)])
        rows.append(["Residual", "", cell(m.sigma ** 2, floor), cell(m.sigma, sd_floor), ""])
        return rows

    def coef_table(self) -> pd.DataFrame:
        """The fixed-effects table; with ``ddf`` lmerTest's (df and p-values added)."""
        m = self.result
        if self.ddf is not None:
            return self._ddf_table
        est, se = m.fixef, m.stderr
        return pd.DataFrame({"Estimate": est, "Std. Error": se, "t value": est / se})

    @functools.cached_property
    def _ddf_table(self) -> pd.DataFrame:
        return self.result.coef_table(ddf=self.ddf)

    def _coef_lines(self, ct: pd.DataFrame) -> list[str]:
        if self.ddf is None:
            rows = [[name, _fmt(r["Estimate"]), _fmt(r["Std. Error"]), f"{r['t value']:.2f}"]
                    for name, r in ct.iterrows()]
            return _table(rows, ["", "Estimate", "Std. Error", "t value"], {0})
        # lmerTest's layout (R's printCoefmat): estimates and standard errors share a
        # number of decimals, p-values as format.pval, significance stars and legend.
        es = _common_decimals(ct[["Estimate", "Std. Error"]].to_numpy().ravel(), 4)
        dfd = _common_decimals(ct["df"].to_numpy(), 5)
        pv = _format_pvalues(ct["Pr(>|t|)"].to_numpy())
        rows = [[name, f"{r['Estimate']:.{es}f}", f"{r['Std. Error']:.{es}f}",
                 f"{r['df']:.{dfd}f}" if np.isfinite(r["df"]) else "Inf",
                 f"{r['t value']:.3f}", p, _stars(r["Pr(>|t|)"])]
                for (name, r), p in zip(ct.iterrows(), pv)]
        lines = _table(rows, ["", "Estimate", "Std. Error", "df", "t value", "Pr(>|t|)", ""],
                       {0, 6})
        return lines + ["---", SIGNIF_LEGEND]

    def correlation(self) -> pd.DataFrame:
        V = self.result.vcov.to_numpy()
        sd = np.sqrt(np.diag(V))
        return pd.DataFrame(V / np.outer(sd, sd), index=self.result.vcov.index,
                            columns=self.result.vcov.columns)

    def footnotes(self) -> list[str]:
        m = self.result
        notes = []
        if m.n_dropped:
            notes.append(f"{m.n_dropped} row(s) with missing values were dropped")
        if m.singular:
            # lme4 points to help('isSingular'); the principal components of the
            # random effects show which directions have no support.
            notes.append("boundary (singular) fit: a variance is estimated as zero or a "
                         "correlation as +-1; see m.rePCA()")
        if not m.converged:
            notes.append(f"optimizer did not converge: {m.optinfo['message']}")
        if m.model.design.aliased:
            notes.append(f"fixed-effect model matrix is rank deficient; dropped "
                         f"{m.model.design.aliased}")
        return notes

    # -- text ---------------------------------------------------------------------------
    def text(self, correlation: bool = True) -> str:
        m = self.result
        lines = self.header()
        lines.append("")
        lines.append("Scaled residuals:")
        sr = self.scaled_residuals()
        if sr is None:
            lines.append("(not available: the fit's rows are not attached)")
        else:
            cells = [f"{v:.4f}" for v in sr]
            w = max(max(len(c) for c in cells), 7)
            lines.append(" ".join(n.rjust(w) for n in sr.index))
            lines.append(" ".join(c.rjust(w) for c in cells))
        lines.append("")
        lines.append("Random effects:")
        lines += _table(self.random_effects_rows(),
                        ["Groups", "Name", "Variance", "Std.Dev.", "Corr"], {0, 1, 4})
        groups = ", ".join(f"{g}, {n}" for g, n in m.ngroups.items())
        lines.append(f"Number of obs: {m.nobs}, groups:  {groups}")
        if m.n_dropped:
            lines.append(f"({m.n_dropped} observation(s) deleted due to missingness)")
        lines.append("")
        lines.append("Fixed effects:")
        ct = self.coef_table()
        lines += self._coef_lines(ct)
        if correlation and len(ct) > 1:
            lines.append("")
            lines.append("Correlation of Fixed Effects:")
            corr = self.correlation()
            names = list(corr.index)
            short = [n[:6] if n != "(Intercept)" else "(Intr)" for n in names]
            rows = [[names[i]] + [f"{corr.iloc[i, j]:.3f}" for j in range(i)]
                    for i in range(1, len(names))]
            lines += _table(rows, [""] + short[:-1], {0})
        notes = self.footnotes()
        if notes:
            lines.append("")
            lines += [f"Note: {n}" for n in notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return self.text()

    # -- HTML ---------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        m = self.result
        esc = html.escape
        parts = [f"<div><b>{esc(self.header()[0])}</b><br>",
                 f"<code>{esc(m.formula)}</code><br>"]
        for line in self.header()[2:]:
            if line:
                parts.append(f"<pre style='margin:0'>{esc(line)}</pre>")
        re_rows = self.random_effects_rows()
        re_df = pd.DataFrame(re_rows, columns=["Groups", "Name", "Variance", "Std.Dev.", "Corr"])
        parts.append("<p><b>Random effects</b></p>" + re_df.to_html(index=False))
        groups = ", ".join(f"{esc(g)}: {n}" for g, n in m.ngroups.items())
        parts.append(f"<p>Number of obs: {m.nobs}; groups: {groups}</p>")
        parts.append("<p><b>Fixed effects</b></p>" + self.coef_table().to_html(float_format="%.4g"))
        for n in self.footnotes():
            parts.append(f"<p><i>Note: {esc(n)}</i></p>")
        parts.append("</div>")
        return "".join(parts)
