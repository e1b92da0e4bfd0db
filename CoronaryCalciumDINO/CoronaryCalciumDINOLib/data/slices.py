"""Axial-slice tooling shared by training and inference.

Two groups of functions live here:

* Pure NumPy pre-processing that the inference pipeline reuses unchanged, so a model sees
  the same input at training and at scoring time (importing this module does not import
  torch):

  - :func:`hu_to_windows` turns HU into window channels in [0, 1] (defined in
    :mod:`..pipeline.preprocess`, re-exported here);
  - :func:`heart_centre` finds the heart, from a heart mask when one exists and otherwise
    from a cheap HU-based localiser; calcium labels are never used, because they do not
    exist at inference time; :func:`heart_box` gives the square field (in mm) around it
    (both defined in the anatomy step, :mod:`..pipeline.anatomy`, re-exported here);
  - :func:`slice_location` places a slice within the heart's z-extent, in [-1, 1];
  - :func:`crop_and_resize` crops a slice to a box and resizes it, keeping every labelled
    lesion (at least one pixel each).

* Training-time indexing and a PyTorch dataset over the per-study folders of
  :mod:`.studies`: :class:`SliceRecord`, :func:`index_studies`, :class:`SliceDataset` and
  :func:`balanced_sampler_weights` (oversampling of calcified slices).

Array order is (z, y, x) = (slice, row, column), as everywhere in the project.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io.volume import read_label_file
from ..pipeline.anatomy import DEFAULT_BOX_MM, HEART_MASK_MARGIN_MM, heart_box, heart_centre  # noqa: F401
from ..pipeline.preprocess import DEFAULT_WINDOWS, hu_to_windows  # noqa: F401
from .studies import (
    CT_FILE,
    HEART_FILE,
    is_study_dir,
    list_studies,
    load_study,
    read_study_meta,
)

# --------------------------------------------------------------------------- location


def heart_z_extent(heart_mask: np.ndarray) -> tuple[int, int] | None:
    """First and last slice index (inclusive) holding heart voxels, or None if empty."""
    mask = np.asarray(heart_mask)
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return None
    return int(zs[0]), int(zs[-1])


def slice_location(z_index: float, heart, superior_increasing: bool = True) -> float:
    """Position of slice ``z_index`` within the heart's z-extent, in [-1, 1].

    ``heart`` is a heart mask (Z, H, W) or the inclusive extent ``(z_first, z_last)`` in slice
    indices. -1 is the most inferior heart slice and +1 the most superior, so the value has
    the same anatomical meaning whatever the slice order: ``superior_increasing`` tells
    whether the slice index grows towards the head (the z-component of the slice axis in LPS
    is positive; True for the project's studies written with an identity direction).
    Slices outside the extent are clipped to -1 / +1; a one-slice extent gives 0.
    """
    if isinstance(heart, np.ndarray) and heart.ndim == 3:
        ext = heart_z_extent(heart)
        if ext is None:
            raise InputError("heart mask is empty: no z-extent for the slice location")
    else:
        ext = tuple(heart)  # type: ignore[assignment]
        if len(ext) != 2:
            raise InputError(f"heart extent must be (z_first, z_last), got {heart!r}")
    z0, z1 = float(min(ext)), float(max(ext))
    if z1 == z0:
        return 0.0
    t = 2.0 * (float(z_index) - z0) / (z1 - z0) - 1.0
    if not superior_increasing:
        t = -t
    return float(np.clip(t, -1.0, 1.0))


# --------------------------------------------------------------------------- crop / resize


def _resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with pixel-centre alignment (as ``align_corners=False``), no antialias."""
    h, w = img.shape
    ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0).astype(np.float32)[:, None]
    wx = (xs - x0).astype(np.float32)[None, :]
    a = img.astype(np.float32)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bot = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return (top * (1 - wy) + bot * wy).astype(np.float32)


