"""Per-level coefficients, conditional modes in long form, and the principal
components of the random effects.

* :func:`coef`: lme4's ``coef.merMod``: for each grouping factor, the fixed
  effects plus the level's conditional modes, column by column.
* :func:`ran_vals`, :func:`ran_coefs`: the conditional modes (with their
  conditional standard deviations) and the coefficients in long form, as
  broom.mixed's ``tidy(m, effects = "ran_vals" | "ran_coefs")``.
* :func:`rePCA`: lme4's ``rePCA.merMod``: the singular values of each grouping
  factor's relative covariance factor Lambda (Bates, Kliegl, Vasishth & Baayen
  2015, "Parsimonious mixed models", arXiv:1506.04967).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..structure import lambdas

__all__ = ["coef", "ran_vals", "ran_coefs", "rePCA", "REPCA_ROWS"]

REPCA_ROWS = ["Standard deviation", "Proportion of Variance", "Cumulative Proportion"]


def coef(result) -> dict[str, pd.DataFrame]:
    """Per-level coefficients, as lme4's ``coef(m)``.

    One DataFrame per grouping factor, indexed by its levels.  Columns: any
    random-effect name that is not a fixed effect (over all grouping factors, in
    order of appearance; its fixed part is 0), then the fixed effects in
    ``fixef`` order.  Each level's row is the fixed effects plus that level's
    conditional modes; the terms of a grouping factor that carries several
    (``(1|g) + (0 + x|g)``) add up column by column.
    """
    fe = result.fixef
    ranef = result.ranef
    fixed_names = list(fe.index)
    extra: list[str] = []
    for df in ranef.values():
        for name in df.columns:
            if name not in fixed_names and name not in extra:
                extra.append(name)
    base = np.concatenate([np.zeros(len(extra)), fe.to_numpy()])
    columns = extra + fixed_names
    position = {name: j for j, name in enumerate(columns)}
    out = {}
    for group, df in ranef.items():
        values = np.tile(base, (len(df), 1))
        b = df.to_numpy()
        for j, name in enumerate(df.columns):
            values[:, position[name]] += b[:, j]
        out[group] = pd.DataFrame(values, index=df.index.copy(), columns=columns)
    return out


def ran_vals(result) -> pd.DataFrame:
    """Conditional modes in long form: columns ``group``, ``level``, ``term``,
    ``estimate`` and ``std.error`` (the conditional standard deviation, lme4's
    ``condVar``), ordered by grouping factor, then term, then level, as R's
    ``as.data.frame(ranef(m, condVar = TRUE))``."""
    frames = []
    se = result.ranef_se
    for group, df in result.ranef.items():
        sd = se[group].to_numpy()
        b = df.to_numpy()
        levels = [str(v) for v in df.index]
        for j, term in enumerate(df.columns):
            frames.append(pd.DataFrame({
                "group": group, "level": levels, "term": term,
                "estimate": b[:, j], "std.error": sd[:, j]}))
    return pd.concat(frames, ignore_index=True)


def ran_coefs(result) -> pd.DataFrame:
    """:func:`coef` in long form (``group``, ``level``, ``term``, ``estimate``),
    term by term within each grouping factor, as broom.mixed's ``ran_coefs``."""
    frames = []
    for group, df in coef(result).items():
        levels = [str(v) for v in df.index]
        values = df.to_numpy()
        for j, term in enumerate(df.columns):
            frames.append(pd.DataFrame({"group": group, "level": levels, "term": term,
                                        "estimate": values[:, j]}))
    return pd.concat(frames, ignore_index=True)


def rePCA(result) -> dict[str, pd.DataFrame]:  # noqa: N802 - lme4's name
    """Principal components of the random effects, as lme4's ``summary(rePCA(m))``.

    For each grouping factor, the singular values s of the block-diagonal matrix
    of its terms' relative covariance factors Lambda_t (the standard deviations
    of the random effects' principal components, in units of sigma) and their
    shares s^2 / sum(s^2) and cumulative shares, unrounded (R's
    ``summary.prcomp`` rounds them to 5 decimals).  One DataFrame per factor:
    rows ``Standard deviation``, ``Proportion of Variance``, ``Cumulative
    Proportion``; columns ``PC1``, ``PC2``, ...  ``attrs["rotation"]`` holds the
    left singular vectors (rows: the random-effect columns).  A standard
    deviation at (or near) zero marks a direction without support in the data: the
    fit is singular and a simpler random-effects structure fits as well.
    """
    terms = result.model.design.terms
    lams = lambdas(np.asarray(result.theta, np.float64), result.model.structure)
    by_group: dict[str, list[tuple[np.ndarray, list[str]]]] = {}
    for t, lam in zip(terms, lams):
        by_group.setdefault(t.group_name, []).append((np.asarray(lam), list(t.cnames)))
    out = {}
    for group, parts in by_group.items():
        k = sum(lam.shape[0] for lam, _ in parts)
        block = np.zeros((k, k))
        names: list[str] = []
        off = 0
        for lam, cnames in parts:
            kk = lam.shape[0]
            block[off:off + kk, off:off + kk] = lam
            names += cnames
            off += kk
        u, s, _ = np.linalg.svd(block)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = s ** 2 / np.sum(s ** 2)
        pcs = [f"PC{i + 1}" for i in range(k)]
        table = pd.DataFrame([s, share, np.cumsum(share)], index=REPCA_ROWS, columns=pcs)
        table.attrs["rotation"] = pd.DataFrame(u, index=names, columns=pcs)
        out[group] = table
    return out
