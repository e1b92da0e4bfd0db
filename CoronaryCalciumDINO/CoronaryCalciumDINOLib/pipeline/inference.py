"""The AI pipeline: anatomy -> candidates -> DINO-LG detector -> per-artery segmenter -> scores.

:func:`run_pipeline` reads as its stages, one call each: :func:`orient`, :func:`locate`
(anatomy) and the candidates (:func:`.candidates.find_candidates`) in :func:`locate_and_find`
(at once, in two threads, on a scan no longer than a cardiac scan), :func:`keep_heart_region`,
:func:`route`, :func:`detect`, :func:`gate`, :func:`segment`, :func:`name`, then the score.

The stages up to :func:`route` need only the bundle's manifest
(:class:`..models.bundle.BundleManifest`) and import no torch, timm or MONAI (nor does
importing this module): given a bundle path, :func:`run_pipeline` reads and verifies the
manifest first, reports the candidates, and only then imports torch and builds the
networks (what a fresh process pays before its first candidate is the CT and the early
stages, not the AI's imports).

0. Anatomy (:mod:`.anatomy`): lungs, bone, sternum, spine, descending aorta and the heart
   region, from HU alone; a chest CT is looked at over the slices a cardiac scan would hold.
1. Candidates (:mod:`.candidates`): every connected >= 130 HU region of >= 1 mm^2 in the
   heart field of each axial slice (what the Agatston definition could count), with its
   context (where it sits in the heart field, HU statistics, coarse views of the slice);
   for a patient, only those in the heart region and off bone go on.
2. Detector: the frozen DINO-LG teacher ViT sees each candidate's crop at native pixel
   size (32 x 32 px of 0.5 mm, HU windows as channels); a head on its features and the
   context gives P(coronary calcium) per candidate. A slice's probability is the maximum
   over its candidates (0 without candidates); slices with probability >= the bundle
   threshold are *selected*. A patient's candidate below the threshold, down to
   :data:`CONTINUE_PROBABILITY`, that continues a flagged one onto the next or previous
   slice (:func:`continuing`) is flagged too, and its slice selected.
3. Segmenter, selected slices only, on the candidates the detector flagged there
   (probability >= the threshold) that stand out of the image noise (the bundle's
   :class:`.candidates.NoiseRule`; flagged regions below it are counted in a warning):
   a MONAI 2D UNet on each candidate crop with the
   context as extra channels gives per-pixel class probabilities (background, LM, LAD,
   LCX, RCA). A candidate is calcium when the mean over its pixels of P(not background)
   is >= 0.5; its pixels then take their most probable artery (pixels outside the crop
   take the candidate's most probable artery). ``all_slices=True`` is the "UNET alone"
   baseline: the segmenter on every candidate of every slice that stands out of the noise,
   no detector.
4. Name (:mod:`.naming`): the artery of each lesion from where it lies round the ascending
   aorta that the anatomy step found (the left main within 10 mm of the root, the RCA to
   its right, the LAD and LCX by direction), when the aorta and the segmenter agree on the
   sides of the tree where the segmenter is sure of them (where it is sure of under half of
   the sides checked, the aorta's names stand); else the segmenter's arteries, a lesion that
   they split between the left tree and the RCA going to one side
   (:func:`one_side_per_lesion`). Not for phantoms.
5. :func:`..scoring.score` on the labels (only voxels >= the scoring threshold count).

What became of every candidate is kept as well (:attr:`PipelineResult.candidate_outcomes`,
:data:`OUTCOMES`, :func:`candidate_outcomes`): labelled, or turned down by the heart region,
the detector, the noise rule or the segmenter, so that what the AI left unlabelled can be
looked at stage by stage.

Per-slice and per-lesion confidences go to the report: each slice's probability and the
candidate that gave it; each lesion's calcium and artery probabilities.

The networks and the heart localiser assume the canonical axial LPS layout (anterior at
row 0, patient left at the last column, slices inferior to superior). A CT stored with
reversed axes is flipped into that layout for the networks and every output is flipped
back. A CT whose axes are permuted or strongly oblique is processed as stored, with a
``UserWarning``; resample it to axial first.

Optionally (``attention=True``) the teacher's last-block CLS attention over each
candidate crop of the selected slices is returned on the CT grid, per head and averaged.

Networks run in batches under ``torch.inference_mode``; on a GPU under autocast (bf16 or
fp16), on a CPU with native bf16 (AVX-512 bf16 / AMX) under bf16 autocast.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..errors import Cancelled, InputError
from ..io.volume import CTVolume
from ..scoring import ScoreResult, ScoringParams, score
from . import candidates as cd
from . import preprocess as pp
from .anatomy import Anatomy, find_anatomy
from .naming import NamingCheck, name_and_check, one_side_per_lesion  # noqa: F401 (one_side_per_lesion: public here too)
from .contrast import check_contrast
from .device import autocast_for, chunks, resolve_device

#: A candidate on a selected slice is labelled calcium when its mean P(not background) >= this.
CALCIUM_PROBABILITY = 0.5
#: A patient's candidate below the detector's threshold still passes the gate when it
#: continues a passed one (:func:`continuing`) with at least this probability ...
CONTINUE_PROBABILITY = 0.5
#: ... its voxels within this in-plane distance (mm) of a passed candidate's voxels on the
#: next or previous slice: a calcified artery runs on through the slices.
CONTINUE_MM = 3.0

#: What became of a candidate (:attr:`PipelineResult.candidate_outcomes`; 0: no candidate):
#: "labelled" (some of its voxels at or above the scoring threshold carry an artery),
#: "detector" (not flagged: below the detector's threshold and continuing no flagged
#: candidate), "noise" (taken for image noise by the bundle's noise rule: flagged, or with
#: ``all_slices`` any), "segmenter" (given to the segmenter, none of its voxels at or above
#: the scoring threshold labelled), "region" (outside the heart region or on a calcified
#: structure leaving it: never seen by a network; a phantom has no region).
OUTCOMES = {1: "labelled", 2: "detector", 3: "noise", 4: "segmenter", 5: "region"}
#: The code of each outcome's name (:data:`OUTCOMES` inverted).
OUTCOME_CODE = {name: code for code, name in OUTCOMES.items()}


@dataclass
class PipelineResult:
    """Everything one run of the pipeline produced (arrays on the CT grid, (z, y, x))."""

    labels: np.ndarray  # uint8 0..4, only where HU >= threshold
    score: ScoreResult
    slice_probabilities: np.ndarray  # float32 (z,)
    selected: np.ndarray  # bool (z,)
    attention: np.ndarray | None  # float32 (heads+1, z, y, x); [0] = mean over heads
    model_info: dict
    timings: dict = field(default_factory=dict)
    #: notes on the run a user should see (e.g. a non-axial CT), one line each; checks of
    #: the CT itself (e.g. a contrast-enhanced CT) go to ``ct.warnings`` instead
    warnings: list[str] = field(default_factory=list)
    #: per slice: number of candidates (z,)
    slice_candidates: np.ndarray | None = None
    #: per kept lesion (same order as ``score.lesions``): {"calcium", "artery"} probabilities
    lesion_confidence: list[dict] = field(default_factory=list)
    #: candidates found / given to the segmenter
    counts: dict = field(default_factory=dict)
    #: with ``all_slices=True``: the labels the gated pipeline gives (same run), else None
    gated_labels: np.ndarray | None = None
    #: the anatomy step's findings on the slices looked at (canonical layout), those slices
    #: [z0, z1) and the orientation (see :meth:`heart_region`)
    anatomy: Anatomy | None = None
    view: tuple | None = None
    #: where the artery names came from (stage *name*): "aorta"; "segmenter: no aorta found",
    #: "segmenter: the aorta disagrees" or "segmenter: asked for" (``naming="segmenter"``);
    #: "" where there was nothing to name (no calcium, a phantom named by side)
    names_from: str = ""
    #: what stage *name*'s check on the aorta's names counted and found (:class:`.naming.NamingCheck`;
    #: None where there was no check: no calcium, no aorta found, a phantom, ``naming="segmenter"``)
    names_check: NamingCheck | None = None
    #: uint8 (z, y, x) on the CT grid: what became of each candidate, on its voxels
    #: (:data:`OUTCOMES`; 0 elsewhere)
    candidate_outcomes: np.ndarray | None = None

    def heart_region(self) -> np.ndarray | None:
        """bool (z, y, x) on the CT grid, in its storage order: where the pipeline looked for
        coronary calcium (the heart region of the slices looked at); None without anatomy."""
        if self.anatomy is None or self.view is None:
            return None
        (z0, _z1), flips = self.view
        region = _embed(self.anatomy.region_full(), z0, len(self.selected))
        return _to_storage(region, flips)

    def report_extra(self) -> dict:
        """Extra report keys: per-slice detector output, per-lesion confidence, the model."""
        n = self.slice_candidates if self.slice_candidates is not None else np.zeros(len(self.selected), int)
        return {
            "slices": [
                {"index": int(i), "probability": float(p), "selected": bool(s), "candidates": int(c)}
                for i, (p, s, c) in enumerate(zip(self.slice_probabilities, self.selected, n))
            ],
            "lesion_confidence": [dict(c) for c in self.lesion_confidence],
            "model": {**self.model_info, "taken_for_phantom": bool(self.counts.get("phantom", 0)),
                      "arteries_named_from_aorta": bool(self.counts.get("arteries_named_from_aorta", 0)),
                      **({"artery_names_from": self.names_from} if self.names_from else {}),
                      **({"artery_names_check": self.names_check.as_dict()} if self.names_check is not None else {})},
        }


class _Progress:
    """Maps stage-local fractions to the overall [0, 1] range and checks for cancellation."""

    def __init__(self, progress, cancel):
        self.progress, self.cancel = progress, cancel

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled by the user")
        if self.progress is not None:
            self.progress(float(min(max(fraction, 0.0), 1.0)), message)


def detector_probabilities(hu: np.ndarray, cands: cd.Candidates, bundle, dev, batch: int, report=None,
                           head=None) -> np.ndarray:
    """P(coronary calcium) of every candidate (float32 (n,)), from the bundle's detector
    (or ``head``, e.g. its phantom detector) on the frozen ViT features and the context."""
    import torch

    from ..models.backbone import extract_features

    n = len(cands)
    out = np.zeros(n, dtype=np.float32)
    done = 0
    for idx in chunks(np.arange(n), batch):
        x = torch.from_numpy(cd.crop_windows(hu, cands, idx)).to(dev)
        ctx = torch.from_numpy(cands.context[idx]).to(dev)
        with autocast_for(dev, cpu_bf16=None):
            feats = extract_features(bundle.backbone, x)
        logits = (head or bundle.detector)(feats.float(), ctx)
        out[idx] = torch.sigmoid(logits.float()).cpu().numpy()
        done += len(idx)
        if report:
            report(done / max(n, 1), f"detector {done}/{n} candidates")
    return out


def candidate_means(pix: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(k, C) mean of per-pixel class probabilities (k, C, P, P) over each candidate's own
    pixels ``masks`` (k, P, P): what the segmenter says of the candidate as a whole."""
    return (pix * masks[:, None]).sum((2, 3)) / np.maximum(masks.sum((1, 2)), 1)[:, None]


