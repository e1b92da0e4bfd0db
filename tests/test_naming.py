"""Stage *name*: the artery of each lesion from the ascending aorta (pipeline/naming.py)."""

from __future__ import annotations

import numpy as np

from CoronaryCalciumDINOLib.pipeline.naming import (
    LCX_DEG,
    LCX_DEG_BELOW,
    LM_MM,
    ROOT_ZONE_BELOW_MM,
    ROOT_ZONE_MM,
    name_arteries,
    name_by_aorta,
    name_with_source,
    root_zone,
)

SPACING = (3.0, 1.0, 1.0)
AXIS = np.tile([100.0, 100.0], (12, 1))  # the aorta's centre (row, column) on every slice
R = 15.0
ROOT = 5


def _lesion(lab, z, y, x, code=3):
    lab[z, y - 1: y + 2, x - 1: x + 2] = code


def test_each_artery_from_where_it_lies_around_the_aorta():
    lab = np.zeros((12, 200, 200), np.uint8)
    # canonical layout: row 0 anterior, the last column the patient's left
    _lesion(lab, 3, 85, 75)  # right of the aorta, in front: RCA
    _lesion(lab, 9, 130, 60)  # right, behind, far below nothing: RCA
    _lesion(lab, 6, 105, 120)  # left, 20.6 mm from the centre (< r + LM_MM), root level: LM
    _lesion(lab, 2, 105, 120)  # the same place below the root: past the left main, LAD
    _lesion(lab, 2, 60, 140)  # left and in front: LAD
    _lesion(lab, 2, 140, 130)  # left, 53 degrees behind the left: LCX
    out = name_by_aorta(lab, AXIS, R, ROOT, SPACING)
    assert out[3, 85, 75] == 4 and out[9, 130, 60] == 4
    assert out[6, 105, 120] == 1
    assert out[2, 105, 120] == 2 and out[2, 60, 140] == 2
    assert out[2, 140, 130] == 3
    assert np.array_equal(out > 0, lab > 0)  # names only: no voxel added or removed
    assert lab[6, 105, 120] == 3  # the input is not changed


def test_a_lesion_across_the_end_of_the_left_main_is_split_there():
    lab = np.zeros((12, 200, 200), np.uint8)
    lab[7, 102:105, 110:140] = 2  # from 10 mm to 40 mm left of the centre, slightly behind it
    out = name_by_aorta(lab, AXIS, R, ROOT, SPACING)
    x = np.arange(110, 140)
    rho = np.hypot(x - 100.0, 103.0 - 100.0)
    assert np.array_equal(out[7, 103, 110:140] == 1, rho <= R + LM_MM)
    assert (out[7, 102:105, 110:140][:, rho > R + LM_MM + 1] == 2).all()


def test_the_circumflex_boundary_on_the_roots_levels_is_half_way_between_left_and_back():
    assert LCX_DEG == 45.0
    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 2, 100 + 28, 100 + 32)  # 41 degrees behind the left: LAD
    _lesion(lab, 2, 100 + 36, 100 + 30)  # 50 degrees behind: LCX
    out = name_by_aorta(lab, AXIS, R, ROOT, SPACING)
    assert out[2, 128, 132] == 2 and out[2, 136, 130] == 3


def test_below_the_roots_levels_the_circumflex_boundary_is_the_patients_left():
    """More than ROOT_ZONE_BELOW_MM below the top heart level the LAD runs in front of the
    root's centre and the circumflex beside or behind it: a lesion 20 degrees behind the
    left is LCX there, and LAD on the root's levels; one 20 degrees in front is LAD."""
    assert LCX_DEG_BELOW == 0.0
    deep = 0  # 15 mm below the top heart level (slice 5, 3 mm slices)
    near = 2  # 9 mm below it
    assert (ROOT - deep) * SPACING[0] > ROOT_ZONE_BELOW_MM >= (ROOT - near) * SPACING[0]
    lab = np.zeros((12, 200, 200), np.uint8)
    for z in (deep, near):
        _lesion(lab, z, 100 + 11, 100 + 30)  # 20 degrees behind the left, 32 mm from the centre
    _lesion(lab, deep, 100 - 11, 100 + 30)  # 20 degrees in front
    out = name_by_aorta(lab, AXIS, R, ROOT, SPACING)
    assert out[deep, 111, 130] == 3 and out[near, 111, 130] == 2 and out[deep, 89, 130] == 2
    # measuring the rule with the boundary of the root's levels everywhere: LAD
    assert name_by_aorta(lab, AXIS, R, ROOT, SPACING, lcx_deg_below=LCX_DEG)[deep, 111, 130] == 2
    # without a top heart level every slice is on the root's levels
    assert name_by_aorta(lab, AXIS, R, None, SPACING)[deep, 111, 130] == 2


