"""What a study is: the one definition shared by ``score``, ``batch``, ``evaluate`` and Slicer.

A *study* given to the program (:func:`study_input`, :func:`list_study_inputs`) is

* a study folder of the project's own format (below; ``study.json`` optional): its CT is
  ``ct.nrrd`` (or ``ct.nii.gz`` / ``.nii`` / ``.mha`` ...), its label map ``labels.*``
  when present; the study is named after the folder;
* any other folder: one DICOM CT series (any file names, any depth), named after the folder;
* a volume file ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``, named
  after the file without its suffix, except a file called ``ct.*``, which is named after
  the folder holding it (``study-123/ct.nrrd`` is study ``study-123``).

Output files are named after the study, so two studies of one batch (or two ``score``
runs into one folder) do not share output names unless their studies do.

The project's study format, written by the synthetic generator and the COCA reader::

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
from typing import Iterable

import numpy as np

from ..errors import InputError
from ..io.jsonfile import write_json
from ..io.volume import (  # noqa: F401 - LABEL_SUFFIXES: the label maps looked for, in order
    LABEL_SUFFIXES,
    SEG_SUFFIX,
    CTVolume,
    read_label_file,
    read_volume_file,
    split_volume_suffix,
    write_volume,
)
from ..report.tables import build_report
from ..scoring import score, slices_with_calcium

CT_FILE = "ct.nrrd"
LABELS_FILE = "labels.nrrd"
HEART_FILE = "heart.nrrd"
META_FILE = "study.json"


_CT_STEM, _LABELS_STEM = CT_FILE.split(".")[0], LABELS_FILE.split(".")[0]


@dataclass(frozen=True)
class StudyInput:
    """One study as given to the program: its name (the stem of every output file), where
    its CT is (DICOM folder or volume file), for a study folder its label map, and the path
    the user gave for it (``given``: the folder or file; the report's ``input``)."""

    name: str
    path: Path
    labels: Path | None = None
    given: Path | None = field(default=None, compare=False)

    @property
    def input(self) -> Path:
        """The path the user gave for this study (its folder for a study folder)."""
        return self.given if self.given is not None else self.path

    def outputs(self, out_dir: str | Path) -> dict[str, Path]:
        """The per-study output files of ``batch`` in ``out_dir``."""
        out_dir = Path(out_dir)
        return {
            "seg": out_dir / f"{self.name}.seg.nrrd",
            "png": out_dir / f"{self.name}.png",
            "json": out_dir / f"{self.name}.json",
        }


def volume_stem(name: str) -> str | None:
    """``name`` without its volume suffix; None for other files and for ``.seg.nrrd``."""
    split = split_volume_suffix(name)
    return split[0] if split and split[1].lower() != SEG_SUFFIX else None


def _named_volume(folder: Path, stem: str) -> Path | None:
    """``folder/<stem><volume suffix>`` if there is one (any case of the suffix)."""
    if not folder.is_dir():
        return None
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and (volume_stem(entry.name) or "").lower() == stem:
            return entry
    return None


def study_ct_file(folder: str | Path) -> Path | None:
    """The CT volume file of a study folder of the project's format, or None."""
    return _named_volume(Path(folder), _CT_STEM)


def study_input(path: str | Path) -> StudyInput:
    """The study at ``path`` (a folder or a volume file); see the module docstring."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        name = p.name or p.resolve().name
        ct = study_ct_file(p)
        if ct is not None:
            return StudyInput(name, ct, _named_volume(p, _LABELS_STEM), given=p)
        return StudyInput(name, p, given=p)
    stem = volume_stem(p.name)
    labels = _named_volume(p.resolve().parent, _LABELS_STEM) if (stem or "").lower() == _CT_STEM else None
    return StudyInput(study_name(p), p, labels, given=p)


def study_name(path: str | Path) -> str:
    """The name of the study at ``path`` (which need not exist any more for a file):
    the folder's name for a folder, for a file ``ct.*`` or a ``DICOMDIR`` the name of the
    folder holding it, else the file name without its volume suffix (or ``.dcm``)."""
    p = Path(path)
    if p.is_dir():
        return p.name or p.resolve().name
    if p.name.upper() == "DICOMDIR":  # a media index: the media's folder names the study
        return p.resolve().parent.name or p.name
    stem = volume_stem(p.name)
    if stem is None:  # e.g. a single DICOM file
        return p.name[:-4] if p.name.lower().endswith(".dcm") else p.name
    if stem.lower() == _CT_STEM:
        return p.resolve().parent.name or stem
    return stem


def list_study_inputs(root: str | Path, exclude: Iterable[str | Path | None] = ()) -> list[StudyInput]:
    """The studies of a folder, sorted by name; names must be unique.

    ``root`` is a folder of studies (its sub-folders and volume files; hidden entries, other
    files and ``.seg.nrrd`` files are ignored) or itself one study folder of the project's
    format (it holds a ``ct.*`` volume): then that study alone, as :func:`study_input` names
    it. Entries that are one of the folders ``exclude`` (e.g. an output or label folder
    inside ``root``) are left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"input folder not found: {root}")
    if study_ct_file(root) is not None:  # a study folder, not a folder of studies
        return [study_input(root)]
    skip = {Path(p).resolve() for p in exclude if p is not None and str(p).strip()}
    studies: list[StudyInput] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or (skip and entry.resolve() in skip):
            continue
        if entry.is_dir() or (entry.is_file() and volume_stem(entry.name)):
            studies.append(study_input(entry))
    names = [s.name for s in studies]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise InputError(f"several inputs share the study name {', '.join(dups)} in {root}; rename them")
    if not studies:
        raise InputError(f"no studies in {root} (expected DICOM sub-folders, study folders or NIfTI/NRRD/MHA files)")
    return studies


def find_study_labels(labels_dir: str | Path, study: StudyInput) -> Path:
    """The label map of ``study`` in ``labels_dir``, in the layouts the project writes:
    ``<dir>/<study><suffix>`` for the suffixes :data:`..filenames.LABEL_SUFFIXES` in that
    order (``.seg.nrrd``, the ``batch`` output, first), or ``<dir>/<study>/labels.*`` (a
    study folder of ``ccdino synth`` / ``ccdino coca``)."""
    labels_dir = Path(labels_dir)
    for suffix in LABEL_SUFFIXES:
        p = labels_dir / f"{study.name}{suffix}"
        if p.is_file():
            return p
    inside = _named_volume(labels_dir / study.name, _LABELS_STEM)
    if inside is not None:
        return inside
    raise InputError(
        f"no label map for study {study.name} in {labels_dir} (looked for {study.name}{{{','.join(LABEL_SUFFIXES)}}} "
        f"and {study.name}/{LABELS_FILE})"
    )


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
