"""Text summaries of lme and gls fits in the layout of nlme's ``summary`` printout."""

from __future__ import annotations

import math
import re

import numpy as np

from ..design import r_name
from ..formula import rename_quoted

__all__ = ["NlmeSummary", "format_vector"]


def _decimals(x: float, digits: int) -> int:
    """Fewest decimals that show ``x`` to ``digits`` significant digits."""
    if x == 0 or not math.isfinite(x):
        return 0
    d = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    while d > 0 and round(x, d - 1) == round(x, d):
        d -= 1
    return min(d, 15)


def format_vector(values, digits: int = 7) -> list[str]:
    """Numbers with common decimals, as R prints a numeric vector."""
    vals = [float(v) for v in values]
    if any(math.isfinite(v) and v != 0 and not 1e-5 <= abs(v) < 1e15 for v in vals):
        return [f"{v:.{digits - 1}e}" for v in vals]  # R switches to scientific too
    d = max((_decimals(v, digits) for v in vals), default=0)
    return [f"{v:.{d}f}" if math.isfinite(v) else "NA" for v in vals]


def _named(names, values, digits: int = 7) -> list[str]:
    """R's printout of a named vector: one common column width, right-aligned."""
    cells = format_vector(values, digits)
    w = max(len(str(x)) for x in list(names) + cells)
    return [" ".join(str(n).rjust(w) for n in names) + " ",
            " ".join(c.rjust(w) for c in cells) + " "]


def _corr(x: float) -> str:
    return f"{round(float(x), 3) + 0.0:.3f}"  # + 0.0: no "-0.000"


def deparse(form: str) -> str:
    """A one-sided formula as R prints it: ``~1 | Subject``, ``~age``."""
    text = " ".join(form.split())
    text = text.replace("~ ", "~")
    return text.replace(" |", "|").replace("|", " | ").replace("  ", " ")


def _matrix(rownames, colnames, cells) -> list[str]:
    widths = [max([len(colnames[j])] + [len(r[j]) for r in cells]) for j in range(len(colnames))]
    rw = max(len(r) for r in rownames)
    out = [" " * rw + " " + " ".join(c.ljust(w) for c, w in zip(colnames, widths))]
    for name, row in zip(rownames, cells):
        out.append(name.ljust(rw) + " " + " ".join(c.rjust(w) for c, w in zip(row, widths)))
    return out


def _abbrev(name: str) -> str:
    return "(Intr)" if name == "(Intercept)" else name[:6]


