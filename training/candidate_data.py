"""Training samples of the candidate networks, cached per study set.

Every sample comes from :mod:`CoronaryCalciumDINOLib.pipeline.candidates` (the functions
inference uses): candidates of each study, their context, their class (target), HU crops
a little larger than the network input (``margin`` pixels each side, so training can move
and zoom the crop) and per-pixel labels. The network input is the central
``crop_px`` of a stored crop, identical to what inference computes.

Candidates are those the pipeline gives its networks: of the slices a cardiac scan would hold
(:func:`~CoronaryCalciumDINOLib.pipeline.inference.locate`), and for a patient (not a
calcium-scoring phantom) only those in the heart region and off bone
(:func:`~CoronaryCalciumDINOLib.pipeline.inference.keep_heart_region`). A *training* cache
can keep the others too (``outside_region``; ``in_region`` tells them apart): the bone,
calcified costal cartilage and chest wall of the heart field, each with its own class (almost
all non-coronary; the few labelled coronary ones the region's edge cuts stay positives).
Inference never gives them to the networks, but a speck of calcified cartilage where it
touches the heart's front lies inside the region; without the chest wall's specks as
negatives (about a hundred bright ones per study against 0-3 inside the region) a detector
learns that a bright speck is calcium and calls that one LAD.

Negatives (candidates that are not coronary calcium, mostly noise) of *training* studies
can be capped per study (``max_neg``): each kept negative then carries the weight
``negatives / kept`` so that statistics stay those of all candidates. Validation sets keep
every candidate (``max_neg=None``).

A share of the studies (``cut_share``, the recipe's ``--cut-fields``) is first cut to a
heart-centred field of view (:func:`cut_field`: 180-220 mm, its centre up to 30 mm off the
heart's), as a gated scan's field centred by eye shows the chest: the samples are then what
inference computes on that cut scan, the anatomy step included. The generator's own fields
are 205 mm or wider and at most 15 mm off the heart, so without the cut the networks never
see the 160 mm heart field reach past the image, where the context of a candidate near the
view's edge reads as air.

Multi-view pretraining (VET-DINO on candidates) needs, for each candidate, the crop at the
same (x, y) on the neighbouring slices: :func:`build_adjacent` writes them beside an existing
cache (``crops_adjacent`` only, aligned with the cache's candidates, matched to recomputed
candidates by their crops).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
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
from CoronaryCalciumDINOLib.pipeline.inference import heart_region_mask, locate, orient

#: 3: candidates of the cardiac range, in the heart region and off bone (the anatomy step);
#: 4: on a study's first and last slice, the missing neighbour mirrored, not air
#: (:func:`CoronaryCalciumDINOLib.pipeline.candidates.neighbour_slices`); 5: bone includes dense
#: regions of any size reaching the image's in-plane edge (:func:`CoronaryCalciumDINOLib.pipeline.anatomy.find_bone`);
#: 6: the lungs' hull reaches the view's right edge where the right lung's front is out of view
#: (:func:`CoronaryCalciumDINOLib.pipeline.anatomy._right_lung_cut_front`), and air at the image's
#: edge is lung only with a median above the air round the patient's (``anatomy.find_lungs``);
#: 7: a dense region near the back edge is bone by being cut there only if it lies across the
#: view, not a strip along it (``anatomy._cut_at_back_edge``)
CACHE_VERSION = 7

#: The heart-centred fields a cache cuts a share of its studies to (module docstring,
#: :func:`cut_field`): a square of ``CUT_FIELD_MM`` mm whose centre lies up to ``CUT_OFF_MM``
#: mm (each of back / left) from the heart's centre.
CUT_FIELD_MM = (180.0, 220.0)
CUT_OFF_MM = 30.0

#: Of the candidates an ``outside_region`` cache holds beyond the heart region, the segmenter
#: trains on those of at most this area (mm^2): the chest wall's specks, not its bone
#: (``train_candidates --seg-outside-max-mm2``, ``retrain_segmenter --outside-max-mm2``, the recipe).
SEGMENTER_OUTSIDE_MAX_MM2 = 20.0
#: The segmenter's size balancing (``train_candidates --seg-size-power``;
#: :func:`training.train_candidates.size_weights`), coronary and other candidates alike.
#: 0: candidates drawn alike, as bundles up to 0.6.5 were trained.
SEGMENTER_SIZE_POWER = 0.5
#: Share of the segmenter's training candidates whose coarse views of the slice
#: (:data:`training.train_candidates.COARSE_CONTEXT`, 50 of the 64 context features, up to
#: 60 mm round a candidate) read as the average one (``--seg-coarse-dropout``). 0: none, as
#: bundles up to 0.6.5 were trained.
SEGMENTER_COARSE_DROPOUT = 0.5
#: What the segmenter's draws with the coarse views dropped learn (``--seg-dropped-learn``):
#: ``arteries``, the five classes as every other draw (the 0.6.6 candidate, not shipped: its
#: sides of the coronary tree disagree with the aorta's on real dev scan 4, which then loses
#: its names), or ``calcium``, calcium against background only: the arteries are learnt
#: with the coarse views, and the network decides calcium without them
#: (``SegmenterConfig.calcium_blind``). training/results/ccdino-0.6.7.md.
SEGMENTER_DROPPED_LEARN = "calcium"
DROPPED_LEARN_CHOICES = ("arteries", "calcium")


def add_segmenter_draw_arguments(parser, prefix: str = "--seg-") -> None:
    """The segmenter's draw settings as command-line options (``PREFIXsize-power``,
    ``PREFIXcoarse-dropout``, ``PREFIXdropped-learn``): one definition for the recipe, ``train_candidates`` and
    ``retrain_segmenter``."""
    parser.add_argument(f"{prefix}size-power", type=float, default=SEGMENTER_SIZE_POWER,
                        help=f"segmenter: candidates drawn with weight n^-POWER, n those of their size bin "
                             f"(default {SEGMENTER_SIZE_POWER:g}; 0: alike)")
    parser.add_argument(f"{prefix}coarse-dropout", type=float, default=SEGMENTER_COARSE_DROPOUT,
                        help=f"segmenter: share of training candidates whose coarse views of the slice read as the "
                             f"average one (default {SEGMENTER_COARSE_DROPOUT:g}; 0: none)")
    parser.add_argument(f"{prefix}dropped-learn", default=SEGMENTER_DROPPED_LEARN, choices=DROPPED_LEARN_CHOICES,
                        help="segmenter: what the draws with the coarse views dropped learn: arteries (the five "
                             "classes) or calcium (calcium against background; the sides of the tree are then learnt "
                             f"with the views only) (default {SEGMENTER_DROPPED_LEARN})")


def segmenter_draw_problem(size_power: float, coarse_dropout: float, dropped_learn: str,
                           prefix: str = "--seg-") -> str | None:
    """What is wrong with the segmenter's draw settings (None: nothing), naming the option."""
    if size_power < 0:
        return f"{prefix}size-power must be >= 0, got {size_power:g}"
    if not 0 <= coarse_dropout <= 1:
        return f"{prefix}coarse-dropout must be a share between 0 and 1, got {coarse_dropout:g}"
    if dropped_learn not in DROPPED_LEARN_CHOICES:
        return f"{prefix}dropped-learn must be one of {', '.join(DROPPED_LEARN_CHOICES)}, got {dropped_learn!r}"
    return None


