"""The per-partition functions of an out-of-core fit: plain pandas -> NumPy.

Three passes over the partitions, each a function of one pandas DataFrame and a
small picklable description of the model, with an associative merge, so that any
engine that maps over partitions and reduces a tree (Dask, Spark's
``mapInPandas``, a loop over files) computes the same cross-products:

1. :func:`partition_levels` / :func:`merge_levels`: rows, rows with a missing
   value, and the levels of the factors, on the complete rows.
2. :func:`partition_r` / :func:`merge_r`: the R factor of the weighted [X y]
   (a tall-skinny QR: per-partition R factors, stacked and factored again).
3. :func:`partition_sums` / :func:`merge_sums`: the cross-products of [Z Q1 r1]
   by term pair (Z_s'Z_t as sparse entries keyed by the level pair), where
   Q1 = X_w R^-1 and r1 = y_w - Q1 Q'y are the stable basis of
   :mod:`mixedjax.crossprod` computed from the global R.

Every sum is over rows, so the merged result does not depend on how the rows are
split into partitions (up to the order of floating-point additions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..design import (check_columns, lme4_term_order, newdata_matrix, r_model_matrix,
                      response_vector, term_model_matrix)
from ..formula import ParsedFormula, formula_variables, parse_formula
from ..levels import group_codes, unique_ints

__all__ = ["ModelSpec", "Encoding", "model_spec", "partition_levels", "merge_levels",
           "encoding", "partition_design", "partition_r", "merge_r", "partition_sums",
           "merge_sums", "split_sums", "partition_fitted"]


# ----------------------------------------------------------------------------------
# What the model uses (client side, from the column names and dtypes alone)
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """The columns a formula uses: ``used`` all of them, ``level_columns`` those whose
    levels must be collected (grouping columns and non-numeric columns of the fixed
    and random-effects expressions), ``groups`` the grouping columns of each random
    term in formula order, ``weights``/``offset`` column names or None."""

    parsed: ParsedFormula
    used: tuple[str, ...]
    level_columns: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    weights: str | None = None
    offset: str | None = None


def _is_numeric(dtype) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def model_spec(formula: str, dtypes: pd.Series, weights=None, offset=None) -> ModelSpec:
    """The :class:`ModelSpec` of ``formula`` on data with these column ``dtypes``
    (a Series indexed by column name); named errors for a missing column or a
    non-numeric response, weights or offset."""
    parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    if not parsed.random:
        raise ValueError(f"formula {parsed.formula!r} has no random-effects term such as "
                         "(1 | g); use an ordinary linear model for fixed effects only")
    columns = list(dtypes.index)
    used: list[str] = []

    def add(names, where):
        for name in names:
            if name not in columns:
                raise ValueError(f"column {name!r} ({where}) not found in the Dask "
                                 f"DataFrame; available columns: {columns}")
            if name not in used:
                used.append(name)

    add(formula_variables(parsed.response, columns), "response")
    add(formula_variables(parsed.fixed, columns), "fixed effects")
    exprs = set(used)
    for term in parsed.random:
        add(formula_variables(term.expr, columns), f"random term {term}")
        exprs.update(formula_variables(term.expr, columns))
    exprs.discard(parsed.response)
    for term in parsed.random:
        add(term.group, f"grouping factor of {term}")
    for what, name in (("weights", weights), ("offset", offset)):
        if name is None:
            continue
        if not isinstance(name, str):
            raise TypeError(f"{what} must be a column name of the Dask DataFrame, got "
                            f"{type(name).__name__} (per-row arrays are not partitioned)")
        add([name], what)
        if not _is_numeric(dtypes[name]):
            raise TypeError(f"{what} column {name!r} must be numeric, got dtype {dtypes[name]}")
    for name in used:
        if pd.api.types.is_complex_dtype(dtypes[name]):
            raise TypeError(f"column {name!r} has complex values; the model needs real "
                            "numbers (take .real, .imag or abs() explicitly)")
    if parsed.response in columns and not _is_numeric(dtypes[parsed.response]):
        raise TypeError(f"response {parsed.response!r} must be numeric, got dtype "
                        f"{dtypes[parsed.response]}")
    grouping = {g for t in parsed.random for g in t.group}
    levels = [c for c in used if c in grouping or (c in exprs and not _is_numeric(dtypes[c]))]
    return ModelSpec(parsed=parsed, used=tuple(used), level_columns=tuple(levels),
                     groups=tuple(tuple(t.group) for t in parsed.random),
                     weights=weights, offset=offset)


def _complete_rows(df: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The rows of ``df`` with no missing value in a column the model uses."""
    missing = [c for c in spec.used if c not in df.columns]
    if missing:
        raise ValueError(f"partition lacks column(s) {missing}; available columns: "
                         f"{list(df.columns)}")
    check_columns(df, spec.used)
    sub = df[list(spec.used)]
    return sub.loc[~sub.isna().any(axis=1).to_numpy()]


