"""Confidence intervals for all parameters of a fit, as lme4's ``confint.merMod``.

Three methods:

* ``"profile"`` (lme4's default): likelihood-profile intervals.  As lme4's
  ``profile.merMod`` (which calls ``devfun2`` after ``refitML``), the profile is
  that of the maximum-likelihood deviance, also for REML fits, around the ML
  estimates.  For a parameter psi the signed square root of the change in
  deviance,

      zeta(v) = sign(v - psi_hat) sqrt(d_prof(v) - d(psi_hat)),
      d_prof(v) = min { d(phi) : psi(phi) = v },

  is set equal to -/+ qnorm((1 + level) / 2) (Bates et al. 2015, JSS 67(1),
  section 5.1).  lme4 evaluates zeta on a grid and interpolates with splines;
  here each bound is found by Newton's method on zeta, whose derivative is exact
  by the envelope theorem (d d_prof / dv is the partial derivative of the
  deviance in v at the constrained optimum), and the constrained optimum is
  found by the damped Newton method of :mod:`mixedjax.optim` with exact
  Hessians.
* ``"wald"``: estimate -/+ qnorm((1 + level) / 2) * standard error for the fixed
  effects; NaN for the variance parameters, as lme4.
* ``"boot"``: parametric-bootstrap percentile intervals from
  :meth:`~mixedjax.result.LMMResult.bootstrap` (lme4's ``bootMer``).

The profiled deviance (one compiled function for every parameter and for the
ML optimum itself, so a REML fit needs no separate ML refit):

* the deviance with beta at its conditional estimate and sigma explicit, as
  lme4's ``devfun2``: d(theta, sigma) = log|L_theta|^2 - sum log w
  + n log(2 pi sigma^2) + pwrss(theta) / sigma^2 (JSS eqs. 34-35 before sigma
  is profiled out);
* each term's covariance is sigma^2 Lambda Lambda' = D C D with D = diag(sd) and
  C = L_C L_C' the correlation matrix, so Lambda = D L_C / sigma is lower
  triangular without a Cholesky factorization of a possibly singular matrix;
* free coordinates y: sd = y^2 (reaches 0 smoothly), cor = tanh(y),
  sigma = exp(y); a profiled sd, cor or sigma replaces its coordinate by the
  fixed value;
* a profiled fixed effect beta_j = c is the model for y - c x_j without column
  j of X, which changes only Z'y, X'y, y'y and the column's cross-products in
  the precomputed arrays (:func:`fix_beta`).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from .. import factor
from ..backend import jax_backend
from ..compiled import newton
from ..criterion import parts
from ..crossprod import Blocks
from ..structure import Structure, tril_indices
from .params import parameter_names, sdcor_names, sdcor_values

__all__ = ["confint", "percent_labels", "profile_zeta"]

_METHODS = {"profile": "profile", "wald": "wald", "boot": "boot", "bootstrap": "boot"}
# Kinds of the sd/cor/sigma coordinates.
_SD, _COR, _SIGMA = 0, 1, 2
# A correlation profile that has not reached the cutoff by |cor| = 1 - 1e-9 ends at +/-1.
_COR_CAP = math.atanh(1.0 - 1e-9)
_T_MAX = 700.0  # |t| beyond this is out of floating-point range on the value scale


# ----------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------
def confint(result, method: str = "profile", level: float = 0.95, parm=None,
            nsim: int = 500, key=None, boot_type: str = "percentile") -> pd.DataFrame:
    """Confidence intervals for the parameters of a fit, as lme4's ``confint``.

    Rows are named as lme4 names them with ``oldNames = FALSE``
    (``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``, ``sigma``, then
    the fixed effects); columns are R's percent labels (``"2.5 %"``, ``"97.5 %"``).

    ``parm``: a name, a list of names, ``"theta_"`` (all variance parameters) or
    ``"beta_"`` (all fixed effects), as lme4; default all.  ``nsim``, ``key`` and
    ``boot_type`` (``"percentile"`` or ``"basic"``) apply to ``method="boot"``.
    """
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(f"unknown confint method {method!r}; use 'profile', 'wald' "
                         "or 'boot'")
    method = _METHODS[method.lower()]
    level = check_level(level)
    names = _select_parm(result, parm)
    if method == "wald":
        lower, upper = _wald(result, names, level)
    elif method == "profile":
        lower, upper = _profile_intervals(result, names, level)
    else:
        return _boot(result, names, level, nsim, key, boot_type)
    return pd.DataFrame({lab: col for lab, col in zip(percent_labels(level), (lower, upper))},
                        index=pd.Index(names))


def check_level(level, name: str = "level") -> float:
    """Validate a probability argument (a confidence level, a test's alpha) and return it as a float."""
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(level).__name__}")
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {level}")
    return level


