"""Simulation studies: simulate responses, refit a design to thousands of responses in
one compiled call, parametric bootstrap and the parametric-bootstrap LRT.

Model (Bates et al. 2015, JSS 67(1), eqs. 2-4): y = X beta + Z b + offset + eps with
b = sigma Lambda_theta u, u ~ N(0, I), eps_i ~ N(0, sigma^2 / w_i) -- what lme4's
``simulate.merMod`` draws.  A refit needs only Z'y, X'y and y'y of the new response
(:func:`mixedjax.pls.with_response`), so the batched refit is ``jax.vmap`` of the
compiled Newton fit over those sums: nothing per replicate touches the n rows beyond
one O(n) pass.  Batches are processed in fixed-size chunks (one compiled function per
design structure and chunk size), each chunk sharded over every JAX device.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from . import pls
from .inference.params import parameter_names, sdcor_names, theta_to_sdcor
from .model import LMM, choose_optimizer, fit_arrays

__all__ = ["simulate", "simulate_design", "refit_many", "BatchResult", "bootstrap",
           "BootstrapResult", "pb_test", "PBTestResult"]

SINGULAR_TOL = 1e-4


# ----------------------------------------------------------------------------------
# Drawing responses
# ----------------------------------------------------------------------------------
def as_key(key):
    """A JAX PRNG key from a key, an int seed, or None (a fresh random seed)."""
    if key is None:
        key = int(np.random.SeedSequence().entropy % (2 ** 63))
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


class _Params(NamedTuple):
    beta: np.ndarray
    theta: np.ndarray
    sigma: float


def _check_nsim(nsim) -> int:
    if not isinstance(nsim, (int, np.integer)) or nsim <= 0:
        raise ValueError(f"nsim must be a positive integer, got {nsim!r}")
    return int(nsim)


def _resolve_params(design, structure: pls.Structure, params, fitted: _Params | None):
    """Parameters from a dict (``beta``, ``theta`` or ``varcomp``, ``sigma``) over the
    fitted ones.  ``varcomp`` maps each grouping factor (design order) to its
    covariance matrix (or variance, for a scalar term), on the response's scale."""
    params = dict(params or {})
    unknown = set(params) - {"beta", "theta", "varcomp", "sigma"}
    if unknown:
        raise ValueError(f"unknown parameter name(s) {sorted(unknown)}; use beta, theta, "
                         "varcomp and sigma")
    if fitted is None and not {"beta", "sigma"} <= set(params):
        raise ValueError("simulating from a design needs params with 'beta', 'sigma' and "
                         "'theta' or 'varcomp'")
    beta = fitted.beta if fitted is not None and "beta" not in params else params.get("beta")
    if isinstance(beta, (dict, pd.Series)):
        missing = [nm for nm in design.xnames if nm not in beta]
        extra = [nm for nm in dict(beta) if nm not in design.xnames]
        if missing or extra:
            raise ValueError(f"beta names must be exactly {design.xnames}; missing {missing}, "
                             f"unknown {extra}")
        beta = [beta[nm] for nm in design.xnames]
    beta = np.asarray(beta, np.float64).reshape(-1)
    if beta.shape != (design.p,):
        raise ValueError(f"beta must have {design.p} entries {design.xnames}, got {beta.shape}")
    sigma = float(params["sigma"]) if "sigma" in params else fitted.sigma
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    if "theta" in params and "varcomp" in params:
        raise ValueError("give either theta or varcomp, not both")
    if "varcomp" in params:
        theta = _theta_from_varcomp(design, params["varcomp"], sigma)
    elif "theta" in params or fitted is None:
        if "theta" not in params:
            raise ValueError("params need 'theta' or 'varcomp'")
        theta = np.asarray(params["theta"], np.float64).reshape(-1)
    else:
        theta = fitted.theta
    if theta.shape != (structure.ntheta,):
        raise ValueError(f"theta must have {structure.ntheta} entries, got {theta.shape}")
    return _Params(beta, theta, sigma)


