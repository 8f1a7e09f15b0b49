"""Design sweep: first and warm fit times of mixedjax and lme4 over ten model families.

    python benchmarks/designs.py [--only vcomp,maximal,...] [--repeats 3] [--no-r]
                                 [--r-movielens] [--timeout 1800] [--data-dir DIR]

Families (data from ``benchmarks/data.py``, deterministic seeds; grouping columns are
categoricals in Python and factors in R):

  vcomp           y ~ x1 + x2 + (0 + z1 + z2 | groups) + (1 | v1) + (1 | v2)      1,600
  nested          y ~ x + (1 | a/b)                                               40,000
  nested_slopes   y ~ x + (1 + x | a) + (1 | a:b)                                  8,000
  three_level     y ~ x + (1 | a/b/c)                                              6,000
  maximal         y ~ c1 + c2 + c3 + (1 + c1 + c2 + c3 | subj)
                      + (1 + c1 + c2 + c3 | item)                                  1,792
  crossed_slopes  y ~ x + (1 + x | subj) + (1 + x | item)                         20,000
  longitudinal    y ~ t + (1 + t | id)                                           100,000
  growth          y ~ t + (1 + t | school) + (1 + t | school:student)             20,000
  insteval        large.py's insteval_1 model on data.insteval_like()             73,421
  movielens       large.py's movielens model on data.movielens_like()          1,000,209

Each family's data are written once to a CSV in a temporary folder.  Every
measurement is a fresh process (``--repeats`` of them per side, default 3; each
column shows the median), which prints one JSON line that this script parses:

  mixedjax first  ``mixedjax.lmer(formula, data)`` (REML: building the LMM and fitting)
                  in a new Python process, timed after ``import numpy, pandas,
                  mixedjax`` and after reading the CSV (JAX's persistent compilation
                  cache off, as in large.py, so nothing is loaded from an earlier run)
  mixedjax warm   a second ``lmer`` call on the same data in that process
  lme4 first      ``lmer()`` in a new ``Rscript``, timed after ``library(lme4)`` and
                  reading the CSV;  lme4 warm: a second ``lmer()`` in that process
  ratio           lme4 / mixedjax (> 1: mixedjax faster)
  rel obj diff    (mixedjax objective - lme4's REML criterion) / |lme4's|
                  (< 0: mixedjax found a lower criterion)
  converged       mixedjax's ``m.converged``

lme4 runs when ``Rscript`` and lme4 are installed, except on movielens (over ten
minutes) unless ``--r-movielens``.  A child that fails or runs past ``--timeout``
seconds is shown as such in its cells; the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
from large import FACTORS, MODELS  # noqa: E402

# name: (generator in data.py, formula, grouping columns, rows)
FAMILIES = {
    "vcomp": ("vcomp_like", "y ~ x1 + x2 + (0 + z1 + z2 | groups) + (1 | v1) + (1 | v2)",
              ["groups", "v1", "v2"], 1_600),
    "nested": ("nested_like", "y ~ x + (1 | a/b)", ["a", "b"], 40_000),
    "nested_slopes": ("nested_slopes_like", "y ~ x + (1 + x | a) + (1 | a:b)", ["a", "b"],
                      8_000),
    "three_level": ("three_level_like", "y ~ x + (1 | a/b/c)", ["a", "b", "c"], 6_000),
    "maximal": ("maximal_like",
                "y ~ c1 + c2 + c3 + (1 + c1 + c2 + c3 | subj) + (1 + c1 + c2 + c3 | item)",
                ["subj", "item"], 1_792),
    "crossed_slopes": ("crossed_slopes_like", "y ~ x + (1 + x | subj) + (1 + x | item)",
                       ["subj", "item"], 20_000),
    "longitudinal": ("longitudinal_like", "y ~ t + (1 + t | id)", ["id"], 100_000),
    "growth": ("growth_like", "y ~ t + (1 + t | school) + (1 + t | school:student)",
               ["school", "student"], 20_000),
    "insteval": ("insteval_like", MODELS["insteval_1"][1], FACTORS["insteval"], 73_421),
    "movielens": ("movielens_like", MODELS["movielens"][1], FACTORS["movielens"], 1_000_209),
}

# With "1" as its 4th argument the child prints "ready" before each of its two fits
# and waits for a line on stdin, so that parallel.py can start fits side by side.
PY_FIT = r"""
import json, sys, time
import numpy, pandas as pd, mixedjax
path, formula, factors, sync = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
df = pd.read_csv(path)
for col in factors:
    df[col] = df[col].astype("category")
times = []
for i in range(2):
    if sync == "1":
        print("ready", flush=True)
        sys.stdin.readline()
    t0 = time.perf_counter()
    m = mixedjax.lmer(formula, df)
    times.append(time.perf_counter() - t0)
    if i == 0:
        first = m