def _select_parm(result, parm) -> list[str]:
    all_names = parameter_names(result)
    n_var = len(sdcor_names(result.model.design.terms))
    if parm is None:
        return all_names
    if isinstance(parm, str):
        if parm == "theta_":
            return all_names[:n_var]
        if parm == "beta_":
            return all_names[n_var:]
        parm = [parm]
    parm = list(parm)
    unknown = [p for p in parm if p not in all_names]
    if unknown:
        raise ValueError(f"unknown parameter name(s) {unknown}; the parameters are "
                         f"{all_names}")
    return parm


def percent_labels(level: float) -> list[str]:
    """R's column labels of ``confint``: ``format(100 * a, digits = 3)`` plus ``" %"``.

    R formats the two percentages with a common number of decimals, the fewest
    that show each of them to 3 significant digits (``"2.5 %"``, ``"97.5 %"``;
    ``"0.05 %"``, ``"99.95 %"``).
    """
    pct = [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0]
    decimals = 0
    for x in pct:
        text = f"{float(f'{x:.3g}'):.15f}".rstrip("0")
        decimals = max(decimals, len(text.split(".")[1]) if "." in text else 0)
    return [f"{x:.{decimals}f} %" for x in pct]


# ----------------------------------------------------------------------------------
# Wald and bootstrap
# ----------------------------------------------------------------------------------
def _wald(result, names, level):
    z = stats.norm.ppf((1.0 + level) / 2.0)
    beta, se = result.fixef, result.stderr
    lower = [beta[n] - z * se[n] if n in beta.index else np.nan for n in names]
    upper = [beta[n] + z * se[n] if n in beta.index else np.nan for n in names]
    return np.asarray(lower, float), np.asarray(upper, float)


def _boot(result, names, level, nsim, key, boot_type):
    if boot_type not in ("percentile", "basic", "perc"):
        raise ValueError(f"unknown boot_type {boot_type!r}; use 'percentile' or 'basic'")
    boot = result.bootstrap(nsim=nsim, key=key)
    table = boot.intervals(level, method="basic" if boot_type == "basic" else "percentile")
    table = table.loc[names]
    table.columns = percent_labels(level)
    return table


# ----------------------------------------------------------------------------------
# Profile: pure JAX pieces
# ----------------------------------------------------------------------------------
def _kinds(structure: Structure) -> np.ndarray:
    """_SD / _COR for each theta position (lme4's layout), then _SIGMA."""
    out = []
    for k in structure.k:
        rows, cols = tril_indices(k)
        out.extend(np.where(rows == cols, _SD, _COR))
    return np.asarray(out + [_SIGMA])


def sdcor_to_theta(s, structure: Structure):
    """(sds and correlations per term, then sigma) -> (theta, sigma).

    Lambda = diag(sd) L_C / sigma with L_C the Cholesky factor of the term's
    correlation matrix: lower triangular, and zero rows for zero sds.
    """
    sigma = s[-1]
    parts = []
    for k, sl in zip(structure.k, structure.theta_slices):
        vals = s[sl]
        if k == 1:
            parts.append(vals / sigma)
            continue
        rows, cols = tril_indices(k)
        diag = rows == cols
        off_r, off_c = rows[~diag], cols[~diag]
        cor = vals[np.flatnonzero(~diag)]
        C = jnp.eye(k, dtype=s.dtype).at[off_r, off_c].set(cor).at[off_c, off_r].set(cor)
        L = vals[np.flatnonzero(diag)][:, None] * jax_backend().chol(C)
        parts.append(L[rows, cols] / sigma)
    return jnp.concatenate(parts), sigma


def ml_deviance(theta, sigma, A: Blocks):
    """-2 log-likelihood at (theta, sigma) with beta at its conditional estimate
    (lme4's ``devfun2`` for linear mixed models)."""
    logdet_z, _, pwrss = parts(theta, A)
    return logdet_z - A.ldw + A.n * jnp.log(2.0 * math.pi * sigma ** 2) + pwrss / sigma ** 2


