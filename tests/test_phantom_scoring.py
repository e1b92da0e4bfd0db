"""Scoring on a real scanner series: the QRM thorax phantom with its calcification insert.

The phantom's spine and ribs are bone-equivalent (far above 130 HU); they must never count
as coronary calcium when the label map excludes them. The insert's 5 mm hydroxyapatite
cylinders (200/400/800 mg HA/cm^3) sit in slices 20-23 of this 3 mm series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib.io import load_ct
from CoronaryCalciumDINOLib.scoring import score
from CoronaryCalciumDINOLib.scoring.reference import reference_score

PHANTOM = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "qrm-phantom-canon"

#: Centres (row, column) of the insert's calcifications in slices 20-23, read off the scan.
INSERT_CALCIFICATIONS = [(150, 291), (173, 280), (220, 205), (220, 180), (281, 298), (260, 285)]


@pytest.fixture(scope="module")
def phantom():
    return load_ct(PHANTOM)


def insert_labels(shape, artery=2, radius_px=10, slices=range(19, 25)):
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    for r, c in INSERT_CALCIFICATIONS:
        disk = (yy - r) ** 2 + (xx - c) ** 2 <= radius_px**2
        for z in slices:
            labels[z][disk] = artery
    return labels


def test_bone_is_never_counted_when_labels_exclude_it(phantom):
    hu = phantom.hu
    labels = insert_labels(hu.shape)
    dense_unlabelled = (hu >= 130) & (labels == 0)
    assert dense_unlabelled.sum() > 100_000  # spine, ribs, table: plenty of bone-like voxels
    r = score(hu, labels, phantom.spacing)
    assert r.total.lesions > 0
    assert r.arteries["LM"].agatston == r.arteries["LCX"].agatston == r.arteries["RCA"].agatston == 0
    # every kept lesion lies in the insert slices and inside a labelled disk
    assert all(19 <= les.slice <= 24 for les in r.lesions)
    r_kept = score(hu, labels, phantom.spacing, keep_label_map=True).kept_labels
    assert not np.any(r_kept[dense_unlabelled])
    # the same volume labelled everywhere counts the bone: vastly larger
    everywhere = score(hu, np.full(hu.shape, 2, np.uint8), phantom.spacing)
    assert everywhere.total.agatston > 50 * r.total.agatston


def test_phantom_scores_match_the_reference_and_physics(phantom):
    labels = insert_labels(phantom.shape)
    r = score(phantom.hu, labels, phantom.spacing)
    ref = reference_score(phantom.hu, labels, phantom.spacing)
    assert r.arteries["LAD"].agatston == pytest.approx(ref["LAD"]["agatston"], rel=1e-12)
    assert r.arteries["LAD"].lesions == ref["LAD"]["lesions"]
    # 800 mg HA/cm^3 reads far above 400 HU: at least one lesion of weight 4.
    assert max(les.peak_hu for les in r.lesions) >= 400
    # Each 5 mm cylinder crosses at most 3 slices of 3 mm, so each disk gives at most 3 lesions.
    assert r.total.lesions <= 3 * len(INSERT_CALCIFICATIONS)
    # A 5 mm cylinder cross-section is ~19.6 mm^2; blur at a 130 HU threshold widens the
    # densest ones, but no single lesion can reach 2.5 times that.
    assert max(les.area_mm2 for les in r.lesions) < 2.5 * np.pi * 2.5**2
