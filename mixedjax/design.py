"""From a DataFrame and a parsed formula to the model's matrices.

:func:`make_design` returns a :class:`Design`: the response ``y``, the fixed-effects
matrix ``X`` (through patsy, with R's column names), and one :class:`ReTerm` per
random-effects term with its grouping codes and its per-row model matrix.  Terms
are ordered as lme4 orders them (:func:`lme4_term_order`), so ``theta`` has lme4's
layout.  The encodings needed to build ``X`` and
``Z`` for new data are kept on the design; they pickle as plain descriptions
(:mod:`mixedjax.persist`), so a design, and a fit, can be saved and sent to
other processes.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._warn import warn_user
from .frames import as_pandas
from .formula import ParsedFormula, RandomTerm, column_name, formula_variables, parse_formula
from .levels import group_codes
from .modelmatrix import (EVAL_ENV, check_columns, model_matrix, newdata_matrix, r_column_name,
                          r_model_matrices, r_model_matrix, r_name, r_ordered_info,
                          response_vector, term_model_matrix)
from .persist import decode_infos, encode_infos

__all__ = ["ReTerm", "Design", "make_design", "lme4_term_order", "r_column_name", "r_name",
           "r_model_matrix", "term_model_matrix", "check_columns", "newdata_matrix",
           "terms_in_re_form", "EVAL_ENV", "model_matrix", "response_vector"]


@dataclass
class ReTerm:
    """One random-effects term: grouping codes and per-row model matrix.

    ``codes[i]`` is the level of row ``i`` (0-based into ``levels``) and
    ``Z[i]`` its ``k`` covariate values; the term's block of the full Z matrix has
    ``Z[i]`` in columns ``codes[i]*k : codes[i]*k + k`` of row ``i``.
    """

    expr: str
    group: tuple[str, ...]
    levels: list[str]
    codes: np.ndarray
    Z: np.ndarray
    cnames: list[str]
    design_info: object = field(repr=False)
    level_keys: list[tuple] = field(repr=False, default_factory=list)

    # patsy's design infos pickle as plain descriptions (mixedjax.persist).
    def __getstate__(self):
        return encode_infos(self.__dict__, ["design_info"])

    def __setstate__(self, state):
        self.__dict__.update(decode_infos(state, ["design_info"], EVAL_ENV))

    @property
    def group_name(self) -> str:
        return ":".join(self.group)

    @property
    def k(self) -> int:
        return self.Z.shape[1]

    @property
    def nlevels(self) -> int:
        return len(self.levels)


@dataclass
class Design:
    """Everything a fit needs from the data, after dropping incomplete rows."""

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    xnames: list[str]
    terms: list[ReTerm]
    n_dropped: int
    x_design_info: object = field(repr=False)
    x_perm: np.ndarray = field(repr=False)
    x_keep: np.ndarray = field(repr=False)
    aliased: list[str] = field(default_factory=list)
    response_name: str = ""
    row_index: pd.Index = field(repr=False, default=None)
    # Prior (case) weights and an offset, one per kept row; None when not given.
    weights: np.ndarray | None = field(repr=False, default=None)
    offset: np.ndarray | None = field(repr=False, default=None)
    weights_name: str | None = None
    offset_name: str | None = None
    # The model frame (used columns, complete rows): inference rebuilds per-term
    # codings and reference grids from it, as R's model.frame(model).
    frame: pd.DataFrame | None = field(repr=False, default=None)

    def __getstate__(self):
        return encode_infos(self.__dict__, ["x_design_info"])

    def __setstate__(self, state):
        self.__dict__.update(decode_infos(state, ["x_design_info"], EVAL_ENV))

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def p(self) -> int:
        return self.X.shape[1]


def _check_columns(data: pd.DataFrame, parsed: ParsedFormula) -> list[str]:
    used: list[str] = []

    def add(names, where):
        for name in names:
            if name not in data.columns:
                raise ValueError(f"column {name!r} ({where}) not found in data; "
                                 f"available columns: {list(data.columns)}")
            if name not in used:
                used.append(name)

    add(formula_variables(parsed.response, data.columns), "response")
    add(formula_variables(parsed.fixed, data.columns), "fixed effects")
    for term in parsed.random:
        add(formula_variables(term.expr, data.columns), f"random term {term}")
        add(term.group, f"grouping factor of {term}")
    return used


def numbers_as_numeric(data: pd.DataFrame, names) -> pd.DataFrame:
    """``data`` with each of the columns ``names`` that has object dtype but holds
    only real numbers (and missing values) converted to a numeric dtype, as R reads
    such a column; object columns holding strings or a mix stay factors.  A column
    holding complex numbers is a TypeError."""
    convert = {}
    dtypes = data.dtypes
    for name in dict.fromkeys(names):
        if dtypes[name] != object:
            continue
        col = data[name]
        vals = col.dropna()
        if len(vals) and all(isinstance(v, numbers.Complex) and not isinstance(v, numbers.Real)
                             for v in vals):
            raise TypeError(f"column {name!r} has complex values; the model needs real "
                            "numbers (take .real, .imag or abs() explicitly)")
        if len(vals) and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                             for v in vals):
            convert[name] = pd.to_numeric(col)
    return data.assign(**convert) if convert else data


def lme4_term_order(nlevels) -> list[int]:
    """lme4's order of the random-effects terms (``mkReTrms``): when the numbers of
    levels are not already non-increasing, ``rev(order(nl))``, i.e. decreasing
    number of levels with ties in reverse formula order; otherwise formula order."""
    nl = list(nlevels)
    if all(a >= b for a, b in zip(nl, nl[1:])):
        return list(range(len(nl)))
    ascending = sorted(range(len(nl)), key=lambda i: nl[i])   # stable, as R's order()
    return ascending[::-1]


def independent_columns(X: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Keep-mask of columns not linearly dependent on earlier ones.

    Sequential Gram-Schmidt (two passes): a column whose residual after
    projecting on the kept columns has a norm below ``tol`` times its own norm is
    aliased (the rule R's pivoted QR applies, dropping later columns first).  It
    runs on R of a Householder QR of X rather than on X's n rows: R'R = X'X, so
    the norms and projections are the same, and only one LAPACK call sees n.
    """
    n, p = X.shape
    # The test is relative to each column's norm, so scaling columns changes no
    # decision; scaled to max |x| = 1 no norm over- or underflows (x ~ 1e200).
    scale = np.max(np.abs(X), axis=0) if n else np.ones(p)
    X = X / np.where(scale > 0, scale, 1.0)
    if n > p:
        X = np.linalg.qr(X, mode="r")
    keep = np.zeros(p, dtype=bool)
    Q = np.zeros((X.shape[0], 0))
    for j in range(p):
        col = X[:, j]
        norm = np.linalg.norm(col)
        if norm == 0:
            continue
        resid = col - Q @ (Q.T @ col)
        resid = resid - Q @ (Q.T @ resid)  # second pass for accuracy
        rn = np.linalg.norm(resid)
        if rn > tol * norm:
            keep[j] = True
            Q = np.column_stack([Q, resid / rn])
    return keep


