"""Random designs against lme4: mixedjax's optimum is lme4's or better.

Thirty designs drawn by tests/reference/make_fuzz_reference.R (one to three
grouping factors, nested or crossed, intercepts and correlated or uncorrelated
slopes, some weighted, REML and ML), stored in fuzz_designs.csv with lme4's fits in
fuzz_reference.json.  The criterion at lme4's theta is lme4's objective (the one
definition), and the fit's objective is no higher than lme4's (1e-6 relative).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedjax

REF = Path(__file__).parent / "reference"
FUZZ = json.loads((REF / "fuzz_reference.json").read_text())["designs"]


@pytest.fixture(scope="module")
def stacked():
    return pd.read_csv(REF / "fuzz_designs.csv")


def _model(case, stacked):
    d = stacked[stacked.design == case["design"]].reset_index(drop=True)
    d = d.dropna(axis=1, how="all")
    weights = d["w"].to_numpy() if case["weighted"] else None
    return mixedjax.LMM.from_formula(case["formula"], d, reml=case["reml"], weights=weights)


@pytest.mark.parametrize("case", FUZZ, ids=[f"design{c['design']}" for c in FUZZ])
def test_fit_reaches_lme4s_optimum(case, stacked):
    model = _model(case, stacked)
    ref = case["objective"]
    theta = np.atleast_1d(np.asarray(case["theta"], np.float64))
    assert model.eager.value(theta) == pytest.approx(ref, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = model.fit()
    assert np.isfinite(m.objective)
    assert m.objective <= ref + 1e-6 * abs(ref)