def test_the_side_of_each_lesion_is_the_segmenters_and_the_left_branch_the_aortas():
    """Under the heart the RCA's posterior descending branch crosses left of the root's
    centre: by position alone it would be LCX. With the segmenter's sides (agreeing with
    the aorta on most of the calcium) it stays RCA; left-tree lesions are still named LM,
    LAD or LCX from the aorta, whatever the segmenter called them."""
    from CoronaryCalciumDINOLib.pipeline.anatomy import Anatomy
    from CoronaryCalciumDINOLib.pipeline.naming import name_with_source

    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 3, 85, 75, code=4)  # RCA, right of the aorta, in front
    lab[2, 80:83, 50:70] = 4  # a long RCA past the root's zone (most of the calcium agrees on the side)
    _lesion(lab, 1, 140, 110, code=4)  # the RCA's posterior descending branch, left of the centre, behind
    _lesion(lab, 6, 105, 120, code=3)  # the segmenter's LCX at the root, 20.6 mm left: LM
    _lesion(lab, 2, 60, 140, code=3)  # the segmenter's LCX, left and in front: LAD
    assert name_by_aorta(lab, AXIS, R, ROOT, SPACING)[1, 140, 110] == 3  # by position: LCX
    empty = np.zeros((12, 100, 100), bool)
    an = Anatomy((12, 200, 200), (2, 2), True, empty, empty, empty, (0, ROOT), AXIS, R)
    out, source = name_with_source(lab, an, SPACING)
    assert source == "aorta"
    assert out[1, 140, 110] == 4 and out[3, 85, 75] == 4 and (out[2, 80:83, 50:70] == 4).all()
    assert out[6, 105, 120] == 1 and out[2, 60, 140] == 2
    assert np.array_equal(out > 0, lab > 0)


