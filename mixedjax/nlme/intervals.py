"""Approximate confidence intervals, as nlme's ``intervals.lme`` / ``intervals.gls``.

Fixed effects: beta_j +- t_{df_j, 1-a/2} se_j with nlme's denominator df.
Variance parameters (Pinheiro & Bates 2000, section 2.4.3): the parameters
are taken on nlme's "natural" unconstrained scale -- log standard deviations and
log((1 + r)/(1 - r)) of correlations of the random effects, the structures'
unconstrained parameters (CorSymm: log((1 + r)/(1 - r)) per correlation) and
log sigma -- whose approximate covariance is the inverse of the Hessian of
-log-likelihood (fixed effects profiled out).  nlme takes that Hessian by
finite differences; here it is exact (autodiff), so the intervals agree with
nlme's to the accuracy of nlme's differences.  Wald intervals on that scale are
mapped back to standard deviations, correlations and structure parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import numpy as np
import pandas as pd
import scipy.stats

from . import likelihood as lik

__all__ = ["Intervals", "intervals", "approximate_covariance"]

_hessian = jax.jit(jax.hessian(lik.natural_criterion), static_argnames=("layout",))


def _natural_names(result) -> tuple[list[tuple[str, str]], np.ndarray]:
    """(section, name) of every natural parameter and a mask of the free ones."""
    model = result.model
    names, free = [], []
    for t in model.terms:
        lev = model.levels[t.level].name
        names += [(f"reStruct.{lev}", f"sd({c})") for c in t.cnames]
        rows, cols = np.tril_indices(t.k, -1)
        names += [(f"reStruct.{lev}", f"cor({t.cnames[c]},{t.cnames[r]})")
                  for r, c in zip(rows, cols)]
        free += [True] * (t.k + len(rows))
    for section, bound in (("varStruct", model.bvar), ("corStruct", model.bcor)):
        names += [(section, nm) for nm in bound.names]
        free += [not bound.fixed] * bound.nparams
    names.append(("sigma", "sigma"))
    free.append(True)
    return names, np.asarray(free)


def approximate_covariance(result) -> pd.DataFrame:
    """Inverse Hessian of -log L at the natural parameters (nlme's ``apVar``)."""
    model = result.model
    xn = lik.to_natural(result.x, result.sigma, model.layout)
    H = np.asarray(_hessian(xn, result._arrays, model.layout))
    names, free = _natural_names(result)
    Hf = 0.5 * H[np.ix_(free, free)]  # Hessian of -log L (H is of -2 log L)
    if np.any(~np.isfinite(Hf)) or np.linalg.eigvalsh(Hf)[0] <= 0:
        raise ValueError("Non-positive definite approximate variance-covariance: the "
                         "variance parameters are not well determined (a variance near "
                         "zero or a correlation near +-1?)")
    labels = [f"{s}.{n}" if s != "sigma" else "lSigma"
              for (s, n), f in zip(names, free) if f]
    cov = np.linalg.inv(Hf)
    out = pd.DataFrame(cov, index=labels, columns=labels)
    out.attrs["estimate"] = pd.Series(xn[free], index=labels)
    return out


@dataclass
class Intervals:
    """Lower, estimate, upper per parameter group (``level``: coverage)."""

    level: float
    fixed: pd.DataFrame | None = None
    restruct: dict[str, pd.DataFrame] = field(default_factory=dict)
    corstruct: pd.DataFrame | None = None
    varstruct: pd.DataFrame | None = None
    sigma: pd.Series | None = None

    def __str__(self) -> str:
        lines = ["Approximate " + f"{100 * self.level:g}% confidence intervals"]

        def table(title, df):
            lines.extend(["", f" {title}", df.to_string(float_format=lambda v: f"{v:.7g}")])
        if self.fixed is not None:
            table("Fixed effects:", self.fixed)
        if self.restruct:
            lines.extend(["", " Random Effects:"])
            for lev, df in self.restruct.items():
                lines.append(f"  Level: {lev}")
                lines.append(df.to_string(float_format=lambda v: f"{v:.7g}"))
        if self.corstruct is not None:
            table("Correlation structure:", self.corstruct)
        if self.varstruct is not None:
            table("Variance function:", self.varstruct)
        if self.sigma is not None:
            lines.extend(["", " Within-group standard error:",
                          self.sigma.to_frame().T.to_string(
                              index=False, float_format=lambda v: f"{v:.7g}")])
        return "\n".join(lines)

    __repr__ = __str__


_COLS = ["lower", "est.", "upper"]


def _fixed(result, level) -> pd.DataFrame:
    est, se = result.fixef.to_numpy(), result.stderr.to_numpy()
    q = scipy.stats.t.ppf(0.5 + level / 2, result.fixed_df.to_numpy())
    return pd.DataFrame(np.column_stack([est - q * se, est, est + q * se]),
                        index=result.model.xnames, columns=_COLS)


def intervals(result, level: float = 0.95, which: str = "all") -> Intervals:
    """nlme's ``intervals``: ``which`` is "all", "fixed" or "var-cov"."""
    if which not in ("all", "fixed", "var-cov"):
        raise ValueError(f"which must be 'all', 'fixed' or 'var-cov', got {which!r}")
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a probability in (0, 1), got {level!r}")
    out = Intervals(level=float(level))
    if which != "var-cov":
        out.fixed = _fixed(result, level)
    if which == "fixed":
        return out
    cov = result.apvar
    est = cov.attrs["estimate"].to_numpy()
    half = scipy.stats.norm.ppf(0.5 + level / 2) * np.sqrt(np.diag(cov.to_numpy()))
    raw = np.column_stack([est - half, est, est + half])
    names, free = _natural_names(result)
    names = [nm for nm, f in zip(names, free) if f]
    for section in dict.fromkeys(s for s, _ in names):
        idx = [i for i, (s, _) in enumerate(names) if s == section]
        rows = [names[i][1] for i in idx]
        vals = raw[idx]
        if section.startswith("reStruct."):
            vals = np.where(np.array([r.startswith("sd(") for r in rows])[:, None],
                            np.exp(vals), np.tanh(vals / 2))
            out.restruct[section[len("reStruct."):]] = pd.DataFrame(vals, index=rows,
                                                                    columns=_COLS)
        elif section == "varStruct":
            out.varstruct = pd.DataFrame(
                np.column_stack([result.model.bvar.natural(vals[:, j]) for j in range(3)]),
                index=rows, columns=_COLS)
        elif section == "corStruct":
            nat = (np.tanh(vals / 2) if result.model.bcor.kind == "symm" else
                   np.column_stack([result.model.bcor.natural(vals[:, j]) for j in range(3)]))
            out.corstruct = pd.DataFrame(nat, index=rows, columns=_COLS)
        else:
            out.sigma = pd.Series(np.exp(vals[0]), index=_COLS, name="sigma")
    return out
