"""Cold start and total of the scoring command on a 512 x 512 x 60 study, AI and ``--labels``.

    python benchmarks/bench_cold_start.py [--study DIR] [--seed S] [--slices N] [--repeat N]
        [--format nrrd|dicom|both] [--device cpu|auto] [--keep DIR] [--baseline REV]

What it measures (the targets of the Slicer module's Compute, which runs this command in
its own process, so that every Compute pays the command's start-up):

* ``ccdino score CT --out DIR --progress-lines`` (the AI), launched as a new process: the
  time from the launch to each of its progress lines, the *cold start* being the launch to
  the line that reports the candidates (the first candidate found; target <= 2 s), and the
  total to the end of the process (target <= 5 s);
* ``ccdino score CT --labels LABELS`` (scoring given labels, no AI) of the same study: the
  total, side by side;
* what the AI's imports cost on their own, each in a fresh process: ``import torch`` (all
  that loading a bundle of the supported networks imports: :mod:`CoronaryCalciumDINOLib.models.plain`),
  then with ``timm`` and ``monai.networks.nets`` (what training, and a bundle of other
  networks, import).

The study is synthetic (``CoronaryCalciumDINOLib.synth.generate_study``, ``--seed``,
``--slices`` slices of 512 x 512; the default seed holds coronary calcium) unless ``--study``
names a study folder (``ct.nrrd`` + ``labels.nrrd``, as ``ccdino synth`` writes). The CT is
given as NRRD (uncompressed int16, what the module writes) and/or as a DICOM series (``--format``; the series
is written as ``benchmarks/bench_pipeline.py`` writes one). Best and median of ``--repeat``
runs are printed; targets are printed as PASS/FAIL lines, never asserted.

Timings share the CPU with whatever else runs on the machine: the load average is printed
before and after; compare runs only at a similar load. ``--baseline REV`` compares two
versions in one run: the command of git revision REV (its ``CoronaryCalciumDINO`` folder,
exported with ``git archive`` into the work folder) runs alternately with this tree's, and
both are printed side by side with the ratio of their medians.
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

ROOT = Path(__file__).resolve().parents[1]
LIB_PARENT = ROOT / "CoronaryCalciumDINO"
sys.path.insert(0, str(LIB_PARENT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_FIRST_CANDIDATE_S = 2.0
TARGET_TOTAL_S = 5.0
#: A seed whose 60-slice study holds coronary calcium.
DEFAULT_SEED = 3


def _env(lib_parent: Path = LIB_PARENT) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(lib_parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def make_study(folder: Path, seed: int, slices: int) -> Path:
    from CoronaryCalciumDINOLib.io.volume import write_volume
    from CoronaryCalciumDINOLib.synth import generate_study

    t = time.perf_counter()
    st = generate_study(seed, matrix=512, n_slices=slices)
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(st.ct.hu.astype("int16"), st.ct, folder / "ct.nrrd", compress=False)  # as the module writes it
    write_volume(st.labels.astype("uint8"), st.ct, folder / "labels.nrrd")
    print(f"synthetic study {st.ct.shape} (seed {seed}) generated in {time.perf_counter() - t:.1f} s")
    return folder


def as_dicom(study: Path, folder: Path) -> Path:
    from bench_pipeline import write_dicom_series

    from CoronaryCalciumDINOLib.io.volume import read_volume_file

    ct = read_volume_file(study / "ct.nrrd")
    write_dicom_series(folder, ct)
    return folder


def export_revision(rev: str, folder: Path) -> Path:
    """The ``CoronaryCalciumDINO`` folder of git revision ``rev``, exported into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "CoronaryCalciumDINO"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {rev}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "CoronaryCalciumDINO"


def run_ai(ct_path: Path, out: Path, device: str, lib_parent: Path = LIB_PARENT) -> dict:
    """One run of the AI command in a new process: seconds from the launch to each line."""
    from CoronaryCalciumDINOLib.cli.progress import parse_progress_line

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "score", str(ct_path), "--out", str(out), "--quiet",
           "--progress-lines", "--device", device]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(lib_parent),
                            cwd=str(lib_parent))
    times: dict = {}
    lines = []
    for line in proc.stdout:
        now = time.perf_counter() - t0
        lines.append(line.rstrip())
        if line.startswith("CUDA "):
            times.setdefault("torch imported (CUDA line)", now)
        parsed = parse_progress_line(line)
        if parsed is None:
            continue
        fraction, message = parsed
        if fraction == 0.0:
            times.setdefault("finding the heart", now)
        elif message.endswith(" candidates") and "first candidate" not in times:
            times["first candidate"] = now
            times["candidates"] = message
        elif fraction >= 1.0:
            times["pipeline done"] = now
    code = proc.wait()
    times["total"] = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"the command failed (exit code {code}):\n" + "\n".join(lines[-20:]))
    return times


