"""Write the lossless-JPEG test series: Testing/Data/jpeg-lossless-ct/ and jpeg-ls-ct/.

    python scripts/make_jpeg_lossless_fixture.py   # needs python-gdcm (an encoder; not a project dependency)

Many archives and PACS store CT as JPEG Lossless, Non-Hierarchical, First-Order Prediction
(Process 14, selection value 1; transfer syntax 1.2.840.10008.1.2.4.70), some as JPEG-LS
Lossless (1.2.840.10008.1.2.4.80). This writes a small drawn CT series in each: 4 axial
slices of 64 x 64 pixels, 12-bit unsigned stored values with RescaleIntercept -1024 (the
most common CT layout), air, soft tissue, a bone ring and a calcification. ``hu.npy`` holds
the HU the reader must give back (z, y, x; slice 0 the most inferior). The files are encoded
by GDCM, an encoder independent of the project's reader.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "Testing" / "Data"
#: folder -> GDCM transfer syntax name
SERIES = {"jpeg-lossless-ct": "JPEGLosslessProcess14_1", "jpeg-ls-ct": "JPEGLSLossless"}
SHAPE = (4, 64, 64)
SPACING = (3.0, 0.5, 0.5)  # dz, dy, dx mm


def pattern() -> np.ndarray:
    """(z, y, x) HU: air outside a body disc of soft tissue with a smooth gradient, a bone ring,
    a calcification on slices 1-2, and every slice slightly different."""
    z, y, x = np.mgrid[0: SHAPE[0], 0: SHAPE[1], 0: SHAPE[2]]
    r = np.hypot(y - 31.5, x - 31.5)
    hu = np.where(r < 28, 30 + (x - 32) + 5 * z, -1000)
    hu = np.where((r > 20) & (r < 23), 700 + 20 * z, hu)
    calc = (np.hypot(y - 25, x - 36) < 3) & (z >= 1) & (z <= 2)
    return np.where(calc, 450 + 10 * (y - 25), hu).astype(np.int16)


def main() -> int:
    try:
        import gdcm
    except ImportError:
        print("make_jpeg_lossless_fixture: python-gdcm is needed (pip install python-gdcm)", file=sys.stderr)
        return 2
    hu = pattern()
    for number, (folder, syntax) in enumerate(SERIES.items(), start=1):
        write_series(hu, DATA / folder, getattr(gdcm.TransferSyntax, syntax), number, gdcm)
    return 0


def write_series(hu: np.ndarray, out: Path, syntax, number: int, gdcm) -> None:
    """``hu`` as CT series ``number`` in ``out``, each file encoded by GDCM in transfer syntax ``syntax``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    out.mkdir(parents=True, exist_ok=True)
    study, series, frame = ("1.2.826.0.1.3680043.8.498.1", f"1.2.826.0.1.3680043.8.498.2.{number}",
                            "1.2.826.0.1.3680043.8.498.3")
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(SHAPE[0]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = f"{series}.{k + 1}"
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.PatientID, ds.PatientName = "CT", "JPEG-LOSSLESS-TEST", "Test^JpegLossless"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SeriesNumber, ds.InstanceNumber = number, SHAPE[0] - k  # instance 1 the most superior
            ds.KVP = 120
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [-16.0, -16.0, -100.0 + k * SPACING[0]]
            ds.PixelSpacing = [SPACING[1], SPACING[2]]
            ds.SliceThickness = SPACING[0]
            ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
            plain = Path(tmp) / f"{k}.dcm"
            ds.save_as(plain, enforce_file_format=True)
            reader = gdcm.ImageReader()
            reader.SetFileName(str(plain))
            if not reader.Read():
                raise SystemExit(f"GDCM could not read {plain}")
            change = gdcm.ImageChangeTransferSyntax()
            change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
            change.SetInput(reader.GetImage())
            if not change.Change():
                raise SystemExit(f"GDCM could not encode {out.name}")
            writer = gdcm.ImageWriter()
            writer.SetFileName(str(out / f"IM-{k + 1:04d}.dcm"))
            writer.SetFile(reader.GetFile())
            writer.SetImage(change.GetOutput())
            if not writer.Write():
                raise SystemExit("GDCM could not write the series")
    np.save(out / "hu.npy", hu)
    print(f"wrote {SHAPE[0]} slices and hu.npy to {out}")


if __name__ == "__main__":
    raise SystemExit(main())
