"""Slice tooling: windows, heart field, location, records, the slice dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib.data.slices import (
    DEFAULT_WINDOWS,
    SliceDataset,
    SliceRecord,
    balanced_sampler_weights,
    crop_and_resize,
    heart_box,
    heart_centre,
    hu_to_windows,
    index_studies,
    slice_location,
)
from CoronaryCalciumDINOLib.data.studies import Study, write_study
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io.volume import CTVolume

DATA = Path(__file__).resolve().parents[1] / "Testing" / "Data"

# ---------------------------------------------------------------- tiny hand-made studies
# 8 slices of 96 x 96 pixels at 2 mm (192 mm field), 3 mm slices. Air outside a fat body,
# two lungs, a 60 mm "heart" disc of 40 HU anterior-left of the body centre.
NZ, N, DY = 8, 96, 2.0
HEART_C = (38, 58)  # row, column
HEART_R = 15  # pixels = 30 mm


def _phantom() -> np.ndarray:
    yy, xx = np.mgrid[:N, :N]
    hu = np.full((N, N), -1000.0, np.float32)
    hu[((yy - 48) / 44.0) ** 2 + ((xx - 48) / 46.0) ** 2 < 1] = -100.0  # body (fat)
    hu[((yy - 50) / 26.0) ** 2 + ((xx - 22) / 12.0) ** 2 < 1] = -800.0  # right lung (image left)
    hu[((yy - 50) / 26.0) ** 2 + ((xx - 80) / 10.0) ** 2 < 1] = -800.0  # left lung
    hu[(yy - HEART_C[0]) ** 2 + (xx - HEART_C[1]) ** 2 < HEART_R**2] = 40.0  # heart
    return np.repeat(hu[None], NZ, axis=0)


# Calcium blobs: (slice, row, col, size, label, HU). All 400 HU -> weight 4, area >= 4 mm^2.
BLOBS = {
    "s1": [(2, 30, 50, 2, 2, 400.0), (3, 30, 50, 2, 2, 400.0), (3, 45, 64, 1, 4, 400.0)],
    "s2": [(5, 40, 60, 2, 3, 400.0)],
    "s3": [],
}
HEART_Z = (2, 6)  # heart mask slices (inclusive) for studies with a mask


def _make_study(root: Path, sid: str, with_heart: bool) -> Path:
    hu = _phantom()
    labels = np.zeros(hu.shape, np.uint8)
    for z, r, c, s, lab, v in BLOBS[sid]:
        hu[z, r : r + s, c : c + s] = v
        labels[z, r : r + s, c : c + s] = lab
    heart = None
    if with_heart:
        yy, xx = np.mgrid[:N, :N]
        disc = ((yy - HEART_C[0]) ** 2 + (xx - HEART_C[1]) ** 2 < HEART_R**2).astype(np.uint8)
        heart = np.zeros(hu.shape, np.uint8)
        heart[HEART_Z[0] : HEART_Z[1] + 1] = disc
    ct = CTVolume(hu=hu, spacing=(3.0, DY, DY))
    return write_study(Study(id=sid, ct=ct, labels=labels, heart=heart, meta={"source": "test"}), root)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    return [_make_study(root, "s1", True), _make_study(root, "s2", True), _make_study(root, "s3", False)]


# ---------------------------------------------------------------- windows


def test_windows_known_values():
    assert DEFAULT_WINDOWS == ((-160.0, 240.0), (-200.0, 800.0), (130.0, 1130.0))
    hu = np.array([[40.0, 630.0], [-2000.0, 3000.0]], np.float32)
    w = hu_to_windows(hu)
    assert w.shape == (3, 2, 2) and w.dtype == np.float32
    # 40 HU: (40 + 160) / 400, (40 + 200) / 1000, below 130 -> 0
    np.testing.assert_allclose(w[:, 0, 0], [200 / 400, 240 / 1000, 0.0], rtol=1e-6)
    # 630 HU: above 240 -> 1, 830 / 1000, (630 - 130) / 1000
    np.testing.assert_allclose(w[:, 0, 1], [1.0, 0.83, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(w[:, 1, 0], [0, 0, 0])
    np.testing.assert_array_equal(w[:, 1, 1], [1, 1, 1])


def test_windows_batched_and_torch():
    import torch

    hu = np.random.default_rng(0).uniform(-1000, 1500, (4, 5, 6)).astype(np.float32)
    w = hu_to_windows(hu)
    assert w.shape == (4, 3, 5, 6)
    np.testing.assert_allclose(w[2], hu_to_windows(hu[2]))
    wt = hu_to_windows(torch.from_numpy(hu))
    assert isinstance(wt, torch.Tensor) and wt.dtype == torch.float32 and tuple(wt.shape) == (4, 3, 5, 6)
    np.testing.assert_allclose(wt.numpy(), w, atol=1e-6)
    one = hu_to_windows(hu, windows=((0.0, 100.0),))
    assert one.shape == (4, 1, 5, 6)
    with pytest.raises(InputError):
        hu_to_windows(hu, windows=((100.0, 0.0),))


def test_module_imports_without_torch():
    code = (
        "import sys; import CoronaryCalciumDINOLib.data.slices as s; "
        "s.hu_to_windows(s.np.zeros((4, 4))); s.heart_box(s.np.zeros((4, 4)), (1, 1)); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- heart box


def _inside(box, shape):
    y0, y1, x0, x1 = box
    return 0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]


def test_heart_box_from_mask_and_from_hu():
    hu = _phantom()
    yy, xx = np.mgrid[:N, :N]
    disc = (yy - HEART_C[0]) ** 2 + (xx - HEART_C[1]) ** 2 < HEART_R**2
    mask = np.zeros(hu.shape, np.uint8)
    mask[2:7] = disc
    # 80 mm field at 2 mm pixels -> 40 x 40 px, centred on the mask's bounding box: rows
    # 24..52, columns 44..72 (|d| <= 14 px from the centre (38, 58)).
    box = heart_box(hu, (3.0, DY, DY), heart_mask=mask, size_mm=80.0)
    assert box == (18, 58, 38, 78)
    # HU only: the field must contain the whole heart disc.
    for b in (heart_box(hu, (3.0, DY, DY), size_mm=80.0), heart_box(hu[4], (DY, DY), size_mm=80.0)):
        assert _inside(b, (N, N)) and b[1] - b[0] == 40 and b[3] - b[2] == 40
        assert b[0] <= 24 and b[1] >= 53 and b[2] <= 44 and b[3] >= 73
    # Centres: the disc centre (38, 58) from the mask exactly, from HU within 2 px (4 mm).
    assert heart_centre(hu, (3.0, DY, DY), mask) == (38.0, 58.0)
    cy, cx = heart_centre(hu, (3.0, DY, DY))
    assert abs(cy - 38) <= 2 and abs(cx - 58) <= 2
    # Heart bigger than the field: it grows to the mask extent + 10 mm each side (29 + 10 px).
    big = heart_box(hu, (3.0, DY, DY), heart_mask=mask, size_mm=20.0)
    assert big[1] - big[0] == 39 and big[3] - big[2] == 39 and big[0] <= 24 and big[1] >= 53
    # Field larger than the image: the whole image.
    assert heart_box(hu, (3.0, DY, DY), size_mm=500.0) == (0, N, 0, N)
    # Nothing but air: a centred box, still inside.
    assert heart_box(np.full((N, N), -1000.0), (DY, DY), size_mm=80.0) == (28, 68, 28, 68)


def _read_phantom():
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DATA / "qrm-phantom-canon")))
    img = reader.Execute()
    sx, sy, sz = img.GetSpacing()
    return sitk.GetArrayFromImage(img).astype(np.float32), (sz, sy, sx)


def test_heart_box_phantom_contains_calcium_insert():
    hu, spacing = _read_phantom()
    # The cardiac insert is the disc centred near row 220, column 256 (radius ~95 px) seen on
    # the axial slices; everything >= 130 HU inside it (calcifications, rods) must be kept.
    yy, xx = np.mgrid[: hu.shape[1], : hu.shape[2]]
    disc = (yy - 220) ** 2 + (xx - 256) ** 2 < 90**2
    calc = (hu >= 130) & disc[None]
    assert calc.sum() > 1000
    box = heart_box(hu, spacing)
    side = int(round(160.0 / spacing[1]))
    assert _inside(box, hu.shape[1:]) and box[1] - box[0] == side and box[3] - box[2] == side
    _, ys, xs = np.nonzero(calc)
    assert box[0] <= ys.min() and box[1] > ys.max() and box[2] <= xs.min() and box[3] > xs.max()
    for z in (15, 23, 35):
        b = heart_box(hu[z], spacing[1:])
        _, ys, xs = np.nonzero(calc[z : z + 1])
        assert _inside(b, hu.shape[1:])
        assert b[0] <= ys.min() and b[1] > ys.max() and b[2] <= xs.min() and b[3] > xs.max()


@pytest.mark.parametrize("name", ["osirix-toutatix-100.dcm", "osirix-toutatix-101.dcm"])
def test_heart_box_real_slice_contains_heart(name):
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(DATA / "real-cardiac-ct-slices" / name)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    box = heart_box(hu, (dy, dx))
    assert _inside(box, hu.shape)
    # Heart outline read off the slice by eye: rows 135..355, columns 160..380, so its
    # centre is near (245, 270); allow 25 px (12 mm).
    assert box[0] <= 135 and box[1] >= 355 and box[2] <= 160 and box[3] >= 380
    cy, cx = heart_centre(hu, (dy, dx))
    assert abs(cy - 245) <= 25 and abs(cx - 270) <= 25


# ---------------------------------------------------------------- location / records


def test_slice_location():
    assert slice_location(2, (2, 6)) == -1.0
    assert slice_location(4, (2, 6)) == 0.0
    assert slice_location(5, (2, 6)) == 0.5
    assert slice_location(6, (2, 6)) == 1.0
    assert slice_location(0, (2, 6)) == -1.0 and slice_location(9, (2, 6)) == 1.0
    assert slice_location(5, (2, 6), superior_increasing=False) == -0.5
    assert slice_location(3, (3, 3)) == 0.0
    mask = np.zeros((8, 2, 2), np.uint8)
    mask[2:7, 0, 0] = 1
    assert slice_location(5, mask) == 0.5
    with pytest.raises(InputError):
        slice_location(1, np.zeros((3, 2, 2)))


def test_index_studies(studies):
    recs = index_studies(studies)
    assert len(recs) == 3 * NZ
    by = {(r.study_id, r.z): r for r in recs}
    pos = {k for k, r in by.items() if r.has_calcium}
    assert pos == {("s1", 2), ("s1", 3), ("s2", 5)}
    # heart mask z 2..6 -> z 4 is the middle; s3 has no mask -> whole range 0..7
    assert by[("s1", 4)].location == 0.0 and by[("s1", 0)].location == -1.0 and by[("s1", 7)].location == 1.0
    assert by[("s3", 0)].location == -1.0 and by[("s3", 7)].location == 1.0
    assert by[("s3", 1)].location == pytest.approx(2 * 1 / 7 - 1)
    assert index_studies(studies[0].parent) == recs  # a root folder of studies


def test_balanced_weights():
    recs = [SliceRecord("a", "a", z, z < 2, 0.0) for z in range(10)]
    w = balanced_sampler_weights(recs, 0.4)
    assert w.sum() == pytest.approx(1.0)
    assert w[:2].sum() == pytest.approx(0.4) and w[2:].sum() == pytest.approx(0.6)
    assert np.allclose(balanced_sampler_weights(recs[2:]), 1 / 8)
    with pytest.raises(InputError):
        balanced_sampler_weights(recs, 1.0)


# ---------------------------------------------------------------- crop / resize


def test_crop_and_resize_labels_keep_lesions():
    lab = np.zeros((40, 40), np.uint8)
    lab[5, 7] = 2  # single pixels: nearest sampling at 1/4 scale would miss most of them
    lab[13, 22] = 4
    lab[30:33, 30:33] = 3
    lab[38, 1] = 1
    out = crop_and_resize(lab, None, 10, "labels")
    assert out.shape == (10, 10) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 1, 2, 3, 4}
    assert out[1, 1] == 2 and out[3, 5] == 4 and out[7, 7] == 3 and out[9, 0] == 1
    # upsampling by 2: each input pixel becomes a 2 x 2 block
    up = crop_and_resize(lab[:8, :8], None, 16, "labels")
    assert np.array_equal(up, np.kron(lab[:8, :8], np.ones((2, 2), np.uint8)))
    # bilinear image resize of a linear ramp stays linear inside
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))
    r = crop_and_resize(ramp, (0, 8, 0, 8), 16, "image")
    np.testing.assert_allclose(r[0, 1:-1], np.arange(1, 15) * 0.5 - 0.25, atol=1e-5)
    with pytest.raises(InputError):
        crop_and_resize(ramp, (0, 9, 0, 8), 4)


# ---------------------------------------------------------------- dataset


def test_dataset_items(studies):
    import torch

    recs = index_studies(studies)
    ds = SliceDataset(recs, crop="heart", out_size=None, box_mm=80.0)
    i = next(k for k, r in enumerate(recs) if (r.study_id, r.z) == ("s1", 3))
    it = ds[i]
    # heart mask bbox rows 24..52, cols 44..72 -> 40 x 40 px box (18, 58, 38, 78)
    assert it["box"].tolist() == [18, 58, 38, 78]
    assert tuple(it["image"].shape) == (3, 40, 40) and it["image"].dtype == torch.float32
    assert tuple(it["hu"].shape) == (40, 40) and it["labels"].dtype == torch.int64
    # lesions kept in the crop: 2x2 LAD at (30, 50) and 1 px RCA at (45, 64)
    assert int((it["labels"] == 2).sum()) == 4 and int((it["labels"] == 4).sum()) == 1
    assert int(it["labels"][30 - 18, 50 - 38]) == 2 and float(it["hu"][45 - 18, 64 - 38]) == 400.0
    assert float(it["image"][0, 0, 0]) == pytest.approx(hu_to_windows(np.array([[float(it["hu"][0, 0])]]))[0, 0, 0])
    assert float(it["has_calcium"]) == 1.0 and it["study_id"] == "s1" and int(it["z"]) == 3
    assert it["spacing"].tolist() == [2.0, 2.0]
    assert int(it["heart"].sum()) == int(np.sum((np.mgrid[:N, :N][0] - 38) ** 2 + (np.mgrid[:N, :N][1] - 58) ** 2 < 225))

    small = SliceDataset(recs, crop="heart", out_size=16, box_mm=80.0, neighbors=1)
    it = small[i]
    assert tuple(it["image"].shape) == (3, 16, 16) and tuple(it["labels"].shape) == (16, 16)
    assert set(torch.unique(it["labels"]).tolist()) == {0, 2, 4}  # the 1-px RCA lesion survives
    assert it["spacing"].tolist() == pytest.approx([2.0 * 40 / 16] * 2)
    # neighbours: windows of z-1 and z+1 of the same crop, in that order
    assert tuple(it["neighbors"].shape) == (6, 16, 16)
    assert torch.equal(it["neighbors"][:3], small[i - 1]["image"])
    assert torch.equal(it["neighbors"][3:], small[i + 1]["image"])
    first = small[recs.index(next(r for r in recs if r.study_id == "s2" and r.z == 0))]
    assert torch.equal(first["neighbors"][:3], first["image"])  # clamped at the volume start


def test_dataset_whole_slice_cache_and_loader(studies):
    import torch

    recs = index_studies(studies)
    ds = SliceDataset(recs, crop=None, out_size=48, cache_studies=1, transform=lambda d: {**d, "tag": 1})
    it = ds[recs.index(SliceRecord("s2", str(studies[1]), 5, True, 0.5))]
    assert it["box"].tolist() == [0, N, 0, N] and it["tag"] == 1
    assert 3 in torch.unique(it["labels"]).tolist()
    ds[0]
    ds[len(recs) - 1]
    assert len(ds._cache) == 1
    # the localiser is used for the study without a heart mask, and for all with "heart_hu"
    s3 = SliceDataset([r for r in recs if r.study_id == "s3"], crop="heart", box_mm=80.0)
    b = s3[0]["box"].tolist()
    assert b[0] <= 24 and b[1] >= 53 and b[2] <= 44 and b[3] >= 73
    s2 = SliceDataset([r for r in recs if r.study_id == "s2"], crop="heart_hu", box_mm=80.0)
    assert s2[0]["box"].tolist() == b  # same anatomy as s3 away from the lesion, mask ignored
    with pytest.raises(InputError):
        SliceDataset(recs, crop="body")
    loader = torch.utils.data.DataLoader(SliceDataset(recs, out_size=32, box_mm=80.0), batch_size=4)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (4, 3, 32, 32) and tuple(batch["box"].shape) == (4, 4)
    assert len(batch["study_id"]) == 4
