"""Power by simulation, as simr's ``powerSim`` and ``powerCurve``.

Green & MacLeod (2016), "SIMR: an R package for power analysis of generalized
linear mixed models by simulation", Methods Ecol. Evol. 7(4): simulate the planned
study ``nsim`` times from the true parameters, fit the model to each data set,
test, and report the fraction of rejections at level ``alpha`` with its Monte Carlo
standard error sqrt(p (1 - p) / nsim) and the Clopper-Pearson binomial interval
(simr's ``binom.test`` interval).  All fits run in one batched call.

Tests (``test=``):

* ``"x"`` or ``"t:x"`` -- Satterthwaite t test of the coefficient ``x`` (lmerTest's
  ``contest1D``); ``"x"`` naming a term with several coefficients, or ``"F:x"`` --
  Satterthwaite F test that all of the term's coefficients are 0 (``contestMD``);
* ``"wald:x"`` (or ``"z:x"``) -- Wald z test of a coefficient;
* ``"lrt:x"`` -- likelihood-ratio test of dropping the fixed-effects term ``x``, or a
  reduced formula (``"y ~ 1 + (1 | g)"``, also for random effects): chi-square
  test of ML fits.

Satterthwaite tests use :func:`mixedjax.inference.satterthwaite.satterthwaite_test`
at each replicate's REML estimate.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from .backend import jax_backend
from .frames import as_pandas, is_data_frame
from .crossprod import with_response
from .batch import chunk_size_for, fit_responses, fit_spec
from .executors import (check_executor, check_parts, check_pieces, check_replicates,
                        check_timeout, run_replicates)
from .model import LMM
from .simparams import SimParams, Simulator, as_key, check_nsim, resolve_params
from .simulate import Shifted, planning_model
from .structure import bucket
from .inference.confint import check_level

__all__ = ["power", "power_curve", "PowerResult", "PowerCurve", "PowerJob", "power_result",
           "curve_of"]


@dataclasses.dataclass
class PowerResult:
    """Estimated power of a test (simr's ``powerSim``).

    ``power``: fraction of converged replicates with p < alpha; ``se``: Monte Carlo
    standard error; ``lower``/``upper``: Clopper-Pearson interval at ``level``;
    ``pvalues``: per replicate (NaN where a fit did not converge); ``converged``: per
    replicate, whether its fits converged; ``first``: the number of the first
    replicate (not 0 for a share of a run; :meth:`concat` joins the shares).
    """

    test: str
    power: float
    se: float
    lower: float
    upper: float
    nsim: int
    n_failed: int
    alpha: float
    level: float
    pvalues: np.ndarray = dataclasses.field(repr=False)
    nobs: int = 0
    converged: np.ndarray | None = dataclasses.field(repr=False, default=None)
    first: int = 0

    @classmethod
    def concat(cls, parts) -> "PowerResult":
        """The results of disjoint shares of one run (``replicates=`` ranges) joined in
        replicate order, with the power over all their replicates."""
        parts = check_parts(parts, cls, lambda p: range(p.first, p.first + p.nsim))
        a = parts[0]
        for p in parts[1:]:
            if (p.test, p.alpha, p.level, p.nobs) != (a.test, a.alpha, a.level, a.nobs):
                raise ValueError("the pieces are results of different tests or studies")
        pvals = np.concatenate([p.pvalues for p in parts])
        ok = np.concatenate([np.isfinite(p.pvalues) if p.converged is None else p.converged
                             for p in parts])
        return power_result(a.test, pvals, ok, a.alpha, a.level, a.nobs, a.first)

    def __repr__(self) -> str:
        pct = lambda x: f"{100 * x:.2f}"
        return (f"Power for {self.test}, ({100 * self.level:g}% confidence interval):\n"
                f"      {pct(self.power)}% ({pct(self.lower)}, {pct(self.upper)})\n"
                f"Based on {self.nsim} simulations ({self.n_failed} not converged, left out); "
                f"alpha = {self.alpha:g}, nrow = {self.nobs}")

    def plot(self, ax=None):
        """Histogram of the replicates' p-values with the level ``alpha`` marked;
        returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        fig, ax = _axes(ax, plt)
        p = self.pvalues[np.isfinite(self.pvalues)]
        ax.hist(p, bins=np.linspace(0, 1, 41), color="0.6", edgecolor="white")
        ax.axvline(self.alpha, color="C3", linestyle="--", label=f"alpha = {self.alpha:g}")
        ax.set_xlabel("p-value")
        ax.set_ylabel("replicates")
        ax.set_title(f"{self.test}: power {100 * self.power:.1f}%")
        ax.legend()
        fig.tight_layout()
        return fig


def _axes(ax, plt):
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        return fig, ax
    return ax.figure, ax


def power_result(test: str, pvalues, ok, alpha, level, nobs, first=0) -> PowerResult:
    """The :class:`PowerResult` of per-replicate p-values and convergence flags."""
    pw, se, lo, hi = binomial_summary(pvalues < alpha, ok, level)
    return PowerResult(test=test, power=pw, se=se, lower=lo, upper=hi, nsim=len(pvalues),
                       n_failed=int((~ok).sum()), alpha=float(alpha), level=float(level),
                       pvalues=pvalues, nobs=nobs, converged=ok, first=first)


def binomial_summary(reject: np.ndarray, ok: np.ndarray, level: float = 0.95):
    """(power, Monte Carlo se, Clopper-Pearson lower, upper) from rejection flags."""
    k, n = int(np.sum(reject & ok)), int(np.sum(ok))
    if n == 0:
        return float("nan"), float("nan"), 0.0, 1.0
    p = k / n
    a = (1.0 - level) / 2.0
    lo = float(stats.beta.ppf(a, k, n - k + 1)) if k > 0 else 0.0
    hi = float(stats.beta.ppf(1.0 - a, k + 1, n - k)) if k < n else 1.0
    return p, float(np.sqrt(p * (1.0 - p) / n)), lo, hi


# ----------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Test:
    kind: str                 # "t", "F", "wald", "lrt"
    label: str
    L: np.ndarray | None = None
    reduced: LMM | None = None


def _parse_test(test, model: LMM, formula: str, design: pd.DataFrame, kwargs) -> _Test:
    from .inference.terms import fixed_terms

    d = model.design
    names = list(d.xnames)
    terms = {t.label: t for t in fixed_terms(d)}
    if test is None:
        slopes = [nm for nm in names if nm != "(Intercept)"]
        if len(slopes) != 1:
            raise ValueError(f"name the test: test='x' for a coefficient (one of {names}), "
                             "'lrt:term' or a reduced formula")
        test = slopes[0]
    if not isinstance(test, str):
        raise TypeError(f"test must be a string, got {type(test).__name__}")
    if "~" in test:
        test = test.split(":", 1)[1] if test.lower().startswith("lrt:") else test
        reduced = planning_model(test, design, reml=False, **kwargs)
        if reduced.design.n != d.n:
            raise ValueError("the reduced formula uses other rows of the design "
                             "(different missing values)")
        if reduced.ntheta + reduced.design.p >= model.ntheta + d.p:
            raise ValueError(f"the reduced model {test.strip()!r} is not smaller than the "
                             "full model (it must have fewer parameters)")
        return _Test("lrt", f"LRT against {test.strip()!r}", reduced=reduced)
    kind, _, name = test.partition(":")
    if not name:
        if test not in names and test not in terms:
            raise ValueError(f"unknown coefficient or term {test!r}; the fixed effects are "
                             f"{names}, the terms {list(terms)}")
        kind, name = ("t" if test in names else "F"), test
    kind = {"t": "t", "f": "F", "wald": "wald", "z": "wald", "lrt": "lrt"}.get(kind.lower())
    if kind is None:
        raise ValueError(f"unknown test {test!r}; use 'x', 't:x', 'F:term', 'wald:x', "
                         "'lrt:term' or a reduced formula")
    if kind in ("t", "wald"):
        if name not in names:
            raise ValueError(f"unknown coefficient {name!r}; the fixed effects are {names}")
        L = np.eye(len(names))[[names.index(name)]]
        what = "Satterthwaite t test" if kind == "t" else "Wald z test"
        return _Test(kind, f"{what} of {name!r}", L=L)
    if name not in terms:
        raise ValueError(f"unknown term {name!r}; the fixed-effects terms are {list(terms)}")
    cols = list(terms[name].columns)
    if kind == "F":
        return _Test("F", f"Satterthwaite F test of term {name!r}",
                     L=np.eye(len(names))[cols])
    keep = [j for j in range(len(names)) if j not in cols]
    X = d.X[:, keep]
    red = dataclasses.replace(d, X=X, xnames=[names[j] for j in keep])
    return _Test("lrt", f"LRT of term {name!r}", reduced=LMM(red, reml=False))


@functools.partial(jax.jit, static_argnames=("reml", "sequential"))
def _satterthwaite_p(theta, Y, A, R, L, reml, sequential):
    """Satterthwaite p-values of ``L beta = 0`` for each replicate (theta_i, y_i).

    On CPU the replicates run one after another (``lax.map``): batched LAPACK calls
    under ``vmap`` can deadlock jaxlib's CPU thread pool, and the test is cheap next
    to the fits.  Elsewhere they are vmapped.
    """
    from .inference.satterthwaite import contest, pieces

    def one(args):
        th, y = args
        return contest(pieces(th, with_response(A, R, y, jax_backend()), reml), L).p_value

    if sequential:
        return jax.lax.map(one, (theta, Y))
    return jax.vmap(one)((theta, Y))


def _pvalues(test: _Test, spec, sim, nsim, fits, opts, nsim_total):
    """p-values of replicates 0..nsim-1 of ``sim`` (their fits in ``fits``) and
    whether their fits converged; chunks sized for a run of ``nsim_total``."""
    ok = fits["converged"]
    if test.kind == "wald":
        j = int(np.argmax(test.L[0]))
        z = fits["beta"][:, j] / fits["stderr"][:, j]
        p = 2.0 * stats.norm.sf(np.abs(z))
    elif test.kind == "lrt":
        red_spec = fit_spec(test.reduced, _reduced_start(test.reduced, spec))
        lanes = chunk_size_for(red_spec, nsim_total, opts["chunk_size"])
        red = fit_responses(red_spec, sim, nsim, desc="reduced model",
                            **{**opts, "chunk_size": lanes})
        stat = np.maximum(red["objective"] - fits["objective"], 0.0)
        df = len(spec.theta0) + spec_p(spec) - len(red_spec.theta0) - spec_p(red_spec)
        p = stats.chi2.sf(stat, df)
        ok = ok & red["converged"]
    else:
        p = _satterthwaite_all(test, spec, sim, nsim, fits,
                               chunk_size_for(spec, nsim_total, opts["chunk_size"]))
    return np.where(ok, p, np.nan), ok


def spec_p(spec) -> int:
    return int(spec.A.p)


def _reduced_start(model: LMM, full_spec):
    if model.ntheta == len(full_spec.theta0):
        return full_spec.theta0
    return model.initial_theta()


def _satterthwaite_all(test, spec, sim, nsim, fits, B):
    sequential = jax.default_backend() == "cpu"
    out = np.empty(nsim)
    L = jnp.asarray(test.L)
    for s in range(0, nsim, B):
        idx = np.arange(s, min(s + B, nsim))
        pad = np.concatenate([idx, np.full(B - len(idx), idx[-1])])
        p = _satterthwaite_p(jnp.asarray(fits["theta"][pad]), jnp.asarray(sim(pad)), spec.A,
                             spec.R, L, reml=spec.reml, sequential=sequential)
        out[idx] = np.asarray(p)[:len(idx)]
    return out


# ----------------------------------------------------------------------------------
# power and power_curve
# ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PowerJob:
    """The simulations of :func:`power` as a picklable job
    (:mod:`mixedjax.executors`): responses drawn from ``model`` at ``params``
    (replicate i from ``fold_in(key, i)``), the model fitted to each and the test
    applied; ``run`` returns the p-values and convergence flags of a range."""

    model: LMM
    test: _Test
    params: SimParams
    key: object
    nsim: int
    chunk_size: int | None
    max_iter: int
    desc: str = "power"

    def piece(self, lo: int, hi: int) -> "PowerJob":
        return self

    def run(self, lo: int, hi: int, progress=None) -> dict:
        d = self.model.design
        spec = fit_spec(self.model, self.params.theta)
        sim = Shifted(Simulator(d, self.model.structure, self.params, self.key, bucket(d.n)),
                      lo)
        opts = dict(chunk_size=self.chunk_size, max_iter=self.max_iter, progress=progress)
        lanes = chunk_size_for(spec, self.nsim, self.chunk_size)
        fits = fit_responses(spec, sim, hi - lo, desc=self.desc,
                             **{**opts, "chunk_size": lanes})
        pvals, ok = _pvalues(self.test, spec, sim, hi - lo, fits, opts, self.nsim)
        return {"pvalues": pvals, "converged": ok}


def power(design: pd.DataFrame, formula: str, params: dict, test: str | None = None,
          nsim: int = 1000, key=None, alpha: float = 0.05, level: float = 0.95,
          reml: bool = True, weights=None, offset=None, chunk_size: int | None = None,
          max_iter: int = 100, progress: bool | None = None, executor=None,
          replicates=None, pieces: int | None = None,
          timeout: float | None = None) -> PowerResult:
    """Power of ``test`` for the study ``design`` under the true ``params``.

    ``design``: a DataFrame with the covariates and grouping columns of the planned
    study (no response needed); ``formula``: the lme4 formula to fit; ``params``:
    true ``beta``, ``sigma`` and random effects (``theta``, ``VarCorr`` or ``sd``;
    see :mod:`mixedjax.simparams`); ``test``: see the module docstring.  ``reml``
    applies to the t, F and Wald tests (LRTs use ML fits).  ``executor``,
    ``replicates`` (a range within 0..nsim-1) and ``pieces`` split the replicates
    over processes (:mod:`mixedjax.executors`; ``timeout``: seconds the executor's
    pieces may take in all); replicate i is the same either way.
    """
    nsim = check_nsim(nsim)
    check_level(alpha, "alpha")
    check_level(level, "level")
    check_executor(executor)
    pieces = check_pieces(pieces, executor)
    timeout = check_timeout(timeout, executor)
    reps = check_replicates(replicates, nsim)
    kw = {"weights": weights, "offset": offset}
    design = as_pandas(design, "design")
    probe = planning_model(formula, design, reml=reml, **kw)
    t = _parse_test(test, probe, formula, design, kw)
    model = probe if t.kind != "lrt" else planning_model(formula, design, reml=False, **kw)
    p = resolve_params(model.design, model.structure, params, None)
    job = PowerJob(model, t, p, as_key(key), nsim, chunk_size, max_iter)
    out = run_replicates(job, reps, executor, pieces, progress, timeout)
    return power_result(t.label, out["pvalues"], out["converged"].astype(bool), alpha, level,
                        model.design.n, reps.start)


@dataclasses.dataclass
class PowerCurve:
    """Power over study sizes (simr's ``powerCurve``): ``table`` has columns
    ``size``, ``power``, ``se``, ``lower``, ``upper``, ``nobs``, ``n_failed``."""

    table: pd.DataFrame
    along: str
    test: str
    alpha: float
    results: list = dataclasses.field(repr=False, default_factory=list)

    def __repr__(self) -> str:
        return (f"Power curve for {self.test} along {self.along} (alpha = {self.alpha:g})\n"
                + self.table.to_string(index=False))

    @classmethod
    def concat(cls, parts) -> "PowerCurve":
        """The curves of disjoint shares of one run (``replicates=`` ranges) joined:
        each size's :class:`PowerResult` over all the shares' replicates."""
        parts = check_parts(parts, cls, lambda p: range(
            p.results[0].first, p.results[0].first + p.results[0].nsim))
        sizes = list(parts[0].table["size"])
        if any(list(p.table["size"]) != sizes or p.along != parts[0].along for p in parts):
            raise ValueError("the pieces are power curves over different sizes")
        results = [PowerResult.concat([p.results[j] for p in parts]) for j in range(len(sizes))]
        return curve_of(sizes, results, parts[0].along)

    def plot(self, ax=None, target: float | None = 0.8):
        """Power against size with its confidence interval (and a dashed line at
        ``target``); returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        fig, ax = _axes(ax, plt)
        t = self.table
        ax.errorbar(t["size"], t["power"], yerr=[t["power"] - t["lower"],
                                                 t["upper"] - t["power"]],
                    marker="o", capsize=3, color="C0")
        if target is not None:
            ax.axhline(target, color="0.5", linestyle="--", linewidth=1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(self.along.replace("_", " "))
        ax.set_ylabel("power")
        ax.set_title(self.test)
        fig.tight_layout()
        return fig


def _group_of(formula: str, group):
    from .formula import parse_formula

    if group is not None:
        return group
    groups = {g for t in parse_formula(formula).random for g in t.group}
    if len(groups) != 1:
        raise ValueError(f"the formula has grouping factors {sorted(groups)}; name the one "
                         "to resize with group=")
    return groups.pop()


def resize_design(design: pd.DataFrame, group: str, along: str, size: int) -> pd.DataFrame:
    """A design with ``size`` groups (``along="n_groups"``: the given groups repeated
    in order, copies relabelled ``g.1``, ``g.2``, ...) or ``size`` rows per group
    (``along="n_per_group"``: each group's rows recycled in order)."""
    if group not in design.columns:
        raise ValueError(f"grouping column {group!r} not found in the design")
    levels = pd.unique(design[group])
    rows = {lv: np.flatnonzero((design[group] == lv).to_numpy()) for lv in levels}
    if along == "n_per_group":
        idx = np.concatenate([np.resize(rows[lv], size) for lv in levels])
        return design.iloc[idx].reset_index(drop=True)
    parts = []
    for j in range(size):
        lv = levels[j % len(levels)]
        part = design.iloc[rows[lv]].copy()
        copy = j // len(levels)
        part[group] = str(lv) if copy == 0 else f"{lv}.{copy}"
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def power_curve(design, formula: str, params: dict, along: str = "n_groups", values=None,
                test: str | None = None, nsim: int = 1000, key=None, alpha: float = 0.05,
                group: str | None = None, **kwargs) -> PowerCurve:
    """Power at several study sizes, as simr's ``powerCurve``.

    ``design``: a DataFrame (resized along ``along``: ``"n_groups"`` repeats its
    groups, ``"n_per_group"`` recycles each group's rows; ``group`` names the
    grouping column when the formula has several) or a function ``size -> DataFrame``.
    ``values``: the sizes.  Other arguments as :func:`power` (``executor``,
    ``replicates``, ``pieces`` and ``timeout`` included); size j uses the key
    ``fold_in(key, j)``.
    """
    if along not in ("n_groups", "n_per_group"):
        raise ValueError(f"along must be 'n_groups' or 'n_per_group', got {along!r}")
    if values is None or len(values) == 0:
        raise ValueError("give the study sizes in values=")
    sizes = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"sizes must be positive integers, got {v!r}")
        sizes.append(int(v))
    if callable(design):
        make = design
    elif is_data_frame(design):
        g = _group_of(formula, group)
        make = functools.partial(resize_design, as_pandas(design, "design"), g, along)
    else:
        raise TypeError("design must be a DataFrame or a function size -> DataFrame")
    key = as_key(key)
    results = []
    for j, size in enumerate(sizes):
        d = make(size)
        if not is_data_frame(d):
            raise TypeError(f"the design function returned {type(d).__name__} for size "
                            f"{size}, not a DataFrame")
        results.append(power(d, formula, params, test=test, nsim=nsim,
                             key=jax.random.fold_in(key, j), alpha=alpha, **kwargs))
    return curve_of(sizes, results, along)


def curve_of(sizes, results, along: str) -> PowerCurve:
    """The :class:`PowerCurve` of the :class:`PowerResult` at each size."""
    table = pd.DataFrame({"size": sizes, "power": [r.power for r in results],
                          "se": [r.se for r in results], "lower": [r.lower for r in results],
                          "upper": [r.upper for r in results],
                          "nobs": [r.nobs for r in results],
                          "n_failed": [r.n_failed for r in results]})
    return PowerCurve(table=table, along=along, test=results[0].test,
                      alpha=results[0].alpha, results=results)
