"""Timing of type III F tests with Kenward-Roger and Satterthwaite df.

    python benchmarks/inference.py [--repeat 5] [--cold] [--r]

Two simulated data sets (deterministic seeds) with the shapes of the reference
timings:

  slopes   4,059 rows, random intercepts and slopes for 65 groups,
           y ~ treat * time + age + (time | g)
  crossed  3,435 rows, two crossed grouping factors with 148 and 19 levels,
           y ~ cond * load + z + (1 | subj) + (1 | item)

For each data set and method the table shows ``m.anova(type=3, ddf=...)``:
  first   the first call on a fitted model (Satterthwaite: includes compiling its
          derivatives for this model shape, or loading them from JAX's persistent
          cache when an earlier process compiled them; ``--cold`` turns the cache
          off to show the true compile time)
  warm    median of ``--repeat`` further calls on the same fit
  R ref   pbkrtest's time for the same anova (``lmerTest::anova(m, ddf =
          "Kenward-Roger")``) on a 2-core machine: 2.5 s and 163 s; ratio = R ref /
          warm (> 1: mixedjax faster)
With ``--r`` the same data are written to a temporary folder and timed in R with
lmerTest (Satterthwaite) and pbkrtest (Kenward-Roger); that can take minutes.
lmerTest computes its Satterthwaite Hessian and Jacobian inside ``lmerTest::lmer``,
so its anova time excludes them (mixedjax computes them in the call).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The matrices here are small (q ~ 150): a multithreaded BLAS only adds contention,
# which on a busy 2-core machine costs 100x.  Set before numpy loads; override by
# exporting OPENBLAS_NUM_THREADS yourself.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PBKRTEST_SECONDS = {"slopes": 2.5, "crossed": 163.0}


def slopes_data(seed: int = 20240601) -> pd.DataFrame:
    """65 groups with 40-85 rows each (4,059 rows), a 3-level between-group factor,
    a time covariate with group-specific intercepts and slopes, and an age covariate."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(40, 86, 65)
    sizes[-1] += 4059 - sizes.sum()
    g = np.repeat(np.arange(65), sizes)
    n = len(g)
    treat = np.array(["A", "B", "C"])[np.arange(65) % 3][g]
    time_ = rng.uniform(0, 10, n)
    age = rng.normal(40, 8, 65)[g]
    b0, b1 = rng.normal(0, 3, 65), rng.normal(0, 0.5, 65)
    eff = {"A": 0.0, "B": 1.0, "C": -0.5}
    y = (10 + np.vectorize(eff.get)(treat) + (0.4 + 0.1 * (treat == "B")) * time_
         + 0.05 * age + b0[g] + b1[g] * time_ + rng.normal(0, 2, n))
    return pd.DataFrame({"y": y, "treat": pd.Categorical(treat), "time": time_, "age": age,
                         "g": pd.Categorical([f"g{i:02d}" for i in g])})


def crossed_data(seed: int = 20240602) -> pd.DataFrame:
    """3,435 rows of 148 subjects crossed with 19 items (unbalanced), a 2-level
    within-subject factor, a 3-level item factor and a covariate."""
    rng = np.random.default_rng(seed)
    n = 3435
    subj = np.concatenate([np.arange(148), rng.integers(0, 148, n - 148)])
    item = np.concatenate([np.arange(19), rng.integers(0, 19, n - 19)])
    rng.shuffle(item)
    cond = np.array(["ctrl", "test"])[rng.integers(0, 2, n)]
    load = np.array(["high", "low", "mid"])[item % 3]
    z = rng.normal(0, 1, n)
    y = (500 + 20 * (cond == "test") + 10 * (load == "high") + 5 * z
         + rng.normal(0, 30, 148)[subj] + rng.normal(0, 15, 19)[item] + rng.normal(0, 40, n))
    return pd.DataFrame({"y": y, "cond": pd.Categorical(cond), "load": pd.Categorical(load),
                         "z": z, "subj": pd.Categorical([f"s{i:03d}" for i in subj]),
                         "item": pd.Categorical([f"i{i:02d}" for i in item])})


CASES = {
    "slopes": ("y ~ treat * time + age + (time | g)", slopes_data),
    "crossed": ("y ~ cond * load + z + (1 | subj) + (1 | item)", crossed_data),
}


def time_python(name: str, repeat: int) -> list[dict]:
    import mixedjax

    formula, make = CASES[name]
    df = make()
    m = mixedjax.lmer(formula, df)
    rows = []
    for ddf in ("Kenward-Roger", "Satterthwaite"):
        t0 = time.perf_counter()
        table = m.anova(type=3, ddf=ddf)
        first = time.perf_counter() - t0
        warm = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            m.anova(type=3, ddf=ddf)
            warm.append(time.perf_counter() - t0)
        rows.append({"data": name, "n": len(df), "method": ddf, "first_s": first,
                     "warm_s": statistics.median(warm), "terms": len(table),
                     "dendf": ", ".join(f"{v:.2f}" for v in table["DenDF"])})
    return rows


R_SCRIPT = r"""
suppressPackageStartupMessages(library(lmerTest))
args <- commandArgs(TRUE)
d <- read.csv(args[1], stringsAsFactors = TRUE)
m <- lmer(as.formula(args[2]), d, REML = TRUE)
t_sat <- system.time(a1 <- anova(m, type = 3, ddf = "Satterthwaite"))[["elapsed"]]
t_kr <- system.time(a2 <- anova(m, type = 3, ddf = "Kenward-Roger"))[["elapsed"]]
cat(sprintf("%.3f %.3f\n", t_sat, t_kr))
cat(paste(sprintf("%.2f", a2$DenDF), collapse = ", "), "\n")
"""


def time_r(name: str) -> dict | None:
    if shutil.which("Rscript") is None:
        return None
    formula, make = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.csv")
        script = os.path.join(tmp, "time.R")
        make().to_csv(data, index=False)
        Path(script).write_text(R_SCRIPT)
        out = subprocess.run(["Rscript", script, data, formula], capture_output=True,
                             text=True, check=False)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return None
    lines = out.stdout.strip().splitlines()
    sat, kr = (float(v) for v in lines[0].split())
    return {"Satterthwaite": sat, "Kenward-Roger": kr, "dendf": lines[1].strip()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--r", action="store_true", help="also time lmerTest/pbkrtest in R")
    ap.add_argument("--cold", action="store_true",
                    help="no persistent compilation cache (first calls compile)")
    args = ap.parse_args(argv)
    if args.cold:
        os.environ["MIXEDJAX_COMPILATION_CACHE"] = "0"   # read when mixedjax is imported
    rows = []
    for name in CASES:
        rows += time_python(name, args.repeat)
    table = pd.DataFrame(rows)
    ref = [PBKRTEST_SECONDS[r["data"]] if r["method"] == "Kenward-Roger" else np.nan
           for r in rows]
    table["R ref s"] = ref
    table["ratio"] = table["R ref s"] / table["warm_s"]
    if args.r:
        measured = {name: time_r(name) for name in CASES}
        table["R now s"] = [measured[r["data"]][r["method"]] if measured[r["data"]] else np.nan
                            for r in rows]
        table["R ratio"] = table["R now s"] / table["warm_s"]
        for name, res in measured.items():
            if res:
                print(f"R denominator df ({name}, Kenward-Roger): {res['dendf']}")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