def fix_beta(A: Blocks, jb, c) -> Blocks:
    """Blocks of the model with fixed effect ``jb`` held at ``c`` (unchanged for jb < 0).

    In the stable basis (X = Q R, r = y - Q Q'y; :mod:`mixedjax.crossprod`),
    beta_j = a'(beta~ + Q'y) with a = R^-T e_j, so holding beta_j = c holds the
    coordinate u'beta~ = v, u = a / |a|, v = (c - a'Q'y) / |a|.  With a Householder
    reflection H mapping e_1 to u, Q H = [Q u, Q U2]: the model is r - v Q u on the
    columns Q U2.  So the X columns of the blocks are rotated by H, the first
    becomes a padding column (unit diagonal, no cross-products: it leaves the ML
    criterion unchanged), and the response parts take the shift: Z'y less v Z'Q u,
    Q'y stays 0, y'y gains v^2.
    """
    s = A.structure
    p, qb = s.p, s.q_border
    if p == 0:
        return A
    on = jb >= 0
    e = jnp.where(on, jax.nn.one_hot(jnp.maximum(jb, 0), p, dtype=jnp.float64), 0.0)
    a = jax.scipy.linalg.solve_triangular(A.rx, e, trans="T", lower=False)
    na = jnp.sqrt(jnp.sum(a * a))
    u = a / jnp.where(on, na, 1.0)
    v = jnp.where(on, (c - a @ A.beta0) / jnp.where(on, na, 1.0), 0.0)
    e1 = jnp.zeros(p).at[0].set(1.0)
    w = e1 - u
    ww = w @ w
    H = jnp.where(on & (ww > 1e-30), jnp.eye(p) - 2.0 * jnp.outer(w, w) / jnp.where(ww > 0, ww, 1.0),
                  jnp.eye(p))
    keep = jnp.where(on, jnp.arange(p) > 0, True).astype(jnp.float64)
    X = slice(qb, qb + p)
    # Border columns [Z_b, Q, r]: rotate the Q columns, drop the first when held.
    b0x = (A.b0[..., X] @ H) * keep
    b0y = A.b0[..., -1] - v * (A.b0[..., X] @ H)[..., 0]
    b0 = A.b0.at[..., X].set(b0x).at[..., -1].set(b0y)
    abm = A.abm
    if s.n_cl:
        rot = jnp.einsum("ij,cis->cjs", H, A.abm[:, X, :])
        abm = A.abm.at[:, X, :].set(rot * keep[None, :, None])
        abm = abm.at[:, -1, :].set(A.abm[:, -1, :] - v * rot[:, 0, :])
    zx = A.abb[:qb, X] @ H
    abb = A.abb.at[:qb, X].set(zx * keep).at[X, :qb].set((zx * keep).T)
    zy = A.abb[:qb, -1] - v * zx[:, 0]
    yy = A.abb[-1, -1] + v * v
    abb = abb.at[:qb, -1].set(zy).at[-1, :qb].set(zy).at[-1, -1].set(yy)
    return A.replace(b0=b0, abm=abm, abb=abb)


def _natural(y, kinds):
    return jnp.where(kinds == _SD, y ** 2, jnp.where(kinds == _COR, jnp.tanh(y), jnp.exp(y)))


def _free_coordinates(s, kinds) -> np.ndarray:
    """Inverse of :func:`_natural` (a NaN correlation of a zero sd starts at 0)."""
    s = np.nan_to_num(np.asarray(s, float), nan=0.0)
    cor = np.arctanh(np.clip(s, -1 + 1e-12, 1 - 1e-12))
    sd = np.sqrt(np.maximum(s, 0.0))
    return np.where(kinds == _SD, sd, np.where(kinds == _COR, cor,
                                               np.log(np.where(kinds == _SIGMA, s, 1.0))))


def profile_objective(y, v, j, A):
    """ML deviance with parameter ``j`` held at ``v``.

    Parameters are numbered as lme4's ``confint`` rows: the sd/cor coordinates and
    sigma (``j < len(y)``), then the fixed effects; ``j = -1`` holds none.  ``y``
    are the free coordinates of sds, correlations and sigma.
    """
    kinds = _kinds(A.structure)
    s = jnp.where(jnp.arange(y.shape[0]) == j, v, _natural(y, kinds))
    theta, sigma = sdcor_to_theta(s, A.structure)
    return ml_deviance(theta, sigma, fix_beta(A, j - y.shape[0], v))


