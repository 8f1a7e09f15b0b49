"""Bad input gives a clear ValueError/TypeError naming the problem, never a JAX or
patsy traceback; missing values are dropped and counted; prediction checks levels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import lmer, make_design, parse_formula


@pytest.fixture
def df():
    """24 rows, 6 groups of 4, a numeric predictor, a string column."""
    rng = np.random.default_rng(0)
    n = 24
    return pd.DataFrame({
        "y": rng.normal(size=n),
        "x": rng.normal(size=n),
        "g": np.repeat(list("abcdef"), 4),
        "s": list("uv") * 12,
    })


def _raises(exc, match, formula, data):
    """The error from the public entry point (lmer) and from make_design."""
    with pytest.raises(exc, match=match) as info:
        lmer(formula, data)
    assert type(info.value).__module__.split(".")[0] in ("builtins", "mixedjax")
    with pytest.raises(exc, match=match):
        make_design(formula, data)


# -- columns and values --------------------------------------------------------------------

def test_missing_fixed_column(df):
    _raises(ValueError, r"'z'.*not found", "y ~ z + (1|g)", df)


def test_missing_response_column(df):
    _raises(ValueError, r"'yy'.*not found", "yy ~ x + (1|g)", df)


def test_missing_grouping_column(df):
    _raises(ValueError, r"'h'.*not found", "y ~ x + (1|h)", df)


def test_missing_random_slope_column(df):
    _raises(ValueError, r"'w'.*not found", "y ~ x + (w|g)", df)


def test_string_response(df):
    _raises(TypeError, r"response 's' must be numeric", "s ~ x + (1|g)", df)


def test_categorical_response(df):
    df["c"] = pd.Categorical(df["s"])
    _raises(TypeError, r"response 'c' must be numeric", "c ~ x + (1|g)", df)


def test_infinite_response(df):
    df.loc[3, "y"] = np.inf
    _raises(ValueError, r"column 'y' has 1 infinite", "y ~ x + (1|g)", df)


def test_infinite_predictor(df):
    df.loc[[2, 7], "x"] = -np.inf
    _raises(ValueError, r"column 'x' has 2 infinite", "y ~ x + (1|g)", df)


def test_infinite_value_in_unused_column_is_ignored(df):
    df["unused"] = np.inf
    d = make_design("y ~ x + (1|g)", df)
    assert d.n == 24


def test_grouping_factor_with_one_level(df):
    df["g"] = "a"
    _raises(ValueError, r"grouping factor 'g'.*1 level", "y ~ x + (1|g)", df)


def test_grouping_factor_with_one_level_after_dropping_nan(df):
    df.loc[df["g"] != "a", "y"] = np.nan
    _raises(ValueError, r"grouping factor 'g'.*1 level", "y ~ x + (1|g)", df)


def test_grouping_factor_with_as_many_levels_as_rows(df):
    df["g"] = [f"l{i}" for i in range(len(df))]
    _raises(ValueError, r"grouping factor 'g'.*24 levels for 24 observations",
            "y ~ x + (1|g)", df)


def test_all_nan_response(df):
    df["y"] = np.nan
    _raises(ValueError, r"no rows left", "y ~ x + (1|g)", df)


# -- malformed formulas --------------------------------------------------------------------

@pytest.mark.parametrize("formula, match", [
    ("y ~ x + (1|)", r"no grouping factor"),
    ("y ~ x + (x | )", r"no grouping factor"),
    ("y ~ x + (|g)", r"no expression before '\|'"),
    ("y ~ x + (1|g", r"unbalanced parentheses"),
    ("y ~ x + 1|g)", r"unbalanced parentheses"),
    ("y ~ x + ((1|g)", r"unbalanced parentheses"),
    ("y ~ x + (1|g) | h", r"more than one bar"),   # y ~ x + 1|g is lme4's (x + 1 | g)
    ("y ~ x + (1 | g + h)", r"grouping factor 'g \+ h'"),
    ("y ~ x", r"no random-effects term"),
    ("y ~ x + (1)", r"no random-effects term"),
    ("y x + (1|g)", r"exactly one '~'"),
    ("y ~ x ~ z + (1|g)", r"exactly one '~'"),
    ("~ x + (1|g)", r"no response"),
    ("y ~ ", r"nothing right of '~'"),
    ("y ~ x + - (1|g)", r"empty term"),
])
def test_malformed_formula(df, formula, match):
    _raises(ValueError, match, formula, df)


@pytest.mark.parametrize("formula", ["y ~ x + (1|)", "y ~ x + (1|g", "y x + (1|g)"])
def test_malformed_formula_from_parse_formula(formula):
    with pytest.raises(ValueError):
        parse_formula(formula)


@pytest.mark.parametrize("formula", [42, None, ["y ~ x + (1|g)"], b"y ~ x + (1|g)"])
def test_non_string_formula_parse(formula):
    with pytest.raises(TypeError, match=r"formula must be a string"):
        parse_formula(formula)


@pytest.mark.parametrize("formula", [42, None, ["y ~ x + (1|g)"]])
def test_non_string_formula_fit(df, formula):
    with pytest.raises(TypeError, match=r"formula must be a string"):
        lmer(formula, df)
    with pytest.raises(TypeError, match=r"formula must be a string"):
        make_design(formula, df)


# -- the data argument ---------------------------------------------------------------------

@pytest.mark.parametrize("convert, name", [
    (lambda d: d.to_dict("list"), "dict"),
    (lambda d: d[["y", "x"]].to_numpy(), "ndarray"),
    (lambda d: None, "NoneType"),
])
def test_data_not_a_dataframe(df, convert, name):
    with pytest.raises(TypeError, match=rf"data must be a pandas DataFrame, got {name}"):
        lmer("y ~ x + (1|g)", convert(df))


def test_more_parameters_than_observations():
    rng = np.random.default_rng(1)
    n = 8
    tiny = pd.DataFrame({f"x{j}": rng.normal(size=n) for j in range(1, 7)})
    tiny["y"] = rng.normal(size=n)
    tiny["g"] = list("aabbccdd")
    # 7 fixed effects + 1 theta + sigma = 9 parameters for 8 rows
    _raises(ValueError, r"9 parameters but only 8 observations",
            "y ~ x1 + x2 + x3 + x4 + x5 + x6 + (1|g)", tiny)


def test_more_fixed_effects_than_observations():
    rng = np.random.default_rng(2)
    n = 6
    tiny = pd.DataFrame({f"x{j}": rng.normal(size=n) for j in range(1, 7)})
    tiny["y"] = rng.normal(size=n)
    tiny["g"] = list("aabbcc")
    # intercept + 5 slopes = 6 fixed effects for 6 rows
    _raises(ValueError, r"6 observations are too few for 6 fixed effects",
            "y ~ x1 + x2 + x3 + x4 + x5 + (1|g)", tiny)


def test_too_many_random_effects():
    rng = np.random.default_rng(3)
    tiny = pd.DataFrame({"y": rng.normal(size=6), "x": rng.normal(size=6),
                         "g": list("aabbcc")})
    _raises(ValueError, r"6 random effects for 6 observations", "y ~ x + (x|g)", tiny)


# -- missing values ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sleep_na_fit():
    df = mixedjax.datasets.load("sleepstudy")
    df.loc[[0, 5, 7], "Days"] = np.nan
    df.loc[2, "Reaction"] = np.nan
    df["junk"] = np.nan          # unused column: must not drop rows
    return lmer("Reaction ~ Days + (1|Subject)", df)


def test_nan_rows_dropped_and_counted(sleep_na_fit):
    assert sleep_na_fit.n_dropped == 4
    assert sleep_na_fit.nobs == 176
    assert len(sleep_na_fit.fitted) == 176
    assert not set(sleep_na_fit.fitted.index) & {0, 2, 5, 7}


def test_nan_in_unused_column_drops_nothing(df):
    df["junk"] = np.nan
    df["s"] = None
    d = make_design("y ~ x + (1|g)", df)
    assert d.n_dropped == 0 and d.n == 24


def test_nan_in_grouping_column_dropped(df):
    df["g"] = df["g"].astype(object)
    df.loc[[0, 9], "g"] = None
    d = make_design("y ~ x + (1|g)", df)
    assert d.n_dropped == 2 and d.n == 22


# -- prediction ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sleep_ri_fit():
    return lmer("Reaction ~ Days + (1|Subject)", mixedjax.datasets.load("sleepstudy"))


@pytest.fixture
def newdata():
    return pd.DataFrame({"Days": [1.0, 2.0, 3.0], "Subject": ["308", "999", "zzz"]})


def test_predict_new_level_raises(sleep_ri_fit, newdata):
    with pytest.raises(ValueError, match=r"'Subject'.*'999', 'zzz'.*allow_new_levels"):
        sleep_ri_fit.predict(newdata)


def test_predict_new_level_allowed(sleep_ri_fit, newdata):
    pred = sleep_ri_fit.predict(newdata, allow_new_levels=True)
    pop = sleep_ri_fit.predict(newdata, re_form="~0")
    assert len(pred) == 3
    np.testing.assert_allclose(pred.iloc[1:], pop.iloc[1:], rtol=0, atol=1e-10)
    # the known level keeps its random effect
    b308 = sleep_ri_fit.ranef["Subject"].loc["308", "(Intercept)"]
    np.testing.assert_allclose(pred.iloc[0], pop.iloc[0] + b308, rtol=1e-12)
    known = sleep_ri_fit.predict(newdata.iloc[:1])
    np.testing.assert_allclose(pred.iloc[0], known.iloc[0], rtol=1e-12)


def test_predict_newdata_missing_fixed_column(sleep_ri_fit, newdata):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['Days'\]"):
        sleep_ri_fit.predict(newdata[["Subject"]])


def test_predict_newdata_missing_grouping_column(sleep_ri_fit, newdata):
    with pytest.raises(ValueError, match=r"lacks grouping column\(s\) \['Subject'\]"):
        sleep_ri_fit.predict(newdata[["Days"]])


def test_predict_newdata_not_a_dataframe(sleep_ri_fit, newdata):
    with pytest.raises(TypeError, match=r"newdata must be a pandas DataFrame"):
        sleep_ri_fit.predict(newdata.to_dict("list"))
