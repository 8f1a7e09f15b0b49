"""Post-fit tools against R: lme4's coef and rePCA, performance's r2_nakagawa and
icc, broom.mixed's tidy and glance (tests/reference/make_posthoc_reference.R).

The comparisons are made at lme4's theta (the fit's other quantities recomputed
there), so they test the post-fit computations to round-off rather than the two
optimizers' stopping points (lme4's theta is within ~1e-5 relative of ours); one
test checks our own fits at the optimizer's precision.  lmerTest's Satterthwaite
df come from finite differences: they agree with the exact ones to ~1e-5.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import factor
from mixedjax.backend import NUMPY
from mixedjax.fitting import FitOutput
from mixedjax.optim import OptResult
from mixedjax.result import LMMResult

from conftest import REF, case_data

with open(REF / "posthoc_reference.json") as fh:
    POSTHOC = json.load(fh)
CASES = sorted(k for k in POSTHOC if k != "versions")


def _num(x) -> np.ndarray:
    """A JSON number or list (null = R's NA) as a float array."""
    return np.atleast_1d(np.asarray(x, dtype=float))


def _str(x) -> list:
    return [None if v is None else str(v) for v in np.atleast_1d(np.asarray(x, dtype=object))]


def result_at(model, theta) -> LMMResult:
    """The model's result at a given theta (beta, sigma, BLUPs solved there)."""
    em = model.eager
    theta = np.atleast_1d(np.asarray(theta, np.float64))
    F = factor.factorize(theta, em.A, NUMPY, em.ops)
    sol = factor.solve(F, em.A, NUMPY, em.ops)
    f, g = em.value_grad(theta)
    opt = OptResult(x=theta, fun=f, grad=g, hess=np.eye(theta.size), iterations=0, fun_evals=1,
                    status=0, converged=True)
    out = FitOutput(opt=opt, theta=theta, objective=np.asarray(em.value(theta)), solution=sol)
    return LMMResult(model, out, theta0=theta, elapsed=0.0, optimizer="bfgs")


@functools.lru_cache(maxsize=None)
def fitted(name: str) -> LMMResult:
    ref = POSTHOC[name]
    data = case_data(ref["data"], _str(ref["factors"]))
    return mixedjax.lmer(ref["formula"], data, reml=bool(ref["reml"]))


@functools.lru_cache(maxsize=None)
def at_lme4(name: str) -> LMMResult:
    return result_at(fitted(name).model, POSTHOC[name]["theta"])


def _close(actual, expected, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, float), _num(expected), rtol=rtol, atol=atol)


# -- lme4's coef ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_coef_matches_lme4(case):
    m, ref = at_lme4(case), POSTHOC[case]["coef"]
    co = m.coef
    assert list(co) == list(ref)
    for group, table in co.items():
        r = ref[group]
        assert list(table.columns) == _str(r["columns"])
        assert [str(v) for v in table.index] == _str(r["levels"])
        expected = np.column_stack([_num(v) for v in r["values"]]) if table.shape[1] > 1 \
            else _num(r["values"]).reshape(-1, 1)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(table.to_numpy(), expected, rtol=1e-8, atol=1e-9 * scale)


def test_coef_adds_the_terms_of_one_factor():
    m = at_lme4("sleepstudy_two_terms")
    b = m.ranef["Subject"]
    assert list(b.columns) == ["(Intercept)", "Days"]
    co = m.coef["Subject"]
    np.testing.assert_allclose(co.to_numpy(), m.fixef.to_numpy() + b.to_numpy(), rtol=1e-14)


def test_coef_fills_random_columns_missing_from_the_fixed_effects():
    co = at_lme4("machines").coef["Worker"]
    # MachineA is not a fixed effect: lme4 puts it first with fixed part 0.
    assert list(co.columns) == ["MachineA", "(Intercept)", "MachineB", "MachineC"]
    np.testing.assert_allclose(co["MachineA"], at_lme4("machines").ranef["Worker"]["MachineA"])


# -- performance's r2_nakagawa and icc -----------------------------------------------------
# performance 0.10.2 (insight 0.19) keeps only the first term of a grouping factor with
# several, and drops random-effect columns that X lacks: there the reference is
# Johnson's formula computed in R from lme4's per-term model matrices.
PERFORMANCE_DIFFERS = {"sleepstudy_two_terms", "machines"}