def _check_finite(data: pd.DataFrame, used: list[str]) -> None:
    dtypes = data.dtypes
    for name in used:
        if pd.api.types.is_numeric_dtype(dtypes[name]) \
                and not pd.api.types.is_bool_dtype(dtypes[name]):
            vals = data[name].to_numpy(dtype=np.float64)
            bad = np.isinf(vals)
            if bad.any():
                rows = list(data.index[bad][:5])
                raise ValueError(f"column {name!r} has {int(bad.sum())} infinite value(s) "
                                 f"(rows {rows}); remove or replace them before fitting")


def _row_values(data: pd.DataFrame, spec, what: str) -> tuple[np.ndarray | None, str | None]:
    """``weights=``/``offset=`` given as a column name or as one value per row of data."""
    if spec is None:
        return None, None
    if isinstance(spec, str):
        if spec not in data.columns:   # R's `my w` or patsy's Q("my w")
            spec = column_name(spec) or spec
        if spec not in data.columns:
            raise ValueError(f"{what} column {spec!r} not found in data; "
                             f"available columns: {list(data.columns)}")
        check_columns(data, [spec])
        col = data[spec]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise TypeError(f"{what} column {spec!r} must be numeric, got dtype {col.dtype}")
        return col.to_numpy(dtype=np.float64), spec
    values = np.asarray(spec)
    if values.ndim != 1 or len(values) != len(data):
        raise ValueError(f"{what} must be a column name or have one value per row of data "
                         f"({len(data)}), got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or values.dtype == bool \
            or np.issubdtype(values.dtype, np.complexfloating):
        raise TypeError(f"{what} must be real numbers, got dtype {values.dtype}")
    return values.astype(np.float64), None


def make_design(formula: str | ParsedFormula, data: pd.DataFrame, weights=None,
                offset=None) -> Design:
    """Build the :class:`Design` of an lme4 formula on a DataFrame.

    Rows with a missing value in any column the model uses (or in ``weights`` or
    ``offset``) are dropped (the count is kept in ``n_dropped``); aliased
    fixed-effect columns are dropped with a warning.  ``weights`` are lme4's prior
    weights (residual variance sigma^2 / w_i), ``offset`` a known term added to the
    linear predictor; each is a column name or an array with one value per row.
    """
    data = as_pandas(data, "data")
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    if not parsed.random:
        raise ValueError(f"formula {parsed.formula!r} has no random-effects term such as "
                         "(1 | g); use an ordinary linear model for fixed effects only")
    used = _check_columns(data, parsed)
    check_columns(data, used)
    data = numbers_as_numeric(data, used)
    w_all, w_name = _row_values(data, weights, "weights")
    off_all, off_name = _row_values(data, offset, "offset")
    sub = data[used]
    complete = ~sub.isna().any(axis=1).to_numpy()
    for extra in (w_all, off_all):
        if extra is not None:
            complete &= ~np.isnan(extra)
    n_dropped = int((~complete).sum())
    if not complete.any():
        raise ValueError(f"no rows left after dropping {n_dropped} row(s) with missing "
                         f"values in columns {used}")
    if n_dropped:
        sub = sub.loc[complete]
    _check_finite(sub, used)
    w = None if w_all is None else w_all[complete]
    off = None if off_all is None else off_all[complete]
    if w is not None and not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError("weights must be finite and positive")
    if off is not None and not np.all(np.isfinite(off)):
        raise ValueError("offset has infinite values")
    # Categorical columns keep only the categories present, as R's factors in a fit do.
    # (`sub` is a new frame, a copy of the used columns: the trimmed columns are assigned
    # to it without touching the caller's data.)
    trimmed = {name: sub[name].cat.remove_unused_categories() for name, dtype
               in sub.dtypes.items() if isinstance(dtype, pd.CategoricalDtype)}
    if trimmed:
        sub = sub.assign(**trimmed)

    y = response_vector(sub, parsed.response)
    whats = ["fixed-effects"] + [f"random-effects term {t}" for t in parsed.random]
    built = r_model_matrices([parsed.fixed] + [t.expr for t in parsed.random], whats, sub)
    X_full, x_info, x_perm, xnames_full = built[0]
    keep = independent_columns(X_full) if X_full.shape[1] else np.zeros(0, bool)
    aliased = [nm for nm, k in zip(xnames_full, keep) if not k]
    if aliased:
        warn_user(f"fixed-effect model matrix is rank deficient: dropping "
                  f"{len(aliased)} column(s) {aliased}")
    X = X_full[:, keep]
    xnames = [nm for nm, k in zip(xnames_full, keep) if k]
    n = len(y)

    terms = [_make_term(t, sub, n, z) for t, z in zip(parsed.random, built[1:])]
    terms = [terms[i] for i in lme4_term_order([t.nlevels for t in terms])]
    nparam = X.shape[1] + sum(t.k * (t.k + 1) // 2 for t in terms) + 1
    if n <= X.shape[1]:
        raise ValueError(f"{n} observations are too few for {X.shape[1]} fixed effects")
    if nparam > n:
        raise ValueError(f"the model has {nparam} parameters but only {n} observations")
    return Design(formula=parsed, y=y, X=X, xnames=xnames, terms=terms, n_dropped=n_dropped,
                  x_design_info=x_info, x_perm=x_perm, x_keep=keep, aliased=aliased,
                  response_name=parsed.response, row_index=sub.index, weights=w, offset=off,
                  weights_name=w_name, offset_name=off_name, frame=sub)


def _make_term(term: RandomTerm, data: pd.DataFrame, n: int, built: tuple) -> ReTerm:
    codes, labels, keys = group_codes(data, term.group)
    Z, info, perm, cnames = built
    info = r_ordered_info(info, perm)
    if Z.shape[1] == 0:
        raise ValueError(f"random-effects term {term} has no columns")
    nl = len(labels)
    if nl < 2:
        raise ValueError(f"grouping factor {term.group_name!r} of term {term} has "
                         f"{nl} level; a random effect needs at least 2 levels")
    if nl >= n:
        raise ValueError(f"grouping factor {term.group_name!r} of term {term} has {nl} "
                         f"levels for {n} observations; each level needs several "
                         "observations to separate it from the residual")
    if nl * Z.shape[1] >= n:
        raise ValueError(f"term {term} has {nl * Z.shape[1]} random effects for {n} "
                         "observations; the model is not identifiable")
    return ReTerm(expr=term.expr, group=term.group, levels=labels, codes=codes, Z=Z,
                  cnames=cnames, design_info=info, level_keys=keys)


def terms_in_re_form(re_form, terms) -> list[bool]:
    """Which random terms a ``re_form`` (lme4's argument of ``predict``) keeps:
    ``None`` all, ``~0`` none, a formula the terms it names."""
    if re_form is None:
        return [True] * len(terms)
    if isinstance(re_form, str):
        text = re_form.replace(" ", "")
        if text in ("~0", "NA", "~1", "0"):
            return [False] * len(terms)
        parsed = parse_formula("y " + re_form.strip() if re_form.strip().startswith("~")
                               else "y ~ " + re_form)
        wanted = {(t.expr.replace(" ", ""), t.group_name) for t in parsed.random}
        include = [(t.expr.replace(" ", ""), t.group_name) in wanted for t in terms]
        unknown = wanted - {(t.expr.replace(" ", ""), t.group_name) for t in terms}
        if unknown:
            raise ValueError(f"re_form names random terms not in the model: {sorted(unknown)}")
        return include
    raise TypeError("re_form must be None or a formula string such as '~0'")
