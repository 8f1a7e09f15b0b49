"""Parametric bootstrap of a fit and the parametric-bootstrap likelihood-ratio test.

* :func:`bootstrap` -- lme4's ``bootMer`` (MixedModels.jl's ``parametricbootstrap``):
  ``nsim`` responses simulated from the fit, the design refitted to each in one
  batched call, every parameter on lme4's ``confint`` scale (standard deviations,
  correlations, sigma, fixed effects) kept per replicate.  Percentile and basic
  intervals as in Davison & Hinkley (1997), "Bootstrap Methods and their
  Application", section 5.2 (eqs. 5.18 and 5.6).
* :func:`pb_test` -- pbkrtest's ``PBmodcomp`` (Halekoh & Hojsgaard 2014, JSS 59(9),
  section 3): responses simulated from the smaller model's ML fit, both models
  refitted by ML to each, and the bootstrap p-value (1 + #{LRT* >= LRT}) / (1 + nsim)
  next to the chi-square one.

Replicates whose fit did not converge are excluded from intervals, summaries and
p-values (their rows of ``replicates`` are NaN, as ``bootMer`` reports failed fits
as NA), and counted in the printed output.

Both take ``executor=`` (any :class:`concurrent.futures.Executor`) and
``replicates=range(lo, hi)`` (an array job's share; ``concat`` joins the shares)
as :mod:`mixedjax.executors` describes; replicate i is the same either way.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import pandas as pd

from .executors import (check_executor, check_parts, check_pieces, check_replicates,
                        check_timeout, run_replicates)
from .inference.confint import check_level, percent_labels
from .inference.params import parameter_names, sdcor_values
from .persist import save
from .simparams import as_key, check_nsim
from .simulate import BatchResult, Shifted, SimFits, model_of, fitted_params

__all__ = ["bootstrap", "BootstrapResult", "pb_test", "PBTestResult", "pb_table"]

_METHODS = {"percentile": "percentile", "perc": "percentile", "basic": "basic"}


class BootstrapResult:
    """A parametric bootstrap of a fit.

    ``replicates``: one row per replicate, columns exactly
    :func:`mixedjax.inference.params.parameter_names` (NaN rows for replicates that did
    not converge); ``estimate``: the original fit's values; ``converged`` (per
    replicate); ``batch``: the :class:`~mixedjax.simulate.BatchResult` of the refits
    (``batch[i]`` is replicate i as a full fit); ``key``: the PRNG key used.  The
    rows of ``replicates`` are indexed by replicate number (``range(lo, hi)`` for a
    share of a run; :meth:`concat` joins the shares).
    """

    def __init__(self, estimate: pd.Series, batch: BatchResult, key):
        self.estimate = estimate
        self.batch = batch
        self.key = key
        self.converged = batch.converged
        reps = pd.concat([batch.sdcor, batch.fixef], axis=1)
        reps.columns = list(estimate.index)
        reps.loc[~self.converged, :] = np.nan
        self.replicates = reps

    @property
    def nsim(self) -> int:
        """The number of replicates (of this share, for a share of a run)."""
        return len(self.converged)

    @classmethod
    def concat(cls, parts) -> "BootstrapResult":
        """The bootstraps of disjoint shares of one run (the same fit and key,
        ``replicates=`` ranges) joined in replicate order."""
        parts = check_parts(parts, cls, lambda p: p.batch.replicate_range)
        key = _key_data(parts[0].key)
        for p in parts[1:]:
            if not np.array_equal(_key_data(p.key), key):
                raise ValueError("the pieces were drawn with different keys")
            if not p.estimate.equals(parts[0].estimate):
                raise ValueError("the pieces are bootstraps of different fits")
        return cls(parts[0].estimate, BatchResult.concat([p.batch for p in parts]),
                   parts[0].key)

    def save(self, path) -> None:
        """Write the bootstrap to the file ``path`` (with a format version);
        :func:`mixedjax.load` reads it back."""
        save(self, path)

    @property
    def n_failed(self) -> int:
        return int((~self.converged).sum())

    def intervals(self, level: float = 0.95, method: str = "percentile") -> pd.DataFrame:
        """Bootstrap confidence intervals, indexed by parameter name, with R's
        ``confint`` column labels (``"2.5 %"``, ``"97.5 %"``).

        ``method="percentile"``: the (R + 1) alpha order statistics of the replicates
        (Davison & Hinkley eq. 5.18); ``"basic"``: 2 * estimate minus those (eq. 5.6).
        """
        level = check_level(level)
        if method not in _METHODS:
            raise ValueError(f"method must be 'percentile' or 'basic', got {method!r}")
        if self.n_failed == self.nsim:
            raise ValueError("no bootstrap replicate converged")
        alpha = (1.0 - level) / 2.0
        values = self.replicates.to_numpy()
        # (R + 1) alpha positions: numpy's "weibull" quantile (Hyndman & Fan type 6).
        lo = np.nanquantile(values, alpha, axis=0, method="weibull")
        hi = np.nanquantile(values, 1.0 - alpha, axis=0, method="weibull")
        if _METHODS[method] == "basic":
            est = self.estimate.to_numpy()
            lo, hi = 2.0 * est - hi, 2.0 * est - lo
        labels = percent_labels(level)
        return pd.DataFrame({labels[0]: lo, labels[1]: hi}, index=self.replicates.columns)

    def summary(self) -> pd.DataFrame:
        """Original estimate, bootstrap mean, bias and standard error per parameter
        (as ``bootMer``'s print), over the converged replicates."""
        mean = self.replicates.mean()
        return pd.DataFrame({"original": self.estimate, "mean": mean,
                             "bias": mean - self.estimate,
                             "std. error": self.replicates.std(ddof=1)})

    def __repr__(self) -> str:
        head = (f"Parametric bootstrap: {self.nsim} replicates of "
                f"{self.batch.model.design.formula.formula!r}")
        if self.n_failed:
            head += f"; {self.n_failed} did not converge and are left out"
        return head + "\n" + self.summary().to_string()


def _key_data(key) -> np.ndarray:
    key = jax.numpy.asarray(key)
    if jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key)


