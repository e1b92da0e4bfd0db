"""Scoring rules, each checked against values derived by hand.

Conventions of the hand derivations: spacing (dz, dy, dx) = (3.0, 0.5, 0.5) mm unless said
otherwise, so one pixel is 0.25 mm^2, a 2x2 block is 1.0 mm^2 and one voxel is 0.75 mm^3.
"""

from __future__ import annotations

import numpy as np
import pytest

from CoronaryCalciumDINOLib.constants import ARTERY_TO_LABEL
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.scoring import (
    ScoringParams,
    cac_drs,
    calibration_factor,
    params_for_kvp,
    risk_category,
    score,
    slices_with_calcium,
)
from CoronaryCalciumDINOLib.scoring.reference import reference_score

SP = (3.0, 0.5, 0.5)
LM, LAD, LCX, RCA = 1, 2, 3, 4


def blank(nz=3, ny=20, nx=20):
    return np.full((nz, ny, nx), 40.0, dtype=np.float32), np.zeros((nz, ny, nx), dtype=np.uint8)


@pytest.mark.parametrize(
    "peak, weight",
    [(130.0, 1), (199.9, 1), (200.0, 2), (299.9, 2), (300.0, 3), (399.9, 3), (400.0, 4), (1000.0, 4)],
)
def test_weight_bands_and_edges(peak, weight):
    hu, lab = blank()
    hu[1, 5:7, 5:7] = 130.0  # 2x2 block = 1.0 mm^2 at the threshold
    hu[1, 5, 5] = peak  # the peak decides the weight
    lab[1, 5:7, 5:7] = LAD
    r = score(hu, lab, SP)
    assert r.arteries["LAD"].lesions == 1
    assert r.arteries["LAD"].agatston == pytest.approx(1.0 * weight)
    assert r.lesions[0].peak_hu == pytest.approx(peak)


def test_below_threshold_is_not_calcium():
    hu, lab = blank()
    hu[1, 5:8, 5:8] = 129.9
    lab[1, 5:8, 5:8] = LAD
    r = score(hu, lab, SP)
    assert r.total.agatston == 0 and r.total.lesions == 0 and r.total.volume_mm3 == 0


def test_only_voxels_at_or_above_threshold_form_the_lesion():
    hu, lab = blank()
    lab[1, 5:8, 5:8] = LAD  # 9 labelled pixels
    hu[1, 5:7, 5:7] = 250.0  # 4 of them >= 130
    r = score(hu, lab, SP)
    les = r.lesions[0]
    assert les.voxels == 4 and les.area_mm2 == pytest.approx(1.0)
    assert les.mean_hu == pytest.approx(250.0)


def test_min_area_edge():
    hu, lab = blank()
    hu[1, 2, 2:5] = 500.0  # 3 px = 0.75 mm^2 -> dropped at 1.0
    lab[1, 2, 2:5] = LM
    hu[1, 10:12, 10:12] = 500.0  # 4 px = 1.00 mm^2 -> kept (edge is inclusive)
    lab[1, 10:12, 10:12] = LM
    r = score(hu, lab, SP)
    assert r.arteries["LM"].lesions == 1
    assert r.arteries["LM"].agatston == pytest.approx(4.0)  # 1.0 mm^2 x weight 4
    r2 = score(hu, lab, SP, ScoringParams(min_area_mm2=0.5))
    assert r2.arteries["LM"].lesions == 2
    assert r2.arteries["LM"].agatston == pytest.approx(0.75 * 4 + 1.0 * 4)


def test_min_area_edge_survives_floating_point():
    # 0.1 x 0.1 mm pixels: 100 px is 1.0 mm^2 in decimal but 100 * 0.1 * 0.1 < 1.0 in binary.
    hu, lab = blank(ny=30, nx=30)
    hu[1, 0:10, 0:10] = 500.0
    lab[1, 0:10, 0:10] = RCA
    r = score(hu, lab, (3.0, 0.1, 0.1))
    assert r.arteries["RCA"].lesions == 1


