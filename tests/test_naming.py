"""Stage *name*: the artery of each lesion from the ascending aorta (pipeline/naming.py)."""

from __future__ import annotations

import numpy as np

from CoronaryCalciumDINOLib.pipeline.naming import LCX_DEG, LM_MM, name_arteries, name_by_aorta

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


def test_the_circumflex_boundary_is_half_way_between_left_and_back():
    assert LCX_DEG == 45.0
    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 2, 100 + 28, 100 + 32)  # 41 degrees behind the left: LAD
    _lesion(lab, 2, 100 + 36, 100 + 30)  # 50 degrees behind: LCX
    out = name_by_aorta(lab, AXIS, R, ROOT, SPACING)
    assert out[2, 128, 132] == 2 and out[2, 136, 130] == 3


def test_the_side_of_each_lesion_is_the_segmenters_and_the_left_branch_the_aortas():
    """Under the heart the RCA's posterior descending branch crosses left of the root's
    centre: by position alone it would be LCX. With the segmenter's sides (agreeing with
    the aorta on most of the calcium) it stays RCA; left-tree lesions are still named LM,
    LAD or LCX from the aorta, whatever the segmenter called them."""
    from CoronaryCalciumDINOLib.pipeline.anatomy import Anatomy
    from CoronaryCalciumDINOLib.pipeline.naming import name_with_source

    lab = np.zeros((12, 200, 200), np.uint8)
    _lesion(lab, 3, 85, 75, code=4)  # RCA, right of the aorta, in front
    lab[2, 84:87, 60:80] = 4  # a long proximal RCA (most of the calcium agrees on the side)
    _lesion(lab, 1, 140, 110, code=4)  # the RCA's posterior descending branch, left of the centre, behind
    _lesion(lab, 6, 105, 120, code=3)  # the segmenter's LCX at the root, 20.6 mm left: LM
    _lesion(lab, 2, 60, 140, code=3)  # the segmenter's LCX, left and in front: LAD
    assert name_by_aorta(lab, AXIS, R, ROOT, SPACING)[1, 140, 110] == 3  # by position: LCX
    empty = np.zeros((12, 100, 100), bool)
    an = Anatomy((12, 200, 200), (2, 2), True, empty, empty, empty, (0, ROOT), AXIS, R)
    out, source = name_with_source(lab, an, SPACING)
    assert source == "aorta"
    assert out[1, 140, 110] == 4 and out[3, 85, 75] == 4 and (out[2, 84:87, 60:80] == 4).all()
    assert out[6, 105, 120] == 1 and out[2, 60, 140] == 2
    assert np.array_equal(out > 0, lab > 0)


def test_without_an_aorta_the_segmenter_names_stay_one_side_per_lesion():
    from CoronaryCalciumDINOLib.pipeline.anatomy import find_anatomy

    lab = np.zeros((6, 120, 120), np.uint8)
    lab[2, 50:53, 50:56] = 2
    lab[2, 50:53, 56:58] = 4  # one lesion split between the sides: the left has more
    an = find_anatomy(np.full((6, 120, 120), 40.0, np.float32), (3.0, 0.8, 0.8))  # no lungs
    assert an.aorta_axis is None
    out = name_arteries(lab, an, (3.0, 0.8, 0.8))
    assert (out[2, 50:53, 50:58] == 2).all()
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