def segment_candidates(hu: np.ndarray, cands: cd.Candidates, index: np.ndarray, bundle, dev, batch: int, report=None):
    """Segmenter on candidates ``index``. Returns (per-pixel class probabilities (k, 5, P, P),
    the candidates' own pixels in their crops (k, P, P), per-candidate mean class
    probabilities over those pixels (k, 5))."""
    import torch

    index = np.asarray(index, dtype=int)
    p = cands.config.crop_px
    pix = np.zeros((index.size, 5, p, p), dtype=np.float32)
    masks = cd.subset(cands, index).masks()
    done = 0
    for sl in chunks(np.arange(index.size), batch):
        idx = index[sl]
        x = torch.from_numpy(cd.crop_windows(hu, cands, idx)).to(dev)
        ctx = torch.from_numpy(cands.context[idx]).to(dev)
        with autocast_for(dev, cpu_bf16=None):
            pix[sl] = bundle.segmenter.probabilities(x, ctx).float().cpu().numpy()
        done += len(idx)
        if report:
            report(done / max(index.size, 1), f"segmenter {done}/{index.size} candidates")
    return pix, masks, candidate_means(pix, masks)


def paint_labels(cands: cd.Candidates, index: np.ndarray, pix: np.ndarray, masks: np.ndarray, mean: np.ndarray):
    """Labels (z, y, x) uint8 and per-voxel confidences of the calcium candidates among
    ``index`` (the outputs of :func:`segment_candidates` for them).

    A candidate is calcium when ``1 - mean[:, 0] >= CALCIUM_PROBABILITY``; its voxels take
    the candidate's most probable artery, then voxels hit by a crop pixel of the candidate
    that the segmenter calls calcium (P(not background) >= 0.5) take that pixel's most
    probable artery. Returns (labels, calcium-probability volume, artery-probability
    volume, side volume: the candidate's P(RCA | calcium), for stage *name*) on the CT grid
    in the candidates' layout.
    """
    calcium = (1.0 - mean[:, 0]) >= CALCIUM_PROBABILITY
    art = 1 + np.argmax(mean[:, 1:], axis=1)
    p_calc_cand = 1.0 - mean[:, 0]
    p_art_cand = mean[np.arange(len(index)), art] / np.maximum(p_calc_cand, 1e-6)

    def per_candidate(values, dtype):
        full = np.zeros(len(cands), dtype=dtype)
        full[index[calcium]] = values[calcium]
        return cands.paint(full)

    labels = per_candidate(art, np.uint8)
    p_calc = per_candidate(p_calc_cand, np.float32)
    p_art = per_candidate(p_art_cand, np.float32)
    p_right = per_candidate(mean[:, 4] / np.maximum(p_calc_cand, 1e-6), np.float32)
    # per-pixel artery inside the crops of calcium candidates
    ci = np.flatnonzero(calcium)
    if ci.size:
        z, y, x, ok = cd.subset(cands, index[ci]).nearest_pixels()
        pa = pix[ci][:, 1:]  # (k, 4, P, P)
        pc = pa.sum(1)
        # pixels of the candidate that the segmenter itself calls calcium take their own
        # artery; the others keep the candidate's
        ok = ok & (masks[ci] > 0) & (pc >= 0.5)
        labels[z[ok], y[ok], x[ok]] = (1 + np.argmax(pa, axis=1)).astype(np.uint8)[ok]
        p_art[z[ok], y[ok], x[ok]] = (np.max(pa, axis=1) / np.maximum(pc, 1e-6))[ok]
    return labels, p_calc, p_art, p_right