def bootstrap(result, nsim: int, key=None, chunk_size: int | None = None,
              max_iter: int = 100, progress: bool | None = None, executor=None,
              replicates=None, pieces: int | None = None,
              timeout: float | None = None) -> BootstrapResult:
    """Parametric bootstrap: ``nsim`` responses simulated from the fit (new random
    effects and residuals), each refitted (REML or ML as the fit), in one batched
    call.  ``key``: a ``jax.random.key`` or int seed (replicate i is
    ``result.simulate(nsim, key)[i]``); see :func:`mixedjax.simulate.refit_many` for
    ``chunk_size``, ``max_iter``, ``progress``, ``executor``, ``replicates`` (a range
    within 0..nsim-1), ``pieces`` and ``timeout``."""
    nsim = check_nsim(nsim)
    model = model_of(result)
    check_executor(executor)
    pieces = check_pieces(pieces, executor)
    timeout = check_timeout(timeout, executor)
    reps = check_replicates(replicates, nsim)
    key = as_key(key)
    job = SimFits(model, fitted_params(result), key, ((model, result.theta, "bootstrap"),),
                  nsim, chunk_size, max_iter, desc="bootstrap")
    fits = run_replicates(job, reps, executor, pieces, progress, timeout)["0"]
    batch = BatchResult(model, fits, Shifted(job.simulator(), reps.start), first=reps.start)
    names = parameter_names(result)
    estimate = pd.Series(np.concatenate([sdcor_values(result), result._beta]), index=names)
    return BootstrapResult(estimate, batch, key)


# ----------------------------------------------------------------------------------
# Parametric-bootstrap likelihood-ratio test
# ----------------------------------------------------------------------------------
class PBTestResult:
    """pbkrtest's ``PBmodcomp`` result.

    ``table``: rows ``LRT`` (chi-square reference) and ``PBtest`` (bootstrap
    reference), columns ``stat``, ``df``, ``p.value``; ``lrt_replicates``: the LRT
    statistic of each replicate (NaN where a fit did not converge); ``converged``;
    ``first``: the number of the first replicate (not 0 for a share of a run;
    :meth:`concat` joins the shares).
    """

    def __init__(self, table, lrt_replicates, converged, formulas, seconds, first: int = 0):
        self.table = table
        self.lrt_replicates = lrt_replicates
        self.converged = converged
        self.formulas = formulas
        self.seconds = seconds
        self.first = int(first)

    def __setstate__(self, state):
        self.__dict__.update({"first": 0, **state})

    @classmethod
    def concat(cls, parts) -> "PBTestResult":
        """The tests of disjoint shares of one run joined in replicate order, with the
        bootstrap p-value over all their replicates."""
        parts = check_parts(parts, cls, lambda p: range(p.first, p.first + len(p.converged)))
        t = parts[0].table
        for p in parts[1:]:
            if tuple(p.formulas) != tuple(parts[0].formulas) or \
                    p.table.loc["LRT", "stat"] != t.loc["LRT", "stat"]:
                raise ValueError("the pieces are tests of different models or data")
        stars = np.concatenate([p.lrt_replicates for p in parts])
        ok = np.concatenate([p.converged for p in parts])
        table = pb_table(t.loc["LRT", "stat"], int(t.loc["LRT", "df"]), stars, ok)
        return cls(table, stars, ok, parts[0].formulas, sum(p.seconds for p in parts),
                   first=parts[0].first)

    def save(self, path) -> None:
        """Write the test to the file ``path`` (with a format version);
        :func:`mixedjax.load` reads it back."""
        save(self, path)

    @property
    def p_value(self) -> float:
        """The parametric-bootstrap p-value."""
        return float(self.table.loc["PBtest", "p.value"])

    @property
    def extremes(self) -> int:
        """Replicates with LRT* >= the observed LRT."""
        lrt = self.table.loc["LRT", "stat"]
        return int(np.sum(self.lrt_replicates[self.converged] >= lrt))

    def __repr__(self) -> str:
        nbad = int((~self.converged).sum())
        lines = [f"Bootstrap test; time: {self.seconds:.2f} sec; samples: "
                 f"{len(self.converged)}; extremes: {self.extremes};"]
        if nbad:
            lines.append(f"{nbad} replicate(s) did not converge and are left out")
        lines.append(f"large : {self.formulas[1]}")
        lines.append(f"small : {self.formulas[0]}")
        t = self.table
        lines.append(f"{'':8s}{'stat':>10s}{'df':>4s}{'p.value':>12s}")
        for name, row in t.iterrows():
            df = "" if np.isnan(row["df"]) else f"{int(row['df'])}"
            lines.append(f"{name:8s}{row['stat']:10.4f}{df:>4s}{row['p.value']:12.4g}")
        return "\n".join(lines)