class _Point(NamedTuple):
    deviance: jax.Array
    ddv: jax.Array        # d deviance / d v at the constrained optimum
    y: jax.Array          # the optimum in the free coordinates
    converged: jax.Array
    hess: jax.Array       # Hessian in y
    beta: jax.Array       # conditional beta-hat at the optimum (padded length)
    se: jax.Array         # its standard errors with sigma at the optimum


@jax.jit
def _profile_point(y0, v, j, A) -> _Point:
    """Minimize the deviance with parameter ``j`` held at ``v``.

    d deviance / dv is the partial derivative at the optimum (envelope theorem),
    taken in forward mode.  beta-hat and its standard errors (sigma^2 (R_X'R_X)^-1,
    JSS eq. 54) at the optimum serve the ML estimates (``j = -1``).
    """
    opt = newton(profile_objective, y0, v, j, A, max_iter=100)
    _, ddv = jax.jvp(lambda w: profile_objective(opt.x, w, j, A), (v,), (jnp.ones_like(v),))
    s = A.structure
    theta, sigma = sdcor_to_theta(_natural(opt.x, _kinds(s)), s)
    be = jax_backend()
    sol = factor.solve(factor.factorize(theta, A, be), A, be)
    Li = be.tri_inv(jnp.tril(sol.rxx))
    se = sigma * jnp.sqrt(jnp.diagonal(factor.back_vcov(A.rx, Li.T @ Li, be)))
    return _Point(opt.fun, ddv, opt.x, opt.converged, opt.hess, sol.beta, se)


# ----------------------------------------------------------------------------------
# Profile: zeta along one parameter, and its roots
# ----------------------------------------------------------------------------------
class _Axis(NamedTuple):
    """One profiled parameter on a root-finding scale t (log sd, atanh cor,
    log sigma, or standardized beta), with zeta and dzeta/dt at t."""

    t_hat: float
    zeta: Callable[[float], tuple[float, float]]
    to_value: Callable[[float], float]
    step: float                 # approximate change in t per unit of zeta
    t_start: float              # first point when t_hat is -inf (an sd estimated at 0)
    lower_limit: float | None   # value where the profile stops (sd: 0, cor: -1)
    upper_limit: float | None
    reset: Callable[[], None]   # restart the warm starts from the estimates


