"""The real development scans in a gated scan's geometry, with the noise of a lower-dose scan.

    python training/evaluate_real_noise.py [--levels 20,30,40] [--seeds 3] [--dev real-dev/coca-nongated]
        [--bundle PATH] [--out training/results/real-dev-coca-noise]

Gated calcium-scoring scans are thin, low-dose slices: their image noise is typically 20-40 HU
in the blood pool, where the 5 mm development scans (``evaluate_real.py``) show 7-13 HU.
Each scan is scored as ``evaluate_real.py --heart-centred`` scores it (a 200 mm field of
view, 0.4 mm pixels, 3 mm slices: :func:`training.evaluate_real.heart_centred`), and again
for each noise level L (HU) with correlated Gaussian noise added (the generator's
:func:`CoronaryCalciumDINOLib.synth.scanner.add_noise`, the grain of a body kernel,
:data:`GRAIN_MM`) so that the image noise the pipeline itself measures
(:func:`CoronaryCalciumDINOLib.pipeline.candidates.slice_noise`, median over the middle half
of the slices) becomes L. Each level is drawn ``--seeds`` times (independent noise).

Written: ``OUT.json`` (every run: scan, level, seed, the noise measured before and after, the
AI's Agatston per artery, whether the arteries were named from the aorta; per level the
summary of :func:`training.evaluate_real.summarise` for each seed) and ``OUT.md`` (per scan
and level the AI total, mean and range over the seeds, per artery means, risk category right
and arteries named from the aorta in how many seeds; per level the summary). Numbers only:
no pixels of COCA (research-use data) are written.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as ``python training/evaluate_real_noise.py``
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:  # the library not installed: use the checkout's
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))

import numpy as np  # noqa: E402

from CoronaryCalciumDINOLib.constants import ARTERIES  # noqa: E402
from CoronaryCalciumDINOLib.errors import CCDinoError  # noqa: E402
from CoronaryCalciumDINOLib.scoring import ScoringOptions  # noqa: E402
from training.evaluate_real import (  # noqa: E402
    DEFAULT_DEV,
    HEART_CENTRED,
    KEYS,
    STAGES,
    cpu_name,
    dev_scans,
    evaluate_scan,
    heart_centred,
    rel,
    summarise,
    write_results,
)

DEFAULT_OUT = REPO / "training" / "results" / "real-dev-coca-noise"
#: Noise grain (mm) of the added noise: a body kernel's (the generator's standard kernel).
GRAIN_MM = 0.8


def measured_noise(hu: np.ndarray, spacing) -> float:
    """The image noise (HU) the pipeline measures: the median of
    :func:`~CoronaryCalciumDINOLib.pipeline.candidates.slice_noise` over the middle half of
    the slices (where the heart is)."""
    from CoronaryCalciumDINOLib.pipeline.candidates import slice_noise

    nz = hu.shape[0]
    middle = np.arange(nz // 4, max(nz // 4 + 1, 3 * nz // 4))
    return float(np.median(slice_noise(hu, spacing[1:], slices=middle)[middle]))


def with_noise(ct, level: float, seed, info: dict):
    """``ct`` with correlated noise added so that its measured noise becomes ``level`` HU (as it
    is when it is already at least that); ``seed``: of :func:`numpy.random.default_rng` (an int or
    a list of ints); ``info`` receives the noise before and after."""
    from types import SimpleNamespace

    from CoronaryCalciumDINOLib.io.volume import CTVolume
    from CoronaryCalciumDINOLib.synth.scanner import add_noise

    before = measured_noise(ct.hu, ct.spacing)
    hu = np.array(ct.hu, dtype=np.float32, copy=True)
    if level > before:
        grid = SimpleNamespace(dz=float(ct.spacing[0]), thickness=float(ct.spacing[0]))
        add_noise(hu, grid, np.random.default_rng(seed), float(np.sqrt(level ** 2 - before ** 2)),
                  GRAIN_MM / float(ct.spacing[1]))
    info["noise_before_hu"], info["noise_after_hu"] = round(before, 2), round(measured_noise(hu, ct.spacing), 2)
    return CTVolume(hu=hu, spacing=ct.spacing, origin=ct.origin, direction=ct.direction, kvp=ct.kvp,
                    source=ct.source, warnings=list(ct.warnings))


def parse_levels(text: str) -> list[float]:
    problem = ValueError(f"--levels {text!r}: noise levels in HU, 0..200, comma-separated")
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise problem from None
    if not levels or any(not np.isfinite(v) or v < 0 or v > 200 for v in levels):
        raise problem
    return levels


def level_summaries(runs: list[dict], levels: list[float], seeds: int) -> dict[str, list[dict]]:
    """Per level (key: the level as text), per seed: :func:`training.evaluate_real.summarise`
    of that draw's scans, with ``calcium_free_zero``: its calcium-free scans scored 0."""
    out = {}
    for level in levels:
        per_seed = []
        for seed in range(seeds):
            rows = [r for r in runs if r["level"] == level and r["seed"] == seed]
            s = summarise(rows)
            s["calcium_free_zero"] = sum(1 for r in rows if "ai" in r and all(r["reference"][k] == 0.0 for k in KEYS)
                                         and r["ai"]["total"] == 0.0)
            per_seed.append(s)
        out[f"{level:g}"] = per_seed
    return out