def _anatomy(shape=(12, 200, 200)):
    from CoronaryCalciumDINOLib.pipeline.anatomy import Anatomy

    empty = np.zeros((shape[0], shape[1] // 2, shape[2] // 2), bool)
    return Anatomy(shape, (2, 2), True, empty, empty, empty, (0, ROOT), AXIS, R)


def test_the_root_zone_is_the_lesions_near_the_aortas_wall_at_the_root_to_its_left_or_right():
    assert (ROOT_ZONE_MM, ROOT_ZONE_BELOW_MM) == (20.0, 10.0)
    lab = np.zeros((12, 200, 200), np.uint8)
    lab[7, 99:102, 135:137] = 2  # left, its nearest voxel 20 mm beyond the wall: in
    lab[8, 99:102, 137:150] = 3  # left, its nearest voxel 22 mm beyond the wall: out
    lab[2, 99:102, 120:125] = 2  # left, 5 mm beyond the wall, 9 mm below the root: in
    lab[11, 99:102, 60:66] = 4  # right, 20 mm beyond the wall, above the root: in
    lab[4, 140:143, 100:103] = 4  # behind the root, 25 mm beyond the wall: out
    lab[6, 75:78, 99:102] = 4  # in front of the root, 8 mm beyond the wall: out (the side is unclear there)
    lab[6, 120:123, 110:113] = 3  # behind and to the left, more behind: out
    lab[6, 110:113, 120:123] = 3  # to the left and behind, more to the left: in
    zone = root_zone(lab, AXIS, R, ROOT, SPACING)
    assert zone[7, 99:102, 135:137].all() and not zone[8].any()
    assert zone[2, 99:102, 120:125].all() and zone[11, 99:102, 60:66].all()
    assert not zone[4].any() and not zone[6, 75:78].any() and not zone[6, 120:123].any()
    assert zone[6, 110:113, 120:123].all()
    assert np.array_equal(zone, zone & (lab > 0))
    deeper = np.zeros_like(lab)
    deeper[1, 99:102, 120:125] = 2
    assert not root_zone(deeper, AXIS, R, ROOT, SPACING).any()  # 12 mm below the root: out
    assert root_zone(deeper, AXIS, R, None, SPACING).any()  # no top heart level: any slice


def test_a_proximal_lesion_takes_the_aortas_side_where_the_segmenter_gives_another():
    """The segmenter calls a calcification leaving the root towards the patient's left RCA
    (as segmenters trained alike did on real dev scan 3): near the root, the side is the
    aorta's; away from it the segmenter's side stays, and only those lesions decide whether
    the aorta is trusted. Before the root's zone, the sides disagreed on 21 % of the calcium
    (this lesion and the posterior descending branch): the segmenter's names stayed, the
    lesion RCA."""
    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 6, 105, 130, code=4)  # 15 mm beyond the wall, left, at the root: the segmenter's RCA
    lab[2, 80:83, 50:70] = 4  # a long RCA, right and in front, 21 mm beyond the wall
    _lesion(lab, 2, 60, 150, code=3)  # left and in front, far from the root: LAD
    _lesion(lab, 1, 140, 110, code=4)  # the posterior descending branch, left of the centre: RCA
    out, source = name_with_source(lab, _anatomy(), SPACING)
    assert source == "aorta"
    assert out[6, 105, 130] == 2  # left tree: 30.4 mm from the centre (past the left main), to the left: LAD
    assert (out[2, 80:83, 50:70] == 4).all() and out[1, 140, 110] == 4 and out[2, 60, 150] == 2
    assert np.array_equal(out > 0, lab > 0)


def test_where_the_other_lesions_disagree_every_name_is_the_segmenters():
    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 6, 105, 130, code=4)  # in the root's zone: the aorta would say left
    lab[2, 80:83, 50:70] = 2  # right of the aorta, far from it, but the segmenter's LAD
    _lesion(lab, 2, 60, 150, code=3)
    out, source = name_with_source(lab, _anatomy(), SPACING)
    assert source == "segmenter: the aorta disagrees"
    assert out[6, 105, 130] == 4 and (out[2, 80:83, 50:70] == 2).all() and out[2, 60, 150] == 3


def _disagreeing():
    """The segmenter's labels of the test above: the sides disagree on the calcium outside the
    root's zone (the long lesion right of the aorta called LAD)."""
    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 6, 105, 130, code=4)
    lab[2, 80:83, 50:70] = 2
    _lesion(lab, 2, 60, 150, code=3)
    return lab


def test_where_the_segmenter_is_unsure_of_the_sides_it_checks_the_aortas_names_stand():
    """Real dev scan 4 in fields set 20-35 mm towards the back: the segmenter put calcium right
    of the root on the left tree with P(RCA | calcium) 0.26-0.39, and the check fell back to
    its names (the left main / LAD called LCX). Unsure sides cannot tell the aorta wrong."""
    lab = _disagreeing()
    p_right = np.zeros(lab.shape, np.float32)  # sure of the left tree: 0.0
    p_right[2, 80:83, 50:70] = 0.35  # unsure of the long lesion (60 of the 69 voxels checked)
    out, source = name_with_source(lab, _anatomy(), SPACING, p_right)
    assert source == "aorta"
    assert out[6, 105, 130] == 2  # the zone's lesion: the aorta's side (left), past the left main: LAD
    assert (out[2, 80:83, 50:70] == 2).all()  # outside the zone the segmenter's side stays (left)
    assert name_arteries(lab, _anatomy(), SPACING, p_right)[6, 105, 130] == 2