class _Profiler:
    """Profiles of the ML deviance of a fit's model.

    The ML optimum is found with the same compiled function, holding nothing
    fixed, from the fit's estimates (a REML fit's estimates are a close start).
    """

    def __init__(self, result):
        self.A = result.model.arrays
        self.kinds = _kinds(self.A.structure)
        y0 = _free_coordinates(sdcor_values(result), self.kinds)
        # Starts keep every sd at least 1e-4 sigma: sd = y^2 has a stationary point
        # at y = 0, where Newton would stay although a positive sd fits better.
        self._y_floor = math.sqrt(1e-4 * result.sigma)
        opt = self._call(y0, 0.0, -1)
        if not opt.converged:
            raise RuntimeError("the maximum-likelihood refit for the profile did not "
                               "converge")
        self.dev_ml, self.y_hat, self._hess = float(opt.deviance), opt.y, opt.hess
        self.s_hat = np.array(_natural(opt.y, self.kinds))
        # An sd that converged to the boundary (y^2 ~ 0) is 0, as lme4 reports it.
        tiny = (self.kinds == _SD) & (self.s_hat < 1e-6 * self.s_hat[-1])
        self.s_hat[tiny] = 0.0
        self.s_hat[self.kinds == _COR] = _zero_sd_cor(self.s_hat, self.A.structure)
        p = result.model.design.p
        self.beta_hat, self.se_ml = opt.beta[:p], opt.se[:p]

    def _call(self, y0, v, j) -> _Point:
        y0 = np.where(self.kinds == _SD, np.maximum(np.abs(y0), self._y_floor), y0)
        y0 = _feasible_start(y0, v, j, self.kinds, self.A.structure)
        out = _profile_point(jnp.asarray(y0), jnp.float64(v), jnp.int32(j), self.A)
        return _Point(*(np.asarray(a) for a in out))

    def point(self, j: int, v: float, y0):
        """(deviance, d deviance / dv, optimum) with parameter j held at v."""
        pt = self._call(y0, v, j)
        if not pt.converged:  # a far-away warm start: retry from the estimates
            pt2 = self._call(self.y_hat, v, j)
            if not np.isfinite(pt.deviance) or pt2.deviance < pt.deviance:
                pt = pt2
        return float(pt.deviance), float(pt.ddv), pt.y

    def zeta_from(self, dev, ddv, v, v_hat):
        if not np.isfinite(dev):
            return math.nan, math.nan
        delta = max(dev - self.dev_ml, 0.0)
        z = math.copysign(math.sqrt(delta), v - v_hat)
        dz = ddv / (2.0 * z) if z != 0.0 else math.inf
        return z, dz

    def _step(self, j: int) -> float:
        """Approximate change in t per unit of zeta, from the Hessian in y."""
        with np.errstate(all="ignore"):
            cov = np.linalg.pinv(self._hess)
            # dt/dy: sd = y^2 with t = log sd gives 2 / y; cor and sigma give 1.
            dt = 2.0 / abs(self.y_hat[j]) if self.kinds[j] == _SD else 1.0
            var = 2.0 * dt ** 2 * cov[j, j]
        return min(math.sqrt(var), 3.0) if np.isfinite(var) and var > 0 else 1.0

    def axis(self, j: int) -> _Axis:
        """The axis of parameter j (lme4's confint row order)."""
        nsd = len(self.kinds)
        state = {"y": self.y_hat.copy()}
        reset = lambda: state.update(y=self.y_hat.copy())  # noqa: E731
        if j >= nsd:
            b_hat, se = float(self.beta_hat[j - nsd]), float(self.se_ml[j - nsd])
            to_value, dv_dt, t_hat, step = (lambda t: b_hat + se * t), (lambda t: se), 0.0, 1.0
            v_hat, limits = b_hat, (None, None)
        else:
            kind, v_hat = self.kinds[j], float(self.s_hat[j])
            if kind == _COR:
                to_value, dv_dt = math.tanh, (lambda t: 1.0 - math.tanh(t) ** 2)
                t_hat = math.atanh(float(np.clip(v_hat, -1 + 1e-12, 1 - 1e-12)))
            else:
                to_value = dv_dt = lambda t: math.exp(min(t, 700.0))  # noqa: E731
                t_hat = math.log(v_hat) if v_hat > 0 else -math.inf
            step = self._step(j)
            limits = {_SD: (0.0, None), _COR: (-1.0, 1.0), _SIGMA: (None, None)}[kind]

        def zeta(t):
            finite = np.isfinite(t)
            v = to_value(t) if finite else 0.0      # t = -inf: an sd of 0
            dev, ddv, y = self.point(j, v, state["y"])
            state["y"] = y
            z, dz = self.zeta_from(dev, ddv, v, v_hat)
            return z, dz * (dv_dt(t) if finite else 0.0)

        # An sd estimated at 0 has no log-scale estimate: start at the residual sd.
        t_start = math.log(float(self.s_hat[nsd - 1]))
        return _Axis(t_hat, zeta, to_value, step, t_start, *limits, reset=reset)


def _feasible_start(y, v, j, kinds, structure) -> np.ndarray:
    """A start whose correlation matrices are positive definite with cor j = v.

    With three or more columns a held correlation can make the others
    inconsistent; they are shrunk toward 0 (where any |v| < 1 is feasible).
    """
    if not 0 <= j < len(kinds) or kinds[j] != _COR:
        return y
    y = np.array(y, float)
    for k, sl in zip(structure.k, structure.theta_slices):
        pos = np.arange(sl.start, sl.stop)
        if k < 3 or j not in pos:
            continue
        rows, cols = tril_indices(k)
        r_off, c_off, off = rows[rows != cols], cols[rows != cols], pos[rows != cols]
        held = off == j
        cor0 = np.tanh(y[off])
        for shrink in (1.0, 0.5, 0.25, 0.125, 0.0):
            vals = np.where(held, v, shrink * cor0)
            C = np.eye(k)
            C[r_off, c_off] = vals
            C[c_off, r_off] = vals
            if np.linalg.eigvalsh(C)[0] > 1e-10:
                y[off[~held]] = np.arctanh(vals[~held])
                break
    return y


