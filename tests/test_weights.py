"""Prior weights and offsets in lmer against lme4 (tests/reference/weights_reference.json,
made by make_weights_reference.R)."""

from __future__ import annotations

import numpy as np
import pytest

import mixedjax
from conftest import _load_json

WEIGHTS = _load_json("weights_reference.json")


def _data(name):
    if name.startswith("penicillin"):
        df = mixedjax.datasets.load("penicillin")
        i = np.arange(1, len(df) + 1)
        df["w"] = 1 + (i % 5) / 2
        return df
    df = mixedjax.datasets.load("sleepstudy")
    i = np.arange(1, len(df) + 1)
    df["w"] = 0.5 + (i % 7) / 4
    df["off"] = np.sin(i)
    return df


@pytest.fixture(scope="module", params=sorted(WEIGHTS))
def case(request):
    ref = WEIGHTS[request.param]
    df = _data(request.param)
    fit = mixedjax.lmer(ref["formula"], df, reml=ref["reml"], weights=ref["weights"],
                        offset=ref["offset"])
    return ref, fit


def test_weighted_fit_matches_lme4(case):
    ref, m = case
    assert m.objective == pytest.approx(ref["objective"], rel=1e-7)
    assert m.loglik == pytest.approx(ref["loglik"], rel=1e-7)
    np.testing.assert_allclose(m.theta, ref["theta"], rtol=2e-4, atol=1e-5)
    assert m.sigma == pytest.approx(ref["sigma"], rel=1e-5)
    for name, value in ref["fixef"].items():
        assert m.fixef[name] == pytest.approx(value, rel=1e-6)
        assert m.stderr[name] == pytest.approx(ref["stderr"][name], rel=1e-4)
    np.testing.assert_allclose(m.fitted.to_numpy()[:10], ref["fitted_head"], rtol=1e-5)
    np.testing.assert_allclose(m.residuals.to_numpy()[:10], ref["resid_head"], rtol=0,
                               atol=5e-3)  # lme4 stops ~1e-6 short of the ML optimum


def test_weights_as_array_equal_column():
    df = _data("sleepstudy")
    f = "Reaction ~ Days + (Days | Subject)"
    a = mixedjax.lmer(f, df, weights="w")
    b = mixedjax.lmer(f, df, weights=df["w"].to_numpy())
    assert a.objective == pytest.approx(b.objective, rel=1e-12)


def test_unit_weights_and_zero_offset_change_nothing(sleep_fit, sleepstudy):
    df = sleepstudy.copy()
    df["one"] = 1.0
    df["zero"] = 0.0
    m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", df, weights="one", offset="zero")
    assert m.objective == pytest.approx(sleep_fit.objective, rel=1e-12)
    np.testing.assert_allclose(m.fixef, sleep_fit.fixef, rtol=1e-10)


def test_offset_column_used_in_predict():
    df = _data("sleepstudy")
    m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", df, offset="off")
    np.testing.assert_allclose(m.predict(df.iloc[:5]).to_numpy(), m.fitted.to_numpy()[:5],
                               rtol=1e-12)
    with pytest.raises(ValueError, match="offset column"):
        m.predict(df.drop(columns="off").iloc[:5])


def test_response_map_reproduces_arrays():
    df = _data("sleepstudy")
    model = mixedjax.LMM.from_formula("Reaction ~ Days + (Days | Subject)", df, weights="w",
                                      offset="off")
    from mixedjax.backend import jax_backend
    from mixedjax.crossprod import with_response
    A = with_response(model.arrays, model.response_map, model.design.y, jax_backend())
    for name in ("b0", "abm", "abb", "beta0"):
        np.testing.assert_allclose(getattr(A, name), getattr(model.arrays, name), rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"weights": "nope"}, ValueError, "weights column 'nope' not found"),
    ({"weights": "Subject"}, TypeError, "must be numeric"),
    ({"weights": np.ones(3)}, ValueError, "one value per row"),
    ({"offset": "nope"}, ValueError, "offset column 'nope' not found"),
])
def test_bad_weights_and_offsets(sleepstudy, kwargs, err, match):
    with pytest.raises(err, match=match):
        mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, **kwargs)


def test_nonpositive_weights(sleepstudy):
    w = np.ones(len(sleepstudy))
    w[3] = 0.0
    with pytest.raises(ValueError, match="finite and positive"):
        mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, weights=w)


def test_missing_weight_drops_row(sleepstudy):
    w = np.ones(len(sleepstudy))
    w[0] = np.nan
    m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, weights=w)
    assert m.n_dropped == 1 and m.nobs == len(sleepstudy) - 1