def test_where_the_segmenter_is_sure_of_most_sides_it_checks_the_check_is_made():
    lab = _disagreeing()
    for unsure in (0.3, 0.5, 0.7):  # sure of the long lesion only: 60 of 69 voxels, a share of 0.87
        p_right = np.full(lab.shape, unsure, np.float32)
        p_right[2, 80:83, 50:70] = 0.1
        assert name_with_source(lab, _anatomy(), SPACING, p_right)[1] == "segmenter: the aorta disagrees"
    p_right = np.full(lab.shape, 0.0, np.float32)
    p_right[2, 80:83, 50:70] = 0.25  # at the bound: sure
    assert name_with_source(lab, _anatomy(), SPACING, p_right)[1] == "segmenter: the aorta disagrees"
    assert name_with_source(lab, _anatomy(), SPACING, None)[1] == "segmenter: the aorta disagrees"


def test_a_side_the_segmenter_is_sure_of_is_the_side_it_gave():
    """A voxel whose label is on the left tree (a pixel's own name, or its lesion's majority)
    while its candidate's P(RCA | calcium) says RCA is not a sure side: the long lesion then
    counts as unsure, 9 of the 69 voxels checked are sure, and the aorta's names stand."""
    lab = _disagreeing()
    p_right = np.zeros(lab.shape, np.float32)
    p_right[2, 80:83, 50:70] = 0.76
    assert name_with_source(lab, _anatomy(), SPACING, p_right)[1] == "aorta"
    lab[2, 80:83, 50:70] = 4  # given RCA, with the same probability: sure, and agreeing
    assert name_with_source(lab, _anatomy(), SPACING, p_right)[1] == "aorta"
    p_right[2, 80:83, 50:70] = 0.24  # given RCA, the probability on the left: unsure
    assert name_with_source(lab, _anatomy(), SPACING, p_right)[1] == "aorta"


def test_the_sure_share_is_of_the_calcium_checked():
    from CoronaryCalciumDINOLib.pipeline.naming import MIN_SURE_SHARE, SURE_SIDE, enough_sure, sure_sides

    check = np.zeros((1, 1, 10), bool)
    check[0, 0, :8] = True
    right = np.zeros(check.shape, bool)
    right[0, 0, [1, 3, 5]] = True  # the segmenter's side: RCA at 1, 3 and 5, else left tree
    p = np.full(check.shape, 0.5, np.float32)
    p[0, 0, 8:] = 0.0  # sure, but not checked
    p[0, 0, :4] = [0.0, 1.0, SURE_SIDE, 1.0 - SURE_SIDE]  # 4 of the 8 checked: sure of the side given
    p[0, 0, 5] = 0.1  # sure of the left tree where it gave RCA: not sure
    assert MIN_SURE_SHARE == 0.5
    sure = sure_sides(check, right, p)
    assert np.array_equal(sure[0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]) and enough_sure(sure, check)
    p[0, 0, 3] = 0.74
    sure = sure_sides(check, right, p)
    assert sure.sum() == 3 and not enough_sure(sure, check)
    assert sure_sides(check, right, None) is check


def test_sides_the_segmenter_is_unsure_of_do_not_count_against_the_aorta():
    """Real dev scan 4 under 40 HU of noise (one draw): the sides agree on the calcium the
    segmenter is sure of; a lesion right of the root it called left tree with P(RCA | calcium)
    0.38 made the disagreement 24 % of all the calcium checked, and its names stayed."""
    lab = np.zeros((12, 200, 200), np.uint8)
    lab[2, 80:83, 50:70] = 4  # right of the aorta, far from it: RCA, sure (60 voxels)
    _lesion(lab, 1, 80, 75, code=2)  # right and in front, below the root's zone: the segmenter's
    lab[1, 78:83, 58:62] = 2  # LAD, unsure (with this one: 29 voxels, 33 % of those checked)
    p_right = np.zeros(lab.shape, np.float32)
    p_right[2, 80:83, 50:70] = 0.9
    p_right[1] = np.where(lab[1] > 0, 0.38, 0.0)
    assert name_with_source(lab, _anatomy(), SPACING)[1] == "segmenter: the aorta disagrees"  # all sure
    out, source = name_with_source(lab, _anatomy(), SPACING, p_right)
    assert source == "aorta"
    assert (out[2, 80:83, 50:70] == 4).all() and (out[1][lab[1] > 0] != 4).all()  # the unsure ones keep their side


