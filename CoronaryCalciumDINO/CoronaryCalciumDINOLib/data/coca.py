"""Reader of the Stanford COCA dataset (Coronary Calcium and chest CTs, Stanford AIMI).

Layout on disk::

    <root>/Gated_release_final/patient/<pid>/<series folder>/*.dcm
    <root>/Gated_release_final/calcium_xml/<pid>.xml
    <root>/deidentified_nongated/<pid>/<...>/*.dcm
    <root>/deidentified_nongated/scores.csv   (or scores.xlsx)

Gated scans come with per-lesion contours; :func:`convert_gated_patient` turns one patient
into the project's study format (:mod:`.studies`, ``"source": "coca"``). Non-gated scans
only have per-patient Agatston scores (:func:`read_nongated_scores`).

Calcium XML
-----------
An Apple property list (an OsiriX ROI export). Root key ``Images``: a list of dicts with
``ImageIndex``, ``NumberOfROIs`` and ``ROIs``; each ROI has ``Name``, ``Area``, ``Center``,
``Min``, ``Max``, ``Mean``, ``Point_mm`` (strings ``"(x, y, z)"``, patient mm) and
``Point_px`` (strings ``"(x, y)"``, x = column, y = row, in pixels).

Conversion rules
----------------
* Names map to labels case- and whitespace-insensitively: "Left Coronary Artery" -> LM,
  "Left Anterior Descending Artery" -> LAD, "Left Circumflex Artery" -> LCX, "Right
  Coronary Artery" -> RCA. Any other name is reported and its ROI skipped.
* ROIs with ``Area`` <= 0 or without points are skipped (reported in the warnings).
* Slice: the ROI's z (median of the z of its ``Point_mm``) is projected on the slice
  normal and matched to the nearest slice position, within half the slice spacing. An ROI
  whose z matches no slice is skipped. ``ImageIndex`` is cross-checked: in COCA it is the
  position of the slice's file in the series' file names sorted in *descending* (plain
  string) order. A disagreement is reported as a warning and the z match is kept.
  The in-plane position is also cross-checked: ``Point_px`` mapped through the series
  geometry must land within 2 pixels of ``Point_mm`` (a warning otherwise).
* Filling: each polygon is filled with ``skimage.draw.polygon(rows=y, cols=x)``, which
  includes pixel centres on the outline; a polygon too thin to cover any pixel centre
  gets the pixels of its rounded vertices. ROIs are combined (union), never overwritten.
  A pixel claimed by ROIs of two different arteries goes to the artery of the *smaller*
  ROI (fewer filled pixels: the more specific outline); on a tie, to the ROI listed first.
  The number of such pixels is reported.
* Finally labels are kept only where HU >= 130 (``min_hu``): the outlines are drawn
  loosely around the lesion, and the Agatston definition counts only voxels >= 130 HU at
  120 kVp, which the gated COCA scans are.

Known bad cases (from public loaders): no images 012, 197, 598; invalid DICOM 159;
mislabelled 238, 398. They are skipped with that reason unless ``include_known_bad``.
"""

from __future__ import annotations

import csv
import json
import plistlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..constants import ARTERY_TO_LABEL
from ..errors import Cancelled, InputError
from ..io import load_ct
from ..io.dicom import list_series
from .studies import Study, is_study_dir, write_study

GATED_DIR = "Gated_release_final"
NONGATED_DIR = "deidentified_nongated"

#: ROI name (lower case, single spaces) -> artery.
ROI_NAME_TO_ARTERY: dict[str, str] = {
    "left coronary artery": "LM",
    "left anterior descending artery": "LAD",
    "left circumflex artery": "LCX",
    "right coronary artery": "RCA",
}

#: Patients with known problems in the public release (patient number -> reason).
KNOWN_BAD: dict[int, str] = {
    12: "known bad case: no images",
    197: "known bad case: no images",
    598: "known bad case: no images",
    159: "known bad case: invalid DICOM",
    238: "known bad case: mislabelled",
    398: "known bad case: mislabelled",
}

