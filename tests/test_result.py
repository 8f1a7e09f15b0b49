"""Result object: summary text/HTML, prediction, condVar, optimization record, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import mixedjax

from conftest import LME4


def test_summary_reads_like_lme4(sleep_fit):
    text = str(sleep_fit.summary())
    for piece in ["Linear mixed model fit by REML", "REML criterion at convergence: 1743.6",
                  "Scaled residuals:", "-3.9536", "Random effects:", "Subject  (Intercept)",
                  "612.1", "24.74", "0.07", "Residual", "Number of obs: 180, groups:  Subject, 18",
                  "Fixed effects:", "251.4", "6.825", "36.84", "Correlation of Fixed Effects:",
                  "-0.138"]:
        assert piece in text, piece
    html = sleep_fit._repr_html_()
    assert "<table" in html and "Random effects" in html and "Fixed effects" in html


def test_summary_ml_shows_information_criteria(sleepstudy):
    m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, reml=False)
    text = str(m.summary())
    assert "maximum likelihood" in text
    ref = LME4["sleepstudy_ml"]
    assert f"{ref['aic']:.1f}" in text and f"{ref['bic']:.1f}" in text
    assert m.df_resid == 174


def test_singular_fit_is_reported():
    m = mixedjax.lmer("Yield ~ 1 + (1 | Batch)", mixedjax.datasets.load("dyestuff2"))
    assert m.singular and m.converged
    assert m.theta[0] == pytest.approx(0.0, abs=1e-8)
    assert "singular" in str(m.summary())


def test_optinfo_record(sleep_fit):
    info = sleep_fit.optinfo
    assert info["converged"] and sleep_fit.converged
    assert 1 <= info["iterations"] < 30
    assert info["grad_max"] < 1e-6
    assert info["hessian_min_eigenvalue"] > 0
    np.testing.assert_array_equal(info["theta0"], [1.0, 0.0, 1.0])


def test_nonconvergence_warns(sleepstudy):
    with pytest.warns(mixedjax.ConvergenceWarning, match="did not converge"):
        m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, max_iter=1)
    assert not m.converged
    assert "did not converge" in str(m.summary())


def test_fitted_residuals_and_predict(sleep_fit, sleepstudy):
    fitted = sleep_fit.fitted
    np.testing.assert_allclose(fitted + sleep_fit.residuals, sleepstudy.Reaction)
    np.testing.assert_allclose(sleep_fit.predict(sleepstudy), fitted, rtol=1e-12)
    pop = sleep_fit.predict(sleepstudy, re_form="~0")
    beta = sleep_fit.fixef
    np.testing.assert_allclose(pop, beta["(Intercept)"] + beta["Days"] * sleepstudy.Days)
    # A subset of random terms by formula.
    np.testing.assert_allclose(sleep_fit.predict(sleepstudy, re_form="~(Days | Subject)"), fitted)
    # The marginal prediction of the mean over subjects: BLUPs average to ~0.
    assert abs(sleep_fit.ranef["Subject"].mean().iloc[0]) < 1e-8


def test_predict_new_subject(sleep_fit):
    new = pd.DataFrame({"Days": [0, 5], "Subject": ["new", "308"]})
    with pytest.raises(ValueError, match="new"):
        sleep_fit.predict(new)
    got = sleep_fit.predict(new, allow_new_levels=True)
    b = sleep_fit.ranef["Subject"].loc["308"]
    beta = sleep_fit.fixef
    assert got.iloc[0] == pytest.approx(beta.iloc[0])
    assert got.iloc[1] == pytest.approx(beta.iloc[0] + b.iloc[0] + 5 * (beta.iloc[1] + b.iloc[1]))


def test_condvar_equals_dense_posterior_covariance():
    """condVar blocks equal sigma^2 Lambda (Lambda'Z'Z Lambda + I)^-1 Lambda' computed densely."""
    df = mixedjax.datasets.load("penicillin")
    m = mixedjax.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", df)
    d = m.model.design

    Z = np.hstack([np.eye(t.nlevels)[t.codes] for t in d.terms])
    lam = np.concatenate([np.full(t.nlevels, th) for t, th in zip(d.terms, m.theta)])
    ZL = Z * lam
    post = m.sigma ** 2 * (lam[:, None] * np.linalg.inv(ZL.T @ ZL + np.eye(len(lam))) * lam)
    diag = np.diag(post)
    got = np.concatenate([m.ranef_condvar["plate"][:, 0, 0], m.ranef_condvar["sample"][:, 0, 0]])
    np.testing.assert_allclose(got, diag, rtol=1e-10)
    assert set(m.ranef_se) == {"plate", "sample"}