print(json.dumps({"first": times[0], "warm": times[1], "objective": float(first.objective),
                  "converged": bool(first.converged), "n": int(first.nobs),
                  "jax_imported": "jax" in sys.modules}), flush=True)
"""

R_FIT = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
df <- read.csv(args[1])
for (col in strsplit(args[3], ",")[[1]]) df[[col]] <- factor(df[[col]])
f <- as.formula(args[2])
t1 <- system.time(m <- lmer(f, df))[["elapsed"]]
t2 <- system.time(m2 <- lmer(f, df))[["elapsed"]]
cat(sprintf(paste0('{"first": %.6f, "warm": %.6f, "objective": %.15g, "singular": %s, ',
                   '"conv_messages": %d}\n'), t1, t2, REMLcrit(m), tolower(isSingular(m)),
            length(m@optinfo$conv$lme4$messages)))
"""


def write_data(family: str, folder: Path) -> Path:
    """The family's data as ``folder/<family>.csv`` (generated once)."""
    path = Path(folder) / f"{family}.csv"
    if not path.exists():
        getattr(data, FAMILIES[family][0])().to_csv(path, index=False)
    return path


def child_env(extra: dict | None = None) -> dict:
    """The children's environment: ours, JAX's persistent cache off, plus ``extra``."""
    return {**os.environ, "MIXEDJAX_COMPILATION_CACHE": "0", **(extra or {})}


def python_cmd(path: Path, family: str, sync: bool = False) -> list[str]:
    _, formula, factors, _ = FAMILIES[family]
    return [sys.executable, "-c", PY_FIT, str(path), formula, ",".join(factors),
            "1" if sync else "0"]


def r_cmd(path: Path, family: str) -> list[str]:
    _, formula, factors, _ = FAMILIES[family]
    return ["Rscript", "-e", R_FIT, str(path), formula, ",".join(factors)]


def _kill(proc: subprocess.Popen) -> None:
    """Kill the child and anything it started (each child leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _result(lines: list[str], stderr: str, returncode: int | None) -> dict:
    """The child's last JSON line, or an ``error`` entry saying why there is none."""
    for line in reversed(lines):
        if line.lstrip().startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = [s for s in stderr.strip().splitlines() if s.strip()][-1:]
    return {"error": f"failed (rc {returncode})", "detail": tail[0][:200] if tail else ""}


def run_children(cmds: list[list[str]], env: dict, timeout: float,
                 sync_rounds: int = 0) -> list[dict]:
    """Start the commands at once, each in its own session, and return each one's JSON
    result (or ``{"error": ...}``).  With ``sync_rounds`` > 0 each child prints "ready"
    that many times and waits; all are told to go when all are ready (a barrier)."""
    deadline = time.monotonic() + timeout
    errs = [tempfile.TemporaryFile(mode="w+") for _ in cmds]
    stdin = subprocess.PIPE if sync_rounds else subprocess.DEVNULL
    procs = [subprocess.Popen(c, stdin=stdin, stdout=subprocess.PIPE, stderr=e,
                              text=True, env=env, start_new_session=True)
             for c, e in zip(cmds, errs)]
    lines: list[list[str]] = [[] for _ in cmds]
    eof = [False] * len(cmds)
    queues = [queue.Queue() for _ in cmds]

    def reader(i):
        for line in procs[i].stdout:
            queues[i].put(line.rstrip("\n"))
        queues[i].put(None)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(len(cmds))]
    for t in threads:
        t.start()

    def next_line(i):
        line = queues[i].get(timeout=max(deadline - time.monotonic(), 0.01))
        if line is None:
            eof[i] = True
        else:
            lines[i].append(line)
        return line

    failure = None
    try:
        for _ in range(sync_rounds):
            for i in range(len(cmds)):
                while (line := next_line(i)) not in ("ready", None):
                    pass
                if line is None:
                    raise EOFError
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
        for i in range(len(cmds)):
            while next_line(i) is not None:
                pass
    except queue.Empty:
        failure = "timeout"
    except (EOFError, BrokenPipeError):
        failure = "failed"
    results = []
    for p, e, t, out, done in zip(procs, errs, threads, lines, eof):
        if failure and not done and p.poll() is None:   # the others would wait for a "go" or run on
            _kill(p)
            results.append({"error": f"timeout ({timeout:.0f} s)" if failure == "timeout"
                            else "stopped (another child failed)"})
        else:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                _kill(p)
            t.join(timeout=5)
            e.seek(0)
            results.append(_result(out, e.read(), p.returncode))
        e.close()
    return results


def run_one(cmd: list[str], env: dict, timeout: float) -> dict:
    return run_children([cmd], env, timeout)[0]


