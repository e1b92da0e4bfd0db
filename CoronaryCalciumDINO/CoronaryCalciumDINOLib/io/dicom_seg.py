"""DICOM Segmentation (SEG) of the per-artery calcium: written with highdicom, read back
for ``ccdino score --labels SEG.dcm``.

Written: one binary segment per artery that holds calcium (LM, LAD, LCX, RCA, in that
order; segment numbers 1..n), each coded with

* category (SCT, 49755003, "Morphologically Abnormal Structure") (CID 7150),
* type (SCT, 29483008, "Calcified atheromatous plaque") (CID 3817),
* anatomic region: the artery (:data:`ARTERY_CODES`, SNOMED CT codes of DCMR's coronary
  artery context groups, e.g. CID 3015),

and labelled with the artery's name. The SEG references the source CT series and its
instances (one frame per source slice that holds calcium) and shares its frame of
reference, patient and study. The codes are DCMR's, as pydicom and highdicom list them
(``pydicom.sr.codedict.codes``); none is made up here.

Read: the segments of a SEG (ours, or one made elsewhere) are matched to arteries by their
coded terms (anatomic region or segmented property type), else by their label (``LAD``,
``LAD calcium``, "Left anterior descending" ...); a segment that names no artery, or two
arteries, is an error naming it. The SEG's voxels must coincide with CT voxels (same
spacing, axes possibly flipped or swapped, origin on a voxel centre) and, when both carry
one, its FrameOfReferenceUID must be the CT's; it may cover part of the CT (frames without
calcium are usually left out).

highdicom (the ``dicom-out`` extra) is imported only here, when a SEG is written or read;
without it the error names what to install (:func:`..requirements.require_dicom_out`).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..constants import ARTERIES, ARTERY_COLORS, ARTERY_TO_LABEL
from ..errors import InputError
from ..requirements import require_dicom_out
from .volume import CTVolume

#: SOP class of the Segmentation Storage IOD.
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: (coding scheme, code value, code meaning) of the segments' category and type.
CATEGORY_CODE = ("SCT", "49755003", "Morphologically Abnormal Structure")
TYPE_CODE = ("SCT", "29483008", "Calcified atheromatous plaque")
#: Anatomic region of each artery's segment (SNOMED CT, as DCMR names them).
ARTERY_CODES: dict[str, tuple[str, str, str]] = {
    "LM": ("SCT", "3227004", "Left Main Coronary Artery"),
    "LAD": ("SCT", "59438005", "Left Anterior Descending Coronary Artery"),
    "LCX": ("SCT", "57396003", "Circumflex Coronary Artery"),
    "RCA": ("SCT", "13647002", "Right Coronary Artery"),
}
#: Algorithm family of a model's segments (CID 7162).
AI_FAMILY_CODE = ("DCM", "123110", "Artificial Intelligence")
#: Series number of the SEG series written (the SR series is one more).
SEG_SERIES_NUMBER = 9101
#: Words of a segment label that name an artery (upper case), besides the names themselves.
_LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "LM": ("LM", "LMCA", "LEFT MAIN"),
    "LAD": ("LAD", "LEFT ANTERIOR DESCENDING", "ANTERIOR DESCENDING"),
    "LCX": ("LCX", "LCx", "CX", "CIRCUMFLEX"),
    "RCA": ("RCA", "RIGHT CORONARY"),
}


def code(c: tuple[str, str, str]):
    """A highdicom ``CodedConcept`` of a (scheme, value, meaning) triple."""
    import highdicom as hd

    scheme, value, meaning = c
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


@contextlib.contextmanager
def one_line(what: str):
    """highdicom's refusal of a source series (a value it cannot take) as one InputError line."""
    try:
        yield
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise InputError(f"cannot build {what} of this series: {' '.join(str(exc).split())}") from None


def _highdicom():
    require_dicom_out()
    import highdicom as hd

    return hd


# --------------------------------------------------------------------------- geometry


def index_affine(spacing, origin, direction) -> np.ndarray:
    """4x4 matrix mapping an array index (k, j, i) = (slice, row, column) to LPS mm."""
    dz, dy, dx = (float(s) for s in spacing)
    d = np.asarray(direction, dtype=float)
    m = np.eye(4)
    m[:3, :3] = d[:, ::-1] @ np.diag([dz, dy, dx])
    m[:3, 3] = np.asarray(origin, dtype=float)
    return m


