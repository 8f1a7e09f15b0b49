"""Parametric-bootstrap benchmark: batched refits against lme4's ``bootMer``.

    python benchmarks/bootstrap.py [--nsim 10000] [--repeat 3] [--r-nsim 200]
    python benchmarks/bootstrap.py --gpu-scale        # 1,000,000 sleepstudy replicates

Rows: sleepstudy ``Reaction ~ Days + (Days | Subject)`` and Penicillin
``diameter ~ 1 + (1 | plate) + (1 | sample)`` (crossed).  Columns:

  warm s       median wall time of ``fit.bootstrap(nsim, key)`` (simulation, all refits,
               summaries) once compiled, ``jax.block_until_ready`` inside
  first s      the same call in a fresh process with JAX's compilation cache off
               (compile included)
  cached s     the same in a fresh process whose persistent compilation cache was
               filled by an earlier process (the usual case after a first run)
  reps/s       replicates per second, warm
  lme4 s       ``bootMer`` time for ``--r-nsim`` replicates, scaled to ``nsim``
               (when Rscript with lme4 is installed)
  ratio        lme4 / mixedjax (warm)

On a single CPU device the refits run in one lane thread per CPU
(``MIXEDJAX_LANE_THREADS=n`` sets the count; see ``mixedjax/threads.py``).

The ``--gpu-scale`` run fits 1,000,000 sleepstudy replicates (chunked, sharded over
every device) and prints the time and replicates per second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "mixedjax" / "datasets"
CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
}


def warm_seconds(name: str, nsim: int, repeat: int) -> tuple[float, int]:
    import mixedjax

    formula, data = CASES[name]
    fit = mixedjax.lmer(formula, mixedjax.datasets.load(data))
    fit.bootstrap(nsim, key=0, progress=False)          # compile (or load) once
    times, failed = [], 0
    for r in range(repeat):
        t0 = time.perf_counter()
        boot = fit.bootstrap(nsim, key=r + 1, progress=False)
        times.append(time.perf_counter() - t0)
        failed = boot.n_failed
    return statistics.median(times), failed


def first_call_seconds(name: str, nsim: int, cache_dir: str | None) -> float:
    """``bootstrap`` in a fresh process: with the persistent compilation cache off
    (``cache_dir=None``: a true compile) or in ``cache_dir``."""
    formula, data = CASES[name]
    code = textwrap.dedent(f"""
        import time, mixedjax
        fit = mixedjax.lmer({formula!r}, mixedjax.datasets.load({data!r}))
        t0 = time.perf_counter()
        fit.bootstrap({nsim}, key=0, progress=False)
        print(time.perf_counter() - t0)
    """)
    env = dict(os.environ)
    if cache_dir is None:
        env["MIXEDJAX_COMPILATION_CACHE"] = "0"
    else:
        env["MIXEDJAX_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages(library(lme4))
data_dir <- args[1]; nsim <- as.integer(args[2])
stat <- function(m) c(getME(m, "theta"), fixef(m), sigma(m))
run <- function(formula, file, factors) {
  d <- read.csv(file.path(data_dir, file))
  for (f in factors) d[[f]] <- factor(d[[f]])
  m <- lmer(formula, d)
  set.seed(1)
  t <- system.time(bootMer(m, stat, nsim = nsim))[["elapsed"]]
  cat(t, "\n")
}
run(Reaction ~ Days + (Days | Subject), "sleepstudy.csv", "Subject")
run(diameter ~ 1 + (1 | plate) + (1 | sample), "penicillin.csv", c("plate", "sample"))
"""


def lme4_seconds(r_nsim: int) -> dict[str, float] | None:
    """bootMer wall time for ``r_nsim`` replicates per case (None without R/lme4)."""
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "boot.R"
        script.write_text(R_SCRIPT)
        out = subprocess.run(["Rscript", str(script), str(DATA_DIR), str(r_nsim)],
                             capture_output=True, text=True)
    if out.returncode != 0:
        return None
    values = [float(x) for x in out.stdout.split()]
    return dict(zip(CASES, values))


def gpu_scale(nsim: int = 1_000_000) -> None:
    import jax

    import mixedjax

    fit = mixedjax.lmer(CASES["sleepstudy"][0], mixedjax.datasets.load("sleepstudy"))
    fit.bootstrap(1000, key=0, progress=False)
    t0 = time.perf_counter()
    boot = fit.bootstrap(nsim, key=1, progress=True)
    seconds = time.perf_counter() - t0
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"sleepstudy bootstrap, {nsim:,} replicates: {seconds:.1f} s, "
          f"{nsim / seconds:,.0f} replicates/s, {boot.n_failed} not converged")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nsim", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--r-nsim", type=int, default=200)
    parser.add_argument("--no-first", action="store_true", help="skip the fresh-process run")
    parser.add_argument("--gpu-scale", action="store_true",
                        help="fit 1,000,000 sleepstudy replicates and report the rate")
    parser.add_argument("--gpu-nsim", type=int, default=1_000_000,
                        help="replicates for --gpu-scale")
    args = parser.parse_args(argv)
    if args.gpu_scale:
        gpu_scale(args.gpu_nsim)
        return
    r_times = lme4_seconds(args.r_nsim)
    header = (f"{'case':12s} {'nsim':>7s} {'warm s':>8s} {'first s':>8s} {'cached s':>9s} "
              f"{'reps/s':>9s} {'lme4 s':>9s} {'ratio':>7s}")
    rows = []
    for name in CASES:
        warm, failed = warm_seconds(name, args.nsim, args.repeat)
        first = cached = float("nan")
        if not args.no_first:
            first = first_call_seconds(name, args.nsim, None)
            with tempfile.TemporaryDirectory() as cache:
                first_call_seconds(name, args.nsim, cache)       # fills the cache
                cached = first_call_seconds(name, args.nsim, cache)
        lme4 = float("nan") if r_times is None else r_times[name] * args.nsim / args.r_nsim
        rows.append(f"{name:12s} {args.nsim:7d} {warm:8.2f} {first:8.2f} {cached:9.2f} "
                    f"{args.nsim / warm:9.0f} {lme4:9.1f} {lme4 / warm:7.0f}"
                    + (f"   ({failed} not converged)" if failed else ""))
    print(header)
    print("\n".join(rows))
    if r_times is not None:
        print(f"lme4: bootMer with {args.r_nsim} replicates, scaled to {args.nsim}")


if __name__ == "__main__":
    main()
