"""The lme/gls log-likelihood as a pure JAX function of all covariance parameters.

Model (Pinheiro & Bates 2000, eq. 2.1 and 5.1): for block (outermost group) i,

    y_i = X_i beta + Z_i b_i + eps_i,   b_i ~ N(0, Psi),
    eps_i ~ N(0, sigma^2 Lambda_i),     Lambda_i = S_i C_i S_i,

with S_i the variance-function multipliers and C_i the correlation matrix.
The marginal covariance is V_i = Z_i Psi Z_i' + sigma^2 Lambda_i.  With nested
levels, Z_i Psi Z_i' is the sum over random-effects terms of
(Z_t Psi_t Z_t') masked to pairs of rows in the same group of the term's level.
Every block is padded to m rows (identity rows, zero X and y), so the blocks are
a batch of small m x m matrices and no n x n matrix is ever formed.

Parameters ``x`` = [theta, delta, rho]: theta the lme4-style relative Cholesky
factors (Psi_t = sigma^2 Lambda_t Lambda_t', entries unconstrained, the sign of
each column free), delta and rho the variance and correlation parameters on
nlme's unconstrained scale.  With V~_i = V_i / sigma^2, beta and sigma profiled
out (Pinheiro & Bates 2000, eq. 2.21-2.23 and 2.25-2.27):

    ML:   -2 l   = n (1 + log(2 pi r / n)) + sum_i log|V~_i|
    REML: -2 l_R = (n - p)(1 + log(2 pi r / (n - p))) + sum_i log|V~_i|
                   + log|sum_i X_i' V~_i^-1 X_i|

with r = sum_i (y_i - X_i beta)' V~_i^-1 (y_i - X_i beta).  These match nlme's
``logLik`` (and lme4's REML criterion when there is no structure).

:func:`natural_criterion` is the same likelihood with sigma explicit and the
random effects in nlme's "natural" parametrization (log standard deviations and
log((1 + r)/(1 - r)) of correlations), whose Hessian gives nlme's approximate
covariance of the variance parameters (``apVar``, used by ``intervals``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import linalg as la
# Lower-triangle indices in column-major order: the same theta order as the LMM side.
from ..structure import tril_indices
from .corstruct import correlation, symm_from_angles
from .varfunc import StructSpec, sd_multiplier

__all__ = ["Layout", "Arrays", "Solution", "criterion", "natural_criterion", "solve",
           "tril_indices", "theta_to_covs", "rectify", "to_natural"]


@dataclass(frozen=True)
class Layout:
    """Static description of a model (hashable; part of the jit cache key)."""

    n: int
    p: int
    reml: bool
    k: tuple[int, ...]
    var: StructSpec
    cor: StructSpec

    @property
    def ntheta(self) -> int:
        return sum(k * (k + 1) // 2 for k in self.k)

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.ntheta, self.var.nparams, self.cor.nparams

    @property
    def nparams(self) -> int:
        return sum(self.sizes)


class Arrays(NamedTuple):
    """Per-block data, padded to ``(G, m, ...)``; -1 codes mark padding."""

    X: jax.Array            # (G, m, p)
    y: jax.Array            # (G, m)
    mask: jax.Array         # (G, m) bool
    Z: tuple                # per term (G, m, k_t)
    zsub: tuple             # per term (G, m) group code of the term's level
    vcov: jax.Array         # (G, m) variance covariate
    vidx: jax.Array         # (G, m) index of each row's variance parameter
    vcode: jax.Array        # () which variance function (varfunc.DELTA_CODES)
    ctime: jax.Array        # (G, m) correlation time/position
    csub: jax.Array         # (G, m) correlation group
    cinf: jax.Array         # () CorCompSymm's lower bound
    beta0: jax.Array        # (p,) least-squares start; y holds y - X beta0


class Solution(NamedTuple):
    """Estimates at given parameters (beta and sigma profiled)."""

    beta: jax.Array
    sigma: jax.Array
    xtvx_inv: jax.Array     # (X' V~^-1 X)^-1; vcov(beta) = sigma^2 times this
    loglik: jax.Array
    vinv_resid: jax.Array   # (G, m) V~_i^-1 (y_i - X_i beta)
    sd: jax.Array           # (G, m) variance-function multipliers


def _split(x, layout: Layout):
    a, b, _ = layout.sizes
    return x[:a], x[a:a + b], x[a + b:layout.nparams]


def theta_to_covs(theta, ks):
    """Relative covariance Lambda_t Lambda_t' of each term (Psi_t / sigma^2)."""
    out, start = [], 0
    for k in ks:
        r, c = tril_indices(k)
        lam = jnp.zeros((k, k), theta.dtype).at[r, c].set(theta[start:start + len(r)])
        out.append(lam @ lam.T)
        start += len(r)
    return out