def adjacent_step(dz_mm: float) -> int:
    """Slice offset of the neighbouring-slice view: the nearest offset of the multi-view rule
    (:func:`training.common.views.adjacent_offsets`; 1 slice at 3 mm, 2 at 1.5 mm)."""
    from .common.views import adjacent_offsets

    return int(adjacent_offsets(dz_mm)[0])


def cut_field(study_name: str, share: float) -> tuple[float, float, float] | None:
    """The heart-centred field (side mm, centre back mm, centre left mm from the heart's
    centre) a cache cuts the study named ``study_name`` (e.g. ``synth-000123``) to, or None
    (a ``1 - share`` of the studies; always None for ``share`` 0): drawn from the study's
    seed alone, so a study is cut alike in every cache and every run."""
    digits = re.search(r"\d+", str(study_name))
    if share <= 0 or digits is None:
        return None
    rng = np.random.default_rng([int(digits.group()), 1801])
    if rng.random() >= share:
        return None
    side = float(rng.uniform(*CUT_FIELD_MM))
    back, left = (float(v) for v in rng.uniform(-CUT_OFF_MM, CUT_OFF_MM, size=2))
    return side, back, left


def _cut(hu: np.ndarray, labels: np.ndarray, spacing, field: tuple[float, float, float]):
    """``hu`` and ``labels`` (canonical layout) cut in-plane to ``field`` (:func:`cut_field`)
    round the heart's centre found on the slices a cardiac scan would hold, as a scan
    reconstructed on that field shows them (the part of it inside the image)."""
    from CoronaryCalciumDINOLib.pipeline.anatomy import heart_centre

    _, (z0, z1) = locate(hu, spacing)
    cy, cx = heart_centre(hu[z0:z1], spacing)
    dy, dx = float(spacing[1]), float(spacing[2])
    side, back, left = field
    ny, nx = int(round(side / dy)), int(round(side / dx))
    y0 = int(round(cy + back / dy - ny / 2.0))
    x0 = int(round(cx + left / dx - nx / 2.0))
    ys = slice(max(y0, 0), min(y0 + ny, hu.shape[1]))
    xs = slice(max(x0, 0), min(x0 + nx, hu.shape[2]))
    return np.ascontiguousarray(hu[:, ys, xs]), np.ascontiguousarray(labels[:, ys, xs])