#: Allowed distance (pixels) between Point_px mapped to mm and Point_mm before a warning.
PX_MM_TOLERANCE_PX = 2.0


def _norm_name(name: str) -> str:
    return " ".join(str(name).lower().split())


def artery_of(name: str) -> str | None:
    """Artery (LM, LAD, LCX, RCA) of a COCA ROI name, or None if the name is unknown."""
    return ROI_NAME_TO_ARTERY.get(_norm_name(name))


def patient_number(pid: str) -> int | None:
    """Integer of a patient id (``"012"`` -> 12, ``"12A"`` -> 12), None if it has no digits."""
    m = re.match(r"^\s*0*(\d+)", str(pid))
    return int(m.group(1)) if m else None


def known_bad_reason(pid: str) -> str | None:
    """Reason a patient is a known bad case, or None."""
    n = patient_number(pid)
    return KNOWN_BAD.get(n) if n is not None else None


# --------------------------------------------------------------------------- XML


@dataclass
class CocaROI:
    """One calcium contour of the XML."""

    image_index: int
    name: str
    area: float
    points_mm: np.ndarray  # (n, 3) x, y, z in patient mm
    points_px: np.ndarray  # (n, 2) x = column, y = row


def _parse_tuple(text, n: int) -> tuple[float, ...]:
    vals = [float(v) for v in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", str(text))]
    if len(vals) != n:
        raise ValueError(f"expected {n} numbers in {text!r}")
    return tuple(vals)


def read_calcium_xml(path: str | Path) -> tuple[list[CocaROI], list[str]]:
    """All ROIs of a COCA calcium XML (as listed, none dropped) and parse warnings."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            plist = plistlib.load(fh)
    except FileNotFoundError:
        raise InputError(f"calcium XML not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - plistlib raises several types
        raise InputError(f"cannot read calcium XML {path.name}: {exc}") from None
    if not isinstance(plist, dict) or not isinstance(plist.get("Images", []), list):
        raise InputError(f"calcium XML {path.name} has no 'Images' list")
    rois: list[CocaROI] = []
    warnings: list[str] = []
    for image in plist.get("Images", []):
        idx = int(image.get("ImageIndex", -1))
        listed = image.get("ROIs", []) or []
        n_decl = image.get("NumberOfROIs")
        if n_decl is not None and int(n_decl) != len(listed):
            warnings.append(f"image {idx}: NumberOfROIs {n_decl} but {len(listed)} ROIs listed")
        for roi in listed:
            try:
                mm = np.array([_parse_tuple(p, 3) for p in roi.get("Point_mm", []) or []], float).reshape(-1, 3)
                px = np.array([_parse_tuple(p, 2) for p in roi.get("Point_px", []) or []], float).reshape(-1, 2)
            except ValueError as exc:
                warnings.append(f"image {idx}: ROI {roi.get('Name', '?')!r} has unreadable points ({exc}); skipped")
                continue
            rois.append(CocaROI(idx, str(roi.get("Name", "")), float(roi.get("Area", 0.0) or 0.0), mm, px))
    return rois, warnings


# --------------------------------------------------------------------------- labels


@dataclass
class LabelResult:
    """Labels of one patient and what happened to each ROI."""

    labels: np.ndarray  # (z, y, x) uint8
    used: int = 0
    skipped: int = 0
    index_mismatches: int = 0
    conflict_pixels: int = 0
    warnings: list[str] = field(default_factory=list)


def _fill_polygon(px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a polygon given as (x = column, y = row) vertices."""
    from skimage.draw import polygon

    mask = np.zeros(shape, bool)
    rr, cc = polygon(px[:, 1], px[:, 0], shape)
    mask[rr, cc] = True
    if not mask.any():
        r = np.clip(np.rint(px[:, 1]).astype(int), 0, shape[0] - 1)
        c = np.clip(np.rint(px[:, 0]).astype(int), 0, shape[1] - 1)
        mask[r, c] = True
    return mask


def rois_to_labels(
    rois: list[CocaROI],
    hu: np.ndarray,
    origin,
    direction,
    spacing,
    index_to_slice: dict[int, int] | None = None,
    min_hu: float | None = 130.0,
) -> LabelResult:
    """Label volume (0..4) of COCA ROIs on a CT grid (see the module doc for the rules).

    ``origin``/``direction``/``spacing`` are those of :class:`..io.volume.CTVolume`;
    ``index_to_slice`` maps ``ImageIndex`` to the array slice it names (for the cross-check;
    None skips it). ``min_hu=None`` keeps the filled outlines without the HU >= 130 rule.
    """
    nz, ny, nx = hu.shape
    dz, dy, dx = (float(s) for s in spacing)
    direction = np.asarray(direction, float)
    origin = np.asarray(origin, float)
    normal = direction[:, 2]
    pos0 = float(origin @ normal)
    res = LabelResult(labels=np.zeros(hu.shape, np.uint8))
    # Per slice: list of (artery label, filled mask, pixel count, order).
    claims: dict[int, list[tuple[int, np.ndarray, int, int]]] = {}
    unknown: dict[str, int] = {}
    for order, roi in enumerate(rois):
        where = f"ROI {order} ({roi.name!r}, image {roi.image_index})"
        artery = artery_of(roi.name)
        if artery is None:
            unknown[roi.name] = unknown.get(roi.name, 0) + 1
            res.skipped += 1
            continue
        if not roi.area > 0:
            res.warnings.append(f"{where}: area {roi.area:g} <= 0; skipped")
            res.skipped += 1
            continue
        if len(roi.points_px) == 0 or len(roi.points_mm) == 0:
            res.warnings.append(f"{where}: no points; skipped")
            res.skipped += 1
            continue
        pos = float(np.median(roi.points_mm @ normal))
        k = int(round((pos - pos0) / dz))
        if not (0 <= k < nz) or abs(pos0 + k * dz - pos) > 0.5 * dz:
            res.warnings.append(f"{where}: z {pos:.2f} mm matches no slice; skipped")
            res.skipped += 1
            continue
        if index_to_slice is not None:
            k_idx = index_to_slice.get(roi.image_index)
            if k_idx != k:
                res.index_mismatches += 1
                res.warnings.append(
                    f"{where}: ImageIndex names slice {k_idx} but z matches slice {k}; slice {k} used"
                )
        # In-plane cross-check: Point_px through the geometry vs Point_mm.
        n = min(len(roi.points_px), len(roi.points_mm))
        ijk = np.column_stack([roi.points_px[:n], np.full(n, k)])
        lps = origin + (ijk * np.array([dx, dy, dz])) @ direction.T
        off = np.linalg.norm((lps - roi.points_mm[:n])[:, :2], axis=1).max() / min(dx, dy)
        if off > PX_MM_TOLERANCE_PX:
            res.warnings.append(f"{where}: Point_px and Point_mm disagree by {off:.1f} pixels")
        mask = _fill_polygon(roi.points_px, (ny, nx))
        claims.setdefault(k, []).append((ARTERY_TO_LABEL[artery], mask, int(mask.sum()), order))
        res.used += 1
    for name, count in sorted(unknown.items()):
        res.warnings.append(f"unknown ROI name {name!r} ({count} ROI(s)); skipped")

    for k, items in claims.items():
        union = {}
        for lab, mask, _, _ in items:
            union[lab] = union.get(lab, np.zeros((ny, nx), bool)) | mask
        out = np.zeros((ny, nx), np.uint8)
        # Paint the larger ROIs first so that smaller ones (and, on ties, earlier ones) win.
        for lab, mask, _, _ in sorted(items, key=lambda t: (-t[2], -t[3])):
            out[mask] = lab
        claimed = sum(m.astype(np.int16) for m in union.values())
        res.conflict_pixels += int((claimed > 1).sum())
        res.labels[k] = out
    if res.conflict_pixels:
        res.warnings.append(
            f"{res.conflict_pixels} pixel(s) claimed by two arteries; each went to the smaller ROI"
        )
    if min_hu is not None:
        res.labels[hu < min_hu] = 0
    return res


# --------------------------------------------------------------------------- series


def _index_to_slice(files: list[Path], origin, direction, spacing, nz: int) -> dict[int, int]:
    """``ImageIndex`` -> array slice, with ImageIndex = position of the file in the series'
    file names sorted in descending string order."""
    import pydicom

    normal = np.asarray(direction, float)[:, 2]
    pos0 = float(np.asarray(origin, float) @ normal)
    dz = float(spacing[0])
    mapping: dict[int, int] = {}
    for i, f in enumerate(sorted(files, key=lambda p: p.name, reverse=True)):
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        ipp = ds.get("ImagePositionPatient")
        if ipp is None or len(ipp) != 3:
            continue
        k = int(round((float(np.asarray([float(v) for v in ipp]) @ normal) - pos0) / dz))
        if 0 <= k < nz:
            mapping[i] = k
    return mapping


def _choose_series(patient_dir: Path, rois: list[CocaROI]):
    """The series of a patient folder the contours belong to, and a warning if there was a choice."""
    series = list_series(patient_dir)
    if not series:
        raise InputError("no DICOM images")
    if len(series) == 1:
        return series[0], None
    # Several series: the one whose slice count covers the most ImageIndex values, then the largest.
    idx = [r.image_index for r in rois]
    best = max(series, key=lambda s: (sum(0 <= i < s.slices for i in idx), s.slices))
    return best, f"{len(series)} series in the patient folder; used {best.summary()}"


# --------------------------------------------------------------------------- patients


@dataclass
class ConversionResult:
    """Outcome of one patient: ``status`` is converted, skipped, exists or failed."""

    patient: str
    status: str
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    study_id: str | None = None
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"patient": self.patient, "status": self.status, "reason": self.reason, "warnings": self.warnings}
        if self.study_id:
            out["study_id"] = self.study_id
        out.update(self.details)
        return out


