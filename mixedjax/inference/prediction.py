"""Prediction intervals for new observations (or the fitted rows) of a fit.

The prediction ``x'beta_hat + z'b_hat`` of a new observation
``y0 = x'beta + z'b + e0`` has prediction error variance (Henderson 1975,
"Best linear unbiased estimation and prediction under a selection model",
Biometrics 31; with the spherical random effects u of Bates et al. 2015, JSS
67(1), eqs. 16-18)

    Var(yhat0 - y0) = sigma^2 [a' M^-1 a + 1],   a = [Lambda' z; x],
    M = [[Lambda'Z'WZ Lambda + I, Lambda'Z'WX], [X'WZ Lambda, X'WX]],

where M is the penalized least-squares matrix whose blocked Cholesky factor
the fit already holds.  a' M^-1 a = |L^-1 a|^2 is one triangular solve per row.
This is the exact joint error of beta_hat and the BLUPs, including their
covariance, for the estimated (theta, sigma); unlike merTools'
``predictInterval``, which simulates from vcov(beta) and the conditional
variances of the BLUPs (lme4's ``condVar``) separately, it needs no simulation
and ignores no covariance.  Like merTools, it treats theta and sigma as known
(their uncertainty is not propagated) and uses normal quantiles.

Random-effects terms left out by ``re_form``, and levels not seen in the fit
(``allow_new_levels=True``), are predicted at their mean 0; their effect is
then that of a new, unobserved group, independent of the data, and adds
z' Sigma_t z to the variance when ``include_re_variance`` is True (a
prediction for a new group) or nothing when it is False (the interval is then
for the population-level mean, from vcov(beta) alone).  ``include_residual``
adds sigma^2 (a new observation with prior weight 1) rather than giving an
interval for the conditional mean.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import solve_triangular

from .. import factor
from ..frames import as_pandas
from ..backend import NUMPY
from ..design import newdata_matrix, terms_in_re_form
from ..levels import map_levels
from .confint import check_level

__all__ = ["predict_interval"]

_CHUNK = 2048  # rows per triangular solve, to bound memory for large newdata


def predict_interval(result, newdata: pd.DataFrame | None = None, level: float = 0.95,
                     re_form=None, include_residual: bool = True,
                     include_re_variance: bool = True,
                     allow_new_levels: bool = False) -> pd.DataFrame:
    """Prediction intervals: DataFrame with columns ``fit``, ``se``, ``lwr``, ``upr``.

    ``fit`` is :meth:`~mixedjax.result.LMMResult.predict` (same ``newdata``,
    ``re_form``, ``allow_new_levels``); ``se`` is the standard deviation of the
    prediction error the interval uses (see the module docstring for what it
    includes), and ``lwr``, ``upr`` = fit -/+ qnorm((1 + level) / 2) * se.
    """

    level = check_level(level)
    for name, flag in (("include_residual", include_residual),
                       ("include_re_variance", include_re_variance),
                       ("allow_new_levels", allow_new_levels)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    newdata = None if newdata is None else as_pandas(newdata, "newdata")
    include = terms_in_re_form(re_form, result.model.design.terms)
    fit = result.predict(newdata, re_form=re_form, allow_new_levels=allow_new_levels)
    X, rows = _model_rows(result, newdata, include, include_re_variance, allow_new_levels)
    scaled = _quadratic_form(result, X, rows)
    if include_re_variance:
        scaled = scaled + _new_group_variance(result, rows)
    if include_residual:
        scaled = scaled + 1.0
    var = result.sigma ** 2 * scaled
    se = np.sqrt(var)
    z = stats.norm.ppf((1.0 + level) / 2.0)
    values = fit.to_numpy()
    return pd.DataFrame({"fit": values, "se": se, "lwr": values - z * se,
                         "upr": values + z * se}, index=fit.index)


class _TermRows:
    """Per-row random-effects inputs of one term: level codes (-1: predicted at 0)
    and model-matrix rows; ``Z`` is None when the term is not needed."""

    def __init__(self, codes, Z, included: bool):
        self.codes, self.Z, self.included = codes, Z, included


def _model_rows(result, newdata, include, need_excluded: bool, allow_new_levels: bool):

    d = result.model.design
    if newdata is None:
        rows = [_TermRows(t.codes if inc else np.full(d.n, -1), t.Z, inc)
                for t, inc in zip(d.terms, include)]
        return d.X, rows
    X = newdata_matrix(d.x_design_info, newdata, "fixed effects")[:, d.x_perm][:, d.x_keep]
    rows = []
    for t, inc in zip(d.terms, include):
        if not inc and not need_excluded:
            rows.append(_TermRows(np.full(len(newdata), -1), None, False))
            continue
        Z = newdata_matrix(t.design_info, newdata, f"random term ({t.expr} | {t.group_name})")
        codes = (map_levels(t, newdata, allow_new_levels) if inc
                 else np.full(len(newdata), -1))
        rows.append(_TermRows(codes, Z, inc))
    return X, rows


def _new_group_variance(result, rows) -> np.ndarray:
    """sum over terms predicted at 0 of z' Lambda Lambda' z (units of sigma^2)."""
    out = 0.0
    for tr, lam in zip(rows, result._lambdas):
        if tr.Z is None:
            continue
        unseen = tr.codes < 0
        out = out + np.where(unseen, np.sum((tr.Z @ lam) ** 2, axis=1), 0.0)
    return out


def _quadratic_form(result, X, rows) -> np.ndarray:
    """a' M^-1 a for every row, from the blocked factor of the fit (module docstring)."""
    n = X.shape[0]
    out = np.empty(n)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        out[sl] = _quadratic_form_chunk(result, X[sl], [_slice_rows(tr, sl) for tr in rows])
    return out


