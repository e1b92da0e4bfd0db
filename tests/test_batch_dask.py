"""``ccdino batch`` on Dask: a real local cluster of 2 worker processes (one thread each).

Faults are injected into the worker processes (never into the client): a study that stops
on a worker right before its JSON (its segmentation and picture written) until the test
kills that worker with SIGKILL or lets it go on, and a study that kills every worker that
scores it. The scores come from label maps (the hand-scored CT of ``shared_data``: Agatston
29 per study), so that the studies themselves take a fraction of a second.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from distributed import Client  # noqa: E402
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

import CoronaryCalciumDINOLib  # noqa: E402
from CoronaryCalciumDINOLib.batch import SUMMARY_COLUMNS, run_batch  # noqa: E402
from CoronaryCalciumDINOLib.batch_dask import local_cluster  # noqa: E402
from CoronaryCalciumDINOLib.cli import main as cli_main  # noqa: E402
from CoronaryCalciumDINOLib.errors import InputError  # noqa: E402
from CoronaryCalciumDINOLib.io.segfile import read_seg_nrrd  # noqa: E402
from CoronaryCalciumDINOLib.io.volume import write_volume  # noqa: E402
from shared_data import hand_scored_ct  # noqa: E402

NAMES = [f"s{i}" for i in range(4)]
LIB_PARENT = Path(CoronaryCalciumDINOLib.__file__).resolve().parents[1]


def _studies(tmp: Path, names=NAMES) -> tuple[Path, Path]:
    inp, labels = tmp / "in", tmp / "labels"
    inp.mkdir()
    labels.mkdir()
    ct, lab = hand_scored_ct()
    for name in names:
        write_volume(ct.hu.astype(np.int16), ct, inp / f"{name}.nrrd")
        write_volume(lab, ct, labels / f"{name}.nrrd")
    return inp, labels


def _summary(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_one_complete_report_each(out: Path, names, summary: str = "summary.csv", failed=()) -> None:
    """Every study of ``names`` has exactly its three files, each complete, and an ``ok`` row;
    the studies ``failed`` have an error row and no file; nothing else is left (no temporary
    file, no run marker, no half set of outputs); the summary agrees with the JSONs."""
    expected = sorted([f"{n}{ext}" for n in names for ext in (".json", ".png", ".seg.nrrd")] + [summary])
    assert sorted(p.name for p in out.iterdir()) == expected
    rows = _summary(out / summary)
    assert list(rows[0]) == list(SUMMARY_COLUMNS)
    assert [r["study"] for r in rows] == sorted([*names, *failed])
    for row in rows:
        if row["study"] in failed:
            assert row["status"] == "error" and row["error"] and row["agatston_total"] == "", row
            continue
        report = json.loads((out / f"{row['study']}.json").read_text())
        assert row["status"] == "ok", row
        assert float(row["agatston_total"]) == pytest.approx(report["total"]["agatston"]) == pytest.approx(29.0)
        assert int(row["lesions"]) == report["total"]["lesions"] == 3
        png = (out / f"{row['study']}.png").read_bytes()
        assert png[:4] == b"\x89PNG" and png[-8:-4] == b"IEND"  # written to its end
        seg, _, _ = read_seg_nrrd(out / f"{row['study']}.seg.nrrd")
        assert int((seg == 2).sum()) == 40 and int((seg == 4).sum()) == 9


def _stamps(out: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}


@pytest.fixture()
def cluster():
    """A local cluster as ``ccdino batch --workers 2`` starts it (same settings), kept by the
    test so that it can reach the workers."""
    c = local_cluster(2)
    try:
        yield c
    finally:
        c.close()


# --------------------------------------------------------------------------- faults on the workers


def _stall_before_json(study: str, control: str) -> None:
    """On a worker (``client.run``): the first attempt at ``study``, on any worker, writes
    its segmentation and picture, then its JSON to the temporary file of the atomic write,
    and, before renaming it, writes ``control/ticket`` (its process id) and waits for
    ``control/release`` (at most 120 s). Later attempts pass."""
    import CoronaryCalciumDINOLib.io.jsonfile as jsonfile
    from CoronaryCalciumDINOLib.io.atomic import atomic_path

    real = jsonfile.write_text_atomic
    control_dir = Path(control)

    def write_text_atomic(path, text):
        if Path(path).name != f"{study}.json":
            return real(path, text)
        try:
            os.close(os.open(control_dir / "claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return real(path, text)
        with atomic_path(path) as tmp:  # as write_text_atomic does, with a pause before the rename
            tmp.write_text(text, encoding="utf-8")
            (control_dir / "ticket.tmp").write_text(str(os.getpid()))
            os.replace(control_dir / "ticket.tmp", control_dir / "ticket")
            deadline = time.time() + 120
            while not (control_dir / "release").exists() and time.time() < deadline:
                time.sleep(0.02)
        return Path(path)

    jsonfile.write_text_atomic = write_text_atomic


class _KillWorkersScoring(WorkerPlugin):
    """Every worker, also one started again after a death: scoring ``study`` kills the worker
    (SIGKILL) right before the study's JSON."""

    def __init__(self, study: str) -> None:
        self.study = study

    def setup(self, worker) -> None:
        import CoronaryCalciumDINOLib.batch as batch

        real, study = batch.write_json, self.study

        def write_json(report, path):
            if Path(path).name == f"{study}.json":
                os.kill(os.getpid(), signal.SIGKILL)
            return real(report, path)

        batch.write_json = write_json


