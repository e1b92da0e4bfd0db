"""The per-study format shared by the synthetic generator and the COCA reader.

A study is a folder::

    <root>/<study_id>/ct.nrrd       int16 HU, with geometry (spacing, origin, direction)
    <root>/<study_id>/labels.nrrd   uint8 calcium labels 0 bg, 1 LM, 2 LAD, 3 LCX, 4 RCA
    <root>/<study_id>/heart.nrrd    uint8 heart mask (optional; synthetic studies have it)
    <root>/<study_id>/study.json    {"id", "source", "seed", "params", "scores", "slices_with_calcium", ...}

``study.json["scores"]`` is the report of :func:`..report.build_report` computed by the
project's scoring module on the saved files; ``slices_with_calcium`` lists the slice
indices holding at least one kept lesion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.volume import CTVolume, read_label_file, read_volume_file, write_volume

CT_FILE = "ct.nrrd"
LABELS_FILE = "labels.nrrd"
HEART_FILE = "heart.nrrd"
META_FILE = "study.json"


@dataclass
class Study:
    id: str
    ct: CTVolume
    labels: np.ndarray  # (z, y, x) uint8 0..4
    heart: np.ndarray | None = None  # (z, y, x) uint8
    meta: dict = field(default_factory=dict)
    path: Path | None = None


def write_study(study: Study, root: str | Path) -> Path:
    """Write a study folder (volumes first, ``study.json`` last: its presence marks completion)."""
    from ..report import build_report, write_json
    from ..scoring import score, slices_with_calcium

    folder = Path(root) / study.id
    folder.mkdir(parents=True, exist_ok=True)
    hu = np.clip(np.rint(study.ct.hu), -32768, 32767).astype(np.int16)
    labels = study.labels.astype(np.uint8)
    write_volume(hu, study.ct, folder / CT_FILE)
    write_volume(labels, study.ct, folder / LABELS_FILE)
    if study.heart is not None:
        write_volume(study.heart.astype(np.uint8), study.ct, folder / HEART_FILE)
    # Ground truth from the saved (rounded int16) HU, so it equals scoring the files.
    result = score(hu, labels, study.ct.spacing)
    meta = dict(study.meta)
    meta.update(
        {
            "id": study.id,
            "scores": build_report(result, str(folder / CT_FILE), kvp=study.ct.kvp),
            "slices_with_calcium": [int(i) for i in np.flatnonzero(slices_with_calcium(result, hu.shape[0]))],
            "shape": list(hu.shape),
        }
    )
    write_json(meta, folder / META_FILE)
    return folder


def is_study_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / META_FILE).is_file() and (p / CT_FILE).is_file()


def list_studies(root: str | Path) -> list[Path]:
    """Complete study folders under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"study folder not found: {root}")
    return sorted(p for p in root.iterdir() if p.is_dir() and is_study_dir(p))


def read_study_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))


def load_study(path: str | Path, with_heart: bool = True) -> Study:
    """Read a study folder written by :func:`write_study`."""
    path = Path(path)
    if not is_study_dir(path):
        raise InputError(f"not a study folder (needs {CT_FILE} and {META_FILE}): {path}")
    meta = read_study_meta(path)
    ct = read_volume_file(path / CT_FILE)
    labels = read_label_file(path / LABELS_FILE, ct).astype(np.uint8)
    heart = None
    if with_heart and (path / HEART_FILE).is_file():
        heart = read_label_file(path / HEART_FILE, ct).astype(np.uint8)
    ct.kvp = meta.get("kvp", ct.kvp)
    return Study(id=meta.get("id", path.name), ct=ct, labels=labels, heart=heart, meta=meta, path=path)
