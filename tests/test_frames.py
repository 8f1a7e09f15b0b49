"""polars DataFrames and pyarrow Tables are accepted wherever a pandas DataFrame is.

Part one checks the conversion (mixedjax.frames.as_pandas): column types, level
order of categorical columns, nulls, the data set's name, and the errors for
things that are not data frames.  Part two fits the same models from pandas,
polars and pyarrow input and asserts identical results (the conversion is exact,
so the fits agree to the last bit up to the optimizer's determinism: 1e-10).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import mixedjax
from mixedjax.frames import as_pandas, is_data_frame

pl = pytest.importorskip("polars")
pa = pytest.importorskip("pyarrow")


# -- the conversion ------------------------------------------------------------------------

def _polars_frame():
    return pl.DataFrame({
        "y": [1.5, None, 3.0, 4.0],
        "n": [1, 2, None, 4],
        "s": ["b", "a", None, "c"],
        "e": pl.Series(["hi", "lo", "hi", None], dtype=pl.Enum(["lo", "mid", "hi"])),
        "c": pl.Series(["z", "x", None, "y"], dtype=pl.Categorical),
        "k": [3, 1, 2, 5],
    })


def test_pandas_frame_is_returned_unchanged():
    df = pd.DataFrame({"a": [1.0]})
    assert as_pandas(df) is df


def test_polars_columns():
    out = as_pandas(_polars_frame())
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["y", "n", "s", "e", "c", "k"]
    assert out.index.equals(pd.RangeIndex(4))
    assert out["y"].dtype == np.float64 and out["k"].dtype == np.int64
    # an integer column with nulls becomes float64 with NaN, as in pandas
    assert out["n"].dtype == np.float64
    np.testing.assert_array_equal(out["n"].isna(), [False, False, True, False])
    assert pd.api.types.is_string_dtype(out["s"])
    assert out["s"].tolist()[:2] == ["b", "a"] and out["s"].isna().tolist() == [0, 0, 1, 0]
    # Enum: its categories in their given order, the unused one ("mid") kept
    assert isinstance(out["e"].dtype, pd.CategoricalDtype)
    assert list(out["e"].cat.categories) == ["lo", "mid", "hi"]
    assert out["e"].cat.codes.tolist() == [2, 0, 2, -1]
    # Categorical: lexical order (polars' sort order, R's factor())
    assert list(out["c"].cat.categories) == ["x", "y", "z"]
    assert out["c"].cat.codes.tolist() == [2, 0, -1, 1]
    assert out.isna().sum().tolist() == [1, 1, 1, 1, 1, 0]


def test_pyarrow_columns_and_dictionary_order():
    levels = pa.array(["lo", "mid", "hi"])
    table = pa.table({
        "y": pa.array([1.0, None, 2.0]),
        "n": pa.array([1, None, 3]),
        "s": pa.array(["u", None, "v"]),
        "f": pa.DictionaryArray.from_arrays(pa.array([2, 0, None], pa.int8()), levels),
    })
    out = as_pandas(table)
    assert out["y"].isna().tolist() == [False, True, False]
    assert out["n"].dtype == np.float64 and np.isnan(out["n"].iloc[1])
    assert pd.api.types.is_string_dtype(out["s"]) and out["s"].isna().tolist() == [0, 1, 0]
    assert list(out["f"].cat.categories) == ["lo", "mid", "hi"]
    assert out["f"].cat.codes.tolist() == [2, 0, -1]
    batch = table.to_batches()[0]
    pd.testing.assert_frame_equal(as_pandas(batch), out)


def test_polars_and_pyarrow_agree():
    df = _polars_frame()
    via_arrow = as_pandas(df.to_arrow())
    direct = as_pandas(df)
    for col in ["y", "n", "s", "e", "k"]:
        pd.testing.assert_series_equal(direct[col], via_arrow[col], check_dtype=False,
                                       check_categorical=False)
    assert list(via_arrow["e"].cat.categories) == ["lo", "mid", "hi"]


def test_data_set_name_is_kept():
    df = pd.DataFrame({"a": [1.0, 2.0]})
    df.attrs["name"] = "mydata"
    assert as_pandas(pa.Table.from_pandas(df)).attrs["name"] == "mydata"
    table = pa.table({"a": [1.0]}).replace_schema_metadata({b"name": b"other"})
    assert as_pandas(table).attrs["name"] == "other"


class _ArrowStreamOnly:
    def __init__(self, frame):
        self.frame = frame

    def __arrow_c_stream__(self, requested_schema=None):
        return self.frame.__arrow_c_stream__(requested_schema)


class _InterchangeOnly:
    def __init__(self, frame):
        self.frame = frame

    def __dataframe__(self, nan_as_null=False, allow_copy=True):
        return self.frame.__dataframe__(nan_as_null=nan_as_null, allow_copy=allow_copy)


def test_protocols_and_narwhals():
    df = pd.DataFrame({"y": [1.0, np.nan], "g": pd.Categorical(["b", "a"], ["b", "a"])})
    for obj in (_ArrowStreamOnly(pa.Table.from_pandas(df)), _InterchangeOnly(df)):
        assert is_data_frame(obj)
        out = as_pandas(obj)
        np.testing.assert_array_equal(out["y"], df["y"])
        assert list(out["g"].cat.categories) == ["b", "a"]
    nw = pytest.importorskip("narwhals")
    enum = pl.DataFrame({"g": pl.Series(["b", "a"], dtype=pl.Enum(["b", "a"]))})
    out = as_pandas(nw.from_native(enum))
    assert list(out["g"].cat.categories) == ["b", "a"]
    assert as_pandas(nw.from_native(df)) is df


@pytest.mark.parametrize("obj, name, hint", [
    ({"a": [1]}, "dict", "pd.DataFrame"),
    ([1, 2], "list", ""),
    (np.zeros((2, 2)), "ndarray", "column names"),
    (None, "NoneType", ""),
    (pd.Series([1.0]), "Series", "to_frame"),
    (pl.DataFrame({"a": [1]}).lazy(), "LazyFrame", "collect"),
    (pl.Series([1.0]), "Series", ""),
    (pa.chunked_array([[1.0]]), "ChunkedArray", ""),
    (_ArrowStreamOnly(pl.Series([1.0])), "_ArrowStreamOnly", ""),
])
def test_not_a_data_frame(obj, name, hint):
    with pytest.raises(TypeError, match=rf"^newdata must be a pandas DataFrame, got {name}"
                                        rf".*{hint}.*polars DataFrames, pyarrow Tables"):
        as_pandas(obj, "newdata")


def test_frame_libraries_are_optional():
    """mixedjax imports and checks its input with polars, pyarrow and narwhals absent."""
    code = ("import sys\n"
            "for m in ('polars', 'pyarrow', 'narwhals'):\n"
            "    sys.modules[m] = None\n"
            "import pandas as pd, mixedjax\n"
            "from mixedjax.frames import as_pandas\n"
            "df = pd.DataFrame({'a': [1.0]})\n"
            "assert as_pandas(df) is df\n"
            "try:\n"
            "    as_pandas({'a': [1.0]})\n"
            "except TypeError as err:\n"
            "    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.startswith("data must be a pandas DataFrame, got dict")


# -- the public API on polars and pyarrow input ----------------------------------------------

SEX = ["Male", "Female"]          # not lexical: the reference level is Male


@pytest.fixture(scope="module")
def frames():
    """orthodont with Sex's levels reordered and missing values, three ways."""
    base = mixedjax.datasets.load("orthodont")
    rows = {
        "distance": [None if i in (3, 40) else v for i, v in enumerate(base["distance"])],
        "age": base["age"].tolist(),
        "Subject": base["Subject"].astype(str).tolist(),
        "Sex": [None if i == 70 else v for i, v in enumerate(base["Sex"].astype(str))],
    }
    pdf = pd.DataFrame({
        "distance": pd.array(rows["distance"], dtype="float64"),
        "age": rows["age"],
        "Subject": rows["Subject"],
        "Sex": pd.Categorical(rows["Sex"], categories=SEX),
    })
    pdf.attrs["name"] = "orthodont"
    pldf = pl.DataFrame({"distance": rows["distance"], "age": rows["age"],
                         "Subject": rows["Subject"],
                         "Sex": pl.Series(rows["Sex"], dtype=pl.Enum(SEX))})
    table = pa.table({
        "distance": pa.array(rows["distance"], pa.float64()),
        "age": pa.array(rows["age"], pa.int64()),
        "Subject": pa.array(rows["Subject"]),
        "Sex": pa.array(rows["Sex"]).dictionary_encode().cast(
            pa.dictionary(pa.int32(), pa.string())),
    })
    # the dictionary in first-appearance order is Female, Male; give it Male, Female
    codes = pa.array([None if s is None else SEX.index(s) for s in rows["Sex"]], pa.int32())
    sex = pa.DictionaryArray.from_arrays(codes, pa.array(SEX))
    table = table.set_column(3, "Sex", sex).replace_schema_metadata({b"name": b"orthodont"})
    return {"pandas": pdf, "polars": pldf, "pyarrow": table}


