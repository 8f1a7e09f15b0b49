"""Parameters for simulating a linear mixed model, and the draw itself.

Model (Bates et al. 2015, JSS 67(1), eqs. 2-4): y = X beta + Z b + offset + eps with
b = sigma Lambda_theta u, u ~ N(0, I_q) and eps_i ~ N(0, sigma^2 / w_i) for prior
weights w -- what lme4's ``simulate.merMod`` draws (``use.u = FALSE``).

Parameters come from a fit or from a dict (the planning of a study):

* ``beta``: array of the fixed effects in ``design.xnames`` order, or a dict /
  Series by coefficient name;
* ``sigma``: residual standard deviation;
* the random effects, one of: ``theta`` (lme4's layout); ``VarCorr`` (alias
  ``varcorr``), a dict from grouping factor to its covariance matrix (a variance
  for a scalar term; a vector is read as variances with zero covariances); or
  ``sd`` (grouping factor -> standard deviation(s)) with optional ``cor``
  (grouping factor -> correlation matrix, or one correlation for two columns).

Grouping factors are named as lme4's ``VarCorr`` names them (a factor with several
terms, as from ``(x || g)``, gives ``g``, ``g.1``, ...).  Every replicate draws
from its own key ``fold_in(key, i)``, so replicate i is the same whatever the
batch it is drawn in.
"""

from __future__ import annotations

import functools
import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .structure import Structure, lambdas, tril_indices
from .threads import lane_threads

__all__ = ["SimParams", "resolve_params", "term_names", "as_key", "check_nsim",
           "SimDesign", "sim_design", "Simulator"]

PARAM_KEYS = ("beta", "sigma", "theta", "VarCorr", "varcorr", "varcomp", "sd", "cor")


class SimParams(NamedTuple):
    """True parameters: beta (p,), theta (lme4's layout), sigma."""

    beta: np.ndarray
    theta: np.ndarray
    sigma: float


def as_key(key):
    """A JAX PRNG key from a key, an int seed, or None (a fresh random seed)."""
    if key is None:
        key = int(np.random.SeedSequence().entropy % (2 ** 63))
    if isinstance(key, (bool, np.bool_)):
        raise TypeError("key must be a jax.random key or an integer seed, got a bool")
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                       or key.shape == (2,) and key.dtype == jnp.uint32):
        return key
    raise TypeError(f"key must be a jax.random key or an integer seed, got {type(key).__name__}")


def check_nsim(nsim) -> int:
    if isinstance(nsim, (bool, np.bool_)) or not isinstance(nsim, (int, np.integer)):
        raise TypeError(f"nsim must be a positive integer, got {type(nsim).__name__}")
    if nsim <= 0:
        raise ValueError(f"nsim must be a positive integer, got {nsim}")
    return int(nsim)


def term_names(terms) -> list[str]:
    """lme4's ``VarCorr`` name of each term: the grouping factor, then ``.1``, ``.2``
    for later terms on the same factor."""
    names, seen = [], {}
    for t in terms:
        count = seen.get(t.group_name, 0)
        seen[t.group_name] = count + 1
        names.append(t.group_name if count == 0 else f"{t.group_name}.{count}")
    return names


