"""Throughput of ``ccdino batch`` on a local Dask cluster of 1 and 2 worker processes, default model.

    python benchmarks/bench_batch_dask.py [--studies N] [--slices N] [--matrix N] [--workers 1 2 ...]
        [--device cpu|auto] [--keep DIR]

What it measures, side by side in one run:

* studies per minute of ``run_batch`` on a local cluster of 1 and of 2 worker processes
  (``batch_dask.local_cluster``, what ``ccdino batch --workers N`` starts; N = 1 is forced
  onto the cluster here, the command would score in its own process), with the default
  model: once counting the batch alone (from the first study submitted to the summary; the
  workers' model loads included) and once counting the cluster's start too (what one
  command costs);
* the model's load per worker process (``import torch`` and the bundle; each worker loads it
  once, with its first study, see ``batch_dask.worker_model_info``) against the mean time
  of one study (reading, the AI pipeline, scoring and the three output files: the rows'
  ``seconds``), and their ratio: how many studies one model load costs.

The studies are synthetic (``generate_study``, seeds 1..N, ``--matrix`` pixels square,
``--slices`` slices, written as uncompressed NRRD), generated once and scored by every
cluster size into its own output folder. Each worker process gets PyTorch threads = CPUs /
workers, so on a 2-CPU machine 2 workers split the same 2 CPUs: the figures show what a
second process adds there (overlap of I/O and single-threaded steps), not what a second
machine would. Timings share the CPU with whatever else runs: the load average is printed
before and after. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CoronaryCalciumDINO"))


def make_studies(folder: Path, n: int, matrix: int, slices: int) -> None:
    from CoronaryCalciumDINOLib.io.volume import write_volume
    from CoronaryCalciumDINOLib.synth import generate_study

    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for seed in range(1, n + 1):
        st = generate_study(seed, matrix=matrix, n_slices=slices)
        write_volume(st.ct.hu.astype("int16"), st.ct, folder / f"study-{seed:03d}.nrrd", compress=False)
    print(f"{n} synthetic studies of {slices} x {matrix} x {matrix} generated in {time.perf_counter() - t:.1f} s")


def run_on(n_workers: int, inp: Path, out: Path, device: str) -> dict:
    from distributed import Client

    from CoronaryCalciumDINOLib.batch import run_batch
    from CoronaryCalciumDINOLib.batch_dask import local_cluster, worker_model_info

    t0 = time.perf_counter()
    cluster = local_cluster(n_workers)
    client = Client(cluster)
    started = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        rows = run_batch(inp, out, scheduler=client, device=device)
        batch_s = time.perf_counter() - t1
        info = list(client.run(worker_model_info).values())
    finally:
        client.close()
        cluster.close()
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} studies failed, e.g. {failed[0]['study']}: {failed[0]['error']}")
    loads = [i["load_s"] for i in info if i["load_s"] is not None]
    return {
        "workers": n_workers,
        "studies": len(rows),
        "start_s": started,
        "batch_s": batch_s,
        "study_s": statistics.mean(float(r["seconds"]) for r in rows),
        "load_s": statistics.mean(loads) if loads else float("nan"),
        "loads": len(loads),
        "threads": sorted({i["threads"] for i in info}),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="keep the studies and outputs in this folder")
    args = ap.parse_args(argv)

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs"
          " (the machine may be shared: timings grow with its load)")
    work = Path(tempfile.mkdtemp(prefix="ccdino-bench-dask-")) if args.keep is None else args.keep
    try:
        make_studies(work / "in", args.studies, args.matrix, args.slices)
        results = [run_on(n, work / "in", work / f"out-{n}", args.device) for n in args.workers]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nccdino batch on a local Dask cluster, default model, device {args.device}, {args.studies} studies:")
    print(f"  {'workers':>7} {'torch thr':>9} {'cluster start':>13} {'batch':>8} {'studies/min':>11} "
          f"{'incl. start':>11} {'model load/worker':>17} {'one study':>9} {'load/study':>10}")
    for r in results:
        per_min = 60 * r["studies"] / r["batch_s"]
        with_start = 60 * r["studies"] / (r["batch_s"] + r["start_s"])
        print(f"  {r['workers']:>7} {','.join(map(str, r['threads'])):>9} {r['start_s']:>11.1f} s {r['batch_s']:>6.1f} s "
              f"{per_min:>11.1f} {with_start:>11.1f} {r['load_s']:>15.2f} s {r['study_s']:>7.2f} s "
              f"{r['load_s'] / r['study_s']:>9.1f}x")
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            print(f"  {r['workers']} workers / {base['workers']}: "
                  f"{base['batch_s'] / r['batch_s']:.2f}x the studies per minute")
    print("  (model load/worker: mean over the workers, each loaded once; one study: mean of the rows' seconds; "
          "load/study: how many studies one load costs)")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
