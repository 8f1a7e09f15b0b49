"""Likelihood-ratio tests against lme4's anova and lmerTest's ranova."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mixedjax
from mixedjax.inference.lrt import REFIT_NOTE, LRTTable

from conftest import REF, case_data

with open(REF / "inference_reference.json") as fh:
    INFERENCE = json.load(fh)
with open(REF / "lrt_confint_reference.json") as fh:
    LRT_CI = json.load(fh)

_ANOVA_COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
_REF_KEYS = {"npar": "npar", "AIC": "AIC", "BIC": "BIC", "logLik": "logLik",
             "deviance": "deviance", "Chisq": "Chisq", "Df": "Df", "Pr(>Chisq)": "p"}


def _num(values):
    return np.array([np.nan if v == "NA" else v for v in values], dtype=float)


def _assert_table(table, ref, columns, keys, rtol):
    for col in columns:
        expected = _num(ref[keys[col]])
        got = table[col].to_numpy(dtype=float)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=col)
        ok = ~np.isnan(expected)
        np.testing.assert_allclose(got[ok], expected[ok], rtol=rtol, err_msg=col)


@pytest.fixture(scope="module")
def sleep():
    return case_data("sleepstudy", ["Subject"])


@pytest.fixture(scope="module")
def sleep_models(sleep):
    """m1 = Days + (Days|Subject) and m2 = Days + (1|Subject) by REML;
    m0 = 1 + (Days|Subject) and m3 = Days + (Days||Subject) by ML (anova refits
    REML fits with ML, so these enter its tables as lme4's refitted fits do)."""
    forms = {"m1": ("Reaction ~ Days + (Days | Subject)", True),
             "m0": ("Reaction ~ 1 + (Days | Subject)", False),
             "m2": ("Reaction ~ Days + (1 | Subject)", True),
             "m3": ("Reaction ~ Days + (Days || Subject)", False)}
    return {k: mixedjax.lmer(f, sleep, reml=reml) for k, (f, reml) in forms.items()}


# ----------------------------------------------------------------------------------
# anova
# ----------------------------------------------------------------------------------
def test_anova_refits_with_ml(sleep_models):
    ref = INFERENCE["sleepstudy_lrt_fixed"]
    tab = mixedjax.anova(sleep_models["m0"], sleep_models["m1"])
    assert isinstance(tab, LRTTable)
    assert list(tab.index) == ref["models"]
    assert list(tab.table.columns) == _ANOVA_COLUMNS
    _assert_table(tab, ref, _ANOVA_COLUMNS, _REF_KEYS, rtol=1e-7)
    assert tab.note == REFIT_NOTE
    text = repr(tab)
    for line in (REFIT_NOTE, "Data: sleepstudy", "Models:",
                 "m0: Reaction ~ 1 + (Days | Subject)", "m1: Reaction ~ Days + (Days | Subject)"):
        assert line in text


def test_anova_refit_false_compares_reml_criteria(sleep_models):
    ref = INFERENCE["sleepstudy_lrt_random_reml"]
    tab = mixedjax.anova(m2=sleep_models["m2"], m1=sleep_models["m1"], refit=False)
    assert list(tab.index) == ref["models"]
    assert tab.note is None
    _assert_table(tab, ref, _ANOVA_COLUMNS, _REF_KEYS, rtol=1e-7)


def test_anova_three_nested_models_sorted_by_npar(sleep_models):
    ref = LRT_CI["anova_nested"]
    # Given as lme4 got them (mA, mB, mC); the table is sorted by npar.
    tab = mixedjax.anova(mA=sleep_models["m1"], mB=sleep_models["m2"], mC=sleep_models["m3"])
    assert list(tab.index) == ref["models"]
    _assert_table(tab, ref, _ANOVA_COLUMNS, _REF_KEYS, rtol=1e-6)


def test_anova_bad_input(sleep, sleep_models):
    m0, m1, m2 = sleep_models["m0"], sleep_models["m1"], sleep_models["m2"]
    with pytest.raises(ValueError, match=r"two or more fitted models.*result\.anova\(\)"):
        mixedjax.anova(m1)
    with pytest.raises(TypeError, match="must be a fitted model"):
        mixedjax.anova(m1, "m0")
    with pytest.raises(ValueError, match="model names must be unique"):
        mixedjax.anova(m1, m0=m0)
    fewer = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleep.iloc[:170])
    with pytest.raises(ValueError, match="different data.*180 observations.*170"):
        mixedjax.anova(m1, fewer)
    scaled = sleep.assign(Reaction=sleep["Reaction"] * 1.5)
    other = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", scaled)
    with pytest.raises(ValueError, match="different data: the responses"):
        mixedjax.anova(m1, other)
    with pytest.raises(ValueError, match="valid only for models with the same fixed effects"):
        mixedjax.anova(m2, mixedjax.lmer("Reaction ~ I(Days^2) + (1 | Subject)", sleep),
                       refit=False)
    # m2 has the fixed effect Days that m0 lacks; m0 has the random slope m2 lacks.
    with pytest.raises(ValueError, match="not nested: the fixed effects of 'with_days'"):
        mixedjax.anova(with_days=m2, no_days=m0)
    slope = mixedjax.lmer("Reaction ~ Days + (0 + Days | Subject)", sleep)
    with pytest.raises(ValueError, match=r"not nested: the random term \(1 \| Subject\) "
                                         "of 'intercept'"):
        mixedjax.anova(intercept=m2, slope=slope, refit=False)
    ml = mixedjax.lmer("Reaction ~ Days + (1 | Subject)", sleep, reml=False)
    with pytest.raises(ValueError, match="are ML fits"):
        mixedjax.anova(ml, m1, refit=False)


# ----------------------------------------------------------------------------------
# ranova
# ----------------------------------------------------------------------------------
_RANOVA_COLUMNS = ["npar", "logLik", "AIC", "LRT", "Df", "Pr(>Chisq)"]
_RANOVA_KEYS = {"npar": "npar", "logLik": "logLik", "AIC": "AIC", "LRT": "LRT", "Df": "Df",
                "Pr(>Chisq)": "p"}


@pytest.mark.parametrize("case", ["sleepstudy_reml", "sleepstudy_ml", "penicillin", "dyestuff"])
def test_ranova_matches_lmertest(sleep_models, case):
    ref = LRT_CI["ranova"][case]
    if case == "sleepstudy_reml":
        fit = sleep_models["m1"]
    else:
        fit = mixedjax.lmer(ref["formula"], case_data(ref["data"], ref["factors"]),
                            reml=ref["reml"])
    tab = fit.ranova()
    assert list(tab.index) == ref["rows"]
    assert list(tab.columns) == _RANOVA_COLUMNS
    _assert_table(tab, ref, _RANOVA_COLUMNS, _RANOVA_KEYS, rtol=1e-6)
    assert tab.attrs["heading"][-1] == ref["formula"]


def test_ranova_reduced_model_equals_direct_fit(sleep_models):
    tab = sleep_models["m1"].ranova()
    row = tab.loc["Days in (Days | Subject)"]
    assert tab.attrs["formulae"]["Days in (Days | Subject)"] == \
        "Reaction ~ Days + (1 | Subject)"
    assert row["logLik"] == pytest.approx(sleep_models["m2"].loglik, rel=1e-10)
    assert row["npar"] == sleep_models["m2"].npar