class NlmeSummary:
    """Summary of an lme or gls fit; ``print`` it."""

    def __init__(self, result):
        self.result = result

    @property
    def coef_table(self):
        return self.result.coef_table

    def header(self) -> list[str]:
        r = self.result
        how = "REML" if r.reml else "maximum likelihood"
        kind = ("Linear mixed-effects model" if r.model.kind == "lme"
                else "Generalized least squares")
        lines = [f"{kind} fit by {how}"]
        if r.model.kind == "gls":
            lines.append(f"  Model: {r.formula} ")
        lines.append(f"  Data: {r.model.data_name or 'data'} ")
        cells = [f"{r.aic:.7g}", f"{r.bic:.7g}", f"{r.loglik:.7g}"]
        w = [max(len(c), 8) for c in cells]
        lines.append("  " + " ".join(h.rjust(x) for h, x in zip(("AIC", "BIC", "logLik"), w)))
        lines.append("  " + " ".join(c.rjust(x) for c, x in zip(cells, w)))
        return lines

    def random_effects(self) -> list[str]:
        r = self.result
        lines = ["Random effects:"]
        levels = r.model.levels
        for i, lev in enumerate(levels):
            terms = [(t, P) for t, P in zip(r.model.terms, r.covariances) if t.level == i]
            expr = " + ".join(_compact(t.expr).removeprefix("0+") for t, _ in terms)
            lines.append(f" Formula: ~{expr} | {lev.display}")
            names = [c for t, _ in terms for c in t.cnames]
            sds = [s for _, P in terms for s in np.sqrt(np.diag(P))]
            last = i == len(levels) - 1
            if len(names) == 1:
                nm = names + (["Residual"] if last else [])
                vals = sds + ([r.sigma] if last else [])
                head, row = _named(nm, vals)
                lines += ["        " + head, "StdDev: " + row]
            else:
                lines += self._general(terms, r.sigma if last else None)
            lines.append("")
        return lines

    def _general(self, terms, sigma) -> list[str]:
        """StdDev and lower-triangular Corr columns of a level with k > 1 effects."""
        from scipy.linalg import block_diag
        names = [c for t, _ in terms for c in t.cnames]
        P = block_diag(*[P for _, P in terms])
        sd = np.sqrt(np.diag(P))
        C = P / np.outer(sd, sd)
        k = len(names)
        rows = [[_abbrev(n) for n in names[:k - 1]]]
        rows += [[_corr(C[i, j]) for j in range(i)] + [""] * (k - 1 - i) for i in range(1, k)]
        sds = list(sd) + ([sigma] if sigma is not None else [])
        if sigma is not None:
            names = names + ["Residual"]
            rows.append([""] * (k - 1))
        cells = [[s] + row for s, row in zip(format_vector(sds), rows)]
        head = ["StdDev", "Corr"] + [""] * (k - 2)
        structure = ("General positive-definite, Log-Cholesky parametrization"
                     if len(terms) == 1 else "Block diagonal (uncorrelated blocks)")
        return [f" Structure: {structure}"] + _matrix(names, head, cells)

    def structures(self) -> list[str]:
        r = self.result
        lines = []
        cor, var = r.model.bcor, r.model.bvar
        if cor.kind != "none":
            lines += [f"Correlation Structure: {cor.description}",
                      f" Formula: {deparse(r.model.correlation.form)} ",
                      " Parameter estimate(s):"]
            if cor.kind == "symm":
                C = r.cormatrix.to_numpy()
                M = len(C)
                cells = [[_corr(C[i, j]) for j in range(i)] + [""] * (M - 1 - i)
                         for i in range(1, M)]
                lines += [" Correlation: "] + _matrix([str(i + 1) for i in range(1, M)],
                                                      [str(j + 1) for j in range(M - 1)],
                                                      cells)
            else:
                lines += _named(list(r.corstruct), list(r.corstruct.values()))
        if var.kind != "none":
            lines += ["Variance function:", f" Structure: {var.description}",
                      f" Formula: {deparse(r.model.weights.form)} "]
            if var.nparams:
                lines.append(" Parameter estimates:")
                if var.kind == "ident":
                    lines += _named(var.strata, [1.0] + list(r.varstruct.values()))
                else:
                    lines += _named(list(r.varstruct), list(r.varstruct.values()))
        return lines

    def fixed_effects(self) -> list[str]:
        r = self.result
        ct = r.coef_table
        cols = ["Value", "Std.Error", "DF", "t-value", "p-value"]
        if r.model.kind == "gls":
            cols.remove("DF")
        cells = {c: format_vector(ct[c]) for c in ("Value", "Std.Error", "t-value")}
        cells["DF"] = [str(int(v)) for v in ct["DF"]]
        cells["p-value"] = [f"{v:.4f}" for v in ct["p-value"]]
        rows = [[cells[c][i] for c in cols] for i in range(len(ct))]
        out = _matrix(list(ct.index), cols, rows)
        # Column headers right-aligned, as R prints numeric columns.
        widths = [max(len(c), *(len(row[j]) for row in rows)) for j, c in enumerate(cols)]
        rw = max(len(n) for n in ct.index)
        out[0] = " " * rw + " " + " ".join(c.rjust(w) for c, w in zip(cols, widths))
        return out

    def correlation(self) -> list[str]:
        V = self.result.vcov.to_numpy()
        names = list(self.result.vcov.index)
        if len(names) < 2:
            return []
        sd = np.sqrt(np.diag(V))
        C = V / np.outer(sd, sd)
        cells = [[_corr(C[i, j]) for j in range(i)] + [""] * (len(names) - 1 - i)
                 for i in range(1, len(names))]
        return [" Correlation: "] + _matrix(names[1:], [_abbrev(n) for n in names[:-1]],
                                            cells)

    def residual_quantiles(self) -> list[str]:
        q = np.quantile(self.result.pearson_residuals.to_numpy(), [0, .25, .5, .75, 1])
        return _named(["Min", "Q1", "Med", "Q3", "Max"], q)

    def text(self, brief: bool = False) -> str:
        r = self.result
        lines = self.header() + [""]
        if r.model.kind == "lme":
            lines += self.random_effects()
        structures = self.structures()
        if structures:
            lines += structures + ([""] if r.model.kind == "gls" else [])
        if r.model.kind == "lme":
            lines.append(f"Fixed effects:  {r.formula} ")
        else:
            lines.append("Coefficients:")
        lines += self.fixed_effects()
        if not brief:
            lines += self.correlation() + [""]
            title = ("Standardized Within-Group Residuals:" if r.model.kind == "lme"
                     else "Standardized residuals:")
            lines += [title] + self.residual_quantiles() + [""]
        lines += self.footer()
        return "\n".join(lines)

    def footer(self) -> list[str]:
        r = self.result
        out = []
        if r.model.kind == "lme":
            out.append(f"Number of Observations: {r.nobs}")
            ng = [len(lab) for lab in r.model.level_labels]
            if len(ng) == 1:
                out.append(f"Number of Groups: {ng[0]} ")
            else:
                out += ["Number of Groups: "] + _named(
                    [lev.display for lev in r.model.levels], ng)
        else:
            out += [f"Residual standard error: {format_vector([r.sigma])[0]} ",
                    f"Degrees of freedom: {r.nobs} total; {r.nobs - r.model.p} residual"]
        if r.n_dropped:
            out.append(f"({r.n_dropped} observation(s) with missing values dropped)")
        if not r.converged:
            out.append(f"Note: optimizer did not converge: {r.optinfo['message']}")
        return out

    def __str__(self) -> str:
        return self.text()

    __repr__ = __str__


def _compact(expr: str) -> str:
    """A term's expression as nlme prints it: no spaces around operators, column
    names as R writes them (```my days```)."""
    return rename_quoted(re.sub(r"\s*([-+*:/|])\s*", r"\1", expr.strip()), r_name)
