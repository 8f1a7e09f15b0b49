"""Any column name R allows works, in every place a name flows: Python keywords
(``yield``, ``class``, ``if``, ``lambda``), non-ASCII names (``größe``), names that
are not names at all (```my days``` or ``Q("my days")``), in the fixed and random
parts, grouping factors, ``weights=``/``offset=``, ``predict(newdata)``, ``lme``,
``gls`` and the command line; duplicated names, complex data and non-finite values
made inside the formula give named errors.

Reference values: tests/reference/make_layout_reference.R (lme4 on sleepstudy with
its columns renamed).
"""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import parse_formula
from mixedjax.cli import main
from mixedjax.design import r_column_name, r_name
from mixedjax.formula import FormulaError, formula_variables, quote_columns

REF = json.loads((pathlib.Path(__file__).parent / "reference" / "layout_reference.json")
                 .read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sleep():
    return mixedjax.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def odd(sleep):
    """sleepstudy under the names the R reference script gives it."""
    return pd.DataFrame({
        "yield": sleep["Reaction"], "my days": sleep["Days"], "class": sleep["Subject"],
        "if": sleep["Reaction"], "größe": sleep["Days"],
        "lambda": (sleep["Days"] - 4.5) ** 2 / 10, "my g": sleep["Subject"]})


# -- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("formula, response, fixed, random", [
    ("`my y` ~ `my x` + (`my x` | `my g`)", 'Q("my y")', 'Q("my x")',
     [('Q("my x")', ("my g",))]),
    ('y ~ Q("my x") + (1 | Q("my g"))', "y", 'Q("my x")', [("1", ("my g",))]),
    ("yield ~ nitro + (1 | Block/Variety)", "yield", "nitro",
     [("1", ("Variety", "Block")), ("1", ("Block",))]),
    ("größe ~ x + (1 | `a b`:c)", "größe", "x", [("1", ("a b", "c"))]),
    ("y ~ I(`x^2`^2) + (1 | g)", "y", 'I(Q("x^2")**2)', [("1", ("g",))]),
    ('y ~ Q("a(b") + (1 | g)', "y", 'Q("a(b")', [("1", ("g",))]),
    ("log(y) ~ x | z", "log(y)", "1", [("x", ("z",))]),
    ("y ~ 0 + x | z", "y", "1", [("0 + x", ("z",))]),
    ("y ~ a + x | z/w", "y", "1", [("a + x", ("w", "z")), ("a + x", ("z",))]),
    ("y ~ x || z", "y", "1", [("1", ("z",)), ("0 + x", ("z",))]),
])
def test_parse_names_and_bare_bar(formula, response, fixed, random):
    p = parse_formula(formula)
    assert (p.response, p.fixed) == (response, fixed)
    assert [(t.expr, t.group) for t in p.random] == random


@pytest.mark.parametrize("formula, match", [
    ("y ~ `x + (1 | g)", "unmatched backtick"),
    ("y ~ x | z | w", "not a column name"),
    ("y ~ x + (1 | g) | z", "more than one bar"),
])
def test_parse_errors(formula, match):
    with pytest.raises(FormulaError, match=match):
        parse_formula(formula)


def test_formula_variables_with_quotes_keywords_and_unicode():
    expr = 'Q("my days") + log(yield) + if + größe + C(f, Treatment("a"))'
    assert formula_variables(expr, ["my days", "yield", "if", "größe", "f"]) == \
        ["my days", "yield", "if", "größe", "f"]
    # without the columns, keywords cannot be told from syntax and are skipped
    assert formula_variables(expr) == ["my days", "größe", "f"]


def test_quote_columns():
    cols = ["my days", "yield", "if", "größe", "a.b", "x", "log"]
    assert quote_columns('Q("my days") + log(yield) + if + größe + a.b + x', cols) == \
        'Q("my days") + log(Q("yield")) + Q("if") + Q("größe") + Q("a.b") + x'
    once = quote_columns("yield + a.b", cols)
    assert quote_columns(once, cols) == once


@pytest.mark.parametrize("name, r", [
    # R's model.matrix names (colnames(model.matrix(~ `my days` + `if` + größe, d)))
    ("my days", "`my days`"), ("if", "`if`"), ("größe", "größe"), ("yield", "yield"),
    ("a.b", "a.b"), ("_x", "`_x`"), (".5x", "`.5x`"), ("TRUE", "`TRUE`"),
])
def test_r_name(name, r):
    assert r_name(name) == r


