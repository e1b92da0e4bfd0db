"""Read a CT series from a folder of DICOM files (HU with geometry).

Headers are read first (without pixel data) and grouped by ``SeriesInstanceUID``; only the
chosen series' pixel data is decoded. Files may have any name (with or without ``.dcm``)
and lie in any order, also in sub-folders; files that are not DICOM images (``DICOMDIR``,
``README``, licences, structured reports) are skipped silently. A file is an image when it
has Rows and Columns (``SOPClassUID`` may be missing).

De-identified series often lack ``SeriesInstanceUID``. Such files are grouped by what they
have: the folder they lie in, ``StudyInstanceUID``, ``FrameOfReferenceUID``,
``SeriesNumber``, ``ImageOrientationPatient`` and ``PixelSpacing`` (rounded) and the image
size (whichever are present; with none of them, one folder is one series). The group gets
the synthetic key ``no-uid:<folder>:<hash>`` (folder relative to the folder read, ``.`` for
itself), which :func:`list_series` shows and ``series_uid`` (``--series``) accepts; the
volume's warnings say that the series was grouped this way.

An enhanced CT (Enhanced or Legacy Converted Enhanced CT Image Storage: one file, many
frames) is read frame by frame: each frame's position, orientation, pixel spacing, rescale,
tube voltage and kernel come from its per-frame functional groups, else the shared ones,
else the top-level data set (:data:`FRAME_KEYWORDS`, :func:`expand_frames`); a frame then
stands where a single-frame series has a file (:class:`FrameRef`, named "FILE frame N" in
messages), and every check below applies to it.

Slices are sorted by their position along the slice normal (``ImagePositionPatient`` ·
``row x column`` direction of ``ImageOrientationPatient``), and the geometry of the
:class:`~.volume.CTVolume` is derived from the headers:

* ``origin`` = ``ImagePositionPatient`` of the first sorted slice (LPS, mm);
* ``direction`` columns = row direction (along a row, i.e. the column index i), column
  direction (the row index j) and the slice normal (k);
* ``spacing`` = (median distance between consecutive slice positions, PixelSpacing[0]
  (distance between rows), PixelSpacing[1] (distance between columns)).
  ``SliceThickness`` is never used as the spacing.

HU = stored value x ``RescaleSlope`` + ``RescaleIntercept``, per slice, as float32.

Every value that enters the volume is checked in every file of the series, not only the
first (:mod:`..limits` holds the limits and their reasoning): modality and frame count
(several frames only with per-frame functional groups),
single-valued sizes, vector tags with their number of values, finite and plausible pixel
spacing, positions and slice spacing, rescale slope and intercept, pixel-data length
against Rows x Columns x BitsAllocated, stored values within BitsStored, and HU within any
CT scale. A file that starts like DICOM but is cut short is an error, never skipped (an
end slice would vanish unnoticed); an empty file is skipped with a warning. Only a file
that really ends inside a data element is called truncated; a missing attribute is named
("DICOM file X lacks ImagePositionPatient"), and a damaged element (an unknown value
representation, also in the file meta information) is one error naming the file and the
element, never a traceback.

Input that cannot give a valid score raises :class:`~..errors.InputError` with a one-line
message naming the file and the value; conditions under which the score is still valid
but the user should know (rescale differing between slices, no air in the volume, an
implausible KVP or SliceThickness tag, which is then ignored) are added to
``CTVolume.warnings``, which reach the report.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import limits
from ..errors import Cancelled, InputError
from .volume import CTVolume

log = logging.getLogger(__name__)

#: SOP classes of CT images (CT Image Storage, Enhanced CT Image Storage, Legacy Converted
#: Enhanced CT Image Storage).
CT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
#: SOP class of a DICOMDIR (Media Storage Directory Storage)
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: A consecutive-slice gap differing from the median gap by more than this fraction is an error.
GAP_TOLERANCE = 0.10
#: Gap variation above this fraction (but within GAP_TOLERANCE) gives a warning.
GAP_JITTER_WARN = 0.01
#: Slices may shift sideways along the stack by at most this fraction of a pixel (else: tilt).
TILT_TOLERANCE_PX = 0.5
#: Two slices closer than this (mm) along the normal are at the same position.
DUPLICATE_MM = 1e-3


@dataclass(frozen=True)
class FrameRef:
    """Frame ``index`` (0-based) of the multi-frame file ``path``: one slice of an enhanced CT.
    It stands where a single-frame series has the slice's file; ``name`` is what messages
    show (frames numbered from 1, as DICOM numbers them)."""

    path: Path
    index: int

    @property
    def name(self) -> str:
        return f"{self.path.name} frame {self.index + 1}"


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder. ``uid`` is its SeriesInstanceUID, or for files
    without one the synthetic ``no-uid:<folder>:<hash>`` key (:func:`series_key`)."""

    uid: str
    description: str
    slices: int
    slice_thickness: float | None
    modality: str
    series_number: int | None = None
    files: list[Path] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """One-line description: UID, description, slice count, thickness."""
        thk = "?" if self.slice_thickness is None else f"{self.slice_thickness:g} mm"
        desc = self.description or "no description"
        return f"{self.uid} ('{desc}', {self.modality or '?'}, {self.slices} slices, {thk})"