@pytest.mark.parametrize("case", [c for c in CASES if not POSTHOC[c]["singular"]])
def test_r2_and_icc_match_r(case):
    m, ref = at_lme4(case), POSTHOC[case]
    expected = ref["johnson"]
    if case not in PERFORMANCE_DIFFERS:
        for key in ("R2_conditional", "R2_marginal", "ICC_adjusted", "ICC_conditional"):
            assert expected[key] == pytest.approx(ref["performance"][key], rel=1e-12, abs=1e-15)
    r2, icc = m.r2(), m.icc()
    assert list(r2.index) == ["R2_conditional", "R2_marginal"]
    assert list(icc.index) == ["ICC_adjusted", "ICC_conditional"]
    for s in (r2, icc):
        for key, value in s.items():
            assert value == pytest.approx(expected[key], rel=1e-8, abs=1e-12), key
    v = r2.attrs["variance"]
    assert v["var_fixed"] == pytest.approx(expected["var_fixed"], rel=1e-8, abs=1e-10)
    assert v["var_random"] == pytest.approx(expected["var_random"], rel=1e-8)
    assert v["var_residual"] == pytest.approx(expected["var_residual"], rel=1e-8)


def test_performance_differs_only_by_the_terms_it_leaves_out():
    """performance's var.random of (1|Subject) + (0 + Days|Subject) is the intercept
    variance alone; ours adds the slope's Johnson term."""
    m, ref = at_lme4("sleepstudy_two_terms"), POSTHOC["sleepstudy_two_terms"]
    intercept_var = m.covariances[0][0, 0]
    assert intercept_var == pytest.approx(ref["performance"]["var_random"], rel=1e-8)
    assert [t.cnames for t in m.model.design.terms] == [["(Intercept)"], ["Days"]]
    days = mixedjax.datasets.load("sleepstudy")["Days"].to_numpy(dtype=float)
    slope_var = m.covariances[1][0, 0] * np.mean(days ** 2)
    assert m.r2().attrs["variance"]["var_random"] == pytest.approx(intercept_var + slope_var,
                                                                   rel=1e-12)


def test_r2_of_the_fit_within_the_optimizers_precision():
    for case in ("sleepstudy", "penicillin", "sleepstudy_two_terms"):
        ref = POSTHOC[case]["johnson"]
        r2 = fitted(case).r2()
        assert r2["R2_conditional"] == pytest.approx(ref["R2_conditional"], rel=2e-5)
        assert r2["R2_marginal"] == pytest.approx(ref["R2_marginal"], rel=2e-5, abs=1e-12)


def test_singular_fit_has_no_random_variance_unless_tolerance_is_lowered():
    m, ref = at_lme4("dyestuff2"), POSTHOC["dyestuff2"]
    with pytest.warns(RuntimeWarning, match="singular"):
        r2 = m.r2()
    assert np.isnan(r2["R2_conditional"]) and ref["performance"]["R2_conditional"] is None
    assert r2["R2_marginal"] == pytest.approx(ref["performance"]["R2_marginal"], abs=1e-12)
    with pytest.warns(RuntimeWarning, match="singular"):
        assert m.icc().isna().all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r2, icc = m.r2(tolerance=0), m.icc(tolerance=0)
    for s in (r2, icc):
        for key, value in s.items():
            assert value == pytest.approx(ref["performance_tol0"][key], abs=1e-12), key
    # our own fit stops at theta ~ 1e-19, singular by the same test
    with pytest.warns(RuntimeWarning, match="singular"):
        assert np.isnan(fitted("dyestuff2").icc()["ICC_adjusted"])


@pytest.mark.parametrize("tolerance, error", [(-1.0, ValueError), ("small", TypeError),
                                              (float("nan"), ValueError)])
def test_r2_tolerance_is_checked(tolerance, error):
    with pytest.raises(error, match="tolerance"):
        at_lme4("sleepstudy").r2(tolerance=tolerance)


