"""Satterthwaite and Kenward-Roger t/F tests against lmerTest and pbkrtest.

References (tests/reference): ``lme4_reference.json`` (lmerTest's coefficient
table and type III anova, both methods, for every REML case) and
``inference_extra_reference.json`` (made by make_inference_extra_reference.R:
type I/II/III anova for seven models, custom contrasts, an ML coefficient table).

Two comparisons per case:
* at lme4's theta (what lmerTest/pbkrtest used): everything agrees to 1e-6 relative
  (observed ~1e-9 for Satterthwaite, whose df lmerTest takes by finite differences,
  and ~1e-13 for Kenward-Roger);
* at our own optimum (the user-facing methods): Satterthwaite df within 1e-4 of
  lmerTest's and Kenward-Roger df within 1e-6 of pbkrtest's; F, t and estimates
  within 1e-4 (lme4's optimizer stops ~1e-6 short of the optimum in the
  criterion, which moves the estimates by up to ~2e-5 relative).
p-values: 1e-4 relative or 1e-6 absolute (tiny p-values magnify the estimates'
differences).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import mixedjax
from conftest import LME4, REF, case_data, reference_fit
from mixedjax.backend import jax_backend
from mixedjax.crossprod import with_response
from mixedjax.inference import hypotheses, kenward_roger, tables, terms
from mixedjax.inference.satterthwaite import satterthwaite_test

with open(REF / "inference_extra_reference.json") as fh:
    EXTRA_INF = json.load(fh)
with open(REF / "inference_reference.json") as fh:
    INF = json.load(fh)

DDF_CASES = sorted(k for k, v in LME4.items() if "satterthwaite_coef" in v)
METHODS = {"Satterthwaite": "anova3_Satterthwaite", "Kenward-Roger": "anova3_KenwardRoger"}
P_TOL = dict(rtol=1e-4, atol=1e-6)

_FITS: dict = {}


def fit_of(name: str):
    """Module-wide cache of fits (each model shape compiles once per process)."""
    if name not in _FITS:
        if name in LME4:
            _FITS[name] = reference_fit(LME4[name])
        else:
            cs = EXTRA_INF["anova"][name]
            na = {cs["response"]: cs["na_rows"]} if "na_rows" in cs else None
            df = case_data(cs["data"], cs["factors"], na)
            if "drop_rows" in cs:
                df = df.drop(index=np.asarray(cs["drop_rows"]) - 1).reset_index(drop=True)
                with pytest.warns(UserWarning, match="rank deficient"):
                    _FITS[name] = mixedjax.lmer(cs["formula"], df)
            else:
                _FITS[name] = mixedjax.lmer(cs["formula"], df)
    return _FITS[name]


def _rows(tester, Ls):
    return pd.DataFrame([tester.f_test(L) for L in Ls.values()], index=list(Ls))


# ----------------------------------------------------------------------------------
# lme4_reference.json: coefficient tables and type III anova of every REML case
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DDF_CASES)
def test_coef_table_satterthwaite(name):
    ref, m = LME4[name], fit_of(name)
    sc = ref["satterthwaite_coef"]
    ct = m.coef_table("Satterthwaite")
    assert list(ct.columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    assert list(ct.index) == sc["names"]
    np.testing.assert_allclose(ct["df"], sc["df"], rtol=1e-4)
    np.testing.assert_allclose(ct["t value"], sc["t"], rtol=1e-4)
    np.testing.assert_allclose(ct["Pr(>|t|)"], sc["p"], rtol=2e-3, atol=1e-6)
    # At lme4's theta the df equal lmerTest's up to its finite-difference error.
    tester = tables.Tester(m, "Satterthwaite", theta=ref["theta"])
    at_ref = pd.DataFrame([tester.t_test(r) for r in np.eye(len(ct))])
    np.testing.assert_allclose(at_ref["df"], sc["df"], rtol=1e-6)
    np.testing.assert_allclose(at_ref["t value"], sc["t"], rtol=1e-6)
    np.testing.assert_allclose(at_ref["Pr(>|t|)"], sc["p"], rtol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", DDF_CASES)
def test_anova_type3(name, method):
    ref, m = LME4[name], fit_of(name)
    r = ref[METHODS[method]]
    tab = m.anova(type=3, ddf=method)
    assert list(tab.columns) == ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    assert list(tab.index) == r["terms"]
    np.testing.assert_array_equal(tab["NumDF"], r["numdf"])
    np.testing.assert_allclose(tab["F value"], r["F"], rtol=1e-4)
    np.testing.assert_allclose(tab["DenDF"], r["dendf"],
                               rtol=1e-6 if method == "Kenward-Roger" else 1e-4)
    np.testing.assert_allclose(tab["Pr(>F)"], r["p"], rtol=2e-3, atol=1e-6)
    # At lme4's theta: Kenward-Roger F and df to 1e-6 (pbkrtest is exact), and
    # Satterthwaite up to lmerTest's finite differences.
    at_ref = _rows(tables.Tester(m, method, theta=ref["theta"]), hypotheses.contrasts(m, 3))
    np.testing.assert_allclose(at_ref["F value"], r["F"], rtol=1e-6)
    np.testing.assert_allclose(at_ref["DenDF"], r["dendf"], rtol=1e-6)
    np.testing.assert_allclose(at_ref["Pr(>F)"], r["p"], rtol=1e-5)


def test_coef_table_satterthwaite_ml_fit():
    """For ML fits lmerTest differentiates -2 log L (sigma not profiled)."""
    r = EXTRA_INF["ml_satterthwaite_coef"]
    m = fit_of("sleepstudy_ml")
    ct = m.coef_table("Satterthwaite")
    assert list(ct.index) == r["names"]
    np.testing.assert_allclose(ct["df"], r["df"], rtol=1e-4)
    np.testing.assert_allclose(ct["t value"], r["t"], rtol=1e-4)
    at_ref = pd.DataFrame([tables.Tester(m, "Satterthwaite", theta=r["theta"]).t_test(row)
                           for row in np.eye(len(ct))])
    np.testing.assert_allclose(at_ref["df"], r["df"], rtol=1e-6)
    np.testing.assert_allclose(at_ref["Pr(>|t|)"], r["p"], rtol=1e-5)


def test_oats_split_plot_df_are_exact():
    """Whole-plot and split-plot denominator df of the balanced split plot are the
    integers 10 and 45 (lmerTest prints 10.0000175 and 45.0000358)."""
    m = fit_of("oats_splitplot")
    for method in METHODS:
        tab = m.anova(type=3, ddf=method)
        np.testing.assert_allclose(tab["DenDF"], [10.0, 45.0, 45.0], rtol=1e-8)
        ct = m.coef_table(method)
        np.testing.assert_allclose(ct["df"].iloc[3:], 45.0, rtol=1e-8)


def test_tablets_kenward_roger_coef_table():
    ref = INF["tablets_kr_coef"]
    ct = fit_of("tablets_paired").coef_table("KR")
    assert list(ct.index) == ref["names"]
    np.testing.assert_allclose(ct["Estimate"], ref["estimate"], rtol=1e-6)
    np.testing.assert_allclose(ct["Std. Error"], ref["se"], rtol=1e-6)
    np.testing.assert_allclose(ct["df"], ref["df"], rtol=1e-6)
    np.testing.assert_allclose(ct["t value"], ref["t"], rtol=1e-6)
    np.testing.assert_allclose(ct["Pr(>|t|)"], ref["p"], rtol=1e-5)


def test_kenward_roger_adjusts_standard_errors():
    """Unbalanced data: the KR table reports sqrt(diag(Phi_A)) >= the unadjusted SE."""
    m = fit_of("oats_unbalanced")
    ct = m.coef_table("kenward-roger")
    se, se_kr = m.stderr.to_numpy(), ct["Std. Error"].to_numpy()
    assert np.all(se_kr >= se * (1 - 1e-12)) and np.any(se_kr > se * (1 + 1e-3))
    kp = kenward_roger.kr_pieces(m)
    np.testing.assert_allclose(ct["Std. Error"], np.sqrt(np.diag(kp.PhiA)), rtol=1e-12)


# ----------------------------------------------------------------------------------
# inference_extra_reference.json: type I, II, III for four models
# ----------------------------------------------------------------------------------
ANOVA_CASES = sorted(EXTRA_INF["anova"])
# Model shapes not compiled elsewhere in this file: Kenward-Roger only (its
# computation needs no compilation), to keep the test run short.
KR_ONLY = {"oats_missing_cell", "cake_no_main"}


@pytest.mark.parametrize("type_", ["1", "2", "3"])
@pytest.mark.parametrize("name", ANOVA_CASES)
def test_anova_types_1_2_3(name, type_):
    """Also: a missing cell (rank-deficient X) and interactions without their main
    effects, where R's terms() coding decides which terms contain which."""
    cs = EXTRA_INF["anova"][name]
    m = fit_of(name)
    Ls = hypotheses.contrasts(m, int(type_))
    methods = [("Kenward-Roger", "KenwardRoger")]
    if name not in KR_ONLY:
        methods.append(("Satterthwaite", "Satterthwaite"))
    for method, key in methods:
        r = cs["types"][type_][key]
        tab = m.anova(type=int(type_), ddf=method)
        assert list(tab.index) == r["terms"]
        np.testing.assert_array_equal(tab["NumDF"], r["numdf"])
        # The missing-cell fit's optimum is flat: lme4 stops 2e-4 away in theta.
        np.testing.assert_allclose(tab["F value"], r["F"], rtol=5e-4)
        np.testing.assert_allclose(tab["Mean Sq"], r["MeanSq"], rtol=5e-4)
        at_ref = _rows(tables.Tester(m, method, theta=np.atleast_1d(cs["theta"])), Ls)
        for col, rk in [("F value", "F"), ("DenDF", "dendf"), ("Sum Sq", "SumSq"),
                        ("Mean Sq", "MeanSq"), ("Pr(>F)", "p")]:
            np.testing.assert_allclose(at_ref[col], r[rk], rtol=1e-6, err_msg=f"{method} {col}")


