"""Candidates, crops and context: the one preprocessing path of training and inference."""

from __future__ import annotations

import numpy as np
import pytest

from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.pipeline.preprocess import AIR_HU
from CoronaryCalciumDINOLib.pipeline.candidates import (
    CONTEXT_NAMES,
    HAND_FEATURES,
    CandidateConfig,
    NoiseRule,
    crop_hu,
    crop_labels,
    crop_windows,
    ends_of_larger_regions,
    find_candidates,
    neighbour_slices,
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


def test_neighbour_slices_mirror_at_the_volume_edges():
    z = np.array([0, 1, 3, 4])
    assert list(neighbour_slices(z, +1, 5)) == [1, 2, 4, 3]  # past the last slice: the one below it
    assert list(neighbour_slices(z, -1, 5)) == [1, 0, 2, 3]  # before the first: the one above it
    assert list(neighbour_slices(np.array([0]), +1, 1)) == [-1]  # one slice: none (off the volume)


def test_a_calcification_cut_by_the_scan_end_has_no_air_above_it():
    """A calcification running through slices 2-4 of a scan: on the last slice its one
    neighbour stands for both sides, as on the first; an inside slice keeps its own two."""
    hu = _volume()
    hu[2:5, 50:54, 60:63] = 300.0
    hu[3, 50:54, 60:63] = 350.0
    hu[0:2, 120:124, 120:124] = 250.0
    hu[1, 120:124, 120:124] = 280.0
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=CENTRE)
    by_z = {(int(z), int(y + c.field.y0)): i for i, (z, y) in enumerate(zip(c.z, c.cy))}
    top, mid, bottom = by_z[(4, 51)], by_z[(3, 51)], by_z[(0, 121)]
    ctx = c.context
    assert ctx[top, C["above_max_hu_k"]] == pytest.approx(0.35) == ctx[top, C["below_max_hu_k"]]
    assert ctx[bottom, C["below_max_hu_k"]] == pytest.approx(0.28) == ctx[bottom, C["above_max_hu_k"]]
    assert ctx[mid, C["above_max_hu_k"]] == pytest.approx(0.3) and ctx[mid, C["below_max_hu_k"]] == pytest.approx(0.3)
    # the same calcification in a scan that goes on above it: the top slice's context is that
    # of an inside slice whose neighbours both hold it
    longer = np.concatenate([hu, hu[4:5]], axis=0)
    c2 = find_candidates(longer, SPACING, CandidateConfig(), centre_yx=CENTRE)
    i2 = [i for i in range(len(c2)) if c2.z[i] == 4][0]
    assert c2.context[i2, C["below_max_hu_k"]] == pytest.approx(0.35)
    # a one-slice volume has no neighbour to stand in: no slice, nothing seen (air), so a
    # faint speck is never confirmed by "its neighbour", which would be itself
    one = find_candidates(hu[3:4], SPACING, CandidateConfig(), centre_yx=CENTRE)
    air = AIR_HU / 1000.0
    assert one.context[0, C["above_max_hu_k"]] == pytest.approx(air) == one.context[0, C["below_max_hu_k"]]


def test_specks_at_the_end_of_a_rod_are_the_rod_not_calcifications():
    """A calibration rod (a region far larger than a phantom's calcification) begins on
    slice 3; slice 2 holds specks of its partial volume under its footprint: they are its
    end. A speck beside the rod's footprint, a calcification alone and the rod itself are not."""
    hu = _volume()
    yy, xx = np.mgrid[:200, :200]
    rod = (yy - 100) ** 2 + (xx - 100) ** 2 < 20 ** 2  # 20 px = 10 mm radius: 314 mm^2
    hu[3:5][:, rod] = 350.0
    hu[2, 95:98, 95:98] = 160.0  # under the rod's footprint
    hu[2, 108:111, 100:103] = 160.0
    hu[2, 100:103, 130:133] = 160.0  # beside it (the rod ends at column 120)
    hu[1, 40:45, 40:45] = 300.0  # a calcification alone
    hu[2, 40:45, 40:45] = 300.0
    c = find_candidates(hu, SPACING, CandidateConfig(), centre_yx=CENTRE)
    at = {(int(z), int(y + c.field.y0), int(x + c.field.x0)): i for i, (z, y, x) in enumerate(zip(c.z, c.cy, c.cx))}
    ends = ends_of_larger_regions(c)
    assert ends[at[(2, 96, 96)]] and ends[at[(2, 109, 101)]]
    assert not ends[at[(2, 101, 131)]]
    assert not ends[at[(1, 42, 42)]] and not ends[at[(2, 42, 42)]]
    rods = [i for i in range(len(c)) if c.voxels[i] > 1000]
    assert len(rods) == 2 and not ends[rods].any()
    # the rod's end is no calcification only where the rod is too large to be one
    assert not ends_of_larger_regions(c, max_area_mm2=400.0).any()
    # a subset (regions left out stay in ``ids``) keeps each candidate's own answer
    keep = np.array(rods + [at[(2, 96, 96)], at[(1, 42, 42)], at[(2, 101, 131)]])
    assert list(ends_of_larger_regions(subset(c, keep))) == [False, False, True, False, False]
    sub = subset(c, np.array([at[(2, 101, 131)], at[(1, 42, 42)]]))  # the rod left out: its specks too
    assert not ends_of_larger_regions(sub).any()
    # the rod's end on the slice above works as on the slice below
    flipped = find_candidates(hu[::-1].copy(), SPACING, CandidateConfig(), centre_yx=CENTRE)
    at2 = {(int(z), int(y + flipped.field.y0), int(x + flipped.field.x0)): i
           for i, (z, y, x) in enumerate(zip(flipped.z, flipped.cy, flipped.cx))}
    ends2 = ends_of_larger_regions(flipped)
    assert ends2[at2[(2, 96, 96)]] and not ends2[at2[(2, 101, 131)]]


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


