"""Fit-time benchmark for the bundled data sets, against lme4 when R is installed.

    python benchmarks/run.py [--repeat 20] [--cases sleepstudy_reml,...]

Columns (times in ms unless marked s):
  warm lmer      median of repeated ``mixedjax.lmer`` calls (formula, design, fit, result)
  warm fit       median of ``model.fit()`` on a built model (the compiled optimizer only)
  first fit      first ``lmer`` of the model in a running process: compile + fit, with
                 JAX's persistent cache off (true compile) and on (loaded from disk)
  fresh proc     a new Python process that imports mixedjax, fits and prints the summary
                 (cache warm, as on a user's machine after the first run)
  lme4           median ``lmer`` time in R (same data), and ``Rscript -e 'library(lme4);
                 lmer(...)'`` wall time for a fresh R process
  ratio          lme4 / mixedjax for warm fits and for fresh processes (> 1: mixedjax faster)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES_TSV = ROOT / "tests" / "reference" / "lme4_cases.tsv"
DATA_DIR = ROOT / "mixedjax" / "datasets"


def load_cases(selected):
    with open(CASES_TSV) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if selected:
        rows = [r for r in rows if r["case"] in selected]
    return rows


def prepare(case):
    import mixedjax

    df = mixedjax.datasets.load(case["data"])
    for col in case["factors"].split(","):
        df[col] = df[col].astype("category")
    return df


def time_warm(case, repeat):
    import mixedjax

    df = prepare(case)
    reml = case["reml"] == "TRUE"
    m = mixedjax.lmer(case["formula"], df, reml=reml)  # compile (or load) once
    t_lmer = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        m = mixedjax.lmer(case["formula"], df, reml=reml)
        t_lmer.append(time.perf_counter() - t0)
    model = m.model
    t_fit = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.fit()
        t_fit.append(time.perf_counter() - t0)
    return statistics.median(t_lmer), statistics.median(t_fit), m


def first_fit_subprocess(case, cache_dir):
    """Compile + fit of the first lmer call in an already running process."""
    code = f"""
import time, json, mixedjax, sys
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
from run import prepare
case = json.loads({json.dumps(json.dumps(case))})
df = prepare(case)
t0 = time.perf_counter()
m = mixedjax.lmer(case["formula"], df, reml=case["reml"] == "TRUE")
print(time.perf_counter() - t0)
"""
    env = dict(os.environ)
    if cache_dir is None:
        env["MIXEDJAX_COMPILATION_CACHE"] = "0"
    else:
        env["MIXEDJAX_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def fresh_process(case, cache_dir):
    code = (f"import mixedjax; df = mixedjax.datasets.load({case['data']!r}); "
            + "".join(f"df[{c!r}] = df[{c!r}].astype('category'); "
                      for c in case["factors"].split(","))
            + f"print(mixedjax.lmer({case['formula']!r}, df, reml={case['reml'] == 'TRUE'})"
            + ".summary())")
    env = dict(os.environ, MIXEDJAX_CACHE_DIR=cache_dir)
    walls = []
    for _ in range(3):     # median of 3, as for the fresh R process
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
cases <- read.delim(args[1], stringsAsFactors = FALSE)
repeat_n <- as.integer(args[3])
for (i in seq_len(nrow(cases))) {
  cs <- cases[i, ]
  d <- read.csv(file.path(args[2], paste0(cs$data, ".csv")))
  for (f in strsplit(cs$factors, ",")[[1]]) d[[f]] <- factor(d[[f]])
  reml <- cs$reml == "TRUE"
  fit <- function() suppressMessages(lmer(as.formula(cs$formula), d, REML = reml))
  m <- fit()
  ts <- replicate(repeat_n, system.time(fit())[["elapsed"]])
  cat(cs$case, median(ts), format(if (reml) REMLcrit(m) else deviance(m), digits = 15), "\n")
}
"""