@pytest.fixture(scope="module")
def newdata(frames):
    """Rows to predict for (complete covariates: Sex is missing in row 70 only)."""
    return {"pandas": frames["pandas"].iloc[:40], "polars": frames["polars"].head(40),
            "pyarrow": frames["pyarrow"].slice(0, 40)}


FORMULA = "distance ~ age + Sex + (1 | Subject)"


@pytest.fixture(scope="module")
def lmer_fits(frames):
    return {k: mixedjax.lmer(FORMULA, d) for k, d in frames.items()}


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_lmer_same_fit(lmer_fits, kind):
    ref, fit = lmer_fits["pandas"], lmer_fits[kind]
    assert ref.model.design.n_dropped == fit.model.design.n_dropped == 3
    assert list(fit.fixef.index) == list(ref.fixef.index) == ["(Intercept)", "age",
                                                             "SexFemale"]
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=1e-10)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-10)
    assert fit.objective == pytest.approx(ref.objective, rel=1e-12)
    if kind == "pyarrow":
        assert fit.model.data_name == "orthodont"


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_predict_on_new_frames(lmer_fits, newdata, kind):
    fit = lmer_fits["pandas"]
    new, ref_new = newdata[kind], newdata["pandas"]
    np.testing.assert_allclose(fit.predict(new), fit.predict(ref_new), rtol=1e-12)
    np.testing.assert_allclose(fit.predict(new, re_form="~0"),
                               fit.predict(ref_new, re_form="~0"), rtol=1e-12)
    pd.testing.assert_frame_equal(fit.predict_interval(new).reset_index(drop=True),
                                  fit.predict_interval(ref_new).reset_index(drop=True))


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_make_design_and_from_formula(frames, kind):
    ref = mixedjax.make_design(FORMULA, frames["pandas"])
    d = mixedjax.make_design(FORMULA, frames[kind])
    np.testing.assert_array_equal(d.X, ref.X)
    np.testing.assert_array_equal(d.y, ref.y)
    assert d.n_dropped == ref.n_dropped
    model = mixedjax.LMM.from_formula(FORMULA, frames[kind])
    ref_model = mixedjax.LMM.from_formula(FORMULA, frames["pandas"])
    assert float(model.objective(np.array([1.0]))) == pytest.approx(
        float(ref_model.objective(np.array([1.0]))), rel=1e-12)


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_emmeans_same_table(lmer_fits, kind):
    # residual df: the Satterthwaite df would only add compile time, not a check
    ref = lmer_fits["pandas"].emmeans("Sex", ddf="residual")
    out = lmer_fits[kind].emmeans("Sex", ddf="residual")
    assert out.emmeans["Sex"].astype(str).tolist() == SEX
    pd.testing.assert_frame_equal(out.emmeans, ref.emmeans, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(out.contrasts, ref.contrasts, check_exact=False,
                                  rtol=1e-9)


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_lme_and_gls(frames, newdata, kind):
    ref = mixedjax.lme("distance ~ age + Sex", frames["pandas"], random="~ 1 | Subject")
    fit = mixedjax.lme("distance ~ age + Sex", frames[kind], random="~ 1 | Subject")
    assert fit.loglik == pytest.approx(ref.loglik, rel=1e-10)
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=1e-8)
    assert list(fit.fixef.index) == list(ref.fixef.index)
    assert fit.n_dropped == ref.n_dropped == 3
    np.testing.assert_allclose(ref.predict(newdata[kind]), ref.predict(newdata["pandas"]),
                               rtol=1e-12)
    ref = mixedjax.gls("distance ~ age + Sex", frames["pandas"])
    fit = mixedjax.gls("distance ~ age + Sex", frames[kind])
    assert fit.loglik == pytest.approx(ref.loglik, rel=1e-10)
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=1e-8)


