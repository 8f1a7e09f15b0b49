"""Variance decomposition of a fit: R² of Nakagawa & Schielzeth and the ICC.

As ``performance::r2_nakagawa`` and ``performance::icc`` (built on
``insight::get_variance``) for a linear mixed model:

* fixed-effect variance: var(X beta-hat) over the rows, with R's n - 1 denominator
  (Nakagawa & Schielzeth 2013, Methods Ecol. Evol. 4(2), 133-142);
* random-effect variance: Johnson's (2014) extension to random slopes, the mean
  over rows of z_i' Sigma_t z_i summed over terms t, where z_i is row i of the
  term's model matrix and Sigma_t its covariance (Johnson 2014, Methods Ecol.
  Evol. 5(9), 944-946); for a random intercept it is the intercept variance;
* residual variance: sigma^2.

Marginal R² = var_f / total, conditional R² = (var_f + var_r) / total with
total = var_f + var_r + var_e; adjusted ICC = var_r / (var_r + var_e),
conditional ICC = var_r / total.

Where the numbers differ from performance 0.10 / insight 0.19: every term counts,
including the later terms of a grouping factor that carries several
(``(1|g) + (0 + x|g)``, ``(x || g)``; insight looks the terms up by grouping
factor name and keeps only the first), and each term uses its own model matrix
(insight takes the columns of X with the same names, and drops random-effect
columns that X lacks, such as ``MachineA`` of ``(0 + Machine | Worker)``).  The
two agree whenever every grouping factor has one term whose columns are columns
of X.

A singular fit (a diagonal element of a relative covariance factor below
``tolerance`` in absolute value, insight's ``.is_singular``) has no random-effect
variance, as in performance: the conditional R² and the ICCs are NaN and the
marginal R² is var_f / (var_f + var_e); ``tolerance=0`` computes them anyway.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._warn import warn_user
from ..structure import diagonal_mask

__all__ = ["get_variance", "random_variance", "r2_nakagawa", "icc", "TOLERANCE"]

TOLERANCE = 1e-5  # insight's default singularity tolerance on theta's diagonal


def _check_tolerance(tolerance) -> float:
    if isinstance(tolerance, (bool, np.bool_)) or not isinstance(
            tolerance, (int, float, np.integer, np.floating)):
        raise TypeError(f"tolerance must be a non-negative number, got "
                        f"{type(tolerance).__name__}")
    tolerance = float(tolerance)
    if not tolerance >= 0.0:
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance}")
    return tolerance


def random_variance(result) -> float:
    """Johnson's (2014) random-effect variance: sum over terms t of
    mean_i z_ti' Sigma_t z_ti, with z_ti row i of term t's model matrix."""
    total = 0.0
    for term, cov in zip(result.model.design.terms, result.covariances):
        Z = np.asarray(term.Z, np.float64)
        total += float(np.mean(np.einsum("ij,jk,ik->i", Z, cov, Z)))
    return total


def _r_var(x: np.ndarray) -> float:
    """Sample variance (n - 1) around R's corrected two-pass mean, so that a constant
    X beta (an intercept-only model) has variance exactly 0, as in R."""
    if x.size < 2:
        return float("nan")
    m = np.mean(x)
    m += np.mean(x - m)
    return float(np.sum((x - m) ** 2) / (x.size - 1))


def _near_singular(result, tolerance: float) -> bool:
    diag = diagonal_mask(result.model.structure)
    return bool(np.any(np.abs(result.theta[diag]) < tolerance))


def get_variance(result, tolerance: float = TOLERANCE) -> pd.Series:
    """The variance components of ``insight::get_variance``: ``var_fixed``,
    ``var_random`` (NaN for a singular fit, see the module notes) and
    ``var_residual``."""
    tolerance = _check_tolerance(tolerance)
    result.model.require_rows("R² and the ICC (the variances of X beta and Z b)")
    var_fixed = _r_var(result.model.design.X @ result.fixef.to_numpy())
    if _near_singular(result, tolerance):
        warn_user("the random-effect variance is not computed: a variance component is "
                  f"zero within tolerance={tolerance:g} (a singular fit); pass a smaller "
                  "tolerance to compute it anyway", RuntimeWarning)
        var_random = float("nan")
    else:
        var_random = random_variance(result)
    return pd.Series({"var_fixed": var_fixed, "var_random": var_random,
                      "var_residual": float(result.sigma) ** 2}, name="variance")


def r2_nakagawa(result, tolerance: float = TOLERANCE) -> pd.Series:
    """Marginal and conditional R² (Nakagawa & Schielzeth 2013; Johnson 2014), as
    ``performance::r2_nakagawa``: a Series ``R2_conditional``, ``R2_marginal``
    whose ``attrs["variance"]`` holds the components."""
    v = get_variance(result, tolerance)
    f, r, e = v["var_fixed"], v["var_random"], v["var_residual"]
    if np.isnan(r):
        out = {"R2_conditional": float("nan"), "R2_marginal": f / (f + e)}
    else:
        total = f + r + e
        out = {"R2_conditional": (f + r) / total, "R2_marginal": f / total}
    s = pd.Series(out, name="R2")
    s.attrs["variance"] = v
    return s


def icc(result, tolerance: float = TOLERANCE) -> pd.Series:
    """Adjusted and conditional intraclass correlation, as ``performance::icc``: a
    Series ``ICC_adjusted`` = var_r / (var_r + var_e) and ``ICC_conditional`` =
    var_r / (var_f + var_r + var_e) whose ``attrs["variance"]`` holds the components."""
    v = get_variance(result, tolerance)
    f, r, e = v["var_fixed"], v["var_random"], v["var_residual"]
    s = pd.Series({"ICC_adjusted": r / (r + e), "ICC_conditional": r / (f + r + e)},
                  name="ICC")
    s.attrs["variance"] = v
    return s