def _wait_for(path: Path, timeout: float = 90.0) -> Path:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- tests


def test_local_cluster_scores_every_study_once_and_a_second_run_redoes_nothing(tmp_path, capsys, caplog):
    inp, labels = _studies(tmp_path)
    (inp / "broken").mkdir()  # a study without images: its error row, the batch goes on
    out = tmp_path / "out"
    seen: list[str] = []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # as the CLI runs without --verbose (caplog's handler takes every level)
    try:
        rows = run_batch(inp, out, workers=2, labels_dir=labels, progress=lambda f, m: seen.append(m))
    finally:
        root.setLevel(level)
    # the local cluster's own chatter (scheduler, nannies: INFO lines) is not printed
    chatter = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
               if r.name.split(".")[0] == "distributed" and r.levelno < logging.ERROR]
    assert chatter == []
    assert seen[0] == f"scoring {len(NAMES) + 1} studies on a local Dask cluster of 2 worker processes"
    done = sorted(m.split(":")[0] for m in seen[1:])
    assert done == sorted([*NAMES, "broken"])  # each study ended once
    assert [r["study"] for r in rows] == ["broken", *NAMES]
    assert rows[0]["status"] == "error" and "no readable DICOM" in rows[0]["error"]
    assert all(r["status"] == "ok" for r in rows[1:])
    _assert_one_complete_report_each(out, NAMES, failed=["broken"])
    (inp / "broken").rmdir()
    serial = run_batch(inp, tmp_path / "serial", labels_dir=labels)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows[1:]) == strip(serial)  # the same results as in one process
    stamps = _stamps(out)

    capsys.readouterr()
    assert cli_main(["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert f"{len(NAMES)} of {len(NAMES)} studies already done (skipped)" in err
    assert "Dask" not in err  # no cluster was started
    assert {k: v for k, v in _stamps(out).items() if k != "summary.csv"} == {
        k: v for k, v in stamps.items() if k != "summary.csv"}


def test_shard_runs_on_the_cluster_through_the_same_path(tmp_path, capsys):
    inp, labels = _studies(tmp_path)
    out = tmp_path / "out"
    assert cli_main(["batch", str(inp), "--out", str(out), "--labels-dir", str(labels), "--workers", "2",
                     "--shard", "1/2"]) == 0
    assert "on a local Dask cluster of 2 worker processes" in capsys.readouterr().err
    _assert_one_complete_report_each(out, NAMES[1::2], "summary-shard-1-of-2.csv")


def test_a_worker_killed_mid_study_loses_nothing(tmp_path, cluster):
    """SIGKILL of the worker that has written a study's segmentation and picture and its JSON
    to a temporary file, not yet renamed: that study is scored again elsewhere, the other worker's studies are kept,
    every study ends with exactly one complete report and the summary agrees; a second run
    scores nothing again."""
    inp, labels = _studies(tmp_path)
    out, control = tmp_path / "out", tmp_path / "control"
    control.mkdir()
    with Client(cluster) as client:
        client.run(_stall_before_json, "s2", str(control))
        workers_before = set(client.run(os.getpid).values())
    seen: dict = {}

    def kill_the_stalled_worker():
        pid = int(_wait_for(control / "ticket").read_text())
        seen["half-written"] = sorted(p.name for p in out.glob("s2.*"))
        seen["temporary"] = sorted(p.name for p in out.glob(".s2.*"))
        os.kill(pid, signal.SIGKILL)
        seen["killed"] = pid

    killer = threading.Thread(target=kill_the_stalled_worker, daemon=True)
    killer.start()
    rows = run_batch(inp, out, labels_dir=labels, scheduler=cluster.scheduler_address)
    killer.join(timeout=5)
    # killed mid-study: its JSON written to the temporary file, not renamed
    assert seen["half-written"] == ["s2.png", "s2.seg.nrrd"]
    assert seen["temporary"] == [f".s2.json.tmp-{seen['killed']}"]
    assert seen["killed"] in workers_before and not _alive(seen["killed"])
    assert [r["status"] for r in rows] == ["ok"] * len(NAMES), rows
    _assert_one_complete_report_each(out, NAMES)
    with Client(cluster) as client:  # the nanny started the killed worker again
        client.wait_for_workers(2, timeout=60)
        workers_after = set(client.run(os.getpid).values())
    assert seen["killed"] not in workers_after and len(workers_before & workers_after) == 1

    stamps = _stamps(out)
    seen_again: list[str] = []
    rows = run_batch(inp, out, labels_dir=labels, scheduler=cluster.scheduler_address,
                     progress=lambda f, m: seen_again.append(m))
    assert seen_again == [f"{len(NAMES)} of {len(NAMES)} studies already done (skipped)"]
    assert [r["status"] for r in rows] == ["ok"] * len(NAMES)
    assert {k: v for k, v in _stamps(out).items() if k != "summary.csv"} == {
        k: v for k, v in stamps.items() if k != "summary.csv"}


def test_a_study_that_kills_every_worker_is_an_error_row_and_the_batch_goes_on(tmp_path, cluster):
    inp, labels = _studies(tmp_path)
    out = tmp_path / "out"
    with Client(cluster) as client:
        client.register_plugin(_KillWorkersScoring("s1"))
    rows = run_batch(inp, out, labels_dir=labels, scheduler=cluster.scheduler_address)
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok"], rows
    assert "died each time it was tried" in rows[1]["error"] and "\n" not in rows[1]["error"]
    # no half set of its outputs, no temporary file of the dead workers
    _assert_one_complete_report_each(out, ["s0", "s2", "s3"], failed=["s1"])


def test_a_second_run_over_the_same_folder_is_refused_while_one_runs(tmp_path, cluster):
    inp, labels = _studies(tmp_path, NAMES[:3])
    out, control = tmp_path / "out", tmp_path / "control"
    control.mkdir()
    with Client(cluster) as client:
        client.run(_stall_before_json, "s1", str(control))
    result: dict = {}

    def first_run():
        try:
            result["rows"] = run_batch(inp, out, labels_dir=labels, scheduler=cluster.scheduler_address)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    runner = threading.Thread(target=first_run, daemon=True)
    runner.start()
    try:
        _wait_for(control / "ticket")  # the first run is mid-study
        env = dict(os.environ, PYTHONPATH=str(LIB_PARENT))
        proc = subprocess.run([sys.executable, "-m", "CoronaryCalciumDINOLib.cli", "batch", str(inp), "--out", str(out),
                               "--labels-dir", str(labels), "--workers", "2"], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("ccdino: error: output folder"), err
        assert "in use by another ccdino batch" in err
        with pytest.raises(InputError, match="in use by another batch run of this process"):
            run_batch(inp, out, labels_dir=labels)  # from this process too
        assert not (out / "s1.json").exists()  # the refused runs did not score it
        assert run_batch(inp, tmp_path / "elsewhere", labels_dir=labels)[1]["status"] == "ok"  # another folder is free
    finally:
        (control / "release").touch()
        runner.join(timeout=120)
    assert "error" not in result, result.get("error")
    assert [r["status"] for r in result["rows"]] == ["ok"] * 3
    _assert_one_complete_report_each(out, NAMES[:3])


def test_without_dask_several_workers_are_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    inp, labels = _studies(tmp_path, NAMES[:2])
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    for extra in (["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:8786"]):
        code = cli_main(["batch", str(inp), "--out", str(tmp_path / "new" / "out"), "--labels-dir", str(labels),
                         *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "pip install 'coronary-calcium-dino[cluster]'" in err, err
        assert not (tmp_path / "new").exists()
    # one process needs no Dask
    assert cli_main(["batch", str(inp), "--out", str(tmp_path / "out"), "--labels-dir", str(labels), "--quiet"]) == 0


def test_bad_scheduler_and_workers_with_scheduler_are_one_line(tmp_path, capsys):
    import dask

    inp, labels = _studies(tmp_path, NAMES[:2])
    args = ["batch", str(inp), "--out", str(tmp_path / "new" / "out"), "--labels-dir", str(labels)]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert cli_main([*args, "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot reach the Dask scheduler 'tcp://127.0.0.1:9'" in err, err
    assert not (tmp_path / "new").exists()  # the folder it created is removed again
    assert cli_main([*args, "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--workers" in err and "--scheduler" in err


@pytest.mark.slow
def test_default_model_on_the_cluster_gives_the_results_of_one_process(tmp_path):
    """The AI path: each worker loads the default model once; the reports equal those of a
    batch in one process."""
    inp, _ = _studies(tmp_path, NAMES[:3])
    on_dask = run_batch(inp, tmp_path / "dask", workers=2, device="cpu")
    serial = run_batch(inp, tmp_path / "serial", device="cpu")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert [r["status"] for r in on_dask] == ["ok"] * 3, on_dask
    assert strip(on_dask) == strip(serial)
    for name in NAMES[:3]:
        a = json.loads((tmp_path / "dask" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "serial" / f"{name}.json").read_text())
        assert a["scored_with"] == b["scored_with"] and a["model"] == b["model"]
        assert a["arteries"] == b["arteries"] and a["slices"] == b["slices"]


def test_dask_is_the_cluster_extra_and_in_the_test_extra():
    tomllib = pytest.importorskip("tomllib")
    from CoronaryCalciumDINOLib.batch_dask import EXTRA

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert [r.split(">")[0] for r in extras[EXTRA]] == ["dask[distributed]"]
    assert extras[EXTRA][0] in extras["test"]


def test_the_number_of_studies_in_flight_is_bounded(tmp_path, cluster):
    inp, labels = _studies(tmp_path)
    with Client(cluster) as client:
        def in_flight() -> int:  # studies waiting or running on the cluster (not those finished)
            return client.run_on_scheduler(lambda dask_scheduler: sum(
                1 for k, ts in dask_scheduler.tasks.items()
                if str(k).startswith("ccdino-study-") and ts.state in ("waiting", "queued", "no-worker", "processing")))

        counts: list[int] = []
        rows = run_batch(inp, tmp_path / "out", labels_dir=labels, scheduler=cluster.scheduler_address,
                         max_in_flight=2, progress=lambda f, m: counts.append(in_flight()))
    assert [r["status"] for r in rows] == ["ok"] * len(NAMES)
    assert len(counts) == 1 + len(NAMES) and counts[0] == 0 and max(counts) <= 2  # never more than 2 sent
    _assert_one_complete_report_each(tmp_path / "out", NAMES)