def _slice_rows(tr: _TermRows, sl: slice) -> _TermRows:
    return _TermRows(tr.codes[sl], None if tr.Z is None else tr.Z[sl], tr.included)


def _quadratic_form_chunk(result, X, rows) -> np.ndarray:
    """a' M^-1 a for a chunk of rows (:func:`mixedjax.factor.row_norms`), with a in
    the factor's coordinates: Lambda' z placed at each term's level columns (zero
    where a term is predicted at 0), X in the stable basis."""
    m = result.model
    s, place, A = m.structure, m.placement, m.blocks
    N = X.shape[0]
    lams = result._lambdas
    first = rows[0]
    known0 = first.included & (first.codes >= 0)
    level = np.where(known0, first.codes, 0)
    a0 = np.zeros((N, s.k[0]))
    if np.any(known0):
        a0[known0] = first.Z[known0] @ lams[0]
    mid = np.zeros((N, s.n_cl * s.s))
    bor = np.zeros((N, s.q_border))
    starts = {t: st for t, st, _, _ in s.middle_segments + s.border_segments}
    for t, (tr, lam) in enumerate(zip(rows, lams)):
        if t == 0 or tr.Z is None:
            continue
        known = tr.included & (tr.codes >= 0)
        if not np.any(known):
            continue
        k, codes, idx = s.k[t], tr.codes[known], np.flatnonzero(known)
        vals = tr.Z[known] @ lam                              # Lambda' z, (rows, k)
        if t in s.middle:
            base = place.cluster[t][codes] * s.s + starts[t] + place.slot[t][codes] * k
            mid[idx[:, None], base[:, None] + np.arange(k)] = vals
        else:
            bor[idx[:, None], starts[t] + codes[:, None] * k + np.arange(k)] = vals
    if X.shape[1]:
        q = solve_triangular(A.rx, X.T, trans="T", lower=False).T      # X R^-1
    else:
        q = X
    with np.errstate(invalid="ignore", divide="ignore"):
        F = factor.factorize(result.theta, A, NUMPY)
        return factor.row_norms(F, A, level, a0, np.concatenate([mid, bor, q], axis=1), NUMPY,
                                coupling=m.coupling)
