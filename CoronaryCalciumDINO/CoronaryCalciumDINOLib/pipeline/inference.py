"""The AI pipeline: slice detector -> per-artery segmenter -> scores.

1. One heart-centred field per volume (:mod:`.preprocess`).
2. Every axial slice: field resampled to the detector input size, three HU windows as
   channels, frozen teacher ViT features (CLS token and mean patch token), linear
   detector -> probability that the slice holds coronary calcium.
3. Slices with probability >= the bundle threshold are *selected*.
4. Selected slices only (with their neighbours as extra input channels when the bundle
   says so): MONAI 2D UNet on the segmenter field (finer pixels than the detector's:
   a 1 mm^2 lesion stays a few pixels), argmax at once (uint8), nearest-neighbour back to
   the CT grid.
5. Labels kept only where HU >= the scoring threshold, then :func:`..scoring.score`.

The networks and the heart localiser assume the canonical axial LPS layout (anterior at
row 0, patient left at the last column, slices inferior to superior). A CT stored with
reversed axes (e.g. rows posterior to anterior, feet-first slice order) is flipped into
that layout for the networks and every output is flipped back, so results are the same
physical labels whatever the storage order. A CT whose axes are permuted or strongly
oblique (sagittal/coronal stacks) cannot be flipped there: it is processed as stored,
with a ``UserWarning``; resample it to axial first.

Optionally (``attention=True``) the teacher's last-block CLS attention of the selected
slices is returned on the CT grid, per head and averaged.

On a GPU the networks run in batches under autocast (bf16 where supported, else fp16);
everything runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import Cancelled, InputError
from ..io.volume import CTVolume
from ..scoring import ScoreResult, ScoringParams, score
from . import preprocess as pp
from .attention import attention_maps
from .device import autocast_for, chunks, resolve_device


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
    #: notes on the run a user should see (e.g. a non-axial CT), one line each
    warnings: list[str] = field(default_factory=list)

    def report_extra(self) -> dict:
        """Extra report keys: per-slice detector output and the model's identity."""
        return {
            "slices": [
                {"index": int(i), "probability": float(p), "selected": bool(s)}
                for i, (p, s) in enumerate(zip(self.slice_probabilities, self.selected))
            ],
            "model": dict(self.model_info),
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


def detector_probabilities(
    ct_hu: np.ndarray, field: pp.Field, bundle, dev, batch: int, report=None, locations: np.ndarray | None = None
) -> np.ndarray:
    """Calcium probability of every slice (float32 (z,)); ``locations`` for conditioned backbones."""
    import torch

    from ..models.backbone import extract_features

    prep = bundle.preprocessing
    size, windows = int(prep["input_size"]), prep["windows"]
    probs = np.zeros(ct_hu.shape[0], dtype=np.float32)
    idx = np.arange(ct_hu.shape[0])
    done = 0
    for chunk in chunks(idx, batch):
        x = pp.to_windows(pp.extract_field(ct_hu[chunk], field), size, windows).to(dev)
        with autocast_for(dev):
            loc = None if locations is None else torch.from_numpy(locations[chunk]).to(dev)
            feats = extract_features(bundle.backbone, x, location=loc)
            logits = bundle.detector(feats.float())
        probs[chunk] = torch.sigmoid(logits.float()).cpu().numpy()
        done += len(chunk)
        if report:
            report(done / len(idx), f"slice detector {done}/{len(idx)}")
    return probs


def segment_slices(ct_hu: np.ndarray, indices: np.ndarray, field: pp.Field, bundle, dev, batch: int, report=None) -> np.ndarray:
    """Per-artery labels (uint8 (z, y, x), CT grid) of slices ``indices``; other slices 0."""
    import torch

    cfg = bundle.segmenter_config
    labels = np.zeros(ct_hu.shape, dtype=np.uint8)
    done = 0
    for chunk in chunks(np.asarray(indices, dtype=int), batch):
        x = pp.segmenter_input(ct_hu, chunk, field, cfg).to(dev)
        with autocast_for(dev):
            logits = bundle.segmenter(x)
        lab = logits.argmax(1).to(torch.uint8)
        labels[chunk] = pp.field_to_grid(lab, field, ct_hu.shape[1:], mode="nearest")
        done += len(chunk)
        if report:
            report(done / max(len(indices), 1), f"segmenter {done}/{len(indices)}")
    return labels


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
) -> PipelineResult:
    """Run the pipeline of ``bundle`` (a :class:`ModelBundle` or a path / None) on ``ct``.

    ``all_slices=True`` skips the detector's selection and segments every slice (the
    "UNET alone" baseline); probabilities are still computed and returned.
    """
    import torch

    from ..models.bundle import ModelBundle, load_bundle

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
        timings["load_bundle_s"] = time.perf_counter() - t_start
    params = params or ScoringParams()
    hu = np.asarray(ct.hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError(f"CT must be a 3D volume (z, y, x), got shape {hu.shape}")
    run_warnings: list[str] = []
    flips = pp.canonical_flips(ct.direction)
    if flips is None:
        message = (
            "the CT axes are not close to axial LPS (permuted or oblique: direction "
            f"{np.round(np.asarray(ct.direction, dtype=float), 3).tolist()}); the models assume axial slices "
            "with anterior up and patient left on the right, so results may be wrong; resample to axial first"
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        run_warnings.append(message)
        flips = (False, False, False)
    axes = pp.flip_axes(flips)
    # Network view: the canonical layout (a flipped copy when the CT is stored otherwise).
    hu_net = np.ascontiguousarray(np.flip(hu, axes) if axes else hu, dtype=np.float32)
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    dev = resolve_device(device)
    batch = batch_size or (64 if dev.type == "cuda" else 16)
    report = _Progress(progress, cancel)
    report(0.0, "preparing")

    for m in bundle.modules():
        m.to(dev)
    with torch.inference_mode():
        t = time.perf_counter()
        centre = pp.heart_centre(hu_net, ct.spacing)
        det_field = pp.field_for(centre, ct.spacing, float(bundle.preprocessing["crop_mm"]))
        seg_field = pp.field_for(centre, ct.spacing, float(bundle.segmenter_config.crop_mm))
        timings["heart_box_s"] = time.perf_counter() - t

        t = time.perf_counter()
        locations = pp.slice_locations(ct) if bundle.manifest["backbone"].get("location_conditioning") else None
        if locations is not None and flips[0]:
            locations = np.ascontiguousarray(locations[::-1])
        probs = detector_probabilities(
            hu_net, det_field, bundle, dev, batch, lambda f, m: report(0.05 + 0.45 * f, m), locations=locations
        )
        timings["detector_s"] = time.perf_counter() - t
        selected = np.ones_like(probs, dtype=bool) if all_slices else probs >= bundle.threshold
        chosen = np.flatnonzero(selected)

        t = time.perf_counter()
        seg_batch = max(1, batch // 2)
        span = 0.35 if attention else 0.45
        labels = segment_slices(hu_net, chosen, seg_field, bundle, dev, seg_batch, lambda f, m: report(0.5 + span * f, m))
        timings["segmenter_s"] = time.perf_counter() - t

        att = None
        if attention:
            t = time.perf_counter()
            att = attention_maps(
                hu_net, chosen, det_field, bundle, dev, batch, lambda f, m: report(0.85 + 0.1 * f, m), locations=locations
            )
            timings["attention_s"] = time.perf_counter() - t

    del hu_net
    if axes:  # back to the CT's own storage order
        labels = np.ascontiguousarray(np.flip(labels, axes))
        if att is not None:
            att = np.ascontiguousarray(np.flip(att, pp.flip_axes(flips, offset=1)))
        if flips[0]:
            probs, selected = probs[::-1].copy(), selected[::-1].copy()
    t = time.perf_counter()
    labels[hu < params.threshold_hu] = 0
    result = score(hu, labels, ct.spacing, params)
    timings["scoring_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    report(1.0, "done")
    return PipelineResult(
        labels=labels,
        score=result,
        slice_probabilities=probs.astype(np.float32),
        selected=selected,
        attention=att,
        model_info=bundle.model_info(),
        timings=timings,
        warnings=run_warnings,
    )
