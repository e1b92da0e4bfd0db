"""Batch scoring of every study in a folder (used by ``ccdino batch`` and headless Slicer).

A *study* is an entry of the input folder, as defined once for every command in
:func:`.data.studies.list_study_inputs`: a DICOM sub-folder, a study folder of the project's
own format (``ct.nrrd``, ``labels.nrrd``, ...) or a volume file (:data:`.filenames.VOLUME_SUFFIXES`);
an input folder that is itself a study folder is that one study. Hidden entries, other
files, ``.seg.nrrd`` files and the output and label folders are ignored. Studies are
processed in sorted name order. Per study ``<out>/<study>.seg.nrrd`` (Slicer segmentation),
``<out>/<study>.png`` (report picture) and ``<out>/<study>.json`` (the report, written
last) are written, each atomically; the run's table is ``<out>/summary.csv``
(``summary-shard-I-of-N.csv`` for a shard), rewritten after every study.

Where: one study after the other in this process (``workers=1``, the default: no Dask
needed, e.g. inside Slicer or as one task of a Slurm job array with ``shard``), or on Dask
(:mod:`.batch_dask`, the ``cluster`` extra): a local cluster of ``workers`` processes, or an
existing cluster (``scheduler``). Both run through the same steps here (study list, shard,
resume, run marker, summary); only the scoring of the studies still to do differs.

One run at a time per study: a running batch marks the output folder
(``.ccdino-batch-<host>-<pid>.running``, holding its shard; touched every
:data:`RUN_HEARTBEAT_S` seconds). A second batch over the same studies (same folder, and not
another shard of the same N) is refused with one :class:`InputError` before it touches
anything; shards I/N of different I may share a folder, also from several machines.

Faults: every argument is checked before the output folder is created; a folder the run
created is removed again when it stops before writing into it. An output folder that
cannot be created or written to is one :class:`InputError` before any study is processed. Every file is written to a temporary name and renamed; a
failed write removes its temporary file, and temporary files left by a killed run are
removed by the next run on the same machine (see :func:`clean_stale_temporaries`). A study that fails (bad input, or a write error such as a full
disk) gets one ``error`` row with a one-line message, its outputs of that attempt are
removed, and the batch goes on.

Resuming: every report records what it was scored with (``scored_with``, see
:func:`run_settings`). A study whose ``.json`` exists and records this run's settings is not
processed again (its row is rebuilt from the JSON); one that records other settings, or
none (e.g. a report of ``ccdino score``), is kept and gets an ``error`` row saying so.
``overwrite=True`` processes every study again, removing its old outputs first. A study
that fails gets an ``error`` row and the batch goes on; it is retried by the next run.

Scores come from the AI pipeline of a model bundle or, with ``labels_dir``, from the label
maps found by :func:`.data.studies.find_study_labels` (``<labels_dir>/<study><suffix>`` for
the suffixes :data:`.filenames.LABEL_SUFFIXES`, or ``<labels_dir>/<study>/labels.*``), read
by :func:`.io.labels.read_labels` as ``ccdino score --labels`` reads them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import time
import traceback
from pathlib import Path
from typing import Callable

from .constants import ARTERIES
from .data.studies import (  # noqa: F401
    LABEL_SUFFIXES,
    StudyInput,
    find_study_labels,
    list_study_inputs,
)
from .errors import Cancelled, CCDinoError, InputError
from .io import load_ct
from .io.atomic import write_text_atomic
from .io.labelcheck import check_label_map
from .io.labels import read_labels
from .io.segfile import write_seg_nrrd
from .models.bundle import MANIFEST, resolve_bundle_path, sha256_file, verify_bundle
from .outputs import check_output_dir
from .pipeline import load_bundle, run_pipeline
from .pipeline.contrast import check_contrast
from .report import build_report, write_json
from .report.flags import review_flags
from .report.picture import write_report_png
from .scoring import ScoringOptions, score

log = logging.getLogger(__name__)

#: Columns of the summary table.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "study",
    "status",
    "error",
    *(f"agatston_{a}" for a in ARTERIES),
    "agatston_total",
    "volume_mm3",
    "mass_mg",
    "lesions",
    "risk_category",
    "cac_drs",
    "seconds",
)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` (0-based I < N) -> ``(I, N)``; ``None`` -> ``None``."""
    if text is None:
        return None
    try:
        i_text, n_text = str(text).split("/")
        shard = (int(i_text), int(n_text))
    except ValueError:
        raise InputError(f"--shard must be I/N with 0 <= I < N, e.g. 0/4; got {text!r}") from None
    return check_shard(shard)


