"""mixedjax.plots: each function draws the expected panels and points (Agg backend)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import mixedjax  # noqa: E402
from mixedjax import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def penicillin_fit():
    return mixedjax.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)",
                         mixedjax.datasets.load("penicillin"))


@pytest.fixture(scope="module")
def dyestuff_fit():
    return mixedjax.lmer("Yield ~ 1 + (1 | Batch)", mixedjax.datasets.load("dyestuff"))


def _points(ax):
    """x, y of the markers of the first errorbar/line with markers in ``ax``."""
    for line in ax.get_lines():
        if line.get_marker() not in (None, "None", ""):
            return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    raise AssertionError("no markers in the panel")


def test_caterpillar_one_panel_per_column_sorted(sleep_fit):
    fig = plots.caterpillar(sleep_fit)
    assert isinstance(fig, matplotlib.figure.Figure)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["Subject: (Intercept)", "Subject: Days"]
    x0, y0 = _points(axes[0])
    re = sleep_fit.ranef["Subject"]
    assert len(x0) == 18
    np.testing.assert_allclose(x0, np.sort(re["(Intercept)"].to_numpy()))
    # the second panel keeps the order of the first (as lme4's dotplot)
    x1, _ = _points(axes[1])
    order = np.argsort(re["(Intercept)"].to_numpy())
    np.testing.assert_allclose(x1, re["Days"].to_numpy()[order])
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels == [str(v) for v in re.index.to_numpy()[order]]


def test_caterpillar_interval_half_width_is_196_se(dyestuff_fit):
    fig = plots.caterpillar(dyestuff_fit)
    (ax,) = fig.get_axes()
    seg = ax.collections[0].get_segments()       # the horizontal error bars
    widths = np.array([s[1][0] - s[0][0] for s in seg])
    se = dyestuff_fit.ranef_se["Batch"]["(Intercept)"].to_numpy()
    np.testing.assert_allclose(np.sort(widths), np.sort(2 * 1.959963984540054 * se), rtol=1e-9)


def test_caterpillar_several_groups_and_one_group(penicillin_fit):
    fig = plots.caterpillar(penicillin_fit)
    assert len(fig.get_axes()) == 2
    fig = plots.caterpillar(penicillin_fit, group="sample")
    (ax,) = fig.get_axes()
    assert len(_points(ax)[0]) == 6
    with pytest.raises(ValueError, match="nope"):
        plots.caterpillar(penicillin_fit, group="nope")


def test_residuals_vs_fitted(sleep_fit):
    fig = plots.residuals_vs_fitted(sleep_fit)
    (ax,) = fig.get_axes()
    offsets = ax.collections[0].get_offsets()
    assert offsets.shape == (180, 2)
    np.testing.assert_allclose(offsets[:, 0], sleep_fit.fitted.to_numpy())
    np.testing.assert_allclose(offsets[:, 1], sleep_fit.residuals.to_numpy())
    fig = plots.residuals_vs_fitted(sleep_fit, scaled=True)
    offsets = fig.get_axes()[0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 1], sleep_fit.residuals.to_numpy() / sleep_fit.sigma)


def test_qq_overall(sleep_fit):
    fig = plots.qq(sleep_fit)
    (ax,) = fig.get_axes()
    pts = ax.collections[0].get_offsets()
    assert pts.shape == (180, 2)
    np.testing.assert_allclose(pts[:, 1], np.sort(sleep_fit.residuals.to_numpy() /
                                                  sleep_fit.sigma))
    # theoretical quantiles are R's qnorm(ppoints(180)): symmetric and increasing
    assert np.all(np.diff(pts[:, 0]) > 0)
    np.testing.assert_allclose(pts[:, 0], -pts[::-1, 0], atol=1e-12)


def test_qq_by_group(sleep_fit):
    fig = plots.qq(sleep_fit, by="Subject")
    axes = fig.get_axes()
    assert len(axes) == 18
    assert all(ax.collections[0].get_offsets().shape == (10, 2) for ax in axes)
    with pytest.raises(ValueError, match="not a column"):
        plots.qq(sleep_fit, by="nope")
    with pytest.raises(ValueError, match="max_panels"):
        plots.qq(sleep_fit, by="Subject", max_panels=5)


def test_profile_zeta(dyestuff_fit):
    fig = plots.profile_zeta(dyestuff_fit, n=6, levels=(0.8, 0.95))
    axes = fig.get_axes()
    names = ["sd_(Intercept)|Batch", "sigma", "(Intercept)"]
    assert [ax.get_title() for ax in axes] == names
    ci = dyestuff_fit.confint(method="profile", level=0.95)
    for ax, name in zip(axes, names):
        x, z = _points(ax)
        assert len(x) == 6
        assert np.all(np.diff(z) > 0)            # zeta increases with the parameter
        assert z[0] == pytest.approx(-1.959963984540054, abs=1e-6)
        assert z[-1] == pytest.approx(1.959963984540054, abs=1e-6)
        assert x[0] == pytest.approx(ci.loc[name, "2.5 %"], rel=1e-6)
        assert x[-1] == pytest.approx(ci.loc[name, "97.5 %"], rel=1e-6)


def test_power_curve_from_dataframe():
    df = pd.DataFrame({"size": [8, 4, 6], "power": [0.9, 0.3, 0.6],
                       "lower": [0.85, 0.25, 0.55], "upper": [0.95, 0.35, 0.65]})
    fig = plots.power_curve(df)
    (ax,) = fig.get_axes()
    x, y = _points(ax)
    np.testing.assert_allclose(x, [4, 6, 8])
    np.testing.assert_allclose(y, [0.3, 0.6, 0.9])
    fig = plots.power_curve(df[["size", "power"]], target=None)
    assert len(_points(fig.get_axes()[0])[0]) == 3
    with pytest.raises(ValueError, match="power"):
        plots.power_curve(pd.DataFrame({"size": [1]}))
    with pytest.raises(TypeError):
        plots.power_curve(object())


def test_caterpillar_many_levels_are_not_labelled():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(80), 3)
    df = pd.DataFrame({"g": pd.Categorical(g), "y": rng.normal(size=80)[g] + rng.normal(size=240)})
    m = mixedjax.lmer("y ~ 1 + (1 | g)", df)
    (ax,) = plots.caterpillar(m).get_axes()
    assert len(_points(ax)[0]) == 80
    assert ax.get_ylabel() == "rank"
    assert len(ax.get_yticks()) < 20            # numeric rank ticks, not 80 level names


def test_power_curve_from_a_power_curve_result():
    from mixedjax.powersim import PowerCurve
    table = pd.DataFrame({"size": [2, 4, 6], "power": [0.15, 0.3, 0.45], "se": [0.02] * 3,
                          "lower": [0.1, 0.24, 0.38], "upper": [0.2, 0.36, 0.52],
                          "nobs": [40, 80, 120], "n_failed": [0, 0, 0]})
    pc = PowerCurve(table=table, along="n_groups", test="F test of 'colour'", alpha=0.05)
    (ax,) = plots.power_curve(pc).get_axes()
    x, y = _points(ax)
    np.testing.assert_allclose(x, [2, 4, 6])
    np.testing.assert_allclose(y, [0.15, 0.3, 0.45])