def resolve_params(design, structure: Structure, params, fitted: SimParams | None = None
                   ) -> SimParams:
    """Parameters from ``params`` (a dict, see the module docstring) over ``fitted``.

    Without ``fitted`` (a planned study) beta, sigma and the random effects are all
    required.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    unknown = [k for k in params if k not in PARAM_KEYS]
    if unknown:
        raise ValueError(f"unknown parameter name(s) {unknown}; use 'beta', 'sigma' and one "
                         "of 'theta', 'VarCorr' or 'sd' (with 'cor')")
    re_keys = [k for k in ("theta", "VarCorr", "varcorr", "varcomp", "sd") if k in params]
    if len(re_keys) > 1:
        raise ValueError(f"give the random effects once, got {re_keys}")
    if "cor" in params and "sd" not in params:
        raise ValueError("'cor' needs 'sd' (or give covariance matrices in 'VarCorr')")
    if fitted is None:
        missing = [k for k in ("beta", "sigma") if k not in params]
        if missing or not re_keys:
            raise ValueError("simulating a planned design needs params 'beta', 'sigma' and "
                             f"one of 'theta', 'VarCorr' or 'sd'; missing "
                             f"{missing or ['theta or VarCorr or sd']}")
    beta = _beta(design, params.get("beta"), None if fitted is None else fitted.beta)
    sigma = fitted.sigma if "sigma" not in params else _positive(params["sigma"], "sigma")
    if not re_keys:
        theta = fitted.theta
    elif re_keys[0] == "theta":
        theta = _theta(params["theta"], structure, design.terms)
    elif re_keys[0] == "sd":
        theta = _theta_from_sd(design.terms, params["sd"], params.get("cor"), sigma)
    else:
        theta = _theta_from_varcorr(design.terms, params[re_keys[0]], sigma)
    return SimParams(np.asarray(beta, np.float64), np.asarray(theta, np.float64), float(sigma))


def _positive(value, name) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return v


def _beta(design, beta, fitted):
    names = list(design.xnames)
    if beta is None:
        return fitted
    if isinstance(beta, (dict, pd.Series)):
        given = dict(beta)
        unknown = [k for k in given if k not in names]
        if unknown:
            raise ValueError(f"unknown fixed effect(s) {unknown} in beta; the fixed effects "
                             f"are {names}")
        if fitted is None:
            missing = [k for k in names if k not in given]
            if missing:
                raise ValueError(f"beta lacks fixed effect(s) {missing} (needed: {names})")
            base = np.zeros(len(names))
        else:
            base = np.array(fitted, np.float64)
        out = base.copy()
        for k, v in given.items():
            out[names.index(k)] = v
        beta = out
    arr = _numeric(beta, "beta").reshape(-1)
    if arr.shape != (len(names),):
        raise ValueError(f"beta must have {len(names)} entries ({names}), got {arr.size}")
    return arr


def _numeric(value, name) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numeric") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


def _theta(theta, structure, terms):
    arr = _numeric(theta, "theta").reshape(-1)
    if arr.shape != (structure.ntheta,):
        raise ValueError(f"theta must have {structure.ntheta} entries (terms "
                         f"{term_names(terms)}), got {arr.size}")
    return arr


def _by_term(terms, spec, what):
    if not isinstance(spec, dict):
        raise TypeError(f"{what} must be a dict from grouping factor to values, got "
                        f"{type(spec).__name__}")
    names = term_names(terms)
    unknown = [g for g in spec if g not in names]
    missing = [g for g in names if g not in spec]
    if unknown or missing:
        raise ValueError(f"{what} must name the grouping factors {names}; unknown {unknown}, "
                         f"missing {missing}")
    return [(t, spec[nm], nm) for t, nm in zip(terms, names)]


def _theta_from_varcorr(terms, spec, sigma):
    parts = []
    for t, value, nm in _by_term(terms, spec, "VarCorr"):
        cov = _numeric(value, f"VarCorr[{nm!r}]")
        if (cov.ndim == 0 and t.k == 1) or (cov.ndim == 1 and cov.size == t.k):
            cov = np.diag(np.broadcast_to(cov, (t.k,)).astype(float))
        if cov.shape != (t.k, t.k):
            raise ValueError(f"VarCorr[{nm!r}] must be {t.k} x {t.k}: a covariance matrix of "
                             f"the columns {t.cnames}; got shape {cov.shape}")
        parts.append(_theta_block(cov, sigma, nm))
    return np.concatenate(parts)


def _theta_from_sd(terms, sd_spec, cor_spec, sigma):
    cors = {} if cor_spec is None else cor_spec
    if not isinstance(cors, dict):
        raise TypeError("cor must be a dict from grouping factor to correlation(s)")
    names = term_names(terms)
    unknown = [g for g in cors if g not in names]
    if unknown:
        raise ValueError(f"cor names unknown grouping factor(s) {unknown}; they are {names}")
    parts = []
    for t, value, nm in _by_term(terms, sd_spec, "sd"):
        sd = _numeric(value, f"sd[{nm!r}]").reshape(-1)
        if sd.size == 1 and t.k > 1:
            raise ValueError(f"sd[{nm!r}] needs {t.k} standard deviations ({t.cnames})")
        if sd.size != t.k:
            raise ValueError(f"sd[{nm!r}] must have {t.k} entries ({t.cnames}), got {sd.size}")
        if np.any(sd < 0):
            raise ValueError(f"sd[{nm!r}] has a negative standard deviation")
        R = np.eye(t.k)
        if nm in cors:
            c = _numeric(cors[nm], f"cor[{nm!r}]")
            if c.ndim == 0 and t.k == 2:
                c = np.array([[1.0, float(c)], [float(c), 1.0]])
            if c.shape != (t.k, t.k):
                raise ValueError(f"cor[{nm!r}] must be a {t.k} x {t.k} correlation matrix"
                                 + (" or one number" if t.k == 2 else ""))
            if np.any(np.abs(c) > 1 + 1e-12) or not np.allclose(np.diag(c), 1.0):
                raise ValueError(f"cor[{nm!r}] is not a correlation matrix")
            R = c
        parts.append(_theta_block(sd[:, None] * R * sd[None, :], sigma, nm))
    return np.concatenate(parts)


def _theta_block(cov, sigma, name):
    """theta of one term: the lower Cholesky factor of cov / sigma^2, lme4's layout."""
    if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"the covariance matrix of {name!r} is not symmetric")
    evals = np.linalg.eigvalsh(cov)
    if evals[0] < -1e-10 * max(evals[-1], 1.0):
        raise ValueError(f"the covariance matrix of {name!r} is not positive semi-definite "
                         f"(smallest eigenvalue {evals[0]:.3g})")
    lam = _psd_cholesky(cov / sigma ** 2)
    rows, cols = tril_indices(cov.shape[0])
    return lam[rows, cols]


