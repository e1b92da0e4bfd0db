"""Candidates, crops and context: the one preprocessing path of training and inference."""

from __future__ import annotations

import numpy as np
import pytest

from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.pipeline.candidates import (
    CONTEXT_NAMES,
    HAND_FEATURES,
    CandidateConfig,
    NoiseRule,
    crop_hu,
    crop_labels,
    crop_windows,
    find_candidates,
    scan_positions,
    slice_noise,
    subset,
)

C = {n: i for i, n in enumerate(CONTEXT_NAMES)}


def _volume(nz=5, n=200, noise=0.0, seed=0):
    """0.5 mm pixels: soft tissue (40 HU) body disc in air, nothing dense."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    hu = np.full((nz, n, n), -1000.0, np.float32)
    hu[:, (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (0.48 * n) ** 2] = 40.0
    if noise:
        hu += rng.normal(0, noise, hu.shape).astype(np.float32)
    return hu


SPACING = (3.0, 0.5, 0.5)
CENTRE = (99.5, 99.5)


def test_candidates_are_the_agatston_lesion_rule():
    hu = _volume()
    hu[2, 50:54, 60:63] = 300.0  # 12 px = 3 mm^2
    hu[2, 120:122, 120:122] = 200.0  # 4 px = 1 mm^2: exactly the minimum area, kept
    hu[2, 150:152, 150:151] = 500.0  # 2 px = 0.5 mm^2: too small
    hu[3, 50:54, 60:63] = 129.0  # below 130 HU
    hu[1, 10:13, 10:13] = 250.0  # diagonal neighbour of the next one: same component
    hu[1, 13:15, 13:15] = 250.0
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=CENTRE)
    assert len(c) == 3
    order = np.argsort(c.voxels)
    assert list(c.voxels[order]) == [4, 12, 13]
    assert list(c.z[order]) == [2, 2, 1]
    big = order[1]
    assert c.cy[big] + c.field.y0 == pytest.approx(51.5) and c.cx[big] + c.field.x0 == pytest.approx(61.0)
    ctx = c.context[big]
    assert ctx[C["peak_hu_k"]] == pytest.approx(0.3) and ctx[C["mean_hu_k"]] == pytest.approx(0.3)
    assert ctx[C["log_area_mm2"]] == pytest.approx(np.log(3.0))
    assert ctx[C["below_max_hu_k"]] == pytest.approx(0.04)  # slice 1 under its footprint: soft tissue
    assert ctx[C["above_max_hu_k"]] == pytest.approx(0.129)  # slice 3: the 129 HU patch
    # lower threshold finds the 129 HU patch too; larger min area drops the 1 mm^2 spot
    assert len(find_candidates(hu, SPACING, CandidateConfig(threshold_hu=120.0), centre_yx=CENTRE)) == 4
    assert len(find_candidates(hu, SPACING, CandidateConfig(min_area_mm2=1.5), centre_yx=CENTRE)) == 2


def test_heart_field_limits_the_search_and_positions_are_signed():
    hu = _volume(n=400)
    hu[2, 200:204, 330:334] = 400.0  # 66 mm towards patient left of the centre (column grows left)
    hu[2, 100:104, 200:204] = 400.0  # 50 mm anterior
    hu[2, 10:14, 10:14] = 400.0  # outside a 160 mm field around the centre
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=(199.5, 199.5))
    assert len(c) == 2
    left = int(np.argmax(c.context[:, C["x_field"]]))
    assert c.context[left, C["x_field"]] == pytest.approx(66.0 / 80.0, abs=0.01)
    ant = 1 - left
    assert c.context[ant, C["y_field"]] < -0.5  # anterior = towards row 0 = negative
    assert c.context[ant, C["x_field"]] == pytest.approx(0.0, abs=0.02)


def test_targets_paint_round_trip():
    hu = _volume()
    hu[2, 50:54, 60:63] = 300.0
    hu[2, 100:103, 100:103] = 300.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[2, 50:54, 60:63] = 3  # LCX
    labels[2, 100, 100] = 4  # one voxel of nine: not enough to call it coronary
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=CENTRE)
    t = c.targets(labels)
    assert sorted(t.tolist()) == [0, 3]
    painted = c.paint(t)
    np.testing.assert_array_equal(painted == 3, labels == 3)
    assert not np.any(painted == 4)
    # painting limited to slices
    assert not c.paint(t, slices=np.arange(hu.shape[0]) != 2).any()
    # a subset keeps each candidate's identity
    k = int(np.flatnonzero(t == 3)[0])
    sub = subset(c, [k])
    assert sub.targets(labels).tolist() == [3]
    np.testing.assert_array_equal(sub.paint([3]), painted)


def test_crops_native_pixels_and_one_path():
    hu = _volume()
    hu[2, 50:54, 60:63] = 300.0
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=CENTRE)
    crops = crop_hu(hu, c)
    assert crops.shape == (1, 32, 32) and crops.dtype == np.float32
    # 0.5 mm crop pixels on a 0.5 mm CT: the crop is the CT itself around the centroid
    # (centroid (51.5, 61.0), crop centre on the corner (51.5, 61.5): crop pixel (i, j) is
    # CT pixel (36 + i, 46 + j), exactly)
    np.testing.assert_array_equal(crops[0], hu[2, 36:68, 46:78])
    # a larger stored crop holds the network input in its centre, value for value
    big = crop_hu(hu, c, size=40)
    np.testing.assert_array_equal(big[:, 4:36, 4:36], crops)
    w = crop_windows(hu, c)
    assert w.shape == (1, 3, 32, 32) and w.min() >= 0 and w.max() <= 1
    lab = np.zeros(hu.shape, np.uint8)
    lab[2, 50:54, 60:63] = 2
    pl = crop_labels(lab, c)
    assert (pl == 2).sum() == 12
    masks = c.masks()
    np.testing.assert_array_equal(masks[0] > 0, pl[0] == 2)


def test_crop_outside_the_image_is_air():
    hu = _volume()
    hu[2, 0:3, 100:103] = 300.0  # at the image edge
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=CENTRE)
    assert len(c) == 1
    crop = crop_hu(hu, c)[0]
    assert crop[0, 16] == -1024.0


def test_noise_estimate_and_contrast_feature():
    hu = _volume(nz=3, noise=30.0)
    est = slice_noise(hu, SPACING[1:])
    np.testing.assert_allclose(est, 30.0, rtol=0.1)
    hu[1, 80:84, 80:84] = 400.0
    c = find_candidates(hu, SPACING, CandidateConfig(min_area_mm2=3.0), centre_yx=CENTRE)
    k = int(np.argmax(c.context[:, C["peak_hu_k"]]))
    assert c.context[k, C["noise_sd_hu_100"]] == pytest.approx(0.3, rel=0.15)
    assert c.context[k, C["peak_snr_10"]] > 0.5


def test_scan_positions():
    z, top = scan_positions(5, 3.0)
    np.testing.assert_allclose(z, [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(top, [0.12, 0.09, 0.06, 0.03, 0.0])
    z2, top2 = scan_positions(5, 3.0, superior_increasing=False)
    np.testing.assert_allclose(z2, -z)
    np.testing.assert_allclose(top2, top[::-1])


def test_no_candidates_and_config_checks():
    hu = _volume()
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=CENTRE)
    assert len(c) == 0 and c.context.shape == (0, len(CONTEXT_NAMES))
    assert c.per_slice_max(np.zeros(0)).tolist() == [0.0] * hu.shape[0]
    assert crop_windows(hu, c).shape == (0, 3, 32, 32)
    cfg = CandidateConfig(crop_px=24, windows=((0, 100),))
    assert CandidateConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"crop_px": 2}, {"pixel_mm": 0.0}, {"threshold_hu": float("nan")}, {"windows": ((5, 5),)}):
        with pytest.raises(InputError):
            CandidateConfig(**bad)
    with pytest.raises(InputError, match="context"):
        CandidateConfig.from_dict({**cfg.to_dict(), "context": ["x"]})
    assert set(HAND_FEATURES) <= set(CONTEXT_NAMES)
    with pytest.raises(InputError, match="3D"):
        find_candidates(hu[0], SPACING)


def test_noise_estimate_of_textured_noise():
    """Correlated (grainy) noise, as CT reconstructions have: the estimate is its SD, not the
    much smaller SD of neighbouring-pixel differences; calcium and edges barely move it."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    hu = _volume(nz=4)
    body = hu > 0
    grain = ndimage.gaussian_filter(rng.standard_normal(hu.shape), (0, 1.6, 1.6))
    grain *= 25.0 / grain[body].std()
    hu[body] += grain[body].astype(np.float32)
    hu[:, 60:66, 60:66] = 500.0  # calcium
    hu[:, 120:200, :] = np.where(body[:, 120:200, :], -90.0, hu[:, 120:200, :])  # a fat region and its edge
    est = slice_noise(hu, SPACING[1:])
    np.testing.assert_allclose(est, 25.0, rtol=0.12)
    inside = np.zeros(hu.shape[1:], np.float32)
    inside[:, :100] = 1.0
    np.testing.assert_allclose(slice_noise(hu, SPACING[1:], inside), 25.0, rtol=0.12)