def _theta_from_varcomp(design, varcomp, sigma):
    if not isinstance(varcomp, dict):
        raise TypeError("varcomp must be a dict: grouping factor -> covariance matrix")
    names = [t.group_name for t in design.terms]
    unknown = [g for g in varcomp if g not in names]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"varcomp keys must be the grouping factors {names} (one term per "
                         f"factor); unknown {unknown}")
    parts = []
    for t in design.terms:
        if t.group_name not in varcomp:
            raise ValueError(f"varcomp lacks grouping factor {t.group_name!r}")
        cov = np.atleast_2d(np.asarray(varcomp[t.group_name], np.float64))
        if cov.shape != (t.k, t.k):
            raise ValueError(f"varcomp[{t.group_name!r}] must be {t.k} x {t.k}, got {cov.shape}")
        evals = np.linalg.eigvalsh(cov)
        if evals.min() < -1e-12 * max(evals.max(), 1.0):
            raise ValueError(f"varcomp[{t.group_name!r}] is not positive semi-definite")
        lam = _psd_cholesky(cov) / sigma
        rows, cols = pls._tril_indices(t.k)
        parts.append(lam[rows, cols])
    return np.concatenate(parts)


def _psd_cholesky(cov):
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:   # singular covariance: a zero variance, say
        evals, evecs = np.linalg.eigh(cov)
        root = evecs * np.sqrt(np.clip(evals, 0, None))
        return np.linalg.qr(root.T, mode="r").T * 1.0


def _draw(key, design, structure, params: _Params, nsim: int) -> np.ndarray:
    """(nsim, n) responses: X beta + Z sigma Lambda u + offset + eps."""
    n = design.n
    lams = [np.asarray(lam) for lam in pls.theta_to_lambdas(jnp.asarray(params.theta),
                                                            structure)]
    keys = jax.random.split(key, len(design.terms) + 1)
    eta = design.X @ params.beta
    if design.offset is not None:
        eta = eta + design.offset
    y = jnp.broadcast_to(jnp.asarray(eta), (nsim, n))
    for t, lam, k in zip(design.terms, lams, keys[1:]):
        u = jax.random.normal(k, (nsim, t.nlevels, t.k), jnp.float64)
        b = params.sigma * u @ jnp.asarray(lam).T                     # (nsim, m, k)
        y = y + jnp.sum(b[:, jnp.asarray(t.codes), :] * jnp.asarray(t.Z), axis=-1)
    sd = params.sigma / (np.sqrt(design.weights) if design.weights is not None else 1.0)
    eps = jax.random.normal(keys[0], (nsim, n), jnp.float64) * jnp.asarray(sd)
    return np.asarray(y + eps)


def simulate(result, nsim: int = 1, key=None, params=None) -> np.ndarray:
    """Responses (nsim x n) drawn from a fitted model, as lme4's ``simulate``:
    new random effects and residuals at the fitted (or given) parameters.

    ``params``: optional dict overriding ``beta`` (array or dict by coefficient
    name), ``theta`` or ``varcomp`` (grouping factor -> covariance matrix), ``sigma``.
    """
    nsim = _check_nsim(nsim)
    fitted = _Params(result._beta, result.theta, result.sigma)
    design = result.model.design
    p = _resolve_params(design, result.model.structure, params, fitted)
    return _draw(as_key(key), design, result.model.structure, p, nsim)


def simulate_design(formula: str, data: pd.DataFrame, params: dict, nsim: int = 1, key=None,
                    weights=None, offset=None) -> np.ndarray:
    """Responses (nsim x n) for a planned study: ``data`` holds the covariates and
    grouping columns (the response column may be absent), ``params`` the true
    ``beta``, ``theta`` or ``varcomp``, and ``sigma``."""
    model = planning_model(formula, data, weights=weights, offset=offset)
    p = _resolve_params(model.design, model.structure, params, None)
    return _draw(as_key(key), model.design, model.structure, p, _check_nsim(nsim))


def planning_model(formula: str, data: pd.DataFrame, reml: bool = True, weights=None,
                   offset=None) -> LMM:
    """The model of a formula on a design without (or ignoring) a response."""
    from .formula import parse_formula

    parsed = parse_formula(formula)
    data = data.copy()
    if parsed.response not in data.columns:
        if parsed.response.isidentifier():
            # Any non-constant placeholder: only the design matters here.
            data[parsed.response] = np.arange(len(data), dtype=np.float64)
        else:
            raise ValueError(f"response {parsed.response!r} is not a column of data; name "
                             "a plain column for a planned study")
    return LMM.from_formula(formula, data, reml=reml, weights=weights, offset=offset)


