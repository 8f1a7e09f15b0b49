"""Parsing of lme4 model formulas.

A formula such as ``y ~ x + (1 + x | g) + (1 | a/b)`` is split into

* the response expression (``y``),
* the fixed-effects part (``x``), later handed to patsy, and
* a tuple of :class:`RandomTerm` -- one per random-effects term after lme4's
  expansions: ``(x || g)`` becomes ``(1 | g) + (0 + x | g)`` and ``(1 | a/b)``
  becomes ``(1 | b:a) + (1 | a)`` (lme4's ``findbars``/``expandSlash`` order and
  naming).  A bar outside parentheses binds loosest, as in R: ``y ~ x | g`` is
  ``y ~ 1 + (x | g)`` (lme4's ``findbars``/``nobars``).

R's syntax is translated to patsy's: ``^`` (power, also inside ``I()``) to
``**``, and an R backtick name (```my days```) to patsy's ``Q("my days")``.
Once the data's columns are known, :func:`quote_columns` wraps every column name
that is not a plain Python name (``a.b``, which Python reads as an attribute;
keywords such as ``yield`` or ``class``; non-ASCII names) in ``Q("...")``, so that
patsy looks the name up in the data instead of evaluating it as Python code.
"""

from __future__ import annotations

import ast
import keyword
import re
from dataclasses import dataclass

__all__ = ["RandomTerm", "ParsedFormula", "FormulaError", "parse_formula",
           "formula_variables", "quote_columns", "column_name",
           "translate_r_syntax", "split_top", "rename_quoted"]

# An R name: letters (any script), digits, '_' and '.', not starting with a digit or
# with '.' followed by a digit.
_NAME = re.compile(r"(?:[^\W\d]|\.(?!\d))[\w.]*")
_STRING = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
_Q_CALL = re.compile(rf"Q\(\s*({_STRING})\s*\)")
_TOKEN = re.compile(rf"(?P<q>(?<![\w.])Q\(\s*(?P<lit>{_STRING})\s*\))|(?P<str>{_STRING})"
                    rf"|(?P<name>{_NAME.pattern})")
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


def _q(name: str) -> str:
    """patsy's quoting of a column name: ``Q("name")``."""
    return 'Q("' + name.replace("\\", "\\\\").replace('"', '\\"') + '")'


def _outside_strings(text: str):
    """(index, character) of each character of ``text`` outside string literals
    (the quotes themselves included), so that a column name such as ``Q("a(b")``
    does not count as syntax."""
    quote, escaped = None, False
    for i, ch in enumerate(text):
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
            continue
        yield i, ch


def translate_r_syntax(text: str) -> str:
    """R's formula syntax -> patsy's: ``^`` -> ``**`` and ```name``` -> ``Q("name")``
    (outside string literals)."""
    out: list[str] = []
    last, skip_to = 0, -1
    for i, ch in _outside_strings(text):
        if i < skip_to:
            continue
        if ch == "^":
            out += [text[last:i], "**"]
            last = i + 1
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise FormulaError(f"unmatched backtick in {text!r}")
            name = text[i + 1:end]
            if not name:
                raise FormulaError(f"empty backtick name `` in {text!r}")
            out += [text[last:i], _q(name)]
            last = skip_to = end + 1
    out.append(text[last:])
    return "".join(out)


def _check_parentheses(text: str, formula: str) -> None:
    depth = 0
    for _, ch in _outside_strings(text):
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