def phantom_labels(cands: cd.Candidates, index: np.ndarray, cand_probs: np.ndarray):
    """Labels of a phantom's picked candidates ``index``: each candidate's own voxels, its
    artery by the side convention (:func:`..candidates.phantom_artery`, from its offset from
    the insert's centre). Returns (labels, calcium-probability volume (the detector's),
    artery-probability volume (1: a convention, not a guess))."""
    ctx = cands.context
    art = cd.phantom_artery(ctx[:, cd.CONTEXT_INDEX["x_field"]], ctx[:, cd.CONTEXT_INDEX["y_field"]])
    values = np.zeros(len(cands), np.uint8)
    values[index] = art[index]
    pc = np.zeros(len(cands), np.float32)
    pc[index] = cand_probs[index]
    pa = np.zeros(len(cands), np.float32)
    pa[index] = 1.0
    return cands.paint(values), cands.paint(pc), cands.paint(pa)


def lesion_confidences(result: ScoreResult, p_calc: np.ndarray, p_art: np.ndarray) -> list[dict]:
    """Mean calcium / artery probability over each kept lesion's voxels, in ``result.lesions``
    order (``result`` scored with ``keep_lesion_voxels=True``)."""
    pc, pa = p_calc.ravel(), p_art.ravel()
    return [{"calcium": float(pc[v].mean()), "artery": float(pa[v].mean())} for v in result.lesion_voxels]