def test_type3_roman_and_hypotheses_attached():
    m = fit_of("oats_unbalanced")
    tab = m.anova(type="III")
    assert tab.attrs["heading"].startswith("Type III Analysis of Variance Table")
    np.testing.assert_allclose(tab["F value"], m.anova(type=3)["F value"], rtol=1e-12)
    L = tab.attrs["hypotheses"]["V"]
    assert L.shape == (2, len(m.fixef))


def test_type3_does_not_depend_on_the_contrast_coding():
    """Sum-to-zero coding is mapped to the treatment-coded type III hypotheses, as
    lmerTest does, so the F tests equal those of the treatment-coded fit; the model
    matrix rebuilt from patsy's codings equals the fit's."""
    cs = EXTRA_INF["anova"]["oats_unbalanced"]
    df = case_data(cs["data"], cs["factors"], {cs["response"]: cs["na_rows"]})
    m_sum = mixedjax.lmer("Y ~ C(V, Sum) * C(N, Sum) + (1 | B/V)", df)
    d = m_sum.model.design
    assert not terms.is_treatment_coded(d)
    X, _ = terms.coded_matrix(d, d.frame, treatment=False)
    np.testing.assert_allclose(X[:, d.x_keep], d.X, atol=1e-12)
    ref = cs["types"]["3"]["KenwardRoger"]
    tab = m_sum.anova(type=3, ddf="Kenward-Roger")
    assert list(tab.index) == ["C(V, Sum)", "C(N, Sum)", "C(V, Sum):C(N, Sum)"]
    np.testing.assert_allclose(tab["F value"], ref["F"], rtol=1e-4)
    np.testing.assert_allclose(tab["DenDF"], ref["dendf"], rtol=1e-6)
    np.testing.assert_allclose(tab["F value"], fit_of("oats_unbalanced").anova(
        type=3, ddf="KR")["F value"], rtol=1e-6)