def lme4_times(cases, repeat):
    if shutil.which("Rscript") is None:
        return {}, None
    check = subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True)
    if check.returncode != 0:
        return {}, None
    with tempfile.TemporaryDirectory() as tmp:
        tsv = Path(tmp) / "cases.tsv"
        with open(tsv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(cases[0]), delimiter="\t")
            w.writeheader()
            w.writerows(cases)
        script = Path(tmp) / "bench.R"
        script.write_text(R_SCRIPT)
        out = subprocess.run(["Rscript", str(script), str(tsv), str(DATA_DIR), str(repeat)],
                             capture_output=True, text=True, check=True)
    res = {}
    for line in out.stdout.splitlines():
        name, secs, obj = line.split()
        res[name] = (float(secs), float(obj))
    # A fresh R process fitting and printing sleepstudy, as in the issue's comparison.
    expr = ("library(lme4); print(summary(lmer(Reaction ~ Days + (Days | Subject), "
            "sleepstudy)))")
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(["Rscript", "-e", expr], capture_output=True, check=True)
        walls.append(time.perf_counter() - t0)
    return res, statistics.median(walls)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--cases", default="")
    ap.add_argument("--no-cold", action="store_true", help="skip the subprocess timings")
    args = ap.parse_args()
    cases = load_cases([c for c in args.cases.split(",") if c])

    import jax

    r_res, r_fresh = lme4_times(cases, max(3, args.repeat // 4))
    cache = tempfile.mkdtemp(prefix="mixedjax-bench-cache-")
    rows = []
    for case in cases:
        warm_lmer, warm_fit, m = time_warm(case, args.repeat)
        row = {"case": case["case"], "n": m.nobs, "q": sum(t.nlevels * t.k for t in m.model.design.terms),
               "iters": m.optinfo["iterations"], "objective": m.objective,
               "warm_lmer_ms": warm_lmer * 1e3, "warm_fit_ms": warm_fit * 1e3}
        if not args.no_cold:
            row["first_nocache_s"] = first_fit_subprocess(case, None)
            first_fit_subprocess(case, cache)  # populate the persistent cache
            row["first_cached_s"] = first_fit_subprocess(case, cache)
            row["fresh_proc_s"] = fresh_process(case, cache)
        if case["case"] in r_res:
            secs, obj = r_res[case["case"]]
            row["lme4_ms"] = secs * 1e3
            row["lme4_objective"] = obj
            row["ratio_warm"] = secs * 1e3 / row["warm_lmer_ms"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    shutil.rmtree(cache, ignore_errors=True)

    print(f"\nmixedjax benchmark: jax {jax.__version__}, device {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPU cores; times: median")
    head = (f"{'case':24s} {'n':>5s} {'q':>4s} {'it':>3s} {'objective':>14s} {'warm lmer':>10s} "
            f"{'warm fit':>9s} {'1st nocache':>11s} {'1st cached':>10s} {'fresh proc':>10s} "
            f"{'lme4':>8s} {'lme4 obj diff':>13s} {'ratio':>6s}")
    print(head)
    print("-" * len(head))
    fmt = lambda v, spec: format(v, spec) if v is not None else "-".rjust(int(spec.split('.')[0]))
    for r in rows:
        diff = (r["objective"] - r["lme4_objective"]) / abs(r["lme4_objective"]) \
            if "lme4_objective" in r else None
        print(f"{r['case']:24s} {r['n']:5d} {r['q']:4d} {r['iters']:3d} {r['objective']:14.6f} "
              f"{r['warm_lmer_ms']:8.2f}ms {r['warm_fit_ms']:7.2f}ms "
              f"{fmt(r.get('first_nocache_s'), '10.2f')}s {fmt(r.get('first_cached_s'), '9.2f')}s "
              f"{fmt(r.get('fresh_proc_s'), '9.2f')}s {fmt(r.get('lme4_ms'), '6.1f')}ms "
              f"{fmt(diff, '13.1e')} {fmt(r.get('ratio_warm'), '6.1f')}")
    if r_fresh is not None:
        ours = next((r.get("fresh_proc_s") for r in rows if r["case"] == "sleepstudy_reml"), None)
        line = f"\nfresh process, fit + print sleepstudy: Rscript+lme4 {r_fresh:.2f}s"
        if ours:
            line += f", mixedjax {ours:.2f}s (ratio {r_fresh / ours:.2f})"
        print(line)


if __name__ == "__main__":
    main()