@dataclass
class Oriented:
    """Stage *orient*: the CT's HU in the canonical axial LPS layout the networks and the
    anatomy expect, and the flips that bring outputs back to the CT's own storage order."""

    hu: np.ndarray  # float32 (z, y, x), canonical layout
    flips: tuple[bool, bool, bool]

    def back(self, a: np.ndarray, offset: int = 0) -> np.ndarray:
        """``a`` (canonical layout, after ``offset`` leading axes) in the CT's storage order."""
        return _to_storage(a, self.flips, offset)

    def back_slices(self, a: np.ndarray) -> np.ndarray:
        """A per-slice array (z,) in the CT's storage order."""
        return a[::-1].copy() if self.flips[0] else a


def _to_storage(a: np.ndarray, flips, offset: int = 0) -> np.ndarray:
    axes = pp.flip_axes(flips, offset)
    return np.ascontiguousarray(np.flip(a, axes)) if axes else a


def orient(ct: CTVolume, hu: np.ndarray) -> tuple[Oriented, list[str]]:
    """Stage *orient* (:func:`.preprocess.canonical_flips`); a CT whose axes are permuted or
    strongly oblique is used as stored, with a warning (also a ``UserWarning``)."""
    notes: list[str] = []
    flips = pp.canonical_flips(ct.direction)
    if flips is None:
        message = (
            "the CT axes are not close to axial LPS (permuted or oblique: direction "
            f"{np.round(np.asarray(ct.direction, dtype=float), 3).tolist()}); the models assume axial slices "
            "with anterior up and patient left on the right, so results may be wrong; resample to axial first"
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        notes.append(message)
        flips = (False, False, False)
    axes = pp.flip_axes(flips)
    return Oriented(np.ascontiguousarray(np.flip(hu, axes) if axes else hu, dtype=np.float32), flips), notes


def locate(hu: np.ndarray, spacing) -> tuple[Anatomy, tuple[int, int]]:
    """Stage *anatomy* (:mod:`.anatomy`): the anatomy of the slices a cardiac scan of this
    patient would hold, and that range [z0, z1) of the canonical slices (the whole scan,
    except for a chest CT)."""
    anatomy = find_anatomy(hu, spacing)
    z0, z1 = anatomy.cardiac_range(float(spacing[0]))
    return anatomy.crop(z0, z1), (z0, z1)


def locate_and_find(hu: np.ndarray, spacing, config: cd.CandidateConfig) -> tuple[Anatomy, tuple[int, int], cd.Candidates]:
    """Stages *anatomy* (:func:`locate`) and *candidates* (:func:`.candidates.find_candidates`
    on the slices :func:`locate` keeps). A scan no longer than a cardiac scan
    (:data:`.anatomy.CARDIAC_SCAN_MM`) keeps all its slices, so the two run at once, the
    candidates in a second thread (their NumPy / SciPy work overlaps on two cores: about
    0.65 s instead of 1.1-1.5 s on a 512 x 512 x 60 study); a chest CT finds its cardiac
    range first. The results are those of the two stages run one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from .anatomy import CARDIAC_SCAN_MM

    if hu.shape[0] * float(spacing[0]) > CARDIAC_SCAN_MM:
        anatomy, (z0, z1) = locate(hu, spacing)
        return anatomy, (z0, z1), cd.find_candidates(hu[z0:z1], spacing, config)
    with ThreadPoolExecutor(max_workers=1) as pool:
        found = pool.submit(cd.find_candidates, hu, spacing, config)
        anatomy, (z0, z1) = locate(hu, spacing)
        cands = found.result()
    if (z0, z1) != (0, hu.shape[0]):  # not expected (a scan this short is looked at whole): search its range
        cands = cd.find_candidates(hu[z0:z1], spacing, config)
    return anatomy, (z0, z1), cands


def candidate_config(bundle, params: ScoringParams) -> cd.CandidateConfig:
    """The bundle's candidate settings, at the scoring threshold and minimum area when these
    are below the bundle's (kVp-adapted thresholds), so nothing the score could count is left out.
    ``bundle``: a bundle or manifest, or its :class:`.candidates.CandidateConfig` itself."""
    cfg = bundle if isinstance(bundle, cd.CandidateConfig) else bundle.candidate_config
    if params.threshold_hu < cfg.threshold_hu or params.min_area_mm2 < cfg.min_area_mm2:
        cfg = replace(cfg, threshold_hu=min(cfg.threshold_hu, params.threshold_hu),
                      min_area_mm2=min(cfg.min_area_mm2, params.min_area_mm2))
    return cfg


@dataclass
class Route:
    """Stage *route*: which detector head a scan goes to (a calcium-scoring phantom's, or the
    patients'), decided from the manifest: the head module itself is taken at :func:`detect`."""

    phantom: bool
    threshold: float
    #: with the phantom head: the candidates small enough to be a phantom's calcification
    sized: np.ndarray | None
    warnings: list[str]


def route(cands: cd.Candidates, bundle) -> Route:
    """A scan with almost no fat (:func:`.candidates.looks_like_phantom`) goes to the bundle's
    phantom detector when it has one, which is asked only about the candidates sized like a
    phantom's calcification and not at the end of a larger region
    (:func:`.candidates.phantom_sized`, :func:`.candidates.ends_of_larger_regions`); every
    other scan to the patients' detector. ``bundle``:
    a :class:`..models.bundle.BundleManifest` (its networks need not be loaded)."""
    looks = cd.looks_like_phantom(cands)
    if looks and bundle.has_phantom_detector:
        note = ("this scan looks like a calcium-scoring phantom, not a patient (almost no fat in the heart field): "
                "the model's phantom detector picked its calcium (regions up to "
                f"{cd.PHANTOM_MAX_AREA_MM2:g} mm^2; larger ones are its rods and bone, and the specks at their ends are "
                "theirs); a phantom has no arteries, so the "
                "artery names are a convention (patient right RCA, left anterior LAD, left posterior LCX); read the total")
        sized = cd.phantom_sized(cands.context) & ~cd.ends_of_larger_regions(cands)
        return Route(True, bundle.phantom_threshold, sized, [note])
    notes = []
    if looks:
        notes.append("this scan looks like a calcium-scoring phantom, not a patient (almost no fat in the heart field), "
                     f"and bundle {bundle.name} {bundle.version} has no phantom detector: its calcium may be missed")
    return Route(False, bundle.threshold, None, notes)


def keep_heart_region(cands: cd.Candidates, anatomy: Anatomy, hu: np.ndarray | None = None) -> tuple[cd.Candidates, int]:
    """Stage *candidates*, last step: only the candidates in the heart region and off bone
    (:func:`.candidates.in_heart_region`) go on, and with ``hu`` (the CT the candidates were
    found on) not those on a calcified structure that leaves the region
    (:func:`.candidates.on_structure_leaving_region`: a costal cartilage, the sternum); returns
    them and how many were left out. Inference and training pass ``hu``."""
    inside = heart_region_mask(cands, anatomy, hu)
    return cd.subset(cands, inside), int(np.count_nonzero(~inside))


def heart_region_mask(cands: cd.Candidates, anatomy: Anatomy, hu: np.ndarray | None = None) -> np.ndarray:
    """(n,) bool: the candidates :func:`keep_heart_region` keeps."""
    inside = cd.in_heart_region(cands, anatomy)
    if hu is not None:
        inside &= ~cd.on_structure_leaving_region(cands, hu, anatomy)
    return inside


def detect(hu: np.ndarray, cands: cd.Candidates, bundle, rt: Route, dev, batch: int, report=None):
    """Stage *detect*: P(coronary calcium) of each candidate (0 for a phantom's candidates too
    large to be its calcification) and of each slice (the maximum over its candidates), from
    the head ``rt`` chose (the bundle's phantom detector or its patients' detector)."""
    head = bundle.phantom_detector if rt.phantom else bundle.detector
    probs = detector_probabilities(hu, cands, bundle, dev, batch, report, head=head)
    if rt.sized is not None:
        probs = np.where(rt.sized, probs, 0.0).astype(np.float32)
    return probs, cands.per_slice_max(probs)


@dataclass
class Gate:
    """Stage *gate*: the selected slices and the candidates the segmenter sees."""

    selected: np.ndarray  # bool (z,)
    passed: np.ndarray  # bool (n,): flagged on a selected slice and out of the noise
    below_noise: np.ndarray  # bool (n,): flagged but taken for image noise
    segment: np.ndarray  # int: the candidates given to the segmenter (``passed``, or all out of the noise)
    warnings: list[str]


def gate(cands: cd.Candidates, cand_probs: np.ndarray, slice_probs: np.ndarray, rt: Route, rule: cd.NoiseRule,
         all_slices: bool = False) -> Gate:
    """Slices with probability >= the head's threshold are selected; on them, the candidates
    at or above it that stand out of the image noise (``rule``; for a phantom, also small
    enough) pass, and for a patient those that continue them (:func:`continuing`).
    ``all_slices``: every candidate out of the noise is segmented (the "UNET alone"
    baseline)."""
    selected = slice_probs >= rt.threshold
    significant = rule.significant(cands.context)
    if rt.sized is not None:
        significant &= rt.sized
    flagged = selected[cands.z] & (cand_probs >= rt.threshold)
    if not rt.phantom and not all_slices:
        flagged = continuing(cands, flagged & significant, significant & (cand_probs >= CONTINUE_PROBABILITY)) | flagged
        selected = selected.copy()
        selected[cands.z[flagged]] = True
    passed = flagged & significant
    below = flagged & ~significant
    notes = []
    if below.any():
        noise = cands.context[below, cd.CONTEXT_INDEX["noise_sd_hu_100"]] * 100.0
        n = int(below.sum())
        notes.append(
            f"{n} small faint region{'s' if n != 1 else ''} taken for image noise, not labelled "
            f"(< {rule.min_area_mm2:g} mm^2, peak < {rule.min_contrast_sd:g} noise SD above soft tissue"
            + (f", < {rule.min_neighbour_sd:g} SD on the neighbouring slices" if rule.min_neighbour_sd > 0 else "")
            + f"; noise {np.median(noise):.0f} HU)"
        )
    index = np.flatnonzero(significant) if all_slices else np.flatnonzero(passed)
    return Gate(selected, passed, below, index, notes)


def continuing(cands: cd.Candidates, passed: np.ndarray, maybe: np.ndarray) -> np.ndarray:
    """(n,) bool: ``passed`` grown through ``maybe``: a ``maybe`` candidate joins when one of
    its voxels lies within :data:`CONTINUE_MM` in-plane of a joined candidate's voxel on the
    next or previous slice, until no more join (a calcification runs on through the slices
    of one artery).

    Each joined candidate is grown once, in its own box (its voxels' bounding box and the
    reach around it), so the cost follows the candidates, not the size of the image."""
    from scipy import ndimage

    joined = np.asarray(passed, bool).copy()
    maybe = np.asarray(maybe, bool)
    if not joined.any() or not (maybe & ~joined).any():
        return joined
    ry = max(1, int(round(CONTINUE_MM / cands.spacing[1])))
    rx = max(1, int(round(CONTINUE_MM / cands.spacing[2])))
    yy, xx = np.ogrid[-ry: ry + 1, -rx: rx + 1]
    disc = ((yy * cands.spacing[1]) ** 2 + (xx * cands.spacing[2]) ** 2) <= CONTINUE_MM ** 2 + 1e-6
    ids = cands.ids
    index = np.full(int(ids.max(initial=0)) + 1, -1, np.int64)  # value in ids -> candidate
    index[cands.uid] = np.arange(len(cands))
    boxes = ndimage.find_objects(ids)
    frontier = list(np.flatnonzero(joined))
    while frontier:
        grown = []
        for i in frontier:
            box = boxes[int(cands.uid[i]) - 1]
            if box is None:
                continue
            z = int(cands.z[i])
            y0, y1 = max(box[1].start - ry, 0), min(box[1].stop + ry, ids.shape[1])
            x0, x1 = max(box[2].start - rx, 0), min(box[2].stop + rx, ids.shape[2])
            near = ndimage.binary_dilation(ids[z, y0:y1, x0:x1] == cands.uid[i], structure=disc)
            for zn in (z - 1, z + 1):
                if 0 <= zn < ids.shape[0]:
                    hit = index[np.unique(ids[zn, y0:y1, x0:x1][near])]
                    hit = hit[hit >= 0]
                    hit = hit[maybe[hit] & ~joined[hit]]
                    joined[hit] = True
                    grown.extend(hit.tolist())
        frontier = grown
    return joined


def segment(hu: np.ndarray, cands: cd.Candidates, g: Gate, rt: Route, cand_probs: np.ndarray, bundle, dev,
            batch: int, report=None, all_slices: bool = False):
    """Stage *segment*: labels, calcium and artery probability volumes, the segmenter's
    P(RCA | calcium) for stage *name* (None for a phantom), all in the canonical layout on
    the candidates' slices, and, with ``all_slices``, the labels the gated pipeline gives.

    A patient's candidates go to the segmenter (:func:`paint_labels`); a phantom's picked
    candidates are labelled with their own voxels, named by side (:func:`phantom_labels`)."""
    gated = None
    if rt.phantom:
        labels, p_calc, p_art = phantom_labels(cands, g.segment, cand_probs)
        if all_slices:
            gated = phantom_labels(cands, np.flatnonzero(g.passed), cand_probs)[0]
        return labels, p_calc, p_art, None, gated
    pix, masks, mean = segment_candidates(hu, cands, g.segment, bundle, dev, batch, report)
    labels, p_calc, p_art, p_right = paint_labels(cands, g.segment, pix, masks, mean)
    if all_slices:
        keep = g.passed[g.segment]
        gated = paint_labels(cands, g.segment[keep], pix[keep], masks[keep], mean[keep])[0]
    return labels, p_calc, p_art, p_right, gated


def name(labels: np.ndarray, hu: np.ndarray, anatomy: Anatomy | None, spacing, threshold_hu: float,
         p_right: np.ndarray | None = None) -> tuple[np.ndarray, str, NamingCheck | None]:
    """Stage *name* (:mod:`.naming`): the labels of the slices looked at (canonical layout)
    at or above the scoring threshold, each lesion named from the ascending aorta when the
    anatomy step found it (and it agrees with the segmenter on the sides), else by the
    segmenter with one side of the tree per lesion; where the names came from; and what the
    check on the aorta's names counted and found (:func:`.naming.name_and_check`).
    ``p_right``: the segmenter's P(RCA | calcium) (:func:`segment`): where it is unsure of
    the sides, they do not count for or against the aorta (:func:`.naming.sure_sides`)."""
    return name_and_check(np.where(hu >= threshold_hu, labels, 0).astype(labels.dtype), anatomy, spacing, p_right)


def candidate_outcomes(found: cd.Candidates, kept: cd.Candidates, g: Gate, labels: np.ndarray, hu: np.ndarray,
                       threshold_hu: float, all_slices: bool = False) -> np.ndarray:
    """uint8 (z, y, x), canonical layout on the candidates' slices: each candidate ``found``
    painted with what became of it (:data:`OUTCOMES`), from the candidates the heart region
    ``kept`` (a subset of ``found``, in its order), the gate ``g`` on them (``all_slices``: the
    "UNET alone" mode, where every candidate out of the noise is segmented) and the labels
    (on the CT grid ``hu``; only voxels at or above the scoring ``threshold_hu`` count)."""
    code = OUTCOME_CODE
    out = np.full(len(kept), code["noise" if all_slices else "detector"], np.uint8)
    out[g.below_noise] = code["noise"]
    out[g.segment] = code["segmenter"]
    iy, ix, fy, fx = kept.field.clipped(labels.shape[1:])
    z, y, x = np.nonzero(labels[:, iy, ix])  # the labelled voxels (few), in the field's part inside the image
    scored = hu[:, iy, ix][z, y, x] >= threshold_hu
    out[np.isin(kept.uid, kept.ids[:, fy, fx][z[scored], y[scored], x[scored]])] = code["labelled"]
    every = np.full(len(found), code["region"], np.uint8)
    every[np.isin(found.uid, kept.uid)] = out
    return found.paint(every)


def names_source(named_by: str, naming: str, phantom: bool, calcium: bool) -> str:
    """Where the artery names came from, for the report (:attr:`PipelineResult.names_from`):
    what stage *name* said (:func:`.naming.name_and_check`), "segmenter: asked for" with
    ``naming="segmenter"``, "" where nothing was named (no calcium; a phantom, named by side)."""
    if phantom or not calcium:
        return ""
    return "segmenter: asked for" if naming == "segmenter" else named_by


def _embed(a: np.ndarray, z0: int, nz: int, axis: int = 0) -> np.ndarray:
    """``a`` (slices [z0, z0 + len) along ``axis``) on all ``nz`` slices, zeros elsewhere."""
    if a.shape[axis] == nz:
        return a
    shape = list(a.shape)
    shape[axis] = nz
    out = np.zeros(shape, dtype=a.dtype)
    index = [slice(None)] * a.ndim
    index[axis] = slice(z0, z0 + a.shape[axis])
    out[tuple(index)] = a
    return out


def run_pipeline(
    ct: CTVolume,
    bundle,
    device: str = "auto",
    params: ScoringParams | None = None,
    attention: bool = False,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    all_slices: bool = False,
    batch_size: int | None = None,
    on_device: Callable[[object], None] | None = None,
    naming: str = "aorta",
) -> PipelineResult:
    """Run the pipeline of ``bundle`` on ``ct``: orient, anatomy, candidates, route, detect,
    gate, segment, score.

    ``bundle`` is a loaded :class:`..models.bundle.ModelBundle`, or a path / None (the default
    bundle) or a :class:`..models.bundle.BundleManifest`: then only the verified manifest
    is read before the stages up to route, which import no torch, timm or MONAI, and the
    networks are built after the candidates are reported (``"N candidates"``). Either way
    the device is resolved (importing torch) after that report; ``on_device(device)`` is
    then called with it, before any network runs.

    ``naming="segmenter"`` keeps the segmenter's artery names (one side of the tree per
    lesion) instead of naming from the ascending aorta (stage *name*, :mod:`.naming`).

    ``all_slices=True`` skips the detector's selection and segments the candidates of
    every slice (the "UNET alone" baseline); probabilities are still computed and returned.
    """
    from ..models.bundle import BundleManifest, ModelBundle, load_bundle, load_manifest
    from ..requirements import require_ai

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if isinstance(bundle, BundleManifest):
        facts = bundle
    else:
        require_ai()  # a missing AI is told before any work, as loading the bundle would
        facts = load_manifest(bundle)
        timings["load_manifest_s"] = time.perf_counter() - t_start
    if naming not in ("aorta", "segmenter"):
        raise InputError(f"naming must be 'aorta' or 'segmenter', got {naming!r}")
    params = params or ScoringParams()
    hu = np.asarray(ct.hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(f"CT must be a 3D volume (z, y, x), got shape {hu.shape}")
    check_contrast(ct)  # a contrast-enhanced CT: its warning joins ct.warnings (once)
    view, run_warnings = orient(ct, hu)
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    report = _Progress(progress, cancel)
    report(0.0, "finding the heart")
    t = time.perf_counter()  # candidates_s: the anatomy and the candidates (at once on a short scan), kept or not
    anatomy, (z0, z1), cands = locate_and_find(view.hu, ct.spacing, candidate_config(facts, params))
    net = view.hu[z0:z1]
    rt = route(cands, facts)
    every_found = cands
    found, outside = len(cands), 0
    if not rt.phantom:  # only where coronary calcium can be: the heart region, off bone
        cands, outside = keep_heart_region(cands, anatomy, net)
    timings["candidates_s"] = time.perf_counter() - t
    run_warnings += rt.warnings
    report(0.1, f"{len(cands)} candidates")

    # the networks: torch from here on (the bundle's networks built now when it came as a path)
    import torch

    dev = resolve_device(device)
    if on_device is not None:
        on_device(dev)
    batch = batch_size or (2048 if dev.type == "cuda" else 512)
    if isinstance(bundle, ModelBundle):
        nets = bundle
    else:
        report(0.1, "loading the model")
        t = time.perf_counter()
        nets = load_bundle(facts)
        timings["load_bundle_s"] = time.perf_counter() - t
    for m in nets.modules():
        m.to(dev)
    with torch.inference_mode():
        t = time.perf_counter()
        cand_probs, probs = detect(net, cands, nets, rt, dev, batch, lambda f, m: report(0.1 + 0.5 * f, m))
        timings["detector_s"] = time.perf_counter() - t
        t = time.perf_counter()
        g = gate(cands, cand_probs, probs, rt, facts.noise_rule, all_slices)
        timings["gate_s"] = time.perf_counter() - t
        run_warnings += g.warnings

        t = time.perf_counter()
        span = 0.25 if attention else 0.35
        labels, p_calc, p_art, p_right, gated = segment(net, cands, g, rt, cand_probs, nets, dev, batch,
                                                        lambda f, m: report(0.6 + span * f, m), all_slices)
        timings["segmenter_s"] = time.perf_counter() - t

        att = None
        if attention:
            from .attention import attention_maps

            t = time.perf_counter()
            att = attention_maps(net, cands, g.segment, nets, dev, batch, lambda f, m: report(0.85 + 0.1 * f, m))
            timings["attention_s"] = time.perf_counter() - t

    t = time.perf_counter()
    named_by, names_check = "segmenter", None
    if not rt.phantom:  # stage name: the artery of each lesion, from the aorta (or the segmenter)
        use = anatomy if naming == "aorta" else None
        labels, named_by, names_check = name(labels, net, use, ct.spacing, params.threshold_hu, p_right)
        gated = None if gated is None else name(gated, net, use, ct.spacing, params.threshold_hu, p_right)[0]
    del p_right  # for stage name only: not held through the steps below
    timings["naming_s"] = time.perf_counter() - t
    names_from = names_source(named_by, naming, bool(rt.phantom), bool(labels.any()))
    outcomes = candidate_outcomes(every_found, cands, g, labels, net, params.threshold_hu, all_slices)

    nz = hu.shape[0]
    n_slice = np.bincount(cands.z, minlength=z1 - z0)
    # back on every slice, then in the CT's own storage order
    labels, p_calc, p_art, outcomes = (view.back(_embed(a, z0, nz)) for a in (labels, p_calc, p_art, outcomes))
    if gated is not None:
        gated = view.back(_embed(gated, z0, nz))
    if att is not None:
        att = view.back(_embed(att, z0, nz, axis=1), offset=1)
    probs, selected, n_slice = (view.back_slices(_embed(a, z0, nz)) for a in (probs, g.selected, n_slice))
    t = time.perf_counter()
    labels[hu < params.threshold_hu] = 0
    if gated is not None:
        gated[hu < params.threshold_hu] = 0
    result = score(hu, labels, ct.spacing, params, keep_lesion_voxels=True)
    conf = lesion_confidences(result, p_calc, p_art)
    timings["scoring_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    report(1.0, "done")
    return PipelineResult(
        labels=labels,
        score=result,
        slice_probabilities=probs.astype(np.float32),
        selected=selected,
        attention=att,
        model_info=facts.model_info(),
        timings=timings,
        warnings=run_warnings,
        slice_candidates=n_slice,
        lesion_confidence=conf,
        counts={"candidates": found, "outside_heart": outside, "segmented": int(g.segment.size),
                "below_noise": int(g.below_noise.sum()), "phantom": int(rt.phantom),
                "anatomy_found": int(anatomy.found), "slices_looked_at": [int(z0), int(z1)],
                "arteries_named_from_aorta": int(named_by == "aorta")},
        gated_labels=gated,
        anatomy=anatomy,
        view=((z0, z1), view.flips),
        names_from=names_from,
        names_check=names_check,
        candidate_outcomes=outcomes,
    )
