"""lme and gls with variance functions and correlation structures against R's nlme.

References: tests/reference/nlme_reference.json and nlme_extra_reference.json
(made by make_nlme_extra_reference.R).  Fits are shared per module; fits with
the same structure on the same data share compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixedjax
from conftest import _load_json
from mixedjax import (CorAR1, CorCAR1, CorCompSymm, CorSymm, VarExp, VarIdent, VarPower, gls,
                      lme)
from mixedjax.nlme import VarFixed
from mixedjax.nlme import likelihood as lik
from mixedjax.nlme.corstruct import symm_from_angles

BASE = _load_json("nlme_reference.json")
_extra = _load_json("nlme_extra_reference.json")
EXTRA = _extra["cases"]
REFS = {**BASE, **EXTRA}  # the extra file repeats three base cases with more fields


def orthodont():
    """nlme's Orthodont as the references saw it: Sex levels Male, Female."""
    d = mixedjax.datasets.load("orthodont")
    d["Sex"] = d["Sex"].cat.reorder_categories(["Male", "Female"])
    return d


def orthodont_gaps():
    d = orthodont()
    drop = d["Subject"].isin(["F01", "F02", "F03", "F04", "F05"]) & (d["age"] == 10)
    d = d.loc[~drop].copy()
    d["t"] = d["age"] / 2
    return d


DATA = {"orthodont": orthodont(), "gaps": orthodont_gaps(),
        "ovary": mixedjax.datasets.load("ovary"), "tablets": mixedjax.datasets.load("tablets"),
        "oats": mixedjax.datasets.load("oats")}
F = "distance ~ age + Sex"
RI = "~ 1 | Subject"

# case -> (data, fit)
CASES = {
    "orthodont_varident": ("orthodont", lambda d: lme(F, d, RI, weights=VarIdent("~ 1 | Sex"))),
    "ovary_ar1": ("ovary", lambda d: lme("follicles ~ s1 + c1", d, "~ 1 | Mare",
                                         correlation=CorAR1("~ 1 | Mare"))),
    "ovary_gls_ar1": ("ovary", lambda d: gls("follicles ~ s1 + c1", d, method="ML",
                                             correlation=CorAR1("~ 1 | Mare"))),
    "tablets_varident": ("tablets", lambda d: lme("y ~ method", d, "~ 1 | tablet",
                                                  weights=VarIdent("~ 1 | method"))),
    "orthodont_gls_cs": ("orthodont", lambda d: gls(F, d, correlation=CorCompSymm(RI))),
    "orthodont_varpower": ("orthodont", lambda d: lme(F, d, RI, weights=VarPower("~ age"))),
    "orthodont_varexp": ("orthodont", lambda d: lme(F, d, RI, weights=VarExp("~ age"))),
    "orthodont_varpower_fitted": ("orthodont", lambda d: lme(F, d, RI, weights=VarPower())),
    "orthodont_varpower_strata": ("orthodont",
                                  lambda d: lme(F, d, RI, weights=VarPower("~ age | Sex"))),
    "ovary_car1": ("ovary", lambda d: lme("follicles ~ s1 + c1", d, "(1 | Mare)",
                                          correlation=CorCAR1("~ Time | Mare"))),
    "orthodont_lme_cs_fixed": ("orthodont", lambda d: lme(
        F, d, RI, correlation=CorCompSymm(RI, value=0.3, fixed=True))),
    "orthodont_gls_corsymm": ("orthodont", lambda d: gls(
        F, d, correlation=CorSymm(RI), weights=VarIdent("~ 1 | age"))),
    "orthodont_gls_ar1_gaps": ("gaps", lambda d: gls(F, d, correlation=CorAR1("~ t | Subject"))),
    "orthodont_gls_varident": ("orthodont", lambda d: gls(F, d, weights=VarIdent("~ 1 | Sex"))),
    "orthodont_gls_varfixed_ml": ("orthodont",
                                  lambda d: gls(F, d, weights=VarFixed("~ age"), method="ML")),
    "orthodont_ml_slope_ar1": ("orthodont", lambda d: lme(
        F, d, "~ age | Subject", correlation=CorAR1(RI), method="ML")),
    "oats_nested_ar1": ("oats", lambda d: lme("Y ~ N", d, "~ 1 | B/V",
                                              correlation=CorAR1("~ 1 | B/V"))),
}
assert set(REFS) == set(CASES), set(REFS) ^ set(CASES)
INTERVAL_CASES = ["orthodont_ml_slope_ar1", "orthodont_gls_corsymm", "oats_nested_ar1"]


@pytest.fixture(scope="module")
def fits():
    cache = {}

    def get(name):
        if name not in cache:
            data, fit = CASES[name]
            cache[name] = fit(DATA[data])
        return cache[name]
    return get


