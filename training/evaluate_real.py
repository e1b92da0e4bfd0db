"""The AI pipeline on a small real development set: the public non-gated COCA scans.

    python training/evaluate_real.py [--dev real-dev/coca-nongated] [--bundle PATH]
        [--out training/results/real-dev-coca] [--sheet real-dev/sheet] [--kvp auto|N]

``--dev`` is a folder made by ``scripts/real_dev_set.py``: one DICOM folder per scan
(``<N>/...``) and ``reference.json`` (the per-artery Agatston scores of the COCA table).
Each scan is read with :func:`CoronaryCalciumDINOLib.io.load_ct`, its score definition is
chosen as ``ccdino score --kvp auto`` chooses it (:class:`~CoronaryCalciumDINOLib.scoring.ScoringOptions`,
``resolve(ct.kvp)``), and :func:`CoronaryCalciumDINOLib.pipeline.run_pipeline` runs on the
CPU (timed, wall seconds, the bundle loaded once beforehand).

Written:

``OUT.json``
    per scan: reference and AI Agatston per artery and in total, risk categories (the
    library's :func:`~CoronaryCalciumDINOLib.scoring.risk_category`), seconds, kVp,
    threshold, lesions, the model, the pipeline's counts and warnings, where the artery
    names came from and what the check on the aorta's names found; a summary; the
    command line. Numbers only, no pixels.
``OUT.md``
    the same as a table, with the summary, the artery names' source per scan, command,
    CPU, date and model.
``SHEET/<N>.png``
    a contact sheet per scan: the whole slice of the largest lesion with the crop boxes and
    the heart region the pipeline searched (orange), then one 60 mm crop per labelled
    lesion (HU -200..600, the lesion outlined in its artery's colour), then the
    :data:`TURNED_DOWN_TILES` largest lesions of the candidates in the heart region that the
    AI turned down (outlined in white, with the stage that turned each down). These hold image crops of COCA (research-use data): ``--sheet`` must
    stay in an ignored folder (default ``real-dev/sheet``) and is never committed.

What the AI left unlabelled: the candidates in the heart region are scored (each taken for one
artery, as *all in region*) by what became of them in the pipeline
(:data:`CoronaryCalciumDINOLib.pipeline.inference.OUTCOMES`, its ``candidate_outcomes``):
labelled, or turned down by the detector, the noise rule or the segmenter. Written per scan
(``by_outcome`` in the JSON) and as a table in the markdown.

Summary: risk categories right; arteries with reference >= 50 scored within 0.5x..2x of
it; arteries with reference 0 scored < 10; the AI total on the calcium-free scans
(reference 0 in every artery and in total): its false-positive Agatston; and, over the
scans with calcium, the most of the AI's Agatston that can be on the right artery
(:func:`right_artery_at_most`: the reference is per artery, not per lesion).

This measures a handful of scans of one public set; it is a development check, not a
validation. The reference is COCA's table (non-gated chest CT, scored by its readers).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as ``python training/evaluate_real.py``
    sys.path.insert(0, str(REPO))
    try:
        import CoronaryCalciumDINOLib  # noqa: F401
    except ImportError:  # the library not installed: use the checkout's
        sys.path.insert(0, str(REPO / "CoronaryCalciumDINO"))

import numpy as np  # noqa: E402

from CoronaryCalciumDINOLib.constants import ARTERIES, ARTERY_COLORS  # noqa: E402
from CoronaryCalciumDINOLib.errors import CCDinoError  # noqa: E402
from CoronaryCalciumDINOLib.scoring import ScoringOptions, risk_category  # noqa: E402

DEFAULT_DEV = REPO / "real-dev" / "coca-nongated"
DEFAULT_OUT = REPO / "training" / "results" / "real-dev-coca"
DEFAULT_SHEET = REPO / "real-dev" / "sheet"
KEYS = (*ARTERIES, "total")
#: Display window of the contact sheets (HU).
WINDOW_HU = (-200.0, 600.0)
#: Side of a lesion crop (mm).
CROP_MM = 60.0
#: Tolerance of the per-artery check: AI within [ref / FACTOR, ref * FACTOR].
FACTOR = 2.0
#: References at least this large are checked for the factor.
MIN_REF_FOR_FACTOR = 50.0
#: On arteries with reference 0, AI below this counts as right.
ZERO_TOLERANCE = 10.0
#: What became of the candidates in the heart region, as the tables name it (the pipeline's
#: :data:`~CoronaryCalciumDINOLib.pipeline.inference.OUTCOMES` names, "region" aside).
STAGES = {"labelled": "labelled", "detector": "detector", "noise": "noise rule", "segmenter": "segmenter"}
#: The contact sheet shows at most this many lesions of the candidates the AI turned down.
TURNED_DOWN_TILES = 6


def rel(path: Path) -> str:
    """``path`` relative to the repository when inside it (for the committed files)."""
    p = Path(os.path.abspath(path))
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def scan_folders(dev: Path) -> list[tuple[str, Path]]:
    """The numbered scan folders of ``dev``, sorted numerically."""
    found = [(p.name, p) for p in dev.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda t: int(t[0]))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def within_factor(ai: float, ref: float, factor: float = FACTOR) -> bool:
    return ref / factor <= ai <= ref * factor


# ----------------------------------------------------------------------------- one scan

#: ``--heart-centred``: the geometry of gated calcium-scoring scans (field of view mm, pixel
#: mm, slice mm), which the project's held-out real scans have.
HEART_CENTRED = (200.0, 0.4, 3.0)


def heart_centred(ct, fov_mm: float = HEART_CENTRED[0], pixel_mm: float = HEART_CENTRED[1],
                  slice_mm: float = HEART_CENTRED[2], above_heart_mm: float | None = None,
                  off_centre_mm: tuple[float, float] = (0.0, 0.0)):
    """``ct`` cropped and resampled (trilinear) to a heart-centred scan: a ``fov_mm`` square
    field of ``pixel_mm`` pixels centred on the heart (the HU localiser
    :func:`.anatomy.heart_centre` on the slices a cardiac scan would hold: not the heart
    region, so that a change to the region's rules does not move the field), over those
    slices, every ``slice_mm``. Canonical axial layout (identity direction). Interpolation
    adds no detail: a 5 mm scan stays a 5 mm scan seen through a gated scan's geometry.
    ``above_heart_mm``: end the scan this far above its top heart level (a gated scan that
    starts lower down; default: where the cardiac range ends, 45 mm above it).
    ``off_centre_mm``: (back, left) the field's centre moved this far (mm) towards the
    patient's back and left from the heart's centre (negative: front, right), as a
    technologist centring the field by eye leaves it."""
    from scipy import ndimage

    from CoronaryCalciumDINOLib.io.volume import CTVolume
    from CoronaryCalciumDINOLib.pipeline.anatomy import heart_centre
    from CoronaryCalciumDINOLib.pipeline.inference import locate, orient

    view, _ = orient(ct, np.asarray(ct.hu, dtype=np.float32))
    anatomy, (z0, z1) = locate(view.hu, ct.spacing)
    if not anatomy.found:
        raise CCDinoError("heart-centred geometry: no lungs, no heart found")
    cy, cx = heart_centre(view.hu[z0:z1], ct.spacing)
    dz, dy, dx = (float(v) for v in ct.spacing)
    cy, cx = cy + float(off_centre_mm[0]) / dy, cx + float(off_centre_mm[1]) / dx
    nz = int(np.floor((z1 - z0 - 1) * dz / slice_mm + 1e-6)) + 1
    if above_heart_mm is not None:
        if anatomy.heart_levels is None:
            raise CCDinoError("heart-centred geometry: no heart levels found to cut the scan above")
        top = anatomy.heart_levels[1] * dz + float(above_heart_mm)  # mm above slice z0
        nz = min(nz, int(np.floor(top / slice_mm + 1e-6)) + 1)
    m = int(round(fov_mm / pixel_mm))
    steps = (np.arange(m) - (m - 1) / 2.0) * pixel_mm
    zc = z0 + np.arange(nz) * slice_mm / dz
    yc, xc = cy + steps / dy, cx + steps / dx
    out = np.empty((nz, m, m), dtype=np.float32)
    grid_y, grid_x = np.meshgrid(yc, xc, indexing="ij")
    for k, z in enumerate(zc):
        coords = np.stack([np.full_like(grid_y, z), grid_y, grid_x])
        out[k] = ndimage.map_coordinates(view.hu, coords, order=1, cval=-1024.0)
    return CTVolume(hu=out, spacing=(slice_mm, pixel_mm, pixel_mm), kvp=ct.kvp, source=f"{ct.source} (heart-centred)",
                    warnings=list(ct.warnings))



def outcome_scores(ct, outcomes: np.ndarray, params) -> dict:
    """{stage: ScoreResult}: the candidates in the heart region that met each fate of
    :data:`STAGES` (``outcomes``: the pipeline's ``candidate_outcomes``), each scored as one
    artery, with their lesions' voxels."""
    from CoronaryCalciumDINOLib.pipeline.inference import OUTCOME_CODE
    from CoronaryCalciumDINOLib.scoring import score as agatston_score

    return {stage: agatston_score(np.asarray(ct.hu), (outcomes == OUTCOME_CODE[stage]).astype(np.uint8), ct.spacing, params,
                                  keep_lesion_voxels=True)
            for stage in STAGES}


def turned_down_lesions(scores: dict) -> list[tuple[str, object, np.ndarray]]:
    """(stage, lesion, its voxels) of the candidates the AI turned down (:func:`outcome_scores`),
    the largest Agatston first."""
    out = [(stage, les, vox) for stage, res in scores.items() if stage != "labelled"
           for les, vox in zip(res.lesions, res.lesion_voxels)]
    return sorted(out, key=lambda t: -t[1].agatston)


def evaluate_scan(name: str, folder: Path, ref: dict, bundle, options: ScoringOptions,
                  geometry=None, naming: str = "aorta", ct=None) -> tuple[dict, object, object, dict | None]:
    """Run the pipeline on one scan folder (``geometry``: a function of the CT giving the CT
    to score, e.g. :func:`heart_centred`; ``ct``: the folder's CT already read); returns
    (row, ct, pipeline result, its candidates scored by outcome: :func:`outcome_scores`, None
    without outcomes)."""
    from CoronaryCalciumDINOLib.io import load_ct
    from CoronaryCalciumDINOLib.pipeline import run_pipeline

    ct = load_ct(folder) if ct is None else ct
    if geometry is not None:
        ct = geometry(ct)
    params = options.resolve(ct.kvp)  # what ``ccdino score --kvp ...`` does
    t = time.perf_counter()
    res = run_pipeline(ct, bundle, device="cpu", params=params, naming=naming)
    seconds = time.perf_counter() - t
    score = res.score
    ai = {a: float(score.arteries[a].agatston) for a in ARTERIES}
    ai["total"] = float(score.total.agatston)
    reference = {k: (None if ref.get(k) is None else float(ref[k])) for k in KEYS}
    risk_ref = risk_category(reference["total"]) if reference["total"] is not None else None
    risk_ai = risk_category(ai["total"])
    if res.heart_region() is not None:  # every candidate the pipeline searched, scored as one artery
        from CoronaryCalciumDINOLib.pipeline.candidate_area import candidate_mask
        from CoronaryCalciumDINOLib.scoring import score as agatston_score

        searched = candidate_mask(ct, params, getattr(bundle, "candidate_config", None)).full()
        all_in = agatston_score(np.asarray(ct.hu), searched.astype(np.uint8), ct.spacing, params)
        in_region = float(all_in.total.agatston)
    else:
        in_region = None
    outcomes = getattr(res, "candidate_outcomes", None)
    by_stage = None if outcomes is None else outcome_scores(ct, outcomes, params)
    row = {
        "scan": name,
        "id": ref.get("id", name),
        "reference": reference,
        "ai": ai,
        "risk": {"reference": risk_ref, "ai": risk_ai, "match": risk_ref == risk_ai if risk_ref is not None else None},
        "all_in_region": in_region,
        "by_outcome": None if by_stage is None else {k: float(v.total.agatston) for k, v in by_stage.items()},
        "seconds": round(seconds, 3),
        "kvp": ct.kvp,
        "threshold_hu": float(params.threshold_hu),
        "slice_mm": float(ct.spacing[0]),
        "pixel_mm": float(ct.spacing[1]),
        "matrix": [int(v) for v in ct.shape[1:]],
        "slices": int(ct.shape[0]),
        "lesions": len(score.lesions),
        "model": {k: res.model_info.get(k) for k in ("name", "version", "sha256")},
        "counts": {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in res.counts.items()},
        "names_from": getattr(res, "names_from", ""),
        "names_check": None if getattr(res, "names_check", None) is None else res.names_check.as_dict(),
        "warnings": [*ct.warnings, *res.warnings],
    }
    return row, ct, res, by_stage


def dev_scans(dev: Path) -> tuple[dict, list[tuple[str, Path]]]:
    """The reference table of a development set made by ``scripts/real_dev_set.py`` and its
    scan folders that the table names: (reference per scan, [(name, folder)]). ValueError
    with a one-line message when the set is missing, unreadable or empty."""
    ref_path = dev / "reference.json"
    if not ref_path.is_file():
        raise ValueError(f"{ref_path} not found; make the set with scripts/real_dev_set.py")
    try:
        reference = json.loads(ref_path.read_text(encoding="utf-8"))["scans"]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{ref_path}: {exc}") from None
    folders = [(n, p) for n, p in scan_folders(dev) if n in reference]
    if not folders:
        raise ValueError(f"no scan folder of {dev} is in its reference.json")
    return reference, folders


def write_results(out: Path, doc: dict, markdown_text: str) -> tuple[Path, Path]:
    """``OUT.json`` (``doc``) and ``OUT.md`` (``markdown_text``); returns their paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out_json, out_md = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    out_json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    out_md.write_text(markdown_text, encoding="utf-8")
    return out_json, out_md


def right_artery_at_most(rows: list[dict]) -> float | None:
    """Share of the AI's Agatston (scans with a reference) that can be on the right artery at
    most: sum over scans and arteries of min(reference, AI), over the AI's total. Without
    lesion-level reference this bounds the share named right from above."""
    done = [r for r in rows if "ai" in r and all(r["reference"][a] is not None for a in ARTERIES)]
    total = sum(r["ai"]["total"] for r in done)
    if total <= 0:
        return None
    return sum(min(r["reference"][a], r["ai"][a]) for r in done for a in ARTERIES) / total


def summarise(rows: list[dict]) -> dict:
    done = [r for r in rows if "ai" in r]
    risk = [r for r in done if r["risk"]["match"] is not None]
    big = [(r, a) for r in done for a in ARTERIES
           if r["reference"][a] is not None and r["reference"][a] >= MIN_REF_FOR_FACTOR]
    zero = [(r, a) for r in done for a in ARTERIES if r["reference"][a] == 0.0]
    free = [r for r in done if all(r["reference"][k] == 0.0 for k in KEYS)]
    return {
        "scans": len(rows),
        "scans_scored": len(done),
        "risk_category_right": {"k": sum(r["risk"]["match"] for r in risk), "n": len(risk)},
        "arteries_ref_ge_50_within_0.5x_2x": {
            "k": sum(within_factor(r["ai"][a], r["reference"][a]) for r, a in big), "n": len(big)},
        "arteries_ref_0_ai_below_10": {"k": sum(r["ai"][a] < ZERO_TOLERANCE for r, a in zero), "n": len(zero)},
        "calcium_free_scans": len(free),
        "false_positive_agatston_on_calcium_free_scans": round(sum(r["ai"]["total"] for r in free), 3),
        "ai_agatston_on_the_right_artery_at_most": None if (ra := right_artery_at_most(rows)) is None else round(ra, 4),
        "seconds_total": round(sum(r["seconds"] for r in done), 3),
    }


def summary_lines(s: dict) -> list[str]:
    k = s["risk_category_right"]
    f = s["arteries_ref_ge_50_within_0.5x_2x"]
    z = s["arteries_ref_0_ai_below_10"]
    return [
        f"risk category right: {k['k']} of {k['n']} scans",
        f"arteries with reference >= {MIN_REF_FOR_FACTOR:g}: {f['k']} of {f['n']} within 0.5x..2x",
        f"arteries with reference 0: {z['k']} of {z['n']} below {ZERO_TOLERANCE:g}",
        f"false-positive Agatston on the {s['calcium_free_scans']} calcium-free scans: "
        f"{s['false_positive_agatston_on_calcium_free_scans']:.1f} in total",
    ] + ([] if s.get("ai_agatston_on_the_right_artery_at_most") is None else [
        f"AI Agatston on the right artery: at most {100 * s['ai_agatston_on_the_right_artery_at_most']:.0f} %"])


def fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def progress_line(r: dict) -> str:
    if "ai" not in r:
        return f"scan {r['scan']}: failed: {r['error']}"
    parts = "  ".join(f"{k} {fmt(r['reference'][k])}/{fmt(r['ai'][k])}" for k in KEYS)
    return (f"scan {r['scan']} ({r['id']}, {r['kvp'] if r['kvp'] is not None else '?'} kVp): {parts}  "
            f"risk {r['risk']['reference']}/{r['risk']['ai']}  {r['lesions']} lesions  {r['seconds']:.1f} s")


def names_line(r: dict) -> str:
    """Where a scan's artery names came from, with what the check on the aorta's names found."""
    source = r.get("names_from") or ""
    text = "from the aorta" if source == "aorta" else source
    c = r.get("names_check")
    if not c:
        return text
    sure = f"the segmenter sure of the side of {100 * c['segmenter_sure_share']:.0f} % of {c['voxels_checked']} voxels"
    if c["zone_only"]:
        sure = f"all {c['voxels_checked']} voxels near the root checked, sure or not"
    if not c["check_made"]:
        return f"{text} ({sure}: no check made)"
    return f"{text} ({sure}; the sides disagree on {100 * c['sides_disagree_share']:.0f} %)"


def markdown(doc: dict) -> str:
    m = doc["model"]
    lines = [
        "# AI pipeline on the public non-gated COCA scans (development check)",
        "",
        "Agatston per artery, reference (COCA's table) / AI. A handful of non-gated chest CTs: a",
        "development check of the pipeline on real scans, not a validation. COCA is research-use",
        "data; the images and the contact sheets stay out of the repository.",
        "",
        f"- model: {m.get('name')} {m.get('version')} (sha256 {str(m.get('sha256'))[:12]}...)",
        f"- kVp: `--kvp {doc['kvp_option']}`; device: CPU ({doc['cpu']}, {doc['torch_threads']} torch threads)",
        f"- geometry: {doc.get('geometry', 'as acquired')}",
        f"- date: {doc['date']}",
        f"- command: `{doc['command']}`",
        "",
        "| scan | kVp | LM ref/AI | LAD ref/AI | LCX ref/AI | RCA ref/AI | total ref/AI | risk ref/AI | all in region | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["scans"]:
        if "ai" not in r:
            lines.append(f"| {r['scan']} | - | failed: {r['error']} | | | | | | | |")
            continue
        cells = [f"{fmt(r['reference'][k])} / {fmt(r['ai'][k])}" for k in KEYS]
        kvp = "-" if r["kvp"] is None else f"{r['kvp']:g}"
        lines.append(f"| {r['scan']} ({r['id']}) | {kvp} | " + " | ".join(cells)
                     + f" | {r['risk']['reference']} / {r['risk']['ai']} | {fmt(r.get('all_in_region'))} | {r['seconds']:.1f} |")
    lines += ["", "## Summary", ""] + [f"- {s}" for s in summary_lines(doc["summary"])]
    lines += ["", "*All in region*: the Agatston score of every candidate the pipeline searched (at or above",
              "the threshold, in the heart region, off bone and off calcified structures that leave the",
              "region), all taken for one artery: at most what a labelling of this scan can score. A",
              "reference above it is calcium this reconstruction does not show above the threshold, or",
              "shows outside the region."]
    staged = [r for r in doc["scans"] if r.get("by_outcome")]
    if staged:
        lines += ["", "## What the AI left unlabelled", "",
                  "| scan | all in region | " + " | ".join(STAGES.values()) + " |",
                  "|---|---|" + "---|" * len(STAGES)]
        lines += [f"| {r['scan']} ({r['id']}) | {fmt(r.get('all_in_region'))} | "
                  + " | ".join(fmt(r["by_outcome"][k]) for k in STAGES) + " |" for r in staged]
        lines += ["", "*All in region* split by what became of its candidates (each part taken for one artery):",
                  "*labelled* (some of their voxels carry the AI's labels; the whole candidate counts here), or",
                  "turned down by the *detector* (below its threshold), the *noise rule* (taken for image noise)",
                  "or the *segmenter* (given to it, nothing labelled). The contact sheets show the largest",
                  "turned-down lesions in white."]
    names = [f"- scan {r['scan']}: {names_line(r)}" for r in doc["scans"] if r.get("names_from")]
    if names:
        from CoronaryCalciumDINOLib.pipeline.naming import MAX_SIDE_DISAGREEMENT, MIN_SURE_SHARE

        lines += ["", "## Artery names", "", *names, "",
                  "The check that decides whether the names from the ascending aorta are used compares the",
                  "aorta's side of the tree with the segmenter's on the calcium outside the aortic root's zone",
                  "whose side the segmenter is sure of. It is made where that is at least "
                  f"{100 * MIN_SURE_SHARE:.0f} % of the calcium",
                  "outside the zone, and the aorta's names stand unless the sides disagree on more than "
                  f"{100 * MAX_SIDE_DISAGREEMENT:.0f} %",
                  "of it. Calcium only near the root is all checked, sure or not (docs/model.md, \"Naming\")."]
    lines += ["", f"Pipeline time {doc['summary']['seconds_total']:.1f} s for {doc['summary']['scans_scored']} scans "
              "(`run_pipeline` only: reading the DICOM and loading the bundle excluded).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- contact sheet


def _display_flips(ct) -> tuple[bool, bool]:
    """(flip rows, flip columns) for display: anterior up, patient left on the right."""
    from CoronaryCalciumDINOLib.pipeline.preprocess import canonical_flips

    flips = canonical_flips(ct.direction)
    return (bool(flips[1]), bool(flips[2])) if flips is not None else (False, False)


def _oriented(a2d: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    if flips[0]:
        a2d = a2d[::-1]
    if flips[1]:
        a2d = a2d[:, ::-1]
    return a2d


def write_sheet(ct, res, row: dict, path: Path, max_tiles: int = 48, turned_down: list | None = None) -> Path:
    """One contact sheet PNG of a scan's labelled lesions (see the module docstring), then the
    first :data:`TURNED_DOWN_TILES` of ``turned_down`` (:func:`turned_down_lesions`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    hu = np.asarray(ct.hu)
    nz, ny, nx = hu.shape
    dy, dx = float(ct.spacing[1]), float(ct.spacing[2])
    score = res.score
    lesions = list(score.lesions)
    voxels = score.lesion_voxels or [np.zeros(0, np.int64)] * len(lesions)
    flips = _display_flips(ct)
    vmin, vmax = WINDOW_HU
    half_y, half_x = int(round(CROP_MM / 2 / dy)), int(round(CROP_MM / 2 / dx))

    def on_slice(flat):
        """A lesion's mask on its slice and its centre (y, x)."""
        _z, yy, xx = np.unravel_index(np.asarray(flat, dtype=np.int64), hu.shape)
        mask = np.zeros((ny, nx), dtype=bool)
        mask[yy, xx] = True
        cy, cx = (float(yy.mean()), float(xx.mean())) if yy.size else (ny / 2, nx / 2)
        return mask, (int(round(cy)), int(round(cx)))

    items = [(les, *on_slice(flat)) for les, flat in zip(lesions, voxels)]  # (lesion, mask, centre)
    shown = items[:max_tiles] if len(items) <= max_tiles else sorted(
        items, key=lambda t: -t[0].agatston)[:max_tiles]
    shown.sort(key=lambda t: (t[0].slice, ARTERIES.index(t[0].artery)))
    down = [(stage, les, *on_slice(flat)) for stage, les, flat in (turned_down or [])[:TURNED_DOWN_TILES]]

    n_tiles = 1 + max(len(shown), 0) + (1 if len(items) > len(shown) else 0) + len(down)
    cols = min(6, n_tiles) if n_tiles > 1 else 1
    rows = int(np.ceil(n_tiles / cols))
    fig = Figure(figsize=(max(3.0 * cols, 6.0), 3.2 * rows + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    ref, ai = row["reference"], row["ai"]
    kvp = "?" if row["kvp"] is None else f"{row['kvp']:g}"
    fig.suptitle(f"scan {row['scan']} ({row['id']}): AI total {ai['total']:.1f}, reference {fmt(ref['total'])}\n"
                 f"risk {row['risk']['reference']} / {row['risk']['ai']}; {len(items)} lesions; "
                 f"{kvp} kVp, threshold {row['threshold_hu']:g} HU", fontsize=10)

    def tile(k):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    region = res.heart_region() if hasattr(res, "heart_region") else None

    def crop(ax, les, mask, centre, color, title, title_color=None):
        """A lesion's 60 mm crop on its slice, outlined in ``color``."""
        cy, cx = centre
        pad = max(half_y, half_x) + 1
        img = np.pad(hu[les.slice], pad, mode="constant", constant_values=-1024.0)
        msk = np.pad(mask, pad)
        sl = (slice(cy + pad - half_y, cy + pad + half_y + 1), slice(cx + pad - half_x, cx + pad + half_x + 1))
        ax.imshow(_oriented(img[sl], flips), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        m = _oriented(msk[sl], flips).astype(float)
        if m.any():
            ax.contour(m, levels=[0.5], colors=[color], linewidths=1.0)
        ax.set_title(title, fontsize=9, color=title_color or color)
        ax.set_xlabel(f"{les.area_mm2:.1f} mm2, peak {les.peak_hu:.0f} HU", fontsize=7)

    def outline_region(ax, z):
        """The heart region the pipeline searched on slice ``z`` (orange)."""
        if region is not None and region[z].any() and not region[z].all():
            ax.contour(_oriented(region[z], flips).astype(float), levels=[0.5], colors=["orange"], linewidths=0.8)

    if not items:
        ax = tile(0)
        ax.imshow(_oriented(hu[nz // 2], flips), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        outline_region(ax, nz // 2)
        ax.set_title(f"slice {nz // 2} (middle), heart region", fontsize=9)
        ax.text(0.5, 0.5, "no lesion labelled", transform=ax.transAxes, ha="center", va="center",
                color="yellow", fontsize=12, bbox={"facecolor": "black", "alpha": 0.6})
    else:
        # overview: the slice of the largest lesion, every crop box on that slice
        best = max(items, key=lambda t: t[0].agatston)
        z0 = best[0].slice
        ax = tile(0)
        ax.imshow(_oriented(hu[z0], flips), cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        outline_region(ax, z0)
        for les, mask, (cy, cx) in items:
            if les.slice != z0:
                continue
            y = (ny - 1 - cy) if flips[0] else cy
            x = (nx - 1 - cx) if flips[1] else cx
            ax.add_patch(Rectangle((x - half_x - 0.5, y - half_y - 0.5), 2 * half_x + 1, 2 * half_y + 1,
                                   fill=False, edgecolor=ARTERY_COLORS[les.artery], linewidth=1.2))
        ax.set_title(f"slice {z0} (whole), heart region", fontsize=9)
        for k, (les, mask, centre) in enumerate(shown, start=1):
            crop(tile(k), les, mask, centre, ARTERY_COLORS[les.artery], f"slice {les.slice} {les.artery} {les.agatston:.1f} pts")
        if len(items) > len(shown):
            ax = tile(len(shown) + 1)
            ax.axis("off")
            ax.text(0.5, 0.5, f"+{len(items) - len(shown)} smaller lesions\nnot shown", ha="center", va="center",
                    transform=ax.transAxes, fontsize=10)
    first = n_tiles - len(down)
    for k, (stage, les, mask, centre) in enumerate(down, start=first):
        crop(tile(k), les, mask, centre, "white", f"slice {les.slice} turned down: {STAGES[stage]} {les.agatston:.1f} pts",
             title_color="dimgray")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()), h_pad=1.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- main


def sheet_dir_problem(sheet: Path) -> str | None:
    """The sheets hold COCA image crops: inside the repository only under real-dev/."""
    p = Path(os.path.abspath(sheet))
    if p == REPO or REPO in p.parents:
        real_dev = REPO / "real-dev"
        if not (p == real_dev or real_dev in p.parents):
            return (f"--sheet {sheet} is inside the repository but not under real-dev/ (which git ignores); "
                    "the sheets hold COCA image crops and must not be tracked")
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", default=str(DEFAULT_DEV), metavar="DIR",
                    help="folder made by scripts/real_dev_set.py (default real-dev/coca-nongated)")
    ap.add_argument("--bundle", default=None, metavar="PATH", help="model bundle (default: the default bundle)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), metavar="OUT",
                    help="write OUT.json and OUT.md (default training/results/real-dev-coca)")
    ap.add_argument("--sheet", default=str(DEFAULT_SHEET), metavar="DIR",
                    help="contact sheets, one PNG per scan (default real-dev/sheet; git-ignored, never commit)")
    ap.add_argument("--kvp", default="auto", metavar="auto|N", help="score definition as ccdino score --kvp (default auto)")
    ap.add_argument("--max-tiles", type=int, default=48, help="lesion tiles per sheet at most (default 48)")
    ap.add_argument("--heart-centred", action="store_true",
                    help=f"score each scan cropped and resampled to a heart-centred {HEART_CENTRED[0]:g} mm field of "
                         f"view, {HEART_CENTRED[1]:g} mm pixels, {HEART_CENTRED[2]:g} mm slices (the geometry of gated "
                         "calcium scans); default OUT and SHEET get the suffix -heart-centred")
    ap.add_argument("--above-heart", type=float, default=None, metavar="MM",
                    help="with --heart-centred: end each scan MM above its top heart level (default: the "
                         "cardiac range, 45 mm above it); default OUT and SHEET get the suffix -above-MM")
    ap.add_argument("--fov", type=float, default=HEART_CENTRED[0], metavar="MM",
                    help=f"with --heart-centred: the field of view (default {HEART_CENTRED[0]:g} mm)")
    ap.add_argument("--pixel", type=float, default=HEART_CENTRED[1], metavar="MM",
                    help=f"with --heart-centred: the pixel size (default {HEART_CENTRED[1]:g} mm)")
    ap.add_argument("--off-centre", default="0,0", metavar="BACK,LEFT",
                    help="with --heart-centred: move the field's centre BACK mm towards the patient's back and "
                         "LEFT mm towards the patient's left from the heart's centre (negative: front, right; "
                         "default 0,0; a negative first value needs the = form: --off-centre=-25,-25); default OUT and "
                         "SHEET get the suffix -off-BACK,LEFT")
    ap.add_argument("--naming", choices=("aorta", "segmenter"), default="aorta",
                    help="artery names as ccdino score --naming (default aorta)")
    args = ap.parse_args(argv)
    if args.above_heart is not None and not (args.heart_centred and args.above_heart >= 0):
        print("evaluate_real: error: --above-heart needs --heart-centred and a length >= 0 mm", file=sys.stderr)
        return 2
    try:
        off = tuple(float(v) for v in args.off_centre.split(","))
        if len(off) != 2 or not all(np.isfinite(off)):
            raise ValueError
    except ValueError:
        print(f"evaluate_real: error: --off-centre must be two numbers BACK,LEFT in mm, got {args.off_centre!r}",
              file=sys.stderr)
        return 2
    field = (args.fov, args.pixel)
    if (field != HEART_CENTRED[:2] or any(off)) and not args.heart_centred:
        print("evaluate_real: error: --fov, --pixel and --off-centre need --heart-centred", file=sys.stderr)
        return 2
    if not (args.fov > 0 and args.pixel > 0 and args.fov / args.pixel <= 2048):
        print("evaluate_real: error: --fov and --pixel must be > 0 mm, at most 2048 pixels across", file=sys.stderr)
        return 2
    suffix = ("-heart-centred" + ("" if args.above_heart is None else f"-above-{args.above_heart:g}")
              + ("" if field == HEART_CENTRED[:2] else f"-fov-{args.fov:g}-{args.pixel:g}")
              + (f"-off-{off[0]:g},{off[1]:g}" if any(off) else ""))
    if args.heart_centred and args.out == str(DEFAULT_OUT):
        args.out = str(DEFAULT_OUT) + suffix
    if args.heart_centred and args.sheet == str(DEFAULT_SHEET):
        args.sheet = str(DEFAULT_SHEET) + suffix
    command = "python " + shlex.join([rel(Path(sys.argv[0])) if argv is None else "training/evaluate_real.py",
                                      *(sys.argv[1:] if argv is None else argv)])

    dev, sheet = Path(args.dev), Path(args.sheet)
    problem = sheet_dir_problem(sheet)
    if problem:
        print(f"evaluate_real: error: {problem}", file=sys.stderr)
        return 2
    try:
        reference, folders = dev_scans(dev)
        options = ScoringOptions(kvp=args.kvp)
    except (ValueError, CCDinoError) as exc:
        print(f"evaluate_real: error: {exc}", file=sys.stderr)
        return 2
    ref_path = dev / "reference.json"

    import torch

    from CoronaryCalciumDINOLib.pipeline import load_bundle

    t = time.perf_counter()
    try:
        bundle = load_bundle(args.bundle)
    except CCDinoError as exc:
        print(f"evaluate_real: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    load_s = time.perf_counter() - t
    print(f"model {bundle.name} {bundle.version} loaded in {load_s:.1f} s; {len(folders)} scans, "
          f"{torch.get_num_threads()} torch threads")

    rows, sheets = [], []
    for name, folder in folders:
        try:
            geometry = (partial(heart_centred, fov_mm=args.fov, pixel_mm=args.pixel, above_heart_mm=args.above_heart,
                                off_centre_mm=off) if args.heart_centred else None)
            row, ct, res, by_stage = evaluate_scan(name, folder, reference[name], bundle, options, geometry, args.naming)
        except CCDinoError as exc:
            row = {"scan": name, "id": reference[name].get("id", name), "error": str(exc).splitlines()[0]}
            rows.append(row)
            print(progress_line(row), flush=True)
            continue
        rows.append(row)
        print(progress_line(row), flush=True)
        down = None if by_stage is None else turned_down_lesions(by_stage)
        sheets.append(write_sheet(ct, res, row, sheet / f"{name}.png", max_tiles=args.max_tiles, turned_down=down))
        del ct, res, by_stage

    summary = summarise(rows)
    doc = {
        "what": "AI pipeline vs the COCA reference table on the public non-gated COCA scans (development check)",
        "dev_set": rel(dev),
        "reference_source": json.loads(ref_path.read_text(encoding="utf-8")).get("source"),
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "kvp_option": str(args.kvp),
        "naming": args.naming,
        "geometry": ("heart-centred: {:g} mm field of view, {:g} mm pixels, {:g} mm slices (resampled){}{}".format(
            args.fov, args.pixel, HEART_CENTRED[2],
            "" if args.above_heart is None else f", ending {args.above_heart:g} mm above the top heart level",
            "" if not any(off) else f", its centre {off[0]:g} mm towards the back and {off[1]:g} mm towards the "
            "patient's left of the heart's") if args.heart_centred else "as acquired"),
        "model": bundle.model_info(),
        "bundle_load_s": round(load_s, 3),
        "scans": rows,
        "summary": summary,
    }
    out_json, out_md = write_results(Path(args.out), doc, markdown(doc))

    print()
    for line in summary_lines(summary):
        print(line)
    print(f"wrote {rel(out_json)}, {rel(out_md)}")
    for p in sheets:
        print(f"sheet {rel(p)}")
    return 0 if summary["scans_scored"] == summary["scans"] else 1


if __name__ == "__main__":
    sys.exit(main())
