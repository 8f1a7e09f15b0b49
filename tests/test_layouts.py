"""Layouts as lme4 lays them out: the columns inside a random term in R's order
(theta, ranef, varcorr), the bare bar ``y ~ x | g``, nlme's Oats under R's names,
lme4's ``deviance``/``REMLcrit`` and ``lmer``'s ``optimizer``/``control``.

Reference values: tests/reference/make_layout_reference.R (lme4, nlme, mlmRev's Exam
in tests/reference/exam.csv).
"""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import make_design

REF_DIR = pathlib.Path(__file__).parent / "reference"
REF = json.loads((REF_DIR / "layout_reference.json").read_text(encoding="utf-8"))


def _list(value):
    """jsonlite writes a one-element vector as a scalar."""
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def exam():
    return pd.read_csv(REF_DIR / "exam.csv")   # school: integer codes, as R's levels


@pytest.fixture(scope="module")
def exam_fit(exam):
    return mixedjax.lmer("normexam ~ standLRT + sex + (standLRT + sex | school)", exam)


def oats_as_in_r() -> pd.DataFrame:
    """The bundled oats under nlme's names (Block, Variety, nitro, yield) and labels."""
    d = mixedjax.datasets.load("oats").rename(columns={"B": "Block", "V": "Variety",
                                                       "Y": "yield"})
    d["nitro"] = d.pop("N").astype(str).str.replace("cwt", "").astype(float)
    d["Variety"] = d["Variety"].cat.rename_categories({"Golden.rain": "Golden Rain"})
    return d


def _check_fit(m, ref, theta_atol=1e-4):
    """Estimates, layouts and names against lme4 (a fit at lme4's optimum)."""
    assert m.objective == pytest.approx(ref["reml_crit" if ref["reml"] else "objective"],
                                        rel=1e-8)
    assert m.model.theta_names == _list(ref["theta_names"])
    np.testing.assert_allclose(m.theta, ref["theta"], atol=theta_atol)
    assert list(m.fixef.index) == _list(ref["fixef_names"])
    np.testing.assert_allclose(m.fixef.to_numpy(), list(ref["fixef"].values()),
                               rtol=1e-4, atol=1e-6)
    assert m.sigma == pytest.approx(ref["sigma"], rel=1e-4)
    vc, rv = m.varcorr, ref["varcorr"]
    assert vc["grp"].tolist() == _list(rv["grp"])
    assert vc["var1"].tolist() == _list(rv["var1"])
    assert vc["var2"].tolist() == _list(rv["var2"])
    np.testing.assert_allclose(vc["sdcor"], rv["sdcor"], rtol=2e-3, atol=2e-4)
    for grp, re_ref in ref["ranef"].items():
        got = m.ranef[grp]
        assert got.columns.tolist() == _list(re_ref["columns"])
        assert got.index.tolist() == _list(re_ref["levels"])
        np.testing.assert_allclose(got.to_numpy(), np.asarray(re_ref["values"]).reshape(
            got.shape), atol=2e-3 * np.abs(re_ref["values"]).max())


# -- columns inside a random term in R's order ------------------------------------------

def test_exam_random_term_columns_in_r_order(exam_fit):
    ref = REF["exam"]
    assert exam_fit.model.design.terms[0].cnames == ["(Intercept)", "standLRT", "sexM"]
    assert ref["cnms"]["school"] == ["(Intercept)", "standLRT", "sexM"]
    _check_fit(exam_fit, ref, theta_atol=2e-4)


def test_exam_factor_written_first_keeps_its_place(exam):
    """``(sex + standLRT | school)``: R keeps the written order; the same model, so
    the same optimum as the other order (lme4 stops at a higher criterion here)."""
    ref = REF["exam_factor_first"]
    m = mixedjax.lmer("normexam ~ sex + standLRT + (sex + standLRT | school)", exam)
    assert m.model.design.terms[0].cnames == ref["cnms"]["school"] == \
        ["(Intercept)", "sexM", "standLRT"]
    assert m.model.theta_names == ref["theta_names"]
    assert list(m.fixef.index) == ref["fixef_names"]
    assert m.varcorr["var1"].tolist()[:3] == ["(Intercept)", "sexM", "standLRT"]
    assert m.objective <= ref["reml_crit"] + 1e-6
    assert m.objective == pytest.approx(REF["exam"]["reml_crit"], rel=1e-9)


def test_exam_predict_newdata_uses_the_same_layout(exam, exam_fit):
    new = exam.iloc[[0, 1, 2, 500, 4000]]
    np.testing.assert_allclose(exam_fit.predict(new), exam_fit.fitted.iloc[[0, 1, 2, 500, 4000]],
                               rtol=1e-12, atol=1e-12)


def test_factor_term_columns_without_intercept():
    d = make_design("score ~ 1 + (0 + Machine | Worker)", mixedjax.datasets.load("machines"))
    assert d.terms[0].cnames == ["MachineA", "MachineB", "MachineC"]