def test_calcium_only_near_the_root_is_checked_with_the_segmenters_sides():
    """With (almost) all the calcium in the root's zone there is too little elsewhere to check
    the aorta by: the check takes all of it, with the segmenter's sides, so a tube wrongly
    taken for the aorta cannot re-side the lesions unchecked."""
    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 6, 105, 120, code=4)  # the segmenter's RCA, 5.6 mm beyond the wall on the left
    _lesion(lab, 6, 85, 80, code=2)  # the segmenter's LAD, right and in front of the root
    out, source = name_with_source(lab, _anatomy(), SPACING)
    assert source == "segmenter: the aorta disagrees"
    assert out[6, 105, 120] == 4 and out[6, 85, 80] == 2
    agree = lab.copy()  # the same places, the segmenter's sides agreeing with the aorta
    agree[6, 104:107, 119:122], agree[6, 84:87, 79:82] = 3, 4
    out, source = name_with_source(agree, _anatomy(), SPACING)
    assert source == "aorta"
    assert out[6, 105, 120] == 1 and out[6, 85, 80] == 4  # the left one within r + LM_MM: LM
    unsure = np.full(lab.shape, 0.5, np.float32)  # the segmenter unsure of every side: checked all the same
    assert name_with_source(lab, _anatomy(), SPACING, unsure)[1] == "segmenter: the aorta disagrees"
    assert name_with_source(agree, _anatomy(), SPACING, unsure)[1] == "aorta"


def test_the_calcium_outside_the_root_zone_decides_however_little():
    """Outside the zone 9 voxels agree with the aorta; inside it 54 disagree: the check is
    on the calcium outside, and the aorta is trusted (the zone's lesions take its side)."""
    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 6, 105, 120, code=4)  # in the zone, the aorta says left
    lab[6, 110:113, 118:130] = 4  # in the zone, the aorta says left
    _lesion(lab, 2, 60, 150, code=3)  # outside it, agreeing (left)
    out, source = name_with_source(lab, _anatomy(), SPACING)
    assert source == "aorta" and out[6, 105, 120] in (1, 2) and (out[6, 110:113, 118:130] != 4).all()


def test_a_ring_of_the_roots_wall_is_not_in_the_zone():
    """Calcification of the aortic wall all round it: its centroid is the aorta's centre, no
    side; the segmenter's side stays."""
    lab = np.zeros((12, 200, 200), np.uint8)
    yy, xx = np.mgrid[:200, :200]
    lab[6][np.abs(np.hypot(yy - 100, xx - 100) - R) < 1.0] = 4
    assert not root_zone(lab, AXIS, R, ROOT, SPACING).any()


def test_the_zone_reaches_exactly_its_depth_and_stops_at_45_degrees():
    lab = np.zeros((12, 200, 200), np.uint8)
    lab[0, 99:102, 120:123] = 2  # 10 mm below the root at 2 mm slices: in
    lab[5, 99:102, 120:123] = 2  # at the root: in
    sp = (2.0, 1.0, 1.0)
    zone = root_zone(lab, AXIS, R, 5, sp)
    assert zone[0].any() and zone[5].any()
    assert not root_zone(lab, AXIS, R, 6, sp)[0].any()  # 12 mm below: out
    diag = np.zeros_like(lab)
    diag[6, 119:122, 119:122] = 3  # centroid 20 mm left, 20 mm behind: 45 degrees, out
    diag[8, 118:121, 119:122] = 3  # 19 mm behind: in
    zone = root_zone(diag, AXIS, R, ROOT, SPACING)
    assert not zone[6].any() and zone[8].any()


def test_without_an_aorta_the_segmenter_names_stay_one_side_per_lesion():
    from CoronaryCalciumDINOLib.pipeline.anatomy import find_anatomy

    lab = np.zeros((6, 120, 120), np.uint8)
    lab[2, 50:53, 50:56] = 2
    lab[2, 50:53, 56:58] = 4  # one lesion split between the sides: the left has more
    an = find_anatomy(np.full((6, 120, 120), 40.0, np.float32), (3.0, 0.8, 0.8))  # no lungs
    assert an.aorta_axis is None
    out = name_arteries(lab, an, (3.0, 0.8, 0.8))
    assert (out[2, 50:53, 50:58] == 2).all()
    assert name_with_source(lab, an, (3.0, 0.8, 0.8))[1] == "segmenter: no aorta found"
    assert name_with_source(np.zeros_like(lab), an, (3.0, 0.8, 0.8))[1] == "segmenter"  # nothing to name
    assert np.array_equal(name_arteries(lab, None, (3.0, 0.8, 0.8)), out)