def r_available() -> str | None:
    """lme4's version when ``Rscript`` can load it, else None."""
    if shutil.which("Rscript") is None:
        return None
    out = subprocess.run(["Rscript", "-e", "cat(as.character(packageVersion('lme4')))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def summarize(runs: list[dict]) -> dict:
    """Medians of the successful runs' times; the first success's other fields; the
    failures' count and first error."""
    ok = [r for r in runs if "error" not in r]
    bad = [r for r in runs if "error" in r]
    if not ok:
        return {"error": bad[0]["error"] if bad else "not run", "failed": len(bad),
                "detail": bad[0].get("detail", "") if bad else ""}
    out = {**ok[0], "first": statistics.median(r["first"] for r in ok),
           "warm": statistics.median(r["warm"] for r in ok), "ok": len(ok), "failed": len(bad)}
    if bad:
        out["partial_error"] = bad[0]["error"]
    return out


def _secs(res: dict | None, key: str, missing: str = "-") -> str:
    if res is None:
        return missing
    if "error" in res:
        return res["error"]
    return f"{res[key]:.2f}"


def row(family: str, py: dict, r: dict | None, r_missing: str) -> str:
    both = py is not None and r is not None and "error" not in py and "error" not in r
    ratio_first = f"{r['first'] / py['first']:.2f}" if both else "-"
    ratio_warm = f"{r['warm'] / py['warm']:.2f}" if both else "-"
    diff = (f"{(py['objective'] - r['objective']) / abs(r['objective']):.1e}" if both
            else "-")
    conv = str(py["converged"]) if "error" not in py else "-"
    n = py.get("n", FAMILIES[family][3])
    cells = [family, f"{n:,}", _secs(py, "first"), _secs(py, "warm"),
             _secs(r, "first", r_missing), _secs(r, "warm", r_missing), ratio_first, ratio_warm,
             diff, conv]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| family | n | mixedjax first s | mixedjax warm s | lme4 first s | lme4 warm s "
          "| ratio first | ratio warm | rel obj diff | converged |\n"
          "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated families (default: all)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per side")
    ap.add_argument("--no-r", action="store_true", help="skip lme4 even if R is installed")
    ap.add_argument("--r-movielens", action="store_true", help="also run lme4 on movielens")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    ap.add_argument("--data-dir", default=None, help="keep the generated CSVs here")
    args = ap.parse_args(argv)
    families = [f for f in args.only.split(",") if f] or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    repeats = max(args.repeats, 1)

    lme4 = None if args.no_r else r_available()
    r_note = ("skipped (--no-r)" if args.no_r else
              f"yes (lme4 {lme4})" if lme4 else "no (Rscript with lme4 not found)")
    print(f"CPU cores: {os.cpu_count()}; R available: {r_note}; repeats: {repeats} fresh "
          f"processes per side (median shown)\n", flush=True)

    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="mixedjax-designs-")
    folder = Path(args.data_dir or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    env = child_env()
    notes = []
    print(HEADER, flush=True)
    try:
        for fam in families:
            print(f"[{fam}] writing data", file=sys.stderr, flush=True)
            path = write_data(fam, folder)
            py_runs = []
            for i in range(repeats):
                print(f"[{fam}] mixedjax run {i + 1}/{repeats}", file=sys.stderr, flush=True)
                py_runs.append(run_one(python_cmd(path, fam), env, args.timeout))
            py = summarize(py_runs)
            r, r_missing = None, "-"
            if lme4 and (fam != "movielens" or args.r_movielens):
                r_runs = []
                for i in range(repeats):
                    print(f"[{fam}] lme4 run {i + 1}/{repeats}", file=sys.stderr, flush=True)
                    r_runs.append(run_one(r_cmd(path, fam), env, args.timeout))
                r = summarize(r_runs)
            elif lme4:
                r_missing = "skipped"
            print(row(fam, py, r, r_missing), flush=True)
            for side, res in (("mixedjax", py), ("lme4", r)):
                if res is None:
                    continue
                if res.get("failed"):
                    err = res.get("error") or res.get("partial_error")
                    notes.append(f"{fam}: {res['failed']}/{repeats} {side} runs failed ({err}) "
                                 f"{res.get('detail', '')}".rstrip())
                if side == "lme4" and "error" not in res and (res["singular"]
                                                              or res["conv_messages"]):
                    notes.append(f"{fam}: lme4 singular={res['singular']}, "
                                 f"{res['conv_messages']} convergence message(s)")
    finally:
        if tmp is not None:
            tmp.cleanup()
    print("\nformulas:")
    for fam in families:
        print(f"  {fam}: {FAMILIES[fam][1]}")
    if notes:
        print("\nnotes:\n" + "\n".join(f"  {s}" for s in notes))


if __name__ == "__main__":
    main()
