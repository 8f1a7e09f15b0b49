"""nlme-style one-sided formulas, random-effects specifications and group packing.

nlme describes structures with one-sided formulas ``~ covariate | g1/g2``
(Pinheiro & Bates 2000, section 3.1 and 5.2.1): the covariate (``1`` for none)
and the grouping factors, outermost first, nested with ``/``.  ``random`` is
such a formula (``~ age | Subject``), an lme4 bar expression (``(1 | a/b)``) or
a dict ``{"a": "~ 1", "b": "~ age"}`` listing the levels from the outside in.

The likelihood works block by block (one block per outermost group): every
per-block quantity is padded to the largest block size ``m`` with a mask, so the
marginal covariance is a batch of small ``m x m`` matrices (:class:`Packing`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..levels import factor_codes
from ..formula import FormulaError, column_name, parse_formula, split_top, translate_r_syntax

__all__ = ["Form", "ReLevel", "parse_form", "parse_random", "group_codes", "Packing",
           "make_packing", "label", "sorted_positions"]


@dataclass(frozen=True)
class Form:
    """A parsed one-sided nlme formula ``~ covariate | g1/g2``.

    ``covariate`` is None for ``~ 1``; ``levels`` holds, outermost first, the
    columns of each nesting level (several columns for ``a:b`` or ``a*b``).
    """

    text: str
    covariate: str | None
    levels: tuple[tuple[str, ...], ...]

    @property
    def columns(self) -> tuple[tuple[str, ...], ...]:
        """Cumulative grouping columns of each level (outer level's columns first)."""
        out, acc = [], ()
        for lev in self.levels:
            acc = acc + lev
            out.append(acc)
        return tuple(out)


def _split_bar(text: str) -> tuple[str, str | None]:
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), None


def _parse_levels(text: str, where: str) -> tuple[tuple[str, ...], ...]:
    levels = []
    for _, piece in split_top(text, "/"):
        cols = tuple(column_name(c) for _, c in split_top(piece, ":*"))
        if any(c is None for c in cols):
            raise ValueError(f"grouping factor {piece.strip()!r} in {where} is not a "
                             "column name or an interaction a:b of column names")
        levels.append(cols)
    return tuple(levels)


def parse_form(form: str, where: str) -> Form:
    """Parse ``"~ cov | g1/g2"`` (Pinheiro & Bates 2000, section 5.2.1)."""
    if not isinstance(form, str):
        raise TypeError(f"{where}: form must be a string such as '~ 1 | g', "
                        f"got {type(form).__name__}")
    text = form.strip()
    if not text.startswith("~"):
        raise ValueError(f"{where}: form {form!r} must be a one-sided formula starting "
                         "with '~', such as '~ 1 | g' or '~ age'")
    try:
        lhs, rhs = _split_bar(translate_r_syntax(text[1:]))
    except FormulaError as err:
        raise ValueError(f"{where}: {err}") from None
    if rhs is not None and not rhs:
        raise ValueError(f"{where}: form {form!r} has nothing after '|'")
    cov = None if lhs in ("", "1") else lhs
    levels = _parse_levels(rhs, where) if rhs is not None else ()
    return Form(text=text, covariate=cov, levels=levels)


@dataclass(frozen=True)
class ReLevel:
    """One level of nested random effects.

    ``columns``: cumulative grouping columns (outer levels' first); ``exprs``: one
    model-matrix expression per covariance block (several for ``(x || g)``).
    """

    columns: tuple[str, ...]
    own: tuple[str, ...]
    exprs: tuple[str, ...]

    @property
    def name(self) -> str:
        """Level name as nlme's ``ranef`` lists it (the level's own factor)."""
        return ":".join(self.own)

    @property
    def display(self) -> str:
        """``V %in% B`` for an inner level, as nlme's summary prints it."""
        outer = self.columns[:len(self.columns) - len(self.own)]
        if not outer:
            return self.name
        return f"{self.name} %in% {':'.join(outer)}"


def _levels_from_form(form: Form) -> tuple[ReLevel, ...]:
    if not form.levels:
        raise ValueError(f"random = {form.text!r} names no grouping factor; write it as "
                         "'~ 1 | g' (or '~ x | g')")
    expr = form.covariate or "1"
    return tuple(ReLevel(columns=c, own=o, exprs=(expr,))
                 for c, o in zip(form.columns, form.levels))


