"""Properties of every fit, on random designs (hypothesis).

Designs: one to three grouping factors, nested or crossed, each with a random
intercept, a correlated random slope or an uncorrelated one (``||``); missing values
in the response or the covariate; no weights, uniform weights or random ones;
variance components from zero (singular fits) to large.  Properties:

* a fit never returns NaN or inf silently: every estimate is finite, and a fit that
  did not converge says so with a ConvergenceWarning;
* every error is a ValueError or TypeError with a message;
* the objective a fit reports is the model's criterion at its theta
  (``model.objective(m.theta)``, the JAX definition, to 1e-12 relative);
* no theta beats the fit: the criterion at lme4's start (theta = 1) and at random
  thetas is not below the fit's objective (less a round-off allowance).

The default run is derandomized with a bounded budget (profile ``mixedjax-default``:
100 designs, about 15 s on two cores); set ``MIXEDJAX_HYPOTHESIS_PROFILE=mixedjax-thorough`` for a
randomized run of many more examples.  (Invariances under shifts, scales, row order
and level labels, and batched against single fits, are in test_invariance.py and
test_objective.py.)
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mixedjax
from mixedjax.fitting import ConvergenceWarning
from mixedjax.start import theta_scale

settings.register_profile("mixedjax-default", derandomize=True, max_examples=100,
                          deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("mixedjax-thorough", max_examples=3000, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get("MIXEDJAX_HYPOTHESIS_PROFILE",
                                              "mixedjax-default"))


@st.composite
def designs(draw):
    """(formula, data, weights) of a random design (module docstring)."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    nfac = draw(st.integers(1, 3))
    nested = draw(st.booleans())
    kinds = [draw(st.sampled_from(["1", "x", "x||"])) for _ in range(nfac)]
    sds = [draw(st.sampled_from([0.0, 0.3, 1.0, 4.0])) for _ in range(nfac)]
    n = draw(st.integers(12, 80))
    na = draw(st.sampled_from(["none", "y", "x"]))
    wkind = draw(st.sampled_from(["none", "none", "uniform", "random"]))
    xshift = draw(st.sampled_from([0.0, 0.0, 5.0]))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) + xshift
    codes = []
    for f in range(nfac):
        m = int(rng.integers(2, 7))
        if nested and f:
            codes.append(codes[-1] * m + rng.integers(0, m, size=n))
        else:
            codes.append(rng.integers(0, m, size=n))
    y = 1.0 + 0.5 * x + rng.normal(size=n)
    data = {"x": x}
    terms = []
    for f, (c, kind, sd) in enumerate(zip(codes, kinds, sds)):
        _, c = np.unique(c, return_inverse=True)
        nl = c.max() + 1
        y = y + sd * rng.normal(size=nl)[c]
        if kind != "1":
            y = y + 0.5 * sd * rng.normal(size=nl)[c] * x
        name = f"g{f}"
        data[name] = np.array([f"L{v}" for v in c])
        terms.append({"1": f"(1 | {name})", "x": f"(x | {name})",
                      "x||": f"(x || {name})"}[kind])
    data["y"] = y
    df = pd.DataFrame(data)
    if na != "none":
        k = int(rng.integers(1, max(2, n // 10) + 1))
        df.loc[rng.choice(n, size=k, replace=False), na] = np.nan
    weights = {"none": None, "uniform": np.full(n, draw(st.sampled_from([1e-6, 1e4]))),
               "random": rng.lognormal(size=n)}[wkind]
    return "y ~ x + " + " + ".join(terms), df, weights


def _fit(formula, data, weights):
    """(model, fit, warnings) or (None, the error, []) for a ValueError/TypeError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = mixedjax.LMM.from_formula(formula, data, weights=weights)
            fit = model.fit()
        except (ValueError, TypeError) as err:
            return None, err, []
    return model, fit, caught


def _check_fit(model, fit, caught):
    if isinstance(fit, Exception):
        assert str(fit).strip(), f"{type(fit).__name__} without a message"
        return False
    values = [fit.objective, fit.sigma, *np.ravel(fit.theta), *np.ravel(fit.fixef),
              *np.ravel(fit.stderr)]
    assert np.all(np.isfinite(values)), values
    if fit.converged:
        assert "iteration limit" not in fit.optinfo["message"]
    else:
        assert any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return True


@PROFILE
@given(designs())
def test_fit_is_finite_or_a_clear_error(design):
    """Every fit is finite (or says it did not converge), every error is clear, and
    neither lme4's start nor random thetas beat the fit's objective."""
    formula, data, weights = design
    model, fit, caught = _fit(formula, data, weights)
    if not _check_fit(model, fit, caught) or not fit.converged:
        return
    f = fit.objective
    tol = 1e-6 * max(1.0, abs(f))
    size = theta_scale(model.design.weights)
    assert model.eager.value(model.initial_theta() * size) >= f - tol
    rng = np.random.default_rng(len(data))
    for _ in range(5):
        theta = fit.theta + rng.normal(scale=0.5 * size, size=fit.theta.shape)
        assert model.eager.value(theta) >= f - tol
    assert model.eager.value(fit.theta) == pytest.approx(f, rel=1e-12, abs=1e-12)


@settings(parent=PROFILE, max_examples=max(4, PROFILE.max_examples // 16))
@given(designs())
def test_reported_objective_is_the_jax_criterion(design):
    """``model.objective(m.theta)`` (the one JAX definition) equals ``m.objective``."""
    formula, data, weights = design
    model, fit, caught = _fit(formula, data, weights)
    if not _check_fit(model, fit, caught):
        return
    value = float(model.objective(fit.theta))
    assert value == pytest.approx(fit.objective, rel=1e-12, abs=1e-12)