def check_shard(shard) -> tuple[int, int] | None:
    if shard is None:
        return None
    i, n = (int(v) for v in shard)
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard must satisfy 0 <= I < N (0-based index), got {i}/{n}")
    return i, n


def summary_name(shard: tuple[int, int] | None) -> str:
    """File name of a run's summary table."""
    return "summary.csv" if shard is None else f"summary-shard-{shard[0]}-of-{shard[1]}.csv"


def run_settings(labels_dir=None, bundle=None, scoring: ScoringOptions | dict | None = None) -> dict:
    """What a run scores with, as recorded in each report (``scored_with``): the label folder
    (resolved path) or the model bundle's sha256 (of its manifest, which pins every weight
    file), and the scoring options. A resumed run re-uses a report only if they are equal."""
    if labels_dir is not None:
        source: dict = {"labels_dir": str(Path(labels_dir).resolve())}
    elif bundle is not None and not isinstance(bundle, (str, os.PathLike)):
        source = {"model_sha256": bundle.sha256}
    else:
        source = {"model_sha256": sha256_file(resolve_bundle_path(bundle) / MANIFEST)}
    return {**source, "scoring": ScoringOptions.of(scoring).to_dict()}


def _settings_differ(recorded, settings: dict) -> str:
    """What differs between a report's ``scored_with`` and this run's settings ('' if nothing)."""
    if not isinstance(recorded, dict):
        return "it does not record what it was scored with (not written by ccdino batch)"
    what = []
    if recorded.get("labels_dir") != settings.get("labels_dir") or recorded.get("model_sha256") != settings.get(
        "model_sha256"
    ):
        def source(d):
            if d.get("labels_dir"):
                return f"the labels in {d['labels_dir']}"
            return f"the model {str(d.get('model_sha256'))[:12]}" if d.get("model_sha256") else "unknown labels or model"

        what.append(f"{source(recorded)}, not {source(settings)}")
    old, new = recorded.get("scoring") or {}, settings["scoring"]
    changed = [k for k in new if old.get(k) != new[k]]
    if changed:
        what.append("scoring options " + ", ".join(f"{k} {old.get(k)!r} (now {new[k]!r})" for k in changed))
    return ("it was scored with " + "; ".join(what)) if what else ""


def _remove_outputs(study: StudyInput, out_dir: Path) -> None:
    """Remove a study's earlier outputs, its JSON first (so a study is never taken as done
    by a half-removed set)."""
    paths = study.outputs(out_dir)
    for key in ("json", "png", "seg"):
        try:
            paths[key].unlink()
        except FileNotFoundError:
            pass


#: Temporary files of the atomic writers: ``.<name>.tmp-<pid>[suffix]``.
_TMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)(\.[A-Za-z0-9.]+)?$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


#: A running batch marks the output folder with ``.ccdino-batch-<host>-<pid>.running``
#: (holding ``{"shard": [I, N] or null}``; touched every RUN_HEARTBEAT_S seconds, removed at
#: the end), so that another batch, on this machine or another one writing into the same
#: folder (a shared file system), can tell that it is in use.
_MARKER_PATTERN = re.compile(r"^\.ccdino-batch-(.+)-(\d+)\.running$")
#: Temporary files untouched for this long belong to no running batch.
STALE_AFTER_S = 6 * 3600.0
#: A running batch touches its marker this often (seconds) ...
RUN_HEARTBEAT_S = 30.0
#: ... so that a marker of another machine untouched for this long is a run that died.
RUN_STALE_AFTER_S = 600.0