def ct_index_affine(ct: CTVolume) -> np.ndarray:
    return index_affine(ct.spacing, ct.origin, ct.direction)


def place_on_grid(array: np.ndarray, affine_from: np.ndarray, affine_to: np.ndarray, shape_to, what: str) -> np.ndarray:
    """``array`` (on the grid of ``affine_from``) placed on the grid ``affine_to`` /
    ``shape_to`` (both (k, j, i) index -> LPS): the grids must share their voxels (axes may be
    swapped or reversed, the array may cover part of the target), else one-line InputError."""
    m = np.linalg.solve(np.asarray(affine_to, float), np.asarray(affine_from, float))
    rot, shift = m[:3, :3], m[:3, 3]
    perm = np.argmax(np.abs(rot), axis=1)  # target axis b <- source axis perm[b]
    signs = np.sign(rot[np.arange(3), perm])
    expected = np.zeros((3, 3))
    expected[np.arange(3), perm] = signs
    if sorted(perm.tolist()) != [0, 1, 2] or not np.allclose(rot, expected, atol=2e-3):
        raise InputError(f"{what} is not on the CT's voxel grid (its voxel size or orientation differs)")
    if not np.allclose(shift, np.rint(shift), atol=2e-2):
        raise InputError(f"{what} is shifted off the CT's voxel grid (by a fraction of a voxel)")
    out_arr = np.transpose(np.asarray(array), perm)
    offset = np.rint(shift).astype(int)
    for b in range(3):
        if signs[b] < 0:
            out_arr = np.flip(out_arr, axis=b)
            offset[b] -= out_arr.shape[b] - 1
    end = offset + np.asarray(out_arr.shape)
    if np.any(offset < 0) or np.any(end > np.asarray(shape_to)):
        raise InputError(f"{what} extends beyond the CT volume")
    out = np.zeros(tuple(int(s) for s in shape_to), dtype=out_arr.dtype)
    out[offset[0]:end[0], offset[1]:end[1], offset[2]:end[2]] = out_arr
    return out


# --------------------------------------------------------------------------- the source series


def read_source_headers(files) -> list:
    """Headers (no pixel data) of the source CT files, in the given order."""
    import pydicom

    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except Exception as exc:  # noqa: BLE001 - a file gone or changed since the CT was read
            raise InputError(f"cannot read the source DICOM file {Path(f).name}: {' '.join(str(exc).split())}") from None
    return headers


#: Attributes of the source series that a SEG / SR must copy (Type 1: never empty).
SOURCE_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
#: Patient and study attributes a SEG / SR copies from the source; left empty (Type 2) where
#: the source (e.g. a de-identified series) has none.
SOURCE_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "AccessionNumber", "StudyID")


def complete_headers(headers: list, files) -> list:
    """The source headers, checked for what a SEG / SR must reference (one-line InputError
    naming the first file without it) and with empty Type 2 patient / study attributes added
    where the source has none (the files are not changed)."""
    for ds, f in zip(headers, files):
        for keyword in SOURCE_REQUIRED:
            if not str(ds.get(keyword, "") or ""):
                raise InputError(f"DICOM file {Path(f).name} has no {keyword}, which a DICOM SEG and SR must reference "
                                 "(de-identified without it?)")
        if not str(ds.get("SOPClassUID", "") or ""):
            meta = getattr(ds, "file_meta", None)
            ds.SOPClassUID = str(getattr(meta, "MediaStorageSOPClassUID", "") or "1.2.840.10008.5.1.4.1.1.2")
        for keyword in SOURCE_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return headers