def _zero_sd_cor(s, structure) -> np.ndarray:
    """The correlations of ``s``, NaN where one of the two sds is 0 (as lme4)."""
    out = []
    for k, sl in zip(structure.k, structure.theta_slices):
        rows, cols = tril_indices(k)
        vals = s[sl]
        sd = vals[rows == cols]
        for r, c, v in zip(rows, cols, vals):
            if r != c:
                out.append(v if sd[r] > 0 and sd[c] > 0 else math.nan)
    return np.asarray(out, float)


def _bound(axis: _Axis, direction: int, crit: float) -> float:
    """The value where zeta = direction * crit, found by safeguarded Newton in t."""
    target = direction * crit
    axis.reset()
    # At the lower end of an sd (0) or at |cor| = 1 the profile may stay short of
    # the cutoff: the interval then ends there, as lme4's does.
    limit_value = axis.lower_limit if direction < 0 else axis.upper_limit
    if limit_value is not None:
        t_limit = (-math.inf if limit_value == 0.0 else direction * _COR_CAP)
        z_lim, _ = axis.zeta(t_limit)
        axis.reset()
        if direction * z_lim <= crit:
            return limit_value
        if not np.isfinite(z_lim):
            t_limit = direction * math.inf
    else:
        t_limit = direction * math.inf
    lo, hi = (axis.t_hat, t_limit) if direction > 0 else (t_limit, axis.t_hat)
    t = axis.t_hat + direction * crit * axis.step if np.isfinite(axis.t_hat) else axis.t_start
    expand = max(axis.step * crit, 0.5)
    last_good = axis.t_hat if np.isfinite(axis.t_hat) else axis.t_start
    for _ in range(100):
        z, dz = axis.zeta(t)
        if not np.isfinite(z):  # an infeasible point: back toward the last good one
            t = 0.5 * (t + last_good)
            continue
        last_good = t
        r = z - target
        if abs(r) < 1e-8:
            return axis.to_value(t)
        if r < 0:
            lo = t
        else:
            hi = t
        if np.isfinite(lo) and np.isfinite(hi) and hi - lo < 1e-12 * (1.0 + abs(t)):
            return axis.to_value(t)
        t_new = t - r / dz if np.isfinite(dz) and dz > 0 else math.nan
        if not lo < t_new < hi:
            if np.isfinite(lo) and np.isfinite(hi):
                t_new = 0.5 * (lo + hi)
            else:
                t_new = lo + expand if np.isfinite(lo) else hi - expand
                expand *= 2.0
        t = t_new if abs(t_new) <= _T_MAX else math.copysign(_T_MAX, t_new)
    return math.nan


def _t_of(prof: _Profiler, j: int, v: float) -> float:
    nsd = len(prof.kinds)
    if j >= nsd:
        return (v - prof.beta_hat[j - nsd]) / prof.se_ml[j - nsd]
    if prof.kinds[j] == _COR:
        return math.atanh(v)
    return math.log(v) if v > 0 else -math.inf


def profile_zeta(result, name: str, values) -> np.ndarray:
    """zeta (signed square root of the change in ML deviance) of parameter ``name``
    at ``values``: the curve lme4's ``profile`` tabulates."""
    names = parameter_names(result)
    if name not in names:
        raise ValueError(f"unknown parameter name {name!r}; the parameters are {names}")
    prof = _Profiler(result)
    j = names.index(name)
    axis = prof.axis(j)
    return np.asarray([axis.zeta(_t_of(prof, j, float(v)))[0]
                       for v in np.atleast_1d(np.asarray(values, float))])


def _profile_intervals(result, names, level):
    crit = float(stats.norm.ppf((1.0 + level) / 2.0))
    prof = _Profiler(result)
    all_names = parameter_names(result)
    lower, upper = [], []
    for name in names:
        j = all_names.index(name)
        if j < len(prof.kinds) and not np.isfinite(prof.s_hat[j]):
            lower.append(math.nan)   # a correlation of a zero sd is not identified
            upper.append(math.nan)
            continue
        axis = prof.axis(j)
        lower.append(_bound(axis, -1, crit))
        upper.append(_bound(axis, +1, crit))
    return np.asarray(lower, float), np.asarray(upper, float)
