"""Fits travel: pickle round trips and ``save``/``mixedjax.load`` of every result type,
with the same estimates, predictions on new data (stateful transforms keep the
original data's state), summary, refits, bootstraps and intervals; a file of another
format version is refused; a fit sent to a worker process predicts there."""
from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import operator
import pickle

import numpy as np
import pandas as pd
import pytest

import mixedjax
import mixedjax.bootstrap  # PBTestResult, built directly below
from mixedjax import persist
from mixedjax.design import EVAL_ENV, newdata_matrix


def _roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


def _pickled_modules(obj) -> set[str]:
    """The modules whose classes and functions a pickle of ``obj`` refers to."""
    modules: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            modules.add(module)
            return super().find_class(module, name)

    Recorder(io.BytesIO(pickle.dumps(obj))).load()
    return modules


@pytest.fixture(scope="module")
def sleep():
    d = mixedjax.datasets.load("sleepstudy").copy()
    rng = np.random.default_rng(3)
    d["x"] = rng.normal(10.0, 3.0, len(d))
    # A categorical whose level order is not alphabetical: R's factor(levels = ...).
    d["cond"] = pd.Categorical(np.array(["placebo", "low", "high"])[np.arange(len(d)) % 3],
                               categories=["placebo", "low", "high"])
    return d


@pytest.fixture(scope="module")
def fit(sleep):
    return mixedjax.lmer("Reaction ~ center(Days) + scale(x) + cond + (center(Days) | Subject)",
                         sleep)


@pytest.fixture(scope="module")
def newdata(sleep):
    # Days only 0..2 and x far from the fit's mean: a transform recomputed on these
    # rows would centre and scale differently from the fit.
    nd = sleep[sleep.Days <= 2].iloc[:12].copy()
    nd["x"] = nd["x"] + 50.0
    nd["cond"] = nd["cond"].astype(str)           # plain text: mapped to the fit's levels
    nd["Subject"] = nd["Subject"].astype(object)
    nd.loc[nd.index[:3], "Subject"] = "999"        # a level not in the fit
    return nd


def _same_fit(a, b):
    pd.testing.assert_series_equal(a.fixef, b.fixef, check_exact=True)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.objective == b.objective and a.sigma == b.sigma
    assert a.ranef.keys() == b.ranef.keys()
    for g in a.ranef:
        pd.testing.assert_frame_equal(a.ranef[g], b.ranef[g], check_exact=True)
    pd.testing.assert_frame_equal(a.vcov, b.vcov, check_exact=True)


def _predictions(m, nd):
    return [m.predict(nd, allow_new_levels=True), m.predict(nd, re_form="~0"),
            m.predict(nd, re_form="~(center(Days) | Subject)", allow_new_levels=True),
            m.predict()]


def test_lmer_pickle_round_trip(fit, newdata):
    m2 = _roundtrip(fit)
    _same_fit(fit, m2)
    assert m2._design is m2.model.design             # shared, as in the original
    for p, q in zip(_predictions(fit, newdata), _predictions(m2, newdata)):
        pd.testing.assert_series_equal(p, q, check_exact=True)
    assert str(m2.summary()) == str(fit.summary())
    assert m2.model.design.xnames == ["(Intercept)", "center(Days)", "scale(x)", "condlow",
                                      "condhigh"]


def test_stateful_transforms_keep_the_fits_state(fit, sleep, newdata):
    """center() and scale() on new data use the fitted data's mean and sd, before and
    after loading: the population prediction is X_new beta with X_new built by hand."""
    m2 = _roundtrip(fit)
    days, x = sleep["Days"], sleep["x"]
    cond = pd.Categorical(newdata["cond"], categories=["placebo", "low", "high"])
    X = np.column_stack([np.ones(len(newdata)), newdata["Days"] - days.mean(),
                         (newdata["x"] - x.mean()) / x.std(ddof=1),   # R: sd, n - 1
                         cond == "low", cond == "high"]).astype(float)
    expected = X @ fit.fixef.to_numpy()
    np.testing.assert_allclose(m2.predict(newdata, re_form="~0").to_numpy(), expected,
                               rtol=1e-12)
    d, d2 = fit.model.design, m2.model.design
    for info, info2 in [(d.x_design_info, d2.x_design_info),
                        *[(t.design_info, t2.design_info) for t, t2 in zip(d.terms, d2.terms)]]:
        assert info2.column_names == info.column_names
        np.testing.assert_array_equal(newdata_matrix(info, newdata, "X"),
                                      newdata_matrix(info2, newdata, "X"))