def _reference_context(hu, spacing, cfg, c):
    """The surroundings and noise features as the candidate search first computed them: three
    integral images over the whole field (the in-image mask one on every slice), via two
    ``np.cumsum`` temporaries each, and the noise of every slice."""
    from scipy import ndimage

    from CoronaryCalciumDINOLib.pipeline import candidates as cd

    def integral(a):
        ii = np.zeros((a.shape[0], a.shape[1] + 1, a.shape[2] + 1), dtype=np.float64)
        np.cumsum(np.cumsum(a, axis=1, dtype=np.float64), axis=2, out=ii[:, 1:, 1:])
        return ii

    def box_means(ii_hu, ii_n, z, cy, cx, half_y, half_x):
        y0, y1, x0, x1 = cd._box(cy, cx, half_y, half_x)
        full = (y1 - y0) * (x1 - x0)
        s = cd._rect_sums(ii_hu, z, y0, y1, x0, x1)
        inside = cd._rect_sums(ii_n, z, y0, y1, x0, x1)
        return (s + (full - inside) * cd.AIR_HU) / full

    _, dy, dx = spacing
    f = cd.extract_field(np.asarray(hu), c.field)
    inside = np.zeros(f.shape[1:], dtype=np.float32)
    _, _, fy, fx = c.field.clipped(hu.shape[1:])
    inside[fy, fx] = 1.0
    dense = f >= cfg.threshold_hu
    ii_hu = integral(np.where(inside[None] > 0, f, 0.0))
    ii_in = integral(np.broadcast_to(inside, f.shape))
    ii_dense = integral(dense)
    out = {
        "near_mean_hu_k": box_means(ii_hu, ii_in, c.z, c.cy, c.cx, cd._NEAR_MM / dy, cd._NEAR_MM / dx) / 1000.0,
        "far_mean_hu_k": box_means(ii_hu, ii_in, c.z, c.cy, c.cx, cd._FAR_MM / dy, cd._FAR_MM / dx) / 1000.0,
    }
    y0, y1, x0, x1 = cd._box(c.cy, c.cx, cd._FAR_MM / dy, cd._FAR_MM / dx)
    out["far_dense_share"] = cd._rect_sums(ii_dense, c.z, y0, y1, x0, x1) / ((y1 - y0) * (x1 - x0))
    wy = max(3, int(round(cd.NOISE_WINDOW_MM / dy)) | 1)
    wx = max(3, int(round(cd.NOISE_WINDOW_MM / dx)) | 1)
    ok_in = ndimage.minimum_filter(inside > 0, size=(wy, wx), mode="constant", cval=False)
    noise = np.full(f.shape[0], cd._DEFAULT_NOISE_HU)
    for k in range(f.shape[0]):
        a = f[k].astype(np.float64)
        m = ndimage.uniform_filter(a, (wy, wx), mode="nearest")
        var = ndimage.uniform_filter(a * a, (wy, wx), mode="nearest") - m * m
        ok = (m > cd._SOFT_TISSUE_HU[0]) & (m < cd._SOFT_TISSUE_HU[1]) & ok_in
        if np.count_nonzero(ok) >= 200:
            noise[k] = float(np.sqrt(max(np.median(var[ok]), 0.0)))
    out["noise_sd_hu_100"] = np.maximum(noise, 5.0)[c.z] / 100.0
    g = np.arange(cd._COARSE_N) - (cd._COARSE_N - 1) / 2.0
    for cell in cd._COARSE_CELLS_MM:
        gy, gx = np.meshgrid(g * cell / dy, g * cell / dx, indexing="ij")
        py, px = c.cy[:, None] + gy.ravel()[None], c.cx[:, None] + gx.ravel()[None]
        zc = np.broadcast_to(c.z[:, None], py.shape)
        values = box_means(ii_hu, ii_in, zc, py, px, 0.5 * cell / dy, 0.5 * cell / dx) / 1000.0
        for i in range(cd._COARSE_N * cd._COARSE_N):
            out[f"coarse{int(cell)}_{i}"] = values[:, i]
    return out


@pytest.mark.parametrize("where", ["inside", "at the edge"])
def test_context_equals_the_whole_field_computation(where):
    """The surroundings, coarse views and noise of each candidate are bit for bit those of the
    first implementation (whole-field integral images, every slice's noise): on a noisy,
    non-integer CT with candidates on some slices only, also where the field leaves the image."""
    from CoronaryCalciumDINOLib.synth import generate_study

    ct = generate_study(5, matrix=160, n_slices=12).ct
    hu = (ct.hu + np.random.default_rng(1).normal(0, 7.3, ct.hu.shape)).astype(np.float32)
    hu[:4] = np.minimum(hu[:4], 100.0)  # no candidates on the first slices
    cfg = CandidateConfig()
    c = find_candidates(hu, ct.spacing, cfg)
    if where == "at the edge":  # the heart field reaches out of the image (air there)
        c = find_candidates(hu, ct.spacing, cfg, centre_yx=(c.centre_yx[0] - 30.0, c.centre_yx[1] + 60.0))
        assert c.field.y0 < 0 or c.field.x0 + c.ids.shape[2] > hu.shape[2]
    assert len(c) > 10 and 0 < len(np.unique(c.z)) < hu.shape[0]
    ref = _reference_context(hu, ct.spacing, cfg, c)
    for name, values in ref.items():
        expected = np.clip(np.nan_to_num(np.asarray(values).astype(np.float32), nan=0.0, posinf=10.0, neginf=-10.0),
                           -10.0, 10.0)
        np.testing.assert_array_equal(c.context[:, C[name]], expected, err_msg=name)