def _looks_like_dicom(path: Path) -> bool:
    """Cheap check: 'DICM' at byte 128, or a raw data set starting with group 0x0008/0x0002.

    A non-empty file shorter than 132 bytes that starts like a DICOM file (a zero
    preamble, then the start of 'DICM') is a truncated slice: :class:`InputError`, since
    skipping it would silently drop a slice (an end slice leaves no gap to notice).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if 0 < len(head) < 132 and not head[:128].strip(b"\x00") and b"DICM".startswith(head[128:]):
        raise InputError(f"corrupt DICOM file {path.name}: only {len(head)} bytes (file truncated?)")
    return head[:2] in (b"\x08\x00", b"\x02\x00")


def _kernel_name(value) -> str:
    """ConvolutionKernel as one string: its values joined by a backslash ('' when absent)."""
    if value is None:
        return ""
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return "\\".join(str(v).strip() for v in values if str(v).strip())


#: Attributes the reader uses; each is converted (and checked) as soon as the header is read.
_USED_KEYWORDS = (
    "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesNumber",
    "SeriesDescription", "Modality", "ImageType", "Manufacturer", "PatientID", "KVP", "SliceThickness",
    "ConvolutionKernel",
    "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "NumberOfFrames",
    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
)
#: Attributes of the Image Pixel module: a file with any of them is an image.
_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
                   "PhotometricInterpretation", "SamplesPerPixel")


class _EndWatch:
    """A binary file that notes whether a read came back shorter than asked, but not empty:
    the file ends inside a data element (its tag, length or value), i.e. it is cut short."""

    def __init__(self, fh):
        self._fh = fh
        self.name = fh.name
        self.cut = False

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        if size is not None and size > 0 and 0 < len(data) < size:
            self.cut = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _raw_item(group, tag):
    """An element as read (a RawDataElement until something converted it), never converted here."""
    try:
        return group.get_item(tag, keep_deferred=True)
    except TypeError:  # pydicom < 3: no keep_deferred
        return group._dict.get(tag)


def _cut_element(ds) -> str | None:
    """Name of a data element whose value is shorter than its declared length (the file
    ends inside it), or None. Looks at the elements as read, without converting them."""
    from pydicom.dataelem import RawDataElement

    for group in (getattr(ds, "file_meta", None), ds):
        if group is None:
            continue
        for tag in list(group.keys()):
            elem = _raw_item(group, tag)
            if (isinstance(elem, RawDataElement) and elem.value is not None and elem.length != 0xFFFFFFFF
                    and len(elem.value) < elem.length):
                return _tag_name(tag)
    return None


def _tag_name(tag) -> str:
    from pydicom.datadict import keyword_for_tag
    from pydicom.tag import Tag

    tag = Tag(tag)
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


class _ReadFailure(Exception):
    """pydicom could not read a file: its exception, and whether it came at the end of the file."""

    def __init__(self, exc: Exception, at_end: bool):
        super().__init__(str(exc))
        self.exc = exc
        self.at_end = at_end


def _dcmread(path: Path, **kwargs):
    """``pydicom.dcmread`` of a file; also whether the file ended inside a data element,
    and whether the reading went on to the end of the file (with ``stop_before_pixels``:
    the file holds no pixel data).

    pydicom stops quietly at the end of a file, also in the middle of an element; a read
    coming back short, or an element value shorter than its declared length, shows that.
    ``InvalidDicomError`` (no 'DICM' marker) passes through; any other exception comes
    back as :class:`_ReadFailure`. pydicom's warnings and log messages while parsing
    (a guessed VR encoding, an unknown VR) are silenced: a damaged file gets one error
    line from the checks that follow, not several lines of pydicom's.
    """
    import warnings

    import pydicom
    from pydicom.errors import InvalidDicomError

    pydicom_log = logging.getLogger("pydicom")
    quiet = _Silence()
    pydicom_log.addFilter(quiet)
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            size = os.fstat(fh.fileno()).st_size
            watch = _EndWatch(fh)
            try:
                ds = pydicom.dcmread(watch, **kwargs)
            except InvalidDicomError:
                raise
            except Exception as exc:  # noqa: BLE001 - a damaged or cut file makes pydicom raise many types
                raise _ReadFailure(exc, watch.cut or fh.tell() >= size) from exc
            at_end = fh.tell() >= size
    except OSError as exc:
        raise _ReadFailure(exc, False) from exc
    finally:
        pydicom_log.removeFilter(quiet)
    return ds, watch.cut or _cut_element(ds) is not None, at_end


class _Silence(logging.Filter):
    """A logging filter that drops every record."""

    def filter(self, record) -> bool:  # noqa: D102
        return False


def _unknown_vr(group, where: str = "") -> str | None:
    """Description of the first element of ``group`` (a data set or its file meta) read
    with an unknown value representation, or None. pydicom reads such an element with a
    guessed length and raises only when its value is used; what follows may be misread."""
    from pydicom.dataelem import RawDataElement
    from pydicom.valuerep import VR

    if group is None:
        return None
    known = {str(v.value) for v in VR}
    for tag in list(group.keys()):
        elem = _raw_item(group, tag)
        if isinstance(elem, RawDataElement) and elem.VR is not None and str(elem.VR) not in known:
            return f"unknown value representation {str(elem.VR)!r} in {where}{_tag_name(tag)}"
    return None


def _read_error(failure: Exception, fname: str) -> InputError:
    """The one-line error for a file pydicom could not read (:class:`_ReadFailure`)."""
    import re

    exc = getattr(failure, "exc", failure)
    m = re.search(r"Unknown Value Representation '([^']*)' in tag \((\w{4}),\s*(\w{4})\)", str(exc))
    if m:
        where = "file meta element " if m.group(2) == "0002" else ""
        name = _tag_name(int(m.group(2) + m.group(3), 16))
        return InputError(f"corrupt DICOM file {fname}: unknown value representation {m.group(1)!r} in {where}{name}")
    if getattr(failure, "at_end", False):
        return InputError(f"corrupt DICOM file {fname}: the file ends inside a data element (file truncated?)")
    return InputError(f"corrupt DICOM file {fname}: {_short(exc)}")


def _check_read(ds, cut: bool, fname: str) -> None:
    """A data set as read: a file meta element with an unknown value representation; a
    file that ends inside an element (unless an element of unknown value representation
    before it explains the false end: pydicom misreads what follows it); then the
    elements in use (:func:`_check_elements`) are errors."""
    bad = _unknown_vr(getattr(ds, "file_meta", None), "file meta element ")
    if bad is None and cut:
        bad = _unknown_vr(ds)
    if bad:
        raise InputError(f"corrupt DICOM file {fname}: {bad}")
    if cut:
        where = _cut_element(ds)
        raise InputError(
            f"corrupt DICOM file {fname}: the file ends inside {'its ' + where if where else 'a data element'} "
            "(file truncated?)"
        )
    _check_elements(ds, fname)


def _check_elements(ds, fname: str) -> None:
    """Convert every file meta element and every attribute the reader uses now, so that a
    damaged element (an unknown value representation, a value pydicom refuses) is one
    :class:`InputError` naming the file and the element, not a traceback at a later access."""
    from pydicom.datadict import tag_for_keyword

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for tag in list(meta.keys()):
            try:
                meta[tag]
            except Exception as exc:  # noqa: BLE001 - NotImplementedError, ValueError, ...
                raise InputError(
                    f"corrupt DICOM file {fname}: unreadable file meta element {_tag_name(tag)} ({_short(exc)})"
                ) from None
    for name in _USED_KEYWORDS:
        tag = tag_for_keyword(name)
        if tag is not None and tag in ds:
            try:
                ds[tag]
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"DICOM file {fname} has an unreadable {name} ({_short(exc)})") from None


def _read_header(path: Path):
    """Header (no pixel data) of a DICOM file, ``None`` if the file is not DICOM or not an image.

    A file that starts like DICOM but cannot be parsed raises :class:`InputError`: it may
    be a damaged slice of the series, and silently skipping it would leave a hole. Only a
    file that ends inside a data element is called truncated.
    """
    from pydicom.errors import InvalidDicomError

    if not _looks_like_dicom(path):
        return None
    part10 = True
    try:
        ds, cut, no_pixels = _dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # no 'DICM' marker: perhaps a raw data set (it starts with group 0x0008 or 0x0002)
        try:
            ds, cut, no_pixels = _dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - not DICOM after all
            return None
        if "SOPClassUID" not in ds and not any(k in ds for k in _PIXEL_KEYWORDS):
            return None
        part10 = False
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise _read_error(exc, path.name) from None
    _check_read(ds, cut, path.name)
    if getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) == DICOMDIR_SOP_CLASS:
        return None  # DICOMDIR
    if part10 and len(ds) == 0:
        # 'DICM' and file meta information, then nothing: the data set is missing
        raise InputError(
            f"corrupt DICOM file {path.name}: no data set after the file meta information (file truncated?)"
        )
    if not _is_image(ds, path, no_pixels):
        return None
    return ds


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _iter_files(path: Path):
    if path.is_file():
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _sop_class(ds) -> str:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID when it is missing."""
    sop = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop:
        meta = getattr(ds, "file_meta", None)
        sop = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""
    return sop


