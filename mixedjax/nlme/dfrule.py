"""Denominator degrees of freedom of lme's fixed-effects t-tests (nlme's rule).

Pinheiro & Bates (2000), section 2.4.2: with Q nested grouping levels, the
data split into strata (outermost level, ..., innermost level, residual) with
M_1, M_2 - M_1, ..., N - M_Q degrees of freedom (M_q the number of groups at
level q).  A fixed-effects column is estimated in the stratum just inside the
innermost level within whose groups it varies (a column that is constant
within every group of level 1 belongs to level 1, one that varies within some
innermost group to the residual stratum).  Each stratum loses one degree of
freedom per column estimated in it; the intercept (any constant column) takes
one from the outermost stratum and gets the largest remaining stratum's df.
Without an intercept every inner stratum gains one, exactly as nlme's
``getFixDF`` computes it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["containment_df"]


def _constant(x: np.ndarray, tol: float = np.sqrt(np.finfo(float).eps)) -> bool:
    """nlme's test for a constant column (relative to its first value)."""
    if len(x) == 0:
        return True
    rel = x if x[0] == 0 else x / x[0] - 1
    return bool(np.all(np.abs(rel) < tol))


def _varies_within(x: np.ndarray, codes: np.ndarray) -> bool:
    """True when x takes more than one value inside some group."""
    return bool((pd.Series(x).groupby(codes).nunique() > 1).any())


def containment_df(X: np.ndarray, level_codes: list[np.ndarray]) -> np.ndarray:
    """Denominator df of each column of X (level codes outermost first)."""
    N, p = X.shape
    ngrps = [len(np.unique(c)) for c in level_codes]
    sizes = np.diff(np.concatenate([[0], ngrps, [N]])).astype(np.int64)
    const = np.array([_constant(X[:, j]) for j in range(p)], dtype=bool)
    df = np.zeros(p, dtype=np.int64)
    if not np.any(~const):
        df[:] = sizes.max()
        return df
    stratum = np.zeros(p, dtype=np.int64)
    for j in np.flatnonzero(~const):
        inner = [q + 1 for q, codes in enumerate(level_codes)
                 if _varies_within(X[:, j], codes)]
        stratum[j] = max(inner, default=0)
    for j in np.flatnonzero(~const):
        sizes[stratum[j]] -= 1
    if np.any(const):
        sizes[0] -= 1
    else:
        sizes[1:] += 1
    df[~const] = sizes[stratum[~const]]
    df[const] = sizes.max()
    return df