# ----------------------------------------------------------------------------------
# Batched refits
# ----------------------------------------------------------------------------------
class _Summary(NamedTuple):
    theta: jax.Array
    beta: jax.Array
    stderr: jax.Array
    sigma: jax.Array
    objective: jax.Array
    converged: jax.Array
    iterations: jax.Array


@functools.partial(jax.jit, static_argnames=("reml", "max_iter", "optimizer", "p"))
def _refit_chunk(theta0, A, R, Y, reml, max_iter, optimizer, p):
    qr = A.structure.q_rest

    def one(y):
        out = fit_arrays(theta0, pls.with_response(A, R, y), reml, max_iter, optimizer)
        sol = out.solution
        Lx = jnp.tril(sol.Lr[qr:qr + p, qr:qr + p])
        Linv = jax.scipy.linalg.solve_triangular(Lx, jnp.eye(p), lower=True)
        se = sol.sigma * jnp.sqrt(jnp.sum(Linv ** 2, axis=0))
        return _Summary(out.theta, sol.beta[:p], se, sol.sigma, sol.objective,
                        out.opt.converged, out.opt.iterations)

    return jax.vmap(one)(Y)


def _default_chunk(n: int, structure: pls.Structure) -> int:
    # Bounded memory: about 2e7 floats of per-replicate state and response.
    per = n + (structure.q_rest + structure.p + 1) ** 2 + 50 * structure.m[0]
    return int(max(64, min(4096, 2 ** int(math.log2(max(2e7 / per, 1))))))


def _shard(Y):
    devices = jax.devices()
    if len(devices) == 1:
        return jnp.asarray(Y)
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    spec = jax.sharding.PartitionSpec("batch")
    return jax.device_put(Y, jax.sharding.NamedSharding(mesh, spec))


def _check_Y(Y, n):
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[None, :]
    if Y.ndim != 2 or Y.shape[1] != n:
        raise ValueError(f"Y must be (nsim, {n}) (one response per row), got shape {Y.shape}")
    if Y.shape[0] == 0:
        raise ValueError("Y has no rows")
    bad = ~np.isfinite(Y).all(axis=1)
    if bad.any():
        raise ValueError(f"Y has non-finite values in {int(bad.sum())} row(s), e.g. row "
                         f"{int(np.flatnonzero(bad)[0])}")
    return Y


def _refit(model: LMM, Y, theta0, chunk_size=None, progress=None, max_iter=100,
           optimizer="auto"):
    Y = _check_Y(Y, model.design.n)
    nsim = Y.shape[0]
    optimizer = choose_optimizer(model.structure, optimizer)
    ndev = jax.device_count()
    chunk = chunk_size or _default_chunk(model.design.n, model.structure)
    chunk = min(chunk, nsim)
    chunk = int(math.ceil(chunk / ndev) * ndev)
    starts = range(0, nsim, chunk)
    if progress is None:
        progress = nsim >= 50_000
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, total=len(starts), unit="chunk", desc="refits")
    parts = []
    theta0 = jnp.asarray(theta0, jnp.float64)
    for s in starts:
        block = Y[s:s + chunk]
        real = block.shape[0]
        if real < chunk:   # pad the last chunk: one compiled shape for every chunk
            block = np.concatenate([block, np.repeat(block[-1:], chunk - real, axis=0)])
        out = _refit_chunk(theta0, model.arrays, model.response_map, _shard(block),
                           reml=model.reml, max_iter=max_iter, optimizer=optimizer,
                           p=model.design.p)
        parts.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:real], out))
    return _Summary(*[np.concatenate(x) for x in zip(*parts)])