def test_encoding_description_is_plain(fit, newdata):
    """The pickle holds no patsy object; the description rebuilds an equivalent
    design info (splines and explicit contrasts included)."""
    assert not [m for m in _pickled_modules(fit) if m.split(".")[0] == "patsy"]
    df = newdata.assign(g=np.arange(len(newdata)) % 4)
    _, info = mixedjax.design.model_matrix(
        "bs(x, df=4) + C(cond, Treatment('high')) + standardize(Days) + I(Days ** 2) "
        "+ log(x):C(g)", df, "test")
    spec = persist.describe_info(info)
    rebuilt = persist.rebuild_info(_roundtrip(spec), EVAL_ENV)
    assert rebuilt.column_names == info.column_names
    other = df.iloc[:5].assign(x=df["x"].to_numpy()[::-1][:5], Days=df["Days"][:5] + 3)
    np.testing.assert_array_equal(newdata_matrix(rebuilt, other, "X"),
                                  newdata_matrix(info, other, "X"))


def test_loaded_fit_refits_and_drops_device_caches(fit):
    import jax
    fit.model.objective(fit.theta)                   # fills model.arrays (JAX)
    fit.ranef_condvar
    m2 = _roundtrip(fit)
    for name in ("arrays", "eager", "response_map", "coupling"):
        assert name not in vars(m2.model)
    for name in ("ranef", "vcov", "fitted", "_b", "ranef_condvar"):
        assert name not in vars(m2)
    assert not any(isinstance(v, jax.Array) for v in vars(m2.model).values())
    np.testing.assert_allclose(float(m2.model.objective(fit.theta)), fit.objective,
                               rtol=1e-12)
    _same_fit(fit.model.fit(), m2.model.fit())
    for g in fit.ranef_condvar:
        np.testing.assert_array_equal(fit.ranef_condvar[g], m2.ranef_condvar[g])
    model2 = _roundtrip(fit.model)
    assert model2.design.n == fit.nobs and model2.reml
    _same_fit(fit.model.fit(), model2.fit())


def test_save_and_load(fit, newdata, tmp_path):
    path = tmp_path / "fit.mixedjax"
    fit.save(path)
    m2 = mixedjax.load(path)
    assert isinstance(m2, mixedjax.LMMResult)
    _same_fit(fit, m2)
    for p, q in zip(_predictions(fit, newdata), _predictions(m2, newdata)):
        pd.testing.assert_series_equal(p, q, check_exact=True)
    assert str(m2.summary()) == str(fit.summary())
    pd.testing.assert_frame_equal(m2.confint(method="Wald"), fit.confint(method="Wald"),
                                  check_exact=True)


@pytest.fixture(scope="module")
def sleep_fit():
    return mixedjax.lmer("Reaction ~ Days + (Days | Subject)",
                         mixedjax.datasets.load("sleepstudy"))


@pytest.mark.slow
def test_loaded_fit_bootstraps_as_the_original(sleep_fit, tmp_path):
    m = sleep_fit
    m.save(tmp_path / "m.pkl")
    m2 = mixedjax.load(tmp_path / "m.pkl")
    b, b2 = m.bootstrap(50, key=1), m2.bootstrap(50, key=1)
    pd.testing.assert_frame_equal(b.replicates, b2.replicates, check_exact=True)
    pd.testing.assert_frame_equal(b.intervals(), b2.intervals(), check_exact=True)
    for kwargs in ({"method": "Wald"}, {"method": "boot", "nsim": 50, "key": 2}):
        pd.testing.assert_frame_equal(m.confint(**kwargs), m2.confint(**kwargs),
                                      check_exact=True)

    # The bootstrap itself travels, with its batch of refits.
    b.save(tmp_path / "b.pkl")
    for b3 in (mixedjax.load(tmp_path / "b.pkl"), _roundtrip(b)):
        pd.testing.assert_frame_equal(b3.replicates, b.replicates, check_exact=True)
        pd.testing.assert_frame_equal(b3.batch.sdcor, b.batch.sdcor, check_exact=True)
        np.testing.assert_array_equal(b3.batch.response(7), b.batch.response(7))
        assert str(b3) == str(b)
    _same_fit(b.batch[3], _roundtrip(b.batch)[3])


