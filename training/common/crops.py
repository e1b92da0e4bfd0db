"""Multi-crop augmentation of CT slices and the label-guided crop sampler (DINO-LG).

Input of every function: one axial slice of HU cropped to the heart field (``hu`` (H, W),
see :func:`CoronaryCalciumDINOLib.data.slices.heart_box`) and its calcium labels (same shape,
0 = none). Crop boxes are drawn inside that field, as torchvision's ``RandomResizedCrop``
does (area fraction ``scale`` of the field, aspect ratio log-uniform in ``ratio``, position
uniform), then rendered: bilinear resize of the HU (as at inference), optional Gaussian HU
noise, horizontal flip, and :func:`hu_to_windows` with *jittered* windows. There is no colour
jitter, grayscale or solarisation: HU have a physical meaning.

Label-guided sampling (our design of DINO-LG's augmentation):

* global crops of a calcified slice are re-drawn (up to ``max_global_tries``) until they
  contain a lesion pixel, and otherwise placed around one;
* each local crop of a calcified slice is *guided* with probability ``p_guided``: a lesion
  pixel is drawn uniformly (so lesions are chosen in proportion to their area) and the crop
  is placed with uniform jitter such that the pixel stays inside, ``margin`` pixels from the
  border when the crop is large enough;
* with probability ``p_hard_negative`` a local crop is centred (with the same jitter) on a
  *hard negative*: a pixel >= 130 HU that is not within ``exclusion_px`` of a labelled
  lesion (bone, aortic wall, valves, non-coronary calcium), to keep specificity;
* all other crops are label-blind (the plain DINO sampler).

Labels only choose crop positions; the DINO loss is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from CoronaryCalciumDINOLib.data.slices import DEFAULT_WINDOWS, hu_to_windows

HARD_NEGATIVE_HU = 130.0


@dataclass
class CropConfig:
    """Multi-crop settings (defaults: DINO's 2 x 224 px global + 8 x 96 px local crops)."""

    global_size: int = 224
    local_size: int = 96
    n_global: int = 2
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS
    window_center_jitter_hu: float = 20.0  # window centre shift, uniform +-
    window_width_jitter: float = 0.1  # relative window width change, uniform +-
    hflip_p: float = 0.5
    noise_p: float = 0.5
    noise_hu: float = 15.0  # max std of the added Gaussian HU noise
    # label guidance
    label_guided: bool = False
    p_guided: float = 0.5
    p_hard_negative: float = 0.1
    max_global_tries: int = 20
    margin: int = 2
    exclusion_px: int = 3
    hard_negative_hu: float = HARD_NEGATIVE_HU


@dataclass
class CropBox:
    """A crop ``hu[y0:y1, x0:x1]`` and how it was drawn (``random``, ``guided``, ``hard_negative``)."""

    y0: int
    y1: int
    x0: int
    x1: int
    kind: str = "random"
    center: tuple[int, int] | None = None  # the pixel the crop was placed around

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean per (y, x) row of ``points``: inside the box."""
        p = np.asarray(points).reshape(-1, 2)
        return (p[:, 0] >= self.y0) & (p[:, 0] < self.y1) & (p[:, 1] >= self.x0) & (p[:, 1] < self.x1)


def hard_negative_candidates(hu: np.ndarray, labels: np.ndarray, cfg: CropConfig) -> np.ndarray:
    """(N, 2) pixels >= ``hard_negative_hu`` HU farther than ``exclusion_px`` from any lesion."""
    bright = hu >= cfg.hard_negative_hu
    if labels is not None and labels.any():
        ys, xs = np.nonzero(labels)
        m = max(int(cfg.exclusion_px), 1)
        y0, y1 = max(ys.min() - m, 0), ys.max() + m + 1
        x0, x1 = max(xs.min() - m, 0), xs.max() + m + 1
        near = ndimage.binary_dilation(labels[y0:y1, x0:x1] > 0, iterations=m)
        bright[y0:y1, x0:x1] &= ~near
    return np.argwhere(bright)


@dataclass
class LabelGuidedCropSampler:
    """Draws crop boxes on a field of size (H, W); see the module docstring."""

    cfg: CropConfig
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def crop_size(self, h: int, w: int, scale: tuple[float, float]) -> tuple[int, int]:
        """(height, width) with area fraction ~ U(scale) and log-uniform aspect ratio."""
        area = h * w * self.rng.uniform(*scale)
        log_r = self.rng.uniform(math.log(self.cfg.ratio[0]), math.log(self.cfg.ratio[1]))
        r = math.exp(log_r)
        cw = int(round(math.sqrt(area * r)))
        ch = int(round(math.sqrt(area / r)))
        return min(max(ch, 1), h), min(max(cw, 1), w)

    def random_box(self, h: int, w: int, scale: tuple[float, float]) -> CropBox:
        """Label-blind box: size from :meth:`crop_size`, top-left uniform over valid positions."""
        ch, cw = self.crop_size(h, w, scale)
        y0 = int(self.rng.integers(0, h - ch + 1))
        x0 = int(self.rng.integers(0, w - cw + 1))
        return CropBox(y0, y0 + ch, x0, x0 + cw)

    def _start_around(self, p: int, size: int, extent: int) -> int:
        """Uniform start so that ``p`` is inside ``[s, s+size)`` (``margin`` from the edges when possible)."""
        m = min(int(self.cfg.margin), (size - 1) // 2)
        s = int(self.rng.integers(p - size + 1 + m, p - m + 1))
        return min(max(s, 0), extent - size)  # shifting into the image keeps p inside

    def box_around(self, h: int, w: int, scale: tuple[float, float], point, kind: str) -> CropBox:
        ch, cw = self.crop_size(h, w, scale)
        py, px = int(point[0]), int(point[1])
        y0 = self._start_around(py, ch, h)
        x0 = self._start_around(px, cw, w)
        return CropBox(y0, y0 + ch, x0, x0 + cw, kind=kind, center=(py, px))

    def _pick(self, points: np.ndarray) -> np.ndarray:
        return points[int(self.rng.integers(len(points)))]

    def global_boxes(self, shape: tuple[int, int], targets: np.ndarray | None) -> list[CropBox]:
        """``n_global`` boxes; with guidance and ``targets`` (lesion pixels), each contains one."""
        h, w = shape
        out = []
        guided = self.cfg.label_guided and targets is not None and len(targets) > 0
        for _ in range(self.cfg.n_global):
            box = self.random_box(h, w, self.cfg.global_scale)
            if guided:
                tries = 1
                while not box.contains(targets).any() and tries < self.cfg.max_global_tries:
                    box = self.random_box(h, w, self.cfg.global_scale)
                    tries += 1
                if not box.contains(targets).any():
                    box = self.box_around(h, w, self.cfg.global_scale, self._pick(targets), "guided")
            out.append(box)
        return out

    def local_boxes(self, shape: tuple[int, int], targets: np.ndarray | None, negatives=None) -> list[CropBox]:
        """``n_local`` boxes: guided (p_guided, if targets), hard negative (p_hard_negative), random.

        ``negatives`` is an (N, 2) array of hard-negative pixels or a callable returning one;
        a callable is evaluated only when a hard negative is drawn.
        """
        h, w = shape
        cfg = self.cfg
        has_targets = cfg.label_guided and targets is not None and len(targets) > 0
        out = []
        for _ in range(cfg.n_local):
            u = self.rng.random()
            if has_targets:
                if u < cfg.p_guided:
                    out.append(self.box_around(h, w, cfg.local_scale, self._pick(targets), "guided"))
                    continue
                u -= cfg.p_guided
            if cfg.label_guided and negatives is not None and u < cfg.p_hard_negative:
                if callable(negatives):
                    negatives = negatives()
                if len(negatives) > 0:
                    out.append(self.box_around(h, w, cfg.local_scale, self._pick(negatives), "hard_negative"))
                    continue
            out.append(self.random_box(h, w, cfg.local_scale))
        return out


def jitter_windows(cfg: CropConfig, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Each window's centre shifted by U(+-centre jitter) HU and width scaled by 1 + U(+-width jitter)."""
    out = []
    for lo, hi in cfg.windows:
        c = 0.5 * (lo + hi) + rng.uniform(-cfg.window_center_jitter_hu, cfg.window_center_jitter_hu)
        wdt = (hi - lo) * (1.0 + rng.uniform(-cfg.window_width_jitter, cfg.window_width_jitter))
        out.append((c - wdt / 2.0, c + wdt / 2.0))
    return out


def render_crop(
    hu: np.ndarray, box: CropBox, size: int, cfg: CropConfig, rng: np.random.Generator, augment: bool = True
) -> torch.Tensor:
    """Crop, resize (bilinear, pixel-centre aligned, as at inference) and window: (C, size, size).

    With ``augment``: Gaussian HU noise (prob ``noise_p``), horizontal flip (``hflip_p``)
    and jittered windows; without, the plain windows (inference-identical input).
    """
    patch = torch.from_numpy(np.ascontiguousarray(hu[box.y0: box.y1, box.x0: box.x1], dtype=np.float32))
    x = F.interpolate(patch[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    windows = cfg.windows
    if augment:
        if rng.random() < cfg.noise_p and cfg.noise_hu > 0:
            sigma = rng.uniform(0.0, cfg.noise_hu)
            gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
            x = x + sigma * torch.randn(x.shape, generator=gen)
        if rng.random() < cfg.hflip_p:
            x = torch.flip(x, dims=(-1,))
        windows = jitter_windows(cfg, rng)
    return hu_to_windows(x, windows)


@dataclass
class MultiCropAugment:
    """Slice -> (global crops, local crops, boxes) with the sampler and renderer above."""

    cfg: CropConfig

    def __call__(
        self,
        hu: np.ndarray,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        targets: np.ndarray | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[CropBox]]:
        """``targets`` overrides the guidance pixels (default: the slice's lesion pixels)."""
        sampler = LabelGuidedCropSampler(self.cfg, rng)
        if targets is None and labels is not None and self.cfg.label_guided:
            targets = np.argwhere(labels > 0)
        negatives = None
        if self.cfg.label_guided and self.cfg.p_hard_negative > 0:
            negatives = lambda: hard_negative_candidates(hu, labels, self.cfg)  # noqa: E731 - lazy
        gboxes = sampler.global_boxes(hu.shape, targets)
        lboxes = sampler.local_boxes(hu.shape, targets, negatives)
        g = [render_crop(hu, b, self.cfg.global_size, self.cfg, rng) for b in gboxes]
        loc = [render_crop(hu, b, self.cfg.local_size, self.cfg, rng) for b in lboxes]
        return g, loc, gboxes + lboxes
