"""Diagnostic and presentation plots of fitted models (matplotlib).

matplotlib is an optional dependency (``pip install mixedjax[plot]``); it is
imported inside each function, so ``import mixedjax.plots`` works without it.
Every function returns the :class:`matplotlib.figure.Figure` it draws and
accepts ``figsize``; nothing is shown or saved.

* :func:`caterpillar`: BLUPs with conditional intervals, as lme4's
  ``dotplot(ranef(m, condVar = TRUE))``.
* :func:`residuals_vs_fitted`: residuals against fitted values (lme4's ``plot(m)``).
* :func:`qq`: normal quantile-quantile plot of the residuals, overall or by group.
* :func:`profile_zeta`: profile zeta curves, as lme4's ``xyplot(profile(m))``.
* :func:`power_curve`: estimated power against sample size with its interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["caterpillar", "residuals_vs_fitted", "qq", "profile_zeta", "power_curve"]


_MAX_LABELS = 60   # caterpillar panels label at most this many levels


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("mixedjax.plots needs matplotlib: pip install 'mixedjax[plot]'") \
            from err
    return plt


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = min(n, max_cols)
    return math.ceil(n / ncols), ncols


# ----------------------------------------------------------------------------------
# Random effects
# ----------------------------------------------------------------------------------
def caterpillar(m, group: str | None = None, level: float = 0.95, figsize=None):
    """Conditional modes of the random effects with ``level`` prediction intervals.

    One panel per column of each grouping factor's random effects (only ``group``'s
    when given); in every panel of a factor the levels are sorted by that factor's
    first column, as lme4's ``dotplot(ranef(m, condVar = TRUE))`` sorts them.  The
    intervals are BLUP -/+ z * conditional sd (``m.ranef_se``), z the normal
    quantile for ``level``.
    """
    plt = _pyplot()
    groups = list(m.ranef) if group is None else [group]
    for g in groups:
        if g not in m.ranef:
            raise ValueError(f"no random effects for grouping factor {g!r}; the model has "
                             f"{list(m.ranef)}")
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    panels = [(g, col) for g in groups for col in m.ranef[g].columns]
    nlev = min(max(len(m.ranef[g]) for g in groups), _MAX_LABELS)
    if figsize is None:
        figsize = (3.2 * len(panels) + 1.0, max(2.5, 0.18 * nlev + 1.2))
    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False)
    for ax, (g, col) in zip(axes[0], panels):
        re, se = m.ranef[g], m.ranef_se[g]
        order = np.argsort(re.iloc[:, 0].to_numpy(), kind="stable")
        est = re[col].to_numpy()[order]
        half = z * se[col].to_numpy()[order]
        pos = np.arange(len(est))
        ax.errorbar(est, pos, xerr=half, fmt="o", color="C0", ecolor="0.45", ms=4,
                    elinewidth=1, capsize=0)
        ax.axvline(0.0, color="0.6", lw=0.8, ls="--")
        if len(est) <= _MAX_LABELS:
            ax.set_yticks(pos)
            ax.set_yticklabels([str(v) for v in re.index.to_numpy()[order]], fontsize=8)
        else:   # too many levels to label: the rank instead
            ax.set_ylabel("rank")
        ax.set_title(f"{g}: {col}", fontsize=10)
        ax.set_ylim(-0.7, len(est) - 0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------
# Residuals
# ----------------------------------------------------------------------------------
def residuals_vs_fitted(m, scaled: bool = False, figsize=(5.0, 4.0)):
    """Residuals against fitted values (conditional on the BLUPs), lme4's ``plot(m)``.

    ``scaled=True`` divides by sigma (Pearson residuals with prior weights).
    """
    plt = _pyplot()
    fitted = m.fitted.to_numpy()
    resid = _residuals(m, scaled)
    fig, ax = plt.subplots(figsize=figsize)
    ax.scatter(fitted, resid, s=12, color="C0", alpha=0.8)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("fitted values")
    ax.set_ylabel("scaled residuals" if scaled else "residuals")
    fig.tight_layout()
    return fig


def _residuals(m, scaled: bool) -> np.ndarray:
    r = m.residuals.to_numpy()
    if scaled:
        r = r / m.sigma
        w = m.model.design.weights
        if w is not None:
            r = r * np.sqrt(w)
    return r


def qq(m, by: str | None = None, scaled: bool = True, max_panels: int = 30, figsize=None):
    """Normal quantile-quantile plot of the residuals.

    ``by=None``: one panel with all residuals.  ``by`` a column of the model frame
    (usually a grouping factor): one panel per level of it, as lattice's
    ``qqmath(~ resid(m) | g)``; at most ``max_panels`` levels.  Residuals are
    divided by sigma unless ``scaled=False``; the line is the identity (slope
    sigma for unscaled residuals).
    """
    plt = _pyplot()
    r = _residuals(m, scaled)
    slope = 1.0 if scaled else m.sigma
    if by is None:
        fig, ax = plt.subplots(figsize=figsize or (4.5, 4.5))
        _qq_panel(ax, r, slope)
        ax.set_xlabel("normal quantiles")
        ax.set_ylabel("scaled residuals" if scaled else "residuals")
        ax.set_title("normal Q-Q plot of the residuals", fontsize=10)
        fig.tight_layout()
        return fig
    frame = m.model.design.frame
    if frame is None or by not in frame.columns:
        cols = [] if frame is None else list(frame.columns)
        raise ValueError(f"by={by!r} is not a column of the model frame {cols}")
    key = frame[by]
    levels = list(key.cat.categories) if isinstance(key.dtype, pd.CategoricalDtype) \
        else sorted(pd.unique(key))
    levels = [lv for lv in levels if (key == lv).any()]
    if len(levels) > max_panels:
        raise ValueError(f"{by!r} has {len(levels)} levels, more than max_panels="
                         f"{max_panels}")
    nrows, ncols = _grid(len(levels), 6)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize or (2.2 * ncols, 2.2 * nrows),
                             sharex=True, sharey=True, squeeze=False)
    flat = axes.ravel()
    keyv = key.to_numpy()
    for ax, lv in zip(flat, levels):
        _qq_panel(ax, r[keyv == lv], slope, size=8)
        ax.set_title(f"{by} = {lv}", fontsize=8)
    for ax in flat[len(levels):]:
        fig.delaxes(ax)
    fig.supxlabel("normal quantiles", fontsize=9)
    fig.supylabel("scaled residuals" if scaled else "residuals", fontsize=9)
    fig.tight_layout()
    return fig


def _qq_panel(ax, r, slope, size=12):
    r = np.sort(np.asarray(r, float))
    n = len(r)
    # R's ppoints: (i - a) / (n + 1 - 2a), a = 3/8 for n <= 10 (Blom), 1/2 otherwise.
    a = 3.0 / 8.0 if n <= 10 else 0.5
    q = stats.norm.ppf((np.arange(1, n + 1) - a) / (n + 1 - 2 * a))
    ax.scatter(q, r, s=size, color="C0")
    lim = np.array([q.min(), q.max()]) if n else np.array([-1.0, 1.0])
    ax.plot(lim, slope * lim, color="0.5", lw=0.8, ls="--")


# ----------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------
def profile_zeta(m, parm=None, levels=(0.5, 0.8, 0.9, 0.95, 0.99), n: int = 15,
                 absolute: bool = False, figsize=None):
    """Profile zeta curves, as lme4's ``xyplot(profile(m))``.

    For each parameter (lme4's ``confint`` names; default all), zeta, the signed
    square root of the change in the maximum-likelihood deviance when the parameter
    is held fixed and the others re-optimized, is drawn on ``n`` points spanning the
    widest profile interval in ``levels``.  As lme4's, the profile is that of the
    maximum-likelihood deviance (also for REML fits), so zeta is 0 at the ML
    estimates.  Horizontal lines mark -/+ the normal
    quantiles of ``levels``; where the curve crosses them are the profile
    confidence limits (``m.confint(method="profile")``).  A straight line means the
    Wald interval on that scale would be accurate.  ``absolute=True`` plots |zeta|,
    as lme4's ``absVal = TRUE``.
    """
    from .inference.confint import profile_zeta as _zeta
    from .inference.params import parameter_names

    plt = _pyplot()
    names = parameter_names(m)
    if parm is None:
        parm = names
    elif isinstance(parm, str):
        parm = [parm]
    unknown = [p for p in parm if p not in names]
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; the parameters are {names}")
    top = max(levels)
    ci = m.confint(method="profile", level=top, parm=list(parm))
    nrows, ncols = _grid(len(parm), 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize or (3.4 * ncols, 2.8 * nrows),
                             squeeze=False, sharey=True)
    flat = axes.ravel()
    crits = [float(stats.norm.ppf(0.5 + lv / 2.0)) for lv in levels]
    for ax, name in zip(flat, parm):
        lo, hi = (float(v) for v in ci.loc[name])
        if not (np.isfinite(lo) and np.isfinite(hi)):
            ax.text(0.5, 0.5, "not identified", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_title(name, fontsize=9)
            continue
        if name.startswith("cor_"):
            lo, hi = max(lo, -1 + 1e-6), min(hi, 1 - 1e-6)
        values = np.linspace(lo, hi, n)
        zeta = _zeta(m, name, values)
        y = np.abs(zeta) if absolute else zeta
        ax.plot(values, y, "-", color="C0", lw=1.3)
        ax.plot(values, y, "o", color="C0", ms=2.5)
        for c in crits:
            ax.axhline(c, color="0.75", lw=0.6, ls=":")
            if not absolute:
                ax.axhline(-c, color="0.75", lw=0.6, ls=":")
        ax.set_title(name, fontsize=9)
    for ax in flat[len(parm):]:
        fig.delaxes(ax)
    fig.supylabel("|zeta|" if absolute else "zeta", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------
# Power
# ----------------------------------------------------------------------------------
def _power_frame(pc) -> pd.DataFrame:
    if isinstance(pc, pd.DataFrame):
        df = pc
    else:
        df = None
        for attr in ("table", "frame", "to_frame", "to_dataframe", "data"):
            obj = getattr(pc, attr, None)
            if obj is None:
                continue
            obj = obj() if callable(obj) else obj
            if isinstance(obj, pd.DataFrame):
                df = obj
                break
        if df is None:
            raise TypeError("power_curve needs a power-curve result or a DataFrame with "
                            f"columns size, power, lower, upper; got {type(pc).__name__}")
    missing = [c for c in ("size", "power") if c not in df.columns]
    if missing:
        raise ValueError(f"the power table lacks column(s) {missing}; it has "
                         f"{list(df.columns)}")
    return df


def power_curve(pc, target: float | None = 0.8, figsize=(5.0, 3.8)):
    """Estimated power against sample size, with the interval of each estimate.

    ``pc``: a result of :func:`mixedjax.power_curve` or a DataFrame with columns
    ``size`` and ``power`` (and ``lower``/``upper`` for the error bars).  A dashed
    line marks the ``target`` power (None for none).
    """
    plt = _pyplot()
    df = _power_frame(pc).sort_values("size")
    size = df["size"].to_numpy(float)
    power = df["power"].to_numpy(float)
    fig, ax = plt.subplots(figsize=figsize)
    if {"lower", "upper"} <= set(df.columns):
        err = np.vstack([power - df["lower"].to_numpy(float),
                         df["upper"].to_numpy(float) - power])
        ax.errorbar(size, power, yerr=np.clip(err, 0, None), fmt="o-", color="C0",
                    ecolor="0.5", capsize=3, ms=5)
    else:
        ax.plot(size, power, "o-", color="C0", ms=5)
    if target is not None:
        ax.axhline(target, color="C3", lw=0.8, ls="--")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(str(df.attrs.get("size_label", "size")))
    ax.set_ylabel("power")
    fig.tight_layout()
    return fig