# ----------------------------------------------------------------------------------
# Pass 1: rows, missing values, levels
# ----------------------------------------------------------------------------------
def partition_levels(df: pd.DataFrame, spec: ModelSpec) -> dict:
    """Rows, rows dropped for a missing value, and per level column the distinct
    values on the complete rows (``("cat", categories, used)`` for a categorical
    column, so that its category order can be kept); per interaction group (a:b)
    its distinct value combinations."""
    sub = _complete_rows(df, spec)
    levels = {}
    for name in spec.level_columns:
        col = sub[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            cats = list(col.cat.categories)
            used = np.unique(col.cat.codes.to_numpy())
            levels[name] = ("cat", tuple(cats), tuple(cats[i] for i in used if i >= 0))
        else:
            levels[name] = ("values", tuple(pd.unique(col.to_numpy())), ())
    combos = {g: set(map(tuple, sub[list(g)].drop_duplicates().to_numpy(dtype=object)))
              for g in spec.groups if len(g) > 1}
    return {"rows": len(df), "complete": len(sub), "levels": levels, "combos": combos}


def _values(entry) -> tuple:
    return entry[2] if entry[0] == "cat" else entry[1]


def merge_levels(parts: list) -> dict:
    """The sum of :func:`partition_levels` results (associative)."""
    out = {"rows": 0, "complete": 0, "levels": {}, "combos": {}}
    for part in parts:
        out["rows"] += part["rows"]
        out["complete"] += part["complete"]
        for name, (kind, cats, used) in part["levels"].items():
            prev = out["levels"].get(name)
            if prev is None:
                out["levels"][name] = (kind, cats, used)
            elif kind == "cat" and prev[0] == "cat" and prev[1] == cats:
                out["levels"][name] = ("cat", cats, tuple(dict.fromkeys(prev[2] + used)))
            else:   # plain values, or categoricals with different categories: pandas
                    # concatenates those as plain values too
                out["levels"][name] = ("values", tuple(dict.fromkeys(
                    _values(prev) + _values((kind, cats, used)))), ())
        for g, combos in part["combos"].items():
            out["combos"][g] = out["combos"].get(g, set()) | combos
    return out


# ----------------------------------------------------------------------------------
# The encoding: levels as the in-memory fit orders them, and patsy's encodings
# ----------------------------------------------------------------------------------
def _level_column(entry, values) -> pd.Series:
    """``values`` of a level column as a column of its kind (categorical with the
    merged ``entry``'s categories, else plain), so that
    :func:`mixedjax.levels.group_codes` orders them as on the whole column."""
    kind, cats, _ = entry
    values = list(values)
    if kind == "cat":
        return pd.Series(pd.Categorical(values, categories=list(cats)))
    return pd.Series(values)


def _group_levels(group: tuple, entries: dict, rows: list) -> tuple[list, list]:
    """(keys, labels) of a grouping factor (``group``: its columns) from its distinct
    ``rows`` (value tuples): :func:`mixedjax.levels.group_codes`, the in-memory
    design's rule, applied to those rows (only the levels present, in R's order)."""
    frame = pd.DataFrame({c: _level_column(entries[c], [r[j] for r in rows])
                          for j, c in enumerate(group)})
    _, labels, keys = group_codes(frame, group)
    return [tuple(k) for k in keys], labels


@dataclass
class Encoding:
    """Everything a partition needs to build its rows of y, X and Z identically to the
    in-memory design: the :class:`ModelSpec`, the levels of each level column, each
    random term's levels (lme4's term order, ``term_order`` into the formula's), and
    a small prototype frame from which patsy's encodings are rebuilt where needed
    (patsy's design infos do not pickle).  ``p_full`` fixed-effect columns before
    aliased ones are dropped; ``ks`` each term's columns."""

    spec: ModelSpec
    column_levels: dict
    term_order: list
    term_keys: list
    term_labels: list
    prototype: pd.DataFrame
    n: int
    n_dropped: int
    p_full: int = 0
    ks: list = field(default_factory=list)

    def infos(self):
        """(fixed-effects info, its column permutation, R names, per term (info, names))."""
        key = "_infos_cache"
        cached = self.__dict__.get(key)
        if cached is None:
            parsed = self.spec.parsed
            _, xinfo, perm, xnames = r_model_matrix(parsed.fixed, self.prototype,
                                                    "fixed-effects")
            terms = []
            for t in self.term_order:
                term = parsed.random[t]
                _, info, names = term_model_matrix(term.expr, self.prototype,
                                                   f"random-effects term {term}")
                terms.append((info, names))
            cached = (xinfo, perm, xnames, terms)
            self.__dict__[key] = cached
        return cached

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_infos_cache"}


def _prototype(spec: ModelSpec, column_levels: dict, dtypes: pd.Series) -> pd.DataFrame:
    """A few rows that carry every level of every factor used in an expression, from
    which patsy builds the same encodings as from the whole data."""
    exprs = set(formula_variables(spec.parsed.fixed, list(dtypes.index)))
    for term in spec.parsed.random:
        exprs.update(formula_variables(term.expr, list(dtypes.index)))
    size = max([2] + [len(column_levels[c]) for c in column_levels if c in exprs])
    cols = {}
    for name in spec.used:
        if name in column_levels and name in exprs:
            lv = column_levels[name]
            if pd.api.types.is_bool_dtype(dtypes[name]):
                cols[name] = np.resize(np.array([False, True]), size)
            else:
                cols[name] = pd.Categorical(np.resize(np.asarray(lv, dtype=object), size),
                                            categories=lv)
        else:
            cols[name] = np.resize(np.array([1.37, 2.91, 1.83]), size)
    return pd.DataFrame(cols)


def _check_stateless(info, what: str, numeric: set) -> None:
    """Refuse patsy encodings that would differ between partitions: stateful
    transforms (``center``, ``standardize``, ``scale``, splines) learn from the data
    they see, and ``C()`` of a numeric column takes its levels from its values."""
    for factor, finfo in info.factor_infos.items():
        state = getattr(factor, "code", "")
        transforms = finfo.state.get("transforms") if isinstance(finfo.state, dict) else None
        if transforms:
            raise ValueError(
                f"{what}: {state!r} is a stateful transform (its centre and scale come from "
                "the whole column), which a partitioned fit does not compute; add the "
                "transformed column to the Dask DataFrame first (e.g. with the column's "
                "mean and standard deviation from ddf[col].mean().compute())")
        if finfo.type == "categorical":
            cols = set(formula_variables(state)) & numeric
            if cols:
                raise ValueError(
                    f"{what}: {state!r} makes a factor of numeric column(s) {sorted(cols)}, "
                    "whose levels a partitioned fit does not collect; convert them to "
                    "categorical columns first (ddf[col].astype(str))")


def encoding(spec: ModelSpec, merged: dict, dtypes: pd.Series) -> Encoding:
    """The :class:`Encoding` from the merged pass-1 result; named errors for a
    data set with no complete row, a factor with a single level, and encodings
    that a partitioned fit cannot reproduce."""
    n, dropped = merged["complete"], merged["rows"] - merged["complete"]
    if n == 0:
        raise ValueError(f"no rows left after dropping {dropped} row(s) with missing values "
                         f"in columns {list(spec.used)}")
    entries = merged["levels"]
    column_levels = {c: [k[0] for k in _group_levels(
        (c,), entries, [(v,) for v in _values(entries[c])])[0]] for c in spec.level_columns}
    keys, labels = [], []
    for g in spec.groups:
        rows = ([(v,) for v in column_levels[g[0]]] if len(g) == 1
                else list(merged["combos"][g]))
        kk, lab = _group_levels(g, entries, rows)
        keys.append(kk)
        labels.append(lab)
    order = lme4_term_order([len(k) for k in keys])
    proto = _prototype(spec, column_levels, dtypes)
    enc = Encoding(spec=spec, column_levels=column_levels, term_order=order,
                   term_keys=[keys[i] for i in order], term_labels=[labels[i] for i in order],
                   prototype=proto, n=n, n_dropped=dropped)
    xinfo, perm, xnames, terms = enc.infos()
    numeric = {c for c in spec.used if c not in column_levels}
    _check_stateless(xinfo, "fixed effects", numeric)
    for (info, _), t in zip(terms, order):
        _check_stateless(info, f"random term {spec.parsed.random[t]}", numeric)
    enc.p_full = len(perm)
    enc.ks = [len(names) for _, names in terms]
    return enc


# ----------------------------------------------------------------------------------
# One partition's rows
# ----------------------------------------------------------------------------------
def partition_design(df: pd.DataFrame, enc: Encoding) -> dict:
    """A partition's complete rows as arrays: ``y`` (n,), ``X`` (n, p_full) in R's
    column order, per term (lme4's order) ``codes`` (n,) and ``Z`` (n, k), ``w``
    (prior weights or None), ``off`` (offset or None), ``index`` the rows' labels."""
    spec = enc.spec
    sub = _complete_rows(df, spec)
    n = len(sub)
    out = {"index": sub.index, "w": None, "off": None}
    if n == 0:
        out.update(y=np.zeros(0), X=np.zeros((0, enc.p_full)),
                   codes=[np.zeros(0, np.int64) for _ in enc.ks],
                   Z=[np.zeros((0, k)) for k in enc.ks])
        if spec.weights:
            out["w"] = np.zeros(0)
        if spec.offset:
            out["off"] = np.zeros(0)
        return out
    for name in spec.used:
        col = sub[name]
        if _is_numeric(col.dtype) and np.isinf(col.to_numpy(dtype=np.float64)).any():
            raise ValueError(f"column {name!r} has infinite value(s); remove or replace them "
                             "before fitting")
    frame = sub.copy()
    for name, lv in enc.column_levels.items():
        # only the factors of expressions go through patsy; grouping columns map below
        if isinstance(enc.prototype[name].dtype, pd.CategoricalDtype):
            frame[name] = pd.Categorical(frame[name].to_numpy(dtype=object), categories=lv)
    xinfo, perm, _, terms = enc.infos()
    out["y"] = response_vector(frame, spec.parsed.response)
    out["X"] = newdata_matrix(xinfo, frame, "fixed effects")[:, perm] if len(perm) \
        else np.zeros((n, 0))
    codes, Z = [], []
    for t, (info, _), keys in zip(enc.term_order, terms, enc.term_keys):
        group = spec.groups[t]
        if len(group) == 1:
            index = pd.Index([k[0] for k in keys])
            c = index.get_indexer(sub[group[0]].to_numpy())
        else:
            index = pd.MultiIndex.from_tuples(keys)
            c = index.get_indexer(pd.MultiIndex.from_arrays([sub[g].to_numpy() for g in group]))
        codes.append(np.asarray(c, np.int64))
        Z.append(newdata_matrix(info, frame, f"random term {spec.parsed.random[t]}"))
    out["codes"], out["Z"] = codes, Z
    if spec.weights:
        w = sub[spec.weights].to_numpy(dtype=np.float64)
        if not np.all(w > 0):
            raise ValueError("weights must be finite and positive")
        out["w"] = w
    if spec.offset:
        out["off"] = sub[spec.offset].to_numpy(dtype=np.float64)
    return out


def _weighted(d: dict):
    """sqrt(w), the weighted X and the weighted response less its offset."""
    sw = np.ones(len(d["y"])) if d["w"] is None else np.sqrt(d["w"])
    y = d["y"] if d["off"] is None else d["y"] - d["off"]
    return sw, d["X"] * sw[:, None], y * sw


# ----------------------------------------------------------------------------------
# Pass 2: R of [X, X_w, y_w] (tall-skinny QR)
# ----------------------------------------------------------------------------------
def _r_factor(M: np.ndarray) -> np.ndarray:
    if M.shape[0] == 0:
        return np.zeros((0, M.shape[1]))
    return np.linalg.qr(M, mode="r")


def partition_r(df: pd.DataFrame, enc: Encoding) -> dict:
    """The R factor of [X, X_w, y_w] on a partition's rows (X_w only with weights:
    aliasing is judged on the unweighted X, as in memory), with the sums the fit
    reports: rows, sum(log w), sum(w), y_w'y_w and max |y_w|."""
    d = partition_design(df, enc)
    sw, Xw, yw = _weighted(d)
    M = np.column_stack([d["X"], Xw, yw] if d["w"] is not None else [d["X"], yw])
    w = d["w"]
    return {"R": _r_factor(M), "n": len(yw),
            "ldw": 0.0 if w is None else float(np.sum(np.log(w))),
            "sw": 0.0 if w is None else float(np.sum(w)),
            "yy": float(yw @ yw), "ymax": float(np.max(np.abs(yw))) if len(yw) else 0.0}


def merge_r(parts: list) -> dict:
    """The sum of :func:`partition_r` results: the R factor of the stacked R factors."""
    out = {"R": _r_factor(np.concatenate([p["R"] for p in parts], axis=0))}
    for key in ("n", "ldw", "sw", "yy"):
        out[key] = sum(p[key] for p in parts)
    out["ymax"] = max(p["ymax"] for p in parts)
    return out


# ----------------------------------------------------------------------------------
# Pass 3: the cross-products of [Z Q1 r1] by term pair
# ----------------------------------------------------------------------------------
def _seg(codes, vals, m):
    """Per-level sums of the columns of ``vals`` (n, c) -> (m, c)."""
    if vals.shape[1] == 0:
        return np.zeros((m, 0))
    return np.stack([np.bincount(codes, weights=vals[:, j], minlength=m)
                     for j in range(vals.shape[1])], axis=1)


def partition_sums(df: pd.DataFrame, enc: Encoding, basis: dict) -> dict:
    """A partition's share of the cross-products of [Z Q1 r1] (module docstring):
    ``G`` = Q1'Q1, ``qr`` = Q1'r1, ``rr`` = r1'r1; per term t ``ztz[t]`` (m, k, k),
    ``ztq[t]`` (m, k, p), ``ztr[t]`` (m, k); per term pair s < t ``pairs[(s, t)]`` =
    (keys, values): keys ``level_s * m_t + level_t`` sorted, values (E, k_s, k_t).
    ``basis``: ``keep`` (p_full,) bool, ``R1`` (p, p) and ``c1`` (p,)."""
    d = partition_design(df, enc)
    sw, Xw, yw = _weighted(d)
    Xw = Xw[:, basis["keep"]]
    if Xw.shape[1]:
        import scipy.linalg
        Q = scipy.linalg.solve_triangular(basis["R1"], Xw.T, trans="T").T   # X_w R1^-1
    else:
        Q = Xw
    r = yw - Q @ basis["c1"]
    ms = [len(k) for k in enc.term_keys]
    Zw = [z * sw[:, None] for z in d["Z"]]
    out = {"G": Q.T @ Q, "qr": Q.T @ r, "rr": float(r @ r), "ztz": [], "ztq": [], "ztr": [],
           "pairs": {}}
    for c, z, m in zip(d["codes"], Zw, ms):
        k = z.shape[1]
        out["ztz"].append(_seg(c, (z[:, :, None] * z[:, None, :]).reshape(-1, k * k),
                               m).reshape(m, k, k))
        out["ztq"].append(_seg(c, (z[:, :, None] * Q[:, None, :]).reshape(len(c), k * Q.shape[1]),
                               m).reshape(m, k, Q.shape[1]))
        out["ztr"].append(_seg(c, z * r[:, None], m))
    for s in range(len(ms)):
        for t in range(s + 1, len(ms)):
            key = d["codes"][s] * ms[t] + d["codes"][t]
            uniq, inv = unique_ints(key, return_inverse=True)
            ks, kt = Zw[s].shape[1], Zw[t].shape[1]
            prod = (Zw[s][:, :, None] * Zw[t][:, None, :]).reshape(len(key), ks * kt)
            out["pairs"][(s, t)] = (uniq, _seg(inv.reshape(-1), prod,
                                               len(uniq)).reshape(len(uniq), ks, kt))
    return out


def _merge_pair(entries):
    keys = np.concatenate([e[0] for e in entries])
    vals = np.concatenate([e[1] for e in entries], axis=0)
    uniq, inv = unique_ints(keys, return_inverse=True)
    shape = vals.shape[1:]
    summed = _seg(inv.reshape(-1), vals.reshape(len(keys), -1), len(uniq))
    return uniq, summed.reshape((len(uniq),) + shape)


def merge_sums(parts: list) -> dict:
    """The sum of :func:`partition_sums` results (or of parts of them from
    :func:`split_sums`); sparse entries with the same key are added."""
    parts = [p for p in parts if p]
    out = {}
    for key in ("G", "qr", "rr"):
        if key in parts[0]:
            out[key] = sum(p[key] for p in parts)
    for key in ("ztz", "ztq", "ztr"):
        if key in parts[0]:
            out[key] = [sum(arrs) for arrs in zip(*(p[key] for p in parts))]
    if "pairs" in parts[0]:
        out["pairs"] = {st: _merge_pair([p["pairs"][st] for p in parts])
                        for st in parts[0]["pairs"]}
    return out


def split_sums(part: dict, n_buckets: int, ms: list) -> list:
    """``part`` as 1 + ``n_buckets`` pieces whose merges can run apart: the dense
    sums, then the sparse entries by key range, so that no single merge holds every
    entry (a crossed design has one entry per distinct level pair)."""
    dense = {k: v for k, v in part.items() if k != "pairs"}
    buckets = [{"pairs": {}} for _ in range(n_buckets)]
    for (s, t), (keys, vals) in part["pairs"].items():
        edges = np.linspace(0, ms[s] * ms[t], n_buckets + 1).astype(np.int64)
        cut = np.searchsorted(keys, edges[1:-1])
        for b, (lo, hi) in enumerate(zip(np.r_[0, cut], np.r_[cut, len(keys)])):
            buckets[b]["pairs"][(s, t)] = (keys[lo:hi], vals[lo:hi])
    return [dense] + buckets


# ----------------------------------------------------------------------------------
# Fitted values
# ----------------------------------------------------------------------------------
def partition_fitted(df: pd.DataFrame, enc: Encoding, keep, beta, effects,
                     kind: str = "fitted") -> pd.Series:
    """A partition's fitted values X beta + offset + sum_t Z_t b_t on its complete
    rows (``kind="fitted"``), or its residuals (``"residuals"``), or its residuals
    times sqrt(prior weight) (``"pearson"``, unscaled); ``effects`` the random
    effects per term (levels, k) in lme4's order."""
    if kind not in ("fitted", "residuals", "pearson"):
        raise ValueError(f"kind must be 'fitted', 'residuals' or 'pearson', got {kind!r}")
    d = partition_design(df, enc)
    eta = d["X"][:, keep] @ beta
    if d["off"] is not None:
        eta = eta + d["off"]
    for c, z, b in zip(d["codes"], d["Z"], effects):
        eta = eta + np.sum(z * b[c], axis=1)
    values = eta if kind == "fitted" else d["y"] - eta
    if kind == "pearson" and d["w"] is not None:
        values = values * np.sqrt(d["w"])
    return pd.Series(values, index=d["index"], name="fitted" if kind == "fitted" else "residuals")