def run_labels(ct_path: Path, labels: Path, out: Path, lib_parent: Path = LIB_PARENT) -> float:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "score", str(ct_path), "--labels", str(labels), "--quiet",
           "--json", str(out / "labels.json"), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(lib_parent), cwd=str(lib_parent))
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the --labels command failed:\n{proc.stderr[-2000:]}")
    return total


def import_time(statement: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, env=_env())
    return time.perf_counter() - t0


def _stats(values) -> str:
    return f"best {min(values):6.2f} s  median {statistics.median(values):6.2f} s"


def report(title: str, runs: list, labels: list, args) -> None:
    """The figures of one version on one input (best and median of its runs), with the targets."""
    print(f"\n{title}, {args.repeat} runs each, device {args.device} ({runs[0].get('candidates', '?')}):")
    print("  ccdino score CT --out DIR (the AI), seconds from the process launch:")
    for key in ("finding the heart", "first candidate", "torch imported (CUDA line)", "pipeline done", "total"):
        values = [r[key] for r in runs if key in r]
        if values:
            print(f"    {key:<24} {_stats(values)}")
    print("  ccdino score CT --labels LABELS (no AI):")
    print(f"    {'total':<24} {_stats(labels)}")
    stages = min(r["first candidate"] - r["finding the heart"] for r in runs)
    print(f"  the anatomy and candidate stages take {stages:.2f} s of the cold start; before them come the "
          "interpreter's start, the core imports and the CT's reading (--labels pays those too: "
          f"{min(labels):.2f} s in all); torch is imported and the networks built after the candidates "
          "are found")
    first = [r["first candidate"] for r in runs]
    total = [r["total"] for r in runs]
    for label, values, target in (("cold start to the first candidate", first, TARGET_FIRST_CANDIDATE_S),
                                  ("whole study", total, TARGET_TOTAL_S)):
        print(f"  target {label} <= {target:g} s: best {'PASS' if min(values) <= target else 'FAIL'} "
              f"({min(values):.2f} s), median {'PASS' if statistics.median(values) <= target else 'FAIL'} "
              f"({statistics.median(values):.2f} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, help="a study folder with ct.nrrd and labels.nrrd (default: a synthetic one)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--slices", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", choices=("nrrd", "dicom", "both"), default="both")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="keep the study and outputs in this folder")
    ap.add_argument("--baseline", metavar="REV", help="also run git revision REV's command, alternating with this "
                    "tree's, and print both side by side")
    args = ap.parse_args(argv)

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs"
          " (the machine may be shared: timings grow with its load)")
    work = Path(tempfile.mkdtemp(prefix="ccdino-bench-")) if args.keep is None else args.keep
    try:
        study = args.study or make_study(work / "study", args.seed, args.slices)
        inputs = []
        if args.format in ("nrrd", "both"):
            inputs.append(("NRRD", study / "ct.nrrd"))
        if args.format in ("dicom", "both"):
            inputs.append(("DICOM", as_dicom(study, work / "dicom")))

        print("\nimports of the AI, each in a fresh process (with the interpreter's start):")
        for label, statement in (("python (nothing)", "pass"), ("numpy + scipy.ndimage", "import numpy, scipy.ndimage"),
                                 ("torch", "import torch"), ("torch + timm", "import torch, timm"),
                                 ("torch + timm + monai", "import torch, timm, monai.networks.nets")):
            print(f"  {label:<24} {import_time(statement):6.2f} s")

        versions = [("this tree", LIB_PARENT)]
        if args.baseline:
            versions.insert(0, (f"baseline {args.baseline}", export_revision(args.baseline, work / "baseline")))
        for name, ct_path in inputs:
            runs: dict = {v: [] for v, _ in versions}
            labels: dict = {v: [] for v, _ in versions}
            for _ in range(args.repeat):  # the versions alternate, so both see the same load
                for v, lib in versions:
                    runs[v].append(run_ai(ct_path, work / "out", args.device, lib))
                    labels[v].append(run_labels(ct_path, study / "labels.nrrd", work / "labels-out", lib))
            for v, _ in versions:
                report(f"{name} input, {v}", runs[v], labels[v], args)
            if args.baseline:
                base, this = (v for v, _ in versions)
                print(f"\n{name} input, side by side (median of {args.repeat} alternating runs; ratio this / baseline):")
                print(f"    {'':<24} {'baseline':>9} {'this tree':>10} {'ratio':>6}")
                for key in ("finding the heart", "first candidate", "torch imported (CUDA line)", "pipeline done", "total"):
                    a = [r[key] for r in runs[base] if key in r]
                    b = [r[key] for r in runs[this] if key in r]
                    if a and b:
                        ma, mb = statistics.median(a), statistics.median(b)
                        print(f"    {key:<24} {ma:8.2f}s {mb:9.2f}s {mb / ma:6.2f}")
                ma, mb = statistics.median(labels[base]), statistics.median(labels[this])
                print(f"    {'--labels total':<24} {ma:8.2f}s {mb:9.2f}s {mb / ma:6.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