def gated_patients(root: str | Path) -> list[str]:
    """Patient ids (folder names) under ``Gated_release_final/patient``, in numeric order."""
    pdir = Path(root) / GATED_DIR / "patient"
    if not pdir.is_dir():
        raise InputError(f"not a COCA folder: {pdir} not found")
    names = [p.name for p in pdir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(names, key=lambda n: (patient_number(n) is None, patient_number(n) or 0, n))


def study_id_for(pid: str) -> str:
    """Study id of a gated COCA patient: ``coca-<pid>``."""
    return f"coca-{pid}"


def convert_gated_patient(
    root: str | Path,
    pid: str,
    out_dir: str | Path,
    include_known_bad: bool = False,
    missing_xml_as_empty: bool = False,
    min_hu: float | None = 130.0,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert one gated COCA patient into a study folder ``<out_dir>/coca-<pid>``.

    Never raises for a bad patient: problems come back as ``status="skipped"`` (known bad,
    no images, no XML) or ``"failed"`` (unreadable data, or any other error, named with its
    type) with the reason. An existing study
    folder is left alone (``"exists"``) unless ``overwrite``.
    """
    root = Path(root)
    sid = study_id_for(pid)
    bad = known_bad_reason(pid)
    if bad and not include_known_bad:
        return ConversionResult(pid, "skipped", bad)
    if is_study_dir(Path(out_dir) / sid) and not overwrite:
        return ConversionResult(pid, "exists", f"study folder {sid} already exists", study_id=sid)
    pdir = root / GATED_DIR / "patient" / pid
    xml = root / GATED_DIR / "calcium_xml" / f"{pid}.xml"
    warnings: list[str] = [bad] if bad else []
    try:
        if xml.is_file():
            rois, xml_warn = read_calcium_xml(xml)
            warnings += xml_warn
        elif missing_xml_as_empty:
            rois = []
            warnings.append("no calcium XML: taken as no calcium")
        else:
            return ConversionResult(pid, "skipped", "no calcium XML", warnings)
        try:
            info, note = _choose_series(pdir, rois)
        except InputError as exc:
            return ConversionResult(pid, "skipped", str(exc), warnings)
        if note:
            warnings.append(note)
        ct = load_ct(pdir, series_uid=info.uid)
        warnings += list(ct.warnings)
        mapping = _index_to_slice(info.files, ct.origin, ct.direction, ct.spacing, ct.shape[0])
        lab = rois_to_labels(rois, ct.hu, ct.origin, ct.direction, ct.spacing, mapping, min_hu=min_hu)
        warnings += lab.warnings
        meta = {
            "source": "coca",
            "patient": pid,
            "series_uid": info.uid,
            "kvp": ct.kvp,
            "coca": {
                "rois_total": len(rois),
                "rois_used": lab.used,
                "rois_skipped": lab.skipped,
                "image_index_mismatches": lab.index_mismatches,
                "conflict_pixels": lab.conflict_pixels,
                "min_hu": min_hu,
            },
            "warnings": warnings,
        }
        folder = write_study(Study(id=sid, ct=ct, labels=lab.labels, meta=meta), out_dir)
    except Cancelled:
        raise
    except InputError as exc:
        return ConversionResult(pid, "failed", str(exc), warnings)
    except Exception as exc:  # noqa: BLE001 - one damaged patient must not stop a batch
        return ConversionResult(pid, "failed", f"{type(exc).__name__}: {exc}", warnings)
    total = json.loads((folder / "study.json").read_text(encoding="utf-8"))["scores"].get("total", {})
    return ConversionResult(
        pid,
        "converted",
        "",
        warnings,
        study_id=sid,
        details={"rois_used": lab.used, "rois_skipped": lab.skipped, "agatston": total.get("agatston")},
    )


def convert_gated(
    root: str | Path,
    out_dir: str | Path,
    include_known_bad: bool = False,
    limit: int | None = None,
    patients: list[str] | None = None,
    log_path: str | Path | None = None,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **kwargs,
) -> list[ConversionResult]:
    """Convert the gated COCA patients (all, ``patients``, or the first ``limit``).

    Each result is appended as one JSON line to ``log_path`` as soon as it is known.
    ``kwargs`` go to :func:`convert_gated_patient`.
    """
    pids = list(patients) if patients is not None else gated_patients(root)
    if limit is not None:
        pids = pids[: max(0, int(limit))]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    results: list[ConversionResult] = []
    log = open(log_path, "a", encoding="utf-8") if log_path else None
    try:
        for i, pid in enumerate(pids):
            if cancel is not None and cancel():
                raise Cancelled("COCA conversion cancelled")
            r = convert_gated_patient(root, pid, out_dir, include_known_bad=include_known_bad, **kwargs)
            results.append(r)
            if log is not None:
                log.write(json.dumps(r.to_json()) + "\n")
                log.flush()
            if progress is not None:
                progress((i + 1) / max(len(pids), 1), f"patient {pid}: {r.status}")
    finally:
        if log is not None:
            log.close()
    return results


# --------------------------------------------------------------------------- non-gated scores

#: Column name (lower case, no spaces/underscores) -> key of the per-patient score dict.
_SCORE_COLUMNS: dict[str, str] = {
    "lca": "LM", "lm": "LM", "leftmain": "LM", "leftcoronaryartery": "LM",
    "lad": "LAD", "leftanteriordescendingartery": "LAD",
    "lcx": "LCX", "cx": "LCX", "circumflex": "LCX", "leftcircumflexartery": "LCX",
    "rca": "RCA", "rightcoronaryartery": "RCA",
    "total": "total", "totalscore": "total", "agatston": "total", "totalagatston": "total",
    "agatstonscore": "total", "cac": "total", "cacscore": "total",
}
_ID_COLUMNS = ("pid", "id", "patient", "patientid", "patid", "filename", "file", "scan", "scanid", "name")


def _col_key(name) -> str:
    return re.sub(r"[\s_\-]+", "", str(name or "").strip().lower())


def _rows_from_csv(path: Path) -> list[list]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [row for row in csv.reader(fh) if any(str(c).strip() for c in row)]


def _rows_from_xlsx(path: Path) -> list[list]:
    try:
        import openpyxl
    except ImportError:
        raise InputError(
            f"reading {path.name} needs the openpyxl package (pip install openpyxl, or the package's [coca] extra), "
            "or save it as scores.csv"
        ) from None
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file makes zipfile/openpyxl raise many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot read {path.name} as an Excel workbook: {reason}") from None
    try:
        ws = wb.worksheets[0]
        return [list(r) for r in ws.iter_rows(values_only=True) if any(c not in (None, "") for c in r)]
    finally:
        wb.close()


def find_scores_file(root: str | Path) -> Path:
    """``deidentified_nongated/scores.csv`` (preferred) or ``scores.xlsx`` of a COCA root."""
    base = Path(root)
    if (base / NONGATED_DIR).is_dir():
        base = base / NONGATED_DIR
    for name in ("scores.csv", "scores.xlsx"):
        if (base / name).is_file():
            return base / name
    raise InputError(f"no scores.csv or scores.xlsx in {base}")


def read_nongated_scores(path: str | Path) -> dict[str, dict]:
    """Per-scan Agatston scores of the non-gated COCA scans.

    ``path`` is the table (CSV, or XLSX when openpyxl is installed) or a folder holding it.
    The first row is the header. The id column is one named like pid / id / patient /
    filename (else the first column); artery columns are recognised case-insensitively:
    LCA or LM -> ``LM`` (COCA's "LCA" is the left main), LAD, LCX (or CX), RCA, and total
    (or Agatston). Columns that are absent are absent from the dicts; empty cells are None.

    Returns ``{scan_id: {"patient": "<digits>", "LM": .., "LAD": .., "LCX": .., "RCA": ..,
    "total": ..}}`` where ``scan_id`` is the id as written (e.g. ``"12A"``) and ``patient``
    its leading number without zero padding (e.g. ``"12"``), which names the scan's folder.
    """
    p = Path(path)
    if p.is_dir():
        p = find_scores_file(p)
    if not p.is_file():
        raise InputError(f"scores table not found: {p}")
    rows = _rows_from_xlsx(p) if p.suffix.lower() in (".xlsx", ".xlsm") else _rows_from_csv(p)
    if len(rows) < 1:
        raise InputError(f"scores table {p.name} is empty")
    header = [_col_key(h) for h in rows[0]]
    id_col = next((i for i, h in enumerate(header) if h in _ID_COLUMNS), 0)
    cols = {i: _SCORE_COLUMNS[h] for i, h in enumerate(header) if i != id_col and h in _SCORE_COLUMNS}
    if not cols:
        raise InputError(
            f"scores table {p.name} has no recognised score column (expected LCA/LM, LAD, LCX, RCA, total); "
            f"header: {rows[0]}"
        )
    out: dict[str, dict] = {}
    for n, row in enumerate(rows[1:], start=2):
        if id_col >= len(row) or row[id_col] in (None, ""):
            continue
        raw_id = row[id_col]
        sid = str(int(raw_id)) if isinstance(raw_id, float) and raw_id.is_integer() else str(raw_id).strip()
        num = patient_number(sid)
        entry: dict = {"patient": str(num) if num is not None else sid}
        for i, key in cols.items():
            v = row[i] if i < len(row) else None
            if v is None or str(v).strip() == "":
                entry[key] = None
                continue
            try:
                entry[key] = float(v)
            except (TypeError, ValueError):
                raise InputError(f"scores table {p.name}, line {n}: {rows[0][i]} is not a number: {v!r}") from None
        out[sid] = entry
    return out


def nongated_scans(root: str | Path) -> dict[str, Path]:
    """Patient folder of each non-gated scan: ``{patient folder name: path}``."""
    base = Path(root) / NONGATED_DIR
    if not base.is_dir():
        raise InputError(f"not a COCA folder: {base} not found")
    return {p.name: p for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")}

