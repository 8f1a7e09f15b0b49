"""Formula functions with R's meaning: ``scale(x)`` divides by R's sd (n - 1), and
by the root mean square without centring, as R's ``scale``; values from lme4 1.1.31
(``lmer(Reaction ~ scale(Days) + (1|Subject), sleepstudy)``)."""

import numpy as np
import pytest

import mixedjax


@pytest.fixture(scope="module")
def sleep():
    return mixedjax.datasets.load("sleepstudy")


@pytest.mark.parametrize("term,expected", [
    ("scale(Days)", [298.5078916667, 30.1488534214]),
    ("scale(Days, center=False)", [251.4051048485, 56.0358876725]),
])
def test_scale_coefficients_equal_lme4(sleep, term, expected):
    m = mixedjax.lmer(f"Reaction ~ {term} + (1 | Subject)", sleep)
    np.testing.assert_allclose(m.fixef.to_numpy(), expected, rtol=1e-8)


def test_scale_keeps_the_fitted_mean_and_sd_for_new_data(sleep):
    m = mixedjax.lmer("Reaction ~ scale(Days) + (1 | Subject)", sleep)
    days = sleep.Days.to_numpy(float)
    new = sleep.head(4).assign(Days=[0.0, 20.0, 40.0, 5.0])
    z = (new.Days.to_numpy() - days.mean()) / days.std(ddof=1)
    expected = m.fixef.iloc[0] + m.fixef.iloc[1] * z
    np.testing.assert_allclose(m.predict(new, re_form="~0").to_numpy(), expected, rtol=1e-12)