def labels_on_source(labels: np.ndarray, ct: CTVolume, files) -> tuple[list, np.ndarray]:
    """The source headers sorted along the slice normal, and ``labels`` (on ``ct``'s grid)
    on their grid: (headers, array (slice, row, column) with slice k on headers[k]). For an
    enhanced (multi-frame) CT: ([its one header], array (frame, row, column) in its frames'
    order).

    The source series must be the CT's voxels exactly (same size; axes may be reversed, as a
    viewer may store them); otherwise one-line InputError."""
    from .dicom import FrameRef, _geometry, expand_frames

    files = list(dict.fromkeys(str(f) for f in files))  # the frames of an enhanced CT share their file
    headers = read_source_headers(files)
    if not headers:
        raise InputError("no source DICOM files for the DICOM results")
    complete_headers(headers, files)
    uid = str(headers[0].get("SeriesInstanceUID", "") or "source series")
    items = expand_frames([(Path(f), ds) for f, ds in zip(files, headers)])
    items, origin, direction, spacing = _geometry(items, uid)[:4]
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    shape = (len(items), rows, cols)
    labels = np.asarray(labels)
    if labels.shape != ct.shape:
        raise InputError(f"label map shape {labels.shape} does not match the CT shape {ct.shape} (z, y, x)")
    if sorted(labels.shape) != sorted(shape):
        raise InputError(f"the CT grid {ct.shape} is not the grid of its DICOM series {shape} (slices, rows, columns)")
    placed = place_on_grid(labels, ct_index_affine(ct), index_affine(spacing, origin, direction), shape,
                           "the CT volume (as against its DICOM series)")
    if int(np.count_nonzero(placed)) != int(np.count_nonzero(labels)):
        raise InputError("the CT volume does not cover its DICOM series voxel for voxel")
    if not any(isinstance(f, FrameRef) for f, _ in items):
        return [ds for _, ds in items], placed
    if len(headers) != 1:
        raise InputError(f"the CT is an enhanced (multi-frame) series stored in {len(headers)} files; a DICOM SEG "
                         "references one multi-frame source image: export the series as one file or as single frames")
    on_frames = np.zeros_like(placed)  # the SEG's frames follow the source's frame order
    for k, (f, _) in enumerate(items):
        on_frames[f.index] = placed[k]
    return headers, on_frames


# --------------------------------------------------------------------------- writing


def build_segmentation(labels_src: np.ndarray, headers: list, *, algorithm: tuple[str, str] | None,
                       software_version: str, series_description: str = "Coronary calcium per artery"):
    """A highdicom ``Segmentation`` of ``labels_src`` (0..4, on the grid of ``headers``),
    one segment per artery present; None when no artery holds calcium (a SEG needs a
    segment). ``algorithm``: (name, version) of the model that drew the labels (segments
    AUTOMATIC, algorithm family "Artificial Intelligence"), None for a given label map
    (MANUAL)."""
    hd = _highdicom()
    present = [a for a in ARTERIES if np.any(labels_src == ARTERY_TO_LABEL[a])]
    if not present:
        return None
    lut = np.zeros(len(ARTERIES) + 1, dtype=np.uint8)
    descriptions = []
    for number, artery in enumerate(present, start=1):
        lut[ARTERY_TO_LABEL[artery]] = number
        if algorithm is None:
            kind, identification = hd.seg.SegmentAlgorithmTypeValues.MANUAL, None
        else:
            kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
            identification = hd.AlgorithmIdentificationSequence(
                name=algorithm[0][:64] or "unknown", version=algorithm[1][:64] or "unknown",
                family=code(AI_FAMILY_CODE),
            )
        rgb = np.asarray(ARTERY_COLORS.get(artery, (0.5, 0.5, 0.5)), dtype=float)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=artery,
            segmented_property_category=code(CATEGORY_CODE),
            segmented_property_type=code(TYPE_CODE),
            algorithm_type=kind,
            algorithm_identification=identification,
            tracking_uid=hd.UID(),
            tracking_id=f"{artery} calcium",
            anatomic_regions=[code(ARTERY_CODES[artery])],
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in rgb)),
        ))
    pixels = lut[np.clip(labels_src, 0, len(ARTERIES)).astype(np.intp)]
    with warnings.catch_warnings(), one_line("the DICOM SEG"):
        warnings.simplefilter("ignore")  # e.g. highdicom's doubts about the source's PatientName form
        return hd.seg.Segmentation(
            source_images=headers,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="CoronaryCalciumDINO",
            manufacturer_model_name="CoronaryCalciumDINO",
            software_versions=software_version or "unknown",
            device_serial_number="none",
            series_description=series_description,
            content_label="CALCIUM",
            content_description="Coronary artery calcium per artery (research use only)",
            omit_empty_frames=True,
        )


