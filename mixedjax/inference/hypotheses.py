"""Hypothesis matrices of type I, II and III F tests, as lmerTest defines them.

Kuznetsova, Brockhoff & Christensen (2017), "lmerTest Package: Tests in Linear
Mixed Effects Models", JSS 82(13), section 4.2 and lmerTest's
``get_contrasts_type1/2/3``:

* Type I: sequential.  L = rows of the unit upper-triangular factor of the
  Doolittle decomposition X'X = L U (Goodnight 1980).
* Type II: each term is tested after every term that does not contain it.  Terms
  contained in no other term get their marginal hypothesis (their rows of the
  identity); the rest the type I hypothesis with the term and the terms that contain
  it ordered last.
* Type III: the basic estimable functions of R's full-dummy ("rank-deficient")
  design in treatment coding, with the columns of each term orthogonalized
  against the columns of the terms that contain it, higher order terms first.  For
  other contrast codings the hypotheses are computed in treatment coding and
  mapped by ``ginv(X_treatment) X``.  For balanced data this equals SAS's type
  III; with missing cells the hypotheses are those lmerTest tests.

Each function returns ``{term label: L}`` with L of shape (rows, p) in the
columns of ``result.fixef``.  R's ``zapsmall`` (rounding to 7 significant
digits of the largest entry) is applied where lmerTest applies it, so the
hypotheses are identical to lmerTest's.
"""

from __future__ import annotations

import numpy as np

from . import terms as tm

__all__ = ["contrasts", "type1", "type2", "type3", "zapsmall", "doolittle_l"]


def zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of max |x|."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    mx = np.max(np.abs(x))
    if not mx > 0:
        return x.copy()
    return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))))


