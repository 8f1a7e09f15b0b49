"""Model matrices through patsy, with R's column order and names.

R's ``model.matrix`` names and orders the columns of a formula's terms; patsy builds
the same numbers with its own names and term order.  This module builds the
fixed-effects matrix, each random term's matrix and the response from a DataFrame
(:func:`r_model_matrices`: one pass over the data for all of them), names their
columns as R does (:func:`r_column_name`), and rebuilds them for new rows from the
fit's encodings (:func:`newdata_matrix`).  R's function names that formulas use
(``log``, ``scale``, ...) are evaluated in :data:`EVAL_ENV`.
"""

from __future__ import annotations

import functools
import keyword
import re
from collections import OrderedDict

import numpy as np
import pandas as pd
import patsy

from .formula import formula_variables, quote_columns, rename_quoted, split_top
from .transforms import r_scale

__all__ = ["EVAL_ENV", "r_name", "r_column_name", "check_columns", "response_vector",
           "model_matrix", "r_column_order", "r_model_matrix", "r_model_matrices",
           "term_model_matrix", "r_ordered_info", "newdata_matrix", "factor_names"]


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


def check_columns(data: pd.DataFrame, names) -> None:
    """Named errors for the columns a model uses: a name given to several columns
    (``ValueError``: which column is meant is ambiguous) and complex values
    (``TypeError``: a linear mixed model is fitted to real numbers)."""
    names = list(dict.fromkeys(names))
    if not data.columns.is_unique:
        dup = [n for n in names if int((data.columns == n).sum()) > 1]
        if dup:
            raise ValueError(f"data has several columns named {dup}; give each column a "
                             "distinct name")
    dtypes = data.dtypes
    for name in names:
        if pd.api.types.is_complex_dtype(dtypes[name]):
            raise TypeError(f"column {name!r} has complex values; the model needs real "
                            "numbers (take .real, .imag or abs() explicitly)")


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
    return _checked(mat, what, data.index), mat.design_info


def _checked(mat, what: str, index) -> np.ndarray:
    """A patsy matrix as float64, with a named error for a non-finite entry."""
    out = np.asarray(mat, dtype=np.float64)
    _check_finite_matrix(out, [r_column_name(c) for c in mat.design_info.column_names],
                         f"the {what} model matrix", index)
    return out


@functools.lru_cache(maxsize=256)
def _termlist(quoted: str) -> tuple:
    """patsy's terms of a right-hand side (parsed once per text: the parse costs as
    much as the matrices of a small model)."""
    return tuple(patsy.ModelDesc.from_formula(quoted).rhs_termlist)


def r_column_order(info, fixed: str) -> np.ndarray:
    """Column permutation from patsy's term order to R's.

    patsy puts purely categorical terms first; R keeps the formula's order and
    only sorts terms by their degree (main effects before interactions).
    """
    written = _termlist(fixed)
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
    return _in_r_order(mat, info, quote_columns(expr, data.columns))


def _in_r_order(mat: np.ndarray, info, quoted: str):
    perm = r_column_order(info, quoted)
    return mat[:, perm], info, perm, [r_column_name(info.column_names[j]) for j in perm]


def r_ordered_info(info, perm: np.ndarray):
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
    return Z, r_ordered_info(info, perm), names


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


def _plain_values(col: pd.Series):
    """A column as patsy evaluates it fastest and unchanged: the NumPy array (or the
    pandas Categorical) behind it for NumPy dtypes and categories, the column itself
    for other extension dtypes."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.array
    if isinstance(col.dtype, np.dtype) and col.dtype.kind in "biufO":
        return col.to_numpy()
    return col


def _joint(quoted: list[str], data: pd.DataFrame):
    """patsy's matrices of several right-hand sides from one evaluation of their
    factors, or None when a factor is not a plain column of ``data`` (an expression
    may use pandas methods of its columns, so it is left to :func:`model_matrix`
    on the DataFrame) or patsy refuses (the caller then builds each matrix alone,
    for the named error)."""
    try:
        termlists = [_termlist(q) for q in quoted]
    except (patsy.PatsyError, SyntaxError):
        return None
    codes = {f.code for terms in termlists for term in terms for f in term.factors}
    if not all(isinstance(c, str) and c.isidentifier() and c in data.columns for c in codes):
        return None
    values = ({c: _plain_values(data[c]) for c in codes} if codes
              else pd.DataFrame(index=pd.RangeIndex(len(data))))
    try:
        with np.errstate(all="ignore"):
            infos = patsy.design_matrix_builders(termlists, lambda: iter([values]), EVAL_ENV,
                                                 NA_action="raise")
            return patsy.build_design_matrices(infos, values, NA_action="raise",
                                               return_type="matrix")
    except Exception:   # noqa: BLE001 -- rebuilt one by one below, for the named error
        return None


def r_model_matrices(exprs, whats, data: pd.DataFrame) -> list[tuple]:
    """:func:`r_model_matrix` of each of ``exprs`` (``whats`` name them in errors),
    from one evaluation of the data where every factor is a plain column: the
    fixed-effects and random-term matrices of a formula share their columns, and
    patsy's per-call work on a DataFrame costs more than the matrices on small data."""
    quoted = [quote_columns(e, data.columns) for e in exprs]
    mats = _joint(quoted, data)
    if mats is None:
        return [r_model_matrix(e, data, w) for e, w in zip(exprs, whats)]
    return [_in_r_order(_checked(m, w, data.index), m.design_info, q)
            for m, q, w in zip(mats, quoted, whats)]