def study_samples(path, cfg: CandidateConfig, margin: int, max_neg: int | None, n_random: int, rng,
                  adjacent: bool = False, outside_region: bool = False, cut_share: float = 0.0) -> dict:
    """Arrays of one study: see :func:`build_cache`; with ``adjacent`` also ``crops_adjacent``
    (n, 2, S, S): the crops at the same (x, y) ``adjacent_step`` slices below and above
    (clamped to the cardiac range) and ``adjacent_dz`` (n, 2) the slice offsets used.
    ``cut_share``: the share of studies cut to a heart-centred field first (:func:`cut_field`)."""
    s = load_study(path, with_heart=False)
    view, _ = orient(s.ct, np.asarray(s.ct.hu))
    flips, hu = view.flips, view.hu
    axes = pp.flip_axes(flips)
    labels = np.ascontiguousarray(np.flip(s.labels, axes) if axes else s.labels)
    field = cut_field(Path(path).name, cut_share)
    if field is not None:
        hu, labels = _cut(hu, labels, s.ct.spacing, field)
    anatomy, (z0, z1) = locate(hu, s.ct.spacing)
    hu, labels = hu[z0:z1], labels[z0:z1]
    c = find_candidates(hu, s.ct.spacing, cfg)
    in_region = np.ones(len(c), dtype=bool)
    if not looks_like_phantom(c):
        in_region = heart_region_mask(c, anatomy, hu)
        if not outside_region:
            c, in_region = subset(c, in_region), in_region[in_region]
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
    if field is not None:  # calcium the cut leaves out of view is not on the slice any more
        slice_has &= labels.any(axis=(1, 2))  # labels: the slices looked at, [z0, z1)
    rnd = random_points(c, n_random, rng)
    extra = {}
    if adjacent:
        sub = subset(c, idx)
        k = adjacent_step(s.ct.spacing[0])
        pair, dz = [], []
        for sign in (-1, 1):
            zn = np.clip(sub.z + sign * k, 0, hu.shape[0] - 1)
            pair.append(crop_hu(hu, replace(sub, z=zn), size=size).astype(np.float16))
            dz.append(zn - sub.z)
        extra = {"crops_adjacent": np.stack(pair, 1), "adjacent_dz": np.stack(dz, 1).astype(np.int16)}
    return extra | {
        "crops": crop_hu(hu, c, idx, size=size).astype(np.float16),
        "pixel_labels": crop_labels(labels, c, idx, size=cfg.crop_px),
        "masks": subset(c, idx).masks().astype(np.uint8),
        "context": c.context[idx],
        "target": y[idx],
        "weight": weight[idx],
        "in_region": in_region[idx],
        "z": c.z[idx],
        "slice_has_calcium": slice_has,
        "random_crops": crop_hu(hu, rnd, size=size).astype(np.float16),
        "n_candidates": int(np.count_nonzero(in_region)),
    }


