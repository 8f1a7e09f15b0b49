"""Large crossed designs: InstEval- and MovieLens-shaped fits, against lme4 when installed.

    python benchmarks/large.py [--models insteval_1,insteval_2,movielens] [--no-r]
                               [--optimizer newton]   # the compiled JAX fit (GPU table)

The data come from ``benchmarks/data.py`` (deterministic seeds) and are written once
to CSV files in a temporary folder, so mixedjax and R read identical data.  Each
model runs in fresh processes (``--repeat``, default 3; the median one is shown):

  fresh s       a new Python process: import pandas and mixedjax, build the model, fit
                (CSV reading excluded; JAX's persistent compilation cache off, so this
                is a true first run)
  first s       the model's build and fit alone in that process (imports excluded, as
                ``library(lme4)`` is excluded from lme4's time)
  warm s        a second ``fit()`` of the same model in that process
  peak GiB      the process's maximum resident memory
  lme4 s        ``lmer`` in R on the same data (``library(lme4)`` and CSV reading
                excluded), and the ratios lme4 / mixedjax fresh and lme4 / mixedjax
                first -- > 1: mixedjax faster
  objective     REML criterion (or deviance) of each, and their relative difference
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = {
    "insteval_1": ("insteval", "y ~ 1 + service + (1|s) + (1|d) + (1|dept)"),
    "insteval_2": ("insteval", "y ~ service*dept + (1|s) + (1|d)"),
    "movielens": ("movielens", "y ~ 1 + (1|user) + (1|movie)"),
}
FACTORS = {"insteval": ["s", "d", "dept", "service"], "movielens": ["user", "movie"]}

PY_FIT = r"""
import json, resource, sys, time
t_start = time.perf_counter()
import pandas as pd
path, formula, factors, optimizer = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
t_read = time.perf_counter()
df = pd.read_csv(path)
for col in factors:
    df[col] = df[col].astype("category")
read = time.perf_counter() - t_read
import mixedjax
t_first = time.perf_counter()
model = mixedjax.LMM.from_formula(formula, df)
m = model.fit(optimizer=optimizer)
first = time.perf_counter() - t_first
fresh = time.perf_counter() - t_start - read
t0 = time.perf_counter()
m2 = model.fit(optimizer=optimizer)
warm = time.perf_counter() - t0
q = sum(len(t.levels) * t.k for t in model.design.terms)
print(json.dumps({"fresh": fresh, "first": first, "warm": warm, "objective": m.objective, "n": m.nobs, "q": q,
                  "iterations": m.optinfo["iterations"], "optimizer": m.optinfo["optimizer"],
                  "converged": m.converged, "jax_imported": "jax" in sys.modules,
                  "device": (__import__("jax").devices()[0].platform if "jax" in sys.modules
                             else "cpu (NumPy/SciPy)"),
                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""

R_FIT = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
df <- read.csv(args[1])
for (col in strsplit(args[3], ",")[[1]]) df[[col]] <- factor(df[[col]])
t <- system.time(m <- lmer(as.formula(args[2]), df))[["elapsed"]]
cat(sprintf('{"seconds": %.6f, "objective": %.15g}\n', t, REMLcrit(m)))
"""


def write_data(name: str, folder: Path) -> Path:
    import data

    path = folder / f"{name}.csv"
    if not path.exists():
        df = data.insteval_like() if name == "insteval" else data.movielens_like()
        df.to_csv(path, index=False)
    return path


def run_python(path: Path, formula: str, factors, optimizer: str = "auto") -> dict:
    env = {**os.environ, "MIXEDJAX_COMPILATION_CACHE": "0"}
    out = subprocess.run([sys.executable, "-c", PY_FIT, str(path), formula, ",".join(factors),
                          optimizer],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_r(path: Path, formula: str, factors) -> dict | None:
    if shutil.which("Rscript") is None:
        return None
    out = subprocess.run(["Rscript", "-e", R_FIT, str(path), formula, ",".join(factors)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  (lme4 failed: {out.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="insteval_1,insteval_2,movielens")
    ap.add_argument("--no-r", action="store_true", help="skip lme4 even if R is installed")
    ap.add_argument("--data-dir", default=None, help="keep the generated CSVs here")
    ap.add_argument("--optimizer", default="auto", choices=["auto", "newton", "bfgs"],
                    help="LMM.fit's optimizer; 'newton' runs the compiled JAX fit on JAX's "
                         "default device (a GPU where one is installed)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="fresh Python processes per model; the one with the median time is shown")
    args = ap.parse_args(argv)
    folder = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="mixedjax-"))
    folder.mkdir(parents=True, exist_ok=True)

    header = (f"{'model':<11} {'n':>9} {'q':>6} {'fresh s':>8} {'first s':>8} {'warm s':>7} "
              f"{'iter':>4} {'peak GiB':>8} {'lme4 s':>7} {'ratio fresh':>11} {'ratio first':>11} "
              f"{'objective':>17} {'rel diff':>9}")
    print(header)
    print("-" * len(header))
    devices = set()
    for name in args.models.split(","):
        data_name, formula = MODELS[name]
        path = write_data(data_name, folder)
        runs = sorted((run_python(path, formula, FACTORS[data_name], args.optimizer)
                       for _ in range(max(args.repeat, 1))), key=lambda d: d["fresh"])
        py = runs[len(runs) // 2]
        devices.add(f"{py['device']} (optimizer {args.optimizer}: {py['optimizer']}, "
                    f"JAX imported: {py['jax_imported']})")
        r = None if args.no_r else run_r(path, formula, FACTORS[data_name])
        r_time = f"{r['seconds']:7.2f}" if r else f"{'-':>7}"
        ratio = f"{r['seconds'] / py['fresh']:11.1f}" if r else f"{'-':>11}"
        ratio_first = f"{r['seconds'] / py['first']:11.1f}" if r else f"{'-':>11}"
        diff = (f"{(py['objective'] - r['objective']) / abs(r['objective']):9.1e}" if r
                else f"{'-':>9}")
        print(f"{name:<11} {py['n']:>9} {py['q']:>6} {py['fresh']:8.2f} {py['first']:8.2f} "
              f"{py['warm']:7.2f} {py['iterations']:>4} {py['peak_gib']:8.2f} {r_time} {ratio} "
              f"{ratio_first} {py['objective']:17.6f} {diff}", flush=True)
    print("\nmodels: " + "; ".join(f"{k}: {v[1]}" for k, v in MODELS.items()))
    if devices:
        print("mixedjax ran on: " + "; ".join(sorted(devices)))


if __name__ == "__main__":
    main()