def test_two_lesions_in_one_slice_and_eight_connectivity():
    hu, lab = blank()
    # two 2x2 blocks separated by a background column -> two lesions
    hu[1, 2:4, 2:4] = 250.0
    hu[1, 2:4, 5:7] = 450.0
    lab[1, 2:4, 2:7] = LAD
    # a diagonal pair of 2x2 blocks touching only at a corner -> one lesion (8-connectivity)
    hu[1, 10:12, 10:12] = 250.0
    hu[1, 12:14, 12:14] = 250.0
    lab[1, 10:14, 10:14] = LCX
    r = score(hu, lab, SP)
    assert r.arteries["LAD"].lesions == 2
    assert r.arteries["LAD"].agatston == pytest.approx(1.0 * 2 + 1.0 * 4)
    assert r.arteries["LCX"].lesions == 1
    assert r.arteries["LCX"].agatston == pytest.approx(2.0 * 2)


def test_lesion_over_several_slices_counts_per_slice():
    hu, lab = blank(nz=4)
    for z, peak in zip((0, 1, 2), (150.0, 350.0, 600.0)):
        hu[z, 5:7, 5:7] = peak
        lab[z, 5:7, 5:7] = RCA
    r = score(hu, lab, SP)
    assert r.arteries["RCA"].lesions == 3
    assert sorted(les.slice for les in r.lesions) == [0, 1, 2]
    assert r.arteries["RCA"].agatston == pytest.approx(1 + 3 + 4)
    assert r.arteries["RCA"].volume_mm3 == pytest.approx(12 * 0.75)
    assert slices_with_calcium(r, 4).tolist() == [True, True, True, False]


def test_artery_restriction_and_adjacent_arteries_do_not_merge():
    hu, lab = blank()
    hu[1, 2:4, 2:6] = 450.0  # a 2x4 dense block ...
    lab[1, 2:4, 2:4] = LM  # ... whose left half is LM
    lab[1, 2:4, 4:6] = LAD  # ... and right half LAD
    hu[2, 10:15, 10:15] = 900.0  # dense, but unlabelled (e.g. bone): never counted
    r = score(hu, lab, SP)
    assert r.arteries["LM"].lesions == 1 and r.arteries["LAD"].lesions == 1
    assert r.arteries["LM"].agatston == pytest.approx(4.0)
    assert r.arteries["LAD"].agatston == pytest.approx(4.0)
    assert r.total.agatston == pytest.approx(8.0)
    assert r.total.lesions == 2


def test_slice_factor_and_its_switch():
    hu, lab = blank()
    hu[1, 5:7, 5:7] = 450.0
    lab[1, 5:7, 5:7] = LAD
    r = score(hu, lab, (1.5, 0.5, 0.5))
    assert r.arteries["LAD"].agatston == pytest.approx(1.0 * 4 * 0.5)
    assert r.arteries["LAD"].volume_mm3 == pytest.approx(4 * 1.5 * 0.25)  # no factor on volume
    r2 = score(hu, lab, (1.5, 0.5, 0.5), ScoringParams(slice_correction=False))
    assert r2.arteries["LAD"].agatston == pytest.approx(4.0)
    r3 = score(hu, lab, (2.5, 0.5, 0.5))
    assert r3.arteries["LAD"].agatston == pytest.approx(4.0 * 2.5 / 3.0)


def test_mass_needs_calibration_and_follows_mcollough():
    hu, lab = blank()
    hu[1, 5:7, 5:7] = [[200.0, 300.0], [250.0, 250.0]]  # mean 250 HU, 4 voxels = 3.0 mm^3
    lab[1, 5:7, 5:7] = LCX
    r = score(hu, lab, SP)
    assert r.arteries["LCX"].mass_mg is None and r.total.mass_mg is None
    assert r.lesions[0].mass_mg is None
    r2 = score(hu, lab, SP, ScoringParams(calibration_factor=0.8))
    # 0.8 mg/cm^3/HU x 3.0 mm^3 x 250 HU / 1000 mm^3/cm^3 = 0.6 mg
    assert r2.arteries["LCX"].mass_mg == pytest.approx(0.6)
    assert r2.total.mass_mg == pytest.approx(0.6)
    assert r2.arteries["LM"].mass_mg == 0.0  # calibrated, no calcium


def test_calibration_factor_from_rod():
    # 200 mg HA/cm^3 rod at 250 HU, water at 0 HU -> 0.8 mg/cm^3 per HU
    assert calibration_factor(250.0, 0.0, 200.0) == pytest.approx(0.8)
    with pytest.raises(InputError):
        calibration_factor(-5.0, 0.0)