def _ml_fit(result):
    if not result.reml:
        return result
    return result.model.with_reml(False).fit(theta0=result.theta)


def pb_test(m0, m1, nsim: int = 1000, key=None, chunk_size: int | None = None,
            max_iter: int = 100, progress: bool | None = None, executor=None,
            replicates=None, pieces: int | None = None,
            timeout: float | None = None) -> PBTestResult:
    """Parametric-bootstrap likelihood-ratio test of nested fits (pbkrtest's
    ``PBmodcomp``).

    ``m0`` and ``m1`` are fits of nested models to the same data (either order: the
    one with fewer parameters is the null model).  REML fits are refitted by ML.
    Responses are simulated from the null model's ML fit and both models refitted
    to each by ML; the p-value is (1 + #{LRT* >= LRT}) / (1 + nsim) over the
    replicates where both fits converged.  ``executor``, ``replicates``,
    ``pieces`` and ``timeout`` as in :func:`bootstrap`.
    """
    nsim = check_nsim(nsim)
    check_executor(executor)
    pieces = check_pieces(pieces, executor)
    timeout = check_timeout(timeout, executor)
    reps = check_replicates(replicates, nsim)
    t0 = time.perf_counter()
    model_of(m0), model_of(m1)
    if m0.npar == m1.npar:
        raise ValueError(f"the models have the same number of parameters ({m0.npar}); "
                         "pb_test compares nested models of different size")
    if m0.npar > m1.npar:
        m0, m1 = m1, m0
    d0, d1 = m0.model.design, m1.model.design
    if d0.n != d1.n or not np.allclose(d0.y, d1.y, rtol=1e-12, atol=0.0):
        raise ValueError(f"the models were fitted to different data ({d0.n} and {d1.n} "
                         "observations, or different responses)")
    f0, f1 = _ml_fit(m0), _ml_fit(m1)
    lrt = f0.objective - f1.objective
    lrt = max(lrt, 0.0) if lrt > -1e-6 else lrt
    df = m1.npar - m0.npar
    key = as_key(key)
    job = SimFits(f0.model, fitted_params(f0), key,
                  ((f0.model, f0.theta, "null model"), (f1.model, f1.theta, "alternative")),
                  nsim, chunk_size, max_iter, desc="pb_test")
    fits = run_replicates(job, reps, executor, pieces, progress, timeout)
    fits0, fits1 = fits["0"], fits["1"]
    ok = fits0["converged"] & fits1["converged"]
    stars = np.where(ok, fits0["objective"] - fits1["objective"], np.nan)
    formulas = (d0.formula.formula, d1.formula.formula)
    return PBTestResult(pb_table(lrt, df, stars, ok), stars, ok, formulas,
                        time.perf_counter() - t0, first=reps.start)


def pb_table(lrt: float, df: int, stars: np.ndarray, ok: np.ndarray) -> pd.DataFrame:
    """PBmodcomp's table: the LRT with its chi-square p-value and the bootstrap
    p-value (1 + #{LRT* >= LRT}) / (1 + #converged)."""
    extreme = int(np.sum(stars[ok] >= lrt))
    return pd.DataFrame({"stat": [lrt, lrt], "df": [float(df), np.nan],
                         "p.value": [float(_chi2_sf(lrt, df)),
                                     (1.0 + extreme) / (1.0 + int(ok.sum()))]},
                        index=["LRT", "PBtest"])


def _chi2_sf(x, df):
    # scipy.stats takes half a second to import: only the LRT table needs it.
    from scipy import stats
    return stats.chi2.sf(x, df)