# --------------------------------------------------------------------------- reading


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Does ``path`` start like a DICOM Part 10 file ('DICM' at byte 128)?"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _coded_values(item, keyword: str) -> list[tuple[str, str]]:
    return [(str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeValue", "")))
            for c in (item.get(keyword) or [])]


def _artery_of_segment(item) -> str | None:
    """The artery a segment description names: by its coded terms (anatomic region,
    property type or its modifier), else by its label; None when it names none; an error
    when it names two."""
    by_code = {(s, v): a for a, (s, v, _) in ARTERY_CODES.items()}
    coded = set()
    for keyword in ("AnatomicRegionSequence", "SegmentedPropertyTypeCodeSequence"):
        for pair in _coded_values(item, keyword):
            if pair in by_code:
                coded.add(by_code[pair])
    for region in item.get("AnatomicRegionSequence") or []:
        for pair in _coded_values(region, "AnatomicRegionModifierSequence"):
            if pair in by_code:
                coded.add(by_code[pair])
    label = str(item.get("SegmentLabel", "") or "")
    if len(coded) == 1:
        return coded.pop()
    words = " ".join(re.split(r"[^A-Za-z]+", label)).upper()
    padded = f" {words} "
    named = {a for a, names in _LABEL_WORDS.items() if any(f" {n.upper()} " in padded for n in names)}
    found = coded or named
    if len(found) > 1:
        raise InputError(f"segment {int(item.SegmentNumber)} ('{label}') names several arteries "
                         f"({', '.join(sorted(found, key=ARTERIES.index))})")
    return found.pop() if found else None


def read_dicom_seg_labels(path: str | os.PathLike, ct: CTVolume) -> np.ndarray:
    """Artery labels (z, y, x uint8, 0..4) of the DICOM SEG ``path`` on the grid of ``ct``."""
    path = Path(path)
    name = path.name
    hd = _highdicom()
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise InputError(f"cannot read DICOM file {name}: {' '.join(str(exc).split())}") from None
    modality = str(ds.get("Modality", "") or "")
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS and modality != "SEG":
        raise InputError(f"{name} is a DICOM {modality or 'file'} but not a segmentation (SEG); give a DICOM SEG "
                         "or a label map")
    ct_for = str(ct.meta.get("frame_of_reference_uid", "") or "")
    seg_for = str(ds.get("FrameOfReferenceUID", "") or "")
    if ct_for and seg_for and ct_for != seg_for:
        raise InputError(f"segmentation {name} belongs to another frame of reference ({seg_for}) than the CT "
                         f"({ct_for}); it was not made on this scan")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read segmentation {name}: {' '.join(str(exc).split())}") from None
    if str(seg.segmentation_type.value) == "FRACTIONAL":
        raise InputError(f"segmentation {name} is FRACTIONAL (probabilities); give a binary or label-map SEG")

    arteries: dict[int, str] = {}
    for item in ds.get("SegmentSequence") or []:
        number = int(item.SegmentNumber)
        artery = _artery_of_segment(item)
        if artery is None:
            label = str(item.get("SegmentLabel", "") or "")
            raise InputError(f"segmentation {name}: segment {number} ('{label}') names no artery; expected segments "
                             f"coded or labelled {', '.join(ARTERIES)}")
        if artery in arteries.values():
            other = next(n for n, a in arteries.items() if a == artery)
            raise InputError(f"segmentation {name}: segments {other} and {number} are both {artery}")
        arteries[number] = artery
    if not arteries:
        raise InputError(f"segmentation {name} holds no segments")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - not a regular volume, overlapping segments, ...
        text = " ".join(str(exc).split())
        if "overlap" in text.lower():
            raise InputError(f"segmentation {name}: its segments overlap; each voxel may belong to one artery") from None
        raise InputError(f"segmentation {name} is not a regular 3D volume on the CT's slices ({text})") from None
    if volume is None:
        raise InputError(f"segmentation {name} is not a regular 3D volume on the CT's slices")
    lut = np.zeros(max(arteries) + 1, dtype=np.uint8)
    for number, artery in arteries.items():
        lut[number] = ARTERY_TO_LABEL[artery]
    values = np.asarray(volume.array)
    if values.size and int(values.max()) >= lut.size:
        raise InputError(f"segmentation {name} holds pixels of segment {int(values.max())}, which it does not describe")
    return place_on_grid(lut[values], np.asarray(volume.affine), ct_index_affine(ct), ct.shape, f"segmentation {name}")