# -- lme4's rePCA --------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_repca_matches_lme4(case):
    m, ref = at_lme4(case), POSTHOC[case]["rePCA"]
    pca = m.rePCA()
    assert list(pca) == list(ref)
    for group, table in pca.items():
        assert list(table.index) == ["Standard deviation", "Proportion of Variance",
                                     "Cumulative Proportion"]
        assert list(table.columns) == [f"PC{i + 1}" for i in range(table.shape[1])]
        sdev = _num(ref[group]["sdev"])
        _close(table.iloc[0], sdev, rtol=1e-8, atol=1e-12)
        if sdev.max() > 0:   # lme4's 0/0 is NaN where Lambda = 0
            _close(table.iloc[1], ref[group]["proportion"], rtol=1e-8, atol=1e-12)
            _close(table.iloc[2], ref[group]["cumulative"], rtol=1e-8, atol=1e-12)
        rot = table.attrs["rotation"].to_numpy()
        np.testing.assert_allclose(rot.T @ rot, np.eye(rot.shape[1]), atol=1e-12)


def test_singular_summary_points_to_repca():
    text = str(fitted("dyestuff2").summary())
    assert "boundary (singular) fit" in text and "m.rePCA()" in text
    batch = next(line for line in text.splitlines() if line.startswith(" Batch"))
    assert batch.split()[2:] == ["0", "0"]     # round-off variance shown as lme4's 0
    assert "m.rePCA()" not in str(fitted("sleepstudy").summary())


# -- broom.mixed's tidy and glance ---------------------------------------------------------
def _compare_frames(ours: pd.DataFrame, ref: dict, rtol: dict[str, float]):
    assert list(ours.columns) == list(ref), (list(ours.columns), list(ref))
    for col in ("effect", "group", "level", "term"):
        if col in ref:
            assert [None if v is None else str(v) for v in ours[col]] == _str(ref[col]), col
    for col in ("estimate", "std.error", "statistic", "df", "p.value", "conf.low", "conf.high"):
        if col not in ref:
            continue
        expected = _num(ref[col])
        actual = ours[col].to_numpy(dtype=float)
        assert np.array_equal(np.isnan(actual), np.isnan(expected)), col
        ok = ~np.isnan(expected)
        scale = np.abs(expected[ok]).max() if ok.any() else 1.0
        np.testing.assert_allclose(actual[ok], expected[ok], rtol=rtol.get(col, 1e-7),
                                   atol=1e-9 * scale, err_msg=col)


SATTERTHWAITE_RTOL = {"df": 3e-4, "p.value": 3e-3, "conf.low": 1e-6, "conf.high": 1e-6}


# Satterthwaite's df compile a Hessian per model structure: a few structures suffice
# here (the df themselves are tested in test_inference_ddf.py).
@pytest.mark.parametrize("case", ["sleepstudy", "sleepstudy_two_terms", "dyestuff2"])
def test_tidy_matches_broom_mixed_with_lmertest(case):
    m, ref = at_lme4(case), POSTHOC[case]
    ours = m.tidy(conf_int=True, conf_level=0.9)
    _compare_frames(ours, ref["tidy_ci"], SATTERTHWAITE_RTOL)
    plain = ours.drop(columns=["conf.low", "conf.high"])
    _compare_frames(plain, ref["tidy"], SATTERTHWAITE_RTOL)


@pytest.mark.parametrize("case", CASES)
def test_tidy_without_df_matches_broom_mixed_with_lme4(case):
    m, ref = at_lme4(case), POSTHOC[case]
    _compare_frames(m.tidy(conf_int=True, ddf_method=None), ref["tidy_lme4_ci"], {})


def test_tidy_kenward_roger():
    _compare_frames(at_lme4("sleepstudy").tidy(ddf_method="Kenward-Roger"),
                    POSTHOC["sleepstudy"]["tidy_kr"], {"df": 1e-6, "p.value": 1e-5})


@pytest.mark.parametrize("case", CASES)
def test_tidy_ran_vals_and_ran_coefs(case):
    m, ref = at_lme4(case), POSTHOC[case]
    singular = {"std.error": 1e-7} if not ref["singular"] else {}
    _compare_frames(m.tidy(effects="ran_vals", conf_int=True), ref["tidy_ran_vals"], singular)
    _compare_frames(m.tidy(effects=["ran_coefs"]), ref["tidy_ran_coefs"], {})