def test_r_column_name_of_quoted_factor_level():
    assert r_column_name('Q("my f")[T.b]') == "`my f`b"
    assert r_column_name('Q("yield"):Q("a:b")') == "yield:`a:b`"


# -- fits against lme4 -----------------------------------------------------------------------------

def _check(m, ref):
    assert m.objective == pytest.approx(ref["reml_crit"], rel=1e-8)
    assert list(m.fixef.index) == ref["fixef_names"]
    np.testing.assert_allclose(m.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-5)
    assert m.model.theta_names == ref["theta_names"]
    np.testing.assert_allclose(m.theta, ref["theta"], atol=1e-4)
    assert m.varcorr["grp"].tolist() == ref["varcorr"]["grp"]
    assert m.varcorr["var1"].tolist() == ref["varcorr"]["var1"]
    (grp, re_ref), = ref["ranef"].items()
    assert list(m.ranef) == [grp]
    assert m.ranef[grp].columns.tolist() == re_ref["columns"]


@pytest.mark.parametrize("formula", [
    "yield ~ `my days` + (`my days` | class)",
    'yield ~ Q("my days") + (Q("my days") | class)',
    "yield ~ `my days` + (`my days` | `class`)",
])
def test_keywords_and_spaces(odd, formula):
    _check(mixedjax.lmer(formula, odd), REF["keywords"])


@pytest.mark.parametrize("formula", [
    "log(`if`) ~ größe + lambda + (größe | `my g`)",
    "log(if) ~ `größe` + lambda + (größe | Q('my g'))",
])
def test_reserved_and_non_ascii(odd, formula):
    _check(mixedjax.lmer(formula, odd), REF["reserved"])


def test_predict_newdata_with_odd_names(odd):
    m = mixedjax.lmer("log(`if`) ~ größe + lambda + (größe | `my g`)", odd)
    rows = [0, 17, 99, 179]
    np.testing.assert_allclose(m.predict(odd.iloc[rows]), m.fitted.iloc[rows], rtol=1e-12)
    pop = m.predict(odd.iloc[rows], re_form="~0")
    X = np.column_stack([np.ones(4), odd["größe"].iloc[rows], odd["lambda"].iloc[rows]])
    np.testing.assert_allclose(pop, X @ m.fixef.to_numpy(), rtol=1e-12)


def test_weights_and_offset_by_any_name(odd):
    i = np.arange(len(odd))
    d = odd.assign(**{"my w": 0.5 + (i % 7) / 4, "lambda": np.sin(i)})
    f = "yield ~ `my days` + (1 | class)"
    ref = mixedjax.lmer(f, d, weights=d["my w"].to_numpy(), offset=d["lambda"].to_numpy())
    for w in ("my w", "`my w`", 'Q("my w")'):
        m = mixedjax.lmer(f, d, weights=w, offset="lambda")
        assert m.objective == pytest.approx(ref.objective, rel=1e-12)
    m = mixedjax.lmer(f, d, weights="my w", offset="lambda")
    np.testing.assert_allclose(m.predict(d.iloc[:5]), m.fitted.iloc[:5], rtol=1e-12)


def test_lme_with_odd_names_matches_lme4(odd):
    """The same model as lmer's ``keywords`` case: the same REML criterion."""
    m = mixedjax.lme("yield ~ `my days`", odd, random="~ `my days` | `my g`")
    assert -2 * m.loglik == pytest.approx(REF["keywords"]["reml_crit"], rel=1e-8)
    assert list(m.fixef.index) == ["(Intercept)", "`my days`"]
    assert m.ranef["my g"].columns.tolist() == ["(Intercept)", "`my days`"]


def test_lme_random_as_dict_with_keyword_group(odd):
    from mixedjax.nlme.grouping import parse_random
    (level,) = parse_random({"class": "~ `my days`"})
    assert level.columns == ("class",) and level.exprs == ('Q("my days")',)


def test_gls_with_keyword_names(odd, sleep):
    m = mixedjax.gls("yield ~ `my days` + class", odd)
    plain = mixedjax.gls("Reaction ~ Days + Subject", sleep)
    assert m.loglik == pytest.approx(plain.loglik, rel=1e-12)
    assert list(m.fixef.index)[:3] == ["(Intercept)", "`my days`", "class309"]