@dataclasses.dataclass
class BatchResult:
    """Per-replicate estimates of one design refitted to many responses.

    ``fixef``/``stderr``/``sdcor``: DataFrames (one row per replicate); ``theta``
    (nsim, ntheta); ``sigma``, ``objective``, ``converged``, ``singular``,
    ``iterations``: arrays.  Replicates that did not converge are flagged in
    ``converged``; :meth:`summary` and the bootstrap use converged ones only.
    """

    model: LMM
    Y: np.ndarray
    theta: np.ndarray
    sigma: np.ndarray
    objective: np.ndarray
    converged: np.ndarray
    singular: np.ndarray
    iterations: np.ndarray
    fixef: pd.DataFrame
    stderr: pd.DataFrame
    sdcor: pd.DataFrame

    def __len__(self) -> int:
        return len(self.objective)

    def result(self, i: int):
        """Replicate ``i`` as a full :class:`~mixedjax.result.LMMResult` (refitted)."""
        design = dataclasses.replace(self.model.design, y=np.asarray(self.Y[i]))
        return LMM(design, reml=self.model.reml, pad=self.model.pad).fit(
            theta0=self.theta[i])

    __getitem__ = result

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation of every parameter over converged replicates."""
        table = pd.concat([self.sdcor, self.fixef], axis=1)[self.converged]
        return pd.DataFrame({"mean": table.mean(), "sd": table.std(ddof=1)})

    def __repr__(self) -> str:
        bad = int((~self.converged).sum())
        return (f"BatchResult({len(self)} replicates, {bad} not converged, "
                f"{int(self.singular.sum())} singular)")


def _singular(theta, structure):
    """lme4's isSingular: a diagonal element of some Lambda below the tolerance."""
    flags = np.zeros(theta.shape[0], bool)
    for k, sl in zip(structure.k, structure.theta_slices):
        rows, cols = pls._tril_indices(k)
        flags |= np.any(np.abs(theta[:, sl][:, rows == cols]) < SINGULAR_TOL, axis=1)
    return flags


def batch_result(model: LMM, Y, summary: _Summary) -> BatchResult:
    d = model.design
    sdcor = np.asarray(jax.vmap(theta_to_sdcor, (0, 0, None))(
        jnp.asarray(summary.theta), jnp.asarray(summary.sigma), model.structure))
    return BatchResult(
        model=model, Y=np.asarray(Y), theta=summary.theta, sigma=summary.sigma,
        objective=summary.objective, converged=summary.converged.astype(bool),
        singular=_singular(summary.theta, model.structure), iterations=summary.iterations,
        fixef=pd.DataFrame(summary.beta, columns=d.xnames),
        stderr=pd.DataFrame(summary.stderr, columns=d.xnames),
        sdcor=pd.DataFrame(sdcor, columns=sdcor_names(d.terms)))


def refit_many(result, Y, chunk_size: int | None = None, progress: bool | None = None,
               max_iter: int = 100, optimizer: str = "auto") -> BatchResult:
    """Fit the design of ``result`` to every row of ``Y`` (nsim x n) in compiled,
    vmapped chunks, starting each fit at the fitted theta (as lme4's ``refit``)."""
    model = result.model if hasattr(result, "model") else result
    theta0 = result.theta if hasattr(result, "theta") else model.initial_theta()
    Y = _check_Y(Y, model.design.n)
    summary = _refit(model, Y, theta0, chunk_size, progress, max_iter, optimizer)
    return batch_result(model, Y, summary)


