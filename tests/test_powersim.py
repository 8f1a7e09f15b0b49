"""Power by simulation against an exact answer, power curves and bad input."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedjax

matplotlib.use("Agg")

G, PER = 10, 4
PARAMS = {"beta": [0.0, 1.0], "varcomp": {"g": 0.5}, "sigma": 1.0}


def _design(groups=G):
    return pd.DataFrame({"g": np.repeat(np.arange(groups), PER).astype(str),
                         "trt": np.repeat(np.arange(groups) % 2, PER)})


def _exact_power(groups):
    """Treatment between groups, balanced: the Satterthwaite df are exactly g - 2
    and the t statistic is noncentral t with ncp = effect / se."""
    var_mean = 0.5 + 1.0 / PER
    se = np.sqrt(2 * var_mean / (groups / 2))
    crit = stats.t.ppf(0.975, groups - 2)
    return stats.nct.sf(crit, groups - 2, 1.0 / se) + stats.nct.cdf(-crit, groups - 2, 1.0 / se)


@pytest.mark.slow
def test_power_equals_exact_noncentral_t():
    res = mixedjax.power(_design(), "y ~ trt + (1|g)", PARAMS, "trt", nsim=600, key=1)
    exact = _exact_power(G)
    assert res.nsim == 600 and res.n_failed == 0
    assert abs(res.power - exact) < 4 * np.sqrt(exact * (1 - exact) / 600)
    assert res.lower < res.power < res.upper
    assert res.se == pytest.approx(np.sqrt(res.power * (1 - res.power) / 600))


@pytest.mark.slow
def test_power_curve_and_plot():
    pc = mixedjax.power_curve(_design(), "y ~ trt + (1|g)", PARAMS, test="trt", along="n_groups",
                              values=[6, 12], group="g", nsim=300, key=2)
    assert list(pc.table["size"]) == [6, 12]
    for _, row in pc.table.iterrows():
        exact = _exact_power(int(row["size"]))
        assert abs(row["power"] - exact) < 4 * np.sqrt(exact * (1 - exact) / 300)
    fig = pc.plot()
    assert len(fig.axes) == 1


def test_lrt_and_wald_power_exceed_alpha():
    for test in ("z:trt", "lrt:y ~ 1 + (1|g)"):
        res = mixedjax.power(_design(), "y ~ trt + (1|g)", PARAMS, test, nsim=200, key=3)
        assert 0.2 < res.power < 0.8


@pytest.mark.parametrize("kwargs, match", [
    ({"test": "nope"}, "unknown coefficient"),
    ({"test": "trt", "nsim": 0}, "nsim must be a positive integer"),
    ({"test": "trt", "alpha": 1.5}, "alpha must be"),
    ({"test": "lrt:y ~ trt + (1|g)"}, "not smaller"),
])
def test_bad_power_input(kwargs, match):
    kwargs = {"nsim": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        mixedjax.power(_design(), "y ~ trt + (1|g)", PARAMS, **kwargs)


def test_simulating_a_design_needs_parameters():
    with pytest.raises(ValueError, match="needs params"):
        mixedjax.simulate_design("y ~ trt + (1|g)", _design(), {"beta": [0, 1]}, nsim=2)
