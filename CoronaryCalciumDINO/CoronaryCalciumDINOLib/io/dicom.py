"""Read a CT series from a folder of DICOM files (HU with geometry).

Headers are read first (without pixel data) and grouped by ``SeriesInstanceUID``; only the
chosen series' pixel data is decoded. Files may have any name (with or without ``.dcm``)
and lie in any order, also in sub-folders; files that are not DICOM images (``DICOMDIR``,
``README``, licences, structured reports) are skipped silently.

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
first (:mod:`..limits` holds the limits and their reasoning): modality and frame count,
single-valued sizes, vector tags with their number of values, finite and plausible pixel
spacing, positions and slice spacing, rescale slope and intercept, pixel-data length
against Rows x Columns x BitsAllocated, stored values within BitsStored, and HU within any
CT scale. A file that starts like DICOM but is cut short is an error, never skipped (an
end slice would vanish unnoticed); an empty file is skipped with a warning.

Input that cannot give a valid score raises :class:`~..errors.InputError` with a one-line
message naming the file and the value; conditions under which the score is still valid
but the user should know (rescale differing between slices, no air in the volume, an
implausible KVP or SliceThickness tag, which is then ignored) are added to
``CTVolume.warnings``, which reach the report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import limits
from ..errors import Cancelled, InputError
from .volume import CTVolume

log = logging.getLogger(__name__)

#: SOP classes of CT images (CT Image Storage, Enhanced CT Image Storage).
CT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")
#: A consecutive-slice gap differing from the median gap by more than this fraction is an error.
GAP_TOLERANCE = 0.10
#: Gap variation above this fraction (but within GAP_TOLERANCE) gives a warning.
GAP_JITTER_WARN = 0.01
#: Slices may shift sideways along the stack by at most this fraction of a pixel (else: tilt).
TILT_TOLERANCE_PX = 0.5
#: Two slices closer than this (mm) along the normal are at the same position.
DUPLICATE_MM = 1e-3


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder."""

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


def _read_header(path: Path):
    """Header (no pixel data) of a DICOM file, ``None`` if the file is not DICOM.

    A file that starts like DICOM but cannot be parsed raises :class:`InputError`: it may
    be a damaged slice of the series, and silently skipping it would leave a hole.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not _looks_like_dicom(path):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - not DICOM after all
            return None
        if "SeriesInstanceUID" not in ds or "SOPClassUID" not in ds:
            return None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise InputError(f"corrupt DICOM file {path.name}: {_short(exc)}") from None
    if getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) == "1.2.840.10008.1.3.10":
        return None  # DICOMDIR
    if "SeriesInstanceUID" not in ds or "SOPClassUID" not in ds:
        # A DICOM object always names its series and SOP class: the header is cut short.
        raise InputError(f"corrupt DICOM file {path.name}: the header is incomplete (file truncated?)")
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


def _is_image(ds, path: Path | None = None) -> bool:
    """Is this header an image of a series? A CT image without Rows/Columns is damaged:
    :class:`InputError` (skipping it would silently drop a slice)."""
    if "SeriesInstanceUID" not in ds:
        return False
    if "Rows" in ds and "Columns" in ds:
        return True
    if str(ds.get("SOPClassUID", "") or "") in CT_SOP_CLASSES:
        missing = " and ".join(k for k in ("Rows", "Columns") if k not in ds)
        raise InputError(f"DICOM file {path.name if path else '?'} is a CT image without {missing}")
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


def _scan(path: Path, notes: list[str] | None = None) -> dict[str, list[tuple[Path, object]]]:
    """Headers of every DICOM image below ``path``, grouped by SeriesInstanceUID; empty
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
        if ds is None or not _is_image(ds, f):
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
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
        slices=len(items),
        slice_thickness=_float_or_none(_single(ds.get("SliceThickness"))),
        modality=str(ds.get("Modality", "") or ""),
        series_number=number,
        files=[f for f, _ in items],
    )


def list_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """The DICOM image series found in a folder (recursively), by series number then UID."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"DICOM folder not found: {path}")
    groups = _scan(path)
    infos = [_info(uid, items) for uid, items in groups.items()]
    return sorted(infos, key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.uid))


def _is_localizer(items: list[tuple[Path, object]]) -> bool:
    image_type = items[0][1].get("ImageType") or []
    return any(str(v).upper() == "LOCALIZER" for v in image_type)


def _select(path: Path, series_uid: str | None) -> tuple[str, list[tuple[Path, object]], list[str]]:
    """The chosen series' UID and headers, and notes on series left aside."""
    if path.is_file():
        ds = _read_header(path)
        if ds is None or not _is_image(ds, path):
            raise InputError(f"{path.name} is neither a DICOM image nor a NIfTI/NRRD/MHA volume")
        series_uid = series_uid or str(ds.SeriesInstanceUID)
        path = path.parent
    skipped: list[str] = []
    groups = _scan(path, skipped)
    if not groups:
        raise InputError(f"no readable DICOM image in {path}")
    if series_uid is not None:
        if series_uid not in groups:
            found = ", ".join(sorted(groups))
            raise InputError(f"series {series_uid} not found in {path} (series there: {found})")
        return series_uid, groups[series_uid], skipped
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
    return uid, groups[uid], notes


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


