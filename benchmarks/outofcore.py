"""A crossed ratings model fitted from parquet files through a Dask cluster.

    python benchmarks/outofcore.py [--rows 20000000,2000000] [--users 50000]
                                   [--items 500] [--files 40] [--worker-memory 1GiB]
                                   [--compare 2000000] [--dir DIR]

For each size in ``--rows`` a ratings data set (``--users`` x ``--items``, skewed
counts: user activity log-normal, item popularity Zipf-like) is written as
``--files`` parquet files, and ``rating ~ 1 + (1|user) + (1|item)`` is fitted with
``mixedjax.outofcore.lmer`` through a ``LocalCluster`` of 2 worker processes (one
thread each, ``--worker-memory`` each), in a fresh process per size.

The default is 500 items.  With ``--items 5000`` the item term's coupling to the
users is kept dense (the layout an in-memory fit of the same rows gets too): about
5e12 flops per evaluation of the criterion and its gradient, 2 GB per copy of the
coupling on the client (about 4 minutes and 7 GiB for a fit on 2 cores); with ``--no-fit`` it
stops after the passes and the model's assembly on the client (the passes and
memory of that size, without the optimization).

  rows         ratings
  coupling     where the item term sits in the factor's layout: "border" (a dense
               block, the coupling to the users dense by level), "dense" (a middle
               cluster whose coupling to the users is kept dense) or the number of
               sparse coupling entries (distinct (user, item) pairs)
  passes s     the three passes over the files (levels, R of [X y], cross-products) and
               the model's assembly on the client
  fit s        the optimization on the client
  client GiB   peak resident memory of the client process (it runs the scheduler too)
  workers GiB  peak resident memory of each worker process
  objective    REML criterion; the size given by ``--compare`` is also fitted in
               memory (``mixedjax.lmer`` on the concatenated files, fresh process)
               and the differences shown
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "rating ~ 1 + (1|user) + (1|item)"

DASK_FIT = r"""
import json, resource, sys, time, warnings
folder, formula, memory, do_fit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "fit"
import dask.dataframe as dd
from dask.distributed import Client, LocalCluster
import mixedjax.outofcore as oc

def peak():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=memory, processes=True,
                  dashboard_address=None, host="127.0.0.1") as cluster, Client(cluster) as client:
    t0 = time.perf_counter()
    ddf = dd.read_parquet(folder)
    model = oc.partitioned_model(formula, ddf)
    t1 = time.perf_counter()
    fit = model.fit() if do_fit else None
    t2 = time.perf_counter()
    workers = sorted(client.run(peak).values())
out = ({"fit": t2 - t1, "objective": fit.objective, "theta": fit.theta.tolist(),
        "beta": fit.fixef.tolist(), "iterations": fit.optinfo["iterations"],
        "converged": fit.converged} if do_fit else {})
print(json.dumps({"passes": t1 - t0, **out, "n": model.design.n,
                  "coupling": ("border" if model.structure.border else
                               "dense" if model.structure.dense_coupling else
                               f"{len(model.blocks.ent_a):,}"),
                  "client_gib": peak(), "workers_gib": workers}))
"""

MEMORY_FIT = r"""
import json, resource, sys, time
import pandas as pd
import mixedjax
folder, formula = sys.argv[1], sys.argv[2]
df = pd.read_parquet(folder)
t0 = time.perf_counter()
fit = mixedjax.lmer(formula, df)
print(json.dumps({"seconds": time.perf_counter() - t0, "objective": fit.objective,
                  "theta": fit.theta.tolist(), "beta": fit.fixef.tolist(),
                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def write_ratings(folder: Path, rows: int, users: int, items: int, files: int,
                  seed: int = 2024) -> None:
    """``files`` parquet files of ``rows`` ratings in all, written file by file (the
    whole data set is never in memory)."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.2, users)
    activity /= activity.sum()
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())
    u_eff, i_eff = 0.4 * rng.standard_normal(users), 0.6 * rng.standard_normal(items)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = np.diff(np.linspace(0, rows, files + 1).astype(np.int64))
    for f, size in enumerate(sizes):
        u = rng.choice(users, size, p=activity).astype(np.int32)
        i = rng.choice(items, size, p=popularity).astype(np.int32)
        rating = 3.5 + u_eff[u] + i_eff[i] + 0.9 * rng.standard_normal(size)
        pd.DataFrame({"user": u, "item": i, "rating": rating}).to_parquet(
            folder / f"part{f:03d}.parquet", index=False)


def run(code: str, *args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MIXEDJAX_COMPILATION_CACHE="0")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="20000000,2000000")
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--worker-memory", default="1GiB")
    ap.add_argument("--compare", type=int, default=2_000_000,
                    help="the size also fitted in memory (0: none)")
    ap.add_argument("--dir", default=None, help="folder for the parquet files (kept)")
    ap.add_argument("--no-fit", action="store_true",
                    help="the passes and the model on the client only (no optimization, no "
                         "in-memory comparison): the memory figures of a size whose fit is "
                         "too slow for the machine")
    a = ap.parse_args()
    sizes = [int(float(s)) for s in a.rows.split(",")]
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="mixedjax-ooc-"))
    results = []
    try:
        for rows in sizes:
            folder = base / f"ratings_{rows}"
            if not folder.exists():
                write_ratings(folder, rows, a.users, a.items, a.files)
            res = run(DASK_FIT, str(folder), FORMULA, a.worker_memory,
                      "nofit" if a.no_fit else "fit")
            if rows == a.compare and not a.no_fit:
                res["memory"] = run(MEMORY_FIT, str(folder), FORMULA)
            results.append((rows, res))
            print(json.dumps({"rows": rows, **res}), file=sys.stderr)
    finally:
        if not a.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{FORMULA}: {a.users:,} users x {a.items:,} items, {a.files} parquet files, "
          f"LocalCluster(2 workers x 1 thread, {a.worker_memory} each)\n")
    head = (f"{'rows':>11} {'coupling':>11} {'passes s':>9} {'fit s':>7} {'client GiB':>10} "
            f"{'workers GiB':>12} {'objective':>18} {'|d obj| mem':>11} {'|d theta|':>9}")
    print(head)
    print("-" * len(head))
    for rows, r in results:
        if "error" in r:
            print(f"{rows:>11,} failed: {r['error']}")
            continue
        mem = r.get("memory", {})
        dobj = (f"{abs(r['objective'] - mem['objective']):.1e}" if "objective" in mem
                else "-")
        dth = (f"{np.max(np.abs(np.subtract(r['theta'], mem['theta']))):.1e}"
               if "theta" in mem else "-")
        workers = "/".join(f"{w:.2f}" for w in r["workers_gib"])
        fit = f"{r['fit']:>7.1f}" if "fit" in r else f"{'-':>7}"
        obj = f"{r['objective']:>18.6f}" if "objective" in r else f"{'-':>18}"
        print(f"{rows:>11,} {r['coupling']:>11} {r['passes']:>9.1f} {fit} "
              f"{r['client_gib']:>10.2f} {workers:>12} {obj} {dobj:>11} {dth:>9}")
        if "seconds" in mem:
            print(f"{'':>11} in memory: {mem['seconds']:.1f} s, peak {mem['peak_gib']:.2f} GiB")
    done = sorted((rows, r) for rows, r in results if "client_gib" in r)
    if len(done) > 1:
        (small, rs), (big, rb) = done[0], done[-1]
        print(f"\nclient peak at {big:,} rows / at {small:,} rows: "
              f"{rb['client_gib'] / rs['client_gib']:.2f}")


if __name__ == "__main__":
    main()