def rectify(theta: np.ndarray, ks) -> np.ndarray:
    """Flip each Lambda column with a negative diagonal (Psi is unchanged)."""
    theta = np.array(theta, dtype=np.float64)
    start = 0
    for k in ks:
        r, c = tril_indices(k)
        block = theta[start:start + len(r)]
        diag = block[r == c]
        block *= np.where(diag < 0, -1.0, 1.0)[c]
        start += len(r)
    return theta


def _marginal(covs, resid_scale, sd, C, A: Arrays):
    """V_i = sum_t (Z_t Psi_t Z_t') o same_t + scale S_i C_i S_i; identity on padding."""
    V = resid_scale * sd[:, :, None] * C * sd[:, None, :]
    for Z, sub, P in zip(A.Z, A.zsub, covs):
        same = sub[:, :, None] == sub[:, None, :]
        V = V + jnp.where(same, jnp.einsum("gik,kl,gjl->gij", Z, P, Z), 0.0)
    both = A.mask[:, :, None] & A.mask[:, None, :]
    m = V.shape[-1]
    return jnp.where(both, V, jnp.eye(m, dtype=V.dtype))


def _structure(vpar, cpar, A: Arrays, layout: Layout, natural: bool = False):
    sd = jnp.where(A.mask, sd_multiplier(layout.var, vpar, A.vcov, A.vidx, A.vcode), 1.0)
    C = correlation(layout.cor, cpar, A.ctime, A.csub, A.cinf, natural=natural)
    return sd, C


class _GLS(NamedTuple):
    vinv: jax.Array       # (G, m, m) V_i^-1
    logdet_v: jax.Array   # sum_i log|V_i|
    logdet_x: jax.Array   # log|X' V^-1 X|
    xtvx_inv: jax.Array   # (X' V^-1 X)^-1
    delta: jax.Array      # beta-hat - beta0
    r: jax.Array          # (y - X beta-hat)' V^-1 (y - X beta-hat)


def _gls(V, A: Arrays) -> _GLS:
    """Generalized least squares for the batch of V_i (Pinheiro & Bates, eq. 5.5).

    ``A.y`` holds y - X beta0 with beta0 the ordinary least-squares fit, so the
    weighted residual sum of squares r = c - b' (X'V^-1X)^-1 b does not lose
    digits to a large mean; beta-hat = beta0 + delta.
    """
    p = A.X.shape[-1]
    vinv, logdet = la.inv_logdet(V)
    XY = jnp.concatenate([A.X, A.y[:, :, None]], axis=-1)
    M = jnp.einsum("gmi,gmn,gnj->ij", XY, vinv, XY)
    xtvx_inv, logdet_x = la.inv_logdet(M[:p, :p])
    delta = xtvx_inv @ M[:p, p]
    r = M[p, p] - M[:p, p] @ delta
    return _GLS(vinv, jnp.sum(logdet), logdet_x, xtvx_inv, delta, r)


def _profiled(g: _GLS, layout: Layout):
    p, n = layout.p, layout.n
    if layout.reml:
        d = n - p
        return d * (1.0 + jnp.log(2.0 * jnp.pi * g.r / d)) + g.logdet_v + g.logdet_x
    return n * (1.0 + jnp.log(2.0 * jnp.pi * g.r / n)) + g.logdet_v


