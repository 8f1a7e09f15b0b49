"""The moment-estimate starting theta (mixedjax.start)."""

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import crossprod
from mixedjax.start import moment_start, moment_sums, moment_theta
from conftest import no_h_effect_data


@pytest.mark.parametrize("name, formula", [
    ("Dyestuff", "Yield ~ 1 + (1|Batch)"),
    ("Penicillin", "diameter ~ 1 + (1|plate) + (1|sample)"),
    ("Pastes", "strength ~ 1 + (1|batch/cask)"),
])
def test_balanced_designs_start_at_the_reml_estimate(name, formula):
    """With balanced data and positive estimates, the ANOVA estimates are the REML
    estimates (Searle, Casella & McCulloch, ch. 4), so the fit starts at its optimum."""
    m = mixedjax.LMM.from_formula(formula, mixedjax.datasets.load(name))
    start = m.start_theta()
    fit = m.fit()
    np.testing.assert_allclose(start, fit.theta, rtol=1e-6)
    np.testing.assert_allclose(fit.optinfo["theta0"], start)
    assert fit.optinfo["fun_evals"] <= 5


def _crossed(seed, n=3000, ng=300, nh=120, sd=(0.8, 0.5), weights=False):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, ng, n)
    h = (rng.pareto(1.5, n) * 10).astype(int) % nh            # skewed counts
    x = rng.standard_normal(n)
    y = (1.0 + 0.3 * x + sd[0] * rng.standard_normal(ng)[g] + sd[1] * rng.standard_normal(nh)[h]
         + rng.standard_normal(n))
    data = pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "h": h.astype(str)})
    if weights:
        data["w"] = rng.uniform(0.5, 2.0, n)
    return data


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("weights", [False, True])
def test_unbalanced_crossed_start_is_near_the_optimum(reml, weights):
    data = _crossed(3, weights=weights)
    m = mixedjax.LMM.from_formula("y ~ x + (1|g) + (1|h)", data, reml=reml,
                                  weights="w" if weights else None)
    start = m.start_theta()
    fit = m.fit()
    from_one = m.fit(theta0=m.initial_theta())
    assert fit.converged and from_one.converged
    assert fit.objective == pytest.approx(from_one.objective, rel=1e-12)
    np.testing.assert_allclose(fit.theta, from_one.theta, rtol=1e-5)
    # Within 25% of the optimum on the theta scale, and cheaper than lme4's start.
    np.testing.assert_allclose(start, fit.theta, rtol=0.25)
    assert fit.optinfo["fun_evals"] < from_one.optinfo["fun_evals"]


@pytest.mark.parametrize("optimizer", ["auto", "bfgs"])
def test_variance_at_zero_starts_at_the_floor_and_reaches_the_boundary(optimizer):
    m = mixedjax.LMM.from_formula("y ~ 1 + (1 | g) + (1 | h)", no_h_effect_data(7))
    start = m.start_theta()
    assert start[1] == pytest.approx(0.05)                        # the floor
    fit = m.fit(optimizer=optimizer)
    ref = m.fit(theta0=m.initial_theta(), optimizer=optimizer)
    assert fit.converged and fit.singular
    assert fit.objective == pytest.approx(ref.objective, rel=1e-10)
    assert abs(fit.theta[1]) < 1e-4


def test_vector_valued_terms_start_at_lme4s_value():
    m = mixedjax.LMM.from_formula("Reaction ~ Days + (Days | Subject)",
                                  mixedjax.datasets.load("sleepstudy"))
    assert moment_start(m.design.terms, np.zeros((m.design.n, 2)), np.ones(m.design.n),
                        np.ones(m.design.n)) is None
    np.testing.assert_array_equal(m.start_theta(), m.initial_theta())


def test_moment_equations_read_only_the_sums():
    """moment_start is moment_theta of the rows' moment_sums; weights c w give the
    estimate for w times c^-1/2 (theta is relative to sigma)."""
    data = _crossed(5, weights=True)
    m = mixedjax.LMM.from_formula("y ~ x + (1|g) + (1|h)", data, weights="w")
    heavy = mixedjax.LMM.from_formula("y ~ x + (1|g) + (1|h)", data.assign(w=4.0 * data["w"]),
                                      weights="w")
    sums = moment_sums(m.design.terms, *_basis_and_residual(m))
    assert sorted(sums.cross) == [(0, 1)]
    np.testing.assert_allclose(moment_theta(sums), m.start_theta(), rtol=1e-12)
    np.testing.assert_allclose(heavy.start_theta(), 0.5 * m.start_theta(), rtol=1e-10)


def test_moment_equations_in_chunks_of_entries(monkeypatch):
    """The cross terms are summed over the sparse entries in chunks (millions of
    entries in a large crossed design): chunks of 7 give the estimate of one chunk."""
    from mixedjax import routing

    data = _crossed(5, weights=True)
    m = mixedjax.LMM.from_formula("y ~ x + (1|g) + (1|h)", data, weights="w")
    sums = moment_sums(m.design.terms, *_basis_and_residual(m))
    whole = moment_theta(sums)
    monkeypatch.setattr(routing, "ENTRY_CHUNK", 7)
    assert len(sums.cross[(0, 1)][2]) > 7
    np.testing.assert_allclose(moment_theta(sums), whole, rtol=1e-13)


def _basis_and_residual(m):
    """The weighted stable basis, residual and sqrt(weights) of a model's rows."""
    sw = np.sqrt(m.design.weights)
    q, _ = crossprod.basis(m.design.X * sw[:, None])
    _, r = crossprod.project(q, m.design.y * sw)
    return q, r, sw
