"""Test data used by several test modules: the bundled real phantom series, DICOM header
edits, a small CT with hand-scorable calcium, and a training run killed mid-way."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom

from CoronaryCalciumDINOLib.io.volume import CTVolume

PHANTOM = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"


@lru_cache(maxsize=1)
def _phantom_files() -> tuple[Path, ...]:
    files = (p for p in PHANTOM.iterdir() if p.name not in ("README.md", "LICENSE"))
    return tuple(sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])))


def phantom_files_by_z() -> list[Path]:
    """The phantom's slice files sorted by z (the series is axial: IOP = identity)."""
    return list(_phantom_files())


def save_dicom(ds: pydicom.Dataset, path: Path, *, enforce_file_format: bool) -> None:
    """``ds.save_as`` on pydicom 3 and on pydicom 2.4 (the version Slicer 5.8 bundles, which
    names the option ``write_like_original``, its negation)."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=enforce_file_format)
    else:
        ds.save_as(path, write_like_original=not enforce_file_format)


def edit_dicom(path: Path, **changes) -> None:
    """Set (or, with None, delete) header elements of one DICOM file in place."""
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    save_dicom(ds, path, enforce_file_format=False)


def hand_scored_ct() -> tuple[CTVolume, np.ndarray]:
    """6 x 64 x 64 CT, 3 mm slices, 0.5 mm pixels, and its labels, with hand-scorable calcium.

    LAD: slices 2 and 3, a 4 x 5 voxel block of 250 HU -> per slice 5 mm^2 x weight 2 = 10;
    RCA: slice 4, a 3 x 3 block of 450 HU -> 2.25 mm^2 x weight 4 = 9. Slice factor 3/3 = 1.
    Total 29, volume 49 voxels x 0.75 mm^3 = 36.75 mm^3, 3 lesions.
    """
    ct = CTVolume(hu=np.zeros((6, 64, 64), np.float32), spacing=(3.0, 0.5, 0.5), origin=(-16.0, -16.0, 100.0))
    lab = np.zeros(ct.shape, np.uint8)
    lab[2:4, 10:14, 20:25] = 2
    lab[4, 30:33, 40:43] = 4
    ct.hu[lab == 2] = 250.0
    ct.hu[lab == 4] = 450.0
    return ct, lab


def write_small_series(
    folder: Path,
    hu: np.ndarray | None = None,
    *,
    series_uid: str | None = "auto",
    sop_class: bool = True,
    kvp: float | None = 120,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    dz: float = 3.0,
    series_number: int | None = 1,
    study_uid: str | None = "1.2.826.0.1.3680043.8.498.1",
    name: str = "IM-{n:04d}.dcm",
) -> list[Path]:
    """A small single-frame CT series built with pydicom (explicit VR little endian), one
    file per slice of ``hu`` (default: 4 slices of 16 x 16, air with a 400 HU block).

    ``series_uid=None`` leaves SeriesInstanceUID out (as de-identification often does),
    ``sop_class=False`` leaves SOPClassUID out of the data set (the file meta keeps its
    MediaStorageSOPClassUID); ``kvp``, ``series_number`` or ``study_uid`` None leave that
    tag out. Returns the files in slice order (increasing z).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    if hu is None:
        hu = np.full((4, 16, 16), -1000, np.int16)
        hu[1:3, 4:8, 6:10] = 400
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid() if series_uid == "auto" else series_uid
    files = []
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        if sop_class:
            ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
        if uid is not None:
            ds.SeriesInstanceUID = uid
        if series_number is not None:
            ds.SeriesNumber = series_number
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        if kvp is not None:
            ds.KVP = kvp
        ds.SliceThickness = dz
        ds.PixelSpacing = list(pixel_spacing)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-5.0, -6.0, 40.0 + dz * k]
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        path = folder / name.format(n=k + 1)
        save_dicom(ds, path, enforce_file_format=True)
        files.append(path)
    return files


def write_enhanced_series(
    path: Path,
    hu: np.ndarray,
    *,
    frame_order: list[int] | None = None,
    intercepts: list[float] | None = None,
    kvp: float = 100,
    kernel: str = "Br36",
    pixel_spacing: tuple[float, float] = (0.7, 0.6),
    dz: float = 3.0,
) -> Path:
    """``hu`` (slices increasing in z) as one Enhanced CT Image (multi-frame, built with
    pydicom as a scanner writes it): frame f holds slice ``frame_order[f]`` (default: the
    slices top down, as many scanners store them); its position (Plane Position) and rescale
    (Pixel Value Transformation, intercept ``intercepts[slice]``, default -1024) are per
    frame; orientation, pixel spacing and thickness (Pixel Measures), the tube voltage (CT
    X-Ray Details) and the kernel (CT Reconstruction) are shared."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    enhanced_ct = "1.2.840.10008.5.1.4.1.1.2.1"
    n = hu.shape[0]
    order = list(range(n))[::-1] if frame_order is None else list(frame_order)
    icpt = [-1024.0] * n if intercepts is None else list(intercepts)

    def item(**attrs) -> Sequence:
        d = Dataset()
        for key, value in attrs.items():
            setattr(d, key, value)
        return Sequence([d])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = enhanced_ct
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = enhanced_ct, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 5, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = int(hu.shape[1]), int(hu.shape[2]), n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    shared = Dataset()
    shared.PlaneOrientationSequence = item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    shared.PixelMeasuresSequence = item(PixelSpacing=list(pixel_spacing), SliceThickness=dz)
    shared.CTXRayDetailsSequence = item(KVP=kvp)
    shared.CTReconstructionSequence = item(ConvolutionKernel=kernel)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        group = Dataset()
        group.PlanePositionSequence = item(ImagePositionPatient=[-5.0, -6.0, 40.0 + dz * k])
        group.PixelValueTransformationSequence = item(RescaleIntercept=icpt[k], RescaleSlope=1, RescaleType="HU")
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stored = np.stack([np.asarray(hu[k], np.float64) - icpt[k] for k in order])
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_dicom(ds, path, enforce_file_format=True)
    return path


def interrupt_on_call(monkeypatch, module, name: str, call: int) -> None:
    """Make ``module.name`` raise KeyboardInterrupt on its ``call``-th call (a run killed
    mid-way, e.g. after a checkpoint); ``monkeypatch.undo()`` restores it."""
    calls = {"n": 0}
    original = getattr(module, name)

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