@pytest.mark.parametrize("kind", ["polars", "pyarrow"])
def test_simulate_design(frames, kind):
    params = {"beta": [17.0, 0.6, -2.0], "sigma": 1.4, "sd": {"Subject": 1.8}}
    formula = "distance ~ age + Sex + (1 | Subject)"
    with pytest.warns(UserWarning, match="1 row"):
        ref = mixedjax.simulate_design(formula, frames["pandas"], params, nsim=2, key=3)
    with pytest.warns(UserWarning, match="1 row"):
        out = mixedjax.simulate_design(formula, frames[kind], params, nsim=2, key=3)
    np.testing.assert_array_equal(out, ref)


def test_entry_points_name_the_argument(lmer_fits):
    with pytest.raises(TypeError, match="^data must be a pandas DataFrame, got dict"):
        mixedjax.lmer(FORMULA, {"distance": [1.0]})
    with pytest.raises(TypeError, match="^data must be a pandas DataFrame, got LazyFrame"):
        mixedjax.lme("distance ~ age", pl.DataFrame({"distance": [1.0]}).lazy(),
                     random="~ 1 | Subject")
    with pytest.raises(TypeError, match="^newdata must be a pandas DataFrame, got list"):
        lmer_fits["pandas"].predict([1, 2])
    with pytest.raises(TypeError, match="^design must be a pandas DataFrame, got ndarray"):
        mixedjax.power(np.zeros((2, 2)), FORMULA, {}, nsim=2)