# ----------------------------------------------------------------------------------
# Custom contrasts (lmerTest's contest)
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["two_rows_satterthwaite", "two_rows_kenwardroger",
                                 "one_row_rhs_satterthwaite", "one_row_rhs_kenwardroger"])
def test_contrast_against_lmertest(key):
    con = EXTRA_INF["contrast"]
    r = con[key]
    m = fit_of(con["case"])
    assert list(m.fixef.index) == con["names"]
    res = m.test_contrast(np.array(r["L"]), ddf=r["ddf"], rhs=r["rhs"])
    assert len(res) == 1
    for col in ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value"]:
        np.testing.assert_allclose(res[col], r["joint"][col], rtol=1e-4, err_msg=col)
    np.testing.assert_allclose(res["Pr(>F)"], r["joint"]["Pr(>F)"], **P_TOL)
    if "t" in r:
        for col in ["Estimate", "Std. Error", "df", "t value"]:
            np.testing.assert_allclose(res[col], r["t"][col], rtol=1e-4, err_msg=col)
        np.testing.assert_allclose(res["Pr(>|t|)"], r["t"]["Pr(>|t|)"], **P_TOL)
    else:
        assert "t value" not in res


def test_contrast_accepts_named_coefficients():
    m = fit_of("oats_unbalanced")
    L = pd.DataFrame([{"N0.6cwt": 1.0, "N0.2cwt": -1.0}])
    res = m.test_contrast(L)
    expect = m.test_contrast(np.eye(len(m.fixef))[5] - np.eye(len(m.fixef))[3])
    np.testing.assert_allclose(res.to_numpy(), expect.to_numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------------
# Other df methods, summary
# ----------------------------------------------------------------------------------
def test_residual_and_normal_df():
    m = fit_of("tablets_paired")
    n, p = m.nobs, len(m.fixef)
    se = m.stderr.to_numpy()
    z = m.fixef.to_numpy() / se
    res = m.coef_table("residual")
    np.testing.assert_allclose(res["df"], n - p)
    np.testing.assert_allclose(res["Std. Error"], se, rtol=1e-12)
    from scipy import stats
    np.testing.assert_allclose(res["Pr(>|t|)"], 2 * stats.t.sf(np.abs(z), n - p), rtol=1e-10)
    norm = m.coef_table(None)
    assert np.all(np.isinf(norm["df"]))
    np.testing.assert_allclose(norm["Pr(>|t|)"], 2 * stats.norm.sf(np.abs(z)), rtol=1e-10)
    a = m.anova(ddf=None)
    np.testing.assert_allclose(a["F value"], z[1] ** 2, rtol=1e-10)
    np.testing.assert_allclose(a["Pr(>F)"], stats.chi2.sf(z[1] ** 2, 1), rtol=1e-10)


def test_ddf_aliases():
    m = fit_of("tablets_paired")
    base = m.coef_table("Kenward-Roger")
    for alias in ("KR", "kr", "kenward-roger", "Kenward_Roger"):
        pd.testing.assert_frame_equal(m.coef_table(alias), base)
    sat = m.coef_table("Satterthwaite")
    pd.testing.assert_frame_equal(m.coef_table("satterthwaite"), sat)


def test_summary_with_ddf_shows_lmertest_table():
    m = fit_of("oats_splitplot")
    plain = str(m.summary())
    assert str(m.summary(ddf=None)) == plain
    assert "Pr(>|t|)" not in plain
    text = str(m.summary(ddf="Satterthwaite"))
    assert "t-tests use Satterthwaite's method" in text.splitlines()[0]
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Fixed effects:"))
    assert lines[head + 1].split() == ["Estimate", "Std.", "Error", "df", "t", "value",
                                       "Pr(>|t|)"]
    row = lines[head + 6].split()          # N0.4cwt: t = 4.51, p = 4.6e-05
    assert row[0] == "N0.4cwt" and row[-1] == "***" and row[3] == "45.000"
    assert "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1" in text
    kr_text = m.summary(ddf="KR").text(correlation=False)
    assert "Kenward-Roger's method" in kr_text
    pd.testing.assert_frame_equal(m.summary(ddf="KR").coef_table(), m.coef_table("KR"))


# ----------------------------------------------------------------------------------
# The pure, vmappable core
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_satterthwaite_test_vmaps_over_refits():
    """satterthwaite_test batched over thetas and arrays of several responses equals
    the result-level tables of each refit."""
    sleep = mixedjax.datasets.load("sleepstudy")
    base = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    rng = np.random.default_rng(3)
    ys = base.model.design.y + rng.normal(0.0, 10.0, (3, base.nobs))
    fits = [mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleep.assign(Reaction=y))
            for y in ys]
    R = base.model.response_map
    arrays = jax.vmap(lambda y: with_response(base.model.arrays, R, y, jax_backend()))(
        jnp.asarray(ys))
    thetas = jnp.asarray(np.stack([f.theta for f in fits]))
    L = jnp.array([[0.0, 1.0], [1.0, -20.0]])
    batched = jax.vmap(satterthwaite_test, in_axes=(0, 0, None, None))(thetas, arrays, True, L)
    assert batched.F.shape == (3,) and batched.estimate.shape == (3, 2)
    for i, f in enumerate(fits):
        ref = f.test_contrast(np.asarray(L))
        np.testing.assert_allclose(batched.F[i], ref["F value"].iloc[0], rtol=1e-8)
        np.testing.assert_allclose(batched.dendf[i], ref["DenDF"].iloc[0], rtol=1e-8)
        np.testing.assert_allclose(batched.p_value[i], ref["Pr(>F)"].iloc[0], rtol=1e-6)
        assert int(batched.numdf[i]) == 2
        np.testing.assert_allclose(batched.estimate[i], np.asarray(L) @ f.fixef.to_numpy(),
                                   rtol=1e-8)
        np.testing.assert_allclose(batched.vcov[i], np.asarray(L) @ f.vcov.to_numpy()
                                   @ np.asarray(L).T, rtol=1e-8)
    one = satterthwaite_test(thetas[0], jax.tree_util.tree_map(lambda a: a[0], arrays), True,
                             L[:1])
    ct = fits[0].coef_table("Satterthwaite").loc["Days"]
    np.testing.assert_allclose(one.t, ct["t value"], rtol=1e-8)
    np.testing.assert_allclose(one.F, ct["t value"] ** 2, rtol=1e-8)
    np.testing.assert_allclose(one.dendf, ct["df"], rtol=1e-8)


