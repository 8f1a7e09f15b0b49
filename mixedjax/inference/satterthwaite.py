"""Satterthwaite's denominator degrees of freedom with exact derivatives.

Kuznetsova, Brockhoff & Christensen (2017), "lmerTest Package: Tests in Linear
Mixed Effects Models", JSS 82(13), section 3 (eqs. 5-9):

* variance parameters phi = (theta, sigma) (lme4's theta layout, then the
  residual standard deviation, exactly lmerTest's ``varpar``);
* D(phi): -2 log-likelihood (ML) or -2 REML log-likelihood with beta profiled out
  but sigma not (lmerTest's ``devfun_vp``), from the PLS pieces at theta:

      ML:   D = log|L_Z|^2 + pwrss / sigma^2 + n log(2 pi sigma^2)
      REML: D = ML + log|R_X|^2 - p log(2 pi sigma^2)

* A = 2 H^+ with H = hessian of D at the optimum; the pseudo-inverse keeps
  eigenvalues above 1e-8 (lmerTest's rule, which makes a boundary fit's flat
  directions contribute nothing);
* C(phi) = sigma^2 (R_X' R_X)^-1, the covariance of beta-hat;
* a contrast l: v = l'C l, g = grad_phi v, nu = 2 v^2 / (g' A g)  (eq. 7);
* a contrast matrix L (eq. 9, lmerTest's ``contestMD``): with L C L' = P diag(d) P',
  keep the q eigenvalues above sqrt(eps) * d_max, F = sum_m (P_m'L beta)^2 / d_m / q,
  nu_m from each row P_m'L, and the denominator df 2E / (E - q) with
  E = sum nu_m / (nu_m - 2) (2 when some nu_m <= 2; their mean when all equal).

lmerTest takes H and grad C by finite differences (numDeriv); here forward-mode
autodiff (``jax.jacfwd``) gives them exactly.  At the same theta the df agree with
lmerTest's to ~1e-9; at each program's own optimum they differ by what lme4's
optimizer leaves (~1e-5), and ours are exact where theory gives integers (the
oats split plot: 10 and 45).

:func:`satterthwaite_test` is pure jnp with fixed shapes: it ``jax.jit``-s and
``jax.vmap``-s over theta and the blocks (:class:`~mixedjax.crossprod.Blocks`), for
batched simulation studies.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import factor
from ..backend import jax_backend
from ..criterion import dof, parts, weights
from ..crossprod import Blocks

__all__ = ["SatterthwaiteTest", "Pieces", "satterthwaite_test", "varpar_deviance",
           "covbeta", "derivatives", "pieces", "fit_pieces", "contest", "HESSIAN_TOL"]

HESSIAN_TOL = 1e-8            # lmerTest: eigenvalues of H above this are inverted
_EIG_EPS = math.sqrt(np.finfo(float).eps)  # lmerTest contestMD's rank tolerance
_EQUAL_TOL = 1e-8             # lmerTest get_Fstat_ddf: "all nu equal" tolerance


class SatterthwaiteTest(NamedTuple):
    """Result of :func:`satterthwaite_test` (all jnp; batched under vmap).

    ``estimate`` (r,): L beta;  ``vcov`` (r, r): L C L';  ``F``: the F statistic
    (t^2 when r = 1);  ``t``: the signed t statistic when r = 1 (NaN otherwise);
    ``numdf``: rank of L C L';  ``dendf``: Satterthwaite denominator df;
    ``p_value``: upper tail of F(numdf, dendf) at ``F``.
    """

    estimate: jax.Array
    vcov: jax.Array
    F: jax.Array
    t: jax.Array
    numdf: jax.Array
    dendf: jax.Array
    p_value: jax.Array


class Pieces(NamedTuple):
    """What every Satterthwaite test of one fit needs (padded to ``A.structure.p``).

    ``beta`` (p,), ``C`` (p, p) covariance of beta, ``A`` (nphi, nphi) asymptotic
    covariance of phi = 2 H^+, ``J`` (nphi, p, p) derivatives of C, ``sigma``.
    """

    beta: jax.Array
    C: jax.Array
    A: jax.Array
    J: jax.Array
    sigma: jax.Array


def varpar_deviance(phi, A: Blocks, reml: bool = True):
    """D(theta, sigma): the deviance (REML criterion) with sigma not profiled out.

    Equals lmerTest's ``devfun_vp`` (without the constant -sum log w of prior
    weights); minimized over sigma it is the profiled criterion of
    :func:`mixedjax.criterion.objective`.
    """
    theta, sigma = phi[:-1], phi[-1]
    logdet_z, logdet_x, pwrss = parts(theta, A)
    s2 = sigma ** 2
    dev = logdet_z + pwrss / s2 + A.n * jnp.log(2.0 * math.pi * s2)
    if reml:
        dev = dev + logdet_x - A.p * jnp.log(2.0 * math.pi * s2)
    return dev


def covbeta(phi, A: Blocks):
    """sigma^2 (R_X'R_X)^-1 as a function of phi = (theta, sigma) (lmerTest's
    ``get_covbeta``).

    (R_X'R_X)^-1 is the X block of the inverse of the leading [Z, X] block of M,
    that is of the selected inverse with the weights of that block
    (:func:`mixedjax.factor.inverse`), mapped from the stable basis.
    """
    be = jax_backend()
    theta, sigma = phi[:-1], phi[-1]
    s = A.structure
    F = factor.factorize(theta, A, be)
    w = weights(A, True, jnp, "zx")
    G = factor.inverse(F, w.wm, w.wb, be)
    X = slice(s.q_border, s.q_border + s.p)
    return sigma ** 2 * factor.back_vcov(A.rx, G.Gbb[X, X], be)


def _pinv_sym(H, tol=HESSIAN_TOL):
    """Pseudo-inverse of a symmetric matrix over eigenvalues > tol (lmerTest)."""
    evals, evecs = jnp.linalg.eigh(H)
    pos = evals > tol
    inv = jnp.where(pos, 1.0 / jnp.where(pos, evals, 1.0), 0.0)
    return (evecs * inv) @ evecs.T


def derivatives(phi, A: Blocks, reml: bool = True):
    """(H, C, J) at phi: the Hessian of :func:`varpar_deviance`, :func:`covbeta` and its
    derivatives J (nphi, p, p).

    Both derivatives come from one forward-mode pass over phi (nested ``jacfwd``):
    forward mode through the factorization's custom JVPs compiles markedly faster
    than reverse-over-forward ``jax.hessian`` and shares the first-order tangents of
    the factor between H and J.
    """
    def first(phi):
        return jax.jacfwd(varpar_deviance)(phi, A, reml), covbeta(phi, A)

    (H, J), C = jax.jacfwd(first)(phi), covbeta(phi, A)
    return 0.5 * (H + H.T), C, jnp.moveaxis(J, -1, 0)


def pieces(theta, A: Blocks, reml: bool = True) -> Pieces:
    """beta, C, A = 2 H^+ and dC/dphi at ``theta`` (pure; jit/vmap-able)."""
    be = jax_backend()
    theta = jnp.asarray(theta, jnp.float64)
    sol = factor.solve(factor.factorize(theta, A, be), A, be)
    sigma = jnp.sqrt(sol.pwrss / dof(A, reml, jnp))
    phi = jnp.concatenate([theta, sigma[None]])
    H, C, J = derivatives(phi, A, reml)
    return Pieces(beta=sol.beta, C=C, A=2.0 * _pinv_sym(H), J=J, sigma=sigma)


_derivatives_jit = jax.jit(derivatives, static_argnames=("reml",))


def fit_pieces(result, theta=None, beta=None, sigma=None) -> Pieces:
    """:class:`Pieces` of a fitted :class:`~mixedjax.result.LMMResult` (numpy), cut to
    the real number of fixed effects.  By default at the fit's estimates; pass
    ``theta`` with the ``beta`` and ``sigma`` that go with it to evaluate elsewhere."""
    m = result.model
    p = len(result.fixef)
    if theta is None:
        theta, beta, sigma = result.theta, result.fixef.to_numpy(), result.sigma
    phi = jnp.asarray(np.append(np.asarray(theta, np.float64), sigma))
    H, C, J = (np.asarray(a) for a in _derivatives_jit(phi, m.arrays, reml=m.reml))
    return Pieces(beta=np.asarray(beta), C=C[:p, :p], A=2.0 * np.asarray(_pinv_sym(H)),
                  J=J[:, :p, :p], sigma=float(sigma))


def _combine_df(nu, pos, q, xp=jnp):
    """lmerTest's ``get_Fstat_ddf`` over the entries of ``nu`` flagged by ``pos``."""
    qf = xp.asarray(q, dtype=nu.dtype)
    mean = xp.sum(xp.where(pos, nu, 0.0)) / xp.maximum(qf, 1.0)
    both = pos[1:] & pos[:-1]
    all_equal = xp.all(xp.where(both, xp.abs(xp.diff(nu)) < _EQUAL_TOL, True))
    small = xp.any(pos & (nu <= 2.0))
    E = xp.sum(xp.where(pos, nu / xp.where(pos, nu - 2.0, 1.0), 0.0))
    general = xp.where(small, 2.0, 2.0 * E / (E - qf))
    return xp.where(q == 1, nu[0], xp.where(all_equal, mean, general))


def contest(pc: Pieces, L, rhs=None, xp=jnp) -> SatterthwaiteTest:
    """Satterthwaite F test of L beta = rhs from :class:`Pieces` (lmerTest's
    ``contestMD``; for one row ``contest1D``).  Fixed shapes, no value-dependent
    Python control flow.

    ``xp``: the array module, ``jax.numpy`` (traceable, vmappable) or ``numpy``
    (for the result-level tables: no dispatch or compilation overhead).  ``L``
    (r, p) may be narrower than the padded ``pc.beta``; it is padded with zeros.
    """
    L = xp.atleast_2d(xp.asarray(L, dtype=xp.float64))
    r, p = L.shape
    pad = pc.beta.shape[0] - p
    if pad:
        L = xp.concatenate([L, xp.zeros((r, pad))], axis=1)
    est = L @ pc.beta
    diff = est if rhs is None else est - xp.asarray(rhs, dtype=xp.float64)
    V = L @ pc.C @ L.T
    if r == 1:
        v = V[0, 0]
        g = xp.einsum("i,kij,j->k", L[0], pc.J, L[0])           # grad_phi of l'C l
        ddf = 2.0 * v ** 2 / (g @ pc.A @ g)
        t = diff[0] / xp.sqrt(v)
        F, q = t ** 2, xp.asarray(1, dtype=xp.int32)
    else:
        d, P = xp.linalg.eigh(V)
        d, P = d[::-1], P[:, ::-1]                      # decreasing, as R's eigen
        pos = d > xp.maximum(_EIG_EPS * d[0], 0.0)
        q = xp.sum(pos).astype(xp.int32)
        PtL = P.T @ L
        dsafe = xp.where(pos, d, 1.0)
        # (P'(L beta - rhs))^2 / d over the kept eigenvalues.
        F = xp.sum(xp.where(pos, (P.T @ diff) ** 2 / dsafe, 0.0)) / xp.maximum(q, 1)
        g = xp.einsum("mi,kij,mj->mk", PtL, pc.J, PtL)          # (r, nphi)
        nu = 2.0 * dsafe ** 2 / xp.einsum("mk,kl,ml->m", g, pc.A, g)
        ddf = _combine_df(nu, pos, q, xp)
        t = xp.asarray(xp.nan)
    pval = _f_sf(F, q, ddf, xp)
    return SatterthwaiteTest(estimate=est, vcov=V, F=F, t=t, numdf=q, dendf=ddf, p_value=pval)


def _f_sf(F, d1, d2, xp=jnp):
    """Upper tail of the F(d1, d2) distribution (chi-square / d1 when d2 = inf)."""
    if xp is np:
        from scipy import special
        return special.chdtrc(d1, d1 * F) if np.isinf(d2) else special.fdtrc(d1, d2, F)
    d1 = jnp.asarray(d1, jnp.float64)
    finite = jnp.isfinite(d2)
    x = d2 / (d2 + d1 * F)
    beta_tail = jax.scipy.special.betainc(d2 / 2.0, d1 / 2.0, jnp.where(finite, x, 0.5))
    chi_tail = jax.scipy.special.gammaincc(d1 / 2.0, d1 * F / 2.0)
    return jnp.where(finite, beta_tail, chi_tail)


@functools.partial(jax.jit, static_argnames=("reml",))
def satterthwaite_test(theta, A: Blocks, reml: bool, L, rhs=None) -> SatterthwaiteTest:
    """Satterthwaite t/F test of ``L beta = rhs`` (rhs = 0 by default) at ``theta``.

    ``theta``: the fitted theta (lme4's layout); ``A``: the model's
    :class:`~mixedjax.crossprod.Blocks` (possibly with a simulated response); ``reml``: whether the fit is REML (static); ``L``: (r, p_real)
    contrast matrix in the columns of ``result.fixef``.  beta-hat and sigma are
    recomputed from ``theta`` and ``A``, so a batch of refits needs only its thetas.

    Returns a :class:`SatterthwaiteTest`.  No Python control flow depends on
    values, so it vmaps over ``theta`` and ``A``::

        batched = jax.vmap(satterthwaite_test, in_axes=(0, 0, None, None))
        res = batched(thetas, arrays_batch, True, L)   # res.F, res.dendf: (nsim,)

    ``in_axes=(0, None, None, None)`` evaluates many thetas on one data set; for
    simulated responses build the batch of arrays with
    ``jax.vmap(lambda y: with_response(A, model.response_map, y, jax_backend()))(Y)``
    (:func:`mixedjax.crossprod.with_response`).
    Equals lmerTest's ``contestMD`` (``contest1D`` when r = 1) up to its
    finite-difference error.  With ``rhs`` the statistic uses L beta - rhs, which is
    lmerTest's L (beta - L^+ rhs) whenever the hypotheses are consistent.
    """
    return contest(pieces(theta, A, reml), L, rhs)