def criterion(x, A: Arrays, layout: Layout):
    """-2 log-likelihood (REML or ML) with beta and sigma profiled out (module doc)."""
    theta, vpar, cpar = _split(x, layout)
    sd, C = _structure(vpar, cpar, A, layout)
    V = _marginal(theta_to_covs(theta, layout.k), 1.0, sd, C, A)
    return _profiled(_gls(V, A), layout)


def solve(x, A: Arrays, layout: Layout) -> Solution:
    """beta-hat, sigma-hat, (X'V~^-1X)^-1, log-likelihood and V~^-1 residuals at x."""
    theta, vpar, cpar = _split(x, layout)
    sd, C = _structure(vpar, cpar, A, layout)
    V = _marginal(theta_to_covs(theta, layout.k), 1.0, sd, C, A)
    g = _gls(V, A)
    dof = layout.n - layout.p if layout.reml else layout.n
    resid = A.y - jnp.einsum("gmp,p->gm", A.X, g.delta)
    vinv = jnp.einsum("gij,gj->gi", g.vinv, resid)
    return Solution(beta=A.beta0 + g.delta, sigma=jnp.sqrt(g.r / dof), xtvx_inv=g.xtvx_inv,
                    loglik=-0.5 * _profiled(g, layout),
                    vinv_resid=jnp.where(A.mask, vinv, 0.0), sd=sd)


# -- nlme's natural parametrization (for the approximate covariance, apVar) ----------
def _natural_covs(xn, ks):
    """Psi_t from [log sd_1..k, log((1+r)/(1-r)) per correlation] (pdNatural)."""
    out, start = [], 0
    for k in ks:
        sd = jnp.exp(xn[start:start + k])
        nc = k * (k - 1) // 2
        z = xn[start + k:start + k + nc]
        rows, cols = np.tril_indices(k, -1)
        corr = jnp.eye(k, dtype=xn.dtype).at[rows, cols].set(jnp.tanh(z / 2))
        corr = corr.at[cols, rows].set(jnp.tanh(z / 2))
        out.append(sd[:, None] * corr * sd[None, :])
        start += k + nc
    return out, start


def natural_criterion(xn, A: Arrays, layout: Layout):
    """-2 log-likelihood with beta profiled and sigma explicit (nlme's apVar scale).

    ``xn`` = [per term: log sd, log((1+r)/(1-r)) of correlations (column-major
    lower triangle); delta; rho (CorSymm: log((1+r)/(1-r)) per correlation);
    log sigma] -- the parameters of nlme's ``lmeApVar``/``glsApVar``.
    """
    covs, start = _natural_covs(xn, layout.k)
    nv, nc = layout.var.nparams, layout.cor.nparams
    vpar = xn[start:start + nv]
    cpar = xn[start + nv:start + nv + nc]
    log_sigma = xn[start + nv + nc]
    sd, C = _structure(vpar, cpar, A, layout, natural=True)
    V = _marginal(covs, jnp.exp(2.0 * log_sigma), sd, C, A)
    g = _gls(V, A)
    out = layout.n * math.log(2 * math.pi) + g.logdet_v + g.r
    if layout.reml:
        out = out - layout.p * math.log(2 * math.pi) + g.logdet_x
    return out


def to_natural(x: np.ndarray, sigma: float, layout: Layout) -> np.ndarray:
    """Fitted parameters -> the natural parametrization of :func:`natural_criterion`."""
    theta, vpar, cpar = (np.asarray(v) for v in _split(np.asarray(x), layout))
    parts = []
    for P in theta_to_covs(jnp.asarray(theta), layout.k):
        P = sigma ** 2 * np.asarray(P)
        sd = np.sqrt(np.diag(P))
        corr = P / np.outer(sd, sd)
        r = corr[np.tril_indices(len(sd), -1)]
        parts += [np.log(sd), np.log((1 + r) / (1 - r))]
    if layout.cor.kind == "symm":
        M = layout.cor.size
        r = np.asarray(symm_from_angles(jnp.asarray(cpar), M))[np.triu_indices(M, 1)]
        cpar = np.log((1 + r) / (1 - r))
    parts += [vpar, cpar, [np.log(sigma)]]
    return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts])
