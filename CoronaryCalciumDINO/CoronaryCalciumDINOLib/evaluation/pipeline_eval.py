"""Run model bundles over labelled studies and collect everything the metrics need.

For each study the segmenter runs once on **every** candidate of every slice (the "UNET
alone" baseline); the detector's probabilities are computed for every candidate too.
Because the segmenter sees each candidate independently of the selection, the gated
pipeline's labels (the segmenter's on the candidates the detector passed) come from the
same run (``PipelineResult.gated_labels``), so both modes come from one run. Scores of both modes and of the reference labels use the same
:class:`..scoring.ScoringParams`.

The metric functions themselves live in :mod:`.metrics`; :func:`summarise` only arranges
their results: slice detection, per-artery and total Agatston agreement, risk categories,
for ``pipeline`` (detector-gated) and ``unet_all_slices``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..constants import ARTERIES
from ..data.studies import load_study
from ..errors import InputError
from ..pipeline import run_pipeline
from ..scoring import ScoringParams, score, slices_with_calcium
from ..synth import write_studies
from .metrics import agreement_metrics, risk_metrics, slice_metrics


@dataclass
class StudyOutcome:
    """Predictions and reference of one study."""

    study_id: str
    probabilities: np.ndarray  # (z,) float32
    positive: np.ndarray  # (z,) bool: reference slices holding a kept lesion
    selected: np.ndarray  # (z,) bool: detector selection
    reference: dict  # artery/total -> Agatston
    pipeline: dict  # artery/total -> Agatston, detector-gated
    unet_all: dict  # artery/total -> Agatston, segmenter on every slice
    seconds: float = 0.0
    phantom: bool = False  # the pipeline took the scan for a calcium-scoring phantom


def _agatston(result) -> dict:
    d = {a: float(result.arteries[a].agatston) for a in ARTERIES}
    d["total"] = float(result.total.agatston)
    return d


def synthetic_study_dirs(seeds, cache_dir: str | Path, progress: Callable[[float, str], None] | None = None,
                         **overrides) -> list[Path]:
    """Study folders of the synthetic ``seeds`` under ``cache_dir`` (generated once, then reused).

    ``overrides`` go to :func:`..synth.generate_study` (e.g. ``matrix=256``).
    """
    return [Path(d) for d in write_studies(list(seeds), cache_dir, progress=progress, **overrides)]


def evaluate_study(study, bundle, device: str = "auto", params=None) -> StudyOutcome:
    """Run ``bundle`` on one :class:`..data.studies.Study` (both modes) against its labels."""
    params = params or ScoringParams()
    t = time.perf_counter()
    res = run_pipeline(study.ct, bundle, device=device, params=params, all_slices=True)
    seconds = time.perf_counter() - t
    hu = study.ct.hu
    selected = res.selected
    gated = res.gated_labels
    ref = score(hu, study.labels, study.ct.spacing, params)
    return StudyOutcome(
        study_id=study.id,
        probabilities=res.slice_probabilities,
        positive=slices_with_calcium(ref, hu.shape[0]),
        selected=selected,
        reference=_agatston(ref),
        pipeline=_agatston(score(hu, gated, study.ct.spacing, params)),
        unet_all=_agatston(res.score),
        seconds=seconds,
        phantom=bool(res.counts.get("phantom", 0)),
    )


def evaluate_bundle(bundle, study_dirs, device: str = "auto", params=None,
                    progress: Callable[[float, str], None] | None = None) -> list[StudyOutcome]:
    """:func:`evaluate_study` over study folders (loaded one at a time)."""
    dirs = list(study_dirs)
    if not dirs:
        raise InputError("no studies to evaluate")
    out = []
    for i, d in enumerate(dirs):
        out.append(evaluate_study(load_study(d, with_heart=False), bundle, device, params))
        if progress:
            progress((i + 1) / len(dirs), f"evaluated {out[-1].study_id}")
    return out


def _mode_metrics(outcomes: list[StudyOutcome], key: str) -> dict:
    ref = {a: [o.reference[a] for o in outcomes] for a in (*ARTERIES, "total")}
    pred = {a: [getattr(o, key)[a] for o in outcomes] for a in (*ARTERIES, "total")}
    zero = [o for o in outcomes if o.reference["total"] == 0]
    return {
        "agatston_agreement": {a: agreement_metrics(pred[a], ref[a]) for a in (*ARTERIES, "total")},
        "risk": risk_metrics(pred["total"], ref["total"]),
        # "power of zero": studies without coronary calcium that are scored exactly 0
        "zero_studies": len(zero),
        "zero_scored_zero": (sum(getattr(o, key)["total"] == 0 for o in zero) / len(zero)) if zero else None,
    }


def summarise(outcomes: list[StudyOutcome], threshold: float, target_sensitivity: float = 0.90) -> dict:
    """Metrics of one bundle over studies: slice detection, both scoring modes, per study."""
    probs = np.concatenate([o.probabilities for o in outcomes])
    pos = np.concatenate([o.positive for o in outcomes])
    return {
        "n_studies": len(outcomes),
        "slices": slice_metrics(pos, probs, threshold, target_sensitivity),
        "pipeline": _mode_metrics(outcomes, "pipeline"),
        "unet_all_slices": _mode_metrics(outcomes, "unet_all"),
        "seconds_per_study": float(np.mean([o.seconds for o in outcomes])),
        "taken_for_phantoms": int(sum(o.phantom for o in outcomes)),
        "studies": [
            {"id": o.study_id, "reference": o.reference, "pipeline": o.pipeline, "unet_all_slices": o.unet_all,
             "slices_positive": int(o.positive.sum()), "slices_selected": int(o.selected.sum()),
             "slices": int(o.positive.size), "phantom": o.phantom}
            for o in outcomes
        ],
    }


def compare_slice_detection(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> dict:
    """Slice detection of two bundles side by side, with B's relative FN / FP reduction."""

    def rates(m):
        t = m["slices"]["at_threshold"]
        return {k: t[k] for k in ("sensitivity", "specificity", "fn_rate", "fp_rate")} | {
            "auroc": m["slices"]["auroc"], "auprc": m["slices"]["auprc"]}

    ra, rb = rates(a), rates(b)

    def reduction(key):
        va, vb = ra[key], rb[key]
        if va is None or vb is None or va == 0:
            return None
        return (va - vb) / va

    return {
        name_a: ra,
        name_b: rb,
        "fn_rate_reduction": reduction("fn_rate"),
        "fp_rate_reduction": reduction("fp_rate"),
        "risk_accuracy": {name_a: a["pipeline"]["risk"]["accuracy"], name_b: b["pipeline"]["risk"]["accuracy"]},
    }
