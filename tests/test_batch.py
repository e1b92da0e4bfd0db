"""Batch scoring: outputs per study, summary table, errors, resuming, sharding, workers.

Scores of the synthetic study are derived by hand from the Agatston definition.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib.batch import SUMMARY_COLUMNS, parse_shard, run_batch
from CoronaryCalciumDINOLib.data.studies import list_study_inputs
from CoronaryCalciumDINOLib.cli import main as cli_main
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io.segfile import read_seg_nrrd
from CoronaryCalciumDINOLib.io.volume import CTVolume, write_volume
from shared_data import hand_scored_ct, phantom_files_by_z



def _synthetic(tmp: Path, name: str, labels_dir: Path) -> None:
    """The hand-scorable CT (:func:`shared_data.hand_scored_ct`: Agatston 29, 36.75 mm^3,
    3 lesions) as ``tmp/<name>.nrrd`` with its labels in ``labels_dir``."""
    ct, lab = hand_scored_ct()
    write_volume(ct.hu.astype(np.int16), ct, tmp / f"{name}.nrrd")
    write_volume(lab, ct, labels_dir / f"{name}.nrrd")


def _phantom_study(tmp: Path, name: str, labels_dir: Path) -> None:
    """Four phantom slices as a DICOM sub-folder, with an all-background label map."""
    folder = tmp / name
    folder.mkdir()
    for f in phantom_files_by_z()[20:24]:
        shutil.copy(f, folder / f.name)
    from CoronaryCalciumDINOLib.io import load_ct

    ct = load_ct(folder)
    write_volume(np.zeros(ct.shape, np.uint8), ct, labels_dir / f"{name}.nii.gz")


@pytest.fixture()
def batch_input(tmp_path):
    inp, labels = tmp_path / "in", tmp_path / "labels"
    inp.mkdir()
    labels.mkdir()
    _synthetic(inp, "a", labels)
    _phantom_study(inp, "b", labels)
    (inp / "c").mkdir()
    (inp / "c" / "README").write_text("no images here")  # a study folder without DICOM
    _synthetic(inp, "d", tmp_path)  # a volume whose label map is missing from labels/
    (inp / "notes.txt").write_text("ignored")
    return inp, labels


def _summary(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_batch_outputs_summary_and_errors(tmp_path, batch_input, capsys):
    inp, labels = batch_input
    out = tmp_path / "out"
    code = cli_main(["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--quiet"])
    assert code == 1  # studies c and d fail
    err = capsys.readouterr().err
    assert "study c failed" in err and "study d failed" in err

    rows = _summary(out / "summary.csv")
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    assert [r["study"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    assert "no readable DICOM" in rows[2]["error"] and "no label map" in rows[3]["error"]
    a = rows[0]
    assert float(a["agatston_LAD"]) == pytest.approx(20.0)
    assert float(a["agatston_RCA"]) == pytest.approx(9.0)
    assert float(a["agatston_LM"]) == 0 and float(a["agatston_LCX"]) == 0
    assert float(a["agatston_total"]) == pytest.approx(29.0)
    assert float(a["volume_mm3"]) == pytest.approx(36.75)
    assert a["mass_mg"] == "" and a["lesions"] == "3"
    assert a["risk_category"] == "11-100" and a["cac_drs"] == "A1/N2"
    assert float(a["seconds"]) > 0
    assert rows[1]["agatston_total"] == "0.0" and rows[1]["cac_drs"] == "A0"

    for study in ("a", "b"):
        assert (out / f"{study}.png").read_bytes()[:4] == b"\x89PNG"
        report = json.loads((out / f"{study}.json").read_text())
        assert report["study"] == study and report["labels"].startswith(str(labels))
    report = json.loads((out / "a.json").read_text())
    assert report["total"]["agatston"] == pytest.approx(29.0)
    seg, names, geom = read_seg_nrrd(out / "a.seg.nrrd")
    assert names == ["LM", "LAD", "LCX", "RCA"]
    assert int((seg == 2).sum()) == 40 and int((seg == 4).sum()) == 9
    assert geom["spacing"] == pytest.approx((3.0, 0.5, 0.5)) and geom["origin"] == pytest.approx((-16, -16, 100))
    assert not (out / "c.json").exists() and not (out / "d.json").exists()
    assert not list(out.glob(".*"))  # no temporaries left


def test_batch_resumes_and_retries_failed_studies(tmp_path, batch_input):
    inp, labels = batch_input
    out = tmp_path / "out"
    run_batch(inp, out, labels_dir=labels)
    stamp = {s: (out / f"{s}.json").stat().st_mtime_ns for s in ("a", "b")}
    shutil.copy(tmp_path / "d.nrrd", labels / "d.nrrd")  # provide the missing label map
    shutil.rmtree(inp / "c")
    seen = []
    rows = run_batch(inp, out, labels_dir=labels, progress=lambda f, m: seen.append(m))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert seen[0] == "2 of 3 studies already done (skipped)"
    assert len(seen) == 2 and seen[1].startswith("d: ok")  # only d was processed
    assert {s: (out / f"{s}.json").stat().st_mtime_ns for s in ("a", "b")} == stamp
    assert rows[0]["agatston_total"] == pytest.approx(29.0)  # rebuilt from the existing JSON
    assert rows[2]["agatston_total"] == pytest.approx(29.0)
    assert cli_main(["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--quiet"]) == 0
    assert {s: (out / f"{s}.json").stat().st_mtime_ns for s in ("a", "b")} == stamp
    run_batch(inp, out, labels_dir=labels, overwrite=True)
    assert (out / "a.json").stat().st_mtime_ns != stamp["a"]


def test_shards_partition_the_sorted_studies(tmp_path, batch_input, capsys):
    inp, labels = batch_input
    out = tmp_path / "out"
    assert cli_main(["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--shard", "1/2",
                     "--quiet"]) == 1  # b ok, d fails
    rows = _summary(out / "summary-shard-1-of-2.csv")
    assert [r["study"] for r in rows] == ["b", "d"]
    assert not (out / "summary.csv").exists() and not (out / "a.json").exists()
    rows0 = run_batch(inp, out, labels_dir=labels, shard=(0, 2))
    assert [r["study"] for r in rows0] == ["a", "c"]
    capsys.readouterr()
    for bad in ("2/2", "-1/2", "1", "a/b", "0/0"):
        assert cli_main(["batch", str(inp), "--out", str(out), f"--shard={bad}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "shard" in err


def test_parse_shard_and_listing(tmp_path, batch_input):
    inp, _ = batch_input
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4) and parse_shard(None) is None
    with pytest.raises(InputError):
        parse_shard("4/4")
    assert [s.name for s in list_study_inputs(inp)] == ["a", "b", "c", "d"]
    write_volume(np.zeros((2, 2, 2), np.int16), CTVolume(hu=np.zeros((2, 2, 2)), spacing=(1, 1, 1)), inp / "a.mha")
    with pytest.raises(InputError, match="share the study name a"):
        list_study_inputs(inp)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no studies"):
        list_study_inputs(tmp_path / "empty")


def test_two_workers_give_the_same_rows(tmp_path, batch_input):
    inp, labels = batch_input
    serial = run_batch(inp, tmp_path / "s", labels_dir=labels)
    pooled = run_batch(inp, tmp_path / "p", workers=2, labels_dir=labels)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(pooled) == strip(serial)
    assert (tmp_path / "p" / "a.seg.nrrd").is_file() and (tmp_path / "p" / "b.png").is_file()


def test_ai_path_with_a_random_bundle(tmp_path):
    import torch

    from CoronaryCalciumDINOLib.models.bundle import save_random_bundle

    torch.set_num_threads(1)
    bundle = save_random_bundle(tmp_path / "bundle")
    inp = tmp_path / "in"
    inp.mkdir()
    _synthetic(inp, "a", tmp_path)
    rows = run_batch(inp, tmp_path / "out", bundle=bundle, device="cpu")
    assert rows[0]["status"] == "ok", rows[0]["error"]
    report = json.loads((tmp_path / "out" / "a.json").read_text())
    assert len(report["slices"]) == 6 and "model" in report
    assert (tmp_path / "out" / "a.seg.nrrd").is_file() and (tmp_path / "out" / "a.png").is_file()
    assert set(report["scored_with"]) == {"model_sha256", "scoring"}
    assert report["scored_with"]["model_sha256"] == report["model"]["sha256"]
    # the same folder scored from label maps: the AI's report is not taken as that result
    (tmp_path / "labels").mkdir()
    shutil.copy(tmp_path / "a.nrrd", tmp_path / "labels" / "a.nrrd")
    rows = run_batch(inp, tmp_path / "out", labels_dir=tmp_path / "labels")
    assert rows[0]["status"] == "error" and "the model" in rows[0]["error"] and "a.json is kept" in rows[0]["error"]


# --------------------------------------------------------------------------- faults


def _dead_pid() -> int:
    import os

    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_stale_temporaries_are_removed_by_the_next_run(tmp_path, batch_input):
    """A killed run leaves ``.<name>.tmp-<pid>`` files; the next run removes those of dead
    processes (never a file of a process still running)."""
    import os

    inp, labels = batch_input
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    stale = [out / f".a.json.tmp-{dead}", out / f".b.seg.nrrd.tmp-{dead}", out / f".a.seg.nrrd.tmp-{dead}.nii.gz"]
    for p in stale:
        p.write_bytes(b"half")
    live = out / f".x.json.tmp-{os.getppid()}"
    live.write_bytes(b"in flight")
    mine = out / "notes.tmp-1.txt"  # not a temporary of ours (no leading dot)
    mine.write_text("user file")
    run_batch(inp, out, labels_dir=labels)
    assert not any(p.exists() for p in stale)
    assert live.exists() and mine.exists()


def test_temporaries_of_a_batch_on_another_machine_are_left_alone(tmp_path, batch_input):
    """Shards on several machines share one output folder: a process id in a temporary name
    says nothing about another machine, so while another machine's batch (here shard 1/2,
    this run being shard 0/2) marks the folder as in use, only temporaries older than
    STALE_AFTER_S are removed."""
    import os
    import socket
    import time

    from CoronaryCalciumDINOLib.batch import STALE_AFTER_S

    inp, labels = batch_input
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    other = out / f".ccdino-batch-not-{socket.gethostname()}-{dead}.running"  # another machine's live run
    other.write_text('{"shard": [1, 2]}\n')
    theirs = out / f".b.png.tmp-{dead}"  # in flight there (its pid is dead here)
    theirs.write_bytes(b"in flight")
    old = out / f".c.png.tmp-{dead}"
    old.write_bytes(b"left by a run killed long ago")
    long_ago = time.time() - STALE_AFTER_S - 60
    os.utime(old, (long_ago, long_ago))
    mine_dead = out / f".ccdino-batch-{socket.gethostname()}-{dead}.running"  # a killed run of this machine
    mine_dead.touch()
    run_batch(inp, out, labels_dir=labels, shard=(0, 2))
    assert theirs.exists() and other.exists()
    assert not old.exists() and not mine_dead.exists()
    os.utime(other, (long_ago, long_ago))  # that machine's run stopped long ago
    run_batch(inp, out, labels_dir=labels, shard=(0, 2))
    assert not theirs.exists()
    assert [p.name for p in out.glob(".*")] == [other.name]  # this run's own marker is gone


def test_a_second_batch_over_the_same_studies_is_refused(tmp_path, batch_input, capsys):
    """While a live batch marks the output folder, another one over the same studies is one
    line (exit 2) that writes nothing; another shard of the same N may run next to it."""
    import os

    from CoronaryCalciumDINOLib.batch import _host

    inp, labels = batch_input
    out = tmp_path / "out"
    out.mkdir()
    live = out / f".ccdino-batch-{_host()}-{os.getppid()}.running"  # a live process of this machine
    live.write_text('{"shard": null}\n')
    args = ["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--quiet"]
    for extra in ([], ["--shard", "0/2"]):
        assert cli_main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"in use by another ccdino batch (process {os.getppid()} on {_host()})" in err
        assert sorted(p.name for p in out.iterdir()) == [live.name]  # nothing written, nothing removed
    live.write_text('{"shard": [1, 2]}\n')
    assert cli_main([*args, "--shard", "1/3"]) == 2  # may share a study with shard 1/2
    assert "shard 1/2" in capsys.readouterr().err
    assert cli_main([*args, "--shard", "0/2"]) == 1  # a ok, c fails
    assert [r["study"] for r in _summary(out / "summary-shard-0-of-2.csv")] == ["a", "c"]
    assert live.exists()
    live.unlink()  # that run ended
    assert cli_main(args) == 1
    assert [r["study"] for r in _summary(out / "summary.csv")] == ["a", "b", "c", "d"]


def test_non_object_report_json_is_an_error_row(tmp_path, batch_input):
    inp, labels = batch_input
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("[1, 2, 3]\n")
    (out / "b.json").write_text('"just a string"\n')
    rows = run_batch(inp, out, labels_dir=labels)
    assert [r["status"] for r in rows] == ["error", "error", "error", "error"]
    assert "a.json is unreadable" in rows[0]["error"] and "not a report object" in rows[0]["error"]
    assert "b.json is unreadable" in rows[1]["error"]
    assert (out / "summary.csv").is_file()


@pytest.mark.parametrize("kind", ["read-only", "proc", "file", "empty"])
def test_unusable_output_folder_is_one_error_before_any_work(tmp_path, batch_input, capsys, kind):
    import os

    inp, labels = batch_input
    if kind == "read-only":
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
        if os.access(out, os.W_OK):
            pytest.skip("running as a user that may write anywhere (root); the 'proc' case covers it")
    elif kind == "proc":
        out = Path("/proc/self/fdinfo")  # an existing folder nobody may create files in
        if not out.is_dir():
            pytest.skip("no /proc")
    elif kind == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
    else:
        out = ""
    seen = []
    with pytest.raises(InputError) as info:
        run_batch(inp, out, labels_dir=labels, progress=lambda f, m: seen.append(m))
    assert "output folder" in str(info.value) and "\n" not in str(info.value)
    assert seen == []  # nothing was processed
    code = cli_main(["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("ccdino: error:") and "\n" not in err
    if kind == "read-only":
        out.chmod(0o755)


def test_write_failure_of_one_study_is_one_row_and_the_batch_goes_on(tmp_path, batch_input, caplog):
    inp, labels = batch_input
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.seg.nrrd").mkdir()  # the segmentation of a cannot be written there
    rows = run_batch(inp, out, labels_dir=labels)
    assert [r["status"] for r in rows] == ["error", "ok", "error", "error"]
    assert "a.seg.nrrd" in rows[0]["error"] and "\n" not in rows[0]["error"]
    assert "Traceback" not in caplog.text
    assert not (out / "a.png").exists() and not (out / "a.json").exists()
    assert (out / "b.json").is_file()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_full_disk_leaves_no_partial_files(tmp_path, batch_input):
    """Writes fail part-way (a file size limit, as on a full disk): every study gets one
    error line, no temporary or partial output stays, no traceback is printed."""
    import os
    import subprocess
    import sys

    import CoronaryCalciumDINOLib

    inp, labels = batch_input
    env = dict(os.environ, PYTHONPATH=str(Path(CoronaryCalciumDINOLib.__file__).resolve().parents[1]))
    out = tmp_path / "out"
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))\n"
        "from CoronaryCalciumDINOLib.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    res = subprocess.run([sys.executable, "-c", script, "batch", str(inp), "--out", str(out), "--labels-dir",
                          str(labels), "--quiet"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    failed = [line for line in res.stderr.splitlines() if line.startswith("ccdino: study")]
    assert len(failed) == 4 and all("File too large" in line for line in failed[:2]), res.stderr
    left = sorted(p.name for p in out.iterdir())
    assert left == ["summary.csv"], left  # no partial .png, no orphan .seg.nrrd, no temporaries
    rows = _summary(out / "summary.csv")
    assert [r["status"] for r in rows] == ["error"] * 4


# --------------------------------------------------------------------------- what is a study, what is done


def test_a_study_folder_given_as_input_is_one_study(tmp_path):
    """``batch synth/synth-1`` scores synth-1 (as ``score synth/synth-1`` does), not its
    ct, labels and heart volumes as three studies."""
    root = tmp_path / "synth"
    study = root / "synth-1"
    study.mkdir(parents=True)
    _synthetic(study, "ct", tmp_path)  # the CT as synth-1/ct.nrrd, its label map as ct.nrrd next to synth/
    shutil.move(tmp_path / "ct.nrrd", study / "labels.nrrd")
    shutil.copy(study / "labels.nrrd", study / "heart.nrrd")
    studies = list_study_inputs(study)
    assert [s.name for s in studies] == ["synth-1"] and studies[0].path == study / "ct.nrrd"
    rows = run_batch(study, tmp_path / "out", labels_dir=root)
    assert [(r["study"], r["status"]) for r in rows] == [("synth-1", "ok")]
    assert rows[0]["agatston_total"] == pytest.approx(29.0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "summary.csv", "synth-1.json", "synth-1.png", "synth-1.seg.nrrd"]
    assert json.loads((tmp_path / "out" / "synth-1.json").read_text())["input"] == str(study)


def test_output_and_label_folders_inside_the_input_are_not_studies(tmp_path, batch_input, capsys):
    inp, labels = batch_input
    shutil.rmtree(inp / "c")
    (tmp_path / "d.nrrd").rename(labels / "d.nrrd")
    labels = labels.rename(inp / "labels")
    out = inp / "results"
    for _ in range(2):  # the second run finds the output folder there
        code = cli_main(["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--quiet"])
        assert code == 0, capsys.readouterr()
        assert [r["study"] for r in _summary(out / "summary.csv")] == ["a", "b", "d"]
    assert "3 of 3 studies scored" in capsys.readouterr().out


def _json_stamps(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}


def test_resume_reuses_only_reports_scored_with_the_same_settings(tmp_path, batch_input):
    inp, labels = batch_input
    out = tmp_path / "out"
    rows = run_batch(inp, out, labels_dir=labels)
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    stamps = _json_stamps(out)
    assert json.loads((out / "a.json").read_text())["scored_with"] == {
        "labels_dir": str(labels.resolve()),
        "scoring": {"kvp": None, "min_area_mm2": 1.0, "slice_correction": True, "calibration_factor": None,
                    "auto_kvp_required": True}}
    # other scoring options: the old reports are kept and named, not passed off as this run's
    rows = run_batch(inp, out, labels_dir=labels, scoring={"kvp": 100})
    assert [r["status"] for r in rows[:2]] == ["error", "error"]
    assert "a.json is kept" in rows[0]["error"] and "kvp None (now 100.0)" in rows[0]["error"]
    assert rows[0]["agatston_total"] == ""
    # other label maps
    other = tmp_path / "other-labels"
    shutil.copytree(labels, other)
    rows = run_batch(inp, out, labels_dir=other)
    assert rows[0]["status"] == "error" and "the labels in" in rows[0]["error"] and str(other.resolve()) in rows[0]["error"]
    assert _json_stamps(out) == stamps
    # a report written by ``score --out`` is no batch result
    (out / "a.json").unlink()
    assert cli_main(["score", str(inp / "a.nrrd"), "--labels", str(labels / "a.nrrd"), "--out", str(out),
                     "--quiet"]) == 0
    rows = run_batch(inp, out, labels_dir=labels)
    assert rows[0]["status"] == "error" and "does not record what it was scored with" in rows[0]["error"]
    assert rows[1]["status"] == "ok"  # b: same settings, resumed
    assert (out / "b.json").stat().st_mtime_ns == stamps["b.json"]
    # --overwrite scores again with the new options
    rows = run_batch(inp, out, labels_dir=labels, scoring={"kvp": 100}, overwrite=True)
    assert [r["status"] for r in rows[:2]] == ["ok", "ok"]
    assert json.loads((out / "a.json").read_text())["scored_with"]["scoring"]["kvp"] == 100.0
    assert [r["status"] for r in run_batch(inp, out, labels_dir=labels, scoring={"kvp": 100})[:2]] == ["ok", "ok"]


def test_overwrite_removes_old_outputs_of_a_study_that_now_fails(tmp_path, batch_input, capsys):
    inp, labels = batch_input
    out = tmp_path / "out"
    run_batch(inp, out, labels_dir=labels)
    assert (out / "a.json").is_file() and (out / "a.png").is_file() and (out / "a.seg.nrrd").is_file()
    empty = tmp_path / "no-labels"
    empty.mkdir()
    rows = run_batch(inp, out, labels_dir=empty, overwrite=True)
    assert all(r["status"] == "error" for r in rows)
    for s in "abcd":
        assert not list(out.glob(f"{s}.*")), s  # no stale result of an earlier run stays
    code = cli_main(["batch", str(inp), "--out", str(out), "--labels-dir", str(empty), "--quiet"])
    assert code == 1 and "0 of 4 studies scored" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["workers", "input", "labels", "bundle", "no-studies"])
def test_a_batch_refused_before_any_work_leaves_no_output_folder(tmp_path, batch_input, capsys, case):
    inp, labels = batch_input
    out = tmp_path / "new" / "out"
    args = ["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--quiet"]
    if case == "workers":
        args += ["--workers", "0"]
    elif case == "input":
        args[1] = str(tmp_path / "missing")
    elif case == "labels":
        args[5] = str(tmp_path / "missing")
    elif case == "bundle":
        args = ["batch", str(inp), "--out", str(out), "--bundle", str(tmp_path / "missing"), "--quiet"]
    else:
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ccdino: error:") and "\n" not in err
    assert not (tmp_path / "new").exists()
