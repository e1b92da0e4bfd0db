"""Review flags: when a study needs a human look, each said in one line a reader understands.

:func:`review_flags` gives the report's ``review_flags`` list, each item
``{"flag": <id>, "message": <one line>}``, from what the pipeline and the report already
know. The flags and what raises them:

``model_confidence``
    The risk category rests on lesions the model is unsure of: the lesions whose calcium
    confidence (the report's ``lesions[].confidence.calcium``, the segmenter's mean
    P(calcium) over the lesion, 0.5-1 for a labelled lesion) is below
    :data:`LOW_CONFIDENCE` would, left out, put the total Agatston into another risk
    category. Uncertain lesions that cannot change the category raise nothing.
``artery_names``
    The artery names are the segmenter's own, not the ascending aorta's (the report's
    ``model.artery_names_from``: the aorta was not found, or its names were at odds with the
    segmenter's on the side of the coronary tree, by how much where the report's
    ``model.artery_names_check`` says, or the segmenter's names were asked for); or they
    are the aorta's, unchecked: the segmenter was sure of the side of less than
    :data:`..pipeline.naming.MIN_SURE_SHARE` of the calcium away from the root, too little to
    check the aorta found against (``model.artery_names_check.check_made`` false).
    On real scans the segmenter's names are often wrong; the total and the risk category
    do not depend on the names. Measured on the real dev scans with bundle 0.6.8
    (``training/results/real-dev-coca-segmenter-names.md``, ``real-dev-coca.md``): with the
    segmenter's names at most 16 % of the AI's Agatston lay on the right artery, named
    from the aorta at most 65 %. A study without calcium, or a phantom (named by side),
    raises nothing.
``contrast``
    The CT looks contrast-enhanced (:mod:`..pipeline.contrast`): the scores are not valid.
``slice_spacing``
    The slices are unevenly spaced (a DICOM series whose gaps differ by more than
    :data:`UNEVEN_SPACING` of the median gap: a slice missing or doubled; the reader refuses
    more than 10 %), or gapped (slices thinner than the distance between them, by more than
    10 %: calcium between them is not imaged).
``coverage``
    Calcium on the first or last slice of the scan: the scan may not cover the whole heart,
    and calcium beyond it is not scored.
``noise``
    Heavy image noise: the standard deviation of HU in homogeneous soft tissue (blood pool,
    myocardium) of the heart field, :func:`image_noise_hu`, above :data:`NOISE_HU`.
    Calcium-scoring scans usually measure 15-30 HU; above about 35 HU noise crosses the
    130 HU threshold (it is 2.5 SDs above blood) and small lesions are lost or over-scored.
    Measured: the real QRM phantom series (3 mm) 21 HU, not flagged; the two real 1.5 mm
    patient slices 40 HU (blood 44 +- 42 HU by hand in the left ventricle), flagged;
    synthetic studies follow the generator's noise (15 HU -> 8-25, 60 HU -> > 45).
``kernel``
    A sharp reconstruction kernel named by the DICOM series (ConvolutionKernel, in
    ``ct.meta["kernel"]``, :func:`sharp_kernel`): Agatston scoring is defined on a standard
    soft-tissue kernel (e.g. Siemens B35f / Qr36, GE Standard); a sharp one raises calcium's
    peaks and its noise passes as calcium. Measured on synthetic held-out studies
    reconstructed with a sharp kernel (``training/evaluate_kernels.py``): bundle 0.5.0 had
    the risk category right on 18 of 30 (29 of 30 as drawn) and scored 1 of 6 calcium-free
    studies 0. A kernel the rule does not know raises nothing.
``metal``
    Metal in the heart region: at least :data:`METAL_MIN_MM3` of voxels above
    :data:`METAL_HU` (cortical bone stays below about 2000 HU; pacemaker and ICD leads,
    mechanical valves, clips and wires reach the top of the CT scale). Its streaks and
    blooming distort the calcium scores near it.

The heart region is the pipeline's (:meth:`..pipeline.inference.PipelineResult.heart_region`)
when given, else the heart field the candidates are searched in (a 160 mm square around
the heart centre found from HU alone, on every slice).

After the scores are edited and rescored (:func:`rescored_flags`), the flags of the image
are kept, ``coverage`` is found again on the new lesions, and ``model_confidence`` and
``artery_names`` are dropped once a reader has edited the segments (they speak of the AI's
lesions).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..scoring.agatston import risk_category

#: A lesion's calcium confidence below this counts as unsure.
LOW_CONFIDENCE = 0.75
#: Gaps between slices differing by more than this share of the median gap are uneven.
UNEVEN_SPACING = 0.05
#: Slices thinner than this share of their spacing are gapped.
GAPPED_SHARE = 0.9
#: Image noise (HU SD in soft tissue) above this is heavy.
NOISE_HU = 35.0
#: Voxels above this HU are metal ...
METAL_HU = 2500.0
#: ... when they make at least this volume (mm^3) in the heart region.
METAL_MIN_MM3 = 2.0

#: Siemens kernels name their sharpness with two digits (B35f, Br40d, Qr36, I44f): from this
#: number on a kernel is sharp.
SIEMENS_SHARP_FROM = 45
#: Words of the sharp kernels' names (GE LUNG, BONE, BONEPLUS, EDGE, DETAIL; Philips and
#: others' lung and bone kernels).
SHARP_WORDS = ("LUNG", "BONE", "EDGE", "SHARP", "DETAIL")

#: Flags that describe the image (kept when the segments are edited and rescored).
IMAGE_FLAGS = ("contrast", "slice_spacing", "noise", "kernel", "metal")
#: Flags that speak of the AI's lesions (dropped once a reader edits the segments).
AI_FLAGS = ("model_confidence", "artery_names")


def _flag(flag: str, message: str) -> dict:
    return {"flag": flag, "message": message}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _slices_text(slices: Sequence[int]) -> str:
    s = sorted(set(int(v) for v in slices))
    if len(s) <= 4:
        return ", ".join(str(v) for v in s)
    return f"{s[0]}-{s[-1]}"


# ----------------------------------------------------------------------------- model confidence


def confidence_flag(report: dict, low: float = LOW_CONFIDENCE) -> dict | None:
    """``model_confidence`` (see the module docstring), or None."""
    lesions = report.get("lesions") or []
    unsure = [les for les in lesions if isinstance(les.get("confidence"), dict)
              and les["confidence"].get("calcium") is not None and float(les["confidence"]["calcium"]) < low]
    if not unsure:
        return None
    total = float(report["total"]["agatston"])
    share = sum(float(les["agatston"]) for les in unsure)
    now, without = risk_category(total), risk_category(max(total - share, 0.0))
    if now == without:
        return None
    conf = [float(les["confidence"]["calcium"]) for les in unsure]
    spread = f"{min(conf):.2f}" if len(conf) == 1 else f"{min(conf):.2f}-{max(conf):.2f}"
    return _flag(
        "model_confidence",
        f"the risk category rests on {_plural(len(unsure), 'lesion')} the model is unsure of (calcium confidence "
        f"{spread}, {share:.1f} of {total:.1f} Agatston, slice {_slices_text([les['slice'] for les in unsure])}): "
        f"without {'it' if len(unsure) == 1 else 'them'} the category would be {without}, not {now}; check "
        f"{'it' if len(unsure) == 1 else 'them'}",
    )


def _percent(share: float, bound: float) -> str:
    """``share`` in per cent for a message that compares it with ``bound``: one decimal where
    the whole number would read as the bound itself."""
    text = f"{100 * share:.0f}"
    return f"{100 * share:.1f}" if text == f"{100 * bound:.0f}" and share != bound else text


def _disagreement_text(report: dict) -> str:
    """How far the two disagreed, from the report's ``model.artery_names_check``
    (:meth:`..pipeline.naming.NamingCheck.as_dict`), or "" where it does not say."""
    check = (report.get("model") or {}).get("artery_names_check") or {}
    share, limit = check.get("sides_disagree_share"), check.get("max_disagreement")
    if not isinstance(share, (int, float)) or not isinstance(limit, (int, float)):
        return ""
    which = ("of the calcium, all of it near the aortic root" if check.get("zone_only")
             else "of the calcium away from the aortic root whose side the segmenter is sure of")
    return f" on the side of the tree of {_percent(share, limit)} % {which}, more than {100 * limit:.0f} %"


def _unchecked_names_flag(report: dict) -> dict | None:
    """``artery_names`` where the names are the aorta's but the check on them was not made
    (the report's ``model.artery_names_check``), or None."""
    check = (report.get("model") or {}).get("artery_names_check") or {}
    if check.get("check_made") is not False:
        return None
    sure, need = check.get("segmenter_sure_share"), check.get("min_sure_share")
    if not isinstance(sure, (int, float)) or not isinstance(need, (int, float)):
        return None
    return _flag(
        "artery_names",
        "the artery names come from the position of the ascending aorta, unchecked: the segmenter was sure of the "
        f"side of the coronary tree of only {_percent(sure, need)} % of the calcium away from the aortic root (the "
        f"check needs {100 * need:.0f} %), so a vessel taken for the aorta by mistake would not be caught; the total "
        "and the risk category do not depend on the names; check which artery each lesion lies on",
    )


def artery_names_flag(report: dict) -> dict | None:
    """``artery_names`` (see the module docstring), or None."""
    source = (report.get("model") or {}).get("artery_names_from")
    if not isinstance(source, str) or not source or float((report.get("total") or {}).get("agatston", 0.0)) <= 0:
        return None
    if source == "aorta":
        return _unchecked_names_flag(report)
    if not source.startswith("segmenter"):
        return None
    why = {"segmenter: no aorta found": "the ascending aorta was not found on this scan",
           "segmenter: the aorta disagrees": "the names from the ascending aorta's position were at odds with the "
                                             "segmenter's" + _disagreement_text(report),
           "segmenter: asked for": "requested with --naming segmenter"}.get(source, source)
    return _flag(
        "artery_names",
        f"the artery names are the segmenter's own, not assigned from the position of the ascending aorta ({why}): "
        "on real scans they are often wrong; the total and the risk category do not depend on them; check which "
        "artery each lesion lies on",
    )


# ----------------------------------------------------------------------------- the image


def contrast_flag(ct) -> dict | None:
    """``contrast``: the contrast check of the CT (:func:`..pipeline.contrast.check_contrast`,
    cached on the CT), or None."""
    from ..pipeline.contrast import check_contrast

    message = check_contrast(ct)
    return _flag("contrast", f"contrast-enhanced scan? {message}") if message else None


def slice_spacing_flag(ct) -> dict | None:
    """``slice_spacing`` from the geometry the reader found (``ct.meta``: ``slice_gaps_mm``
    (smallest, largest gap between consecutive slices) of a DICOM series, and
    ``slice_thickness``), or None."""
    dz = float(ct.spacing[0])
    notes = []
    gaps = ct.meta.get("slice_gaps_mm") if isinstance(ct.meta, dict) else None
    if gaps is not None and len(gaps) == 2 and dz > 0:
        lo, hi = float(gaps[0]), float(gaps[1])
        if max(dz - lo, hi - dz) > UNEVEN_SPACING * dz:
            notes.append(f"the slices are unevenly spaced (gaps of {lo:.2f}-{hi:.2f} mm, median {dz:.2f} mm): a slice may be "
                         "missing or doubled, and the scores assume even slices")
    thickness = ct.meta.get("slice_thickness") if isinstance(ct.meta, dict) else None
    if thickness is not None and dz > 0 and float(thickness) < GAPPED_SHARE * dz:
        notes.append(f"the slices are {float(thickness):g} mm thick but {dz:.3g} mm apart: {dz - float(thickness):.3g} mm "
                     "of every slice step is not imaged and calcium there is missed")
    return _flag("slice_spacing", "; ".join(notes)) if notes else None


def coverage_flag(report: dict, n_slices: int) -> dict | None:
    """``coverage``: calcium on the first or last slice of the scan, or None."""
    ends = {0: "first", int(n_slices) - 1: "last"}
    at = [les for les in report.get("lesions") or [] if int(les.get("slice", -1)) in ends]
    if not at or n_slices < 2:
        return None
    which = sorted({ends[int(les["slice"])] for les in at}, key=["first", "last"].index)
    arteries = sorted({les["artery"] for les in at})
    share = sum(float(les["agatston"]) for les in at)
    return _flag(
        "coverage",
        f"calcium on the {' and '.join(which)} slice{'s' if len(which) > 1 else ''} of the scan ({', '.join(arteries)}, "
        f"{share:.1f} Agatston): the scan may not cover the whole heart, and calcium beyond it is not scored",
    )


def heart_field(ct) -> np.ndarray:
    """bool (y, x): the heart field of the candidate search (a square of the candidate
    settings' ``field_mm``, those of the shipped bundle, around the heart centre found from
    HU alone)."""
    from ..pipeline.anatomy import heart_centre
    from ..pipeline.candidates import CandidateConfig
    from ..pipeline.preprocess import field_for

    hu = np.asarray(ct.hu)
    centre = heart_centre(hu, ct.spacing)
    fld = field_for(centre, ct.spacing, CandidateConfig().field_mm)
    iy, ix, _fy, _fx = fld.clipped(hu.shape[1:])
    out = np.zeros(hu.shape[1:], dtype=bool)
    out[iy, ix] = True
    return out


def _central_slices(nz: int, most: int = 9) -> np.ndarray:
    """Up to ``most`` indices spread over the central 60 % of ``nz`` slices."""
    lo, hi = int(np.floor(0.2 * (nz - 1))), int(np.ceil(0.8 * (nz - 1)))
    return np.unique(np.linspace(lo, hi, min(most, hi - lo + 1)).round().astype(int))


def image_noise_hu(ct, region: np.ndarray | None = None) -> float:
    """Image noise (HU): the median over up to nine central slices of
    :func:`..pipeline.candidates.slice_noise` (the SD of HU in 8 mm windows of homogeneous
    soft tissue, 0-100 HU) within the bounding box of the heart region on that slice
    (``region``, bool (z, y, x); the central slices of the slices it holds), else of the
    heart field (the central slices of the scan)."""
    from ..pipeline.candidates import slice_noise

    hu = np.asarray(ct.hu)
    field = heart_field(ct) if region is None else None
    if region is None:
        slices = _central_slices(hu.shape[0])
    else:  # the central slices of the region's own range (a chest CT's region is its cardiac range)
        held = np.flatnonzero(np.asarray(region).any(axis=(1, 2)))
        slices = held[_central_slices(held.size)] if held.size else held
    values = []
    for k in slices:
        where = field if region is None else np.asarray(region[k], dtype=bool)
        if not where.any():
            continue
        rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
        crop = hu[k, rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1].astype(np.float32)
        values.append(float(slice_noise(crop[None], ct.spacing[1:])[0]))
    return float(np.median(values)) if values else 0.0


def noise_flag(ct, region: np.ndarray | None = None, noise_hu: float | None = None) -> dict | None:
    """``noise`` (see the module docstring), or None."""
    noise = image_noise_hu(ct, region) if noise_hu is None else float(noise_hu)
    if noise <= NOISE_HU:
        return None
    return _flag(
        "noise",
        f"heavy image noise (about {noise:.0f} HU SD in the heart's soft tissue; calcium-scoring scans usually have "
        f"15-30 HU): noise may be scored as calcium and small lesions may be missed",
    )


def sharp_kernel(name: str | None) -> bool:
    """Whether a ConvolutionKernel value (several values joined by a backslash) names a sharp
    kernel: a Siemens name with a sharpness of :data:`SIEMENS_SHARP_FROM` or more (B46f,
    Br54d, Qr44, I70f), or one with a word of :data:`SHARP_WORDS`. Soft-tissue and body
    kernels (B30f, Qr36, STANDARD, SOFT, FC12, B) and names it does not know are not."""
    import re

    for value in str(name or "").split("\\"):
        v = value.strip().upper()
        if any(w in v for w in SHARP_WORDS):
            return True
        m = re.fullmatch(r"[A-Z]{1,2}(\d{2})[A-Z]?(\s*\\?\s*\d)?", v)
        if m and int(m.group(1)) >= SIEMENS_SHARP_FROM:
            return True
    return False


def kernel_flag(ct) -> dict | None:
    """``kernel`` (see the module docstring), or None."""
    name = str((getattr(ct, "meta", None) or {}).get("kernel") or "")
    if not sharp_kernel(name):
        return None
    return _flag(
        "kernel",
        f"sharp reconstruction kernel ({name}): the Agatston score is defined on a standard soft-tissue kernel "
        f"(e.g. B35f, Qr36, GE Standard); noise may be scored as calcium. Reconstruct with such a kernel",
    )


def metal_flag(ct, region: np.ndarray | None = None) -> dict | None:
    """``metal`` (see the module docstring), or None."""
    hu = np.asarray(ct.hu)
    if not hu.size or not float(hu.max()) > METAL_HU:  # one pass, nothing CT-sized made
        return None
    field = heart_field(ct) if region is None else None
    counts = {}
    for k in np.flatnonzero(hu.max(axis=(1, 2)) > METAL_HU):
        where = field if region is None else np.asarray(region[k], dtype=bool)
        n = int(np.count_nonzero((hu[k] > METAL_HU) & where))
        if n:
            counts[int(k)] = n
    dz, dy, dx = (float(s) for s in ct.spacing)
    volume = float(sum(counts.values())) * dz * dy * dx
    if volume < METAL_MIN_MM3:
        return None
    slices = sorted(counts)
    return _flag(
        "metal",
        f"metal in the heart region ({volume:.1f} mm^3 above {METAL_HU:g} HU, slice {_slices_text(slices)}: a pacemaker "
        "or ICD lead, valve, clip or wire?): its streaks and blooming distort the calcium scores near it",
    )


# ----------------------------------------------------------------------------- all of them


def review_flags(ct, report: dict, heart_region: np.ndarray | None = None) -> list[dict]:
    """The report's ``review_flags`` for a CT and its report (see the module docstring);
    ``heart_region``: bool (z, y, x) on the CT grid, the pipeline's, when known."""
    region = None if heart_region is None else np.asarray(heart_region, dtype=bool)
    if region is not None and not region.any():
        region = None  # no heart region found: the heart field
    found = [
        confidence_flag(report),
        artery_names_flag(report),
        contrast_flag(ct),
        slice_spacing_flag(ct),
        coverage_flag(report, int(np.asarray(ct.hu).shape[0])),
        noise_flag(ct, region),
        kernel_flag(ct),
        metal_flag(ct, region),
    ]
    return [f for f in found if f is not None]


def rescored_flags(previous: dict, report: dict, n_slices: int, edited: bool) -> list[dict]:
    """The flags of a rescored result: ``previous``'s image flags, ``coverage`` found again on
    ``report``'s lesions, ``model_confidence`` and ``artery_names`` kept only while no segment
    was edited."""
    old = [f for f in previous.get("review_flags") or [] if isinstance(f, dict)]
    out = [f for f in old if f.get("flag") in IMAGE_FLAGS or (f.get("flag") in AI_FLAGS and not edited)]
    coverage = coverage_flag(report, n_slices)
    if coverage is not None:
        out.append(coverage)
    order = ["model_confidence", "artery_names", "contrast", "slice_spacing", "coverage", "noise", "kernel", "metal"]
    return sorted(out, key=lambda f: order.index(f["flag"]) if f.get("flag") in order else len(order))


def flags_text(report: dict | None, prefix: str = "Review: ") -> str:
    """One line per review flag (for a console or a panel); '' when there is none."""
    items = (report or {}).get("review_flags") or []
    return "\n".join(f"{prefix}{f['message']}" for f in items if isinstance(f, dict) and f.get("message"))
