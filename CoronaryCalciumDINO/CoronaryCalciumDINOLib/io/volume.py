"""The in-memory CT volume and label-volume file I/O (NIfTI, NRRD, MHA).

Array order is (z, y, x) = (slice, row, column) everywhere. Geometry follows ITK / DICOM
(LPS): ``origin`` is the physical position (x, y, z) of voxel [0, 0, 0]; ``direction`` is
the 3x3 matrix whose columns are the physical directions of the column (i), row (j) and
slice (k) axes; ``spacing`` is (dz, dy, dx) in mm, dz being the distance between slice
centres.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import limits
from ..errors import InputError
from ..filenames import (  # noqa: F401
    LABEL_SUFFIXES,
    SEG_SUFFIX,
    SINGLE_FILE_SUFFIXES,
    VOLUME_SUFFIXES,
    split_volume_suffix,
)
from .atomic import atomic_path



@dataclass
class CTVolume:
    """A CT volume in HU with its geometry."""

    hu: np.ndarray  # (z, y, x) float32 HU
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (x, y, z) LPS mm
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns: i, j, k axes
    kvp: float | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # e.g. series UID, description, thickness

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def same_grid(self, other: "CTVolume", tol: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) voxel indices (column, row, slice) to LPS mm."""
        dz, dy, dx = self.spacing
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction, dtype=float) @ np.diag([dx, dy, dz])
        m[:3, 3] = self.origin
        return m


def is_volume_file(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def _to_sitk(array: np.ndarray, ref: CTVolume):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    dz, dy, dx = ref.spacing
    img.SetSpacing((float(dx), float(dy), float(dz)))
    img.SetOrigin(tuple(float(v) for v in ref.origin))
    img.SetDirection(tuple(float(v) for v in np.asarray(ref.direction, dtype=float).ravel()))
    return img


def _from_sitk(img) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    import SimpleITK as sitk

    if img.GetDimension() != 3:
        raise InputError(f"expected a 3D volume, got {img.GetDimension()}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("expected a scalar volume, got a multi-component image")
    arr = sitk.GetArrayFromImage(img)
    sx, sy, sz = img.GetSpacing()
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    return arr, (float(sz), float(sy), float(sx)), tuple(float(v) for v in img.GetOrigin()), direction  # type: ignore[return-value]


def _nifti_layout(head: bytes):
    """(data start, data end, numpy dtype of a float datatype or None) of a NIfTI-1/-2
    header, or None when ``head`` is no NIfTI header."""
    import struct

    for order in ("<", ">"):
        if len(head) >= 348 and struct.unpack(f"{order}i", head[:4])[0] == 348:
            datatype, bitpix = struct.unpack(f"{order}2h", head[70:74])
            dims = struct.unpack(f"{order}8h", head[40:56])
            offset = int(struct.unpack(f"{order}f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(f"{order}i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(f"{order}2h", head[12:16])
            dims = struct.unpack(f"{order}8q", head[16:80])
            offset = struct.unpack(f"{order}q", head[168:176])[0]
            break
    else:
        return None
    n = 1
    for d in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
        n *= max(int(d), 1)
    floats = {16: f"{order}f4", 64: f"{order}f8"}.get(int(datatype))
    return offset, offset + n * max(int(bitpix), 8) // 8, floats


def _check_nifti_complete(path: Path) -> None:
    """A NIfTI file must hold all its voxel data, and float voxels must be finite:
    SimpleITK reads a truncated ``.nii`` / ``.nii.gz`` without complaint (the missing part
    comes back as zeros) and turns NaN voxels into 0."""
    import gzip
    import zlib

    name = path.name.lower()
    if name.endswith(".nii"):
        opener = open
    elif name.endswith(".nii.gz"):
        opener = gzip.open
    else:
        return
    size, head, layout, carry, bad = 0, b"", None, b"", 0
    try:
        with opener(path, "rb") as fh:
            while block := fh.read(1 << 22):
                pos = size
                size += len(block)
                if layout is None:
                    head += block[: 540 - len(head)] if len(head) < 540 else b""
                    if len(head) < 540 and size < 540:
                        continue
                    layout = _nifti_layout(head) or (0, 0, None)
                start, end, floats = layout
                if floats is None:
                    continue
                lo, hi = max(start - pos, 0), max(min(end - pos, len(block)), 0)
                if lo < hi:
                    data = carry + block[lo:hi]
                    item = np.dtype(floats).itemsize
                    cut = len(data) - len(data) % item
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:cut], dtype=floats))))
                    carry = data[cut:]
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read {path.name}: the data is incomplete or damaged ({exc})") from None
    layout = layout or _nifti_layout(head)
    if layout is None:
        return
    if size < layout[1]:
        raise InputError(
            f"{path.name} is truncated: its header needs {layout[1]} bytes of header and voxel data, the file holds {size}"
        )
    if bad:
        raise InputError(f"{path.name}: {bad} voxels are not finite numbers (NaN or infinite)")


def check_volume_values(ct: CTVolume, where: str) -> None:
    """Plausibility of a CT's geometry and HU (:mod:`..limits`): one-line InputError for an
    impossible value."""
    limits.check_spacing(ct.spacing, where)
    limits.check_position(ct.origin, "origin", where)
    d = np.asarray(ct.direction, dtype=float)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)) or abs(abs(np.linalg.det(d)) - 1.0) > 1e-3:
        raise InputError(f"{where}: the direction matrix is not a rotation ({d.ravel().tolist()})")
    limits.check_hu(ct.hu, where)