def _resize_labels(lab: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest-neighbour resize that keeps every labelled component.

    Output pixel (i, j) takes the input pixel whose centre is nearest to its own centre.
    A component (8-connected, per label value) left without any pixel by the sampling puts
    its label on the output pixel containing the component's centroid, so a 1 mm^2 lesion
    is never lost when shrinking.
    """
    h, w = lab.shape
    ys = np.minimum(np.floor((np.arange(out_h) + 0.5) * h / out_h).astype(int), h - 1)
    xs = np.minimum(np.floor((np.arange(out_w) + 0.5) * w / out_w).astype(int), w - 1)
    out = lab[ys][:, xs].copy()
    if not lab.any():
        return out
    for value in np.unique(lab[lab > 0]):
        comp, n = ndimage.label(lab == value, structure=np.ones((3, 3), bool))
        kept = np.unique(comp[ys][:, xs])
        lost = np.setdiff1d(np.arange(1, n + 1), kept)
        if lost.size:
            for cy, cx in ndimage.center_of_mass(np.ones_like(comp), comp, lost):
                oy = min(int((cy + 0.5) * out_h / h), out_h - 1)
                ox = min(int((cx + 0.5) * out_w / w), out_w - 1)
                out[oy, ox] = value
    return out


def crop_and_resize(
    image: np.ndarray,
    box: tuple[int, int, int, int] | None,
    out_size: int | None,
    kind: str = "image",
) -> np.ndarray:
    """Crop ``image[..., y0:y1, x0:x1]`` and resize the last two axes to ``out_size`` square.

    ``kind="image"`` resizes bilinearly (float32 out); ``kind="labels"`` by nearest neighbour
    keeping every labelled component (same dtype out). ``box=None`` keeps the whole slice;
    ``out_size=None`` keeps the cropped size. Leading axes (e.g. neighbouring slices) are
    processed one by one.
    """
    if kind not in ("image", "labels"):
        raise InputError(f"kind must be 'image' or 'labels', got {kind!r}")
    arr = np.asarray(image)
    if box is not None:
        y0, y1, x0, x1 = (int(v) for v in box)
        if not (0 <= y0 < y1 <= arr.shape[-2] and 0 <= x0 < x1 <= arr.shape[-1]):
            raise InputError(f"crop box {box} is not inside an image of size {arr.shape[-2:]}")
        arr = arr[..., y0:y1, x0:x1]
    if out_size is None:
        return arr.astype(np.float32) if kind == "image" else arr.copy()
    if int(out_size) < 1:
        raise InputError(f"output size must be >= 1 pixel, got {out_size}")
    fn = _resize_bilinear if kind == "image" else _resize_labels
    flat = arr.reshape((-1,) + arr.shape[-2:])
    res = np.stack([fn(a, int(out_size), int(out_size)) for a in flat])
    return res.reshape(arr.shape[:-2] + res.shape[-2:])


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SliceRecord:
    """One axial slice of a study folder."""

    study_id: str
    study_dir: str
    z: int
    has_calcium: bool
    location: float


def _volume_header(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (z, y, x) and direction of a volume file, read from its header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    sx, sy, sz = reader.GetSize()
    return (int(sz), int(sy), int(sx)), np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)


def index_studies(study_dirs, progress: Callable[[float, str], None] | None = None) -> list[SliceRecord]:
    """One :class:`SliceRecord` per axial slice of each study folder.

    ``study_dirs`` is a list of study folders, or one folder holding study folders.
    ``has_calcium`` comes from ``study.json["slices_with_calcium"]`` (kept lesions only). The
    location uses the heart mask's z-extent (``heart.nrrd``) when the study has one, else the
    whole scan range (gated cardiac scans cover about the heart). CT voxels are not loaded:
    the shape comes from ``study.json`` and the orientation from the CT header.
    """
    if isinstance(study_dirs, (str, Path)):
        p = Path(study_dirs)
        dirs = [p] if is_study_dir(p) else list_studies(p)
    else:
        dirs = [Path(d) for d in study_dirs]
    records: list[SliceRecord] = []
    for n, d in enumerate(dirs):
        if not is_study_dir(d):
            raise InputError(f"not a study folder: {d}")
        meta = read_study_meta(d)
        shape, direction = _volume_header(d / CT_FILE)
        if "shape" in meta and tuple(meta["shape"]) != shape:
            raise InputError(f"{d.name}: study.json shape {meta['shape']} does not match ct.nrrd {list(shape)}")
        nz = shape[0]
        extent = None
        if (d / HEART_FILE).is_file():
            extent = heart_z_extent(read_label_file(d / HEART_FILE))
        if extent is None:
            extent = (0, nz - 1)
        sup = bool(direction[2, 2] >= 0)
        positive = {int(z) for z in meta.get("slices_with_calcium", [])}
        sid = str(meta.get("id", d.name))
        for z in range(nz):
            records.append(SliceRecord(sid, str(d), z, z in positive, slice_location(z, extent, sup)))
        if progress is not None:
            progress((n + 1) / max(len(dirs), 1), f"indexed {sid}")
    return records


def balanced_sampler_weights(records: Sequence[SliceRecord], positive_fraction: float = 0.4) -> np.ndarray:
    """Per-record sampling weights giving calcified slices ``positive_fraction`` of the draws.

    Use with ``torch.utils.data.WeightedRandomSampler(weights, num_samples, replacement=True)``.
    The weights sum to 1. When all slices are of one kind the weights are uniform.
    """
    if not 0.0 < positive_fraction < 1.0:
        raise InputError(f"positive fraction must be in (0, 1), got {positive_fraction}")
    pos = np.array([r.has_calcium for r in records], dtype=bool)
    n = pos.size
    if n == 0:
        return np.zeros(0)
    n_pos = int(pos.sum())
    if n_pos in (0, n):
        return np.full(n, 1.0 / n)
    return np.where(pos, positive_fraction / n_pos, (1.0 - positive_fraction) / (n - n_pos))


# --------------------------------------------------------------------------- dataset


class _CachedStudy:
    """The arrays of one study restricted to its crop box (int16 HU, uint8 labels/heart)."""

    def __init__(self, study_dir: str, crop: str | None, size_mm: float):
        st = load_study(study_dir)
        hu = st.ct.hu
        self.spacing = tuple(float(s) for s in st.ct.spacing)
        if crop in ("heart", "heart_hu"):
            mask = st.heart if crop == "heart" else None
            self.box = heart_box(hu, self.spacing, mask, size_mm=size_mm)
        else:
            self.box = (0, hu.shape[1], 0, hu.shape[2])
        y0, y1, x0, x1 = self.box
        self.hu = np.clip(np.rint(hu[:, y0:y1, x0:x1]), -32768, 32767).astype(np.int16)
        self.labels = st.labels[:, y0:y1, x0:x1].astype(np.uint8)
        self.heart = None if st.heart is None else st.heart[:, y0:y1, x0:x1].astype(np.uint8)


class SliceDataset:
    """A PyTorch map-style dataset of axial slices of study folders.

    Each item is a dict:

    ``image``      float32 tensor (C, S, S): :func:`hu_to_windows` of the cropped, resized HU
    ``neighbors``  (only when ``neighbors > 0``) float32 tensor (2n*C, S, S): the windows of
                   slices z-n..z-1, z+1..z+n in that order (indices clamped at the volume
                   ends); the model input with context is ``torch.cat([image, neighbors])``
    ``hu``         float32 tensor (S, S): cropped, bilinearly resized HU
    ``labels``     int64 tensor (S, S): 0..4, nearest-neighbour resized, no lesion lost
    ``heart``      uint8 tensor (S, S): heart mask (all zero when the study has none)
    ``has_calcium`` float32 scalar tensor (1.0 when the slice holds a kept lesion)
    ``location``   float32 scalar tensor in [-1, 1] (:func:`slice_location`)
    ``study_id``   str
    ``z``          int64 scalar tensor (slice index in the study)
    ``spacing``    float32 tensor (2,): (dy, dx) in mm of the returned pixels
    ``box``        int64 tensor (4,): (y0, y1, x0, x1) of the crop in the original slice

    ``crop="heart"`` crops each study to :func:`heart_box` (from its heart mask if it has one,
    otherwise from HU); ``crop="heart_hu"`` always uses the HU-only localiser, exactly as the
    scoring pipeline does on a new CT (the mask-box centre and the HU localiser's centre may
    differ by about 1 cm, the localiser favouring the thick ventricles); ``crop=None`` keeps
    whole slices. ``out_size`` resizes to a square
    (``None``: keep the crop's size; then items of different studies may differ in size).
    Loaded studies are kept, cropped, in an LRU cache of ``cache_studies`` entries (per
    DataLoader worker). ``transform`` (a callable dict -> dict) is applied last.
    """

    def __init__(
        self,
        records: Sequence[SliceRecord],
        crop: str | None = "heart",
        out_size: int | None = None,
        windows: Sequence[tuple[float, float]] = DEFAULT_WINDOWS,
        cache_studies: int = 8,
        neighbors: int = 0,
        transform: Callable[[dict], dict] | None = None,
        box_mm: float = DEFAULT_BOX_MM,
    ):
        if crop not in ("heart", "heart_hu", None):
            raise InputError(f"crop must be 'heart', 'heart_hu' or None, got {crop!r}")
        if neighbors < 0:
            raise InputError(f"neighbors must be >= 0, got {neighbors}")
        if cache_studies < 1:
            raise InputError(f"cache_studies must be >= 1, got {cache_studies}")
        hu_to_windows(np.zeros((1, 1)), windows)  # validates the windows
        self.records = list(records)
        self.crop = crop
        self.out_size = out_size
        self.windows = tuple(tuple(float(v) for v in w) for w in windows)
        self.cache_studies = int(cache_studies)
        self.neighbors = int(neighbors)
        self.transform = transform
        self.box_mm = float(box_mm)
        self._cache: OrderedDict[str, _CachedStudy] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def _study(self, study_dir: str) -> _CachedStudy:
        st = self._cache.get(study_dir)
        if st is not None:
            self._cache.move_to_end(study_dir)
            return st
        st = _CachedStudy(study_dir, self.crop, self.box_mm)
        self._cache[study_dir] = st
        while len(self._cache) > self.cache_studies:
            self._cache.popitem(last=False)
        return st

    def __getitem__(self, i: int) -> dict:
        import torch

        rec = self.records[i]
        st = self._study(rec.study_dir)
        nz = st.hu.shape[0]
        if not 0 <= rec.z < nz:
            raise InputError(f"{rec.study_id}: slice {rec.z} outside 0..{nz - 1}")
        hu = crop_and_resize(st.hu[rec.z], None, self.out_size, "image")
        labels = crop_and_resize(st.labels[rec.z], None, self.out_size, "labels")
        heart = (
            np.zeros(hu.shape, np.uint8)
            if st.heart is None
            else crop_and_resize(st.heart[rec.z], None, self.out_size, "labels")
        )
        h0, w0 = st.hu.shape[1:]
        dy, dx = st.spacing[1] * h0 / hu.shape[0], st.spacing[2] * w0 / hu.shape[1]
        item = {
            "image": torch.from_numpy(hu_to_windows(hu, self.windows)),
            "hu": torch.from_numpy(hu),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "heart": torch.from_numpy(heart.astype(np.uint8)),
            "has_calcium": torch.tensor(float(rec.has_calcium), dtype=torch.float32),
            "location": torch.tensor(float(rec.location), dtype=torch.float32),
            "study_id": rec.study_id,
            "z": torch.tensor(int(rec.z), dtype=torch.int64),
            "spacing": torch.tensor([dy, dx], dtype=torch.float32),
            "box": torch.tensor(st.box, dtype=torch.int64),
        }
        if self.neighbors > 0:
            n = self.neighbors
            zs = [min(max(rec.z + k, 0), nz - 1) for k in list(range(-n, 0)) + list(range(1, n + 1))]
            nb = crop_and_resize(st.hu[zs], None, self.out_size, "image")
            win = hu_to_windows(nb, self.windows)  # (2n, C, S, S)
            item["neighbors"] = torch.from_numpy(win.reshape((-1,) + win.shape[-2:]))
        if self.transform is not None:
            item = self.transform(item)
        return item