def test_condvar_vector_term(sleep_fit):
    d = sleep_fit.model.design
    t = d.terms[0]
    Z = np.zeros((d.n, 2 * t.nlevels))
    for j in range(2):
        Z[np.arange(d.n), t.codes * 2 + j] = t.Z[:, j]
    lam = np.kron(np.eye(t.nlevels), np.array([[sleep_fit.theta[0], 0],
                                                [sleep_fit.theta[1], sleep_fit.theta[2]]]))
    ZL = Z @ lam
    post = sleep_fit.sigma ** 2 * lam @ np.linalg.inv(ZL.T @ ZL + np.eye(ZL.shape[1])) @ lam.T
    got = sleep_fit.ranef_condvar["Subject"]
    for a in range(t.nlevels):
        np.testing.assert_allclose(got[a], post[2 * a:2 * a + 2, 2 * a:2 * a + 2], rtol=1e-9)


def test_objective_method_validates_theta(sleep_fit):
    with pytest.raises(ValueError, match="3 entries"):
        sleep_fit.model.objective(np.ones(2))
    assert len(sleep_fit.model.theta_names) == 3


def test_r_function_names_in_formula(sleepstudy):
    m = mixedjax.lmer("log(Reaction) ~ Days + (1 | Subject)", sleepstudy)
    assert m.converged and m.fixef["Days"] > 0


def test_datasets_listed_and_loaded():
    names = mixedjax.datasets.list()
    for name in ["sleepstudy", "dyestuff", "dyestuff2", "penicillin", "pastes", "cake", "oats",
                 "orthodont", "machines", "tablets", "tablets_unbalanced"]:
        assert name in names
        df = mixedjax.datasets.load(name)
        assert len(df) > 0 and df.attrs["name"] == name
    assert isinstance(mixedjax.datasets.load("Sleepstudy").Subject.dtype, pd.CategoricalDtype)
    with pytest.raises(ValueError, match="unknown data set"):
        mixedjax.datasets.load("nope")


def test_grouping_column_of_any_dtype(sleepstudy):
    base = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    for conv in (lambda s: s.astype(str), lambda s: s.astype(int), lambda s: s.astype(float)):
        df = sleepstudy.assign(Subject=conv(sleepstudy.Subject.astype(int)))
        m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", df)
        assert m.objective == pytest.approx(base.objective, rel=1e-12)
        assert list(m.ranef["Subject"].index) == list(base.ranef["Subject"].index)


def test_cli_fit_csv(tmp_path):
    df = mixedjax.datasets.load("dyestuff")
    path = tmp_path / "dye.csv"
    df.to_csv(path, index=False)
    out = subprocess.run([sys.executable, "-m", "mixedjax", "fit", str(path), "Yield ~ 1 + (1 | Batch)",
                          "--ml"], capture_output=True, text=True, check=True)
    assert "maximum likelihood" in out.stdout and "Batch" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "mixedjax", "fit", str(path), "Yield ~ 1 + (1 | Nope)"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Nope" in bad.stderr


def test_cli_default_fits_sleepstudy():
    out = subprocess.run([sys.executable, "-m", "mixedjax"], capture_output=True, text=True,
                         check=True)
    assert "REML criterion at convergence: 1743.6" in out.stdout


@pytest.mark.parametrize("case", sorted(LME4))
def test_summary_prints_for_every_reference_model(case):
    from conftest import reference_fit
    text = str(reference_fit(LME4[case]).summary())
    assert "Fixed effects:" in text and "Random effects:" in text
    if len(LME4[case]["fixef"]) > 2:
        assert "Correlation of Fixed Effects:" in text
