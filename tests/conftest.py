"""Shared fixtures: reference values from R (tests/reference) and data loading."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The test run compiles hundreds of distinct programs; serializing them into JAX's
# persistent cache has aborted the process inside jaxlib 0.10 (executable.serialize)
# on a cold cache.  Tests, their subprocesses and notebook kernels compile in memory.
os.environ["MIXEDJAX_COMPILATION_CACHE"] = "0"

import mixedjax  # noqa: E402

REF = Path(__file__).parent / "reference"


def _load_json(name):
    with open(REF / name) as fh:
        return json.load(fh)


LME4 = _load_json("lme4_reference.json")
EXTRA = _load_json("lme4_extra_reference.json")


def _cases():
    with open(REF / "lme4_cases.tsv") as fh:
        return {row["case"]: row for row in csv.DictReader(fh, delimiter="\t")}


CASES = _cases()


def case_data(name: str, factors, na_rows=None) -> pd.DataFrame:
    """The data set as R saw it: listed columns as factors, optional NA rows (1-based)."""
    df = mixedjax.datasets.load(name)
    for col in factors:
        df[col] = df[col].astype("category")
    for col, rows in (na_rows or {}).items():
        df[col] = df[col].astype(float)
        df.loc[np.asarray(rows) - 1, col] = np.nan
    return df


def no_h_effect_data(seed: int, n: int = 400) -> pd.DataFrame:
    """y with a g effect (30 levels) and none of h (12 levels), crossed: the h
    variance is estimated at or near zero."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 30, n)
    h = rng.integers(0, 12, n)
    y = rng.standard_normal(30)[g] + rng.standard_normal(n)
    return pd.DataFrame({"y": y, "g": g.astype(str), "h": h.astype(str)})


def reference_fit(ref: dict):
    """Fit the model a reference entry describes (formula, data, REML flag, factors)."""
    df = case_data(ref["data"], ref["factors"], ref.get("na_rows"))
    return mixedjax.lmer(ref["formula"], df, reml=bool(ref["reml"]))


@pytest.fixture(scope="session")
def sleepstudy():
    return mixedjax.datasets.load("sleepstudy")


@pytest.fixture(scope="session")
def sleep_fit(sleepstudy):
    return mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