def test_lme_random_term_columns_in_r_order(exam):
    from mixedjax.nlme.model import build_model
    small = exam[exam["school"] <= 8]
    model = build_model("lme", "normexam ~ standLRT + sex", small,
                        random="~ standLRT + sex | school")
    term = model.terms[0]
    assert term.cnames == ["(Intercept)", "standLRT", "sexM"]
    np.testing.assert_array_equal(term.Z[:, 1], small["standLRT"])
    np.testing.assert_array_equal(term.Z[:, 2], small["sex"] == "M")


# -- nlme's Oats under R's names -------------------------------------------------------------

def test_oats_lmer_with_r_names():
    m = mixedjax.lmer("yield ~ nitro + (1 | Block/Variety)", oats_as_in_r())
    _check_fit(m, REF["oats"])


def test_oats_lme_with_r_names():
    ref = REF["oats_lme"]
    m = mixedjax.lme("yield ~ nitro", oats_as_in_r(), random="~ 1 | Block/Variety")
    assert m.loglik == pytest.approx(ref["loglik"], rel=1e-8)
    np.testing.assert_allclose(m.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-8)
    assert m.sigma == pytest.approx(ref["sigma"], rel=1e-5)
    sd = sorted(float(np.sqrt(c[0, 0])) for c in m.covariances)
    np.testing.assert_allclose(sd, sorted(ref["sd"]), rtol=1e-4)


def test_oats_gls_with_r_names():
    ref = REF["oats_gls"]
    m = mixedjax.gls("yield ~ nitro + Variety", oats_as_in_r())
    assert list(m.fixef.index) == list(ref["coef"])
    np.testing.assert_allclose(m.fixef.to_numpy(), list(ref["coef"].values()), rtol=1e-10)
    assert m.loglik == pytest.approx(ref["loglik"], rel=1e-10)


# -- the bare bar ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, formula", [
    ("bare_bar", "log(Reaction) ~ Days | Subject"),
    ("bare_double_bar", "Reaction ~ Days || Subject"),
])
def test_bare_bar_read_as_lme4(key, formula):
    m = mixedjax.lmer(formula, mixedjax.datasets.load("sleepstudy"))
    assert list(m.fixef.index) == ["(Intercept)"]
    _check_fit(m, REF[key])


# -- deviance and REMLcrit -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sleep_fits():
    s = mixedjax.datasets.load("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    return mixedjax.lmer(f, s), mixedjax.lmer(f, s, reml=False)


def test_deviance_of_reml_fit_warns_and_is_the_reml_criterion(sleep_fits):
    ref = REF["deviance"]
    m, _ = sleep_fits
    with pytest.warns(UserWarning, match="REML criterion.*reml_crit"):
        dev = m.deviance
    assert dev == pytest.approx(ref["reml_fit_deviance"], rel=1e-9)
    assert m.reml_crit == pytest.approx(ref["reml_fit_remlcrit"], rel=1e-9)


def test_deviance_and_reml_crit_of_ml_fit(sleep_fits):
    ref = REF["deviance"]
    _, m = sleep_fits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dev = m.deviance
    assert dev == pytest.approx(ref["ml_fit_deviance"], rel=1e-9)
    # lme4's REMLcrit of an ML fit: the REML criterion at the ML estimates, first-order
    # sensitive to where the two optimizers stop (theta agrees to ~1e-5).
    assert m.reml_crit == pytest.approx(ref["ml_fit_remlcrit"], rel=1e-7)
    reml_model = mixedjax.LMM.from_formula("Reaction ~ Days + (Days | Subject)",
                                           mixedjax.datasets.load("sleepstudy"))
    assert m.reml_crit == pytest.approx(reml_model.eager.value(m.theta), rel=1e-12)


# -- lmer's optimizer and control ----------------------------------------------------------------

def test_lmer_forwards_optimizer_and_control(monkeypatch):
    from mixedjax.model import LMM
    seen = {}
    real_fit = LMM.fit

    def spy(self, **kwargs):
        seen.update(kwargs)
        return real_fit(self, **kwargs)

    monkeypatch.setattr(LMM, "fit", spy)
    s = mixedjax.datasets.load("sleepstudy")
    m = mixedjax.lmer("Reaction ~ Days + (1 | Subject)", s, optimizer="bfgs",
                      control={"max_iter": 321})
    assert seen["optimizer"] == "bfgs" and seen["max_iter"] == 321
    assert m.converged


def test_lmer_control_iteration_limit_is_applied():
    s = mixedjax.datasets.load("sleepstudy")
    with pytest.warns(mixedjax.ConvergenceWarning):
        m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", s, control={"max_iter": 1})
    assert m.optinfo["iterations"] <= 1 and not m.converged


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"optimizer": "bobyqa"}, ValueError, r"optimizer must be .*'bobyqa'"),
    ({"control": {"maxfun": 10}}, ValueError, r"unknown control setting\(s\) \['maxfun'\]"),
    ({"control": [("max_iter", 5)]}, TypeError, r"control must be a dict"),
    ({"control": {"max_iter": 0}}, ValueError, r"max_iter must be a positive integer"),
    ({"max_iter": 5, "control": {"max_iter": 10}}, ValueError, r"max_iter is given both"),
])
def test_lmer_optimizer_and_control_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mixedjax.lmer("Reaction ~ Days + (1 | Subject)", mixedjax.datasets.load("sleepstudy"),
                      **kwargs)
