"""Training samples of the candidate networks, cached per study set.

Every sample comes from :mod:`CoronaryCalciumDINOLib.pipeline.candidates` (the functions
inference uses): candidates of each study, their context, their class (target), HU crops
a little larger than the network input (``margin`` pixels each side, so training can move
and zoom the crop) and per-pixel labels. The network input is the central
``crop_px`` of a stored crop, identical to what inference computes.

Candidates are those the pipeline gives its networks: of the slices a cardiac scan would hold
(:func:`~CoronaryCalciumDINOLib.pipeline.inference.locate`), and for a patient (not a
calcium-scoring phantom) only those in the heart region and off bone
(:func:`~CoronaryCalciumDINOLib.pipeline.inference.keep_heart_region`).

Negatives (candidates that are not coronary calcium, mostly noise) of *training* studies
can be capped per study (``max_neg``): each kept negative then carries the weight
``negatives / kept`` so that statistics stay those of all candidates. Validation sets keep
every candidate (``max_neg=None``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from CoronaryCalciumDINOLib.data.studies import load_study
from CoronaryCalciumDINOLib.pipeline import preprocess as pp
from CoronaryCalciumDINOLib.pipeline.candidates import (
    CandidateConfig,
    crop_hu,
    subset,
    crop_labels,
    find_candidates,
    looks_like_phantom,
    random_points,
)
from CoronaryCalciumDINOLib.pipeline.inference import keep_heart_region, locate, orient

#: 3: candidates of the cardiac range, in the heart region and off bone (the anatomy step)
CACHE_VERSION = 3


def study_samples(path, cfg: CandidateConfig, margin: int, max_neg: int | None, n_random: int, rng) -> dict:
    """Arrays of one study: see :func:`build_cache`."""
    s = load_study(path, with_heart=False)
    view, _ = orient(s.ct, np.asarray(s.ct.hu))
    flips, hu = view.flips, view.hu
    axes = pp.flip_axes(flips)
    labels = np.ascontiguousarray(np.flip(s.labels, axes) if axes else s.labels)
    anatomy, (z0, z1) = locate(hu, s.ct.spacing)
    hu, labels = hu[z0:z1], labels[z0:z1]
    c = find_candidates(hu, s.ct.spacing, cfg)
    if not looks_like_phantom(c):
        c, _ = keep_heart_region(c, anatomy, hu)
    y = c.targets(labels)
    idx = np.arange(len(c))
    weight = np.ones(len(c), dtype=np.float32)
    neg = np.flatnonzero(y == 0)
    if max_neg is not None and neg.size > max_neg:
        keep_neg = rng.choice(neg, max_neg, replace=False)
        idx = np.sort(np.concatenate([np.flatnonzero(y > 0), keep_neg]))
        weight[keep_neg] = neg.size / max_neg
    size = cfg.crop_px + 2 * margin
    slice_has = np.zeros(np.asarray(s.ct.hu).shape[0], dtype=bool)
    slice_has[np.asarray(s.meta.get("slices_with_calcium", []), dtype=int)] = True
    if flips[0]:
        slice_has = slice_has[::-1].copy()
    slice_has = slice_has[z0:z1]
    rnd = random_points(c, n_random, rng)
    return {
        "crops": crop_hu(hu, c, idx, size=size).astype(np.float16),
        "pixel_labels": crop_labels(labels, c, idx, size=cfg.crop_px),
        "masks": subset(c, idx).masks().astype(np.uint8),
        "context": c.context[idx],
        "target": y[idx],
        "weight": weight[idx],
        "z": c.z[idx],
        "slice_has_calcium": slice_has,
        "random_crops": crop_hu(hu, rnd, size=size).astype(np.float16),
        "n_candidates": len(c),
    }


def build_cache(studies, out: Path, cfg: CandidateConfig, margin: int = 4, max_neg: int | None = 500,
                n_random: int = 200, seed: int = 0, log=print) -> Path:
    """Write ``out`` (.npz) with the samples of ``studies`` (list of study folders); resumable by file.

    Keys: ``crops`` (N, P+2m, P+2m) float16 HU, ``pixel_labels`` (N, P, P) uint8, ``masks`` (N, P, P) uint8 (pixels of the candidate itself),
    ``context`` (N, C), ``target`` (N,) 0..4, ``weight`` (N,), ``study`` (N,) index into
    ``study_ids``, ``z`` (N,), ``slice_has_calcium`` (total slices,) with ``slice_offset``
    (studies + 1,), ``random_crops`` (R, P+2m, P+2m) float16 HU, ``config`` (JSON).
    """
    out = Path(out)
    meta = {"version": CACHE_VERSION, "config": cfg.to_dict(), "margin": margin, "max_neg": max_neg,
            "n_random": n_random, "seed": seed, "studies": [Path(p).name for p in studies]}
    if out.exists():
        with np.load(out, allow_pickle=False) as z:
            if json.loads(str(z["meta"])) == meta:
                log(f"cache {out} is up to date")
                return out
    rng = np.random.default_rng(seed)
    parts = []
    t0 = time.perf_counter()
    for i, p in enumerate(studies):
        parts.append(study_samples(p, cfg, margin, max_neg, n_random, rng))
        if (i + 1) % 20 == 0 or i + 1 == len(studies):
            log(f"  cache {out.name}: {i + 1}/{len(studies)} studies ({time.perf_counter() - t0:.0f} s)")
    sizes = [len(q["target"]) for q in parts]
    slices = [len(q["slice_has_calcium"]) for q in parts]
    arrays = {
        k: np.concatenate([q[k] for q in parts])
        for k in ("crops", "pixel_labels", "masks", "context", "target", "weight", "z", "slice_has_calcium", "random_crops")
    }
    arrays["study"] = np.repeat(np.arange(len(parts)), sizes)
    arrays["slice_offset"] = np.concatenate([[0], np.cumsum(slices)])
    arrays["n_candidates"] = np.array([q["n_candidates"] for q in parts])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, meta=json.dumps(meta), **arrays)
    tmp.replace(out)
    return out


def load_cache(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    d["meta"] = json.loads(str(d["meta"]))
    return d