def test_run_pipeline_refuses_an_unknown_naming():
    import pytest

    from CoronaryCalciumDINOLib.errors import InputError
    from CoronaryCalciumDINOLib.pipeline import run_pipeline

    class _CT:
        hu = np.zeros((2, 8, 8), np.float32)

    with pytest.raises(InputError, match="naming must be"):
        run_pipeline(_CT(), None, naming="box")


def test_the_naming_measurement_on_synthetic_calcium_counts_every_labelled_voxel():
    """training/naming_on_synthetic.py: every calcium voxel of a study with an aorta found
    lands in the confusion once, under its true artery."""
    import numpy as np

    from CoronaryCalciumDINOLib.synth.generator import render_study
    from training.naming_on_synthetic import confusion

    seed = 101
    labels = np.asarray(render_study(seed).study.labels)
    conf, missed = confusion([seed])
    assert labels.any() and not missed
    assert conf[0].sum() == 0 and conf[:, 0].sum() == 0
    for k in range(1, 5):
        assert conf[k].sum() == (labels == k).sum()
    # --lcx-deg-below moves calcium between the LAD and the LCX only (seed 112: its left
    # main's calcium below the root's levels, LAD with the root's boundary everywhere)
    here, _ = confusion([112])
    other, _ = confusion([112], lcx_deg_below=LCX_DEG)
    assert not np.array_equal(other, here)
    assert np.array_equal(other.sum(axis=1), here.sum(axis=1))
    assert np.array_equal(other[:, [0, 1, 4]], here[:, [0, 1, 4]])


def test_the_root_zone_measurement_on_synthetic_calcium_counts_the_zone_and_its_wrong_sides():
    """training/naming_on_synthetic.py --root-zone: each setting's zone is counted in
    lesions and voxels of the true calcium; a wider setting holds at least as much."""
    from CoronaryCalciumDINOLib.synth.generator import render_study
    from training.naming_on_synthetic import ZONE_SETTINGS, root_zone_sides

    seed = 101
    labels = np.asarray(render_study(seed).study.labels)
    res, studies = root_zone_sides([seed])
    assert studies == 1 and len(res) == len(ZONE_SETTINGS)
    used, deeper, no_sectors = res
    assert 0 < used["voxels"] <= (labels > 0).sum() and used["lesions"] > 0
    assert deeper["voxels"] >= used["voxels"] and no_sectors["voxels"] >= used["voxels"]
    for r in res:
        assert 0 <= r["wrong_voxels"] <= r["voxels"] and 0 <= r["wrong_lesions"] <= r["lesions"]
        assert (r["wrong_voxels"] > 0) == bool(r["wrong_seeds"])


def test_the_check_says_what_it_counted_and_found():
    """name_and_check: the calcium checked (outside the root's zone), how much of it the
    segmenter is sure of, whether the check was made, what it compared and on how much the
    sides disagree."""
    from CoronaryCalciumDINOLib.pipeline.naming import MAX_SIDE_DISAGREEMENT, MIN_SURE_SHARE, name_and_check

    lab = _disagreeing()  # 69 voxels outside the zone: the long lesion (60, the segmenter's LAD,
    # right of the aorta) disagrees, the one far left (9) agrees; 9 in the zone
    _, source, check = name_and_check(lab, _anatomy(), SPACING)  # no side probabilities: all sure
    assert source == "segmenter: the aorta disagrees" and not check.passed
    assert (check.checked, check.zone_only, check.sure, check.made, check.counted, check.disagree) == \
        (69, False, 69, True, 69, 60)
    assert np.isclose(check.sure_share, 1.0) and np.isclose(check.disagreement, 60 / 69)
    p_right = np.zeros(lab.shape, np.float32)
    p_right[2, 80:83, 50:70] = 0.35  # unsure of the long lesion: 9 of 69 sure, no check
    _, source, check = name_and_check(lab, _anatomy(), SPACING, p_right)
    assert source == "aorta" and check.passed and not check.made and check.disagreement is None
    assert (check.checked, check.sure, check.counted, check.disagree) == (69, 9, 0, 0)
    assert check.as_dict() == {"zone_only": False, "voxels_checked": 69, "segmenter_sure_share": 9 / 69,
                               "check_made": False, "voxels_counted": 0, "sides_disagree_share": None,
                               "min_sure_share": MIN_SURE_SHARE, "max_disagreement": MAX_SIDE_DISAGREEMENT}
    p_right[:] = 0.5
    p_right[2, 80:83, 50:70] = 0.1  # sure of the long lesion only: counted, and it disagrees
    _, source, check = name_and_check(lab, _anatomy(), SPACING, p_right)
    assert source == "segmenter: the aorta disagrees"
    assert (check.sure, check.made, check.counted, check.disagree) == (60, True, 60, 60)
    assert check.as_dict()["sides_disagree_share"] == 1.0


