"""Grouping factors' levels: codes in R's level order, interaction levels as lme4
forms them (``a:b``, only the combinations present), and the mapping of new data's
levels onto a fitted model's."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["unique_ints", "split_keys", "level_label", "factor_codes", "group_codes",
           "map_levels", "level_key"]


def unique_ints(x, return_inverse: bool = False):
    """The sorted distinct values of an integer array (and, with ``return_inverse``,
    each element's index among them), as ``numpy.unique`` gives them, by one sort:
    NumPy 2's hash-based ``unique`` takes seconds on millions of keys."""
    x = np.asarray(x).reshape(-1)
    if not return_inverse:
        s = np.sort(x)
        return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s
    order = np.argsort(x, kind="stable")
    s = x[order]
    first = np.r_[True, s[1:] != s[:-1]] if len(s) else np.zeros(0, bool)
    inverse = np.empty(len(x), np.int64)
    inverse[order] = np.cumsum(first) - 1
    return s[first], inverse


def split_keys(keys: np.ndarray, m: int, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys // m, keys % m) of pair keys ``a * m + b``, as int32 when every level is
    below ``bound`` < 2**31 (pairs of levels can number in the millions; the
    halved index arrays are what keeps a large design's layout analysis small)."""
    dtype = np.int32 if bound < 2 ** 31 else np.int64
    return (keys // m).astype(dtype, copy=False), (keys % m).astype(dtype, copy=False)


def level_label(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _labels(values: np.ndarray) -> np.ndarray:
    """:func:`level_label` of each value of an object array (text as it is)."""
    if pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values
    return np.asarray([level_label(v) for v in values], dtype=object)


def factor_codes(col: pd.Series) -> tuple[np.ndarray, list]:
    """Codes and level values of a grouping column (R's factor() level order)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        # through an object array: iterating an Arrow-backed index costs ~1 us a level
        return codes.astype(np.int64), list(col.cat.categories.to_numpy(dtype=object))
    values = col.to_numpy()
    try:
        uniq = np.unique(values)
    except TypeError:  # mixed types: sort by their text
        uniq = np.array(sorted(set(values), key=str), dtype=object)
    codes = np.searchsorted(uniq, values) if uniq.dtype != object else \
        pd.Index(uniq).get_indexer(values)
    return np.asarray(codes, dtype=np.int64), list(uniq)


def group_codes(data: pd.DataFrame, group: tuple[str, ...]):
    """Codes of the interaction of grouping columns, only combinations present.

    Levels are sorted by the components' level order, first component slowest,
    and labelled ``"a:b"`` as lme4 does.
    """
    comp_codes, comp_levels = [], []
    for name in group:
        c, lv = factor_codes(data[name])
        comp_codes.append(c)
        comp_levels.append(lv)
    # One integer key per row, mixed-radix with the first component slowest, so
    # the keys sort as the combinations do (a counting pass where the key space is
    # small, a sort otherwise).
    sizes = [max(len(lv), 1) for lv in comp_levels]
    if float(np.prod(sizes, dtype=np.float64)) < 2.0 ** 62:
        key = np.zeros(len(data), np.int64)
        for c, size in zip(comp_codes, sizes):
            key = key * size + c
        span = int(np.prod(sizes, dtype=np.int64))
        if span <= 4 * len(key) + 1024:
            used = np.flatnonzero(np.bincount(key, minlength=span))
            remap = np.full(span, -1, np.int64)
            remap[used] = np.arange(len(used))
            inverse = remap[key]
        else:
            used, inverse = unique_ints(key, return_inverse=True)
        parts = []
        for size in reversed(sizes):
            parts.append(used % size)
            used = used // size
        uniq = parts[::-1]
    else:
        stacked = np.stack(comp_codes, axis=1)
        u, inverse = np.unique(stacked, axis=0, return_inverse=True)
        uniq = [u[:, j] for j in range(len(group))]
    values = [np.asarray(lv, dtype=object)[u] for lv, u in zip(comp_levels, uniq)]
    text = [_labels(v) for v in values]
    keys = list(zip(*values))
    labels = [":".join(t) for t in zip(*text)] if len(group) > 1 else list(text[0])
    return np.asarray(inverse).reshape(-1).astype(np.int64), labels, keys


def map_levels(term, newdata, allow_new_levels):
    """The fitted level index of each new row for a random term; -1 for a level not in
    the fit (refused unless ``allow_new_levels``, as lme4's ``predict``)."""
    missing = [g for g in term.group if g not in newdata.columns]
    if missing:
        raise ValueError(f"newdata lacks grouping column(s) {missing} of term "
                         f"({term.expr} | {term.group_name})")
    lookup = {tuple(level_key(v) for v in key): i for i, key in enumerate(term.level_keys)}
    cols = [newdata[g].to_numpy() for g in term.group]
    keys = [tuple(level_key(c[i]) for c in cols) for i in range(len(newdata))]
    codes = np.array([lookup.get(k, -1) for k in keys], dtype=np.int64)
    if not allow_new_levels and (codes < 0).any():
        new = sorted({":".join(map(str, k)) for k, c in zip(keys, codes) if c < 0})
        raise ValueError(f"newdata has level(s) of {term.group_name!r} not in the fit: "
                         f"{new[:10]}; pass allow_new_levels=True to predict them at the "
                         "population level")
    return codes


def level_key(value):
    """A level's text key, with integral numbers written without a decimal point so
    that 3 and 3.0 name the same level."""
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    if isinstance(value, (np.floating, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)