def _is_image(ds, path: Path | None = None, no_pixels: bool = False) -> bool:
    """Is this header an image of a series (Rows and Columns; SOPClassUID and
    SeriesInstanceUID may be missing)? A CT image, or a header with other Image Pixel
    attributes, without Rows/Columns is damaged: :class:`InputError` naming the missing
    attribute (skipping it would silently drop a slice). ``no_pixels``: the file ends
    before any pixel data, which the message then says too."""
    if "Rows" in ds and "Columns" in ds:
        return True
    if _sop_class(ds) in CT_SOP_CLASSES or any(k in ds for k in _PIXEL_KEYWORDS):
        missing = " and ".join(k for k in ("Rows", "Columns") if k not in ds)
        kind = "a CT image" if _sop_class(ds) in CT_SOP_CLASSES else "an image"
        end = ", and the file ends before any pixel data (file truncated?)" if no_pixels else ""
        raise InputError(f"DICOM file {path.name if path else '?'} is {kind} without {missing}{end}")
    return False


def _is_multi(value) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, (list, tuple, MultiValue))


def _int_tag(ds, name: str, fname: str, default: int | None = None) -> int:
    """A single-valued integer tag (Rows, Columns, BitsAllocated, ...); one-line error if it
    is missing (without default), multi-valued or not an integer."""
    value = ds.get(name)
    if value in (None, ""):
        if default is not None:
            return default
        raise InputError(f"DICOM file {fname} lacks {name}")
    if _is_multi(value):
        raise InputError(f"DICOM file {fname} has several values in {name} ({list(value)!r}); expected one")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"DICOM file {fname} has an unreadable {name}: {value!r}") from None


def _single(value):
    """A multi-valued tag where one value is expected counts as absent."""
    return None if _is_multi(value) else value


def _float_or_none(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


#: Prefix of the synthetic key of a series without SeriesInstanceUID.
NO_UID_PREFIX = "no-uid:"


def _rounded(value, digits: int) -> str:
    """Text of a (multi-)valued number tag rounded to ``digits`` decimals (-0 written as 0),
    or its raw text when it is not numeric: a grouping key, never an error."""
    values = list(value) if _is_multi(value) else [value]
    try:
        return "\\".join(f"{round(float(v), digits) + 0.0:.{digits}f}" for v in values)
    except (TypeError, ValueError, OverflowError):
        return str(value)


#: Attributes that group the files of a folder without SeriesInstanceUID into series.
_GROUP_FIELDS = ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesNumber", "ImageOrientationPatient",
                 "PixelSpacing", "Rows", "Columns")