def test_the_check_at_its_bounds():
    """Sure of exactly MIN_SURE_SHARE of the calcium checked: the check is made; the sides
    disagreeing on exactly MAX_SIDE_DISAGREEMENT of it: the aorta's names stand."""
    from CoronaryCalciumDINOLib.pipeline.naming import MAX_SIDE_DISAGREEMENT, MIN_SURE_SHARE, name_and_check

    assert (MIN_SURE_SHARE, MAX_SIDE_DISAGREEMENT) == (0.5, 0.2)
    lab = np.zeros((12, 200, 200), np.uint8)
    lab[0, 80, 40:80] = 4  # right of the aorta, below the root's zone: RCA, agreeing (40 voxels)
    lab[0, 60, 140:150] = 4  # left, in front, away from the root: the segmenter's RCA, disagreeing (10)
    _, source, check = name_and_check(lab, _anatomy(), SPACING)
    assert (check.checked, check.counted, check.disagree, source) == (50, 50, 10, "aorta")
    lab[0, 60, 150] = 4  # one voxel more disagrees: 11 of 51
    assert name_and_check(lab, _anatomy(), SPACING)[1] == "segmenter: the aorta disagrees"
    lab[0, 60, 150] = 0
    p_right = np.where(lab > 0, 0.5, 0.0).astype(np.float32)
    p_right[0, 80, 40:65] = 0.9  # sure of 25 of the 50: exactly half, the check made
    _, source, check = name_and_check(lab, _anatomy(), SPACING, p_right)
    assert (check.sure, check.made, check.counted, check.disagree, source) == (25, True, 25, 0, "aorta")
    p_right[0, 80, 64] = 0.5  # 24 of 50: not made
    assert not name_and_check(lab, _anatomy(), SPACING, p_right)[2].made


def test_calcium_only_near_the_root_is_all_checked_and_no_check_without_an_aorta_or_calcium():
    from CoronaryCalciumDINOLib.pipeline.anatomy import Anatomy
    from CoronaryCalciumDINOLib.pipeline.naming import name_and_check

    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 6, 105, 120, code=4)  # in the zone, left of the root: the aorta says left tree
    _lesion(lab, 6, 85, 80, code=2)  # in the zone, right of the root: the aorta says RCA
    unsure = np.full(lab.shape, 0.5, np.float32)
    unsure[6, 84:87, 79:82] = 0.1  # sure of the LAD's side (9 of 18), checked all the same
    _, source, check = name_and_check(lab, _anatomy(), SPACING, unsure)
    assert source == "segmenter: the aorta disagrees"
    assert (check.checked, check.zone_only, check.sure, check.made, check.counted, check.disagree) == \
        (18, True, 9, True, 18, 18)
    assert check.as_dict()["zone_only"] is True and check.as_dict()["segmenter_sure_share"] == 0.5
    empty = np.zeros((12, 100, 100), bool)
    no_aorta = Anatomy((12, 200, 200), (2, 2), True, empty, empty, empty, (0, ROOT), None, None)
    assert name_and_check(lab, no_aorta, SPACING)[1:] == ("segmenter: no aorta found", None)
    assert name_and_check(np.zeros_like(lab), _anatomy(), SPACING)[1:] == ("segmenter", None)