def markdown(doc: dict) -> str:
    m = doc["model"]
    lines = [
        "# Real development scans, heart-centred, with the noise of a lower-dose scan",
        "",
        "The public non-gated COCA scans resampled to a gated scan's geometry "
        f"({HEART_CENTRED[0]:g} mm field of view, {HEART_CENTRED[1]:g} mm pixels, {HEART_CENTRED[2]:g} mm slices) "
        "and scored with correlated noise added to reach each level (the noise the pipeline measures; "
        f"{doc['seeds']} independent draws per level; level 0: the scans as resampled, with their own noise). "
        "Reference: COCA's table. A development check, not a validation. *Named from the aorta*: in how many "
        "draws the arteries were named from the ascending aorta (else the segmenter's names; - no lesion; "
        "*unchecked*: the segmenter sure of the side of too little of the calcium away from the aortic root for "
        "the check on those names, which the review flag `artery_names` tells the reader).",
        "",
        f"- model: {m.get('name')} {m.get('version')} (sha256 {str(m.get('sha256'))[:12]}...)",
        f"- device: CPU ({doc['cpu']}); date: {doc['date']}; {doc['seconds']:.0f} s in all",
        f"- command: `{doc['command']}`",
        "",
        "| scan | reference total | noise (HU) | AI total: mean (min-max) | LM / LAD / LCX / RCA (means) "
        "| risk right | named from the aorta |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = doc["runs"]
    for scan in dict.fromkeys(r["scan"] for r in runs):
        for level in doc["levels"]:
            rs = [r for r in runs if r["scan"] == scan and r["level"] == level and "ai" in r]
            if not rs:
                continue
            totals = [r["ai"]["total"] for r in rs]
            means = " / ".join(f"{np.mean([r['ai'][a] for r in rs]):.0f}" for a in ARTERIES)
            noise = np.mean([r["noise_after_hu"] for r in rs])
            unchecked = sum(bool(r.get("named_from_aorta")) and (r.get("names_check") or {}).get("check_made") is False
                            for r in rs)
            named = (f"{sum(bool(r['named_from_aorta']) for r in rs)} of {len(rs)}"
                     + (f" ({unchecked} unchecked)" if unchecked else "") if any(totals)
                     else "-")  # no lesion: nothing named
            lines.append(
                f"| {scan} ({rs[0]['id']}) | {rs[0]['reference']['total']:.0f} | {noise:.0f} | "
                f"{np.mean(totals):.0f} ({min(totals):.0f}-{max(totals):.0f}) | {means} | "
                f"{sum(bool(r['risk']['match']) for r in rs)} of {len(rs)} | {named} |")
    lines += ["", "## Per level asked (each draw's scans)", "",
              "| level asked (HU) | risk right, per draw | calcium-free scans scored 0, per draw "
              "| right artery at most |", "|---|---|---|---|"]
    for level, per_seed in doc["summary"].items():
        risk = ", ".join(f"{s['risk_category_right']['k']} of {s['risk_category_right']['n']}" for s in per_seed)
        free = ", ".join(f"{s['calcium_free_zero']} of {s['calcium_free_scans']}" for s in per_seed)
        right = [s["ai_agatston_on_the_right_artery_at_most"] for s in per_seed
                 if s["ai_agatston_on_the_right_artery_at_most"] is not None]
        lines.append(f"| {level} | {risk} | {free} | "
                     + (f"{100 * min(right):.0f}-{100 * max(right):.0f} %" if right else "-") + " |")
    staged = [r for r in runs if r.get("by_outcome")]
    if staged:
        lines += ["", "## What the AI left unlabelled (means over the draws)", "",
                  "Agatston of the candidates in the heart region (*all in region*, each stage's taken for one "
                  "artery) by what became of them: labelled, or turned down by the detector, the noise rule or "
                  "the segmenter (`training/evaluate_real.py`, \"What the AI left unlabelled\").", "",
                  "| scan | noise (HU) | all in region | " + " | ".join(STAGES.values()) + " |",
                  "|---|---|---|" + "---|" * len(STAGES)]
        for scan in dict.fromkeys(r["scan"] for r in staged):
            for level in doc["levels"]:
                rs = [r for r in staged if r["scan"] == scan and r["level"] == level]
                if rs:
                    lines.append(f"| {scan} ({rs[0]['id']}) | {np.mean([r['noise_after_hu'] for r in rs]):.0f} | "
                                 f"{np.mean([r['all_in_region'] for r in rs]):.0f} | "
                                 + " | ".join(f"{np.mean([r['by_outcome'][k] for r in rs]):.0f}" for k in STAGES) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", default=str(DEFAULT_DEV), metavar="DIR",
                    help="folder made by scripts/real_dev_set.py (default real-dev/coca-nongated)")
    ap.add_argument("--bundle", default=None, metavar="PATH", help="model bundle (default: the default bundle)")
    ap.add_argument("--levels", default="20,30,40", help="noise levels in HU, comma-separated (default 20,30,40; "
                    "0: as resampled)")
    ap.add_argument("--seeds", type=int, default=3, help="noise draws per level (default 3)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), metavar="OUT",
                    help="write OUT.json and OUT.md (default training/results/real-dev-coca-noise)")
    args = ap.parse_args(argv)
    try:
        levels = parse_levels(args.levels)
    except ValueError as exc:
        print(f"evaluate_real_noise: error: {exc}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("evaluate_real_noise: error: --seeds must be >= 1", file=sys.stderr)
        return 2
    dev = Path(args.dev)
    try:
        reference, folders = dev_scans(dev)
    except ValueError as exc:
        print(f"evaluate_real_noise: error: {exc}", file=sys.stderr)
        return 2
    command = "python " + shlex.join(["training/evaluate_real_noise.py", *(sys.argv[1:] if argv is None else argv)])

    from CoronaryCalciumDINOLib.io import load_ct
    from CoronaryCalciumDINOLib.pipeline import load_bundle

    try:
        bundle = load_bundle(args.bundle)
    except CCDinoError as exc:
        print(f"evaluate_real_noise: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    options = ScoringOptions(kvp="auto")
    t0 = time.perf_counter()
    runs = []
    for index, (name, folder) in enumerate(folders):
        try:
            base = heart_centred(load_ct(folder))
        except CCDinoError as exc:
            print(f"scan {name}: failed: {str(exc).splitlines()[0]}", flush=True)
            continue
        for level in levels:
            for seed in range(args.seeds):
                info: dict = {}
                draw = [index, round(level * 100), seed]  # scan, level and seed: one noise stream each

                def geometry(ct, level=level, draw=draw, info=info):
                    return with_noise(ct, level, draw, info)

                try:
                    row, _, res, _ = evaluate_scan(name, folder, reference[name], bundle, options, geometry, ct=base)
                except CCDinoError as exc:
                    row = {"scan": name, "id": reference[name].get("id", name), "error": str(exc).splitlines()[0]}
                else:
                    row["named_from_aorta"] = bool(res.report_extra().get("model", {}).get("arteries_named_from_aorta"))
                row.update(level=level, seed=seed, **info)
                runs.append(row)
                ai = row.get("ai")
                print(f"scan {name} noise {info.get('noise_before_hu', '?')} -> {info.get('noise_after_hu', '?')} HU "
                      f"(seed {seed}): " + ("failed: " + row["error"] if ai is None else
                                           "  ".join(f"{k} {ai[k]:.1f}" for k in KEYS)), flush=True)
    summary = level_summaries(runs, levels, args.seeds)
    import torch

    doc = {
        "what": "AI pipeline on the public non-gated COCA scans, heart-centred, with added noise (development check)",
        "dev_set": rel(dev),
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu_name()}, {torch.get_num_threads()} torch threads",
        "model": bundle.model_info(),
        "geometry": {"fov_mm": HEART_CENTRED[0], "pixel_mm": HEART_CENTRED[1], "slice_mm": HEART_CENTRED[2]},
        "grain_mm": GRAIN_MM,
        "levels": levels,
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - t0, 1),
        "runs": runs,
        "summary": summary,
    }
    out_json, out_md = write_results(Path(args.out), doc, markdown(doc))
    print(f"wrote {rel(out_json)}, {rel(out_md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
