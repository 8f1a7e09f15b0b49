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

import keyword
import numbers
import re
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import patsy

from ._warn import warn_user
from .frames import as_pandas
from .formula import (ParsedFormula, RandomTerm, column_name, formula_variables, parse_formula,
                      quote_columns, rename_quoted, split_top)
from .levels import group_codes
from .persist import decode_infos, encode_infos
from .transforms import r_scale

__all__ = ["ReTerm", "Design", "make_design", "lme4_term_order", "r_column_name", "r_name",
           "r_model_matrix", "term_model_matrix", "check_columns", "newdata_matrix",
           "terms_in_re_form"]


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


# Functions R formulas use, available by their R names (patsy would otherwise look
# them up in the caller's namespace, where they rarely exist); a loaded design
# rebuilds its encodings in the same namespace.
_R_FUNCTIONS = {
    "log": np.log, "log10": np.log10, "log2": np.log2, "log1p": np.log1p, "exp": np.exp,
    "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "np": np, "scale": r_scale,
}
EVAL_ENV = patsy.EvalEnvironment([_R_FUNCTIONS])

_PATSY_LEVEL = re.compile(r"^(?P<name>.*?)\[(?:T\.)?(?P<level>.*)\]$")
_R_SYNTACTIC = re.compile(r"(?:[^\W\d_]|\.(?!\d))[\w.]*|\.")
# R's reserved words (?Reserved): a column so named is written `if` in R.
_R_RESERVED = frozenset({
    "if", "else", "repeat", "while", "function", "for", "next", "break", "in", "TRUE",
    "FALSE", "NULL", "Inf", "NaN", "NA", "NA_integer_", "NA_real_", "NA_complex_",
    "NA_character_", "..."})


def r_name(name: str) -> str:
    """A column name as R deparses it: bare when syntactic (``a.b``, ``größe``,
    ``yield``), in backticks otherwise (```my days```, ```if```), as R's
    ``model.matrix`` names its columns."""
    if _R_SYNTACTIC.fullmatch(name) and name not in _R_RESERVED:
        return name
    return "`" + name.replace("`", "\\`") + "`"


def r_column_name(name: str) -> str:
    """patsy column name -> R's model.matrix name.

    ``Intercept`` -> ``(Intercept)``; ``V[T.Marvellous]:N[T.0.2cwt]`` ->
    ``VMarvellous:N0.2cwt``; ``I(x ** 2)`` -> ``I(x^2)``; ``Q("a.b")`` -> ``a.b``;
    ``Q("my days")`` -> ```my days```.
    """
    if name == "Intercept":
        return "(Intercept)"
    parts = []
    for _, piece in split_top(name, ":"):
        m = _PATSY_LEVEL.match(piece)
        if m:
            piece = m.group("name") + m.group("level")
        piece = rename_quoted(piece, r_name)
        parts.append(piece.replace(" ** ", "^").replace("**", "^"))
    return ":".join(parts)


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


def check_columns(data: pd.DataFrame, names) -> None:
    """Named errors for the columns a model uses: a name given to several columns
    (``ValueError``: which column is meant is ambiguous) and complex values
    (``TypeError``: a linear mixed model is fitted to real numbers)."""
    names = list(dict.fromkeys(names))
    dup = [n for n in names if int((data.columns == n).sum()) > 1]
    if dup:
        raise ValueError(f"data has several columns named {dup}; give each column a "
                         "distinct name")
    for name in names:
        if pd.api.types.is_complex_dtype(data[name]):
            raise TypeError(f"column {name!r} has complex values; the model needs real "
                            "numbers (take .real, .imag or abs() explicitly)")


def numbers_as_numeric(data: pd.DataFrame, names) -> pd.DataFrame:
    """``data`` with each of the columns ``names`` that has object dtype but holds
    only real numbers (and missing values) converted to a numeric dtype, as R reads
    such a column; object columns holding strings or a mix stay factors.  A column
    holding complex numbers is a TypeError."""
    convert = {}
    for name in dict.fromkeys(names):
        col = data[name]
        if col.dtype != object:
            continue
        vals = col.dropna()
        if len(vals) and all(isinstance(v, numbers.Complex) and not isinstance(v, numbers.Real)
                             for v in vals):
            raise TypeError(f"column {name!r} has complex values; the model needs real "
                            "numbers (take .real, .imag or abs() explicitly)")
        if len(vals) and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                             for v in vals):
            convert[name] = pd.to_numeric(col)
    return data.assign(**convert) if convert else data


