"""Data frames of other libraries (polars, pyarrow, ...) as pandas DataFrames.

Every function that takes a data set (``lmer``, ``make_design``, ``lme``, ``gls``,
``predict``'s ``newdata``, the designs of ``power`` and ``simulate_design``) passes
it through :func:`as_pandas` first, so a polars ``DataFrame``, a pyarrow ``Table`` or
``RecordBatch``, a narwhals ``DataFrame`` or any frame with the Arrow PyCapsule
stream or the dataframe interchange protocol gives the same model as the equal
pandas frame.  None of those libraries is needed to import mixedjax: a frame is
recognised by its type's module and its methods.  A polars frame is converted
column by column (no pyarrow needed), a pyarrow one by its ``to_pandas``, any
other through the Arrow stream (with pyarrow) or the interchange protocol.

Column conversion (what a pandas user would have written):

* a polars ``Enum`` column becomes a ``pd.Categorical`` with the Enum's categories
  in their given order (unused ones kept), as R's ``factor(x, levels = ...)``;
* a polars ``Categorical`` column becomes a ``pd.Categorical`` with its values'
  lexical order, the order polars sorts it in (and R's ``factor()`` and pandas'
  ``astype("category")`` give);
* a pyarrow dictionary column becomes a ``pd.Categorical`` with the dictionary's
  values in their given order (pyarrow's ``to_pandas``; a dictionary marked
  ordered gives an ordered Categorical, coded with the same treatment contrasts);
* strings stay strings, numbers numbers (integers with nulls become float64);
* nulls become missing values (NaN/None), which the model drops and counts as it
  does pandas NaN.

The data set's name (``df.attrs["name"]`` for pandas, shown as "Data:" in
summaries) is kept from a pyarrow table made from pandas (its stored ``attrs``) or
from a ``b"name"`` entry of the table's schema metadata; polars frames carry none.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

_ALSO = ("polars DataFrames, pyarrow Tables and other data frames with the Arrow PyCapsule "
         "or dataframe interchange protocol are accepted too")
_FRAMES = {"polars": ("DataFrame",), "pyarrow": ("Table", "RecordBatch")}


def _library(obj) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _rejected(data, argument: str) -> TypeError:
    hint = ""
    if isinstance(data, dict):
        hint = "; wrap a dict of columns as pd.DataFrame(...)"
    elif isinstance(data, np.ndarray):
        hint = "; an array has no column names, build a DataFrame with named columns"
    elif isinstance(data, pd.Series):
        hint = "; for a single column use series.to_frame()"
    elif _library(data) == "polars" and type(data).__name__ == "LazyFrame":
        hint = "; call .collect() on the LazyFrame first"
    return TypeError(f"{argument} must be a pandas DataFrame, got {type(data).__name__}{hint} "
                     f"({_ALSO})")


def _unwrap(data):
    """The native frame of a narwhals wrapper (narwhals is not imported for this)."""
    if _library(data) == "narwhals" and hasattr(data, "to_native"):
        return data.to_native()
    return data


def is_data_frame(data) -> bool:
    """Whether :func:`as_pandas` accepts ``data`` (without converting it)."""
    data = _unwrap(data)
    if isinstance(data, pd.DataFrame):
        return True
    library = _library(data)
    if library in _FRAMES:
        return type(data).__name__ in _FRAMES[library]
    if isinstance(data, (pd.Series, np.ndarray)):
        return False
    return hasattr(data, "__dataframe__") or hasattr(data, "__arrow_c_stream__")


def _polars_column(s) -> np.ndarray | pd.Categorical:
    """One polars Series as a NumPy array or pandas Categorical (nulls missing)."""
    kind = type(s.dtype).__name__
    if kind == "Enum":
        codes = s.to_physical().to_numpy()
        codes = np.where(np.isnan(codes), -1, codes) if codes.dtype.kind == "f" else codes
        return pd.Categorical.from_codes(codes.astype(np.int64),
                                         categories=list(s.dtype.categories.to_list()))
    if kind == "Categorical":
        text = s.cast(str)
        return pd.Categorical(text.to_numpy(), categories=sorted(text.drop_nulls().unique()))
    values = s.to_numpy()
    # polars may hand out a read-only view of its buffers; pandas code may write
    return values if values.flags.writeable else values.copy()


def _from_polars(data) -> pd.DataFrame:
    columns = {name: _polars_column(data.get_column(name)) for name in data.columns}
    return pd.DataFrame(columns, columns=list(data.columns))


def _arrow_name(schema) -> str | None:
    meta = schema.metadata or {}
    name = meta.get(b"name")
    return name.decode() if isinstance(name, bytes) else None


def _from_pyarrow(data) -> pd.DataFrame:
    out = data.to_pandas()
    name = _arrow_name(data.schema)
    if name is not None and "name" not in out.attrs:
        out.attrs["name"] = name
    return out


def _from_protocol(data, argument: str) -> pd.DataFrame:
    """A frame of another library, through the Arrow stream or interchange protocol."""
    if hasattr(data, "__arrow_c_stream__"):
        try:
            import pyarrow as pa
        except ImportError:
            pa = None
        if pa is not None:
            try:
                table = pa.table(data)
            except (TypeError, ValueError, pa.ArrowException):
                # a stream of one column (a Series, a ChunkedArray) is not a table
                raise _rejected(data, argument) from None
            return _from_pyarrow(table)
    if hasattr(data, "__dataframe__"):
        from pandas.api.interchange import from_dataframe

        # pandas 3 deprecates the protocol in favour of the Arrow stream above; for a
        # frame that offers nothing else it is still the one way in
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return from_dataframe(data, allow_copy=True)
    raise _rejected(data, argument)


def as_pandas(data, argument: str = "data") -> pd.DataFrame:
    """``data`` as a pandas DataFrame: pandas frames unchanged (not copied), others
    converted as the module docstring describes.

    ``argument`` names the argument in the ``TypeError`` raised for anything that
    is not a data frame (a dict, a list, an array, a polars LazyFrame, ...).
    """
    if isinstance(data, pd.DataFrame):
        return data
    data = _unwrap(data)
    if not is_data_frame(data):
        raise _rejected(data, argument)
    if isinstance(data, pd.DataFrame):   # a narwhals wrapper of a pandas frame
        return data
    library = _library(data)
    if library == "polars":
        return _from_polars(data)
    if library == "pyarrow":
        return _from_pyarrow(data)
    return _from_protocol(data, argument)