#: Bytes per voxel of the MetaImage element types.
_MET_ITEMSIZE = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _check_metaimage_complete(path: Path) -> None:
    """A single-file MetaImage (``.mha``, ``ElementDataFile = LOCAL``) must hold all its
    voxel data: the SimpleITK that Slicer 5.8 bundles (2.3) reads a truncated compressed
    ``.mha`` without an error (it logs "Uncompress failed" and returns whatever it had)."""
    import zlib

    if not path.name.lower().endswith(".mha"):
        return
    fields: dict[str, str] = {}
    try:
        with open(path, "rb") as fh:
            while True:
                line = fh.readline(4096)
                if not line or not line.endswith(b"\n"):
                    return  # not a MetaImage header as written here: SimpleITK decides
                key, sep, value = line.decode("latin-1").partition("=")
                if not sep:
                    return
                fields[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    break
            if fields["ElementDataFile"].upper() != "LOCAL":
                return
            try:
                n = int(np.prod([int(d) for d in fields["DimSize"].split()], dtype=np.int64))
                n *= int(fields.get("ElementNumberOfChannels", "1")) * _MET_ITEMSIZE[fields["ElementType"]]
            except (KeyError, ValueError):
                return
            size = 0
            if fields.get("CompressedData", "False").lower() == "true":
                unzip = zlib.decompressobj()
                while not unzip.eof and (block := fh.read(1 << 22)):
                    while not unzip.eof:  # at most 64 MB of voxels in memory at once
                        out = len(unzip.decompress(block, 1 << 26))
                        size += out
                        block = unzip.unconsumed_tail
                        if not block and out < 1 << 26:
                            break
                complete = unzip.eof
            else:
                while block := fh.read(1 << 22):
                    size += len(block)
                complete = True
    except (OSError, zlib.error) as exc:
        raise InputError(f"cannot read {path.name}: the data is incomplete or damaged ({exc})") from None
    if not complete:
        raise InputError(f"{path.name} is truncated: its compressed voxel data ends early")
    if size < n:
        raise InputError(f"{path.name} is truncated: its header needs {n} bytes of voxel data, the file holds {size}")


def read_volume_file(path: str | os.PathLike) -> CTVolume:
    """Read a NIfTI / NRRD / MHA CT volume (values taken as HU), completely or not at all;
    implausible geometry or values are refused (:func:`check_volume_values`)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"CT file not found: {path}")
    _check_nifti_complete(path)
    _check_metaimage_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read {path.name}: {str(exc).strip().splitlines()[-1]}") from None
    arr, spacing, origin, direction = _from_sitk(img)
    if arr.shape[0] < 2:
        raise InputError(f"{path.name} holds a single slice; a calcium score needs a volume")
    ct = CTVolume(
        hu=arr.astype(np.float32, copy=False),
        spacing=spacing,
        origin=origin,
        direction=direction,
        source=str(path),
    )
    check_volume_values(ct, path.name)
    return ct


def read_label_file(path: str | os.PathLike, ct: CTVolume | None = None) -> np.ndarray:
    """Read a label volume (0..4); if ``ct`` is given, require the same grid."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"label file not found: {path}")
    if path.is_dir():
        raise InputError(f"label map must be a volume file, got a folder: {path}")
    _check_nifti_complete(path)
    _check_metaimage_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read label map {path.name}: {str(exc).strip().splitlines()[-1]}") from None
    arr, spacing, origin, direction = _from_sitk(img)
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.isfinite(arr)):
        raise InputError(f"label map {path.name} holds non-finite values (NaN or infinite)")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < limits.LABEL_VALUES[0] or hi > limits.LABEL_VALUES[1]:
            raise InputError(
                f"label map {path.name} holds values outside {limits.LABEL_VALUES[0]}..{limits.LABEL_VALUES[1]} "
                f"(found {lo:g}..{hi:g}); expected 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA"
            )
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise InputError(f"label map {path.name} holds non-integer values")
    arr = arr.astype(np.int16)
    if ct is not None:
        lab = CTVolume(hu=arr, spacing=spacing, origin=origin, direction=direction)
        if lab.shape != ct.shape:
            raise InputError(f"label map shape {lab.shape} does not match the CT shape {ct.shape} (z, y, x)")
        if not lab.same_grid(ct, tol=1e-2):
            raise InputError(
                "label map geometry (spacing/origin/direction) does not match the CT; "
                "it must be on the same voxel grid"
            )
    return arr


def write_volume(array: np.ndarray, ref: CTVolume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``array`` (z, y, x) with ``ref``'s geometry; the format follows the suffix.

    The file is written to a temporary name in the same folder and renamed, so a reader
    never sees a half-written file; hence only single-file formats
    (:data:`..filenames.SINGLE_FILE_SUFFIXES`).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.name.lower().endswith(SINGLE_FILE_SUFFIXES):
        raise InputError(f"cannot write {path.name}: write volumes as {', '.join(SINGLE_FILE_SUFFIXES)} "
                         "(header and data in one file)")
    if tuple(array.shape) != ref.shape:
        raise InputError(f"array shape {array.shape} does not match the reference grid {ref.shape}")
    with atomic_path(path, keep_suffix=True) as tmp:  # SimpleITK picks the format by the suffix
        sitk.WriteImage(_to_sitk(array, ref), str(tmp), compress)
    return path