def _check_finite_matrix(mat: np.ndarray, names, what: str, index) -> None:
    """A named error for non-finite values made by the formula's transformations
    (an overflow in ``I(x^2)``, ``log(0)``): lme4 refuses them as well."""
    bad = ~np.isfinite(mat)
    if bad.any():
        cols = [names[j] for j in np.flatnonzero(bad.any(axis=0))]
        rows = list(index[bad.any(axis=1)][:5])
        raise ValueError(f"{what}: column(s) {cols} have {int(bad.sum())} non-finite "
                         f"value(s) (inf or NaN; rows {rows}); check the data and the "
                         "formula's transformations (an overflow as in I(x^2) of a huge x, "
                         "log(0), ...)")


def _message(err: Exception, expr: str, columns) -> str:
    """patsy's message without its caret diagram; a syntax error in words (most often
    a Python keyword, as in ``x + if``, that is not a column of the data)."""
    if isinstance(err, SyntaxError):
        words = [w for w in re.findall(r"[^\W\d]\w*", expr)
                 if keyword.iskeyword(w) and w not in columns]
        if words:
            return (f"{words[0]!r} is not a column of the data (and, as a Python keyword, "
                    "not an expression either)")
        return f"invalid syntax ({err.msg})"
    return err.message if hasattr(err, "message") else str(err)


def response_vector(data: pd.DataFrame, expr: str) -> np.ndarray:
    """The response: a numeric column, or a patsy expression of columns (``log(y)``)."""
    if expr in data.columns:
        col = data[expr]
        if pd.api.types.is_complex_dtype(col):
            raise TypeError(f"response {expr!r} has complex values; the model needs real "
                            "numbers")
        if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
            raise TypeError(f"response {expr!r} must be numeric, got dtype {col.dtype}")
        y = col.to_numpy(dtype=np.float64)
    else:
        try:
            with np.errstate(all="ignore"):
                mat = patsy.dmatrix(f"0 + {quote_columns(expr, data.columns)}", data,
                                    NA_action="raise", eval_env=EVAL_ENV)
        except (patsy.PatsyError, SyntaxError) as err:
            raise ValueError(f"cannot evaluate response {expr!r}: "
                             f"{_message(err, expr, data.columns)}") from None
        if mat.shape[1] != 1:
            raise TypeError(f"response {expr!r} must be a single numeric column, got "
                            f"{mat.shape[1]} columns (is it categorical?)")
        y = np.asarray(mat, dtype=np.float64)[:, 0]
    _check_finite_matrix(y[:, None], [r_column_name(expr)], "the response", data.index)
    return y


def model_matrix(expr: str, data: pd.DataFrame, what: str):
    """patsy's model matrix of ``expr`` (columns in patsy's order) and its design
    info; a named error for a non-finite entry."""
    try:
        with np.errstate(all="ignore"):
            mat = patsy.dmatrix(quote_columns(expr, data.columns), data, NA_action="raise",
                                return_type="matrix", eval_env=EVAL_ENV)
    except (patsy.PatsyError, SyntaxError) as err:
        raise ValueError(f"cannot build the {what} model matrix from {expr!r}: "
                         f"{_message(err, expr, data.columns)}") from None
    info = mat.design_info
    mat = np.asarray(mat, dtype=np.float64)
    _check_finite_matrix(mat, [r_column_name(c) for c in info.column_names],
                         f"the {what} model matrix", data.index)
    return mat, info


def lme4_term_order(nlevels) -> list[int]:
    """lme4's order of the random-effects terms (``mkReTrms``): when the numbers of
    levels are not already non-increasing, ``rev(order(nl))``, i.e. decreasing
    number of levels with ties in reverse formula order; otherwise formula order."""
    nl = list(nlevels)
    if all(a >= b for a, b in zip(nl, nl[1:])):
        return list(range(len(nl)))
    ascending = sorted(range(len(nl)), key=lambda i: nl[i])   # stable, as R's order()
    return ascending[::-1]


def r_column_order(info, fixed: str) -> np.ndarray:
    """Column permutation from patsy's term order to R's.

    patsy puts purely categorical terms first; R keeps the formula's order and
    only sorts terms by their degree (main effects before interactions).
    """
    written = patsy.ModelDesc.from_formula(fixed).rhs_termlist
    order = sorted(range(len(written)), key=lambda i: len(written[i].factors))
    perm: list[int] = []
    for i in order:
        sl = info.term_slices.get(written[i])
        if sl is not None:
            perm.extend(range(sl.start, sl.stop))
    if sorted(perm) != list(range(len(info.column_names))):
        return np.arange(len(info.column_names))
    return np.asarray(perm, dtype=np.int64)


