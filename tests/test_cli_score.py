"""`ccdino score --labels`: the report contract, output files and bad-input exits."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from CoronaryCalciumDINOLib.cli import main
from CoronaryCalciumDINOLib.io import CTVolume, write_volume


@pytest.fixture()
def ct_and_labels(tmp_path):
    """A 4-slice CT (3 mm, 0.5 mm pixels, rotated direction) with two hand-placed lesions."""
    hu = np.full((4, 32, 32), 40.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    hu[1, 4:6, 4:8] = 450.0  # LAD: 8 px = 2.0 mm^2, weight 4 -> 8.0
    labels[1, 4:6, 4:8] = 2
    hu[2, 20:22, 20:22] = 250.0  # RCA: 4 px = 1.0 mm^2, weight 2 -> 2.0
    labels[2, 20:22, 20:22] = 4
    hu[3, 25:30, 25:30] = 1200.0  # dense but unlabelled (bone): not counted
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    ct = CTVolume(hu=hu, spacing=(3.0, 0.5, 0.5), origin=(-10.0, 20.0, 30.0), direction=direction)
    ct_path = write_volume(hu.astype(np.int16), ct, tmp_path / "study1.nrrd")
    lab_path = write_volume(labels, ct, tmp_path / "study1_labels.nrrd")
    return ct_path, lab_path, ct


def test_score_with_labels_writes_the_contract(ct_and_labels, tmp_path, capsys):
    ct_path, lab_path, _ = ct_and_labels
    out = tmp_path / "out"
    rc = main(["score", str(ct_path), "--labels", str(lab_path), "--out", str(out),
               "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report == json.loads((out / "study1.json").read_text())
    assert report["input"] == str(ct_path)
    assert report["spacing_mm"] == pytest.approx([3.0, 0.5, 0.5])
    assert report["threshold_hu"] == 130.0
    assert report["kvp"] is None
    assert report["arteries"]["LAD"]["agatston"] == pytest.approx(8.0)
    assert report["arteries"]["RCA"]["agatston"] == pytest.approx(2.0)
    assert report["arteries"]["LM"] == {"agatston": 0.0, "volume_mm3": 0.0, "mass_mg": None, "lesions": 0}
    assert report["total"]["agatston"] == pytest.approx(10.0)
    assert report["total"]["volume_mm3"] == pytest.approx(12 * 0.75)
    assert report["total"]["mass_mg"] is None
    assert report["risk_category"] == "1-10"
    assert report["cac_drs"] == "A1/N2"
    assert [(les["artery"], les["slice"]) for les in report["lesions"]] == [("LAD", 1), ("RCA", 2)]
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0] == ["metric", "LM", "LAD", "LCX", "RCA", "total"]
    assert rows[1][0] == "agatston" and float(rows[1][2]) == pytest.approx(8.0)
    assert "Research use only" in capsys.readouterr().out


def test_score_options_change_the_definition(ct_and_labels, tmp_path):
    ct_path, lab_path, _ = ct_and_labels
    rc = main(["score", str(ct_path), "--labels", str(lab_path), "--json", str(tmp_path / "r.json"),
               "--min-area", "1.5", "--no-slice-correction", "--calibration-factor", "0.8", "--quiet"])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["total"]["lesions"] == 1  # the 1.0 mm^2 RCA lesion is below 1.5 mm^2
    # LAD mass: 0.8 x (8 x 0.75 mm^3) x 450 HU / 1000
    assert report["arteries"]["LAD"]["mass_mg"] == pytest.approx(0.8 * 6.0 * 450 / 1000)
    rc = main(["score", str(ct_path), "--labels", str(lab_path), "--json", str(tmp_path / "k.json"),
               "--kvp", "100", "--quiet"])
    assert rc == 0
    report = json.loads((tmp_path / "k.json").read_text())
    assert report["threshold_hu"] == 147.0 and report["kvp"] == 100.0


@pytest.mark.parametrize(
    "make_args, needle",
    [
        (lambda ct, lab, tmp: [str(tmp / "missing.nrrd"), "--labels", str(lab)], "not found"),
        (lambda ct, lab, tmp: [str(ct), "--labels", str(tmp / "nolabels.nrrd")], "label file not found"),
        (lambda ct, lab, tmp: [str(ct), "--labels", str(lab), "--kvp", "auto"], "KVP"),
        (lambda ct, lab, tmp: [str(ct), "--labels", str(lab), "--kvp", "90"], "kVp"),
        (lambda ct, lab, tmp: [str(ct), "--labels", str(lab), "--calibration-factor", "-1"], "calibration"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(ct_and_labels, tmp_path, capsys, make_args, needle):
    ct_path, lab_path, _ = ct_and_labels
    rc = main(["score", *make_args(ct_path, lab_path, tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("ccdino: error:")
    assert needle in err


def test_label_grid_mismatch_is_refused(ct_and_labels, tmp_path, capsys):
    ct_path, _, ct = ct_and_labels
    shifted = CTVolume(hu=ct.hu, spacing=ct.spacing, origin=(0.0, 0.0, 0.0), direction=ct.direction)
    bad = write_volume(np.zeros(ct.shape, np.uint8), shifted, tmp_path / "shifted.nrrd")
    assert main(["score", str(ct_path), "--labels", str(bad)]) == 2
    assert "geometry" in capsys.readouterr().err
    wrong_values = write_volume(np.full(ct.shape, 7, np.uint8), ct, tmp_path / "seven.nrrd")
    assert main(["score", str(ct_path), "--labels", str(wrong_values)]) == 2
    assert "outside 0..4" in capsys.readouterr().err


def test_console_script_exit_code(ct_and_labels, tmp_path):
    """The installed entry point behaves like main(): no traceback, exit 2."""
    ct_path, _, _ = ct_and_labels
    proc = subprocess.run(
        [sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "score", str(ct_path), "--labels", str(tmp_path / "x.nrrd")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("ccdino: error:")
