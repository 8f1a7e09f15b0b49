"""Classic mixed-model data sets bundled with mixedjax (from R's lme4 and nlme).

``load(name)`` returns a DataFrame whose grouping and factor columns are pandas
categoricals (as they are R factors), so formulas give the same models as in R.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["load", "list"]

# Columns that are factors in R's copies of these data sets.
_FACTORS = {
    "cake": ["replicate", "recipe"],
    "dyestuff": ["Batch"],
    "dyestuff2": ["Batch"],
    "machines": ["Worker", "Machine"],
    "oats": ["B", "V", "N"],
    "orthodont": ["Subject", "Sex"],
    "ovary": ["Mare"],
    "pastes": ["batch", "cask", "sample"],
    "penicillin": ["plate", "sample"],
    "sleepstudy": ["Subject"],
    "tablets": ["tablet", "method"],
    "tablets_unbalanced": ["tablet", "method"],
}

_builtin_list = list


def list() -> _builtin_list:  # noqa: A001 - the public name mirrors R's data()
    """Names of the bundled data sets."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[:-4] for f in files if f.name.endswith(".csv"))


def load(name: str) -> pd.DataFrame:
    """Load a bundled data set by name (case-insensitive), e.g. ``load("sleepstudy")``."""
    key = name.lower()
    names = list()
    if key not in names:
        raise ValueError(f"unknown data set {name!r}; available: {names}")
    with resources.files(__name__).joinpath(f"{key}.csv").open("r") as fh:
        df = pd.read_csv(fh)
    for col in _FACTORS.get(key, []):
        df[col] = df[col].astype("category")
    df.attrs["name"] = key
    return df
