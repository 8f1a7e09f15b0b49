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

Smaller designs for ``benchmarks/designs.py`` (one generator per model family; the
responses come from the family's model with nonzero variances, modest correlations
and residual sd 1, so no fit is singular by design; grouping columns are strings):

- ``vcomp_like()``: 100 groups of 16 rows, random slopes of z1, z2 by group and two
  crossed random intercepts v1 (4 per group) and v2 (8 per group).
- ``nested_like()``: 1,000 a x 10 b x 4 rows, random intercepts for a and a:b.
- ``nested_slopes_like()``: 200 a x 10 b x 4 rows, intercept and slope of x by a,
  intercept by a:b.
- ``three_level_like()``: 50 a x 5 b x 4 c x 6 rows, intercepts for a, a:b, a:b:c.
- ``maximal_like()``: 56 subjects x 32 items fully crossed, a 2x2x2 condition
  (c1, c2, c3 coded -0.5/+0.5) with intercepts and all slopes by subject and item.
- ``crossed_slopes_like()``: 400 subjects x 100 items, each subject sees a random
  half of the items; intercept and slope of x by subject and by item.
- ``longitudinal_like()``: 20,000 ids x 5 time points, intercept and slope of t by id.
- ``growth_like()``: 100 schools x 40 students x 5 time points, intercept and slope
  of t by school and by student within school.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["insteval_like", "movielens_like", "vcomp_like", "nested_like",
           "nested_slopes_like", "three_level_like", "maximal_like", "crossed_slopes_like",
           "longitudinal_like", "growth_like"]


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


def _effects(rng, levels: int, sds, corr: float = 0.0) -> np.ndarray:
    """``levels`` x len(sds) normal random effects with these sds and a common correlation."""
    sds = np.asarray(sds, dtype=float)
    r = np.full((len(sds), len(sds)), corr)
    np.fill_diagonal(r, 1.0)
    return rng.multivariate_normal(np.zeros(len(sds)), r * np.outer(sds, sds), size=levels)


def _labels(prefix: str, codes) -> np.ndarray:
    return np.char.add(prefix, np.asarray(codes).astype(str))


def vcomp_like(seed: int = 1600) -> pd.DataFrame:
    """1,600 rows: y ~ x1 + x2 + (0 + z1 + z2 | groups) + (1 | v1) + (1 | v2)."""
    rng = np.random.default_rng(seed)
    n_g, per = 100, 16
    g = np.repeat(np.arange(n_g), per)
    r = np.tile(np.arange(per), n_g)
    v1, v2 = g * 4 + r // 4, g * 8 + r % 8           # crossed within each group
    x1, x2, z1, z2 = rng.normal(size=(4, n_g * per))
    slopes = _effects(rng, n_g, [0.8, 0.6], 0.3)
    y = (1.0 + 0.5 * x1 - 0.3 * x2 + slopes[g, 0] * z1 + slopes[g, 1] * z2
         + rng.normal(0, 0.8, 4 * n_g)[v1] + rng.normal(0, 0.6, 8 * n_g)[v2]
         + rng.normal(0, 1.0, n_g * per))
    gl = _labels("g", g)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "z1": z1, "z2": z2, "groups": gl,
                         "v1": np.char.add(gl, _labels(".", r // 4)),
                         "v2": np.char.add(gl, _labels(".", r % 8))})


def nested_like(seed: int = 40000) -> pd.DataFrame:
    """40,000 rows: y ~ x + (1 | a/b), 1,000 a x 10 b (labels b1..b10 repeat across a)."""
    rng = np.random.default_rng(seed)
    n_a, n_b, per = 1_000, 10, 4
    ab = np.repeat(np.arange(n_a * n_b), per)
    a, b = ab // n_b, ab % n_b
    x = rng.normal(size=len(ab))
    y = (2.0 + 0.5 * x + rng.normal(0, 1.0, n_a)[a] + rng.normal(0, 0.6, n_a * n_b)[ab]
         + rng.normal(0, 1.0, len(ab)))
    return pd.DataFrame({"y": y, "x": x, "a": _labels("a", a), "b": _labels("b", b)})


def nested_slopes_like(seed: int = 8000) -> pd.DataFrame:
    """8,000 rows: y ~ x + (1 + x | a) + (1 | a:b), 200 a x 10 b x 4 rows."""
    rng = np.random.default_rng(seed)
    n_a, n_b, per = 200, 10, 4
    ab = np.repeat(np.arange(n_a * n_b), per)
    a, b = ab // n_b, ab % n_b
    x = rng.normal(size=len(ab))
    u = _effects(rng, n_a, [1.0, 0.5], 0.3)
    y = (2.0 + 0.5 * x + u[a, 0] + u[a, 1] * x + rng.normal(0, 0.6, n_a * n_b)[ab]
         + rng.normal(0, 1.0, len(ab)))
    return pd.DataFrame({"y": y, "x": x, "a": _labels("a", a), "b": _labels("b", b)})