@pytest.mark.parametrize(
    "total, category",
    [(0.0, "0"), (0.2, "1-10"), (10.0, "1-10"), (10.01, "11-100"), (100.0, "11-100"),
     (100.5, "101-400"), (400.0, "101-400"), (400.01, ">400"), (2500.0, ">400")],
)
def test_risk_category_boundaries(total, category):
    assert risk_category(total) == category


def test_cac_drs_boundaries():
    assert cac_drs(0.0, {"LM": 0, "LAD": 0, "LCX": 0, "RCA": 0}) == "A0"
    assert cac_drs(99.9, {"LM": 99.9, "LAD": 0, "LCX": 0, "RCA": 0}) == "A1/N1"
    assert cac_drs(100.0, {"LM": 50, "LAD": 50, "LCX": 0, "RCA": 0}) == "A2/N2"
    assert cac_drs(299.9, {"LM": 1, "LAD": 1, "LCX": 1, "RCA": 296.9}) == "A2/N4"
    assert cac_drs(300.0, {"LM": 0, "LAD": 100, "LCX": 100, "RCA": 100}) == "A3/N3"


def test_result_categories_follow_the_total():
    hu, lab = blank(nz=3, ny=40, nx=40)
    hu[1, 0:20, 0:20] = 500.0  # 400 px = 100 mm^2 x 4 = 400 Agatston
    lab[1, 0:20, 0:20] = LAD
    hu[1, 30:32, 30:32] = 500.0  # 1 mm^2 x 4 = 4 in RCA
    lab[1, 30:32, 30:32] = RCA
    r = score(hu, lab, SP)
    assert r.total.agatston == pytest.approx(404.0)
    assert r.risk_category == ">400"
    assert r.cac_drs == "A3/N2"


def test_kvp_adapted_parameters():
    p = params_for_kvp(80)
    assert p.threshold_hu == pytest.approx(167.0)
    assert p.band_edges_hu == pytest.approx(tuple(e * 167.0 / 130.0 for e in (130, 200, 300, 400)))
    assert params_for_kvp(120).threshold_hu == 130.0
    assert params_for_kvp(None) == ScoringParams()
    with pytest.raises(InputError):
        params_for_kvp(90)
    hu, lab = blank()
    hu[1, 5:7, 5:7] = 160.0  # above 130 but below the 80 kVp threshold
    lab[1, 5:7, 5:7] = LAD
    assert score(hu, lab, SP, params_for_kvp(120)).total.lesions == 1
    assert score(hu, lab, SP, params_for_kvp(80)).total.lesions == 0


@pytest.mark.parametrize(
    "hu_shape, lab_shape, spacing, labels_value",
    [((3, 8, 8), (3, 8, 9), SP, 1), ((3, 8, 8), (3, 8, 8), (0.0, 0.5, 0.5), 1), ((3, 8, 8), (3, 8, 8), SP, 5)],
)
def test_bad_inputs_are_one_line_errors(hu_shape, lab_shape, spacing, labels_value):
    hu = np.zeros(hu_shape, np.float32)
    lab = np.full(lab_shape, labels_value, np.uint8)
    with pytest.raises(InputError) as exc:
        score(hu, lab, spacing)
    assert "\n" not in str(exc.value)


def test_vectorised_equals_per_lesion_reference_on_random_volumes():
    rng = np.random.default_rng(7)
    for trial in range(5):
        shape = (6, 40, 40)
        hu = rng.normal(100, 150, shape).astype(np.float32)
        lab = rng.integers(0, 5, shape).astype(np.uint8)
        lab[rng.random(shape) < 0.5] = 0
        spacing = (float(rng.choice([1.5, 2.5, 3.0])), 0.45, 0.45)
        params = ScoringParams(min_area_mm2=float(rng.choice([0.0, 0.5, 1.0])))
        fast = score(hu, lab, spacing, params)
        ref = reference_score(hu, lab, spacing, params)
        for artery, s in fast.arteries.items():
            assert s.agatston == pytest.approx(ref[artery]["agatston"], rel=1e-9, abs=1e-9)
            assert s.volume_mm3 == pytest.approx(ref[artery]["volume_mm3"], rel=1e-9, abs=1e-9)
            assert s.lesions == ref[artery]["lesions"]


