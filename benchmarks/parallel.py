"""Fits side by side: does a mixedjax fit slow down when another runs at the same time?

    python benchmarks/parallel.py [--family insteval] [--repeats 3] [--timeout 1800]
                                  [--env OPENBLAS_NUM_THREADS=1 --env ...]

For one family of ``benchmarks/designs.py`` (default insteval; its data generator and
formula), each repeat runs

  alone          one fresh Python process fitting the model, and
  side by side   two fresh Python processes fitting the same model, started together.

Each process imports numpy, pandas and mixedjax, reads the CSV, then waits at a
barrier: the parent tells all its processes to start ``mixedjax.lmer`` at the same
moment once every one is ready, so imports and data reading are excluded and the two
fits really overlap.  The same barrier precedes the second (warm) ``lmer`` call.
Shown: each process's first and warm fit seconds (median over ``--repeats``), and the
ratio side by side / alone (1: no interference; 2: the two fits share the machine as if
run one after the other).

The children inherit this environment (JAX's persistent compilation cache off, as in
designs.py) with no BLAS/OpenMP thread settings added, so what is measured is what
the library does by default; ``--env KEY=VALUE`` (repeatable) adds settings for both
the alone and the side-by-side children, e.g. ``--env OPENBLAS_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from designs import FAMILIES, child_env, python_cmd, run_children, write_data  # noqa: E402

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "XLA_FLAGS")


def parse_env(items: list[str]) -> dict:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="insteval", choices=list(FAMILIES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment setting for the children (repeatable)")
    ap.add_argument("--data-dir", default=None, help="keep the generated CSV here")
    args = ap.parse_args(argv)
    extra = parse_env(args.env)
    env = child_env(extra)
    repeats = max(args.repeats, 1)

    inherited = {k: os.environ[k] for k in THREAD_VARS if k in os.environ}
    print(f"family: {args.family} ({FAMILIES[args.family][1]}); CPU cores: {os.cpu_count()}; "
          f"repeats: {repeats}")
    print(f"--env: {extra or 'none'}; thread settings inherited from this shell: "
          f"{inherited or 'none'}\n", flush=True)

    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="mixedjax-parallel-")
    folder = Path(args.data_dir or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = write_data(args.family, folder)
        cmd = python_cmd(path, args.family, sync=True)
        runs = {"alone": [], "side by side": []}
        errors, objectives = [], set()
        for i in range(repeats):
            for label, k in (("alone", 1), ("side by side", 2)):
                print(f"[{label}] run {i + 1}/{repeats}", file=sys.stderr, flush=True)
                res = run_children([cmd] * k, env, args.timeout, sync_rounds=2)
                runs[label].append(res)
                for j, r in enumerate(res):
                    if "error" in r:
                        errors.append(f"{label} run {i + 1} process {j + 1}: {r['error']} "
                                      f"{r.get('detail', '')}".rstrip())
                    else:
                        objectives.add(round(r["objective"], 6))
    finally:
        if tmp is not None:
            tmp.cleanup()

    def times(label, key, proc=None):
        return [r[key] for res in runs[label] for j, r in enumerate(res)
                if "error" not in r and (proc is None or j == proc)]

    print("| run | process | " + " | ".join(f"repeat {i + 1} first s / warm s"
                                             for i in range(repeats)) + " |")
    print("|---|--:|" + "--:|" * repeats)
    for label, k in (("alone", 1), ("side by side", 2)):
        for j in range(k):
            cells = []
            for res in runs[label]:
                r = res[j]
                cells.append(r["error"] if "error" in r else f"{r['first']:.2f} / {r['warm']:.2f}")
            print(f"| {label} | {j + 1} | " + " | ".join(cells) + " |")

    print("\n| | first s | warm s |\n|---|--:|--:|")
    print(f"| alone | {fmt(times('alone', 'first'))} | {fmt(times('alone', 'warm'))} |")
    for j in range(2):
        print(f"| side by side, process {j + 1} | {fmt(times('side by side', 'first', j))} | "
              f"{fmt(times('side by side', 'warm', j))} |")
    print(f"| side by side, both | {fmt(times('side by side', 'first'))} | "
          f"{fmt(times('side by side', 'warm'))} |")
    ratios = []
    for key in ("first", "warm"):
        alone, both = times("alone", key), times("side by side", key)
        ratios.append(f"{statistics.median(both) / statistics.median(alone):.2f}"
                      if alone and both else "-")
    print(f"| ratio side by side / alone | {ratios[0]} | {ratios[1]} |")
    print("\n(medians over repeats; 'both': over the two processes of every repeat)")
    if len(objectives) > 1:
        print(f"objectives differ between processes: {sorted(objectives)}")
    if errors:
        print("failures:\n" + "\n".join(f"  {e}" for e in errors))


if __name__ == "__main__":
    main()