def _group_fields(ds) -> dict[str, str]:
    """The grouping attributes of a header as text ("" when absent); orientation and pixel
    spacing rounded (3 and 4 decimals) so that rounding noise does not split a series."""
    out: dict[str, str] = {}
    for name in _GROUP_FIELDS:
        value = ds.get(name)
        if value is None or (not _is_multi(value) and str(value).strip() == ""):
            out[name] = ""
        elif name == "ImageOrientationPatient":
            out[name] = _rounded(value, 3)
        elif name == "PixelSpacing":
            out[name] = _rounded(value, 4)
        else:
            out[name] = str(value).strip()
    return out


def _folder_of(path: Path, root: Path) -> str:
    try:
        folder = path.parent.relative_to(root).as_posix()
    except ValueError:
        folder = path.parent.name
    return folder or "."


def series_key(ds, path: Path, root: Path) -> str:
    """Key of the series of one header: its SeriesInstanceUID, or when that is missing or
    empty ``no-uid:<folder>:<hash>``, the folder (relative to ``root``) and a hash of the
    attributes present among StudyInstanceUID, FrameOfReferenceUID, SeriesNumber,
    ImageOrientationPatient and PixelSpacing (rounded), Rows and Columns."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid
    text = "|".join(_group_fields(ds).values())
    digest = hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:10]
    return f"{NO_UID_PREFIX}{_folder_of(path, root)}:{digest}"


def _merge_incomplete(groups: dict[str, list[tuple[Path, object]]], root: Path) -> None:
    """Files without SeriesInstanceUID that lack a grouping attribute the other files of
    their folder have (a slice without ImageOrientationPatient, say) join the one group of
    that folder that agrees on every attribute they do have, so that the series check
    names the missing attribute instead of reporting an extra one-slice series."""
    info = {}
    for key, items in groups.items():
        if key.startswith(NO_UID_PREFIX):
            f, ds = items[0]
            info[key] = (_folder_of(f, root), _group_fields(ds))
    for key, (folder, fields) in sorted(info.items(), key=lambda kv: sum(v == "" for v in kv[1][1].values())):
        if key not in groups or all(fields.values()):
            continue
        present = {k: v for k, v in fields.items() if v}
        targets = [
            other for other, (o_folder, o_fields) in info.items()
            if other != key and other in groups and o_folder == folder
            and sum(bool(v) for v in o_fields.values()) > len(present)
            and all(o_fields[k] == v for k, v in present.items())
        ]
        if len(targets) == 1:
            groups[targets[0]].extend(groups.pop(key))


def _scan(path: Path, notes: list[str] | None = None) -> dict[str, list[tuple[Path, object]]]:
    """Headers of every DICOM image below ``path``, grouped by :func:`series_key`; empty
    files are skipped with a note (a slice may have been lost in transfer)."""
    groups: dict[str, list[tuple[Path, object]]] = {}
    for f in _iter_files(path):
        try:
            empty = f.stat().st_size == 0
        except OSError:
            empty = False
        if empty:
            if notes is not None:
                notes.append(f"empty file {f.name} skipped (a slice lost in transfer?)")
            continue
        ds = _read_header(f)
        if ds is None:
            continue
        groups.setdefault(series_key(ds, f, path), []).append((f, ds))
    _merge_incomplete(groups, path)
    return groups


def _info(uid: str, items: list[tuple[Path, object]]) -> SeriesInfo:
    ds = items[0][1]
    try:
        number = int(_single(ds.get("SeriesNumber")))
    except (TypeError, ValueError):
        number = None
    return SeriesInfo(
        uid=uid,
        description=str(ds.get("SeriesDescription", "") or "").strip(),
        slices=sum(_frames_or_one(d) for _, d in items),
        slice_thickness=_float_or_none(_single(_frame_value(ds, "SliceThickness"))),
        modality=str(ds.get("Modality", "") or ""),
        series_number=number,
        files=[f for f, _ in items],
    )


def list_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """The DICOM image series found in a folder (recursively), by series number then UID
    (SeriesInstanceUID, or the ``no-uid:`` key of a series without one)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"DICOM folder not found: {path}")
    groups = _scan(path)
    infos = [_info(uid, items) for uid, items in groups.items()]
    return sorted(infos, key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.uid))


def _is_dicomdir(path: Path) -> bool:
    """True for a DICOMDIR file (a media index, no image)."""
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except Exception:  # not DICOM, or no file meta: not a DICOMDIR
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS


def _is_localizer(items: list[tuple[Path, object]]) -> bool:
    image_type = items[0][1].get("ImageType") or []
    return any(str(v).upper() == "LOCALIZER" for v in image_type)


def _select(path: Path, series_uid: str | None) -> tuple[str, list[tuple[Path, object]], list[str]]:
    """The chosen series' UID and headers, and notes on series left aside."""
    given_file = None
    skipped: list[str] = []
    if path.is_file() and _is_dicomdir(path):  # a CD / DVD's index: the series on the media it indexes
        skipped.append(f"{path.name} is a DICOMDIR: the images in {path.parent} were read")
        path = path.parent
    elif path.is_file():
        ds = _read_header(path)
        if ds is None:
            raise InputError(f"{path.name} is neither a DICOM image nor a NIfTI/NRRD/MHA volume")
        given_file, given_key, path = path, series_key(ds, path, path.parent), path.parent
    groups = _scan(path, skipped)
    if not groups:
        raise InputError(f"no readable DICOM image in {path}")
    if given_file is not None and series_uid is None:
        # the series the given file was grouped into (a hidden file is not scanned: its own key)
        series_uid = next((k for k, items in groups.items() if any(f == given_file for f, _ in items)), given_key)
    if series_uid is not None:
        if series_uid not in groups:
            found = ", ".join(sorted(groups))
            raise InputError(f"series {series_uid} not found in {path} (series there: {found})")
        return series_uid, groups[series_uid], skipped + _no_uid_note(series_uid, groups[series_uid])
    notes = list(skipped)
    if len(groups) > 1:
        scouts = [u for u, items in groups.items() if _is_localizer(items)]
        if 0 < len(scouts) < len(groups):
            notes += [f"localizer series {u} ignored" for u in sorted(scouts)]
            groups = {u: items for u, items in groups.items() if u not in scouts}
    if len(groups) > 1:
        infos = sorted((_info(u, it) for u, it in groups.items()), key=lambda s: s.uid)
        listing = "; ".join(s.summary() for s in infos)
        raise InputError(
            f"{path} holds {len(groups)} series, choose one with --series UID: {listing}"
        )
    uid = next(iter(groups))
    return uid, groups[uid], notes + _no_uid_note(uid, groups[uid])