def test_batch_and_pb_test_round_trip(sleep_fit, tmp_path):
    batch = sleep_fit.refit_many(sleep_fit.simulate(4, key=5))
    batch.fixef                                      # a cached table, dropped from the pickle
    batch.save(tmp_path / "batch.pkl")
    for b2 in (mixedjax.load(tmp_path / "batch.pkl"), _roundtrip(batch)):
        assert "fixef" not in vars(b2)
        pd.testing.assert_frame_equal(b2.fixef, batch.fixef, check_exact=True)
        np.testing.assert_array_equal(b2.theta, batch.theta)
        pd.testing.assert_frame_equal(b2.summary(), batch.summary(), check_exact=True)
    # pb_test's result holds tables and arrays only (its refits compile two more
    # models; the result is built directly here).
    table = pd.DataFrame({"stat": [3.5, 3.5], "df": [1.0, np.nan], "p.value": [0.06, 0.08]},
                         index=["LRT", "PBtest"])
    pb = mixedjax.bootstrap.PBTestResult(table, np.array([0.5, 4.0, np.nan]),
                                         np.array([True, True, False]), ["y ~ 1", "y ~ x"], 1.0)
    pb.save(tmp_path / "pb.pkl")
    for pb2 in (mixedjax.load(tmp_path / "pb.pkl"), _roundtrip(pb)):
        pd.testing.assert_frame_equal(pb2.table, pb.table, check_exact=True)
        assert pb2.extremes == pb.extremes == 1 and str(pb2) == str(pb)


@pytest.mark.parametrize("kind", ["lme", "gls"])
def test_nlme_results_round_trip(kind, tmp_path):
    d = mixedjax.datasets.load("orthodont").copy()
    d["Sex"] = pd.Categorical(d["Sex"], categories=["Male", "Female"])
    if kind == "lme":
        m = mixedjax.lme("distance ~ center(age) + Sex", d, "~ center(age) | Subject")
    else:
        m = mixedjax.gls("distance ~ center(age) + Sex", d,
                         correlation=mixedjax.CorCompSymm("~ 1 | Subject"))
    nd = d[d.age <= 10].copy()
    nd["Sex"] = nd["Sex"].astype(str)
    m.save(tmp_path / "nlme.pkl")
    for m2 in (_roundtrip(m), mixedjax.load(tmp_path / "nlme.pkl")):
        assert type(m2) is type(m)
        pd.testing.assert_series_equal(m2.fixef, m.fixef, check_exact=True)
        np.testing.assert_array_equal(m2.x, m.x)
        assert m2.loglik == m.loglik
        pd.testing.assert_frame_equal(m2.vcov, m.vcov, check_exact=True)
        for level in ([0, 1] if kind == "lme" else [0]):
            pd.testing.assert_series_equal(m2.predict(nd, level=level),
                                           m.predict(nd, level=level), check_exact=True)
        for g in m.ranef:
            pd.testing.assert_frame_equal(m2.ranef[g], m.ranef[g], check_exact=True)
        assert str(m2.summary()) == str(m.summary())
    # center(age) on the new rows uses the fitted mean age (11).
    X = np.column_stack([np.ones(len(nd)), nd["age"] - 11.0, nd["Sex"] == "Female"])
    np.testing.assert_allclose(m2.predict(nd, level=0).to_numpy(),
                               X.astype(float) @ m.fixef.to_numpy(), rtol=1e-12)


def test_load_refuses_other_versions_and_other_files(fit, tmp_path):
    path = tmp_path / "future.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"magic": persist.MAGIC, "format_version": 99,
                     "mixedjax_version": "9.0"}, fh)
        pickle.dump(fit, fh)
    with pytest.raises(ValueError, match="format version 99"):
        mixedjax.load(path)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a file written by mixedjax"):
        mixedjax.load(other)
    cut = tmp_path / "cut.pkl"
    fit.save(cut)
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or damaged"):
        mixedjax.load(cut)
    text = tmp_path / "text.csv"
    text.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a file written by mixedjax"):
        mixedjax.load(text)


def test_fit_predicts_in_a_worker_process(fit, newdata):
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        remote = pool.submit(operator.methodcaller("predict", newdata, allow_new_levels=True),
                             fit).result(timeout=120)
    pd.testing.assert_series_equal(remote, fit.predict(newdata, allow_new_levels=True),
                                   check_exact=True)
