"""Command line: ``python -m mixedjax`` fits sleepstudy and prints the summary;
``python -m mixedjax fit DATA.csv "FORMULA" [--ml] [--factors a,b]`` fits a CSV file."""

from __future__ import annotations

import argparse
import sys

import pandas as pd


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixedjax",
                                description="Fit linear mixed models with lme4 formulas.")
    sub = p.add_subparsers(dest="command")
    fit = sub.add_parser("fit", help="fit a model to a CSV file and print its summary")
    fit.add_argument("data", help="CSV file, or the name of a bundled data set")
    fit.add_argument("formula", help='lme4 formula, e.g. "y ~ x + (1 | g)"')
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--factors", default="",
                     help="comma-separated columns to treat as categorical factors")
    sub.add_parser("datasets", help="list the bundled data sets")
    return p


def _read(path: str) -> pd.DataFrame:
    from . import datasets
    if not path.lower().endswith(".csv") and path.lower() in datasets.list():
        return datasets.load(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise SystemExit(f"mixedjax: no such file: {path}") from None
    df.attrs["name"] = path
    return df


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import mixedjax

    if args.command is None:
        m = mixedjax.lmer("Reaction ~ Days + (Days | Subject)",
                          mixedjax.datasets.load("sleepstudy"))
        print(m.summary())
        return 0
    if args.command == "datasets":
        print("\n".join(mixedjax.datasets.list()))
        return 0
    data = _read(args.data)
    for col in filter(None, (c.strip() for c in args.factors.split(","))):
        if col not in data.columns:
            raise SystemExit(f"mixedjax: --factors names column {col!r}, not in the data")
        data[col] = data[col].astype("category")
    try:
        m = mixedjax.lmer(args.formula, data, reml=not args.ml)
    except (ValueError, TypeError) as err:
        print(f"mixedjax: {err}", file=sys.stderr)
        return 2
    print(m.summary())
    return 0