def _no_uid_note(key: str, items: list[tuple[Path, object]]) -> list[str]:
    """The warning for a series without SeriesInstanceUID (empty list for one with it)."""
    if not key.startswith(NO_UID_PREFIX):
        return []
    folder = key[len(NO_UID_PREFIX):].rsplit(":", 1)[0]
    return [
        f"the series has no SeriesInstanceUID (de-identified?): its {len(items)} files were grouped by folder "
        f"('{folder}') and by the study, frame of reference, series number, orientation, pixel spacing and image "
        f"size they give, as series {key}; check that they are one scan"
    ]


def _vec(ds, name: str, n: int, fname: str) -> np.ndarray:
    value = ds.get(name)
    if value in (None, ""):
        raise InputError(f"DICOM file {fname} lacks {name}; cannot place the slice in space")
    values = list(value) if _is_multi(value) else [value]
    if len(values) != n:
        raise InputError(f"DICOM file {fname} has {len(values)} values in {name}, expected {n}")
    try:
        out = np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"DICOM file {fname} has an unreadable {name}: {value!r}") from None
    if not np.all(np.isfinite(out)):
        raise InputError(f"DICOM file {fname} has a non-finite {name}: {tuple(out)}")
    return out


def drop_repeated_instances(items: list[tuple[Path, object]]) -> tuple[list[tuple[Path, object]], list[str]]:
    """``items`` without the files that repeat an earlier one's instance (the same
    SOPInstanceUID at the same ImagePositionPatient, or for the frames of an enhanced CT the
    same frame number: a copy of the file, e.g. a folder exported twice), and a warning
    naming them. Files without a SOPInstanceUID, or that
    share one at different positions (broken UIDs), are all kept."""
    seen: dict[tuple[str, tuple], Path] = {}
    kept, repeats = [], []
    for f, ds in items:
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if isinstance(f, FrameRef):  # frames of one instance: a copy repeats its frame numbers
            key = (sop, ("frame", str(f.index)))
        else:
            pos = ds.get("ImagePositionPatient")
            key = (sop, tuple(str(v) for v in pos) if _is_multi(pos) else (str(pos),))
        if sop and key in seen:
            repeats.append((f, seen[key]))
            continue
        seen.setdefault(key, f)
        kept.append((f, ds))
    if not repeats:
        return items, []
    f, first = repeats[0]
    more = f" and {len(repeats) - 1} more" if len(repeats) > 1 else ""
    return kept, [f"{len(repeats)} file{'s' if len(repeats) != 1 else ''} repeat{'s' if len(repeats) == 1 else ''} "
                  f"an instance already read (same SOPInstanceUID and position or frame: {f.name} = {first.name}{more}); "
                  "read once"]


