"""Coefficient tables, F tests per term and custom contrasts with small-sample df.

The layouts follow lmerTest (Kuznetsova, Brockhoff & Christensen 2017, JSS 82(13)):
``summary(m, ddf = ...)``'s coefficient table, ``anova(m, type = ..., ddf = ...)``
and ``contest(m, L)``.  Denominator df methods:

* ``"Satterthwaite"`` (:mod:`.satterthwaite`), exact derivatives;
* ``"Kenward-Roger"`` (:mod:`.kenward_roger`), REML fits only; the coefficient
  table and t tests use the adjusted covariance Φ_A (lmerTest's ``get_KR1D``), F
  tests pbkrtest's scaled F (lmerTest's ``contestMD``);
* ``"residual"``: n - p, as for a linear model;
* ``None``: no df (df = inf): Wald z and chi-square / q tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

from . import hypotheses
from . import kenward_roger as kr
from . import satterthwaite as st

__all__ = ["normalize_ddf", "coef_table", "anova_table", "test_contrast", "DDF_METHODS",
           "Tester", "t_pvalue", "t_quantile"]

DDF_METHODS = ("Satterthwaite", "Kenward-Roger", "residual", None)
_ALIASES = {
    "satterthwaite": "Satterthwaite", "satt": "Satterthwaite", "sat": "Satterthwaite",
    "kenward-roger": "Kenward-Roger", "kenward_roger": "Kenward-Roger",
    "kenwardroger": "Kenward-Roger", "kenward roger": "Kenward-Roger", "kr": "Kenward-Roger",
    "residual": "residual", "resid": "residual",
    "none": None, "normal": None, "asymptotic": None, "z": None,
}


def normalize_ddf(ddf) -> str | None:
    """Canonical name of a df method; case-insensitive aliases ("KR", "satterthwaite")."""
    if ddf is None:
        return None
    if not isinstance(ddf, str):
        raise TypeError(f"ddf must be a string or None, got {type(ddf).__name__}")
    key = ddf.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown ddf method {ddf!r}; use 'Satterthwaite', 'Kenward-Roger', "
                         "'residual' or None")
    return _ALIASES[key]


class Tester:
    """t and F tests of one fit by one df method; the per-fit pieces are computed once.

    ``theta`` (optional) evaluates everything at another theta than the fit's, with
    beta, sigma and vcov recomputed there (to compare with another program at its
    own estimates).
    """

    def __init__(self, result, ddf, theta=None):
        self.result = result
        self.method = normalize_ddf(ddf)
        if self.method == "Kenward-Roger":
            kr.check_reml(result)
        if theta is None:
            self.beta = result.fixef.to_numpy()
            self.sigma = result.sigma
            self._V = result.vcov.to_numpy()
        else:
            theta = np.asarray(theta, np.float64)
            self.beta, self.sigma, self._V = kr.gls_at(result.model.design, theta, result.reml)
        self.p = len(self.beta)
        if self.method == "Satterthwaite":
            self._sat = st.fit_pieces(result, theta, self.beta, self.sigma)
        elif self.method == "Kenward-Roger":
            self._kr = kr.kr_pieces(result, theta, None if theta is None else self.sigma)

    @property
    def vcov(self) -> np.ndarray:
        """The covariance used for t tests (Kenward-Roger: the adjusted one)."""
        return self._kr.PhiA if self.method == "Kenward-Roger" else self._V

    def _resid_df(self) -> float:
        return float(self.result.nobs - self.p)

    def t_test(self, l, rhs: float = 0.0) -> dict:
        """Estimate, SE, df, t and two-sided p of l'beta - rhs (lmerTest's contest1D)."""
        l = np.asarray(l, np.float64).reshape(-1)
        est = float(l @ self.beta)
        if self.method == "Satterthwaite":
            r = st.contest(self._sat, l[None, :], xp=np)
            var, df = float(r.vcov[0, 0]), float(r.dendf)
        elif self.method == "Kenward-Roger":
            var, df = kr.kr_contrast(self._kr, l)
        else:
            var = float(l @ self._V @ l)
            df = self._resid_df() if self.method == "residual" else np.inf
        se = np.sqrt(var)
        t = (est - rhs) / se
        return {"Estimate": est, "Std. Error": se, "df": df, "t value": t,
                "Pr(>|t|)": t_pvalue(t, df)}

    def f_test(self, L, rhs=None) -> dict:
        """lmerTest's ``contestMD`` row: Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F).

        Mean Sq = F sigma^2 (Kenward-Roger: the unscaled F), Sum Sq = NumDF Mean Sq.
        """
        L = np.atleast_2d(np.asarray(L, np.float64))
        sigma2 = self.sigma ** 2
        if L.shape[0] == 0:
            return _f_row(np.nan, np.nan, np.nan, np.nan, np.nan)
        if self.method == "Satterthwaite":
            r = st.contest(self._sat, L, rhs, xp=np)
            F, q, ddf = float(r.F), int(r.numdf), float(r.dendf)
            return _f_row(F * sigma2, q, ddf, F, _f_sf(F, q, ddf))
        if self.method == "Kenward-Roger":
            r = kr.kr_test(self._kr, self.beta, L, rhs)
            return _f_row(r["F_unscaled"] * sigma2, r["numdf"], r["dendf"], r["F"],
                          _f_sf(r["F"], r["numdf"], r["dendf"]))
        F, q = _wald(self.beta, self._V, L, rhs)
        ddf = self._resid_df() if self.method == "residual" else np.inf
        return _f_row(F * sigma2, q, ddf, F, _f_sf(F, q, ddf))


def _wald(beta, V, L, rhs):
    """Wald F = (L b - rhs)' (L V L')^+ (L b - rhs) / q over the rank q of L V L'."""
    diff = L @ beta - (0.0 if rhs is None else np.asarray(rhs, np.float64))
    VL = L @ V @ L.T
    d, P = np.linalg.eigh(VL)
    pos = d > max(np.sqrt(np.finfo(float).eps) * d.max(), 0.0)
    q = int(pos.sum())
    return float(np.sum((P[:, pos].T @ diff) ** 2 / d[pos]) / q), q


