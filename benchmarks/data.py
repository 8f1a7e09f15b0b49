"""Synthetic data sets with the shapes of two large crossed designs (deterministic seeds).

- ``insteval_like()``: students rating lecturers, the shape of lme4's InstEval
  (73,421 ratings, 2,972 students ``s`` crossed with 1,128 lecturers ``d``, lecturers
  nested in 14 departments ``dept``, a two-level ``service`` factor, ratings 1-5).
- ``movielens_like()``: users rating movies, the shape of MovieLens-1M (1,000,209
  ratings, 6,040 users crossed with 3,706 movies, every user with at least 20
  ratings, heavily skewed counts per user and per movie, ratings 1-5).

Counts per student/user follow a shifted log-normal and the popularity of
lecturers/movies a log-normal, calibrated to the published means, so the sparsity
of the students x lecturers (users x movies) cross-tabulation, which is what the
fitter's cost depends on, is close to the real data's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["insteval_like", "movielens_like"]


def _counts(rng, levels: int, total: int, minimum: int, sigma: float, cap: int) -> np.ndarray:
    """Integer counts per level, >= minimum, <= cap, summing to ``total``."""
    raw = rng.lognormal(0.0, sigma, levels)
    counts = minimum + np.floor(raw / raw.sum() * (total - minimum * levels)).astype(np.int64)
    counts = np.minimum(counts, cap)
    short = total - counts.sum()
    while short > 0:   # hand out the remainder to levels below the cap
        room = np.flatnonzero(counts < cap)
        pick = rng.choice(room, size=min(short, len(room)), replace=False)
        counts[pick] += 1
        short = total - counts.sum()
    return counts


def _choose_items(rng, counts: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each rater, ``counts[r]`` distinct items drawn with probability ~ weights
    (Gumbel top-k: exact weighted sampling without replacement)."""
    logw = np.log(weights)
    raters, items = [], []
    for r, c in enumerate(counts):
        keys = logw + rng.gumbel(size=len(weights))
        chosen = np.argpartition(-keys, c - 1)[:c]
        raters.append(np.full(c, r))
        items.append(chosen)
    return np.concatenate(raters), np.concatenate(items)


def _cover(rng, items: np.ndarray, n_items: int) -> None:
    """Give every item at least one rating (in place), as in the real data."""
    missing = np.setdiff1d(np.arange(n_items), items)
    if len(missing):
        items[rng.choice(len(items), size=len(missing), replace=False)] = missing


def insteval_like(seed: int = 20061) -> pd.DataFrame:
    """73,421 ratings by 2,972 students of 1,128 lecturers in 14 departments."""
    rng = np.random.default_rng(seed)
    n, n_s, n_d, n_dept = 73_421, 2_972, 1_128, 14
    counts = _counts(rng, n_s, n, minimum=1, sigma=0.75, cap=n_d)
    popularity = rng.lognormal(0.0, 1.0, n_d)
    s, d = _choose_items(rng, counts, popularity)
    _cover(rng, d, n_d)
    dept_of_d = rng.choice(n_dept, size=n_d, p=rng.dirichlet(np.full(n_dept, 4.0)))
    service_rate = rng.uniform(0.1, 0.8, n_d)     # some lecturers teach service courses more
    service = (rng.uniform(size=n) < service_rate[d]).astype(int)
    dept = dept_of_d[d]
    eta = (3.2 + rng.normal(0, 0.33, n_s)[s] + rng.normal(0, 0.52, n_d)[d]
           + rng.normal(0, 0.08, n_dept)[dept] - 0.07 * service)
    y = np.clip(np.rint(eta + rng.normal(0, 1.18, n)), 1, 5)
    return pd.DataFrame({
        "y": y, "s": pd.Categorical(s + 1), "d": pd.Categorical(d + 1),
        "dept": pd.Categorical(dept + 1), "service": pd.Categorical(service)})


def movielens_like(seed: int = 1_000_209) -> pd.DataFrame:
    """1,000,209 ratings by 6,040 users of 3,706 movies (each user >= 20 ratings)."""
    rng = np.random.default_rng(seed)
    n, n_u, n_m = 1_000_209, 6_040, 3_706
    counts = _counts(rng, n_u, n, minimum=20, sigma=1.0, cap=2_314)
    popularity = rng.lognormal(0.0, 1.4, n_m)
    user, movie = _choose_items(rng, counts, popularity)
    _cover(rng, movie, n_m)
    eta = 3.58 + rng.normal(0, 0.43, n_u)[user] + rng.normal(0, 0.52, n_m)[movie]
    y = np.clip(np.rint(eta + rng.normal(0, 0.87, n)), 1, 5)
    return pd.DataFrame({"y": y, "user": pd.Categorical(user + 1),
                         "movie": pd.Categorical(movie + 1)})