def _geometry(items: list[tuple[Path, object]], uid: str):
    """Sorted items, origin, direction, spacing, warnings and (smallest, largest) gap between
    consecutive slices (mm) of a single-frame CT series."""
    warnings: list[str] = []
    first = items[0][1]
    fname0 = items[0][0].name
    rows, cols = _int_tag(first, "Rows", fname0), _int_tag(first, "Columns", fname0)
    if rows < 1 or cols < 1:
        raise InputError(f"DICOM file {fname0} has an image size of {rows}x{cols}")
    iop0 = _vec(first, "ImageOrientationPatient", 6, fname0)
    ps0 = _vec(first, "PixelSpacing", 2, fname0)
    for f, ds in items[1:]:
        r, c = _int_tag(ds, "Rows", f.name), _int_tag(ds, "Columns", f.name)
        if r != rows or c != cols:
            raise InputError(f"series {uid} mixes image sizes ({rows}x{cols} and {r}x{c} in {f.name})")
        if not np.allclose(_vec(ds, "ImageOrientationPatient", 6, f.name), iop0, atol=1e-4):
            raise InputError(f"series {uid} mixes slice orientations ({f.name} differs from {items[0][0].name})")
        if not np.allclose(_vec(ds, "PixelSpacing", 2, f.name), ps0, rtol=1e-4, atol=1e-6):
            raise InputError(f"series {uid} mixes pixel spacings ({f.name} differs from {items[0][0].name})")
    for v in ps0:
        limits.check_range(v, *limits.PIXEL_SPACING_MM, "PixelSpacing", f"series {uid} ({fname0})", "mm")
    row_dir, col_dir = iop0[:3], iop0[3:]
    if not (np.isclose(np.linalg.norm(row_dir), 1, atol=1e-3) and np.isclose(np.linalg.norm(col_dir), 1, atol=1e-3)
            and abs(row_dir @ col_dir) < 1e-3):
        raise InputError(f"series {uid} has an invalid ImageOrientationPatient {tuple(iop0)}")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)

    ipp = np.array([_vec(ds, "ImagePositionPatient", 3, f.name) for f, ds in items])
    for (f, _), p in zip(items, ipp):
        limits.check_position(p, "ImagePositionPatient", f"DICOM file {f.name}")
    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    items = [items[i] for i in order]
    ipp, pos = ipp[order], pos[order]

    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < DUPLICATE_MM)
    if dup.size:
        i = int(dup[0])
        raise InputError(
            f"series {uid} has two slices at the same position ({pos[i]:.2f} mm along the normal: "
            f"{items[i][0].name}, {items[i + 1][0].name}); it may hold several phases or acquisitions"
        )
    dz = float(np.median(gaps))
    limits.check_range(dz, *limits.SLICE_SPACING_MM, "slice spacing (from ImagePositionPatient)", f"series {uid}", "mm")
    dy, dx = float(ps0[0]), float(ps0[1])

    # Gantry tilt: slices shift sideways (perpendicular to the normal) along the stack.
    sideways = (ipp - ipp[0]) - np.outer(pos - pos[0], normal)
    shift = float(np.linalg.norm(sideways, axis=1).max())
    if shift > TILT_TOLERANCE_PX * min(dx, dy):
        along = float(pos[-1] - pos[0])
        angle = float(np.degrees(np.arctan2(shift, along)))
        raise InputError(
            f"series {uid} is acquired with gantry tilt (slices shift sideways by {shift:.1f} mm over the stack, "
            f"about {angle:.1f} degrees); resample it to an untilted grid before scoring"
        )

    dev = np.abs(gaps - dz) / dz
    worst = int(np.argmax(dev))
    if dev[worst] > GAP_TOLERANCE:
        raise InputError(
            f"series {uid} has uneven slice spacing: gap of {gaps[worst]:.2f} mm between slices "
            f"{worst} and {worst + 1} (at {pos[worst]:.2f} and {pos[worst + 1]:.2f} mm) where the median gap is "
            f"{dz:.2f} mm; a slice may be missing"
        )
    if dev[worst] > GAP_JITTER_WARN:
        warnings.append(
            f"slice spacing varies by up to {100 * dev[worst]:.1f}% around {dz:.3f} mm; the median spacing is used"
        )
    origin = tuple(float(v) for v in ipp[0])
    direction = np.column_stack([row_dir, col_dir, normal])
    gap_range = (float(gaps.min()), float(gaps.max()))  # smallest and largest gap (review flags)
    return items, origin, direction, (dz, dy, dx), warnings, gap_range


# --------------------------------------------------------------------------- enhanced (multi-frame) CT

#: Attributes an enhanced CT keeps per frame or shared in its functional groups (Plane
#: Position, Plane Orientation, Pixel Measures, Pixel Value Transformation, CT X-Ray Details,
#: CT Reconstruction, or a legacy conversion's unassigned attributes), and the reader uses.
FRAME_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                  "RescaleSlope", "RescaleIntercept", "KVP", "ConvolutionKernel")


