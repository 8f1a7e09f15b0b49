"""nlme's anova of lme and gls fits, and R's AIC / BIC tables, against R.

Reference: tests/reference/nlme_anova_reference.json (made by
make_nlme_anova_reference.R).  Fits are made once per module, on first use.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import mixedjax
from conftest import REF as REF_DIR
from mixedjax import CorAR1, CorCompSymm, gls, lme
from mixedjax.inference.compare import NlmeAnovaTable

with open(REF_DIR / "nlme_anova_reference.json") as fh:
    REF = json.load(fh)
# Cases whose fits the other cases do not share (each lme structure compiles
# once, about 2 s) run with the slow tests.
SLOW = {"reml_random", "ovary_ar1", "ortho_inter", "lme_reml"}


def _cases(section):
    return [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in REF[section]]


def _orthodont():
    d = mixedjax.datasets.load("orthodont")
    d["Sex"] = d["Sex"].cat.reorder_categories(["Male", "Female"])
    return d


ORTHO = _orthodont()
OVARY = mixedjax.datasets.load("ovary")
SLEEP = mixedjax.datasets.load("sleepstudy")
OATS = mixedjax.datasets.load("oats")
CS = CorCompSymm("~ 1 | Subject")

FITS = {
    "ortho_slope": lambda: lme("distance ~ age", ORTHO, "~ age | Subject"),
    "ortho_ri": lambda: lme("distance ~ age", ORTHO, "~ 1 | Subject"),
    "ortho_ri_ml": lambda: lme("distance ~ age", ORTHO, "~ 1 | Subject", method="ML"),
    "ortho_sex_ml": lambda: lme("distance ~ age + Sex", ORTHO, "~ 1 | Subject", method="ML"),
    "ortho_inter_ml": lambda: lme("distance ~ age * Sex", ORTHO, "~ 1 | Subject",
                                  method="ML"),
    "ortho_sex": lambda: lme("distance ~ age + Sex", ORTHO, "~ 1 | Subject"),
    "ortho_gls_cs": lambda: gls("distance ~ age + Sex", ORTHO, correlation=CS),
    "ortho_gls": lambda: gls("distance ~ age + Sex", ORTHO),
    "ortho_gls_ml": lambda: gls("distance ~ age", ORTHO, method="ML"),
    "ortho_inter": lambda: lme("distance ~ age * Sex", ORTHO, "~ 1 | Subject"),
    "ortho_gls_inter_ml": lambda: gls("distance ~ age * Sex", ORTHO, method="ML",
                                      correlation=CS),
    "ovary_ri": lambda: lme("follicles ~ s1 + c1", OVARY, "~ 1 | Mare"),
    "ovary_ar1": lambda: lme("follicles ~ s1 + c1", OVARY, "~ 1 | Mare",
                             correlation=CorAR1("~ 1 | Mare")),
    "oats_nested": lambda: lme("Y ~ V * N", OATS, "~ 1 | B/V"),
    "sleep_slope": lambda: mixedjax.lmer("Reaction ~ Days + (Days | Subject)", SLEEP),
    "sleep_ri": lambda: mixedjax.lmer("Reaction ~ Days + (1 | Subject)", SLEEP),
    "ortho_lmer_ml": lambda: mixedjax.lmer("distance ~ age + (1 | Subject)", ORTHO,
                                           reml=False),
}


@functools.cache
def fit(name):
    return FITS[name]()


@functools.cache
def fewer_rows():
    return gls("distance ~ age", ORTHO.iloc[4:], method="ML")


def _num(values):
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _close(got, expected, rtol, what):
    got, expected = np.asarray(got, float), _num(expected)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=what)
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=rtol, err_msg=what)


@pytest.mark.parametrize("case", _cases("anova"))
def test_anova_table_matches_nlme(case):
    ref = REF["anova"][case]
    tab = mixedjax.anova(*[fit(n) for n in ref["fits"]])
    assert isinstance(tab, NlmeAnovaTable)
    assert list(tab.table.columns) == ["Model", "df", "AIC", "BIC", "logLik", "Test",
                                       "L.Ratio", "p-value"]
    assert list(tab["Model"]) == ref["Model"]
    assert list(tab["df"]) == ref["df"]
    assert list(tab["Test"]) == ref["Test"]
    for col in ("AIC", "BIC", "logLik"):
        _close(tab[col], ref[col], 1e-6, col)
    _close(tab["L.Ratio"], ref["L.Ratio"], 1e-4, "L.Ratio")
    # p-values of ~1e-25 are matched relatively; the statistic above fixes them.
    _close(tab["p-value"], ref["p.value"], 1e-3, "p-value")


def test_anova_text_and_names():
    tab = mixedjax.anova(age=fit("ortho_ri_ml"), sex=fit("ortho_sex_ml"))
    assert list(tab.index) == ["age", "sex"]
    lines = tab.text().splitlines()
    assert lines[0].split() == ["Model", "df", "AIC", "BIC", "logLik", "Test", "L.Ratio",
                                "p-value"]
    # nlme prints: sex  2  5 444.8565 458.2671 -217.4282 1 vs 2 8.533057  0.0035
    assert lines[2].split() == ["sex", "2", "5", "444.8565", "458.2671", "-217.4282",
                                "1", "vs", "2", "8.533057", "0.0035"]
    assert "<.0001" in mixedjax.anova(fit("ortho_gls"), fit("ortho_sex")).text()
    # nlme's print of anova(fit): F values to 3 decimals here, p-values to 4.
    seq = mixedjax.anova(fit("ortho_inter_ml")).text().splitlines()
    assert seq[0].split() == ["numDF", "denDF", "F-value", "p-value"]
    assert seq[1].split() == ["(Intercept)", "1", "79", "4288.082", "<.0001"]
    assert seq[3].split() == ["Sex", "1", "25", "9.664", "0.0046"]


def test_equal_df_gives_no_test():
    # gls with compound symmetry = random-intercept lme: same df and likelihood,
    # so nlme prints no test columns at all.
    tab = mixedjax.anova(lme=fit("ortho_inter_ml"), gls=fit("ortho_gls_inter_ml"))
    assert list(tab.table.columns) == ["Model", "df", "AIC", "BIC", "logLik"]
    np.testing.assert_allclose(tab["logLik"].iloc[0], tab["logLik"].iloc[1], rtol=1e-8)


def test_reml_fits_with_different_fixed_effects_refused():
    with pytest.raises(ValueError, match="fixed effects are the same.*method=\"ML\""):
        mixedjax.anova(fit("ortho_sex"), gls("distance ~ age", ORTHO))


def test_mixed_methods_refused():
    with pytest.raises(ValueError, match="same estimation method"):
        mixedjax.anova(fit("ortho_sex"), fit("ortho_sex_ml"))


def test_other_response_and_data_refused():
    with pytest.raises(ValueError, match="different responses"):
        mixedjax.anova(fit("ortho_gls"), gls("age ~ distance", ORTHO))
    with pytest.raises(ValueError, match="same number of observations"):
        mixedjax.anova(fit("ortho_gls_ml"), fewer_rows())
    shuffled = ORTHO.assign(distance=ORTHO["distance"].to_numpy()[::-1])
    with pytest.raises(ValueError, match="responses differ"):
        mixedjax.anova(fit("ortho_gls_ml"), gls("distance ~ age", shuffled, method="ML"))


def test_lmer_and_lme_not_mixed():
    with pytest.raises(TypeError, match="lme and gls fits only"):
        mixedjax.anova(fit("ortho_ri_ml"), fit("ortho_lmer_ml"))


@pytest.mark.parametrize("case", _cases("sequential"))
def test_sequential_f_matches_nlme(case):
    ref = REF["sequential"][case]
    m = fit(case)
    tab = mixedjax.anova(m)
    assert list(tab.index) == ref["terms"]
    assert list(tab["numDF"]) == ref["numDF"]
    den = ref["denDF"] or [m.nobs - m.model.p] * len(ref["terms"])  # gls: N - p
    assert list(tab["denDF"]) == den
    _close(tab["F-value"], ref["F.value"], 1e-5, "F-value")
    # nlme's lme computes 1 - pf(F), which is 0 below about 1e-16.
    got, expected = tab["p-value"].to_numpy(), np.asarray(ref["p.value"], float)
    zero = expected == 0
    assert np.all(got[zero] < 1e-15)
    np.testing.assert_allclose(got[~zero], expected[~zero], rtol=1e-4)


@pytest.mark.parametrize("case", _cases("ic"))
def test_aic_bic_tables_match_r(case):
    ref = REF["ic"][case]
    fits = [fit(n) for n in ref["fits"]]
    a = mixedjax.AIC(*fits)
    b = mixedjax.BIC(*fits)
    assert list(a.columns) == ["df", "AIC"] and list(b.columns) == ["df", "BIC"]
    assert list(a["df"]) == ref["df"] == list(b["df"])
    _close(a["AIC"], ref["AIC"], 1e-6, "AIC")
    _close(b["BIC"], ref["BIC"], 1e-6, "BIC")
    for name, m in zip(ref["fits"], fits):
        one = REF["fits"][name]
        assert m.npar == one["df"]
        np.testing.assert_allclose(mixedjax.AIC(m), one["AIC"], rtol=1e-6)
        np.testing.assert_allclose(mixedjax.BIC(m), one["BIC"], rtol=1e-6)


def test_aic_options_and_errors():
    m0, m1 = fit("ortho_ri_ml"), fit("ortho_lmer_ml")
    tab = mixedjax.AIC(nlme=m0, lme4=m1, k=3)
    assert list(tab.index) == ["nlme", "lme4"]
    np.testing.assert_allclose(tab["AIC"], -2 * m0.loglik + 3 * 4, rtol=1e-8)
    with pytest.warns(UserWarning, match="same number of observations"):
        mixedjax.AIC(m0, fewer_rows())
    with pytest.raises(TypeError, match="fitted model"):
        mixedjax.AIC(m0, "not a fit")
    with pytest.raises(ValueError, match="at least one"):
        mixedjax.BIC()