# ----------------------------------------------------------------------------------
# Parametric bootstrap
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class BootstrapResult:
    """Parametric bootstrap of a fit (lme4's ``bootMer``, MixedModels.jl's
    ``parametricbootstrap``).  ``replicates``: one row per replicate, columns named as
    lme4's ``confint`` (sd/cor, sigma, fixed effects); ``estimate``: the original fit's
    values; ``converged``: per replicate."""

    estimate: pd.Series
    replicates: pd.DataFrame
    converged: np.ndarray
    batch: BatchResult

    def intervals(self, level: float = 0.95, method: str = "percentile") -> pd.DataFrame:
        """Percentile or basic bootstrap intervals (Davison & Hinkley 1997, eqs. 5.18
        and 5.6) from the converged replicates, columns as R's confint."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if method not in ("percentile", "basic"):
            raise ValueError(f"method must be 'percentile' or 'basic', got {method!r}")
        ok = self.replicates[self.converged]
        a = (1 - level) / 2
        lo, hi = ok.quantile(a), ok.quantile(1 - a)
        if method == "basic":
            lo, hi = 2 * self.estimate - hi, 2 * self.estimate - lo
        labels = [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]
        return pd.DataFrame({labels[0]: lo, labels[1]: hi}, index=self.replicates.columns)

    def summary(self) -> pd.DataFrame:
        ok = self.replicates[self.converged]
        return pd.DataFrame({"original": self.estimate, "mean": ok.mean(),
                             "bias": ok.mean() - self.estimate, "std. error": ok.std(ddof=1)})

    def __repr__(self) -> str:
        nbad = int((~self.converged).sum())
        head = f"Parametric bootstrap: {len(self.converged)} replicates ({nbad} not converged)"
        return head + "\n" + self.summary().to_string()


def bootstrap(result, nsim: int, key=None, **kwargs) -> BootstrapResult:
    """Simulate ``nsim`` responses from the fit and refit them all (batched)."""
    Y = simulate(result, _check_nsim(nsim), key)
    batch = refit_many(result, Y, **kwargs)
    names = parameter_names(result)
    reps = pd.concat([batch.sdcor, batch.fixef], axis=1)
    reps.columns = names
    from .inference.params import sdcor_values
    estimate = pd.Series(np.concatenate([sdcor_values(result), result._beta]), index=names)
    return BootstrapResult(estimate=estimate, replicates=reps, converged=batch.converged,
                           batch=batch)


# ----------------------------------------------------------------------------------
# Parametric-bootstrap likelihood-ratio test
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class PBTestResult:
    """pbkrtest's ``PBmodcomp``: the LRT with its chi-square p-value and the
    parametric-bootstrap p-value (1 + #{LRT* >= LRT}) / (1 + nsim)."""

    table: pd.DataFrame
    lrt_replicates: np.ndarray
    converged: np.ndarray

    def __repr__(self) -> str:
        nbad = int((~self.converged).sum())
        return (f"Parametric bootstrap test; nsim: {len(self.converged)} ({nbad} not "
                f"converged)\n{self.table.to_string()}")


def pb_test(m0, m1, nsim: int, key=None, **kwargs) -> PBTestResult:
    """Parametric-bootstrap likelihood-ratio test of nested fits ``m0`` (smaller) and
    ``m1``: responses simulated from the ML fit of the smaller model, both models
    refitted by ML to each (Halekoh & Hojsgaard 2014, JSS 59(9), section 3)."""
    nsim = _check_nsim(nsim)
    if m0.npar > m1.npar:
        m0, m1 = m1, m0
    if m0.npar == m1.npar:
        raise ValueError("the models have the same number of parameters: not nested")
    d0, d1 = m0.model.design, m1.model.design
    if d0.n != d1.n or not np.array_equal(d0.y, d1.y):
        raise ValueError("the models were fitted to different data (responses differ)")
    ml0 = LMM(d0, reml=False, pad=m0.model.pad)
    ml1 = LMM(d1, reml=False, pad=m1.model.pad)
    f0 = m0 if not m0.reml else ml0.fit(theta0=m0.theta)
    f1 = m1 if not m1.reml else ml1.fit(theta0=m1.theta)
    lrt = max(f0.objective - f1.objective, 0.0)
    df = m1.npar - m0.npar
    Y = simulate(f0, nsim, key)
    b0 = refit_many(f0, Y, **kwargs)
    theta1 = np.asarray(f1.theta)
    s1 = _refit(ml1, Y, theta1, **kwargs)
    stars = np.maximum(b0.objective - s1.objective, 0.0)
    ok = b0.converged & s1.converged.astype(bool)
    extreme = int(np.sum(stars[ok] >= lrt))
    table = pd.DataFrame({"stat": [lrt, lrt], "df": [df, np.nan],
                          "p.value": [stats.chi2.sf(lrt, df), (1 + extreme) / (1 + ok.sum())]},
                         index=["LRT", "PBtest"])
    return PBTestResult(table=table, lrt_replicates=stars, converged=ok)