def split_top(text: str, seps: str) -> list[tuple[str, str]]:
    """Split ``text`` at characters in ``seps`` outside parentheses and strings.

    Returns ``(separator, piece)`` pairs; the first separator is ``""``.
    """
    out: list[tuple[str, str]] = []
    depth, start, sep = 0, 0, ""
    for i, ch in _outside_strings(text):
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
    for i, ch in _outside_strings(text):
        if i < open_idx:
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _bar_split(inner: str) -> tuple[str, str, bool] | None:
    """Split ``expr | g`` or ``expr || g`` at the first bar at depth 0; None if no bar."""
    depth = 0
    for i, ch in _outside_strings(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and ch == "|":
            double = i + 1 < len(inner) and inner[i + 1] == "|"
            rhs = inner[i + 2:] if double else inner[i + 1:]
            return inner[:i].strip(), rhs.strip(), double
    return None


def column_name(token: str) -> str | None:
    """The column a grouping-factor token names: a bare R name (``Subject``,
    ``a.b``, ``größe``), patsy's ``Q("my g")`` or R's ```my g```; None for anything
    else."""
    token = token.strip()
    if len(token) > 2 and token[0] == token[-1] == "`":
        return token[1:-1]
    m = _Q_CALL.fullmatch(token)
    if m:
        return ast.literal_eval(m.group(1))
    return token if _NAME.fullmatch(token) else None


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
    nested: list[tuple[str, ...]] = []
    for _, piece in split_top(text, "/"):
        names = []
        for _, part in split_top(piece, ":"):
            name = column_name(part)
            if name is None:
                raise FormulaError(f"grouping factor {piece!r} in term {term!r} is not a "
                                   "column name or an interaction a:b of column names")
            names.append(name)
        nested.append(tuple(names))
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
    pieces = split_top(lhs, "+-")
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


def _random_terms(bar: tuple[str, str, bool], term: str) -> list[RandomTerm]:
    """The terms of one bar expression ``lhs | grp`` (``||`` and ``/`` expanded)."""
    lhs, grp, double = bar
    if not lhs:
        raise FormulaError(f"random-effects term {term!r} has no expression before '|'")
    if "|" in (c for _, c in _outside_strings(lhs)):
        raise FormulaError(f"random-effects term {term!r} has more than one bar; write "
                           "each term in its own parentheses, as in (1 | a) + (x | b)")
    groups = _parse_group(grp, term)
    exprs = _expand_double_bar(lhs, term) if double else [lhs]
    # lme4 keeps the expansion order: all expressions for the innermost group first.
    return [RandomTerm(expr=e, group=g) for g in groups for e in exprs]


def parse_formula(formula: str) -> ParsedFormula:
    """Parse an lme4 formula string into response, fixed part and random terms."""
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    text = translate_r_syntax(formula).strip()
    _check_parentheses(text, formula)
    sides = split_top(text, "~")
    if len(sides) != 2:
        raise FormulaError(f"formula {formula!r} must have exactly one '~' "
                           "separating response and predictors")
    response, rhs = sides[0][1], sides[1][1]
    if not response:
        raise FormulaError(f"formula {formula!r} has no response left of '~'")
    if not rhs:
        raise FormulaError(f"formula {formula!r} has nothing right of '~'")
    bare = _bar_split(rhs)
    if bare is not None:
        # R's '|' binds more loosely than '+': the whole right-hand side is one
        # random-effects term and the fixed part is the intercept (lme4's nobars).
        return ParsedFormula(formula=formula, response=response, fixed="1",
                             random=tuple(_random_terms(bare, rhs)))

    fixed_pieces: list[str] = []
    random: list[RandomTerm] = []
    for sep, piece in split_top(rhs, "+-"):
        if not piece:
            if sep == "" and rhs.lstrip().startswith("-"):
                continue  # leading unary minus, as in "-1 + x"
            raise FormulaError(f"empty term in formula {formula!r}")
        inner = piece
        while inner.startswith("(") and _matching_paren(inner, 0) == len(inner) - 1:
            inner = inner[1:-1].strip()   # ((1 | g)) is (1 | g), as for lme4's findbars
        bar = _bar_split(inner) if inner != piece else None
        if bar is None:
            if "|" in (c for _, c in _outside_strings(piece)):
                raise FormulaError(f"random-effects term {piece!r} must be enclosed in "
                                   "parentheses, as in (1 | g)")
            fixed_pieces.append(f"{sep} {piece}".strip() if sep else piece)
            continue
        if sep == "-":
            raise FormulaError(f"a random-effects term cannot be subtracted: {piece!r}")
        random.extend(_random_terms(bar, piece))

    fixed = " ".join(fixed_pieces).strip()
    if fixed.startswith("+"):
        fixed = fixed[1:].strip()
    if not fixed:
        fixed = "1"
    return ParsedFormula(formula=formula, response=response, fixed=fixed,
                         random=tuple(random))


def _names(expr: str):
    """(start, end, column name, quoted) of each name in a formula expression that
    can refer to a data column: bare names that are neither a function called
    (``log(``) nor a keyword argument (``levels=``) nor part of a number (``1e5``),
    and the names inside patsy's ``Q("...")`` (``quoted`` True)."""
    for m in _TOKEN.finditer(expr):
        if m.group("q"):
            yield m.start(), m.end(), ast.literal_eval(m.group("lit")), True
            continue
        if m.group("str"):
            continue
        name = m.group("name")
        if m.start() > 0 and expr[m.start() - 1].isdigit():
            continue  # part of a number such as 1e5
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or (rest.startswith("=") and not rest.startswith("==")):
            continue
        yield m.start(), m.end(), name, False


def formula_variables(expr: str, columns=None) -> list[str]:
    """Names in a formula expression that must be data columns, in order of first use.

    Function names, keyword arguments and numbers are skipped; ``Q("my days")``
    names the column ``my days``.  Without ``columns``, patsy's own names and Python
    keywords are skipped; with the data's ``columns``, a name that is a column counts
    whatever it is (``yield``, ``class``, ``C``).
    """
    cols = None if columns is None else {c for c in columns if isinstance(c, str)}
    names: list[str] = []
    for _, _, name, quoted in _names(expr):
        if not quoted and not (cols is not None and name in cols):
            if name in _PATSY_BUILTINS or keyword.iskeyword(name):
                continue
        if name not in names:
            names.append(name)
    return names


def _needs_quotes(name: str) -> bool:
    return not name.isascii() or not name.isidentifier() or keyword.iskeyword(name)


def quote_columns(expr: str, columns) -> str:
    """Wrap each data column named bare in ``expr`` that patsy cannot evaluate as a
    Python name in ``Q("...")``: names with dots (an attribute access in Python),
    Python keywords (``yield``, ``class``, ``if``) and non-ASCII names.  Names
    already quoted, functions and keyword arguments are left alone."""
    cols = {c for c in columns if isinstance(c, str)}
    out: list[str] = []
    last = 0
    for start, end, name, quoted in _names(expr):
        if quoted or name not in cols or not _needs_quotes(name):
            continue
        out += [expr[last:start], _q(name)]
        last = end
    out.append(expr[last:])
    return "".join(out)


def rename_quoted(text: str, rename) -> str:
    """``text`` with each ``Q("name")`` replaced by ``rename(name)``."""
    return _Q_CALL.sub(lambda m: rename(ast.literal_eval(m.group(1))), text)