def _levels_from_bars(random: str) -> tuple[ReLevel, ...]:
    if len(split_top(random, "|")) > 1:
        raise ValueError(f"cannot parse random = {random!r}: write nlme's one-sided "
                         "formula '~ 1 | g' or lme4's bars in parentheses, '(1 | g)'")
    try:
        parsed = parse_formula(f"y__ ~ 0 + {random}")
    except FormulaError as err:
        raise ValueError(f"cannot parse random = {random!r}: {err}") from None
    if parsed.fixed not in ("0", "1") or not parsed.random:
        raise ValueError(f"random = {random!r} must contain only random-effects terms "
                         "such as (1 | g)")
    by_group: dict[frozenset, list] = {}
    for term in parsed.random:
        by_group.setdefault(frozenset(term.group), []).append(term)
    groups = sorted(by_group, key=len)
    levels, acc = [], ()
    for g in groups:
        if not set(acc) <= g or len(g) == len(acc):
            raise NotImplementedError(
                f"random = {random!r}: lme handles nested grouping factors only "
                "(g, g/h); crossed random effects need mixedjax.lmer")
        terms = by_group[g]
        own = tuple(c for c in terms[0].group if c not in acc)
        acc = acc + own
        levels.append(ReLevel(columns=acc, own=own, exprs=tuple(t.expr for t in terms)))
    return tuple(levels)


def parse_random(random) -> tuple[ReLevel, ...]:
    """Random-effects levels, outermost first, from any of nlme's or lme4's forms."""
    if isinstance(random, dict):
        if not random:
            raise ValueError("random must name at least one grouping factor")
        levels, acc = [], ()
        for key, rhs in random.items():
            if not isinstance(key, str) or not isinstance(rhs, str):
                raise TypeError("random as a dict maps grouping column names to formulas "
                                "such as {'Subject': '~ age'}")
            form = parse_form(rhs if rhs.strip().startswith("~") else "~ " + rhs,
                              f"random[{key!r}]")
            if form.levels:
                raise ValueError(f"random[{key!r}] = {rhs!r} must not contain '|'")
            own = tuple(_parse_levels(key, "random")[0])
            acc = acc + own
            levels.append(ReLevel(columns=acc, own=own, exprs=(form.covariate or "1",)))
        return tuple(levels)
    if not isinstance(random, str):
        raise TypeError(f"random must be a formula string such as '~ 1 | g', got "
                        f"{type(random).__name__}")
    if random.strip().startswith("~"):
        return _levels_from_form(parse_form(random, "random"))
    return _levels_from_bars(random)


def label(value) -> str:
    """A level's text label (integer-valued floats without the '.0')."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def group_codes(data: pd.DataFrame, columns: tuple[str, ...]):
    """Codes of the combinations of ``columns`` present in ``data``.

    Levels sort by the columns' factor order, first column slowest (R's
    ``order`` over the grouping factors, outermost first, as nlme sorts its data).
    Returns ``(codes, labels, keys)``; labels join the values with ``/``.
    """
    comp = [factor_codes(data[c]) for c in columns]
    stacked = np.stack([c for c, _ in comp], axis=1)
    uniq, inverse = np.unique(stacked, axis=0, return_inverse=True)
    keys = [tuple(comp[j][1][u[j]] for j in range(len(columns))) for u in uniq]
    labels = ["/".join(label(v) for v in k) for k in keys]
    return inverse.reshape(-1).astype(np.int64), labels, keys


@dataclass(frozen=True)
class Packing:
    """Rows arranged as ``G`` blocks padded to ``m`` rows.

    ``order[k]`` is the original row at sorted position ``k``; sorted row ``k``
    sits in block ``block[k]`` at slot ``slot[k]``.
    """

    order: np.ndarray
    block: np.ndarray
    slot: np.ndarray
    G: int
    m: int

    @property
    def n(self) -> int:
        return len(self.order)

    def pad(self, values, fill=0.0) -> np.ndarray:
        """Per-row values (original row order) -> ``(G, m, ...)`` array."""
        values = np.asarray(values)
        out = np.full((self.G, self.m) + values.shape[1:], fill, dtype=values.dtype)
        out[self.block, self.slot] = values[self.order]
        return out

    def unpad(self, padded) -> np.ndarray:
        """``(G, m, ...)`` array -> per-row values in the original row order."""
        padded = np.asarray(padded)
        out = np.empty((self.n,) + padded.shape[2:], dtype=padded.dtype)
        out[self.order] = padded[self.block, self.slot]
        return out

    def mask(self) -> np.ndarray:
        return self.pad(np.ones(self.n, dtype=bool), False)


def make_packing(block_codes: np.ndarray | None, n: int) -> Packing:
    """Blocks from per-row block codes (None: every row its own block, data order)."""
    if block_codes is None:
        return Packing(order=np.arange(n), block=np.arange(n), slot=np.zeros(n, np.int64),
                       G=n, m=1)
    order = np.argsort(block_codes, kind="stable")
    block = block_codes[order]
    counts = np.bincount(block)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(n) - starts[block]
    return Packing(order=order, block=block, slot=slot.astype(np.int64), G=len(counts),
                   m=int(counts.max()))


def sorted_positions(codes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """0-based position of each row within its group, counted in the sorted data order."""
    pos = np.empty(len(codes), dtype=np.int64)
    pos[order] = pd.Series(codes[order]).groupby(codes[order]).cumcount().to_numpy()
    return pos
