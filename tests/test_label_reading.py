"""``score --labels`` and ``batch --labels-dir`` read a label map the same way.

A Slicer segmentation is matched to arteries by segment name (a user who draws RCA first
has RCA as segment 1) and may be cropped to its extent; other volume files hold the artery
codes themselves.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from CoronaryCalciumDINOLib.batch import run_batch
from CoronaryCalciumDINOLib.cli import main as cli_main
from CoronaryCalciumDINOLib.io.segfile import write_seg_nrrd
from CoronaryCalciumDINOLib.io.volume import CTVolume, write_volume
from shared_data import hand_scored_ct


def _study(tmp_path):
    """:func:`shared_data.hand_scored_ct` (LAD Agatston 20, RCA 9) as ``in/p1.nrrd``."""
    ct, lab = hand_scored_ct()
    inp = tmp_path / "in"
    inp.mkdir()
    write_volume(ct.hu.astype(np.int16), ct, inp / "p1.nrrd")
    return ct, lab, inp


def _score_and_batch(tmp_path, inp, labels_dir, seg_name):
    assert cli_main(["score", str(inp / "p1.nrrd"), "--labels", str(labels_dir / seg_name),
                     "--json", str(tmp_path / "score.json"), "--quiet"]) == 0
    rows = run_batch(inp, tmp_path / "out", labels_dir=labels_dir)
    assert rows[0]["status"] == "ok", rows[0]["error"]
    by_score = json.loads((tmp_path / "score.json").read_text())["arteries"]
    by_batch = json.loads((tmp_path / "out" / "p1.json").read_text())["arteries"]
    return by_score, by_batch


def test_segments_are_matched_by_name_in_score_and_batch(tmp_path):
    ct, lab, inp = _study(tmp_path)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    # segment 1 is RCA, segment 2 LAD: as saved by Slicer when RCA was drawn first
    values = np.select([lab == 4, lab == 2], [1, 2], 0).astype(np.uint8)
    write_seg_nrrd(values, ct, labels_dir / "p1.seg.nrrd", segment_names=("RCA", "LAD"))
    by_score, by_batch = _score_and_batch(tmp_path, inp, labels_dir, "p1.seg.nrrd")
    for arteries in (by_score, by_batch):
        assert arteries["RCA"]["agatston"] == pytest.approx(9.0)
        assert arteries["LAD"]["agatston"] == pytest.approx(20.0)
        assert arteries["LM"]["agatston"] == 0
    assert by_score == by_batch


def test_cropped_slicer_segmentation_works_in_score_and_batch(tmp_path):
    ct, lab, inp = _study(tmp_path)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    # the file covers CT voxels k 2..4, j 10..32, i 20..42 only
    origin = ct.ijk_to_lps() @ np.array([20, 10, 2, 1.0])
    crop = CTVolume(hu=np.zeros((3, 23, 23), np.float32), spacing=ct.spacing, origin=tuple(origin[:3]),
                    direction=ct.direction)
    write_seg_nrrd(lab[2:5, 10:33, 20:43], crop, labels_dir / "p1.seg.nrrd")
    by_score, by_batch = _score_and_batch(tmp_path, inp, labels_dir, "p1.seg.nrrd")
    assert by_score == by_batch
    assert by_score["LAD"]["agatston"] == pytest.approx(20.0) and by_score["RCA"]["agatston"] == pytest.approx(9.0)


def test_plain_label_volume_holds_the_artery_codes(tmp_path):
    ct, lab, inp = _study(tmp_path)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    write_volume(lab, ct, labels_dir / "p1.nii.gz")
    by_score, by_batch = _score_and_batch(tmp_path, inp, labels_dir, "p1.nii.gz")
    assert by_score == by_batch and by_score["RCA"]["agatston"] == pytest.approx(9.0)