def _host() -> str:
    import socket

    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _run_marker(out_dir: Path) -> Path:
    return out_dir / f".ccdino-batch-{_host()}-{os.getpid()}.running"


def _live_runs(out_dir: Path) -> list[tuple[Path, str, int, tuple[int, int] | None]]:
    """The batches marking ``out_dir`` as theirs: ``(marker, host, pid, shard)``. A run of this
    machine is live while its process is; a run of another machine while its marker was
    touched within :data:`RUN_STALE_AFTER_S`. Markers of this machine's dead runs are removed."""
    host, now, runs = _host(), time.time(), []
    for entry in out_dir.iterdir():
        m = _MARKER_PATTERN.match(entry.name)
        if not m:
            continue
        try:
            if m.group(1) == host:
                if not _pid_alive(int(m.group(2))):
                    entry.unlink()
                    continue
            elif now - entry.stat().st_mtime >= RUN_STALE_AFTER_S:
                continue
        except OSError:
            continue
        runs.append((entry, m.group(1), int(m.group(2)), _marker_shard(entry)))
    return runs


def _marker_shard(marker: Path) -> tuple[int, int] | None:
    """The shard a run marker records (None: the whole folder, also for a marker that cannot
    be read, e.g. one written by an older version or being written now)."""
    try:
        shard = json.loads(marker.read_text(encoding="utf-8")).get("shard")
        return (int(shard[0]), int(shard[1])) if shard else None
    except (OSError, ValueError, TypeError, AttributeError, IndexError):
        return None


def _other_runs(out_dir: Path) -> bool:
    """Is a batch of another machine writing into ``out_dir``?"""
    host = _host()
    return any(h != host for _, h, _, _ in _live_runs(out_dir))


def _overlap(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    """Can runs of shards ``a`` and ``b`` (None: all studies) share a study? Only shards of the
    same N with different I are known not to."""
    return not (a is not None and b is not None and a[1] == b[1] and a[0] != b[0])


def _claim(out: Path, shard: tuple[int, int] | None) -> Path:
    """Mark ``out`` as used by this run (for ``shard``); one :class:`InputError`, with nothing
    left behind, when a live batch over the same studies marks it already."""
    marker = _run_marker(out)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise InputError(f"output folder {out} is in use by another batch run of this process; "
                         "wait for it to end or use another output folder") from None
    except OSError as exc:
        raise InputError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"shard": list(shard) if shard else None}) + "\n")
        busy = [r for r in _live_runs(out) if r[0] != marker and _overlap(shard, r[3])]
    except OSError as exc:
        _unlink_quietly(marker)
        raise InputError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
    if busy:
        _unlink_quietly(marker)
        path, host, pid, theirs = busy[0]
        what = f"process {pid} on {host}" + (f", shard {theirs[0]}/{theirs[1]}" if theirs else "")
        mine = f"shard {shard[0]}/{shard[1]}" if shard else "all studies"
        dead = "" if host == _host() else f" (if it is no longer running, remove {path.name} there)"
        raise InputError(f"output folder {out} is in use by another ccdino batch ({what}) over the same studies "
                         f"as this one ({mine}): wait for it to end or use another output folder{dead}")
    return marker


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class _Heartbeat:
    """Touches the run marker every :data:`RUN_HEARTBEAT_S` seconds while the run lives (also
    while one long study, or a cluster that is still starting, holds it)."""

    def __init__(self, marker: Path) -> None:
        import threading

        self.marker = marker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ccdino-batch-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RUN_HEARTBEAT_S):
            try:
                os.utime(self.marker)
            except OSError:
                pass

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def clean_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary files of writers that no longer run (e.g. a killed batch) from
    ``out_dir``; returns the removed paths.

    A temporary name holds the writer's process id, which says something only on this
    machine: while a batch of another machine marks the folder as in use, a temporary file
    is removed only if it is also older than :data:`STALE_AFTER_S` (it may be that batch's)."""
    removed = []
    out_dir = Path(out_dir)
    shared = _other_runs(out_dir)
    now = time.time()
    for entry in out_dir.iterdir():
        m = _TMP_PATTERN.match(entry.name)
        if m and entry.is_file() and not _pid_alive(int(m.group(1))):
            if shared and now - entry.stat().st_mtime < STALE_AFTER_S:
                continue
            try:
                entry.unlink()
                removed.append(entry)
            except OSError as exc:
                log.warning("cannot remove the stale temporary file %s: %s", entry, exc)
    return removed


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, CCDinoError) else f"{type(exc).__name__}: {text}"