def r_model_matrix(expr: str, data: pd.DataFrame, what: str):
    """The model matrix of ``expr`` with R's column order and names (R's
    ``model.matrix``): returns ``(matrix, patsy design info, perm, names)``, where
    ``perm`` (:func:`r_column_order`) maps the design info's columns to the matrix's."""
    mat, info = model_matrix(expr, data, what)
    perm = r_column_order(info, quote_columns(expr, data.columns))
    return mat[:, perm], info, perm, [r_column_name(info.column_names[j]) for j in perm]


def _reordered(info, perm: np.ndarray):
    """The patsy design info whose columns come in the order ``perm`` (whole terms,
    as :func:`r_column_order` gives), so that new data builds in that order too."""
    if np.array_equal(perm, np.arange(len(perm))):
        return info
    position = np.empty_like(perm)
    position[perm] = np.arange(len(perm))
    terms = sorted(info.term_codings, key=lambda t: position[info.term_slices[t].start])
    return patsy.DesignInfo([info.column_names[j] for j in perm],
                            factor_infos=info.factor_infos,
                            term_codings=OrderedDict((t, info.term_codings[t]) for t in terms))


def term_model_matrix(expr: str, data: pd.DataFrame, what: str):
    """A random-effects term's model matrix in R's column order (lme4's ``mkReTrms``
    calls ``model.matrix``: ``(standLRT + sex | school)`` gives (Intercept),
    standLRT, sexM), with R's names and a design info that builds new data in the
    same order: ``(Z, info, names)``."""
    Z, info, perm, names = r_model_matrix(expr, data, what)
    return Z, _reordered(info, perm), names


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
    for name in used:
        col = data[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            vals = col.to_numpy(dtype=np.float64)
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
    sub = sub.loc[complete]
    _check_finite(sub, used)
    w = None if w_all is None else w_all[complete]
    off = None if off_all is None else off_all[complete]
    if w is not None and not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError("weights must be finite and positive")
    if off is not None and not np.all(np.isfinite(off)):
        raise ValueError("offset has infinite values")
    # Categorical columns keep only the categories present, as R's factors in a fit do.
    sub = sub.copy()
    for name in used:
        if isinstance(sub[name].dtype, pd.CategoricalDtype):
            sub[name] = sub[name].cat.remove_unused_categories()

    y = response_vector(sub, parsed.response)
    X_full, x_info, x_perm, xnames_full = r_model_matrix(parsed.fixed, sub, "fixed-effects")
    keep = independent_columns(X_full) if X_full.shape[1] else np.zeros(0, bool)
    aliased = [nm for nm, k in zip(xnames_full, keep) if not k]
    if aliased:
        warn_user(f"fixed-effect model matrix is rank deficient: dropping "
                  f"{len(aliased)} column(s) {aliased}")
    X = X_full[:, keep]
    xnames = [nm for nm, k in zip(xnames_full, keep) if k]
    n = len(y)

    terms = [_make_term(t, sub, n) for t in parsed.random]
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


def _make_term(term: RandomTerm, data: pd.DataFrame, n: int) -> ReTerm:
    codes, labels, keys = group_codes(data, term.group)
    Z, info, cnames = term_model_matrix(term.expr, data, f"random-effects term {term}")
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


def newdata_matrix(info, data, what):
    """A fitted term's model matrix built for new rows from its patsy encoding (the
    factor levels and stateful transforms of the fit), with a named error for a
    missing column."""
    names = factor_names(info)
    missing = [f for f in names if f not in data.columns]
    if missing:
        raise ValueError(f"newdata lacks column(s) {missing} needed for the {what}")
    check_columns(data, names)
    try:
        with np.errstate(all="ignore"):
            mat = np.asarray(patsy.build_design_matrices([info], data, NA_action="raise")[0],
                             dtype=np.float64)
    except patsy.PatsyError as err:
        raise ValueError(f"cannot build the {what} for newdata: {err}") from None
    _check_finite_matrix(mat, [r_column_name(c) for c in info.column_names],
                         f"the {what} for newdata", data.index)
    return mat


def factor_names(info) -> list[str]:
    """The data columns a patsy design needs, in order of first use."""
    names: list[str] = []
    for factor in info.factor_infos:
        for nm in formula_variables(factor.code):
            if nm not in names:
                names.append(nm)
    return names


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
