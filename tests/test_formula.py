"""Parsing of lme4 formulas (parse_formula, formula_variables, quote_columns) and
their end-to-end effect on the design built from bundled data sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import make_design, parse_formula
from mixedjax.formula import RandomTerm, formula_variables, quote_columns


def _ws(text: str) -> str:
    """Whitespace-insensitive form of a formula fragment."""
    return "".join(text.split())


# (formula, response, fixed, [(expr, group), ...]) -- fixed parts and exprs are
# compared ignoring whitespace; groups and term order exactly.
CASES = [
    # basic terms
    ("y ~ x + (1|g)", "y", "x", [("1", ("g",))]),
    ("y ~ x + (x|g)", "y", "x", [("x", ("g",))]),
    ("y ~ x + (1 + x|g)", "y", "x", [("1 + x", ("g",))]),
    ("y ~ x + (0 + x|g)", "y", "x", [("0 + x", ("g",))]),
    # double bar: lme4's expandDoubleVerts
    ("y ~ x + (x||g)", "y", "x", [("1", ("g",)), ("0 + x", ("g",))]),
    ("y ~ x + (1 + x + z || g)", "y", "x",
     [("1", ("g",)), ("0 + x", ("g",)), ("0 + z", ("g",))]),
    ("y ~ x + (0 + x || g)", "y", "x", [("0 + x", ("g",))]),
    ("y ~ x + (x - 1 || g)", "y", "x", [("0 + x", ("g",))]),
    # nesting: lme4's expandSlash order and naming
    ("y ~ x + (1|a/b)", "y", "x", [("1", ("b", "a")), ("1", ("a",))]),
    ("y ~ x + (1|a/b/c)", "y", "x",
     [("1", ("c", "b", "a")), ("1", ("b", "a")), ("1", ("a",))]),
    ("y ~ x + (x|a/b)", "y", "x", [("x", ("b", "a")), ("x", ("a",))]),
    ("y ~ x + (x||a/b)", "y", "x",
     [("1", ("b", "a")), ("0 + x", ("b", "a")), ("1", ("a",)), ("0 + x", ("a",))]),
    # interaction grouping factor
    ("y ~ x + (1|a:b)", "y", "x", [("1", ("a", "b"))]),
    # crossed factors
    ("y ~ x + (1|a) + (1|b)", "y", "x", [("1", ("a",)), ("1", ("b",))]),
    # several terms on one factor
    ("y ~ x + (1|g) + (0 + x|g)", "y", "x", [("1", ("g",)), ("0 + x", ("g",))]),
    # intercept removal in the fixed part
    ("y ~ -1 + x + (1|g)", "y", "-1 + x", [("1", ("g",))]),
    ("y ~ x - 1 + (1|g)", "y", "x - 1", [("1", ("g",))]),
    ("y ~ 0 + x + (1|g)", "y", "0 + x", [("1", ("g",))]),
    ("y ~ x + (1|g) - 1", "y", "x - 1", [("1", ("g",))]),
    # no fixed terms at all -> intercept only
    ("y ~ (1|g)", "y", "1", [("1", ("g",))]),
    ("y ~ (1|a) + (1|b)", "y", "1", [("1", ("a",)), ("1", ("b",))]),
    # random term first
    ("y ~ (1|g) + x", "y", "x", [("1", ("g",))]),
    # R's ^ -> Python's **
    ("y ~ x + I(x^2) + (1|g)", "y", "x + I(x**2)", [("1", ("g",))]),
    ("y ~ I(x ^ 2) + (1|g)", "y", "I(x ** 2)", [("1", ("g",))]),
    # transformed response
    ("log(y) ~ x + (1|g)", "log(y)", "x", [("1", ("g",))]),
    ("np.log(y) ~ x + (1|g)", "np.log(y)", "x", [("1", ("g",))]),
    # whitespace variations
    ("y~x+(1|g)", "y", "x", [("1", ("g",))]),
    ("  y  ~  x  +  ( 1 | g )  ", "y", "x", [("1", ("g",))]),
    ("y~x+(1+x|g)", "y", "x", [("1 + x", ("g",))]),
    ("y ~ x + ( x || g )", "y", "x", [("1", ("g",)), ("0 + x", ("g",))]),
    ("y ~ x + (1 | a / b)", "y", "x", [("1", ("b", "a")), ("1", ("a",))]),
    ("y ~ x + (1 | a : b)", "y", "x", [("1", ("a", "b"))]),
    ("y\t~\tx +\n    (1|g)", "y", "x", [("1", ("g",))]),
]


@pytest.mark.parametrize("formula, response, fixed, random", CASES,
                         ids=[c[0] for c in CASES])
def test_parse_formula(formula, response, fixed, random):
    parsed = parse_formula(formula)
    assert parsed.formula == formula
    assert parsed.response == response
    assert _ws(parsed.fixed) == _ws(fixed)
    got = [(_ws(t.expr), t.group) for t in parsed.random]
    assert got == [(_ws(e), g) for e, g in random]
    assert all(isinstance(t, RandomTerm) for t in parsed.random)
    assert isinstance(parsed.random, tuple)


def test_double_bar_expansion_exact_text():
    parsed = parse_formula("y ~ x + (x || g)")
    assert parsed.random == (RandomTerm("1", ("g",)), RandomTerm("0 + x", ("g",)))


def test_power_translated_in_fixed_part():
    assert "^" not in parse_formula("y ~ I(x^2) + (1|g)").fixed


@pytest.mark.parametrize("group, name", [
    (("g",), "g"), (("b", "a"), "b:a"), (("c", "b", "a"), "c:b:a"),
])
def test_group_name(group, name):
    term = RandomTerm("1", group)
    assert term.group_name == name
    assert str(term) == f"(1 | {name})"


def test_nested_group_names():
    parsed = parse_formula("y ~ (1|a/b/c)")
    assert [t.group_name for t in parsed.random] == ["c:b:a", "b:a", "a"]


@pytest.mark.parametrize("expr, names", [
    ("x", ["x"]),
    ("C(x, Sum) + I(z**2) + np.log(w)", ["x", "z", "w"]),
    ("C(x, Treatment(reference='b'))", ["x"]),
    ('C(f, levels=["a", "b"])', ["f"]),
    ("x:z + 2.5*w", ["x", "z", "w"]),
    ("x*z + x", ["x", "z"]),
    ("a.b + I(c.d ** 2)", ["a.b", "c.d"]),
    ("1 + 1e5*x", ["x"]),
    ("1", []),
    ("0 + x", ["x"]),
    ("scale(x) + center(z)", ["x", "z"]),
    ("log(y)", ["y"]),
])
def test_formula_variables(expr, names):
    assert formula_variables(expr) == names


@pytest.mark.parametrize("expr, columns, expected", [
    ("a.b + x", ["a.b", "x"], 'Q("a.b") + x'),
    ("x + z", ["x", "z"], "x + z"),
    ("np.log(a.b)", ["a.b"], 'np.log(Q("a.b"))'),
    ("I(a.b**2)", ["a.b"], 'I(Q("a.b")**2)'),
    ("a.bc + a.b", ["a.b", "a.bc"], 'Q("a.bc") + Q("a.b")'),
    ('Q("a.b") + a.b', ["a.b"], 'Q("a.b") + Q("a.b")'),
    ("xa.b + a.b2", ["a.b"], "xa.b + a.b2"),
    ("x + z", ["x", 3, None], "x + z"),
])
def test_quote_columns(expr, columns, expected):
    assert quote_columns(expr, columns) == expected


# -- end to end on bundled data ------------------------------------------------------------

def _load(name):
    return mixedjax.datasets.load(name)


def test_machines_no_intercept_term():
    d = make_design("score ~ Machine + (0 + Machine | Worker)", _load("machines"))
    assert len(d.terms) == 1
    assert d.terms[0].group_name == "Worker"
    assert d.terms[0].cnames == ["MachineA", "MachineB", "MachineC"]
    assert d.terms[0].nlevels == 6


def test_machines_correlated_term():
    d = make_design("score ~ Machine + (Machine | Worker)", _load("machines"))
    assert len(d.terms) == 1
    assert d.terms[0].cnames == ["(Intercept)", "MachineB", "MachineC"]
    assert d.xnames == ["(Intercept)", "MachineB", "MachineC"]


def test_pastes_nested():
    d = make_design("strength ~ 1 + (1|batch/cask)", _load("pastes"))
    assert [t.group_name for t in d.terms] == ["cask:batch", "batch"]
    assert [t.nlevels for t in d.terms] == [30, 10]
    assert d.terms[0].group == ("cask", "batch")
    assert d.terms[0].levels[0] == "a:A"
    assert "b:A" in d.terms[0].levels and "c:J" in d.terms[0].levels
    assert d.terms[1].levels[:3] == ["A", "B", "C"]
    assert d.xnames == ["(Intercept)"]


def test_oats_fixed_columns_in_r_order():
    d = make_design("Y ~ V*N + (1|B/V)", _load("oats"))
    assert d.xnames == [
        "(Intercept)", "VMarvellous", "VVictory", "N0.2cwt", "N0.4cwt", "N0.6cwt",
        "VMarvellous:N0.2cwt", "VVictory:N0.2cwt", "VMarvellous:N0.4cwt",
        "VVictory:N0.4cwt", "VMarvellous:N0.6cwt", "VVictory:N0.6cwt",
    ]
    assert d.X.shape == (72, 12)
    assert [(t.group_name, t.nlevels) for t in d.terms] == [("V:B", 18), ("B", 6)]


def test_penicillin_crossed():
    d = make_design("diameter ~ 1 + (1|plate) + (1|sample)", _load("penicillin"))
    assert [(t.group_name, t.nlevels) for t in d.terms] == [("plate", 24), ("sample", 6)]


@pytest.mark.parametrize("formula", [
    "Reaction ~ -1 + Days + (1|Subject)",
    "Reaction ~ 0 + Days + (1|Subject)",
    "Reaction ~ Days - 1 + (1|Subject)",
])
def test_intercept_removed_end_to_end(formula):
    d = make_design(formula, _load("sleepstudy"))
    assert d.xnames == ["Days"]


def test_power_end_to_end():
    df = _load("sleepstudy")
    d = make_design("Reaction ~ Days + I(Days^2) + (1|Subject)", df)
    assert d.xnames == ["(Intercept)", "Days", "I(Days^2)"]
    np.testing.assert_allclose(d.X[:, 2], df["Days"].to_numpy() ** 2)


def test_transformed_response_end_to_end():
    df = _load("sleepstudy")
    d = make_design("np.log(Reaction) ~ Days + (1|Subject)", df)
    np.testing.assert_allclose(d.y, np.log(df["Reaction"].to_numpy()))


def test_intercept_only_fixed_end_to_end():
    d = make_design("Reaction ~ (1|Subject)", _load("sleepstudy"))
    assert d.xnames == ["(Intercept)"]
    np.testing.assert_array_equal(d.X, np.ones((180, 1)))


def test_dotted_column_end_to_end():
    df = _load("sleepstudy").rename(columns={"Days": "days.n"})
    d = make_design("Reaction ~ days.n + (days.n | Subject)", df)
    assert d.xnames == ["(Intercept)", "days.n"]
    assert d.terms[0].cnames == ["(Intercept)", "days.n"]


def test_double_bar_fit_sleepstudy():
    m = mixedjax.lmer("Reaction ~ Days + (Days||Subject)", _load("sleepstudy"))
    vc = m.varcorr
    assert vc["grp"].tolist() == ["Subject", "Subject.1", "Residual"]
    assert vc["var1"].tolist()[:2] == ["(Intercept)", "Days"]
    assert list(m.ranef) == ["Subject"]
    re = m.ranef["Subject"]
    assert isinstance(re, pd.DataFrame)
    assert re.columns.tolist() == ["(Intercept)", "Days"]
    assert re.shape == (18, 2)