def test_noise_rule():
    ctx = np.zeros((4, len(CONTEXT_NAMES)), np.float32)
    ctx[:, C["noise_sd_hu_100"]] = 0.2  # 20 HU
    ctx[:, C["peak_hu_k"]] = [0.14, 0.14, 0.2, 0.14]  # 5, 5, 8, 5 SD above 40 HU
    ctx[:, C["log_area_mm2"]] = np.log([1.0, 3.0, 1.0, 2.99])
    rule = NoiseRule(min_contrast_sd=6.0, min_area_mm2=3.0)
    assert rule.active
    np.testing.assert_allclose(rule.contrast_sd(ctx), [5, 5, 8, 5], rtol=1e-5)
    np.testing.assert_array_equal(rule.significant(ctx), [False, True, True, False])
    assert NoiseRule().significant(ctx).all() and not NoiseRule().active
    assert NoiseRule.from_dict(rule.to_dict()) == rule
    for bad in ({"min_contrast_sd": float("nan")}, {"min_area_mm2": -1.0}, {"min_contrast_sd": "4"}, {"typo": 1.0}):
        with pytest.raises(InputError):
            NoiseRule.from_dict(bad)
    with pytest.raises(InputError):
        NoiseRule.from_dict([1, 2])
    # the neighbouring slices: a faint speck whose footprint shows on the slice above or below
    ctx[:, C["above_max_hu_k"]] = [0.14, -1.0, -1.0, 0.1]  # 5 SD; air; air; 3 SD
    ctx[:, C["below_max_hu_k"]] = [-1.0, -1.0, -1.0, 0.05]
    with_nb = NoiseRule(min_contrast_sd=6.0, min_area_mm2=3.0, min_neighbour_sd=4.0)
    np.testing.assert_allclose(with_nb.neighbour_sd(ctx)[[0, 3]], [5, 3], rtol=1e-5)
    np.testing.assert_array_equal(with_nb.significant(ctx), [True, True, True, False])
    np.testing.assert_array_equal(rule.significant(ctx), [False, True, True, False])  # off by default
    assert NoiseRule.from_dict(with_nb.to_dict()) == with_nb
    with pytest.raises(InputError):
        NoiseRule.from_dict({"min_neighbour_sd": -1.0})


def test_masks_stay_inside_the_heart_field():
    """Calcium reaching past the heart field: the candidate is its part inside the field, and
    so is its crop mask (what the pipeline may label), never the part outside."""
    n = 400
    hu = np.full((3, n, n), 40.0, np.float32)
    hu[1, 200:204, 350:370] = 400.0
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=(199.5, 199.5))
    assert len(c) == 1 and c.field.x0 + c.ids.shape[2] == 360  # the field ends inside the bar
    assert c.voxels[0] == 4 * 10
    z, y, x, ok = c.nearest_pixels()
    m = c.masks()[0] > 0
    assert m.sum() == c.voxels[0]
    assert (x[0][m] < 360).all()