def process_study(
    study: StudyInput,
    out_dir: str | os.PathLike,
    bundle=None,
    device: str = "auto",
    labels_dir: str | os.PathLike | None = None,
    scoring: ScoringOptions | dict | None = None,
    settings: dict | None = None,
    replace: bool = False,
) -> dict:
    """Score one study and write its outputs; returns its summary row (never raises for
    a bad study: the error goes into the row). ``settings``: recorded in the report as
    ``scored_with`` (see :func:`run_settings`). ``replace``: remove the study's earlier
    outputs first, so that a failure leaves none of them."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    written: list[Path] = []
    try:
        if replace:
            _remove_outputs(study, out_dir)
        report = _score_and_write(study, out_dir, bundle, device, labels_dir, scoring, t0, written, settings)
    except BaseException as exc:
        for p in written:  # no half set of outputs: the study is retried as a whole
            try:
                p.unlink()
            except OSError:
                pass
        if isinstance(exc, (Cancelled, KeyboardInterrupt, SystemExit)) or not isinstance(exc, Exception):
            raise
        if not isinstance(exc, (CCDinoError, OSError)):  # a write error (disk full, ...) is one line
            log.warning("study %s failed:\n%s", study.name, traceback.format_exc())
        return _row(study.name, None, _one_line(exc), time.perf_counter() - t0)
    return _row(study.name, report, "", report.get("seconds"))


def _score_and_write(study, out_dir, bundle, device, labels_dir, scoring, t0, written: list, settings) -> dict:
    ct = load_ct(study.path)
    contrast = check_contrast(ct)  # into ct.warnings, hence into the report (both paths)
    if contrast:
        log.warning("study %s: %s", study.name, contrast)
    params = ScoringOptions.of(scoring).resolve(ct.kvp)
    extra: dict = {"study": study.name}
    region = None  # the pipeline's heart region (review flags), when it ran
    if labels_dir is not None:
        label_path = find_study_labels(labels_dir, study)
        labels = read_labels(label_path, ct)
        run_warnings = check_label_map(labels, ct.spacing, label_path.name)
        result = score(ct.hu, labels, ct.spacing, params, keep_lesion_voxels=True)
        extra["labels"] = str(label_path)
    else:
        res = run_pipeline(ct, bundle, device=device, params=params)
        labels, result = res.labels, res.score
        run_warnings = res.warnings
        extra.update(res.report_extra())
        region = res.heart_region() if hasattr(res, "heart_region") else None
    paths = study.outputs(out_dir)
    report = build_report(result, str(study.input), kvp=ct.kvp, warnings=[*ct.warnings, *run_warnings], **extra)
    report["review_flags"] = review_flags(ct, report, region)  # when the study needs a human look
    write_seg_nrrd(labels, ct, paths["seg"], ai_result="labels" not in extra)  # the AI's: the module tracks edits
    written.append(paths["seg"])
    write_report_png(ct, labels, report, paths["png"], result=result)
    written.append(paths["png"])
    report["seconds"] = time.perf_counter() - t0
    if settings is not None:
        report["scored_with"] = settings
    write_json(report, paths["json"])  # last: its presence marks the study as done
    return report


def _row(name: str, report: dict | None, error: str, seconds) -> dict:
    row: dict = {c: "" for c in SUMMARY_COLUMNS}
    row.update(study=name, status="error" if error else "ok", error=error)
    if report is not None:
        for a in ARTERIES:
            row[f"agatston_{a}"] = report["arteries"][a]["agatston"]
        total = report["total"]
        row.update(
            agatston_total=total["agatston"],
            volume_mm3=total["volume_mm3"],
            mass_mg=total["mass_mg"],
            lesions=total["lesions"],
            risk_category=report["risk_category"],
            cac_drs=report["cac_drs"],
        )
    if isinstance(seconds, (int, float)):
        row["seconds"] = round(float(seconds), 3)
    return row


def _row_from_existing(study: StudyInput, json_path: Path, settings: dict) -> dict:
    try:
        report = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError(f"a JSON {type(report).__name__}, not a report object")
        row = _row(study.name, report, "", report.get("seconds"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return _row(study.name, None, f"existing report {json_path.name} is unreadable ({exc}); use overwrite", None)
    differ = _settings_differ(report.get("scored_with"), settings)
    if differ:
        return _row(study.name, None, f"existing report {json_path.name} is kept: {differ}; use overwrite to score "
                    "it again, or another output folder", None)
    return row


def write_summary(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write the summary table (CSV, atomically); ``None`` and NaN become empty cells."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()})
    return write_text_atomic(path, buf.getvalue())


def run_batch(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
    bundle=None,
    labels_dir: str | os.PathLike | None = None,
    progress: Callable[[float, str], None] | None = None,
    overwrite: bool = False,
    scoring: ScoringOptions | dict | None = None,
    cancel: Callable[[], bool] | None = None,
    scheduler=None,
    max_in_flight: int | None = None,
    after: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Score every study of ``input_dir`` (or shard ``(i, n)``: studies i, i+n, ...).

    ``after(rows)``: more work on the results (e.g. their DICOM SEG / SR), done while the
    output folder is still this run's (its run marker held), before the rows are returned.

    ``workers``: 1 scores in this process; N > 1 on a local Dask cluster of N worker
    processes. ``scheduler``: score on an existing Dask cluster instead: its scheduler's
    address (``tcp://host:8786``), the path of its scheduler file, or a ``distributed.Client``
    (see :mod:`.batch_dask`; ``max_in_flight``: studies submitted at a time, default twice the
    cluster's threads). ``bundle``: model bundle path (``None`` = the default bundle) or a
    loaded bundle (only in this process); unused with ``labels_dir``. ``scoring``: options of
    the score definition, :class:`..scoring.ScoringOptions` (or a dict of its fields).
    Returns the summary rows (see :data:`SUMMARY_COLUMNS`), in study order; the same rows are
    written to the summary CSV in ``out_dir``.
    """
    # Every check comes before the output folder is created; a folder this call created is
    # removed again if the run stops before writing anything into it.
    shard = check_shard(shard)
    if int(workers) < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if scheduler is not None and int(workers) > 1:
        raise InputError("--workers is the size of a local cluster; with --scheduler the cluster's workers are used")
    on_dask = scheduler is not None or int(workers) > 1
    if on_dask:
        from .batch_dask import require_dask

        require_dask()
        if labels_dir is None and bundle is not None and not isinstance(bundle, (str, os.PathLike)):
            raise InputError("on several workers give the model bundle as a path, not a loaded bundle")
    if labels_dir is not None and not Path(labels_dir).is_dir():
        raise InputError(f"labels folder not found: {labels_dir}")
    studies = list_study_inputs(input_dir, exclude=(out_dir, labels_dir))
    if shard is not None:
        studies = studies[shard[0] :: shard[1]]
    scoring = ScoringOptions.of(scoring)  # invalid options fail before any study is processed
    settings = run_settings(labels_dir, bundle, scoring)  # a missing model bundle fails here
    engine = {"workers": int(workers), "scheduler": scheduler, "on_dask": on_dask, "max_in_flight": max_in_flight}
    created = _missing_folders(out_dir)
    try:
        return _run_batch(studies, out_dir, engine, shard, device, bundle, labels_dir, progress, overwrite, scoring,
                          cancel, settings, after)
    except BaseException:
        for folder in reversed(created):  # innermost first; a folder holding anything stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _missing_folders(path) -> list[Path]:
    """The folders of ``path`` (itself and its parents) that do not exist yet, outermost first."""
    if path is None or not str(path).strip():
        return []
    p = Path(path).absolute()
    missing = []
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    return missing[::-1]


