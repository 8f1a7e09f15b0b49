"""Simulation studies: simulate responses and refit a design to thousands of them.

* :func:`simulate` -- responses drawn from a fit (lme4's ``simulate.merMod``: new
  random effects and residuals, plus the offset, residual variance sigma^2 / w for
  prior weights) or from given parameters;
* :func:`simulate_design` -- responses for a planned study (a formula, the
  covariates and grouping columns, and the true parameters);
* :func:`refit_many` -- the design of a fit refitted to every row of a response
  matrix in compiled, vmapped chunks (lme4's ``refit`` over many responses),
  returning a :class:`BatchResult`;
* :func:`bootstrap` and :func:`pb_test` (in :mod:`mixedjax.bootstrap`) -- the
  parametric bootstrap (lme4's ``bootMer``) and the parametric-bootstrap
  likelihood-ratio test (pbkrtest's ``PBmodcomp``).

A refit needs only Z'y, X'y and y'y of the new response
(:func:`mixedjax.crossprod.with_response`, one O(n) pass); the fits themselves run in
:mod:`mixedjax.batchfit` and :mod:`mixedjax.batch` (chunks, devices, progress).
Parameters for simulation are described in :mod:`mixedjax.simparams`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd

from .structure import bucket, diagonal_mask
from .frames import as_pandas
from ._warn import warn_user
from .batch import chunk_size_for, fit_responses, fit_spec
from .executors import (check_executor, check_parts, check_pieces, check_replicates,
                        check_timeout, concat_outputs, run_replicates)
from .inference.params import sdcor_matrix, sdcor_names
from .model import LMM
from .persist import plain_state, save
from .simparams import SimParams, Simulator, as_key, check_nsim, resolve_params
from .result import SINGULAR_TOL

__all__ = ["simulate", "simulate_design", "planning_model", "refit_many", "BatchResult",
           "fitted_params", "model_of", "check_same_model", "Shifted", "SimFits", "RefitJob",
           "fit_range"]


def model_of(result) -> LMM:
    """The :class:`~mixedjax.model.LMM` behind a fit; a TypeError for anything else."""
    model = getattr(result, "model", None)
    if not isinstance(model, LMM):
        raise TypeError(f"expected a fitted model (mixedjax.lmer result), got "
                        f"{type(result).__name__}")
    return model


def check_same_model(models) -> None:
    """A ValueError unless the models have the same formula, rows and criterion (the
    shares of one run, loaded from several files, hold equal copies)."""
    def describe(m):
        d = m.design
        return d.formula.formula, d.n, m.reml, tuple(d.xnames)

    first = describe(models[0])
    for m in models[1:]:
        if describe(m) != first or not np.array_equal(m.design.y, models[0].design.y):
            raise ValueError(f"the pieces come from different models: {first[0]!r} "
                             f"({first[1]} rows) and {describe(m)[0]!r} ({m.design.n} rows)")


def fitted_params(result) -> SimParams:
    """The parameters of a fit: beta, theta, sigma."""
    return SimParams(np.asarray(result._beta), np.asarray(result.theta), float(result.sigma))


def simulate(result, nsim: int = 1, key=None, params=None, use_u: bool = False) -> np.ndarray:
    """Responses (nsim x n) drawn from a fitted model, as lme4's ``simulate``.

    New random effects b ~ N(0, sigma^2 Lambda Lambda') and residuals
    eps ~ N(0, sigma^2 / w) are drawn for each replicate, plus the offset, at the
    fitted parameters or at ``params`` (a dict overriding ``beta``, ``sigma`` and
    ``theta``/``VarCorr``/``sd``; see :mod:`mixedjax.simparams`).  ``use_u=True``
    keeps the fitted random effects (the BLUPs) and draws residuals only (lme4's
    ``use.u = TRUE``).  ``key``: a ``jax.random.key`` or an int seed; replicate i
    is drawn from ``fold_in(key, i)``, so ``result.bootstrap(nsim, key)`` refits
    exactly ``result.simulate(nsim, key)``.
    """
    nsim = check_nsim(nsim)
    model = model_of(result)
    model.require_rows("simulate()")
    p = resolve_params(model.design, model.structure, params, fitted_params(result))
    key = as_key(key)
    if use_u:
        return _simulate_conditional(result, p, key, nsim)
    # Rows padded as in the batched fits, so both share one compiled draw.
    sim = Simulator(model.design, model.structure, p, key, bucket(model.design.n))
    return sim(np.arange(nsim))[:, :model.design.n]


def _simulate_conditional(result, p: SimParams, key, nsim):
    """Fitted values with the BLUPs (at the fitted beta) plus new residuals."""
    import jax

    d = result.model.design
    eta = result.fitted.to_numpy() + d.X @ (p.beta - result._beta)
    w = d.weights if d.weights is not None else np.ones(d.n)
    eps = np.asarray(jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(key, i), (d.n,)))(np.arange(nsim)))
    return eta[None, :] + p.sigma / np.sqrt(w)[None, :] * eps


def planning_model(formula: str, data: pd.DataFrame, reml: bool = True, weights=None,
                   offset=None) -> LMM:
    """The model of ``formula`` on the covariates of a planned study.

    The response column may be absent (or hold anything): only the design is used.
    A response given as an expression (``log(y)``) is simulated on that scale.
    """
    from .formula import parse_formula

    data = as_pandas(data, "data")
    parsed = parse_formula(formula)
    name = parsed.response if parsed.response.isidentifier() else "response_"
    rhs = formula.split("~", 1)[1]
    data = data.assign(**{name: np.zeros(len(data))})
    model = LMM.from_formula(f"{name} ~ {rhs}", data, reml=reml, weights=weights,
                             offset=offset)
    if model.design.n_dropped:
        warn_user(f"{model.design.n_dropped} row(s) of data have missing values in the "
                  "model's columns and were dropped; responses are simulated for the "
                  f"other {model.design.n} rows")
    return model


def simulate_design(formula: str, data: pd.DataFrame, params: dict, nsim: int = 1, key=None,
                    weights=None, offset=None) -> np.ndarray:
    """Responses (nsim x n) for a planned study, without a fitted model.

    ``data`` holds the covariates and grouping columns of the study (the response
    column may be absent); ``params`` the true ``beta``, ``sigma`` and random effects
    (``theta``, ``VarCorr`` or ``sd``; see :mod:`mixedjax.simparams`).  Rows with
    missing covariates are dropped (with a warning).
    """
    nsim = check_nsim(nsim)
    model = planning_model(formula, data, weights=weights, offset=offset)
    p = resolve_params(model.design, model.structure, params, None)
    sim = Simulator(model.design, model.structure, p, as_key(key), bucket(model.design.n))
    return sim(np.arange(nsim))[:, :model.design.n]


# ----------------------------------------------------------------------------------
# Batched refits
# ----------------------------------------------------------------------------------
def _check_Y(Y, n: int) -> np.ndarray:
    try:
        Y = np.asarray(Y, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("Y must be a numeric array (nsim x n)") from None
    if Y.ndim == 1:
        Y = Y[None, :]
    if Y.ndim != 2 or Y.shape[1] != n:
        raise ValueError(f"Y must be (nsim, {n}): one response per row, one column per "
                         f"observation of the model; got shape {Y.shape}")
    if Y.shape[0] == 0:
        raise ValueError("Y has no rows (no responses to fit)")
    bad = ~np.isfinite(Y).all(axis=1)
    if bad.any():
        raise ValueError(f"Y has non-finite values (NaN or inf) in {int(bad.sum())} row(s), "
                         f"first row {int(np.flatnonzero(bad)[0])}")
    return Y


class _Rows:
    """Rows of a response matrix padded with zeros to ``n_pad`` columns."""

    def __init__(self, Y: np.ndarray, n_pad: int):
        self.Y, self.n_pad = Y, n_pad

    def __call__(self, idx):
        out = np.zeros((len(idx), self.n_pad))
        out[:, :self.Y.shape[1]] = self.Y[np.asarray(idx)]
        return out


class Shifted:
    """Responses ``rows(idx + first)``: positions in a piece of replicates mapped to
    replicate numbers."""

    def __init__(self, rows, first: int):
        self.rows, self.first = rows, int(first)

    def __call__(self, idx):
        return self.rows(np.asarray(idx, np.int64) + self.first)


def fit_range(model: LMM, theta0, rows, lo: int, hi: int, nsim: int, chunk_size, max_iter,
               progress, desc) -> dict:
    """The fits of replicates lo..hi-1 (responses ``rows(i)`` for replicate i) with the
    lane count of a run of ``nsim`` replicates: the compiled kernel, hence every
    number, is the same whatever piece of the run a replicate is fitted in."""
    spec = fit_spec(model, theta0)
    lanes = chunk_size_for(spec, nsim, chunk_size)
    return fit_responses(spec, Shifted(rows, lo), hi - lo, chunk_size=lanes,
                         max_iter=max_iter, progress=progress, desc=desc)


@dataclasses.dataclass(frozen=True)
class RefitJob:
    """The refits of :func:`refit_many` as a picklable job
    (:mod:`mixedjax.executors`): ``Y`` holds the responses of replicates
    ``first..first+len(Y)-1``; ``nsim`` is the size of the whole run."""

    model: LMM
    theta0: np.ndarray
    Y: np.ndarray
    first: int
    nsim: int
    chunk_size: int | None
    max_iter: int
    desc: str = "refits"

    def rows(self, n_pad: int):
        return Shifted(_Rows(self.Y, n_pad), -self.first)

    def piece(self, lo: int, hi: int) -> "RefitJob":
        """The job of replicates lo..hi-1 only (a worker gets only its rows)."""
        return dataclasses.replace(self, Y=self.Y[lo - self.first:hi - self.first], first=lo)

    def run(self, lo: int, hi: int, progress=None) -> dict:
        rows = self.rows(bucket(self.model.design.n))
        return fit_range(self.model, self.theta0, rows, lo, hi, self.nsim, self.chunk_size,
                          self.max_iter, progress, self.desc)


@dataclasses.dataclass(frozen=True)
class SimFits:
    """Fits of one or more models to responses simulated from ``source`` at
    ``params`` (replicate i from ``fold_in(key, i)``), as a picklable job
    (:mod:`mixedjax.executors`): the work of :func:`~mixedjax.bootstrap.bootstrap`
    (one model) and :func:`~mixedjax.bootstrap.pb_test` (two).  ``fits`` holds
    (model, start theta, progress label) per model; ``run`` returns one dict of
    fit summaries per model, under "0", "1", ..."""

    source: LMM
    params: SimParams
    key: object
    fits: tuple
    nsim: int
    chunk_size: int | None
    max_iter: int
    desc: str = "fits"

    def simulator(self) -> Simulator:
        d = self.source.design
        return Simulator(d, self.source.structure, self.params, self.key, bucket(d.n))

    def piece(self, lo: int, hi: int) -> "SimFits":
        return self

    def run(self, lo: int, hi: int, progress=None) -> dict:
        sim = self.simulator()
        return {str(j): fit_range(model, theta0, sim, lo, hi, self.nsim, self.chunk_size,
                                   self.max_iter, progress, desc)
                for j, (model, theta0, desc) in enumerate(self.fits)}


def refit_many(result, Y, chunk_size: int | None = None, max_iter: int = 100,
               progress: bool | None = None, theta0=None, executor=None, replicates=None,
               pieces: int | None = None, timeout: float | None = None) -> "BatchResult":
    """Fit the design of ``result`` to every row of ``Y`` (nsim x n).

    All fits run in one compiled, vmapped kernel (chunks of ``chunk_size`` lanes,
    sharded over the process's local JAX devices), each starting at the fitted
    theta as lme4's ``refit`` does (or at ``theta0``), for at most ``max_iter``
    Newton iterations.  ``progress``: a tqdm progress bar (default: from 20,000
    responses on).  ``replicates=range(lo, hi)`` fits only rows lo..hi-1 (an array
    job's share; :meth:`BatchResult.concat` joins the shares); ``executor`` (any
    :class:`concurrent.futures.Executor`) fits ``pieces`` ranges of rows in its
    workers (see :mod:`mixedjax.executors`), and a run not back within ``timeout``
    seconds is abandoned with a RuntimeError.  The numbers are the same either way.
    """
    model = model_of(result)
    Y = _check_Y(Y, model.design.n)
    check_executor(executor)
    pieces = check_pieces(pieces, executor)
    timeout = check_timeout(timeout, executor)
    reps = check_replicates(replicates, Y.shape[0])
    start = result.theta if theta0 is None else np.asarray(theta0, np.float64)
    if start.shape != (model.ntheta,):
        raise ValueError(f"theta0 must have {model.ntheta} entries, got {start.shape}")
    job = RefitJob(model, start, Y, 0, Y.shape[0], chunk_size, max_iter)
    fits = run_replicates(job.piece(reps.start, reps.stop), reps, executor, pieces, progress,
                          timeout)
    return BatchResult(model, fits, _Rows(Y[reps.start:reps.stop], bucket(model.design.n)),
                       first=reps.start)


class BatchResult:
    """One design fitted to many responses.

    Per replicate: ``fixef`` and ``stderr`` (DataFrames, one row per replicate,
    columns the fixed effects), ``sdcor`` (DataFrame with lme4's names
    ``sd_(Intercept)|Subject``, ``cor_...``, ``sigma``), ``theta`` (nsim x ntheta,
    lme4's sign convention), ``sigma``, ``objective`` (REML criterion or deviance),
    ``converged``, ``singular`` (lme4's ``isSingular``, tolerance 1e-4) and
    ``iterations``.  ``result(i)`` (or ``batch[i]``) is replicate i as a full
    :class:`~mixedjax.result.LMMResult`.  Replicates that did not converge keep their
    values here but are flagged, and :meth:`summary` leaves them out.  ``first``:
    the number of the first replicate (not 0 for a share of a run fitted with
    ``replicates=range(first, ...)``); the tables are indexed by replicate number,
    and ``batch[i]`` is replicate number i.
    """

    def __init__(self, model: LMM, fits: dict, rows, first: int = 0):
        self.model = model
        self._fits = fits
        self._rows = rows
        self.first = int(first)
        self.theta = fits["theta"]
        self.sigma = fits["sigma"]
        self.objective = fits["objective"]
        self.converged = fits["converged"].astype(bool)
        self.iterations = fits["iterations"]
        self.status = fits["status"]
        diag = diagonal_mask(model.structure)
        self.singular = np.any(np.abs(self.theta[:, diag]) < SINGULAR_TOL, axis=1)

    def __len__(self) -> int:
        return len(self.objective)

    # Pickling drops the cached tables (recomputed on first use after loading).
    def __getstate__(self):
        return plain_state(self)

    def __setstate__(self, state):
        self.__dict__.update({"first": 0, **state})

    @property
    def replicate_range(self) -> range:
        """The replicate numbers of the fits."""
        return range(self.first, self.first + len(self))

    @classmethod
    def concat(cls, parts) -> "BatchResult":
        """The batches of disjoint shares of one run (``replicates=`` ranges) joined
        in replicate order: the batch of the whole run when the shares cover it."""
        parts = check_parts(parts, cls, lambda p: p.replicate_range)
        check_same_model([p.model for p in parts])
        return cls(parts[0].model, concat_outputs([p._fits for p in parts]),
                   _Joined([p._rows for p in parts], [len(p) for p in parts]),
                   first=parts[0].first)

    def save(self, path) -> None:
        """Write the batch to the file ``path`` (with a format version);
        :func:`mixedjax.load` reads it back."""
        save(self, path)

    @property
    def n_failed(self) -> int:
        """Replicates whose fit did not converge."""
        return int((~self.converged).sum())

    @functools.cached_property
    def fixef(self) -> pd.DataFrame:
        d = self.model.design
        return pd.DataFrame(self._fits["beta"][:, :d.p], columns=list(d.xnames),
                            index=self.replicate_range)

    @functools.cached_property
    def stderr(self) -> pd.DataFrame:
        d = self.model.design
        return pd.DataFrame(self._fits["stderr"][:, :d.p], columns=list(d.xnames),
                            index=self.replicate_range)

    @functools.cached_property
    def sdcor(self) -> pd.DataFrame:
        values = sdcor_matrix(self.theta, self.sigma, self.model.structure)
        return pd.DataFrame(values, columns=sdcor_names(self.model.design.terms),
                            index=self.replicate_range)

    def _index(self, i) -> int:
        """The position of replicate number ``i`` (negative: counted from the end)."""
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"replicate index must be an integer, got {type(i).__name__}")
        j = int(i) + len(self) if i < 0 else int(i) - self.first
        if not 0 <= j < len(self):
            raise IndexError(f"replicate {i} out of range for replicates "
                             f"{self.first}..{self.first + len(self) - 1}")
        return j

    def response(self, i: int) -> np.ndarray:
        """The response vector of replicate ``i``."""
        j = self._index(i)
        return self._rows(np.array([j]))[0, :self.model.design.n]

    def result(self, i: int):
        """Replicate ``i`` as a full :class:`~mixedjax.result.LMMResult`: the design
        refitted to its response, starting at the batch's estimate."""
        j = self._index(i)
        y = self._rows(np.array([j]))[0, :self.model.design.n]
        d = self.model.design
        frame = d.frame
        if frame is not None and d.response_name in frame.columns:
            frame = frame.assign(**{d.response_name: y})
        design = dataclasses.replace(d, y=y, frame=frame)
        model = LMM(design, reml=self.model.reml, data_name=self.model.data_name)
        return model.fit(theta0=self.theta[j])

    __getitem__ = result

    def summary(self) -> pd.DataFrame:
        """Mean, standard deviation and 2.5 / 97.5 % quantiles of every parameter over
        the converged replicates."""
        table = pd.concat([self.sdcor, self.fixef], axis=1)[self.converged]
        return pd.DataFrame({"mean": table.mean(), "sd": table.std(ddof=1),
                             "2.5 %": table.quantile(0.025), "97.5 %": table.quantile(0.975)})

    def __repr__(self) -> str:
        head = (f"BatchResult: {len(self)} fits of {self.model.design.formula.formula!r} "
                f"({'REML' if self.model.reml else 'ML'}); {self.n_failed} did not converge "
                f"(left out of the summary), {int(self.singular.sum())} singular")
        return head + "\n" + self.summary().to_string()


class _Joined:
    """The responses of joined batches: position j goes to the part that holds it."""

    def __init__(self, parts, sizes):
        self.parts = parts
        self.starts = np.cumsum([0] + list(sizes))

    def __call__(self, idx):
        idx = np.asarray(idx, np.int64)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        out = None
        for k in np.unique(which):
            sel = which == k
            rows = self.parts[k](idx[sel] - self.starts[k])
            if out is None:
                out = np.empty((len(idx), rows.shape[1]))
            out[sel] = rows
        return out
