"""broom.mixed's tidy / glance of lme and gls fits, against R.

Reference: tests/reference/nlme_tidy_reference.json (made by
make_nlme_tidy_reference.R).  Estimates, standard errors, statistics and fixed
intervals agree with R to the optimizers' agreement; the variance parameters'
intervals to nlme's finite-difference Hessian (about 1e-3).  broom.mixed's
tidy.lme ignores conf.level (its intervals are 95%); the 90% lme references
are intervals(m, level = 0.9) in tidy.lme's rows.
"""

from __future__ import annotations

import functools
import json
import math
import pickle

import numpy as np
import pytest

import mixedjax
from conftest import REF as REF_DIR
from mixedjax import CorAR1, CorCompSymm, VarIdent, gls, lme

with open(REF_DIR / "nlme_tidy_reference.json") as fh:
    REF = json.load(fh)


def _orthodont():
    d = mixedjax.datasets.load("orthodont")
    d["Sex"] = d["Sex"].cat.reorder_categories(["Male", "Female"])
    return d


ORTHO = _orthodont()
FORMULA = "distance ~ age + Sex"
FITS = {
    "lme_slope": lambda: lme(FORMULA, ORTHO, "~ 1 + age | Subject"),
    "lme_slope_ml": lambda: lme(FORMULA, ORTHO, "~ 1 + age | Subject", method="ML"),
    "lme_varident": lambda: lme("distance ~ age", ORTHO, "~ 1 | Subject",
                                weights=VarIdent("~ 1 | Sex")),
    "lme_varident_fixed": lambda: lme("distance ~ age", ORTHO, "~ 1 | Subject",
                                      weights=VarIdent("~ 1 | Sex", value={"Male": 2},
                                                       fixed=True)),
    "gls_ar1": lambda: gls(FORMULA, ORTHO, correlation=CorAR1("~ 1 | Subject")),
    "gls_cs_ml": lambda: gls(FORMULA, ORTHO, method="ML",
                             correlation=CorCompSymm("~ 1 | Subject")),
}
NUMERIC = {"estimate": 1e-5, "std.error": 1e-5, "df": 0, "statistic": 1e-5, "p.value": 1e-4}


@functools.cache
def fit(name):
    return FITS[name]()


def _num(values):
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _compare(got, ref, ci_rtol=1e-5, ran_ci_rtol=2e-3, ran_ci_atol=1e-3):
    assert list(got.columns) == list(ref)
    assert list(got["term"]) == ref["term"]
    for col in ("effect", "group", "estimated"):
        if col in ref:
            assert list(got[col]) == ref[col]
    fixed = (got["effect"] == "fixed").to_numpy() if "effect" in ref else np.ones(len(got), bool)
    for col, rtol in NUMERIC.items():
        if col in ref:
            np.testing.assert_allclose(got[col].to_numpy(float), _num(ref[col]), rtol=rtol,
                                       atol=1e-12, err_msg=col)
    for col in ("conf.low", "conf.high"):
        if col in ref:
            g, r = got[col].to_numpy(float), _num(ref[col])
            np.testing.assert_allclose(g[fixed], r[fixed], rtol=ci_rtol, err_msg=col)
            np.testing.assert_allclose(g[~fixed], r[~fixed], rtol=ran_ci_rtol, atol=ran_ci_atol,
                                       err_msg=col)


@pytest.mark.parametrize("name,kind", [(n, k) for n in REF if n != "versions"
                                       for k in REF[n] if k.startswith("tidy")])
def test_tidy(name, kind):
    ref = REF[name][kind]
    m = fit(name)
    is_lme = name.startswith("lme")
    if kind == "tidy_vcov":
        got = m.tidy(effects="ran_pars", scales="vcov")
    elif kind == "tidy_plain":
        got = m.tidy()
    else:
        level = 0.9 if kind == "tidy_90" else 0.95
        got = m.tidy(conf_int=True, conf_level=level)
    _compare(got, ref)
    if is_lme and "df" in ref:   # nlme's containment df
        fixed = (got["effect"] == "fixed").to_numpy()
        np.testing.assert_array_equal(got["df"].to_numpy()[fixed], m.fixed_df.to_numpy())


@pytest.mark.parametrize("name", [n for n in REF if n != "versions"])
def test_glance(name):
    ref = REF[name]["glance"]
    got = fit(name).glance()
    assert list(got.columns) == list(ref)
    for col, values in ref.items():
        if col in ("nobs", "df", "df.residual"):
            assert int(got[col].iloc[0]) == values[0]
        else:
            assert math.isclose(float(got[col].iloc[0]), values[0], rel_tol=1e-6), col


def test_lme_names_and_order():
    """broom.mixed's lme names (one underscore, row term first in correlations)."""
    got = fit("lme_slope").tidy(effects=["ran_pars", "fixed"])
    assert list(got["effect"]) == ["fixed"] * 3 + ["ran_pars"] * 4
    assert list(got["term"])[3:] == ["sd_(Intercept)", "cor_age.(Intercept)", "sd_age",
                                     "sd_Observation"]
    assert got["group"].iloc[0] is None


@pytest.mark.slow   # a structure of its own to compile
def test_nested_lme_has_no_ran_pars():
    oats = mixedjax.datasets.load("oats")
    m = lme("Y ~ V + N", oats, "~ 1 | B/V")
    with pytest.warns(UserWarning, match="nesting"):
        got = m.tidy()
    assert set(got["effect"]) == {"fixed"}
    assert list(got["df"]) == list(m.fixed_df)


def test_bad_arguments():
    m, g = fit("lme_slope"), fit("gls_ar1")
    with pytest.raises(ValueError, match="ran_vals"):
        m.tidy(effects="ran_vals")
    with pytest.raises(ValueError, match="scale"):
        m.tidy(scales="sd")
    with pytest.raises(TypeError, match="conf_int"):
        g.tidy(conf_int="yes")
    with pytest.raises(ValueError, match="conf_level"):
        g.tidy(conf_int=True, conf_level=95)


def test_after_pickling():
    m = fit("lme_slope")
    again = pickle.loads(pickle.dumps(m))
    np.testing.assert_allclose(again.tidy()["estimate"], m.tidy()["estimate"], rtol=1e-12)
    assert again.glance().equals(m.glance())


def test_var_model_rows():
    """VarIdent: every stratum, the reference at 1 (nlme's allCoef = TRUE)."""
    m = fit("lme_varident")
    got = m.tidy(effects="var_model")
    assert list(got.columns) == ["effect", "group", "term", "estimate"]
    assert list(got["group"]) == ["varIdent(1 | Sex)"] * 2
    assert got["estimate"].iloc[0] == 1.0
    assert math.isclose(got["estimate"].iloc[1], m.varstruct[got["term"].iloc[1]], rel_tol=1e-12)
    assert fit("lme_slope").tidy(effects="var_model").empty
