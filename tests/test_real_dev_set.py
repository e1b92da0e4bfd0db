"""``scripts/real_dev_set.py`` (the local non-gated COCA development set) and the pure parts
of ``training/evaluate_real.py``, on tiny invented inputs only: no COCA file, volume or
value is used here.

Test names and folders avoid the word that the script refuses in paths (pytest's
``tmp_path`` carries the test's name).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from shared_data import hand_scored_ct, write_small_series  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESTRICTED = "Gated_release_final"


def _load_script():
    spec = importlib.util.spec_from_file_location("real_dev_set", REPO / "scripts" / "real_dev_set.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rds = _load_script()

# Paths opened or listed while a test watches (audit hooks cannot be removed: one hook,
# switched on and off by the tests).
_WATCH: dict = {"on": False, "paths": []}


def _audit(event, args):
    if _WATCH["on"] and event in ("open", "os.listdir", "os.scandir", "shutil.copyfile", "shutil.copytree"):
        for a in args:
            if isinstance(a, (str, bytes, Path)):
                _WATCH["paths"].append(str(a))


sys.addaudithook(_audit)


def _touched_restricted() -> list[str]:
    return [p for p in _WATCH["paths"] if RESTRICTED.lower() in p.lower()]


def _write_scores(path: Path, rows) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["ID", "LCA", "LAD", "LCX", "RCA", "Total"])  # COCA's column names; numbers invented
    for r in rows:
        ws.append(list(r))
    wb.save(path)


def _fake_checkout(root: Path) -> Path:
    """A fake checkout: non-gated scans 1 and 2 (2 has no score row), a score row for 7
    (no folder), and a restricted folder that must never be read."""
    base = root / "mini_dataset" / "deidentified_nongated"
    hu = np.full((3, 8, 8), -1000, np.int16)
    hu[1, 2:5, 2:5] = 300
    write_small_series(base / "1" / "1", hu, series_uid=None)
    write_small_series(base / "2" / "2", hu[:2], series_uid=None)
    _write_scores(base / "scores.xlsx", [("1A", 1.5, 20.0, 0, 3.25, 24.75), ("7A", 0, 0, 0, 0, 0)])
    secret = root / "mini_dataset" / RESTRICTED / "patient" / "0"
    secret.mkdir(parents=True)
    (secret / "x.dcm").write_bytes(b"not to be read")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_copies_the_public_scans_of_a_checkout(tmp_path, capsys):
    src = _fake_checkout(tmp_path / "checkout")
    out = tmp_path / "dev"
    _WATCH.update(on=True, paths=[])
    try:
        rc = rds.main([str(src), "--out", str(out)])
    finally:
        _WATCH["on"] = False
    assert rc == 0, capsys.readouterr().err
    assert _touched_restricted() == []
    assert sorted(p.name for p in out.iterdir()) == ["1", "reference.json"]
    # byte for byte, same layout
    assert _files(out / "1") == _files(src / "mini_dataset" / "deidentified_nongated" / "1")
    doc = json.loads((out / "reference.json").read_text())
    assert doc == {
        "source": "COCA deidentified_nongated (research use)",
        "scans": {"1": {"id": "1A", "LM": 1.5, "LAD": 20.0, "LCX": 0.0, "RCA": 3.25, "total": 24.75}},
    }
    assert not any(RESTRICTED.lower() in str(p).lower() for p in out.rglob("*"))
    assert "folder 2 has no score row" in capsys.readouterr().err


def test_takes_a_public_folder_directly_and_refuses_to_replace(tmp_path, capsys):
    src = _fake_checkout(tmp_path / "checkout") / "mini_dataset" / "deidentified_nongated"
    out = tmp_path / "dev"
    assert rds.main([str(src), "--out", str(out)]) == 0
    assert rds.main([str(src), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (out / "stale.txt").write_text("x")
    assert rds.main([str(src), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "1").is_dir()
    # a non-empty folder this script did not make is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert rds.main([str(src), "--out", str(other), "--overwrite"]) == 2
    assert (other / "keep.txt").read_text() == "x"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_reads_only_the_public_path_of_a_bare_repository(tmp_path, capsys):
    work = _fake_checkout(tmp_path / "work")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "fake"], check=True)
    bare = tmp_path / "repo.git"
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(bare)], check=True)
    shutil.rmtree(work)
    out = tmp_path / "dev"
    assert rds.main([str(bare), "--out", str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["1", "reference.json"]
    assert json.loads((out / "reference.json").read_text())["scans"]["1"]["total"] == 24.75
    assert len(list((out / "1" / "1").glob("*.dcm"))) == 3
    assert not any(RESTRICTED.lower() in str(p).lower() for p in tmp_path.rglob("*"))  # nothing extracted
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # temporary folders gone


def test_refuses_the_restricted_release_as_source(tmp_path, capsys):
    root = _fake_checkout(tmp_path / "checkout") / "mini_dataset"
    out = tmp_path / "dev"
    for source in (root / RESTRICTED, root / RESTRICTED / "patient", root / RESTRICTED / ".." / "deidentified_nongated"):
        _WATCH.update(on=True, paths=[])
        try:
            rc = rds.main([str(source), "--out", str(out)])
        finally:
            _WATCH["on"] = False
        err = capsys.readouterr().err
        assert rc == 2 and "gated COCA release" in err and "Traceback" not in err
        assert err.count("\n") == 1
        assert _touched_restricted() == []
    assert not out.exists()


def test_refuses_an_output_tracked_by_the_repository(tmp_path, capsys):
    src = _fake_checkout(tmp_path / "checkout")
    assert rds.main([str(src), "--out", str(REPO / "docs" / "coca-dev")]) == 2
    assert "real-dev/" in capsys.readouterr().err
    assert not (REPO / "docs" / "coca-dev").exists()
    assert rds.main([str(tmp_path / "missing"), "--out", str(tmp_path / "dev")]) == 2
    assert "not found" in capsys.readouterr().err


def test_path_rule():
    assert rds.gated_part(["data", "deidentified_nongated", "1"]) is None
    assert rds.gated_part(["real-dev", "coca-nongated"]) is None
    assert rds.gated_part(["x", "Gated_release_final"]) == "Gated_release_final"
    assert rds.gated_part(["cohort-gated"]) == "cohort-gated"
    assert rds.safe_member_path("mini_dataset/deidentified_nongated/1/a.dcm").parts == ("1", "a.dcm")
    assert rds.safe_member_path("mini_dataset/Gated_release_final/p/0/x.dcm") is None
    assert rds.safe_member_path("mini_dataset/deidentified_nongated/../Gated_release_final/x") is None


# ----------------------------------------------------------------------------- evaluate_real (no model)


def _row(scan, ref, ai, seconds=1.0):
    from training.evaluate_real import KEYS
    from CoronaryCalciumDINOLib.scoring import risk_category

    ref = dict(zip(KEYS, ref))
    ai = dict(zip(KEYS, ai))
    rr, ra = risk_category(ref["total"]), risk_category(ai["total"])
    return {"scan": scan, "id": f"{scan}A", "reference": ref, "ai": ai, "seconds": seconds, "kvp": 120.0,
            "threshold_hu": 130.0, "lesions": 1, "risk": {"reference": rr, "ai": ra, "match": rr == ra}}


def test_evaluate_real_summary_and_table():
    from training import evaluate_real as ev

    rows = [
        _row("1", (0, 0, 0, 0, 0), (0, 0, 0, 12.0, 12.0)),  # calcium-free, one false positive
        _row("2", (0, 100.0, 60.0, 0, 160.0), (0, 150.0, 10.0, 0, 160.0)),
        {"scan": "3", "id": "3A", "error": "boom"},
    ]
    s = ev.summarise(rows)
    assert s["risk_category_right"] == {"k": 1, "n": 2}
    assert s["arteries_ref_ge_50_within_0.5x_2x"] == {"k": 1, "n": 2}
    assert s["arteries_ref_0_ai_below_10"] == {"k": 5, "n": 6}
    assert s["calcium_free_scans"] == 1 and s["false_positive_agatston_on_calcium_free_scans"] == 12.0
    # right artery at most: min(ref, AI) per artery (100 LAD + 10 LCX) over the AI total (12 + 160)
    assert s["ai_agatston_on_the_right_artery_at_most"] == round(110.0 / 172.0, 4)
    doc = {"model": {"name": "m", "version": "1", "sha256": "0" * 64}, "kvp_option": "auto", "cpu": "cpu",
           "torch_threads": 1, "date": "d", "command": "python training/evaluate_real.py", "scans": rows, "summary": s}
    md = ev.markdown(doc)
    assert "| 2 (2A) | 120 | 0.0 / 0.0 | 100.0 / 150.0 | 60.0 / 10.0 |" in md
    assert "failed: boom" in md and "risk category right: 1 of 2" in md
    assert "AI Agatston on the right artery: at most 64 %" in md
    assert ev.sheet_dir_problem(ev.REPO / "docs" / "sheet") is not None
    assert ev.sheet_dir_problem(ev.REPO / "real-dev" / "sheet") is None


def test_evaluate_real_says_where_each_scans_names_came_from_and_what_the_check_found():
    from CoronaryCalciumDINOLib.pipeline.naming import NamingCheck
    from training import evaluate_real as ev

    rows = [_row(str(k), (0, 100.0, 0, 0, 100.0), (0, 100.0, 0, 0, 100.0)) for k in range(1, 6)]
    rows[0]["names_from"] = "aorta"
    rows[0]["names_check"] = NamingCheck(400, False, 20, False, 0, 0).as_dict()
    rows[1]["names_from"] = "segmenter: the aorta disagrees"
    rows[1]["names_check"] = NamingCheck(400, False, 300, True, 300, 120).as_dict()
    rows[2]["names_from"] = "aorta"
    rows[2]["names_check"] = NamingCheck(50, True, 10, True, 50, 0).as_dict()
    rows[3]["names_from"], rows[3]["names_check"] = "segmenter: no aorta found", None
    doc = {"model": {"name": "m", "version": "1", "sha256": "0" * 64}, "kvp_option": "auto", "cpu": "cpu",
           "torch_threads": 1, "date": "d", "command": "c", "scans": rows, "summary": ev.summarise(rows)}
    md = ev.markdown(doc)
    assert "- scan 1: from the aorta (the segmenter sure of the side of 5 % of 400 voxels: no check made)" in md
    assert "- scan 2: segmenter: the aorta disagrees (the segmenter sure of the side of 75 % of 400 voxels; " \
           "the sides disagree on 40 %)" in md
    assert "- scan 3: from the aorta (all 50 voxels near the root checked, sure or not; the sides disagree on 0 %)" in md
    assert "- scan 4: segmenter: no aorta found\n" in md and "- scan 5:" not in md
    doc["scans"] = rows[4:]
    assert "## Artery names" not in ev.markdown(doc)


def test_evaluate_real_sheet(tmp_path):
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace

    from CoronaryCalciumDINOLib.scoring import score
    from training import evaluate_real as ev

    ct, lab = hand_scored_ct()
    res = SimpleNamespace(score=score(ct.hu, lab, ct.spacing, keep_lesion_voxels=True))
    row = _row("9", (0, 30.0, 0, 0, 30.0), (0, 20.0, 0, 9.0, 29.0))
    path = ev.write_sheet(ct, res, row, tmp_path / "9.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = SimpleNamespace(score=score(ct.hu, np.zeros_like(lab), ct.spacing, keep_lesion_voxels=True))
    assert ev.write_sheet(ct, empty, row, tmp_path / "empty.png").is_file()


def test_evaluate_real_scores_what_the_ai_left_unlabelled_by_stage_and_shows_it(tmp_path):
    """The candidates in the heart region by what became of them (the pipeline's
    candidate_outcomes): each stage's candidates scored as one artery, in a table; the
    largest turned-down lesions on the contact sheet."""
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace

    from CoronaryCalciumDINOLib.pipeline.inference import OUTCOME_CODE as code
    from CoronaryCalciumDINOLib.scoring import ScoringParams, score
    from training import evaluate_real as ev

    ct, lab = hand_scored_ct()  # LAD 10 + 10 (slices 2, 3), RCA 9 (slice 4)
    ct.hu[0, 50:52, 50:52] = 250.0  # 1 mm^2 x weight 2 on slice 0
    ct.hu[5, 50:60, 5:15] = 800.0  # bone, outside the region
    out = np.zeros(ct.shape, np.uint8)
    out[lab == 2] = code["labelled"]
    out[lab == 4] = code["segmenter"]
    out[0, 50:52, 50:52] = code["detector"]
    out[5, 50:60, 5:15] = code["region"]
    scores = ev.outcome_scores(ct, out, ScoringParams())
    assert {k: v.total.agatston for k, v in scores.items()} == pytest.approx(
        {"labelled": 20.0, "detector": 2.0, "noise": 0.0, "segmenter": 9.0})
    down = ev.turned_down_lesions(scores)
    assert [(stage, les.slice, les.agatston) for stage, les, _ in down] == [("segmenter", 4, 9.0), ("detector", 0, 2.0)]
    assert [v.size for _, _, v in down] == [9, 4]

    rows = [_row("2", (0, 20.0, 0, 0, 20.0), (0, 20.0, 0, 0, 20.0)), _row("3", (0, 0, 0, 0, 0), (0, 0, 0, 0, 0))]
    rows[0]["all_in_region"] = 31.0
    rows[0]["by_outcome"] = {k: v.total.agatston for k, v in scores.items()}
    doc = {"model": {"name": "m", "version": "1", "sha256": "0" * 64}, "kvp_option": "auto", "cpu": "cpu",
           "torch_threads": 1, "date": "d", "command": "c", "scans": rows, "summary": ev.summarise(rows)}
    md = ev.markdown(doc)
    assert "## What the AI left unlabelled" in md
    assert "| scan | all in region | labelled | detector | noise rule | segmenter |" in md
    assert "| 2 (2A) | 31.0 | 20.0 | 2.0 | 0.0 | 9.0 |" in md and "| 3 (3A) | -" not in md
    rows[0].pop("by_outcome")
    assert "## What the AI left unlabelled" not in ev.markdown(doc)

    res = SimpleNamespace(score=score(ct.hu, lab, ct.spacing, keep_lesion_voxels=True))
    path = ev.write_sheet(ct, res, rows[0], tmp_path / "2.png", turned_down=down)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = SimpleNamespace(score=score(ct.hu, np.zeros_like(lab), ct.spacing, keep_lesion_voxels=True))
    assert ev.write_sheet(ct, empty, rows[0], tmp_path / "empty.png", turned_down=down).is_file()


def test_heart_centred_geometry():
    """--heart-centred: a 200 mm field of 0.4 mm pixels, 3 mm slices, centred on the heart
    (the HU localiser on the slices a cardiac scan would hold), over those slices; HU
    carried over, not invented."""
    from CoronaryCalciumDINOLib.pipeline.anatomy import heart_centre
    from CoronaryCalciumDINOLib.pipeline.inference import locate, orient
    from CoronaryCalciumDINOLib.synth import generate_study
    from training import evaluate_real as ev

    ct = generate_study(5, matrix=256, n_slices=24, plaques=False).ct  # 2.5-3 mm slices, ~1 mm pixels
    view, _ = orient(ct, np.asarray(ct.hu, np.float32))
    _, (z0, z1) = locate(view.hu, ct.spacing)
    fy, fx = heart_centre(view.hu[z0:z1], ct.spacing)
    cy, cx = int(round(fy)), int(round(fx))
    hu = np.asarray(ct.hu, np.float32).copy()
    hu[z0, cy - 1:cy + 2, cx - 1:cx + 2] = 3000.0  # a marker at the heart's centre, lowest slice
    ct.hu = hu
    out = ev.heart_centred(ct)
    assert out.spacing == (3.0, 0.4, 0.4) and out.shape[1:] == (500, 500) and out.kvp == ct.kvp
    assert out.shape[0] == int(np.floor((z1 - z0 - 1) * ct.spacing[0] / 3.0 + 1e-6)) + 1
    k, y, x = np.unravel_index(int(np.argmax(out.hu)), out.shape)
    assert k == 0 and abs(y - 249.5) * 0.4 <= 1.5 * ct.spacing[1] and abs(x - 249.5) * 0.4 <= 1.5 * ct.spacing[2]
    assert out.hu.max() > 2000.0 and -1100.0 <= out.hu.min()
    assert np.allclose(out.direction, np.eye(3))


def test_heart_centred_geometry_ends_above_the_heart_where_asked(capsys):
    """--above-heart MM: the heart-centred scan ends MM above its top heart level (a gated
    scan that starts lower down); refused without --heart-centred."""
    from CoronaryCalciumDINOLib.pipeline.inference import locate, orient
    from CoronaryCalciumDINOLib.synth import generate_study
    from training import evaluate_real as ev

    ct = generate_study(5, matrix=256, n_slices=48, plaques=False).ct
    view, _ = orient(ct, np.asarray(ct.hu, np.float32))
    anatomy, (z0, z1) = locate(view.hu, ct.spacing)
    top_mm = anatomy.heart_levels[1] * ct.spacing[0]  # above slice z0
    whole = ev.heart_centred(ct)
    for above in (20.0, 5.0):
        out = ev.heart_centred(ct, above_heart_mm=above)
        last_mm = (out.shape[0] - 1) * 3.0
        assert top_mm + above - 3.0 < last_mm <= top_mm + above
        np.testing.assert_array_equal(out.hu, whole.hu[: out.shape[0]])
    assert ev.main(["--above-heart", "20"]) == 2
    assert "--above-heart needs --heart-centred" in capsys.readouterr().err


def test_heart_centred_geometry_off_centre_and_another_field(capsys):
    """--off-centre BACK,LEFT moves the field's centre from the heart's towards the patient's
    back and left (a field centred by eye); --fov / --pixel give another field. The same
    tissue then lies that many mm the other way in the image; refused without
    --heart-centred or with a malformed value."""
    from CoronaryCalciumDINOLib.synth import generate_study
    from training import evaluate_real as ev

    ct = generate_study(5, matrix=256, n_slices=24, plaques=False).ct
    centred = ev.heart_centred(ct, fov_mm=160.0, pixel_mm=0.5)
    moved = ev.heart_centred(ct, fov_mm=160.0, pixel_mm=0.5, off_centre_mm=(20.0, -10.0))
    assert centred.shape[1:] == moved.shape[1:] == (320, 320) and moved.spacing == (3.0, 0.5, 0.5)
    # 20 mm back and 10 mm right: the tissue at the centred field's (y, x) is at (y - 40, x + 20)
    np.testing.assert_allclose(moved.hu[:, :280, 20:], centred.hu[:, 40:, :300], atol=1e-3)
    for argv, message in ((["--off-centre=-25,-25"], "need --heart-centred"),
                          (["--heart-centred", "--off-centre", "3"], "two numbers BACK,LEFT"),
                          (["--heart-centred", "--off-centre", "a,b"], "two numbers BACK,LEFT"),
                          (["--fov", "180"], "need --heart-centred"),
                          (["--heart-centred", "--pixel", "0"], "must be > 0 mm")):
        assert ev.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_noise_is_added_to_the_level_the_pipeline_measures():
    """evaluate_real_noise: correlated noise brings the noise slice_noise measures to the
    level asked (never lowers it), the same draw for the same seed, the anatomy untouched on
    average."""
    from CoronaryCalciumDINOLib.synth import generate_study
    from training import evaluate_real_noise as ev

    ct = generate_study(5, matrix=256, n_slices=16, plaques=False).ct
    before = ev.measured_noise(np.asarray(ct.hu, np.float32), ct.spacing)
    info: dict = {}
    noisy = ev.with_noise(ct, before + 25.0, seed=4, info=info)
    assert info["noise_before_hu"] == pytest.approx(before, abs=0.01)
    assert info["noise_after_hu"] == pytest.approx(before + 25.0, rel=0.1)
    assert abs(float(np.mean(noisy.hu - ct.hu))) < 1.0 and noisy.spacing == ct.spacing and noisy.kvp == ct.kvp
    np.testing.assert_array_equal(noisy.hu, ev.with_noise(ct, before + 25.0, seed=4, info={}).hu)
    assert not np.array_equal(noisy.hu, ev.with_noise(ct, before + 25.0, seed=5, info={}).hu)
    np.testing.assert_array_equal(ev.with_noise(ct, before / 2, seed=4, info={}).hu, ct.hu)  # already noisier


def test_noise_table_and_refusals(capsys):
    from training import evaluate_real_noise as ev

    runs = []
    for level, totals in ((0.0, (0.0, 0.0, 50.0)), (30.0, (8.0, 0.0, 20.0))):
        for seed, total in enumerate(totals[1:]):
            for scan, ref, ai in (("1", (0, 0, 0, 0, 0), (0, 0, 0, totals[0], totals[0])),
                                  ("2", (0, 40.0, 0, 0, 40.0), (0, total, 0, 0, total))):
                row = _row(scan, ref, ai)
                row.update(level=level, seed=seed, noise_before_hu=10.0, noise_after_hu=max(level, 10.0),
                           named_from_aorta=scan == "2",
                           names_check={"check_made": not (level and seed == 0)} if scan == "2" else None)
                runs.append(row)
    summary = ev.level_summaries(runs, [0.0, 30.0], 2)
    assert [s["calcium_free_zero"] for s in summary["30"]] == [0, 0] and summary["0"][1]["risk_category_right"]["k"] == 2
    doc = {"model": {"name": "m", "version": "1", "sha256": "0" * 64}, "cpu": "cpu", "date": "d", "seconds": 1.0,
           "command": "python training/evaluate_real_noise.py", "levels": [0.0, 30.0], "seeds": 2, "runs": runs,
           "summary": summary}
    md = ev.markdown(doc)
    assert "| 2 (2A) | 40 | 30 | 10 (0-20) | 0 / 10 / 0 / 0 | 1 of 2 | 2 of 2 (1 unchecked) |" in md
    assert "| 2 (2A) | 40 | 10 | 25 (0-50) | 0 / 25 / 0 / 0 | 1 of 2 | 2 of 2 |" in md
    assert "| 1 (1A) | 0 | 30 | 8 (8-8) | 0 / 0 / 0 / 8 | 0 of 2 | 0 of 2 |" in md
    assert "| 1 (1A) | 0 | 10 | 0 (0-0) | 0 / 0 / 0 / 0 | 2 of 2 | - |" in md  # no lesion: nothing named
    # per level: risk right per seed; calcium-free scans at 0 per seed; right artery at most (range)
    assert "| 0 | 1 of 2, 2 of 2 | 1 of 1, 1 of 1 | 80-80 % |" in md
    assert "| 30 | 0 of 2, 1 of 2 | 0 of 1, 0 of 1 | 0-71 % |" in md
    assert "What the AI left unlabelled" not in md  # rows without the stages: no such table
    # what the AI left unlabelled: means over the draws of each scan and level
    for r in runs:
        labelled = r["ai"]["total"]
        r["all_in_region"] = labelled + 4.0 + 2.0 * r["seed"]
        r["by_outcome"] = {"labelled": labelled, "detector": 4.0, "noise": 2.0 * r["seed"], "segmenter": 0.0}
    md = ev.markdown(doc)
    assert "## What the AI left unlabelled (means over the draws)" in md
    assert "| scan | noise (HU) | all in region | labelled | detector | noise rule | segmenter |" in md
    assert "| 2 (2A) | 30 | 15 | 10 | 4 | 1 | 0 |" in md and "| 1 (1A) | 10 | 5 | 0 | 4 | 1 | 0 |" in md
    for bad in ("20,-5", "abc"):
        assert ev.main(["--levels", bad]) == 2
        assert f"--levels '{bad}'" in capsys.readouterr().err
    assert ev.main(["--seeds", "0"]) == 2