def t_pvalue(t: float, df: float) -> float:
    """Two-sided p-value of t on df degrees of freedom (normal for df = inf).

    scipy.special rather than scipy.stats: it loads in a fraction of the time."""
    return float(2.0 * special.stdtr(df, -abs(t)))


def t_quantile(p: float, df: float) -> float:
    return float(special.ndtri(p) if np.isinf(df) else special.stdtrit(df, p))


def _f_sf(F, q, ddf):
    if not np.isfinite(F) or q == 0:
        return np.nan
    if np.isinf(ddf):
        return float(special.chdtrc(q, q * F))
    return float(special.fdtrc(q, ddf, F))


def _f_row(ms, q, ddf, F, p):
    return {"Sum Sq": ms * q if np.isfinite(ms) else np.nan, "Mean Sq": ms, "NumDF": q,
            "DenDF": ddf, "F value": F, "Pr(>F)": p}


def coef_table(result, ddf="Satterthwaite") -> pd.DataFrame:
    """Fixed-effects table as lmerTest's ``summary(m, ddf = ...)``.

    Columns ``Estimate``, ``Std. Error``, ``df``, ``t value``, ``Pr(>|t|)``; with
    Kenward-Roger the standard errors are the adjusted ones.
    """
    tester = Tester(result, ddf)
    eye = np.eye(tester.p)
    rows = [tester.t_test(eye[i]) for i in range(tester.p)]
    return pd.DataFrame(rows, index=pd.Index(result.fixef.index, name=None),
                        columns=["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"])


def anova_table(result, type=3, ddf="Satterthwaite") -> pd.DataFrame:
    """F test of each fixed-effects term, as lmerTest's ``anova(m, type, ddf)``.

    Index: term labels (``V``, ``N``, ``V:N``); columns ``Sum Sq``, ``Mean Sq``,
    ``NumDF``, ``DenDF``, ``F value``, ``Pr(>F)``.  The hypothesis matrices are in
    ``table.attrs["hypotheses"]``.
    """
    normalize_ddf(ddf)
    Ls = hypotheses.contrasts(result, type)
    tester = Tester(result, ddf)
    rows = {label: tester.f_test(L) for label, L in Ls.items()}
    table = pd.DataFrame.from_dict(rows, orient="index",
                                   columns=["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value",
                                            "Pr(>F)"])
    roman = {"1": "I", "2": "II", "3": "III"}[str(_type_key(type))]
    method = {"Satterthwaite": "Satterthwaite's", "Kenward-Roger": "Kenward-Roger's",
              "residual": "residual df", None: "no df (chi-square)"}[tester.method]
    table.attrs["heading"] = f"Type {roman} Analysis of Variance Table with {method} method"
    table.attrs["hypotheses"] = Ls
    return table


def _type_key(type):
    return {"I": 1, "II": 2, "III": 3}.get(str(type).strip().upper(), str(type).strip())


def test_contrast(result, L, ddf="Satterthwaite", rhs=None) -> pd.DataFrame:
    """Test L beta = rhs for a contrast matrix L (rows: hypotheses; width p).

    Returns one row with lmerTest's ``contestMD`` columns (``Sum Sq``, ``Mean Sq``,
    ``NumDF``, ``DenDF``, ``F value``, ``Pr(>F)``); a one-row L adds the t test
    (``Estimate``, ``Std. Error``, ``df``, ``t value``, ``Pr(>|t|)``, lmerTest's
    ``contest1D``).  With Kenward-Roger the F is pbkrtest's scaled F, so it may
    differ slightly from t^2.
    """
    p = len(result.fixef)
    L = _as_contrast(L, p, result.fixef.index)
    if rhs is not None:
        rhs = np.asarray(rhs, np.float64).reshape(-1)
        if rhs.size == 1:
            rhs = np.repeat(rhs, L.shape[0])
        if rhs.shape != (L.shape[0],):
            raise ValueError(f"rhs must have one value per row of L ({L.shape[0]}), "
                             f"got {rhs.size}")
    tester = Tester(result, ddf)
    row = tester.f_test(L, rhs)
    if L.shape[0] == 1:
        row = {**tester.t_test(L[0], 0.0 if rhs is None else float(rhs[0])), **row}
    return pd.DataFrame([row])


def _as_contrast(L, p: int, names) -> np.ndarray:
    """L as a 2-d float array of width p; a pandas object is aligned by coefficient name."""
    if isinstance(L, pd.Series):
        L = L.to_frame().T
    if isinstance(L, pd.DataFrame):
        unknown = [c for c in L.columns if c not in set(names)]
        if unknown:
            raise ValueError(f"contrast columns {unknown} are not fixed effects; "
                             f"the fixed effects are {list(names)}")
        L = L.reindex(columns=names, fill_value=0.0).to_numpy(dtype=np.float64)
    try:
        arr = np.asarray(L, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("the contrast L must be numeric (a vector or a matrix)") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != p:
        raise ValueError(f"the contrast L must have {p} columns (one per fixed effect: "
                         f"{list(names)}), got shape {np.shape(L)}")
    if arr.shape[0] == 0:
        raise ValueError("the contrast L has no rows")
    if not np.all(np.isfinite(arr)):
        raise ValueError("the contrast L has non-finite entries")
    return arr
