"""Parsing of lme4 model formulas.

A formula such as ``y ~ x + (1 + x | g) + (1 | a/b)`` is split into

* the response expression (``y``),
* the fixed-effects part (``x``), later handed to patsy, and
* a tuple of :class:`RandomTerm` -- one per random-effects term after lme4's
  expansions: ``(x || g)`` becomes ``(1 | g) + (0 + x | g)`` and ``(1 | a/b)``
  becomes ``(1 | b:a) + (1 | a)`` (lme4's ``findbars``/``expandSlash`` order and
  naming).

R's ``^`` (power, also inside ``I()``) is translated to Python's ``**``, and a
column name containing dots (legal in R, an attribute access in Python) is
quoted with patsy's ``Q()`` once the data's columns are known.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula", "formula_variables"]

_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
# Names that may appear bare in a patsy formula without being data columns.
_PATSY_BUILTINS = frozenset(
    {"C", "I", "Q", "Sum", "Treatment", "Helmert", "Poly", "Diff", "np", "center",
     "standardize", "scale", "True", "False", "None"}
)


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(expr | g1:g2:...)`` after expansion.

    ``expr`` is the right-hand side of a patsy formula for the term's model
    matrix (``"1"``, ``"1 + Days"``, ``"0 + Machine"``); ``group`` holds the
    names of the grouping columns whose interaction defines the levels.
    """

    expr: str
    group: tuple[str, ...]

    @property
    def group_name(self) -> str:
        """Grouping factor name as lme4 prints it (``"cask:batch"``)."""
        return ":".join(self.group)

    def __str__(self) -> str:
        return f"({self.expr} | {self.group_name})"


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed part and random terms."""

    formula: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]


class FormulaError(ValueError):
    """A formula that is not valid lme4 syntax."""


def _check_parentheses(text: str, formula: str) -> None:
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced parentheses in formula {formula!r}: "
                                   "a ')' has no matching '('")
    if depth != 0:
        raise FormulaError(f"unbalanced parentheses in formula {formula!r}: "
                           f"{depth} '(' left open")


def _split_top(text: str, seps: str) -> list[tuple[str, str]]:
    """Split ``text`` at characters in ``seps`` that are outside parentheses.

    Returns ``(separator, piece)`` pairs; the first separator is ``""``.
    """
    out: list[tuple[str, str]] = []
    depth, start, sep = 0, 0, ""
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and ch in seps:
            out.append((sep, text[start:i].strip()))
            sep, start = ch, i + 1
    out.append((sep, text[start:].strip()))
    return out


def _matching_paren(text: str, open_idx: int) -> int:
    depth = 0
    for i in range(open_idx, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _bar_split(inner: str) -> tuple[str, str, bool] | None:
    """Split ``expr | g`` or ``expr || g`` at depth 0; None if no bar."""
    depth = 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and ch == "|":
            double = i + 1 < len(inner) and inner[i + 1] == "|"
            rhs = inner[i + 2:] if double else inner[i + 1:]
            return inner[:i].strip(), rhs.strip(), double
    return None


def _parse_group(text: str, term: str) -> list[tuple[str, ...]]:
    """Grouping expression -> list of groups, each a tuple of column names.

    ``a`` -> [(a,)]; ``a:b`` -> [(a, b)]; ``a/b`` -> [(b, a), (a,)];
    ``a/b/c`` -> [(c, b, a), (b, a), (a,)] (lme4's expandSlash naming).
    """
    text = text.strip()
    while text.startswith("(") and _matching_paren(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    if not text:
        raise FormulaError(f"random-effects term {term!r} has no grouping factor "
                           "after '|'")
    levels = [p for _, p in _split_top(text, "/")]
    nested: list[tuple[str, ...]] = []
    for piece in levels:
        parts = tuple(p.strip() for p in piece.split(":"))
        for p in parts:
            if not _NAME.fullmatch(p.strip("`")):
                raise FormulaError(f"grouping factor {piece!r} in term {term!r} is not a "
                                   "column name or an interaction a:b of column names")
        nested.append(tuple(p.strip("`") for p in parts))
    groups = []
    for depth in range(len(nested), 0, -1):
        combined: tuple[str, ...] = ()
        for piece in reversed(nested[:depth]):
            combined += piece
        groups.append(combined)
    return groups


def _has_intercept_removed(pieces: list[tuple[str, str]]) -> bool:
    for sep, piece in pieces:
        if (sep == "-" and piece == "1") or (sep in ("", "+") and piece == "0"):
            return True
    return False


def _expand_double_bar(lhs: str, term: str) -> list[str]:
    """``x || g`` -> separate uncorrelated terms, as lme4's expandDoubleVerts."""
    pieces = _split_top(lhs, "+-")
    if pieces and pieces[0] == ("", ""):
        pieces = pieces[1:]
    exprs: list[str] = []
    if not _has_intercept_removed(pieces):
        exprs.append("1")
    for sep, piece in pieces:
        if piece in ("0", "1") or (sep == "-" and piece == "1"):
            continue
        if sep == "-":
            raise FormulaError(f"cannot remove {piece!r} in uncorrelated term {term!r}")
        exprs.append(f"0 + {piece}")
    if not exprs:
        raise FormulaError(f"random-effects term {term!r} has no columns")
    return exprs


def parse_formula(formula: str) -> ParsedFormula:
    """Parse an lme4 formula string into response, fixed part and random terms."""
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    text = formula.replace("^", "**").strip()
    _check_parentheses(text, formula)
    sides = _split_top(text, "~")
    if len(sides) != 2:
        raise FormulaError(f"formula {formula!r} must have exactly one '~' "
                           "separating response and predictors")
    response, rhs = sides[0][1], sides[1][1]
    if not response:
        raise FormulaError(f"formula {formula!r} has no response left of '~'")
    if not rhs:
        raise FormulaError(f"formula {formula!r} has nothing right of '~'")

    fixed_pieces: list[str] = []
    random: list[RandomTerm] = []
    for sep, piece in _split_top(rhs, "+-"):
        if not piece:
            if sep == "" and rhs.lstrip().startswith("-"):
                continue  # leading unary minus, as in "-1 + x"
            raise FormulaError(f"empty term in formula {formula!r}")
        is_paren = piece.startswith("(") and _matching_paren(piece, 0) == len(piece) - 1
        bar = _bar_split(piece[1:-1]) if is_paren else None
        if bar is None:
            if "|" in piece:
                raise FormulaError(f"random-effects term {piece!r} must be enclosed in "
                                   "parentheses, as in (1 | g)")
            fixed_pieces.append(f"{sep} {piece}".strip() if sep else piece)
            continue
        if sep == "-":
            raise FormulaError(f"a random-effects term cannot be subtracted: {piece!r}")
        lhs, grp, double = bar
        if not lhs:
            raise FormulaError(f"random-effects term {piece!r} has no expression before '|'")
        groups = _parse_group(grp, piece)
        exprs = _expand_double_bar(lhs, piece) if double else [lhs]
        # lme4 keeps the expansion order: all expressions for the innermost group first.
        for g in groups:
            for e in exprs:
                random.append(RandomTerm(expr=e, group=g))

    fixed = " ".join(fixed_pieces).strip()
    if fixed.startswith("+"):
        fixed = fixed[1:].strip()
    if not fixed:
        fixed = "1"
    return ParsedFormula(formula=formula, response=response, fixed=fixed,
                         random=tuple(random))


def formula_variables(expr: str) -> list[str]:
    """Names in a formula expression that must be data columns.

    Function names (a name followed by ``(``), keyword arguments, patsy's own
    names and numbers are skipped; string literals are ignored.
    """
    text = re.sub(r"(\"[^\"]*\"|'[^']*')", " ", expr)
    names: list[str] = []
    for m in _NAME.finditer(text):
        name = m.group(0)
        before = text[m.start() - 1] if m.start() > 0 else " "
        if before.isdigit() or name[0] == "." and name[1:2].isdigit():
            continue  # part of a number such as 1e5 or .5
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or (rest.startswith("=") and not rest.startswith("==")):
            continue
        if name in _PATSY_BUILTINS or keyword.iskeyword(name):
            continue
        if name not in names:
            names.append(name)
    return names


def quote_dotted(expr: str, columns) -> str:
    """Wrap data column names that contain dots in patsy's ``Q("...")``."""
    dotted = sorted((c for c in columns if isinstance(c, str) and "." in c),
                    key=len, reverse=True)
    for col in dotted:
        expr = re.sub(rf"(?<![A-Za-z0-9_.\"']){re.escape(col)}(?![A-Za-z0-9_.])",
                      f'Q("{col}")', expr)
    return expr