def test_kenward_roger_with_weights_matches_dense_formulas():
    """The Woodbury (q-space) computation equals pbkrtest's formulas written with
    dense n x n matrices, Sigma = sigma^2 W^-1 + sum_t Z_t (I ⊗ Psi_t) Z_t'."""
    df = case_data("orthodont", ["Subject", "Sex"])
    df["w"] = 1.0 + (np.arange(len(df)) % 3) * 0.5
    m = mixedjax.lmer("distance ~ age + Sex + (age | Subject)", df, weights="w")
    d = m.model.design
    n, w = d.n, d.weights
    t = d.terms[0]
    Z = np.zeros((n, t.nlevels * t.k))
    for j in range(t.k):
        Z[np.arange(n), t.codes * t.k + j] = t.Z[:, j]
    lam = m._lambdas[0]
    Sigma = np.diag(m.sigma ** 2 / w) + Z @ np.kron(np.eye(t.nlevels),
                                                    m.sigma ** 2 * lam @ lam.T) @ Z.T
    G = []
    for j in range(t.k):
        for i in range(j, t.k):
            E = np.zeros((t.k, t.k))
            E[i, j] = E[j, i] = 1.0
            G.append(Z @ np.kron(np.eye(t.nlevels), E) @ Z.T)
    G.append(np.diag(1.0 / w))
    X = d.X
    Si = np.linalg.inv(Sigma)
    Phi = np.linalg.inv(X.T @ Si @ X)
    P = [-X.T @ Si @ Gr @ Si @ X for Gr in G]
    Q = [[X.T @ Si @ Gr @ Si @ Gs @ Si @ X for Gs in G] for Gr in G]
    g = len(G)
    IE2 = np.array([[np.trace(Si @ G[r] @ Si @ G[s]) - 2 * np.trace(Phi @ Q[r][s])
                     + np.trace(Phi @ P[r] @ Phi @ P[s]) for s in range(g)] for r in range(g)])
    W = 2 * np.linalg.inv(IE2)
    U = sum(W[r, s] * (Q[r][s] - P[r] @ Phi @ P[s]) for r in range(g) for s in range(g))
    PhiA = Phi + 2 * Phi @ U @ Phi
    kp = kenward_roger.kr_pieces(m)
    scale = np.max(np.abs(PhiA))
    np.testing.assert_allclose(kp.Phi, Phi, atol=1e-10 * scale)
    np.testing.assert_allclose(kp.PhiA, PhiA, atol=1e-10 * scale)
    np.testing.assert_allclose(kp.W, W, rtol=1e-9)