@pytest.mark.parametrize("case", CASES)
def test_glance_matches_broom_mixed(case):
    m, ref = at_lme4(case), POSTHOC[case]["glance"]
    g = m.glance()
    assert list(g.columns) == list(ref)
    for col in ref:
        assert g[col].iloc[0] == pytest.approx(_num(ref[col])[0], rel=1e-9), col
    assert g["nobs"].dtype.kind == "i" and g["df.residual"].dtype.kind == "i"


def test_tidy_effect_order_scales_and_columns():
    m = at_lme4("sleepstudy")
    t = m.tidy(effects=("ran_pars", "fixed"))
    assert list(t.effect) == ["fixed"] * 2 + ["ran_pars"] * 4    # broom.mixed's order
    fixed = m.tidy(effects="fixed")
    assert "group" not in fixed.columns and "level" not in fixed.columns
    v = m.tidy(effects="ran_pars", scales="vcov")
    assert list(v.term) == ["var__(Intercept)", "cov__(Intercept).Days", "var__Days",
                            "var__Observation"]
    vc = m.varcorr
    np.testing.assert_allclose(v.estimate, vc.vcov.to_numpy()[[0, 2, 1, 3]], rtol=1e-14)


def test_tidy_takes_non_wald_intervals_from_confint(monkeypatch):
    """Profile (or bootstrap) intervals are confint's rows, bound in order (profiling
    itself is tested in test_confint.py; a stand-in keeps this test fast)."""
    import mixedjax.inference.confint as confint_module
    from mixedjax.inference.params import parameter_names
    m = at_lme4("sleepstudy")
    seen = []

    def stand_in(result, method, level, parm, **kwargs):
        seen.append((method, level, parm, kwargs))
        names = parameter_names(result)
        rows = names[:4] if parm == "theta_" else names[4:]
        values = np.arange(2 * len(rows), dtype=float).reshape(-1, 2) + (0 if parm == "theta_"
                                                                          else 100)
        return pd.DataFrame(values, index=rows, columns=["5 %", "95 %"])

    monkeypatch.setattr(confint_module, "confint", stand_in)
    t = m.tidy(conf_int=True, conf_level=0.9, conf_method="profile", ddf_method=None,
               nsim=7)
    assert seen == [("profile", 0.9, "beta_", {"nsim": 7}),
                    ("profile", 0.9, "theta_", {"nsim": 7})]
    np.testing.assert_array_equal(t["conf.low"], [100, 102, 0, 2, 4, 6])
    np.testing.assert_array_equal(t["conf.high"], [101, 103, 1, 3, 5, 7])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"effects": "random"}, ValueError, "unknown effect"),
    ({"effects": 3}, TypeError, "effects"),
    ({"effects": []}, ValueError, "effects is empty"),
    ({"conf_method": "exact"}, ValueError, "conf_method"),
    ({"conf_level": 1.5}, ValueError, "conf_level"),
    ({"conf_int": "yes"}, TypeError, "conf_int"),
    ({"ddf_method": "bogus"}, ValueError, "ddf"),
    ({"effects": "ran_pars", "scales": "var"}, ValueError, "scale"),
    ({"effects": "ran_pars", "scales": "vcov", "conf_int": True, "conf_method": "profile"},
     ValueError, "sd/cor scale"),
    ({"effects": "ran_vals", "conf_int": True, "conf_method": "profile"}, ValueError, "Wald"),
])
def test_tidy_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        at_lme4("sleepstudy").tidy(**kwargs)


def test_tidy_warnings_as_broom_mixed():
    m = at_lme4("sleepstudy")
    with pytest.warns(UserWarning, match="not available"):
        t = m.tidy(effects="ran_coefs", conf_int=True)
    assert t["conf.low"].isna().all()
    with pytest.warns(UserWarning, match="ignored for the fixed effects"):
        m.tidy(effects="fixed", conf_int=True, conf_method="profile")


def test_numpy_only_tools_leave_jax_unimported():
    code = """
import sys, mixedjax
m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", mixedjax.datasets.load("sleepstudy"))
m.coef, m.r2(), m.icc(), m.rePCA(), m.glance()
print("jax" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