def _psd_cholesky(S):
    """Lower factor L with L L' = S for a positive semi-definite S; a zero pivot
    (a variance of 0, or a perfect correlation) leaves its column at 0."""
    k = S.shape[0]
    L = np.zeros_like(S)
    tol = 1e-12 * max(np.max(np.diag(S)), 1e-300)
    for j in range(k):
        v = S[j:, j] - L[j:, :j] @ L[j, :j]
        if v[0] > tol:
            L[j:, j] = v / np.sqrt(v[0])
    return L


# ----------------------------------------------------------------------------------
# Drawing responses
# ----------------------------------------------------------------------------------
class SimDesign(NamedTuple):
    """The rows of a design for drawing responses, padded to ``n_pad`` rows.

    ``noise`` is 1 / sqrt(w) on real rows and 0 on padding rows, whose responses
    are then exactly 0 (they carry zero weight in the fit).
    """

    X: jax.Array
    codes: tuple
    Z: tuple
    offset: jax.Array
    noise: jax.Array


def sim_design(design, n_pad: int) -> tuple[SimDesign, tuple[int, ...]]:
    """The :class:`SimDesign` of a design and the number of levels of each term."""
    n = design.n
    pad = n_pad - n

    def grow(a, value=0.0):
        a = np.asarray(a)
        return jnp.asarray(np.concatenate([a, np.full((pad,) + a.shape[1:], value, a.dtype)]))

    w = design.weights if design.weights is not None else np.ones(n)
    off = design.offset if design.offset is not None else np.zeros(n)
    S = SimDesign(X=grow(design.X), codes=tuple(grow(t.codes, 0) for t in design.terms),
                  Z=tuple(grow(t.Z) for t in design.terms), offset=grow(off),
                  noise=grow(1.0 / np.sqrt(w)))
    return S, tuple(t.nlevels for t in design.terms)


@functools.partial(jax.jit, static_argnames=("levels",))
def _draw(key, idx, S: SimDesign, beta, lams, sigma, levels):
    """Responses of replicates ``idx`` (len(idx), n_pad)."""
    def one(i):
        keys = jax.random.split(jax.random.fold_in(key, i), len(levels) + 1)
        y = S.X @ beta + S.offset
        for kt, codes, Z, lam, m in zip(keys[1:], S.codes, S.Z, lams, levels):
            u = jax.random.normal(kt, (m, Z.shape[1]), jnp.float64)
            b = sigma * u @ lam.T
            y = y + jnp.sum(Z * b[codes], axis=-1)
        eps = jax.random.normal(keys[0], y.shape, jnp.float64)
        return y + sigma * S.noise * eps

    return jax.vmap(one)(idx)


class Simulator:
    """Draws responses of given replicates: ``sim(idx)`` -> (len(idx), n_pad).

    Replicates are drawn in aligned blocks (one compiled shape per design; at most
    1024 rows and about 128 MB); the last two blocks per lane thread
    (:func:`mixedjax.threads.lane_threads`) are cached, since batched fits ask for
    increasing ranges of replicates, each thread its own range.
    """

    def __init__(self, design, structure: Structure, params: SimParams, key, n_pad: int):
        self.key = key
        self.n = design.n
        self.n_pad = n_pad
        self.S, self.levels = sim_design(design, n_pad)
        self.beta = jnp.asarray(params.beta)
        self.lams = tuple(jnp.asarray(lam) for lam in
                          lambdas(np.asarray(params.theta, np.float64), structure))
        self.sigma = jnp.asarray(params.sigma)
        self.block = int(min(1024, 2 ** max(int(np.log2(max(2 ** 24 // n_pad, 1))), 0)))
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    # Pickled without the cache and the lock (a drawn block is redrawn on demand).
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache = {}
        self._lock = threading.Lock()

    def _block(self, b: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(b)
        if hit is None:
            idx = jnp.arange(b * self.block, (b + 1) * self.block)
            hit = np.asarray(_draw(self.key, idx, self.S, self.beta, self.lams, self.sigma,
                                   levels=self.levels))
            with self._lock:
                self._cache[b] = hit
                # dicts keep insertion order: drop the oldest
                while len(self._cache) > 2 * lane_threads():
                    self._cache.pop(next(iter(self._cache)))
        return hit

    def __call__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx), self.n_pad))
        blocks = idx // self.block
        for b in np.unique(blocks):
            sel = blocks == b
            out[sel] = self._block(int(b))[idx[sel] - b * self.block]
        return out