def doolittle_l(A: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Unit lower-triangular factor of the LU (Doolittle) decomposition of ``A``
    without pivoting; a pivot below ``eps`` gives a zero column and entries below
    ``eps`` are set to zero (lmerTest's ``doolittle``)."""
    n = A.shape[0]
    L = np.eye(n)
    U = np.zeros((n, n))
    for i in range(n):
        U[i, :] = A[i, :] - L[i, :i] @ U[:i, :]
        if i + 1 < n:
            col = A[i + 1:, i] - L[i + 1:, :i] @ U[:i, i]
            L[i + 1:, i] = 0.0 if abs(U[i, i]) < eps else col / U[i, i]
    L[np.abs(L) < eps] = 0.0
    return L


def _term_rows(Lfull: np.ndarray, term_list, p: int) -> dict[str, np.ndarray]:
    return {t.label: Lfull[list(t.columns), :].reshape(len(t.columns), p) for t in term_list}


def type1(result) -> dict[str, np.ndarray]:
    """Sequential (type I) hypotheses: lmerTest's ``get_contrasts_type1``."""
    d = result.model.design
    X = d.X
    p = X.shape[1]
    term_list = tm.fixed_terms(d)
    if p == 1:
        return _term_rows(np.ones((1, 1)), term_list, p)
    L = doolittle_l(X.T @ X).T
    return _term_rows(L, term_list, p)


def type2(result) -> dict[str, np.ndarray]:
    """Type II hypotheses: lmerTest's ``get_contrasts_type2_unfolded``."""
    d = result.model.design
    X = d.X
    p = X.shape[1]
    term_list = tm.fixed_terms(d)
    if p <= 1 or len(term_list) <= 1:
        return type1(result)
    contained = tm.containment(term_list)
    by_label = {t.label: t for t in term_list}
    eye = np.eye(p)
    out = {}
    for t in term_list:
        if not contained[t.label]:
            out[t.label] = eye[list(t.columns), :].reshape(len(t.columns), p)
            continue
        last = list(t.columns)
        for other in contained[t.label]:
            last += list(by_label[other].columns)
        first = [j for j in range(p) if j not in set(last)]
        order = first + last
        Xn = X[:, order]
        Lc = doolittle_l(Xn.T @ Xn).T
        rows = [order.index(j) for j in t.columns]
        back = np.argsort(order)              # columns back to X's order
        out[t.label] = Lc[rows][:, back].reshape(len(rows), p)
    return out


def _full_rank_columns(X: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Columns kept by a rank-revealing QR (R's ``ensure_full_rank``; pivoting keeps
    earlier columns first)."""
    keep = np.zeros(X.shape[1], dtype=bool)
    basis = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        col = X[:, j]
        norm = np.linalg.norm(col)
        if norm == 0:
            continue
        resid = col - basis @ (basis.T @ col)
        resid = resid - basis @ (basis.T @ resid)
        rn = np.linalg.norm(resid)
        if rn > tol * norm:
            keep[j] = True
            basis = np.column_stack([basis, resid / rn])
    return keep


def _resid(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Residuals of the least-squares regression of the columns of y on x (lm.fit)."""
    if x.shape[1] == 0:
        return y
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return y - x @ coef


def type3(result) -> dict[str, np.ndarray]:
    """Type III hypotheses: lmerTest's ``get_contrasts_type3``."""
    d = result.model.design
    term_list = tm.fixed_terms(d)
    p = d.X.shape[1]
    if p <= 1 or len(term_list) <= 1:
        return type1(result)
    frame = tm.model_frame(d)
    treatment = tm.is_treatment_coded(d)
    XT_full, xkeys_full = tm.coded_matrix(d, frame, treatment=True)
    keep = np.asarray(d.x_keep, dtype=bool) if treatment else _full_rank_columns(XT_full)
    XT = XT_full[:, keep]
    xkeys = [k for k, kp in zip(xkeys_full, keep) if kp]
    # Columns of each term within XT (the kept treatment-coded columns).
    kept_pos = np.cumsum(keep) - 1
    tcols = {t.label: [int(kept_pos[f]) for f in t.full if keep[f]] for t in term_list}

    # Basic estimable functions of the full-dummy design (rows: its columns).
    blocks, rkeys = [], []
    if tm.has_intercept(d):
        blocks.append(np.ones((len(frame), 1)))
        rkeys.append(("(Intercept)", ()))
    for t in term_list:
        mat, ks = tm.full_dummy_matrix(d, t, frame)
        blocks.append(mat)
        rkeys.extend((t.term, k) for k in ks)
    rdX = np.column_stack(blocks)
    L = zapsmall((np.linalg.pinv(XT) @ rdX).T)

    contained = tm.containment(term_list)
    order = sorted(range(len(term_list)), key=lambda i: -term_list[i].order)
    for i in order:
        t = term_list[i]
        others = [c for o in contained[t.label] for c in tcols[o]]
        if contained[t.label] and tcols[t.label]:
            L[:, tcols[t.label]] = zapsmall(_resid(L[:, others], L[:, tcols[t.label]]))

    index = {k: i for i, k in enumerate(rkeys)}
    missing = [k for k in xkeys if k not in index]
    if missing:
        raise ValueError(f"cannot form type III hypotheses: model columns {missing} have no "
                         "counterpart in the full dummy coding")
    L = L[[index[k] for k in xkeys], :]
    mapping = None if treatment else zapsmall(np.linalg.pinv(XT) @ d.X)
    out = {}
    for t in term_list:
        Lt = L[:, tcols[t.label]].T
        Lt = Lt[np.sum(np.abs(Lt), axis=1) > 1e-8]
        out[t.label] = Lt if mapping is None else Lt @ mapping
    return out


def contrasts(result, type) -> dict[str, np.ndarray]:
    """Hypothesis matrices of an anova of ``type`` 1, 2 or 3 (also "I", "II", "III")."""
    key = str(type).strip().upper()
    table = {"1": type1, "I": type1, "2": type2, "II": type2, "3": type3, "III": type3}
    if key not in table:
        raise ValueError(f"unknown anova type {type!r}; use 1, 2 or 3 (or 'I', 'II', 'III')")
    return table[key](result)