def test_the_naming_check_measurement_lists_each_study_and_sums_them_up(capsys, tmp_path):
    """training/naming_check.py (no model here): a line per study with calcium named, and the
    totals by names source with the segmenter's sure share over the studies checked outside
    the root's zone; a bad --seeds is one error line."""
    from CoronaryCalciumDINOLib.pipeline.naming import NamingCheck
    from training.naming_check import main, study_line, totals

    rows = [
        {"id": "a", "source": "aorta", "check": NamingCheck(200, False, 180, True, 180, 10).as_dict()},
        {"id": "b", "source": "segmenter: the aorta disagrees", "check": NamingCheck(100, False, 90, True, 90, 45).as_dict()},
        {"id": "c", "source": "aorta", "check": NamingCheck(30, True, 12, True, 30, 0).as_dict()},
        {"id": "d", "source": "segmenter: no aorta found", "check": None},
        {"id": "e", "source": "aorta", "check": NamingCheck(100, False, 20, False, 0, 0).as_dict()},
        {"id": "f", "source": "", "check": None},
    ]
    assert study_line(rows[0]) == ("a: from the aorta (the segmenter sure of the side of 90 % of 200 voxels; the sides "
                                   "disagree on 6 %)")
    assert study_line(rows[2]) == "c: from the aorta (all 30 voxels near the root checked, sure or not; the sides disagree on 0 %)"
    assert study_line(rows[4]).endswith("sure of the side of 20 % of 100 voxels: no check made)")
    assert study_line(rows[3]) == "d: segmenter: no aorta found"
    assert totals(rows) == ("5 studies with calcium the pipeline labelled: 3 aorta, 1 segmenter: the aorta disagrees, "
                            "1 segmenter: no aorta found. Calcium outside the root's zone checked in 3: segmenter "
                            "sure of 20.0-90.0 % (median 90.0 %), the check made in 2; where the aorta disagrees, "
                            "the sides disagree on 50.0-50.0 %")
    assert main(["--seeds", "5:5"]) == 2
    assert "--seeds must be START:END" in capsys.readouterr().err
    assert main(["--seeds", "0:1", "--bundle", str(tmp_path / "none"), "--cache", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("naming_check: error: model bundle not found") and err.count("\n") == 1


def test_the_names_do_not_depend_on_where_the_calcium_lies_in_the_scan():
    """name_and_check works on the box round the calcium: the same heart placed elsewhere in
    a larger scan (the aorta, the top heart level and the side probabilities moved with it)
    is named and checked alike, and nothing outside the calcium is labelled."""
    from CoronaryCalciumDINOLib.pipeline.anatomy import Anatomy
    from CoronaryCalciumDINOLib.pipeline.naming import name_and_check

    lab = _disagreeing()
    lab[0, 80, 40:80] = 4  # RCA below the root's zone
    p_right = np.where(lab == 4, 0.9, 0.1).astype(np.float32)
    p_right[2, 80:83, 50:70] = 0.35  # unsure of the long lesion
    dz, dy, dx = 3, 17, 41
    big = np.zeros((20, 260, 300), np.uint8)
    big[dz:dz + 12, dy:dy + 200, dx:dx + 200] = lab
    p_big = np.zeros(big.shape, np.float32)
    p_big[dz:dz + 12, dy:dy + 200, dx:dx + 200] = p_right
    axis = np.full((20, 2), np.nan)
    axis[dz:dz + 12] = AXIS + [dy, dx]
    empty = np.zeros((20, 130, 150), bool)
    moved = Anatomy(big.shape, (2, 2), True, empty, empty, empty, (0, ROOT + dz), axis, R)
    for p_here, p_there in ((None, None), (p_right, p_big)):
        out, source, check = name_and_check(lab, _anatomy(), SPACING, p_here)
        out_big, source_big, check_big = name_and_check(big, moved, SPACING, p_there)
        assert (source_big, check_big) == (source, check)
        assert np.array_equal(out_big[dz:dz + 12, dy:dy + 200, dx:dx + 200], out)
        assert (out_big > 0).sum() == (out > 0).sum() == (lab > 0).sum()
    assert source == "aorta" and not check.made  # the unsure case named from the aorta, unchecked
