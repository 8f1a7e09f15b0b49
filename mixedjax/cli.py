"""Command line.

``mixedjax`` (or ``python -m mixedjax``) with no arguments fits lme4's sleepstudy
example and prints its summary;
``mixedjax fit DATA "FORMULA" [--ml] [--ddf Satterthwaite|Kenward-Roger] [--factors a,b]``
fits a CSV file (or a bundled data set by name) and prints the summary;
``mixedjax datasets`` lists the bundled data sets.  Column names are written as in
R: bare (``yield``, ``größe``, ``a.b``) or in backticks (```my days```), in the
formula and in ``--factors``.

Bad input (a missing file, a formula that does not parse, a column not in the
data) ends with exit status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

__all__ = ["main"]

EXAMPLE = """>>> import mixedjax
>>> sleepstudy = mixedjax.datasets.load("sleepstudy")
>>> m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
>>> print(m.summary())
"""


class UsageError(Exception):
    """Input the command line reports in one line with exit status 2."""


def _parser() -> argparse.ArgumentParser:
    from ._config import VERSION as __version__
    p = argparse.ArgumentParser(
        prog="mixedjax",
        description="Fit linear mixed models with lme4 formulas. With no command, fit "
                    "lme4's sleepstudy example and print its summary.",
        epilog='example: mixedjax fit mydata.csv "y ~ x + (1 + x | group)" --factors group')
    p.add_argument("--version", action="version", version=f"mixedjax {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{fit,datasets}")
    fit = sub.add_parser("fit", help="fit a model to a CSV file and print its summary",
                         description="Fit a linear mixed model and print its summary.")
    fit.add_argument("data", help="CSV file (.tsv: tab-separated), or the name of a bundled "
                                  "data set (see 'mixedjax datasets')")
    fit.add_argument("formula", help='lme4 formula, e.g. "y ~ x + (1 | g)"')
    fit.add_argument("--ml", action="store_true",
                     help="maximum likelihood instead of REML")
    fit.add_argument("--ddf", metavar="METHOD", default=None,
                     help="add denominator df and p-values to the fixed-effects table: "
                          "Satterthwaite or Kenward-Roger (as lmerTest)")
    fit.add_argument("--factors", action="append", default=None, metavar="A,B",
                     help="comma-separated columns to treat as categorical factors "
                          "(numeric codes are numbers otherwise); may be repeated")
    sub.add_parser("datasets", help="list the bundled data sets",
                   description="List the bundled data sets with their size and columns.")
    return p


def _one_line(err: BaseException) -> str:
    """The first non-empty line of an error message (patsy adds a caret diagram)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _read(path: str) -> pd.DataFrame:
    from . import datasets
    if not os.path.exists(path):
        if path.lower() in datasets.list():
            return datasets.load(path)
        hint = "" if path.lower().endswith((".csv", ".tsv", ".txt")) else \
            f" (and not a bundled data set: {', '.join(datasets.list())})"
        raise UsageError(f"no such file: {path}{hint}")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a CSV file")
    sep = "\t" if path.lower().endswith(".tsv") else ","
    try:
        df = pd.read_csv(path, sep=sep)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) \
            as err:
        raise UsageError(f"cannot read {path} as CSV: {_one_line(err)}") from None
    df.attrs["name"] = os.path.basename(path)
    return df


def _factors(data: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    from .formula import column_name
    cols = [c.strip() for item in names for c in item.split(",") if c.strip()]
    for col in cols:
        if col not in data.columns:   # written as in the formula: `my g` or Q("my g")
            col = column_name(col) or col
        if col not in data.columns:
            raise UsageError(f"--factors names column {col!r}, not in the data; columns: "
                             f"{list(data.columns)}")
        data[col] = data[col].astype("category")
    return data


def _ddf(name: str | None) -> str | None:
    if name is None:
        return None
    from .inference.tables import normalize_ddf
    try:
        return normalize_ddf(name)
    except (ValueError, TypeError) as err:
        raise UsageError(_one_line(err)) from None


def _fit(args) -> int:
    from .model import lmer
    ddf = _ddf(args.ddf)
    if ddf == "Kenward-Roger" and args.ml:
        raise UsageError("--ddf Kenward-Roger needs a REML fit; leave out --ml "
                         "(or use --ddf Satterthwaite)")
    data = _factors(_read(args.data), args.factors or [])
    try:
        m = lmer(args.formula, data, reml=not args.ml)
        text = str(m.summary(ddf=ddf))
    except (ValueError, TypeError) as err:
        raise UsageError(_one_line(err)) from None
    print(text)
    return 0


def _datasets() -> int:
    from . import datasets
    rows = []
    for name in datasets.list():
        df = datasets.load(name)
        rows.append((name, f"{len(df)} x {df.shape[1]}", ", ".join(map(str, df.columns))))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, size, cols in rows:
        print(f"{name:<{w0}}  {size:>{w1}}  {cols}")
    return 0


def _example() -> int:
    from . import datasets
    from .model import lmer
    m = lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
    print(EXAMPLE)
    print(m.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status.  argparse's own usage errors exit with status 2 as well."""
    args = _parser().parse_args(argv)
    try:
        if args.command is None:
            return _example()
        if args.command == "datasets":
            return _datasets()
        return _fit(args)
    except UsageError as err:
        print(f"mixedjax: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into a command that stopped reading (``| head``): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
