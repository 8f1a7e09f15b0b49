"""Fits from partitioned data (mixedjax.outofcore): the per-partition sums equal the
in-memory cross-products whatever the split, a fit through a real Dask cluster
(worker processes, pickling, TCP) equals the in-memory fit, and bad input gets a
named error."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax import outofcore, routing
from mixedjax.model import LMM

ARRAYS = ("d0", "b0", "ent_a", "ent_pos", "ent_v", "pair_i", "pair_j", "amm", "abm", "abb",
          "n", "p", "ldw", "logdet_x", "rx", "beta0")


def _data(n=1200, seed=0, offset=1e4):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 40, n)
    h = rng.integers(0, 12, n)
    site = rng.integers(0, 5, n)
    x = rng.normal(size=n)
    y = (offset + 0.5 * x + rng.normal(size=40)[g] * (1 + 0.3 * x) + rng.normal(size=12)[h]
         + rng.normal(size=n))
    df = pd.DataFrame({"y": y, "x": x, "g": g, "h": [f"h{i:02d}" for i in h],
                       "site": pd.Categorical([f"s{i}" for i in site]),
                       # categories out of text order, one of them unused
                       "site2": pd.Categorical([f"s{i}" for i in site],
                                               categories=["s3", "s9", "s0", "s4", "s1", "s2"]),
                       "f": rng.choice(["lo", "mid", "hi"], n), "w": rng.uniform(0.5, 2.0, n),
                       "off": rng.normal(size=n)})
    df.loc[[3, 50, 700], "x"] = np.nan
    df.loc[[10, 900], "h"] = None
    return df


def _splits(df, seed, n_parts=6):
    """Random row splits, with an empty partition and partitions sorted by group (so
    that some miss levels)."""
    rng = np.random.default_rng(seed)
    df = df.sort_values("g", kind="stable") if seed % 2 else df.iloc[rng.permutation(len(df))]
    cuts = np.sort(rng.choice(np.arange(1, len(df)), n_parts - 1, replace=False))
    parts = [df.iloc[a:b] for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(df)])]
    return parts[:2] + [df.iloc[0:0]] + parts[2:]


CASES = [
    ("y ~ x + f + (1 | g) + (1 | h)", {}),
    ("y ~ x + site + (x | g) + (1 | h)", {"weights": "w", "offset": "off"}),
    ("y ~ x * f + (1 | g) + (1 | g:h) + (1 | site)", {}),
    ("y ~ 0 + f + (1 | h) + (x || g)", {"weights": "w"}),
    ("y ~ x + (1 | site2/g) + (1 | h:site2)", {}),
]


def _close(a, b, tol=1e-12):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    assert np.max(np.abs(a - b), initial=0.0) <= tol * scale


@pytest.mark.parametrize("formula,kw", CASES)
@pytest.mark.parametrize("seed", [1, 2])
def test_blocks_do_not_depend_on_the_split(formula, kw, seed):
    df = _data(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = LMM.from_formula(formula, df, **kw)
        part = outofcore.partitioned_model(formula, _splits(df, seed), **kw)
    assert part.structure == mem.structure
    for t_mem, t_part in zip(mem.design.terms, part.design.terms):
        assert t_part.levels == t_mem.levels and t_part.cnames == t_mem.cnames
    assert part.design.xnames == mem.design.xnames
    assert part.design.n == mem.design.n and part.design.n_dropped == mem.design.n_dropped
    for name in ARRAYS:
        _close(getattr(part.blocks, name), getattr(mem.blocks, name))
    assert np.allclose(part.start_theta(), mem.start_theta(), rtol=1e-10, atol=1e-12)


def test_dense_coupling_and_aliasing(monkeypatch):
    monkeypatch.setattr(routing, "PAIR_LIMIT", 0)
    df = _data(seed=3)
    df["x2"] = 2.0 * df["x"] - 1.0                      # aliased with x and the intercept
    formula = "y ~ x + x2 + (1 | g) + (1 | h)"
    with pytest.warns(UserWarning, match="x2"):
        mem = LMM.from_formula(formula, df)
    with pytest.warns(UserWarning, match="x2"):
        part = outofcore.partitioned_model(formula, _splits(df, 3))
    assert part.structure == mem.structure
    assert part.structure.dense_coupling or not part.structure.n_cl
    assert part.design.aliased == ["x2"]
    for name in ARRAYS:
        _close(getattr(part.blocks, name), getattr(mem.blocks, name))


def test_fit_from_pandas_partitions_equals_memory():
    df = _data(seed=4)
    formula = "y ~ x + f + (x | g) + (1 | h)"
    mem = mixedjax.lmer(formula, df, reml=False)
    part = outofcore.lmer(formula, _splits(df, 4), reml=False)
    assert abs(part.objective - mem.objective) <= 1e-10 * abs(mem.objective)
    _close(part.fixef, mem.fixef, 1e-8)
    _close(part.theta, mem.theta, 1e-8)
    assert part.nobs == mem.nobs and part.n_dropped == mem.n_dropped == 5
    fitted = part.fitted.sort_index()
    assert fitted.index.equals(mem.fitted.sort_index().index)
    _close(fitted, mem.fitted.sort_index(), 1e-8)
    new = df.iloc[:20].dropna()
    _close(part.predict(new), mem.predict(new), 1e-8)


def test_mixedjax_lmer_fits_a_dask_frame_out_of_core():
    dd = pytest.importorskip("dask.dataframe")
    df = _data(seed=6)
    formula = "y ~ x + f + (1 | g) + (1 | h)"
    mem = mixedjax.lmer(formula, df, weights="w")
    fit = mixedjax.lmer(formula, dd.from_pandas(df, npartitions=3), weights="w")
    assert isinstance(fit, outofcore.PartitionedResult)
    assert abs(fit.objective - mem.objective) <= 1e-10 * abs(mem.objective)
    _close(fit.fixef, mem.fixef, 1e-8)
    _close(fit.theta, mem.theta, 1e-8)
    assert fit.nobs == mem.nobs and fit.n_dropped == mem.n_dropped


def test_likelihood_ratio_test_of_partitioned_fits_equals_memory(tmp_path):
    """anova() refits by ML from the cross-products (no rows needed) and checks
    nesting by names; a saved partitioned fit prints its summary without the
    residual quantiles, which need the partitions."""
    df = _data(seed=6)
    parts = _splits(df, 6)
    big, small = "y ~ x + f + (x | g)", "y ~ x + (1 | g)"
    mem = mixedjax.anova(mixedjax.lmer(small, df), mixedjax.lmer(big, df))
    part = mixedjax.anova(outofcore.lmer(small, parts), outofcore.lmer(big, parts))
    pd.testing.assert_frame_equal(part.table, mem.table, rtol=1e-7)
    with pytest.raises(ValueError, match="not nested: the fixed effects"):
        mixedjax.anova(outofcore.lmer("y ~ f + x + (1 | g)", parts),
                       outofcore.lmer("y ~ x + (x | g)", parts))
    fit = outofcore.lmer(big, parts)
    assert "Scaled residuals:" in str(fit.summary())
    fit.save(tmp_path / "fit.mjx")
    text = str(mixedjax.load(tmp_path / "fit.mjx").summary())
    assert "not available: the fit's rows are not attached" in text
    assert f"{fit.objective:.1f}" in text


@pytest.mark.parametrize("call", ["simulate", "bootstrap", "influence", "kenward_roger", "r2",
                                  "icc", "fit_fn", "pb_test", "refit_many"])
def test_what_needs_the_rows_says_so(call):
    parts = _splits(_data(seed=7), 7)
    fit = outofcore.lmer("y ~ x + (1 | g)", parts)
    calls = {
        "simulate": lambda: fit.simulate(2),
        "bootstrap": lambda: fit.bootstrap(4, key=1),
        "influence": lambda: fit.influence(),
        "kenward_roger": lambda: fit.anova(ddf="Kenward-Roger"),
        "r2": lambda: fit.r2(),
        "icc": lambda: fit.icc(),
        "fit_fn": lambda: mixedjax.fit_fn(fit),
        "pb_test": lambda: mixedjax.pb_test(fit, outofcore.lmer("y ~ x + f + (1 | g)", parts),
                                            nsim=4),
        "refit_many": lambda: fit.refit_many(np.zeros((2, fit.nobs))),
    }
    with pytest.raises(ValueError, match="reads the model's rows, and this model was built "
                                         "from its cross-products without them"):
        calls[call]()


def test_model_from_blocks_fits_as_the_model_from_rows():
    df = _data(seed=7)
    mem = LMM.from_formula("y ~ x + (x | g) + (1 | h)", df)
    bare = LMM.from_blocks(mem.design, mem.blocks, mem.placement)
    assert bare.rows is None and bare.structure == mem.structure
    np.testing.assert_array_equal(bare.start_theta(), mem.initial_theta())
    a, b = bare.fit(), mem.fit()
    assert abs(a.objective - b.objective) <= 1e-10 * abs(b.objective)
    _close(a.theta, b.theta, 1e-6)
    with pytest.raises(ValueError, match="from_blocks"):
        bare.response_map
    with pytest.raises(TypeError, match="blocks must be"):
        LMM.from_blocks(mem.design, {}, mem.placement)


# ----------------------------------------------------------------------------------
# Named errors
# ----------------------------------------------------------------------------------
def test_missing_column_is_named():
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(_data(), npartitions=2)
    with pytest.raises(ValueError, match="'nope'"):
        outofcore.lmer("y ~ nope + (1 | g)", ddf)
    with pytest.raises(ValueError, match="'grp'"):
        outofcore.lmer("y ~ x + (1 | grp)", ddf)


@pytest.mark.parametrize("formula,match", [
    ("y ~ center(x) + (1 | g)", "stateful transform"),
    ("y ~ scale(x) + (1 | g)", "stateful transform"),
    ("y ~ standardize(x) + (1 | g)", "stateful transform"),
    ("y ~ C(g) + (1 | h)", "numeric column"),
])
def test_refused_encodings(formula, match):
    with pytest.raises(ValueError, match=match):
        outofcore.partitioned_model(formula, _splits(_data(), 1))


def test_other_errors():
    df = _data()
    parts = _splits(df, 1)
    with pytest.raises(TypeError, match="weights must be a column name"):
        outofcore.lmer("y ~ x + (1 | g)", parts, weights=np.ones(len(df)))
    with pytest.raises(TypeError, match="response 'h' must be numeric"):
        outofcore.lmer("h ~ x + (1 | g)", parts)
    with pytest.raises(TypeError, match="list of pandas"):
        outofcore.partitioned_model("y ~ x + (1 | g)", [])
    with pytest.raises(ValueError, match="no random-effects term"):
        outofcore.lmer("y ~ x", parts)
    empty = [p.assign(y=np.nan) for p in parts]
    with pytest.raises(ValueError, match="no rows left"):
        outofcore.lmer("y ~ x + (1 | g)", empty)
    bad = [p.copy() for p in parts]
    bad[1].loc[bad[1].index[0], "x"] = np.inf
    with pytest.raises(ValueError, match="column 'x' has infinite"):
        outofcore.lmer("y ~ x + (1 | g)", bad)
    with pytest.raises(ValueError, match="lacks column"):
        outofcore.lmer("y ~ x + (1 | g)", [parts[0], parts[1].drop(columns="x")])
    # a pandas frame takes the in-memory path
    assert type(outofcore.lmer("y ~ x + (1 | g)", df)) is mixedjax.LMMResult


def test_import_mixedjax_does_not_import_dask():
    code = ("import sys, mixedjax; assert 'mixedjax.outofcore' not in sys.modules; "
            "import mixedjax.outofcore; "
            "assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


# ----------------------------------------------------------------------------------
# A real cluster: two worker processes, pickling, loopback TCP
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("dask.distributed")
    pytest.importorskip("pyarrow")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as c:
        yield c


def test_cluster_fit_from_parquet_equals_memory(client, tmp_path):
    import dask.dataframe as dd
    df = _data(n=4000, seed=5, offset=1e6)
    df["h"] = df["h"].astype(object)
    files = _splits(df, 5, n_parts=7)          # 8 files, one of them empty
    for i, part in enumerate(files):
        part.to_parquet(tmp_path / f"part{i}.parquet")
    ddf = dd.read_parquet(str(tmp_path))
    assert ddf.npartitions == 8
    formula = "y ~ x + f + (x | g) + (1 | h)"
    kw = {"weights": "w", "offset": "off"}
    mem = mixedjax.lmer(formula, pd.concat(files), **kw)
    fit = outofcore.lmer(formula, ddf, n_buckets=3, **kw)
    assert isinstance(fit, outofcore.PartitionedResult)
    assert abs(fit.objective - mem.objective) <= 1e-10 * abs(mem.objective)
    _close(fit.fixef, mem.fixef, 1e-8)
    _close(fit.theta, mem.theta, 1e-8)
    _close(fit.sigma, mem.sigma, 1e-8)
    _close(fit.vcov, mem.vcov, 1e-8)
    assert list(fit.ranef) == list(mem.ranef)
    _close(fit.ranef["g"], mem.ranef["g"], 1e-8)
    assert fit.nobs == mem.nobs and fit.n_dropped == mem.n_dropped
    resid = fit.residuals.compute().sort_index()
    _close(resid, mem.residuals.sort_index(), 1e-8)
    assert "Fixed effects" in str(fit.summary())