def _is_multiframe(ds) -> bool:
    """A header of an enhanced (multi-frame) image: it has per-frame functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds


def _frames_or_one(ds) -> int:
    """NumberOfFrames of a multi-frame header (1 for a single frame or an unreadable count:
    for listing only; :func:`_check_modality` checks it)."""
    if not _is_multiframe(ds):
        return 1
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _group_value(group, keyword: str):
    """``keyword``'s value in a functional-group item (the first item of any of its
    macros), or None."""
    if group is None:
        return None
    for element in group:
        if element.VR == "SQ" and len(element.value) and keyword in element.value[0]:
            return element.value[0].get(keyword)
    return None


def _shared_group(ds):
    shared = ds.get("SharedFunctionalGroupsSequence")
    return shared[0] if shared else None


def _frame_value(ds, keyword: str, group=None):
    """``keyword`` of one frame of ``ds``: from the frame's functional groups (``group``),
    else the shared ones, else the top-level data set (a single-frame header: top level)."""
    for where in (group, _shared_group(ds) if _is_multiframe(ds) else None):
        value = _group_value(where, keyword)
        if value is not None:
            return value
    return ds.get(keyword)


def expand_frames(items: list[tuple[Path, object]]) -> list[tuple[object, object]]:
    """``items`` with each multi-frame header replaced by one (:class:`FrameRef`, header) per
    frame; a frame's header holds the file's elements, with the attributes of
    :data:`FRAME_KEYWORDS` taken from its functional groups. Single-frame items stay."""
    from pydicom.dataset import Dataset

    out: list[tuple[object, object]] = []
    for f, ds in items:
        if not _is_multiframe(ds):
            out.append((f, ds))
            continue
        n = _int_tag(ds, "NumberOfFrames", f.name)
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if len(per_frame) != n:
            raise InputError(f"DICOM file {f.name} has NumberOfFrames {n} but {len(per_frame)} items in "
                             "PerFrameFunctionalGroupsSequence; its frames cannot be placed in space")
        for i, group in enumerate(per_frame):
            frame = Dataset({element.tag: element for element in ds})  # its own dictionary, the file's elements
            if hasattr(ds, "file_meta"):
                frame.file_meta = ds.file_meta
            for keyword in FRAME_KEYWORDS:
                value = _frame_value(ds, keyword, group)
                if keyword in frame:  # the file's element: replaced, never changed in place
                    delattr(frame, keyword)
                if value is not None:
                    setattr(frame, keyword, value)
            out.append((FrameRef(f, i), frame))
    return out


def _check_modality(items: list[tuple[Path, object]], uid: str) -> None:
    """Every file of the series is a greyscale CT image (not only the first): a single frame,
    or the frames of an enhanced CT, which its per-frame functional groups place."""
    for f, ds in items:
        modality = str(ds.get("Modality", "") or "")
        sop = str(ds.get("SOPClassUID", "") or "")
        if modality and modality != "CT":
            raise InputError(f"series {uid} has modality {modality} ({f.name}); a calcium score needs a CT series")
        if not modality and sop not in CT_SOP_CLASSES:
            raise InputError(f"series {uid} is not a CT image series ({f.name}: no Modality, SOP class {sop or '?'})")
        frames = _int_tag(ds, "NumberOfFrames", f.name, default=1)
        if frames < 1:
            raise InputError(f"series {uid} has NumberOfFrames {frames} in {f.name}; an image has at least one frame")
        if frames != 1 and not _is_multiframe(ds):
            raise InputError(
                f"series {uid} has NumberOfFrames {frames} in {f.name} without per-frame functional groups "
                "(PerFrameFunctionalGroupsSequence): its frames cannot be placed in space"
            )
        if _int_tag(ds, "SamplesPerPixel", f.name, default=1) != 1:
            raise InputError(f"series {uid} holds colour images ({f.name}); a calcium score needs greyscale CT")


#: Uncompressed transfer syntaxes (implicit LE, explicit LE, deflated LE, explicit BE).
_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")


def _rescale(ds, fname: str) -> tuple[float | None, float | None]:
    """RescaleSlope and RescaleIntercept (None when absent), each finite and plausible
    (:data:`..limits.RESCALE_SLOPE`, :data:`..limits.RESCALE_INTERCEPT`)."""
    ranges = {"RescaleSlope": limits.RESCALE_SLOPE,
              "RescaleIntercept": (-limits.RESCALE_INTERCEPT, limits.RESCALE_INTERCEPT)}
    out: list[float | None] = []
    for name, (lo, hi) in ranges.items():
        value = ds.get(name)
        if value in (None, ""):
            out.append(None)
        elif _is_multi(value):
            raise InputError(f"DICOM file {fname} has several values in {name} ({list(value)!r}); expected one")
        else:
            out.append(limits.check_range(value, lo, hi, name, f"DICOM file {fname}"))
    return out[0], out[1]


def _check_native_pixels(ds, arr: np.ndarray, fname: str) -> None:
    """Uncompressed pixel data: its length must match Rows x Columns x BitsAllocated (x
    NumberOfFrames), and
    the stored values must fit in BitsStored (pydicom masks extra bits away silently)."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    if syntax not in _NATIVE_SYNTAXES or "PixelData" not in ds:
        return
    rows, cols = _int_tag(ds, "Rows", fname), _int_tag(ds, "Columns", fname)
    alloc = _int_tag(ds, "BitsAllocated", fname)
    stored = _int_tag(ds, "BitsStored", fname, default=alloc)
    if alloc not in (8, 16, 32) or not 1 <= stored <= alloc:
        raise InputError(f"DICOM file {fname} has BitsAllocated {alloc} and BitsStored {stored}")
    frames = _int_tag(ds, "NumberOfFrames", fname, default=1)
    need = rows * cols * alloc // 8 * frames
    have = len(ds.PixelData)
    if have not in (need, need + 1):  # + 1: padding to an even length
        times = f" x {frames} frames" if frames != 1 else ""
        raise InputError(
            f"DICOM file {fname}: the pixel data holds {have} bytes but Rows x Columns x BitsAllocated{times} "
            f"({rows} x {cols} x {alloc} bits{times}) needs {need}; the header does not describe the image"
        )
    if stored < alloc:
        signed = _int_tag(ds, "PixelRepresentation", fname, default=0) == 1
        order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
        raw = np.frombuffer(ds.PixelData[:need], dtype=f"{order}{'i' if signed else 'u'}{alloc // 8}")
        lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
        if raw.size and (int(raw.min()) < lo or int(raw.max()) > hi):
            raise InputError(
                f"DICOM file {fname}: stored values {int(raw.min())} to {int(raw.max())} do not fit "
                f"BitsStored {stored} ({'signed' if signed else 'unsigned'}); the header does not describe the image"
            )


def _decode(path: Path):
    """The data set of one file and its pixel array (2D, or 3D for a multi-frame file)."""
    import warnings as _warnings

    try:
        ds, cut, _ = _dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise _read_error(exc, path.name) from None
    _check_read(ds, cut, path.name)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"DICOM file {path.name} has no pixel data (PixelData)")
    try:
        with _warnings.catch_warnings():
            # a length mismatch is checked below, as an error, not left to a library warning
            _warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - truncated data, missing decoder, ...
        raise InputError(f"cannot decode the pixel data of {path.name}: {_short(exc)}") from None
    frames = _int_tag(ds, "NumberOfFrames", path.name, default=1)
    expected = 2 if frames == 1 and not _is_multiframe(ds) else 3
    if arr.ndim == 2 and expected == 3 and frames == 1:
        arr = arr[None]  # an enhanced CT of one frame
    if arr.ndim != expected or (expected == 3 and arr.shape[0] != frames):
        want = "one 2D slice" if expected == 2 else f"{frames} frames"
        raise InputError(f"DICOM file {path.name} holds a pixel array of shape {arr.shape}, expected {want}")
    _check_native_pixels(ds, arr, path.name)
    return ds, arr


def _to_hu(arr: np.ndarray, header, name: str):
    """HU of one slice (float32) with the rescale of its header, and that (RescaleSlope,
    RescaleIntercept), None where absent."""
    slope, intercept = _rescale(header, name)
    s = 1.0 if slope is None else slope
    i = 0.0 if intercept is None else intercept
    hu64 = arr.astype(np.float64) * s + i
    if hu64.size and not (limits.HU_RANGE[0] <= float(hu64.min()) and float(hu64.max()) <= limits.HU_RANGE[1]):
        raise InputError(
            f"DICOM file {name}: values {hu64.min():g} to {hu64.max():g} HU are outside any CT scale "
            f"({limits.HU_RANGE[0]:g} to {limits.HU_RANGE[1]:g} HU); check RescaleSlope/RescaleIntercept/"
            "PixelRepresentation"
        )
    return hu64.astype(np.float32), (slope, intercept)