def test_kept_label_map_holds_only_kept_lesions():
    hu, lab = blank()
    hu[1, 2, 2:5] = 500.0  # too small: dropped
    lab[1, 2, 2:5] = LM
    hu[1, 10:12, 10:12] = 500.0
    lab[1, 10:12, 10:12] = LAD
    lab[1, 14:16, 14:16] = LAD  # labelled but below threshold
    r = score(hu, lab, SP, keep_label_map=True)
    expected = np.zeros_like(lab)
    expected[1, 10:12, 10:12] = LAD
    np.testing.assert_array_equal(r.kept_labels, expected)


def test_report_dict_follows_the_contract():
    hu, lab = blank()
    hu[1, 5:7, 5:7] = 450.0
    lab[1, 5:7, 5:7] = LAD
    d = score(hu, lab, SP).to_dict()
    assert set(d["arteries"]) == {"LM", "LAD", "LCX", "RCA"}
    for s in (*d["arteries"].values(), d["total"]):
        assert set(s) >= {"agatston", "volume_mm3", "mass_mg", "lesions"}
    assert set(d["lesions"][0]) >= {"artery", "slice", "area_mm2", "peak_hu", "mean_hu", "agatston"}
    assert d["lesions"][0]["artery"] == "LAD" and d["lesions"][0]["slice"] == 1


def test_lesion_voxels_follow_the_lesion_order():
    """keep_lesion_voxels returns each kept lesion's own voxels, in the order of ``lesions``."""
    rng = np.random.default_rng(5)
    hu = rng.uniform(-100, 600, (6, 40, 40)).astype(np.float32)
    labels = rng.integers(0, 5, hu.shape).astype(np.uint8)
    r = score(hu, labels, (3.0, 0.7, 0.7), keep_lesion_voxels=True)
    assert r.lesions and len(r.lesion_voxels) == len(r.lesions)
    assert score(hu, labels, (3.0, 0.7, 0.7)).lesion_voxels is None
    seen = np.concatenate(r.lesion_voxels)
    assert np.unique(seen).size == seen.size  # no voxel in two lesions
    kept = score(hu, labels, (3.0, 0.7, 0.7), keep_label_map=True).kept_labels
    assert set(seen.tolist()) == set(np.flatnonzero(kept).tolist())
    for les, vox in zip(r.lesions, r.lesion_voxels):
        z, _, _ = np.unravel_index(vox, hu.shape)
        assert vox.size == les.voxels and set(z.tolist()) == {les.slice}
        assert set(labels.ravel()[vox].tolist()) == {ARTERY_TO_LABEL[les.artery]}
        assert hu.ravel()[vox].max() == pytest.approx(les.peak_hu)


def test_scoring_options_resolve_kvp_in_one_place():
    from CoronaryCalciumDINOLib.scoring import ScoringOptions

    assert ScoringOptions().resolve(100.0) == ScoringParams()  # no --kvp: classic, whatever the CT
    assert ScoringOptions(kvp="100").resolve(None) == params_for_kvp(100)
    assert ScoringOptions(kvp=" AUTO ").resolve(80.0) == params_for_kvp(80)
    with pytest.raises(InputError, match="no KVP tag"):
        ScoringOptions(kvp="auto").resolve(None)
    assert ScoringOptions(kvp="auto", auto_kvp_required=False).resolve(None) == ScoringParams()
    opts = ScoringOptions(min_area_mm2=2.0, slice_correction=False, calibration_factor=0.8)
    assert opts.resolve(None) == ScoringParams(min_area_mm2=2.0, slice_correction=False, calibration_factor=0.8)
    assert ScoringOptions.of(opts.to_dict()) == opts and ScoringOptions.of(None) == ScoringOptions()
    # bad options fail when made, before any CT is read
    for bad, message in (({"kvp": "high"}, "must be 'auto' or a number"), ({"kvp": 90}, "no kVp-adapted threshold"),
                         ({"min_area_mm2": -1}, "minimum lesion area"), ({"calibration_factor": 0.0}, "calibration factor")):
        with pytest.raises(InputError, match=message):
            ScoringOptions(**bad)
