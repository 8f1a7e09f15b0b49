"""nlme models and fits travel: an :class:`~mixedjax.nlme.model.NlmeModel`, an lme or
gls fit with variance functions and correlation structures, its intervals and an
anova table pickle, save and load; the loaded fit prints the same summary, predicts
the same at every level, and its model refits to the same likelihood; a fit sent to
a worker process predicts there as here."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import operator

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax.nlme.fit import fit_model
from mixedjax.nlme.model import NlmeModel


from test_pickle import _pickled_modules, _roundtrip  # noqa: E402  (shared helpers)


@pytest.fixture(scope="module")
def ortho():
    d = mixedjax.datasets.load("orthodont").copy()
    d["Sex"] = d["Sex"].cat.reorder_categories(["Male", "Female"])
    return d


# The structures of tests/test_nlme.py (compiled once in a full run), with center()
# so that new data use the fitted data's mean.
FITS = {
    "lme_varident": lambda d: mixedjax.lme("distance ~ center(age) + Sex", d, "~ 1 | Subject",
                                           weights=mixedjax.VarIdent("~ 1 | Sex")),
    "lme_ml_slope_ar1": lambda d: mixedjax.lme(
        "distance ~ age + Sex", d, "~ age | Subject", method="ML",
        correlation=mixedjax.CorAR1("~ 1 | Subject")),
    "gls_corsymm_varident": lambda d: mixedjax.gls(
        "distance ~ age + Sex", d, correlation=mixedjax.CorSymm("~ 1 | Subject"),
        weights=mixedjax.VarIdent("~ 1 | age")),
}


@pytest.fixture(scope="module", params=["lme_varident",
                                        pytest.param("lme_ml_slope_ar1", marks=pytest.mark.slow),
                                        pytest.param("gls_corsymm_varident",
                                                     marks=pytest.mark.slow)])
def fit(request, ortho):
    return FITS[request.param](ortho)


def _newdata(ortho):
    nd = ortho[ortho.age <= 10].copy()
    nd["Sex"] = nd["Sex"].astype(str)            # plain text: mapped to the fit's levels
    return nd


def test_fit_round_trips_with_summary_predictions_and_intervals(fit, ortho, tmp_path):
    nd = _newdata(ortho)
    fit.save(tmp_path / "fit.mixedjax")
    levels = [0, 1] if isinstance(fit, mixedjax.nlme.LmeResult) else [0]
    for m2 in (_roundtrip(fit), mixedjax.load(tmp_path / "fit.mixedjax")):
        assert type(m2) is type(fit)
        assert str(m2.summary()) == str(fit.summary()) and repr(m2) == repr(fit)
        assert m2.loglik == fit.loglik
        pd.testing.assert_frame_equal(m2.vcov, fit.vcov, check_exact=True)
        for level in levels:
            pd.testing.assert_series_equal(m2.predict(nd, level=level),
                                           fit.predict(nd, level=level), check_exact=True)
        pd.testing.assert_series_equal(m2.fitted, fit.fitted, check_exact=True)
        assert str(m2.intervals()) == str(fit.intervals())
    intervals = fit.intervals()
    assert str(_roundtrip(intervals)) == str(intervals)
    assert not any(m.startswith("patsy") for m in _pickled_modules(fit))


def test_model_round_trips_and_refits_to_the_same_likelihood(fit):
    model = _roundtrip(fit.model)
    assert isinstance(model, NlmeModel)
    assert not any(m.startswith("patsy") for m in _pickled_modules(fit.model))
    assert model.x_design_info.column_names == fit.model.x_design_info.column_names
    assert [t.design_info.column_names for t in model.terms] == \
        [t.design_info.column_names for t in fit.model.terms]
    np.testing.assert_array_equal(model.X, fit.model.X)
    refit = fit_model(model, x0=fit.x)
    assert refit.loglik == pytest.approx(fit.loglik, rel=1e-10)
    pd.testing.assert_series_equal(refit.fixef, fit.fixef, rtol=1e-8)


def test_center_uses_the_fitted_mean_after_loading(ortho):
    fit = FITS["lme_varident"](ortho)
    nd = _newdata(ortho)
    m2 = _roundtrip(fit)
    X = np.column_stack([np.ones(len(nd)), nd["age"] - ortho["age"].mean(),
                         nd["Sex"] == "Female"]).astype(float)
    np.testing.assert_allclose(m2.predict(nd, level=0).to_numpy(), X @ fit.fixef.to_numpy(),
                               rtol=1e-12)


def test_anova_table_round_trips(ortho):
    ml = [mixedjax.lme(f, ortho, "~ 1 | Subject", method="ML")
          for f in ("distance ~ age", "distance ~ age + Sex")]
    table = mixedjax.anova(*ml)
    assert str(_roundtrip(table)) == str(table)
    loaded = [_roundtrip(m) for m in ml]
    assert str(mixedjax.anova(*loaded)) == str(table)


@pytest.mark.slow
def test_fit_predicts_in_a_worker_process(ortho):
    fit = FITS["lme_varident"](ortho)
    nd = _newdata(ortho)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        remote = pool.submit(operator.methodcaller("predict", nd, level=1), fit)
        text = pool.submit(str, fit.summary())
        remote, text = remote.result(timeout=120), text.result(timeout=120)
    pd.testing.assert_series_equal(remote, fit.predict(nd, level=1), check_exact=True)
    assert text == str(fit.summary())