def close(actual, expected, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float),
                               rtol=rtol, atol=atol)


def vec(x):
    """R's auto-unboxed JSON: a scalar where R had a length-one vector."""
    return np.atleast_1d(np.asarray(x, dtype=float))


@pytest.mark.parametrize("name", sorted(CASES))
def test_loglik_and_criteria(fits, name):
    m, ref = fits(name), REFS[name]
    assert m.converged
    assert m.method == ref["method"]
    close(m.loglik, ref["loglik"], 1e-6)
    close([m.aic, m.bic], [ref["aic"], ref["bic"]], 1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_effects(fits, name):
    m, ref = fits(name), REFS[name]
    assert list(m.fixef.index) == list(ref["fixef"])
    close(m.fixef, list(ref["fixef"].values()), 1e-4, 1e-6)
    close(m.stderr, list(ref["se"].values()), 1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_variance_parameters(fits, name):
    m, ref = fits(name), REFS[name]
    close(m.sigma, ref["sigma"], 1e-3)
    vs = ref["varstruct"] or {}
    assert sorted(m.varstruct) == sorted(vs)
    close([m.varstruct[k] for k in vs], list(vs.values()), 1e-3)
    cs = ref["corstruct"]
    cs_values = list(cs.values()) if isinstance(cs, dict) else cs
    close(list(m.corstruct.values()), cs_values, 1e-3, 1e-6)
    re = ref.get("restruct", {}) or {}
    if "reStruct_sd" in ref and ref["reStruct_sd"]:
        close(m.varcorr.sdcor[m.varcorr.var2.isna()].iloc[:-1], ref["reStruct_sd"], 1e-3)
    names = [m.model.levels[t.level].name for t in m.model.terms]
    for level, info in re.items():
        P = m.covariances[names.index(level)]
        sd = np.sqrt(np.diag(P))
        close(sd, vec(info["sd"]), 1e-3)
        close((P / np.outer(sd, sd))[np.tril_indices(len(sd), -1)], vec(info["corr"]), 1e-3)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_tests_of_fixed_effects(fits, name):
    """nlme's denominator df (containment rule) and the t-test p-values."""
    m, ref = fits(name), EXTRA[name]
    assert list(m.fixed_df) == list(ref["df"].values())
    close(m.coef_table["p-value"], list(ref["pvalue"].values()), 1e-3, 1e-12)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_fitted_residuals_predictions(fits, name):
    m, ref = fits(name), EXTRA[name]
    scale = np.abs(ref["fitted_head"]).max()
    close(m.fitted.iloc[:6], ref["fitted_head"], 1e-4, 1e-6 * scale)
    close(np.quantile(m.pearson_residuals, [0, .25, .5, .75, 1]), ref["resid_quantiles"],
          1e-3, 1e-5)
    new = DATA[CASES[name][0]].iloc[:6]
    heads = ref["predict_head"]
    for level, expected in enumerate(heads.values() if isinstance(heads, dict) else heads):
        close(m.predict(new, level=level if m.model.kind == "lme" else None), expected,
              1e-4, 1e-6 * scale)
    close(m.residuals + m.fitted, m.model.y, 0, 1e-9)


@pytest.mark.parametrize("name", sorted(n for n in EXTRA if EXTRA[n]["ranef"]))
def test_ranef(fits, name):
    m, ref = fits(name), EXTRA[name]
    for level, info in ref["ranef"].items():
        got = m.ranef[level]
        assert len(got) == len(info["levels"])
        expected = np.asarray(info["values"], float).reshape(len(got), -1)
        close(got.to_numpy(), expected, 1e-3, 1e-4 * np.abs(expected).max())
    labels = [lab.replace(" ", ".") for lab in m.ranef[list(ref["ranef"])[-1]].index]
    assert labels == list(ref["ranef"][list(ref["ranef"])[-1]]["levels"])


@pytest.mark.parametrize("name", INTERVAL_CASES)
def test_intervals(fits, name):
    """Wald intervals on nlme's natural scale; nlme's Hessian is a finite difference."""
    m, ref = fits(name), EXTRA[name]["intervals"]
    iv = m.intervals()
    fixed = ref["fixed"]
    close(iv.fixed.loc[fixed["names"], ["lower", "upper"]].to_numpy(),
          np.column_stack([fixed["lower"], fixed["upper"]]), 1e-4)
    close(iv.sigma[["lower", "est.", "upper"]], ref["sigma"], 2e-3)
    pairs = [(iv.varstruct, ref.get("varStruct")), (iv.corstruct, ref.get("corStruct"))]
    pairs += [(iv.restruct[lev], tab) for lev, tab in (ref.get("reStruct") or {}).items()]
    for got, tab in pairs:
        if tab is None:
            assert got is None
            continue
        got = got.to_numpy()
        close(got[:, 1], vec(tab["est"]), 1e-3, 1e-6)
        # Interval half-widths agree to the accuracy of nlme's finite differences.
        close(got[:, [0, 2]], np.column_stack([vec(tab["lower"]), vec(tab["upper"])]),
              5e-3, 1e-3)


def test_gradient_zero_at_optimum_and_apvar_consistent(fits):
    """The natural-scale likelihood is stationary at the fit (a check of the
    reparametrization behind the intervals), and apVar inverts its Hessian."""
    m = fits("orthodont_ml_slope_ar1")
    xn = jnp.asarray(lik.to_natural(m.x, m.sigma, m.model.layout))
    value_and_grad = jax.jit(jax.value_and_grad(lik.natural_criterion),
                             static_argnames="layout")
    f, g = value_and_grad(xn, m._arrays, layout=m.model.layout)
    assert np.max(np.abs(np.asarray(g))) < 1e-5
    close(-2 * m.loglik, f, 1e-12)
    assert np.all(np.linalg.eigvalsh(m.apvar.to_numpy()) > 0)


def test_criterion_and_convergence_record(fits):
    """The profiled criterion (pure JAX in x) at the estimates is -2 logLik, and the
    Newton record shows a vanishing exact gradient and a positive-definite Hessian."""
    m = fits("ovary_car1")
    assert m.param_names == ["Mare.(Intercept)", "corStruct.Phi"]
    close(jax.jit(m.criterion)(jnp.asarray(m.x)), -2 * m.loglik, 1e-12)
    info = m.optinfo
    assert info["converged"] and info["grad_max"] < 1e-6
    assert info["hessian_min_eigenvalue"] > 0 and info["iterations"] < 20
    with pytest.raises(ValueError, match="x must have 2 entries"):
        m.criterion(np.zeros(3))


def test_lme_equals_lmer(sleepstudy):
    """Without structures, lme is lmer: same REML criterion and estimates."""
    a = lme("Reaction ~ Days", sleepstudy, "~ Days | Subject")
    b = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    c = lme("Reaction ~ Days", sleepstudy, "(Days | Subject)")
    close(a.loglik, b.loglik, 1e-8)
    close(-2 * a.loglik, b.objective, 1e-8)
    close(a.fixef, b.fixef, 1e-8)
    close(a.stderr, b.stderr, 1e-6)
    close(a.sigma, b.sigma, 1e-7)
    close(a.varcorr.sdcor, b.varcorr.sdcor, 1e-6)
    close(a.ranef["Subject"].to_numpy(), b.ranef["Subject"].to_numpy(), 1e-6, 1e-8)
    close(c.loglik, a.loglik, 1e-12)


def test_rows_out_of_time_order_give_the_same_fit(fits):
    """AR(1) in a time covariate uses the times, not the row order."""
    m = fits("orthodont_gls_ar1_gaps")
    shuffled = DATA["gaps"].sample(frac=1.0, random_state=3)
    s = gls(F, shuffled, correlation=CorAR1("~ t | Subject"))
    close(s.loglik, m.loglik, 1e-10)
    close(s.corstruct["Phi1"], m.corstruct["Phi1"], 1e-7)
    close(s.fitted.loc[m.fitted.index], m.fitted, 1e-9)


def test_corsymm_parametrization():
    """CorSymm's spherical parametrization equals nlme's (corMatrix in R)."""
    ref = _extra["corsymm_matrix"]
    C = symm_from_angles(jnp.asarray(ref["unconstrained"]), 4)
    close(C, ref["matrix"], 1e-12, 1e-14)


def test_summary_layout(fits):
    m = fits("orthodont_varident")
    text = str(m.summary())
    for piece in ["Linear mixed-effects model fit by REML", "AIC", "logLik", "-210.1784",
                  "Random effects:", " Formula: ~1 | Subject", "Residual",
                  "Variance function:", "Different standard deviations per stratum",
                  "Female     Male", "Fixed effects:  distance ~ age + Sex",
                  "Value", "Std.Error", "DF", "t-value", "p-value", "SexFemale",
                  "Standardized Within-Group Residuals:", "Number of Observations: 108",
                  "Number of Groups: 27"]:
        assert piece in text, piece
    row = next(line for line in text.splitlines() if line.startswith("SexFemale"))
    assert row.split()[3] == "25"
    g = str(fits("orthodont_gls_corsymm").summary())
    for piece in ["Generalized least squares fit by REML", "Correlation Structure: General",
                  "Coefficients:", "Residual standard error:",
                  "Degrees of freedom: 108 total; 105 residual"]:
        assert piece in g, piece
    n = str(fits("oats_nested_ar1").summary())
    assert "V %in% B" in n and "Correlation Structure: AR(1)" in n