def build_cache(studies, out: Path, cfg: CandidateConfig, margin: int = 4, max_neg: int | None = 500,
                n_random: int = 200, seed: int = 0, log=print, outside_region: bool = False,
                cut_share: float = 0.0) -> Path:
    """Write ``out`` (.npz) with the samples of ``studies`` (list of study folders); resumable by file.
    ``outside_region``: keep also the candidates the anatomy step leaves out (for training;
    ``max_neg`` caps all of a study's negatives together). ``cut_share``: the share of the
    studies cut to a heart-centred field of view first (:func:`cut_field`).

    Keys: ``crops`` (N, P+2m, P+2m) float16 HU, ``pixel_labels`` (N, P, P) uint8, ``masks`` (N, P, P) uint8 (pixels of the candidate itself),
    ``context`` (N, C), ``target`` (N,) 0..4, ``weight`` (N,), ``in_region`` (N,) bool (what
    inference gives the networks), ``study`` (N,) index into
    ``study_ids``, ``z`` (N,), ``slice_has_calcium`` (total slices,) with ``slice_offset``
    (studies + 1,), ``random_crops`` (R, P+2m, P+2m) float16 HU, ``config`` (JSON).
    """
    out = Path(out)
    meta = {"version": CACHE_VERSION, "config": cfg.to_dict(), "margin": margin, "max_neg": max_neg,
            "n_random": n_random, "seed": seed, "studies": [Path(p).name for p in studies]}
    if outside_region:  # absent otherwise: caches built before the option stay up to date
        meta["outside_region"] = True
    if cut_share > 0:  # the same
        meta["cut_share"] = float(cut_share)
    if out.exists():
        with np.load(out, allow_pickle=False) as z:
            if json.loads(str(z["meta"])) == meta:
                log(f"cache {out} is up to date")
                return out
    rng = np.random.default_rng(seed)
    parts = []
    t0 = time.perf_counter()
    for i, p in enumerate(studies):
        parts.append(study_samples(p, cfg, margin, max_neg, n_random, rng, outside_region=outside_region,
                                   cut_share=cut_share))
        if (i + 1) % 20 == 0 or i + 1 == len(studies):
            log(f"  cache {out.name}: {i + 1}/{len(studies)} studies ({time.perf_counter() - t0:.0f} s)")
    sizes = [len(q["target"]) for q in parts]
    slices = [len(q["slice_has_calcium"]) for q in parts]
    arrays = {
        k: np.concatenate([q[k] for q in parts])
        for k in ("crops", "pixel_labels", "masks", "context", "target", "weight", "in_region", "z", "slice_has_calcium",
                  "random_crops")
    }
    arrays["study"] = np.repeat(np.arange(len(parts)), sizes)
    arrays["slice_offset"] = np.concatenate([[0], np.cumsum(slices)])
    arrays["n_candidates"] = np.array([q["n_candidates"] for q in parts])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, meta=json.dumps(meta), **arrays)
    tmp.replace(out)
    return out


def build_adjacent(cache_path, studies_root, out: Path, log=print) -> Path:
    """Write ``out`` (.npz): ``crops_adjacent`` (N, 2, S, S) float16 and ``adjacent_dz`` (N, 2)
    for the N candidates of the cache ``cache_path``, from the study folders
    ``studies_root / <study name>`` it was built from. Each study's candidates are recomputed
    (all of them, with their neighbouring-slice crops) and matched to the cached ones by their
    crop (bit-identical); a cached candidate without a match (the candidate finder changed
    since the cache was built) gets its own crop as partner and ``adjacent_dz`` 0, and is
    counted in ``unmatched``. Reused when it exists for the same cache."""
    out = Path(out)
    with np.load(cache_path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        crops, study = z["crops"], z["study"]
    key = {"cache": Path(cache_path).name, "meta": meta}
    if out.exists():
        with np.load(out, allow_pickle=False) as z:
            if json.loads(str(z["meta"])) == key:
                log(f"adjacent crops {out} are up to date")
                return out
    cfg = CandidateConfig.from_dict(meta["config"])
    adj = np.repeat(crops[:, None], 2, axis=1)
    dz = np.zeros((len(crops), 2), np.int16)
    unmatched = 0
    t0 = time.perf_counter()
    for i, name in enumerate(meta["studies"]):
        q = study_samples(Path(studies_root) / name, cfg, meta["margin"], None, 0, np.random.default_rng(0),
                          adjacent=True, outside_region=bool(meta.get("outside_region")),
                          cut_share=float(meta.get("cut_share", 0.0)))
        lut = {q["crops"][j].tobytes(): j for j in range(len(q["crops"]))}
        for k in np.flatnonzero(study == i):
            j = lut.get(crops[k].tobytes())
            if j is None:
                unmatched += 1
                continue
            adj[k], dz[k] = q["crops_adjacent"][j], q["adjacent_dz"][j]
        if (i + 1) % 20 == 0 or i + 1 == len(meta["studies"]):
            log(f"  adjacent crops: {i + 1}/{len(meta['studies'])} studies, {unmatched} unmatched "
                f"({time.perf_counter() - t0:.0f} s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, meta=json.dumps(key), crops_adjacent=adj, adjacent_dz=dz, unmatched=np.array(unmatched))
    tmp.replace(out)
    return out


def load_cache(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    d["meta"] = json.loads(str(d["meta"]))
    return d