# ----------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------
def test_bad_input_errors():
    m = fit_of("tablets_paired")
    with pytest.raises(ValueError, match="must have 2 columns"):
        m.test_contrast([1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="must have 2 columns"):
        m.test_contrast(np.ones((2, 3)))
    with pytest.raises(ValueError, match="one value per row"):
        m.test_contrast(np.eye(2), rhs=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="not fixed effects"):
        m.test_contrast(pd.DataFrame([{"methodxyz": 1.0}]))
    with pytest.raises(TypeError, match="numeric"):
        m.test_contrast([["a", "b"]])
    for call in (lambda: m.coef_table("Welch"), lambda: m.anova(ddf="bogus"),
                 lambda: m.test_contrast([0, 1], ddf="z-test"), lambda: m.summary(ddf="x")):
        with pytest.raises(ValueError, match="unknown ddf method"):
            call()
    with pytest.raises(ValueError, match="unknown anova type"):
        m.anova(type=4)


def test_kenward_roger_refuses_ml_fits():
    ml = fit_of("sleepstudy_ml")
    for call in (lambda: ml.coef_table("Kenward-Roger"), lambda: ml.anova(ddf="KR"),
                 lambda: ml.test_contrast([0, 1], ddf="KR"), lambda: ml.summary(ddf="KR")):
        with pytest.raises(ValueError, match="only available for REML"):
            call()
