"""Self-supervised training data: study slices -> multi-crop views (+ locations).

:class:`StudyArrays` holds one study cropped to its heart field (:func:`heart_box`, from the
heart mask when there is one, never from calcium labels): int16 HU, uint8 labels, the slice
locations ``c`` in [-1, 1] (:func:`slice_location`), the 3D lesion components (for view
pairing) and optional extra series on the same grid. :class:`StudySource` serves them, from
memory (synthetic studies) or from study folders through an LRU cache.

:class:`SSLDataset` turns one slice record into the crops of one training sample:

* ``crops``: list of (C, S, S) tensors, *globals first*: view 0's globals, view 1's globals
  (multi-view), then view 0's locals, view 1's locals. The teacher takes the first
  ``n_global`` crops (view 0's globals); views are put in random order, so this is "the
  globals of one randomly chosen view".
* ``locations``: one float32 scalar per crop (its slice's ``c``).
* ``neighbor`` / ``neighbor_location`` (neighbour loss only): one global crop of a slice
  3-6 mm away and its own ``c``.

:class:`CalcifiedOversampler` draws slice indices with calcified slices at a chosen
fraction of the draws (DINO-LG), differently per epoch and per process.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from CoronaryCalciumDINOLib.data.slices import (
    DEFAULT_BOX_MM,
    SliceRecord,
    balanced_sampler_weights,
    heart_box,
    heart_z_extent,
    index_studies,
    slice_location,
)
from CoronaryCalciumDINOLib.errors import InputError

from .crops import CropConfig, MultiCropAugment
from .views import choose_partner, lesion_components


@dataclass
class StudyArrays:
    """One study cropped to its heart field, with what view pairing needs."""

    id: str
    hu: np.ndarray  # (Z, h, w) int16
    labels: np.ndarray  # (Z, h, w) uint8
    spacing: tuple[float, float, float]
    locations: np.ndarray  # (Z,) float32 in [-1, 1]
    components: np.ndarray  # (Z, h, w) lesion component ids (0 = none)
    comp_ranges: dict[int, tuple[int, int]]
    extra_series: list[np.ndarray] = field(default_factory=list)  # (Z, h, w) int16 each

    @classmethod
    def from_study(cls, study, extra_series=(), box_mm: float = DEFAULT_BOX_MM) -> "StudyArrays":
        """Crop ``study`` (a :class:`~CoronaryCalciumDINOLib.data.studies.Study`) to its heart field."""
        hu = study.ct.hu
        spacing = tuple(float(s) for s in study.ct.spacing)
        y0, y1, x0, x1 = heart_box(hu, spacing, study.heart, size_mm=box_mm)
        extent = heart_z_extent(study.heart) if study.heart is not None else None
        if extent is None:
            extent = (0, hu.shape[0] - 1)
        sup = bool(np.asarray(study.ct.direction, dtype=float)[2, 2] >= 0)
        labels = study.labels[:, y0:y1, x0:x1].astype(np.uint8)
        comps, ranges = lesion_components(labels)

        def crop(v):
            return np.clip(np.rint(v[:, y0:y1, x0:x1]), -32768, 32767).astype(np.int16)

        extras = []
        for v in extra_series:
            if v.shape != hu.shape:
                raise InputError(f"{study.id}: extra series of shape {v.shape} is not on the CT grid {hu.shape}")
            extras.append(crop(v))
        return cls(
            id=str(study.id),
            hu=crop(hu),
            labels=labels,
            spacing=spacing,
            locations=np.array([slice_location(z, extent, sup) for z in range(hu.shape[0])], np.float32),
            components=comps,
            comp_ranges=ranges,
            extra_series=extras,
        )

    def records(self, key: str) -> list[SliceRecord]:
        calc = self.labels.reshape(self.labels.shape[0], -1).any(axis=1)
        return [
            SliceRecord(self.id, key, z, bool(calc[z]), float(self.locations[z])) for z in range(self.hu.shape[0])
        ]


class StudySource:
    """Studies by key: in memory, or loaded from study folders on demand (LRU cache)."""

    def __init__(self, studies: dict[str, StudyArrays] | None = None, cache_size: int = 8, box_mm: float = DEFAULT_BOX_MM):
        self._memory = dict(studies or {})
        self._cache: OrderedDict[str, StudyArrays] = OrderedDict()
        self.cache_size = int(cache_size)
        self.box_mm = float(box_mm)

    @classmethod
    def in_memory(cls, studies, extra_series=None) -> tuple["StudySource", list[SliceRecord]]:
        """From :class:`Study` objects (e.g. generated on the fly) and optional extra series
        (one list of HU volumes on the study's grid per study)."""
        arrays, records = {}, []
        for i, st in enumerate(studies):
            key = f"memory:{i}:{st.id}"
            arrays[key] = StudyArrays.from_study(st, extra_series[i] if extra_series else ())
            records += arrays[key].records(key)
        return cls(arrays), records

    @classmethod
    def from_folder(cls, root: str | Path, cache_size: int = 8) -> tuple["StudySource", list[SliceRecord]]:
        """From a folder of study folders (:mod:`CoronaryCalciumDINOLib.data.studies`)."""
        records = index_studies(root)
        if not records:
            raise InputError(f"no study folders in {root}")
        return cls(cache_size=cache_size), records

    def get(self, key: str) -> StudyArrays:
        if key in self._memory:
            return self._memory[key]
        st = self._cache.get(key)
        if st is not None:
            self._cache.move_to_end(key)
            return st
        st = self._load(key)
        self._cache[key] = st
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return st

    def _load(self, key: str) -> StudyArrays:
        """Load a study folder; extra series are its ``ct_*.nrrd`` files on the CT grid."""
        from CoronaryCalciumDINOLib.data.studies import load_study
        from CoronaryCalciumDINOLib.io.volume import read_volume_file

        study = load_study(key)
        extras = []
        for p in sorted(Path(key).glob("ct_*.nrrd")):
            v = read_volume_file(p)
            if v.hu.shape == study.ct.hu.shape:
                extras.append(v.hu)
        return StudyArrays.from_study(study, extras, self.box_mm)


class SSLDataset(torch.utils.data.Dataset):
    """Slice records -> multi-crop training samples (see the module docstring).

    ``multiview``: ``none`` | ``adjacent`` | ``series``; ``neighbor``: add one global crop of a
    neighbouring slice (for the location-conditioned neighbour loss).
    """

    def __init__(
        self,
        source: StudySource,
        records: list[SliceRecord],
        crop_cfg: CropConfig,
        multiview: str = "none",
        neighbor: bool = False,
    ):
        if multiview not in ("none", "adjacent", "series"):
            raise InputError(f"multiview must be none, adjacent or series, got {multiview!r}")
        self.source = source
        self.records = list(records)
        self.cfg = crop_cfg
        self.augment = MultiCropAugment(crop_cfg)
        self.multiview = multiview
        self.neighbor = bool(neighbor)

    def __len__(self) -> int:
        return len(self.records)

    def _partner(self, st: StudyArrays, z: int, rng: np.random.Generator, mode: str):
        ch = choose_partner(
            mode,
            z,
            st.hu.shape[0],
            st.spacing[0],
            rng,
            st.components,
            st.comp_ranges,
            n_series=len(st.extra_series),
            guided=self.cfg.label_guided,
        )
        vol = st.hu if ch.series == 0 else st.extra_series[ch.series - 1]
        return vol[ch.z].astype(np.float32), st.labels[ch.z], float(st.locations[ch.z]), ch

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        st = self.source.get(rec.study_dir)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        z = int(rec.z)
        anchor = (st.hu[z].astype(np.float32), st.labels[z], float(st.locations[z]), None)
        views = [anchor]
        if self.multiview != "none":
            hu, lab, loc, ch = self._partner(st, z, rng, self.multiview)
            views.append((hu, lab, loc, ch.targets))
            if rng.random() < 0.5:
                views.reverse()
        globals_, locals_, gloc, lloc = [], [], [], []
        for hu, lab, loc, targets in views:
            g, lc, _ = self.augment(hu, lab, rng, targets=targets)
            globals_ += g
            locals_ += lc
            gloc += [loc] * len(g)
            lloc += [loc] * len(lc)
        item = {
            "crops": globals_ + locals_,
            "locations": [torch.tensor(v, dtype=torch.float32) for v in gloc + lloc],
            "calcified": torch.tensor(float(rec.has_calcium)),
        }
        if self.neighbor:
            hu, lab, loc, ch = self._partner(st, z, rng, "adjacent")
            g, _, _ = MultiCropAugment(_single_global(self.cfg))(hu, lab, rng, targets=ch.targets)
            item["neighbor"] = g[0]
            item["neighbor_location"] = torch.tensor(loc, dtype=torch.float32)
        return item


def _single_global(cfg: CropConfig) -> CropConfig:
    from dataclasses import replace

    return replace(cfg, n_global=1, n_local=0)


class CalcifiedOversampler(torch.utils.data.Sampler):
    """Draws ``num_samples`` indices per epoch (with replacement) for one process.

    With ``calcified_fraction`` f in (0, 1), calcified slices make up f of the draws in
    expectation (:func:`balanced_sampler_weights`); with ``None`` slices are drawn uniformly.
    The draw depends on ``seed``, the epoch (:meth:`set_epoch`) and ``rank``, so processes
    see different slices.
    """

    def __init__(self, records, num_samples: int, calcified_fraction: float | None, seed: int = 0, rank: int = 0):
        if calcified_fraction:
            w = balanced_sampler_weights(records, calcified_fraction)
        else:
            w = np.full(len(records), 1.0 / max(len(records), 1))
        self.weights = torch.as_tensor(w, dtype=torch.double)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + self.rank)
        return iter(torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).tolist())