def test_cli_with_odd_names(tmp_path, capsys, odd):
    path = tmp_path / "odd.csv"
    odd.to_csv(path, index=False)
    rc = main(["fit", str(path), "yield ~ `my days` + (`my days` | class)",
               "--factors", "`class`"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    assert "REML criterion at convergence: 1743.6" in out
    assert "`my days`" in out


# -- named errors --------------------------------------------------------------------------------

def test_python_keyword_that_is_not_a_column(sleep):
    with pytest.raises(ValueError, match=r"'if' is not a column of the data"):
        mixedjax.lmer("Reaction ~ Days + if + (1 | Subject)", sleep)


def test_quoted_name_not_in_data(sleep):
    with pytest.raises(ValueError, match=r"column 'my days' \(fixed effects\) not found"):
        mixedjax.lmer('Reaction ~ Q("my days") + (1 | Subject)', sleep)


def test_duplicated_column_names(sleep):
    dup = pd.concat([sleep, sleep[["Days"]]], axis=1)
    msg = r"several columns named \['Days'\]"
    with pytest.raises(ValueError, match=msg):
        mixedjax.lmer("Reaction ~ Days + (1 | Subject)", dup)
    with pytest.raises(ValueError, match=msg):
        mixedjax.lme("Reaction ~ Days", dup, random="~ 1 | Subject")
    m = mixedjax.lmer("Reaction ~ Days + (1 | Subject)", sleep)
    with pytest.raises(ValueError, match=msg):
        m.predict(dup)
    # a duplicated column the model does not use is no ambiguity
    z = sleep[["Days"]].rename(columns={"Days": "z"})
    other = pd.concat([sleep, z, z], axis=1)
    assert mixedjax.lmer("Reaction ~ Days + (1 | Subject)", other).objective == \
        pytest.approx(m.objective, rel=1e-12)


@pytest.mark.parametrize("formula, column", [
    ("Reaction ~ Days + (1 | Subject)", "Reaction"),
    ("log(Reaction) ~ 1 + (1 | Subject)", "Reaction"),
    ("y ~ Days + (1 | Subject)", "Days"),
    ("y ~ 1 + (Days | Subject)", "Days"),
])
def test_complex_data(sleep, formula, column):
    d = sleep.assign(y=sleep["Reaction"])
    d[column] = d[column] + 1j
    with pytest.raises(TypeError, match=rf"column '{column}' has complex values"):
        mixedjax.lmer(formula, d)


def test_complex_weights(sleep):
    with pytest.raises(TypeError, match=r"weights must be real numbers"):
        mixedjax.lmer("Reaction ~ Days + (1 | Subject)", sleep, weights=np.ones(180) + 0j)


@pytest.mark.parametrize("formula, what, column", [
    ("Reaction ~ Days + I(x^2) + (1 | Subject)", "fixed-effects", "I(x^2)"),
    ("Reaction ~ Days + (I(x^2) | Subject)", "random-effects term", "I(x^2)"),
    ("log(y) ~ Days + (1 | Subject)", "response", "log(y)"),
    ("Reaction ~ log(Days) + (1 | Subject)", "fixed-effects", "log(Days)"),
])
def test_non_finite_values_made_in_the_formula(sleep, formula, what, column):
    """lme4 refuses them too (``NA/NaN/Inf in foreign function call``); they are
    never dropped as aliased columns."""
    assert REF["nonfinite_errors"]["fixed"].startswith("NA/NaN/Inf")
    d = sleep.assign(x=sleep["Days"].astype(float), y=sleep["Reaction"])
    d.loc[0, "x"] = 1e200
    d.loc[0, "y"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"have \d+ non-finite value") as info:
            mixedjax.lmer(formula, d)
    assert what in str(info.value) and f"[{column!r}]" in str(info.value)


def test_non_finite_newdata(sleep):
    m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    new = sleep.head(3).assign(Days=[np.inf, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"\['Days'\] have 1 non-finite"):
        m.predict(new)


def test_ranova_with_spaces_in_names():
    """ranova rebuilds each reduced model's formula: names with spaces are written in
    backticks, as R labels the rows."""
    d = mixedjax.datasets.load("sleepstudy").rename(columns={"Subject": "my g", "Days": "my days"})
    m = mixedjax.lmer("Reaction ~ `my days` + (`my days` | `my g`)", d)
    ref = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"))
    table, expected = m.ranova(), ref.ranova()
    assert list(table.index) == ["<none>", "`my days` in (`my days` | `my g`)"]
    np.testing.assert_allclose(table["logLik"].to_numpy(), expected["logLik"].to_numpy(),
                               rtol=1e-10)
