"""Power by simulation, as simr's ``powerSim`` and ``powerCurve`` (Green & MacLeod
2016, Methods Ecol. Evol. 7(4)), with every replicate refitted in one batched call.

Power is the fraction of simulated data sets in which the test rejects at level
``alpha``; its Monte Carlo standard error is sqrt(p (1 - p) / nsim) and the interval
is the Clopper-Pearson binomial interval (simr reports the same).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from . import pls
from .simulate import _check_nsim, _refit, _resolve_params, _draw, as_key, planning_model

__all__ = ["power", "power_curve", "PowerResult", "PowerCurve"]


@dataclasses.dataclass
class PowerResult:
    """Estimated power with its Monte Carlo standard error and 95% interval."""

    test: str
    power: float
    se: float
    lower: float
    upper: float
    nsim: int
    n_failed: int

    def __repr__(self) -> str:
        return (f"Power for {self.test}: {100 * self.power:.1f}% "
                f"(95% CI {100 * self.lower:.1f}-{100 * self.upper:.1f}%, MC se "
                f"{100 * self.se:.1f}%), {self.nsim} simulations, {self.n_failed} not converged")


def _summarize(test, reject, ok) -> PowerResult:
    k, n = int(np.sum(reject[ok])), int(np.sum(ok))
    p = k / n if n else float("nan")
    lo = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return PowerResult(test, p, float(np.sqrt(p * (1 - p) / max(n, 1))), float(lo), float(hi),
                       n, int(np.sum(~ok)))


def _satterthwaite_p(model, Y, theta, L):
    from .inference.satterthwaite import satterthwaite_test

    def one(y, th):
        A = pls.with_response(model.arrays, model.response_map, y)
        return satterthwaite_test(th, A, model.reml, L).p_value

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(Y), jnp.asarray(theta)))


def power(design: pd.DataFrame, formula: str, params: dict, test: str, nsim: int = 1000,
          key=None, alpha: float = 0.05, reml: bool = True, **kwargs) -> PowerResult:
    """Power of ``test`` for data simulated on ``design`` (covariates and grouping
    columns) from ``formula`` with true ``params`` (``beta``, ``theta``/``varcomp``,
    ``sigma``; see :func:`mixedjax.simulate_design`).

    ``test``: ``"<coef>"`` or ``"t:<coef>"`` -- Satterthwaite t test of a fixed-effect
    coefficient (lmerTest's); ``"z:<coef>"`` -- Wald z test; ``"lrt:<formula>"`` --
    likelihood-ratio test (ML fits) against the reduced model ``<formula>``.
    """
    nsim = _check_nsim(nsim)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    kind, _, what = test.partition(":") if ":" in test else ("t", ":", test)
    if kind not in ("t", "z", "lrt"):
        raise ValueError(f"test must be '<coef>', 't:<coef>', 'z:<coef>' or 'lrt:<formula>', "
                         f"got {test!r}")
    model = planning_model(formula, design, reml=reml and kind != "lrt")
    p = _resolve_params(model.design, model.structure, params, None)
    Y = _draw(as_key(key), model.design, model.structure, p, nsim)
    full = _refit(model, Y, p.theta, **kwargs)
    ok = full.converged.astype(bool)
    if kind in ("t", "z"):
        names = model.design.xnames
        if what not in names:
            raise ValueError(f"unknown coefficient {what!r}; the model has {names}")
        j = names.index(what)
        if kind == "z":
            pval = 2 * stats.norm.sf(np.abs(full.beta[:, j] / full.stderr[:, j]))
        else:
            L = np.zeros((1, len(names)))
            L[0, j] = 1.0
            pval = _satterthwaite_p(model, Y, full.theta, jnp.asarray(L))
    else:
        reduced = planning_model(what, design, reml=False)
        if reduced.design.n != model.design.n:
            raise ValueError("the reduced model uses different rows of the design")
        df = _npar(model) - _npar(reduced)
        if df <= 0:
            raise ValueError(f"the reduced model {what!r} is not smaller than {formula!r}")
        small = _refit(reduced, Y, reduced.initial_theta(), **kwargs)
        ok &= small.converged.astype(bool)
        pval = stats.chi2.sf(np.maximum(small.objective - full.objective, 0.0), df)
    return _summarize(test, pval < alpha, ok)


def _npar(model) -> int:
    return model.design.p + model.structure.ntheta + 1


@dataclasses.dataclass
class PowerCurve:
    """Power over sample sizes (simr's ``powerCurve``); ``table`` has columns
    size, power, se, lower, upper, nsim."""

    along: str
    table: pd.DataFrame

    def plot(self, ax=None):
        """Power against size with 95% intervals; returns the matplotlib Figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3.5))
        else:
            fig = ax.figure
        t = self.table
        ax.errorbar(t["size"], t["power"], yerr=[t["power"] - t["lower"], t["upper"] - t["power"]],
                    marker="o", capsize=3)
        ax.axhline(0.8, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_xlabel(self.along)
        ax.set_ylabel("power")
        return fig


def _resize(design: pd.DataFrame, group: str, along: str, size: int) -> pd.DataFrame:
    """The design with ``size`` groups (cycling the given groups under new labels) or
    ``size`` rows per group (cycling each group's rows)."""
    levels = pd.unique(design[group])
    if along == "n_groups":
        parts = []
        for i in range(size):
            part = design[design[group] == levels[i % len(levels)]].copy()
            part[group] = f"{levels[i % len(levels)]}#{i}"
            parts.append(part)
        return pd.concat(parts, ignore_index=True)
    parts = []
    for lev in levels:
        rows = design[design[group] == lev]
        parts.append(rows.iloc[np.arange(size) % len(rows)])
    return pd.concat(parts, ignore_index=True)


def power_curve(design, formula: str, params: dict, test: str, along: str = "n_groups",
                values=(), group: str | None = None, nsim: int = 1000, key=None,
                alpha: float = 0.05, **kwargs) -> PowerCurve:
    """Power at each size in ``values``.  ``design`` is a function ``size -> DataFrame``
    or a DataFrame resized ``along`` "n_groups" or "n_per_group" of column ``group``."""
    if along not in ("n_groups", "n_per_group"):
        raise ValueError(f"along must be 'n_groups' or 'n_per_group', got {along!r}")
    values = [int(v) for v in values]
    if not values or min(values) <= 0:
        raise ValueError("values must be a non-empty list of positive sizes")
    if not callable(design):
        if group is None or group not in design.columns:
            raise ValueError("give group= (a column of design) to resize a DataFrame design")
    keys = jax.random.split(as_key(key), len(values))
    rows = []
    for v, k in zip(values, keys):
        df = design(v) if callable(design) else _resize(design, group, along, v)
        res = power(df, formula, params, test, nsim=nsim, key=k, alpha=alpha, **kwargs)
        rows.append({"size": v, "power": res.power, "se": res.se, "lower": res.lower,
                     "upper": res.upper, "nsim": res.nsim})
    return PowerCurve(along, pd.DataFrame(rows))