def _run_batch(studies, out_dir, engine, shard, device, bundle, labels_dir, progress, overwrite, scoring, cancel,
               settings, after=None) -> list[dict]:
    out = check_output_dir(out_dir, "output folder")  # one error before any study is processed
    marker = _claim(out, shard)  # refuses a second run over the same studies
    try:
        with _Heartbeat(marker):
            rows = _run_marked(out, studies, engine, shard, device, bundle, labels_dir, progress, overwrite,
                               scoring, cancel, settings)
            if after is not None:
                after(rows)
            return rows
    finally:
        _unlink_quietly(marker)


def _run_marked(out, studies, engine, shard, device, bundle, labels_dir, progress, overwrite, scoring, cancel,
                settings) -> list[dict]:
    removed = clean_stale_temporaries(out)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", len(removed))
    summary_path = out / summary_name(shard)

    rows: dict[str, dict] = {}
    todo: list[StudyInput] = []
    for s in studies:
        done = s.outputs(out)["json"]
        if done.is_file() and not overwrite:
            rows[s.name] = _row_from_existing(s, done, settings)
        else:
            todo.append(s)
    skipped = len(rows)
    if skipped:
        log.info("%d of %d studies already done; skipping them", skipped, len(studies))
        if progress is not None:
            progress(skipped / len(studies), f"{skipped} of {len(studies)} studies already done (skipped)")
            for row in rows.values():  # an unreadable earlier report: said once, here
                if row["error"]:
                    progress(skipped / len(studies), f"{row['study']}: {row['status']} ({row['error']})")

    def ordered() -> list[dict]:
        return [rows[s.name] for s in studies if s.name in rows]

    def finished(row: dict) -> None:
        rows[row["study"]] = row
        try:
            write_summary(ordered(), summary_path)
        except OSError as exc:  # e.g. disk full: keep scoring, the summary is written again at the end
            log.warning("cannot write %s now: %s", summary_path, exc)
        if progress is not None:
            detail = f" ({row['error']})" if row["error"] else ""
            progress(len(rows) / len(studies), f"{row['study']}: {row['status']}{detail}")

    def note(message: str) -> None:
        log.info("%s", message)
        if progress is not None:
            progress(len(rows) / len(studies), message)

    if not todo:
        _final_summary(ordered(), summary_path)
        return ordered()

    use_ai = labels_dir is None
    if engine["scheduler"] is not None or (engine["on_dask"] and len(todo) > 1):
        from .batch_dask import run_studies

        bundle_arg = False
        if use_ai:
            verify_bundle(bundle)  # fail early, in this process, on a missing or damaged bundle
            bundle_arg = None if bundle is None else str(Path(bundle).absolute())
        run_studies(todo, out, workers=engine["workers"], scheduler=engine["scheduler"], device=device,
                    bundle_arg=bundle_arg, labels_dir=labels_dir, scoring=scoring, settings=settings,
                    replace_outputs=overwrite, finished=finished, note=note, cancel=cancel,
                    max_in_flight=engine["max_in_flight"])
    else:
        loaded = None
        if use_ai:
            given = bundle is not None and not isinstance(bundle, (str, os.PathLike))
            loaded = bundle if given else load_bundle(bundle)
        for s in todo:
            if cancel is not None and cancel():
                raise Cancelled("batch cancelled")
            finished(process_study(s, out, bundle=loaded, device=device, labels_dir=labels_dir, scoring=scoring,
                                   settings=settings, replace=overwrite))
    _final_summary(ordered(), summary_path)
    return ordered()


def _final_summary(rows: list[dict], path: Path) -> None:
    try:
        write_summary(rows, path)
    except OSError as exc:
        raise InputError(f"cannot write the summary {path}: {exc.strerror or exc}") from None
