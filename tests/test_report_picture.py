"""Report picture: key-slice choice, PNG output, artery overlays and orientation."""

from __future__ import annotations

import numpy as np
import pytest

from CoronaryCalciumDINOLib.constants import ARTERY_COLORS
from CoronaryCalciumDINOLib.io.volume import CTVolume
from CoronaryCalciumDINOLib.report import build_report
from CoronaryCalciumDINOLib.report.picture import key_slices, write_report_png
from CoronaryCalciumDINOLib.scoring import score


def _ct(direction=None) -> CTVolume:
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 15, size=(10, 128, 128)).astype(np.float32)
    return CTVolume(hu=hu, spacing=(3.0, 0.8, 0.8), direction=np.eye(3) if direction is None else direction)


def _colour_pixels(png, colour, tol=0.02) -> np.ndarray:
    import matplotlib.image as mpimg

    rgb = mpimg.imread(str(png))[..., :3]
    return np.all(np.abs(rgb - np.asarray(colour)) < tol, axis=-1)


def test_key_slices_by_area_or_evenly_spaced():
    lab = np.zeros((20, 8, 8), np.uint8)
    lab[3, :2, :2] = 1  # area 4
    lab[7, :3, :3] = 2  # area 9
    lab[12, :1, :1] = 3  # area 1
    lab[15, :2, :3] = 4  # area 6
    assert key_slices(lab, max_slices=2) == ([7, 15], True)
    assert key_slices(lab, max_slices=6) == ([3, 7, 12, 15], True)
    # no calcium: evenly spaced over the central 60% of 20 slices (indices 3.8 .. 15.2)
    picks, calcified = key_slices(np.zeros((20, 8, 8), np.uint8), max_slices=4)
    assert not calcified and picks == [4, 8, 11, 15]


def _report(ct, lab):
    return build_report(score(ct.hu, lab, ct.spacing), "study-x", kvp=120)


def _block_picture(tmp_path, name, rows, cols, artery_label=2, direction=None, flip_cols=False):
    ct = _ct(direction)
    lab = np.zeros(ct.shape, np.uint8)
    lab[4, rows[0]:rows[1], cols[0]:cols[1]] = artery_label
    ct.hu[lab > 0] = 400.0
    if flip_cols:  # same anatomy stored with the column axis reversed
        ct.hu, lab = ct.hu[:, :, ::-1].copy(), lab[:, :, ::-1].copy()
    return write_report_png(ct, lab, _report(ct, lab), tmp_path / f"{name}.png"), lab


def _median_xy(png, colour):
    ys, xs = np.nonzero(_colour_pixels(png, colour))
    return float(np.median(xs)), float(np.median(ys)), len(xs)


def test_png_written_with_overlay_where_labels_are(tmp_path):
    import matplotlib.image as mpimg

    ct = _ct()
    empty = write_report_png(ct, np.zeros(ct.shape, np.uint8), _report(ct, np.zeros(ct.shape, np.uint8)),
                             tmp_path / "empty.png")
    path, lab = _block_picture(tmp_path, "left", rows=(10, 50), cols=(80, 120))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w = mpimg.imread(str(path)).shape[:2]
    assert 400 < w < 4000 and 400 < h < 4000
    baseline = _colour_pixels(empty, ARTERY_COLORS["LAD"]).sum()  # the legend patch only
    # a 40 x 40 voxel block on a ~500 px panel of 128 voxels covers >= 1 pixel per voxel
    assert _colour_pixels(path, ARTERY_COLORS["LAD"]).sum() - baseline > 40 * 40
    assert not list(tmp_path.glob(".*"))  # no temporary left


def test_orientation_patient_left_on_image_right_anterior_up(tmp_path):
    """Identity LPS: column index grows to the patient's left, row index to posterior."""
    left, _ = _block_picture(tmp_path, "l", rows=(44, 84), cols=(88, 128))
    right, _ = _block_picture(tmp_path, "r", rows=(44, 84), cols=(0, 40))
    ant, _ = _block_picture(tmp_path, "a", rows=(0, 40), cols=(44, 84))
    post, _ = _block_picture(tmp_path, "p", rows=(88, 128), cols=(44, 84))
    c = ARTERY_COLORS["LAD"]
    assert _median_xy(left, c)[0] > _median_xy(right, c)[0] + 150
    assert _median_xy(ant, c)[1] + 150 < _median_xy(post, c)[1]


def test_flipped_axes_are_shown_in_radiological_orientation(tmp_path):
    """A volume stored with the column axis pointing to the patient's right is flipped for
    display, so the same anatomy appears on the same side of the picture."""
    c = ARTERY_COLORS["RCA"]
    a, _ = _block_picture(tmp_path, "a", rows=(44, 84), cols=(88, 128), artery_label=4)
    b, lab_b = _block_picture(tmp_path, "b", rows=(44, 84), cols=(88, 128), artery_label=4,
                              direction=np.diag([-1.0, 1.0, 1.0]), flip_cols=True)
    assert lab_b[4, 50, :40].all()  # stored at low column indices
    xa, ya, na = _median_xy(a, c)
    xb, yb, nb = _median_xy(b, c)
    assert na > 40 * 40 and nb == pytest.approx(na, rel=0.05)
    assert xa == pytest.approx(xb, abs=3) and ya == pytest.approx(yb, abs=3)