def _slice_hu(path: Path):
    """HU of one single-frame slice (float32) and its (RescaleSlope, RescaleIntercept), None if absent."""
    ds, arr = _decode(path)
    return _to_hu(arr, ds, path.name)


def read_dicom_series(path: str | os.PathLike, series_uid: str | None = None, progress=None, cancel=None) -> CTVolume:
    """Read one CT series of a DICOM folder (or the series of one given DICOM file).

    ``series_uid`` selects the series when the folder holds several (a SeriesInstanceUID,
    or the ``no-uid:<folder>:<hash>`` key :func:`list_series` shows for a series without
    one); without it a folder with several image series is refused with a message listing
    them.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    uid, items, notes = _select(path, series_uid)
    _check_modality(items, uid)
    items, repeated = drop_repeated_instances(expand_frames(items))
    notes = notes + repeated
    if len(items) < 2:
        raise InputError(f"series {uid} holds a single slice; a calcium score needs a volume")
    items, origin, direction, spacing, warnings, gaps = _geometry(items, uid)
    warnings = notes + warnings

    first = items[0][1]
    hu = np.empty((len(items), _int_tag(first, "Rows", items[0][0].name),
                   _int_tag(first, "Columns", items[0][0].name)), dtype=np.float32)
    rescales: list[tuple[float | None, float | None]] = []
    frames_of: dict[Path, np.ndarray] = {}  # each multi-frame file decoded once
    for k, (f, header) in enumerate(items):
        if cancel is not None and cancel():
            raise Cancelled("DICOM reading cancelled")
        if isinstance(f, FrameRef):
            if f.path not in frames_of:
                frames_of[f.path] = _decode(f.path)[1]
            hu[k], rescale = _to_hu(frames_of[f.path][f.index], header, f.name)
        else:
            hu[k], rescale = _slice_hu(f)
        rescales.append(rescale)
        if progress is not None:
            progress((k + 1) / len(items), f"reading slice {k + 1}/{len(items)}")
    if any(s is None or i is None for s, i in rescales):
        warnings.append("RescaleSlope/RescaleIntercept missing in some slices; stored values were taken as HU")
    distinct = sorted({(1.0 if s is None else s, 0.0 if i is None else i) for s, i in rescales})
    if len(distinct) > 1:
        listed = ", ".join(f"{s:g}/{i:g}" for s, i in distinct[:4])
        warnings.append(
            f"RescaleSlope/RescaleIntercept differ between slices ({listed}); each slice is rescaled with its own, "
            "but check that the series is consistent"
        )
    lowest, _ = limits.check_hu(hu, f"series {uid}")
    warnings += limits.air_warning(lowest)

    kvp = _float_or_none(_single(first.get("KVP")))
    if kvp is None:
        warnings.append("no KVP tag: tube voltage unknown; the classic 120 kVp thresholds apply")
    elif not (np.isfinite(kvp) and limits.KVP_RANGE[0] <= kvp <= limits.KVP_RANGE[1]):
        warnings.append(f"KVP tag {kvp!r} is implausible and was ignored; the classic 120 kVp thresholds apply")
        kvp = None
    elif abs(kvp - 120.0) > 0.5:
        warnings.append(
            f"acquired at {kvp:g} kVp; the classic Agatston thresholds assume 120 kVp"
        )
    thickness = _float_or_none(_single(first.get("SliceThickness")))
    if thickness is not None and not (np.isfinite(thickness) and 0 < thickness <= limits.SLICE_SPACING_MM[1]):
        warnings.append(f"SliceThickness {thickness!r} is implausible and was ignored; scores use the slice spacing")
        thickness = None
    dz = spacing[0]
    if thickness is not None and abs(thickness - dz) > 0.1 * dz:
        warnings.append(
            f"SliceThickness {thickness:g} mm differs from the slice spacing {dz:.3g} mm "
            "(overlapping or gapped reconstruction); scores use the spacing"
        )
    if thickness is not None and abs(thickness - 3.0) > 0.3:
        warnings.append(f"slices are {thickness:g} mm thick; the Agatston score is defined on 3 mm slices")

    meta = {
        "series_uid": uid,
        "description": str(first.get("SeriesDescription", "") or "").strip(),
        "slice_thickness": thickness,
        "manufacturer": str(first.get("Manufacturer", "") or "").strip(),
        # the reconstruction kernel (ConvolutionKernel, values joined by "\\"; "" without)
        "kernel": _kernel_name(first.get("ConvolutionKernel")),
        "study_uid": str(first.get("StudyInstanceUID", "") or ""),
        "slice_gaps_mm": gaps,  # (smallest, largest) distance between consecutive slices
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "") or ""),
        "n_files": len({str(getattr(f, "path", f)) for f, _ in items}),
        # the file of each slice, in array order (slice k = files[k]; the frames of an enhanced
        # CT name their file): what a DICOM SEG / SR of the result references (see
        # ..report.dicom); for an enhanced CT "frames" gives each slice's frame number
        "files": [str(getattr(f, "path", f)) for f, _ in items],
    }
    if any(isinstance(f, FrameRef) for f, _ in items):
        meta["frames"] = [f.index + 1 if isinstance(f, FrameRef) else None for f, _ in items]
    patient_id = str(first.get("PatientID", "") or "").strip()
    if patient_id:
        meta["patient_id"] = patient_id
    return CTVolume(
        hu=hu,
        spacing=spacing,
        origin=origin,  # type: ignore[arg-type]
        direction=direction,
        kvp=kvp,
        source=str(path),
        warnings=warnings,
        meta=meta,
    )