def three_level_like(seed: int = 6000) -> pd.DataFrame:
    """6,000 rows: y ~ x + (1 | a/b/c), 50 a x 5 b x 4 c x 6 rows."""
    rng = np.random.default_rng(seed)
    n_a, n_b, n_c, per = 50, 5, 4, 6
    abc = np.repeat(np.arange(n_a * n_b * n_c), per)
    ab, c = abc // n_c, abc % n_c
    a, b = ab // n_b, ab % n_b
    x = rng.normal(size=len(abc))
    y = (2.0 + 0.5 * x + rng.normal(0, 1.0, n_a)[a] + rng.normal(0, 0.7, n_a * n_b)[ab]
         + rng.normal(0, 0.5, n_a * n_b * n_c)[abc] + rng.normal(0, 1.0, len(abc)))
    return pd.DataFrame({"y": y, "x": x, "a": _labels("a", a), "b": _labels("b", b),
                         "c": _labels("c", c)})


def maximal_like(seed: int = 1792) -> pd.DataFrame:
    """1,792 rows: 56 subjects x 32 items, condition (subj + item) % 8 in bits c1, c2, c3;
    y ~ c1 + c2 + c3 + (1 + c1 + c2 + c3 | subj) + (1 + c1 + c2 + c3 | item)."""
    rng = np.random.default_rng(seed)
    n_s, n_i = 56, 32
    subj = np.repeat(np.arange(n_s), n_i)
    item = np.tile(np.arange(n_i), n_s)
    cond = (subj + item) % 8
    X = np.column_stack([np.ones(len(cond))] + [((cond >> k) & 1) - 0.5 for k in range(3)])
    us = _effects(rng, n_s, [1.0, 0.7, 0.6, 0.5], 0.2)
    ui = _effects(rng, n_i, [0.8, 0.6, 0.5, 0.4], 0.2)
    y = X @ np.array([3.0, 0.4, -0.3, 0.2]) + (X * (us[subj] + ui[item])).sum(1) \
        + rng.normal(0, 1.0, len(cond))
    return pd.DataFrame({"y": y, "c1": X[:, 1], "c2": X[:, 2], "c3": X[:, 3],
                         "subj": _labels("s", subj), "item": _labels("i", item)})


def crossed_slopes_like(seed: int = 20000) -> pd.DataFrame:
    """20,000 rows: y ~ x + (1 + x | subj) + (1 + x | item); 400 subjects, 100 items,
    each subject sees a random half of the items."""
    rng = np.random.default_rng(seed)
    n_s, n_i = 400, 100
    item = np.concatenate([np.sort(rng.permutation(n_i)[:n_i // 2]) for _ in range(n_s)])
    subj = np.repeat(np.arange(n_s), n_i // 2)
    x = rng.normal(size=len(subj))
    us = _effects(rng, n_s, [1.0, 0.5], 0.3)
    ui = _effects(rng, n_i, [0.8, 0.4], -0.2)
    y = (2.0 + 0.5 * x + us[subj, 0] + ui[item, 0] + (us[subj, 1] + ui[item, 1]) * x
         + rng.normal(0, 1.0, len(subj)))
    return pd.DataFrame({"y": y, "x": x, "subj": _labels("s", subj),
                         "item": _labels("i", item)})


def longitudinal_like(seed: int = 100000) -> pd.DataFrame:
    """100,000 rows: y ~ t + (1 + t | id), 20,000 ids at t = 0..4."""
    rng = np.random.default_rng(seed)
    n_id, n_t = 20_000, 5
    idx = np.repeat(np.arange(n_id), n_t)
    t = np.tile(np.arange(n_t, dtype=float), n_id)
    u = _effects(rng, n_id, [1.0, 0.3], 0.2)
    y = 2.0 + 0.5 * t + u[idx, 0] + u[idx, 1] * t + rng.normal(0, 1.0, len(t))
    return pd.DataFrame({"y": y, "t": t, "id": _labels("id", idx)})


def growth_like(seed: int = 4000) -> pd.DataFrame:
    """20,000 rows: y ~ t + (1 + t | school) + (1 + t | school:student), 100 schools x
    40 students (labels st1..st40 repeat across schools) x t = 0..4."""
    rng = np.random.default_rng(seed)
    n_sc, n_st, n_t = 100, 40, 5
    st = np.repeat(np.arange(n_sc * n_st), n_t)      # student within school, unique
    sc = st // n_st
    t = np.tile(np.arange(n_t, dtype=float), n_sc * n_st)
    us = _effects(rng, n_sc, [0.6, 0.2], 0.3)
    ust = _effects(rng, n_sc * n_st, [1.0, 0.3], 0.2)
    y = (2.0 + 0.5 * t + us[sc, 0] + us[sc, 1] * t + ust[st, 0] + ust[st, 1] * t
         + rng.normal(0, 1.0, len(t)))
    return pd.DataFrame({"y": y, "t": t, "school": _labels("sc", sc),
                         "student": _labels("st", st % n_st)})
