"""Every lme4 reference fit reproduced (values from R in tests/reference).

Tolerances: objective 1e-6 relative; fixed effects 1e-4 of their scale; standard
errors, sigma and standard deviations 1e-4 relative; correlations 1e-3; BLUPs 1e-3
relative to their column's scale; the same singular flag.  lme4 stops its
derivative-free optimizer at ~1e-6 in the objective, so our optimum is at or
slightly below lme4's.
"""

from __future__ import annotations


import numpy as np
import pytest

from conftest import EXTRA, LME4, reference_fit

ALL = {**{k: v for k, v in LME4.items()}, **EXTRA["extra_fits"]}

# lme4 stops this 3x3 covariance fit early: its objective is 1.1e-6 above the optimum
# (ours equals lme4's at lme4's theta to 1e-10, and the same model written as
# machines_vector agrees to 1e-12), so its estimates are only good to ~1e-3.
LOOSE = {"machines_slopes_factor": 10.0}


@pytest.fixture(scope="module", params=sorted(ALL))
def case(request):
    ref = ALL[request.param]
    return ref, reference_fit(ref)


def test_objective_and_likelihood(case):
    ref, m = case
    assert m.converged
    assert abs(m.objective - ref["objective"]) <= 1e-6 * abs(ref["objective"])
    assert m.objective <= ref["objective"] + 1e-7 * abs(ref["objective"])
    for name in ("loglik", "aic", "bic"):
        assert getattr(m, name) == pytest.approx(ref[name], rel=1e-6)
    assert m.nobs == ref["nobs"]
    assert m.ngroups == ref["ngroups"]


def test_fixed_effects(case):
    ref, m = case
    f = LOOSE.get(ref["case"], 1.0)
    assert list(m.fixef.index) == list(ref["fixef"])
    se_ref = np.array(list(ref["se"].values()))
    est_ref = np.array(list(ref["fixef"].values()))
    scale = np.maximum(np.abs(est_ref), se_ref)
    np.testing.assert_array_less(np.abs(m.fixef.to_numpy() - est_ref), 1e-4 * f * scale)
    np.testing.assert_allclose(m.stderr.to_numpy(), se_ref, rtol=1e-4 * f)
    np.testing.assert_allclose(m.vcov.to_numpy(), np.array(ref["vcov"]),
                               rtol=2e-4 * f, atol=1e-4 * f * se_ref.max() ** 2)


def test_variance_components(case):
    ref, m = case
    f = LOOSE.get(ref["case"], 1.0)
    assert m.sigma == pytest.approx(ref["sigma"], rel=1e-4 * f)
    vc = m.varcorr
    assert len(vc) == len(ref["varcorr"])
    for (_, row), r in zip(vc.iterrows(), ref["varcorr"]):
        assert row.grp == r["grp"]
        assert row.var1 == r["var1"] and row.var2 == r["var2"]
        if r["var2"] is None:
            sd_scale = max(r["sdcor"], 1e-4 * ref["sigma"])
            assert abs(row.sdcor - r["sdcor"]) <= 1e-4 * f * sd_scale
        else:
            assert abs(row.sdcor - r["sdcor"]) <= 1e-3 * f


def test_theta_and_singular(case):
    ref, m = case
    assert m.singular == ref["singular"]
    theta_ref = np.array(ref["theta"])
    assert m.theta.shape == theta_ref.shape
    # theta is lme4's layout; its precision is bounded by lme4's optimizer tolerance.
    f = LOOSE.get(ref["case"], 1.0)
    np.testing.assert_allclose(m.theta, theta_ref,
                               atol=2e-4 * f * max(1.0, abs(theta_ref).max()))


def test_blups(case):
    ref, m = case
    assert set(m.ranef) == set(ref["ranef"])
    for grp, r in ref["ranef"].items():
        got = m.ranef[grp]
        assert list(got.columns) == r["names"]
        assert sorted(got.index) == sorted(r["levels"])
        want = np.array(r["values"], dtype=float).reshape(len(r["levels"]), len(r["names"]))
        got = got.loc[r["levels"]].to_numpy()
        scale = np.maximum(np.abs(want).max(axis=0), 1e-8)
        # A singular fit's BLUPs are zero in lme4 and round-off small here.
        if ref["singular"]:
            scale = np.maximum(scale, 1e-6 * ref["sigma"])
        err = np.abs(got - want) / scale
        assert err.max() <= 1e-3, f"{grp}: max relative BLUP error {err.max():.2e}"


def test_missing_rows_reported():
    ref = EXTRA["extra_fits"]["sleepstudy_na"]
    m = reference_fit(ref)
    assert m.nobs == 176 and m.n_dropped == 4
    assert "4 observation(s) deleted" in str(m.summary())


def test_rank_deficient_columns_dropped():
    ref = EXTRA["extra_fits"]["cake_rankdef"]
    with pytest.warns(UserWarning, match="rank deficient"):
        m = reference_fit(ref)
    assert list(m.fixef.index) == list(ref["fixef"])
    assert m.model.design.aliased == ref["dropped"]