def _geometry(items: list[tuple[Path, object]], uid: str):
    """Sorted items, origin, direction, spacing and warnings of a single-frame CT series."""
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
    return items, origin, direction, (dz, dy, dx), warnings


def _check_modality(items: list[tuple[Path, object]], uid: str) -> None:
    """Every file of the series is a single-frame greyscale CT image (not only the first)."""
    for f, ds in items:
        modality = str(ds.get("Modality", "") or "")
        sop = str(ds.get("SOPClassUID", "") or "")
        if modality and modality != "CT":
            raise InputError(f"series {uid} has modality {modality} ({f.name}); a calcium score needs a CT series")
        if not modality and sop not in CT_SOP_CLASSES:
            raise InputError(f"series {uid} is not a CT image series ({f.name}: no Modality, SOP class {sop or '?'})")
        frames = _int_tag(ds, "NumberOfFrames", f.name, default=1)
        if frames != 1:
            raise InputError(
                f"series {uid} is a multi-frame (enhanced) DICOM object ({f.name}: NumberOfFrames {frames}); "
                "export it as single-frame slices or NIfTI/NRRD"
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
    """Uncompressed pixel data: its length must match Rows x Columns x BitsAllocated, and
    the stored values must fit in BitsStored (pydicom masks extra bits away silently)."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    if syntax not in _NATIVE_SYNTAXES or "PixelData" not in ds:
        return
    rows, cols = _int_tag(ds, "Rows", fname), _int_tag(ds, "Columns", fname)
    alloc = _int_tag(ds, "BitsAllocated", fname)
    stored = _int_tag(ds, "BitsStored", fname, default=alloc)
    if alloc not in (8, 16, 32) or not 1 <= stored <= alloc:
        raise InputError(f"DICOM file {fname} has BitsAllocated {alloc} and BitsStored {stored}")
    need = rows * cols * alloc // 8
    have = len(ds.PixelData)
    if have not in (need, need + 1):  # + 1: padding to an even length
        raise InputError(
            f"DICOM file {fname}: the pixel data holds {have} bytes but Rows x Columns x BitsAllocated "
            f"({rows} x {cols} x {alloc} bits) needs {need}; the header does not describe the image"
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


def _slice_hu(path: Path):
    """HU of one slice (float32) and its (RescaleSlope, RescaleIntercept), None if absent."""
    import warnings as _warnings

    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"corrupt DICOM file {path.name}: {_short(exc)}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(f"DICOM file {path.name} has no pixel data")
    slope, intercept = _rescale(ds, path.name)
    try:
        with _warnings.catch_warnings():
            # a length mismatch is checked below, as an error, not left to a library warning
            _warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - truncated data, missing decoder, ...
        raise InputError(f"cannot decode the pixel data of {path.name}: {_short(exc)}") from None
    if arr.ndim != 2:
        raise InputError(f"DICOM file {path.name} holds a {arr.ndim}D pixel array, expected one 2D slice")
    _check_native_pixels(ds, arr, path.name)
    s = 1.0 if slope is None else slope
    i = 0.0 if intercept is None else intercept
    hu64 = arr.astype(np.float64) * s + i
    if hu64.size and not (limits.HU_RANGE[0] <= float(hu64.min()) and float(hu64.max()) <= limits.HU_RANGE[1]):
        raise InputError(
            f"DICOM file {path.name}: values {hu64.min():g} to {hu64.max():g} HU are outside any CT scale "
            f"({limits.HU_RANGE[0]:g} to {limits.HU_RANGE[1]:g} HU); check RescaleSlope/RescaleIntercept/"
            "PixelRepresentation"
        )
    return hu64.astype(np.float32), (slope, intercept)


def read_dicom_series(path: str | os.PathLike, series_uid: str | None = None, progress=None, cancel=None) -> CTVolume:
    """Read one CT series of a DICOM folder (or the series of one given DICOM file).

    ``series_uid`` selects the series when the folder holds several; without it a folder
    with several image series is refused with a message listing them.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    uid, items, notes = _select(path, series_uid)
    _check_modality(items, uid)
    if len(items) < 2:
        raise InputError(f"series {uid} holds a single slice; a calcium score needs a volume")
    items, origin, direction, spacing, warnings = _geometry(items, uid)
    warnings = notes + warnings

    first = items[0][1]
    hu = np.empty((len(items), _int_tag(first, "Rows", items[0][0].name),
                   _int_tag(first, "Columns", items[0][0].name)), dtype=np.float32)
    rescales: list[tuple[float | None, float | None]] = []
    for k, (f, _) in enumerate(items):
        if cancel is not None and cancel():
            raise Cancelled("DICOM reading cancelled")
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
            f"acquired at {kvp:g} kVp; the classic Agatston thresholds assume 120 kVp (consider --kvp auto)"
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
        "study_uid": str(first.get("StudyInstanceUID", "") or ""),
        "n_files": len(items),
    }
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
