"""Batch scoring on a Dask cluster: ``ccdino batch --workers N`` (a local cluster of N worker
processes) or ``--scheduler ADDRESS`` (an existing cluster, e.g. started with dask-jobqueue on
Slurm / PBS or on Kubernetes).

:func:`.batch.run_batch` does everything around the scoring (the study list, ``--shard``,
resuming, the run marker that refuses a second run over the same studies, the summary); this
module only sends the studies still to do to the cluster and hands each result back:

* one task per study (:func:`score_study_task`, which runs :func:`.batch.process_study` on
  the worker: the worker writes the study's files, each atomically, its JSON last); at most
  ``max_in_flight`` tasks are submitted at a time (default twice the cluster's worker threads,
  at least :data:`MIN_IN_FLIGHT`), so that a cohort of 100 000 studies is not one
  100 000-task graph;
* the model bundle is loaded once per worker process, by its first study (kept in
  :data:`_WORKER`), with PyTorch's threads set to the machine's CPUs shared among the
  worker processes of that machine;
* a worker that dies (killed, or stopped by its nanny for using too much memory) loses no
  finished study: each study's JSON was written, atomically, before its task ended. Dask
  reschedules the studies it was running; a study whose workers die more than the
  scheduler's ``allowed-failures`` times (:data:`ALLOWED_WORKER_DEATHS` on the local
  cluster) gets an ``error`` row, its partial files are removed, and the batch goes on (the
  next run tries it again). A rescheduled study whose JSON the dead worker had already
  written is not scored again. When every task has ended, the temporary files that dead
  workers left for this run's studies are removed.

Dask (``pip install 'coronary-calcium-dino[cluster]'``) is imported only here and only when a
batch uses it: the scoring and I/O core, the Slicer module and a one-process batch do not
need it. With ``--scheduler`` the workers must be able to import this library (the same
version) and see the input, label and output folders at the same paths as the client (a
shared file system).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .errors import Cancelled, InputError

log = logging.getLogger(__name__)

#: The ``pip install`` extra that brings Dask.
EXTRA = "cluster"
#: How many times a study's worker may die before the study is given up (an error row) on
#: the local cluster: dask's ``distributed.scheduler.allowed-failures``. A study that runs a
#: worker out of memory every time costs ALLOWED_WORKER_DEATHS + 1 worker restarts.
ALLOWED_WORKER_DEATHS = 2
#: Dask settings of the local cluster: the above, and no study queued on a worker behind the
#: one it runs (worker-saturation 1.0), so that a worker that dies takes only its running
#: study with it and an idle worker is never left waiting while another holds two studies.
LOCAL_CLUSTER_CONFIG = {
    "distributed.scheduler.allowed-failures": ALLOWED_WORKER_DEATHS,
    "distributed.scheduler.worker-saturation": 1.0,
}

#: Studies submitted at a time at least (by default twice the cluster's worker threads): an
#: adaptive cluster that starts with no worker sees that many studies waiting and scales up.
#: Waiting studies stay on the scheduler (worker-saturation), not on a worker.
MIN_IN_FLIGHT = 32

#: The model bundle of this worker process: ``key`` (the bundle argument), ``bundle``,
#: ``load_s`` (seconds its loading took), ``threads`` (PyTorch's), ``error`` (a load that
#: failed: every study of this worker gets it as its error).
_WORKER: dict = {}


def require_dask() -> None:
    """One :class:`InputError` naming the extra to install when Dask is missing."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"several workers (--workers N > 1) and --scheduler run on Dask, which is not installed ({exc}); "
            f"install it with: pip install 'coronary-calcium-dino[{EXTRA}]'"
        ) from None


def local_cluster(n_workers: int, **kwargs):
    """A Dask ``LocalCluster`` of ``n_workers`` worker processes of one thread each (one study
    at a time each), with :data:`LOCAL_CLUSTER_CONFIG`; no dashboard. Each worker process has
    a nanny that starts it again when it dies. Dask's own log lines below ERROR (a worker
    restarted, one slow to stop) are not printed."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        options = dict(n_workers=int(n_workers), threads_per_worker=1, processes=True, dashboard_address=None,
                       silence_logs=logging.ERROR)
        options.update(kwargs)
        return LocalCluster(**options)


@contextlib.contextmanager
def quiet_dask_logs():
    """While a batch runs: Dask's log records below ERROR (a local cluster's scheduler and
    nannies starting, connections closed, workers restarted) are not made, unless this
    process logs INFO (``ccdino --verbose``). ``LocalCluster(silence_logs=...)`` alone does
    not do it: it lowers only Dask's own handlers, and only while the cluster starts; the
    records still reach the root logger's handlers (the CLI's)."""
    logger = logging.getLogger("distributed")
    old = logger.level
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _connect(scheduler, workers: int):
    """(client, cluster we started or None, description). ``scheduler``: None (start a local
    cluster of ``workers`` processes), an address (``tcp://host:8786``), the path of a
    scheduler file, or a ``distributed.Client`` (used as it is, not closed here)."""
    from distributed import Client

    if scheduler is None:
        cluster = local_cluster(workers)
        try:
            return Client(cluster), cluster, f"a local Dask cluster of {workers} worker processes"
        except BaseException:
            cluster.close()
            raise
    if isinstance(scheduler, Client):
        return scheduler, None, f"the Dask cluster of {scheduler.scheduler.address}"
    text = str(scheduler).strip()
    try:
        if text and Path(text).is_file():
            client = Client(scheduler_file=text)
        else:
            client = Client(text)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise InputError(f"cannot reach the Dask scheduler {text!r}: {' '.join(str(exc).split())}") from None
    return client, None, f"the Dask cluster of {client.scheduler.address}"


def _workers_per_host(client) -> dict[str, int]:
    """How many worker processes each machine of the cluster runs (by host)."""
    try:
        workers = client.scheduler_info()["workers"]
    except Exception:  # noqa: BLE001 - only a hint for the thread count
        return {}
    return dict(Counter(str(w.get("host")) for w in workers.values()))


def _cpu_count() -> int:
    try:
        from dask.system import CPU_COUNT

        return int(CPU_COUNT)
    except ImportError:  # pragma: no cover - dask is there on a worker
        return os.cpu_count() or 1


def _worker_bundle(bundle_arg, workers_per_host: dict[str, int]):
    """The model bundle of this worker process, loaded by its first study (or the error of
    that load, as one line, with the bundle None)."""
    if _WORKER.get("key") == bundle_arg and ("bundle" in _WORKER or "error" in _WORKER):
        return _WORKER.get("bundle"), _WORKER.get("error")
    from .batch import _one_line
    from .pipeline import load_bundle

    try:
        from distributed import get_worker
        from distributed.comm.addressing import get_address_host

        host = get_address_host(get_worker().address)
    except (ImportError, ValueError):  # not on a worker (called directly)
        host = ""
    threads = max(1, _cpu_count() // max(1, workers_per_host.get(host, 1)))
    _WORKER.clear()
    _WORKER.update(key=bundle_arg, threads=threads)
    t0 = time.perf_counter()
    try:
        bundle = load_bundle(None if bundle_arg is None else bundle_arg)
        import torch

        torch.set_num_threads(threads)  # the nanny starts workers with OMP_NUM_THREADS=1
    except Exception as exc:  # noqa: BLE001 - every study of this worker gets it as its error row
        _WORKER["error"] = f"the model could not be loaded on worker {host or os.getpid()}: {_one_line(exc)}"
        return None, _WORKER["error"]
    _WORKER.update(bundle=bundle, load_s=time.perf_counter() - t0)
    log.info("worker %s loaded the model in %.1f s (%d threads)", os.getpid(), _WORKER["load_s"], threads)
    return bundle, None


def worker_model_info() -> dict:
    """What this worker process holds (run on every worker with ``client.run``): ``pid``,
    ``load_s`` (seconds its model took to load, the import of PyTorch included; None before
    its first AI study) and ``threads`` (PyTorch's)."""
    return {"pid": os.getpid(), "load_s": _WORKER.get("load_s"), "threads": _WORKER.get("threads")}


def score_study_task(study, out, device, bundle_arg, labels_dir, scoring, settings, replace_outputs,
                     workers_per_host) -> dict:
    """The task of one study on a worker: its summary row (never raises for a bad study).

    ``bundle_arg``: False with label maps, else the bundle path (None: the default bundle).
    A study whose JSON exists is not scored again unless ``replace_outputs``: a study
    rescheduled after its worker died may have been finished there."""
    from .batch import _row, _row_from_existing, process_study

    json_path = study.outputs(out)["json"]
    if not replace_outputs and json_path.is_file():
        return _row_from_existing(study, json_path, settings)
    bundle = None
    if bundle_arg is not False:
        bundle, error = _worker_bundle(bundle_arg, workers_per_host)
        if error:
            return _row(study.name, None, error, None)
    return process_study(study, out, bundle=bundle, device=device, labels_dir=labels_dir, scoring=scoring,
                         settings=settings, replace=replace_outputs)


def _absolute(study):
    """The study with absolute paths (a worker may run in another folder)."""
    return replace(study, path=Path(study.path).absolute(),
                   labels=None if study.labels is None else Path(study.labels).absolute())


def _remove_partial_outputs(study, out: Path) -> None:
    """A study given up without its JSON: remove what a dead worker wrote of it."""
    paths = study.outputs(out)
    if paths["json"].exists():
        return
    for key in ("png", "seg"):
        try:
            paths[key].unlink()
        except OSError:
            pass


def _remove_temporaries_of(studies, out: Path) -> int:
    """Remove the temporary files (``.<output>.tmp-<pid>...``) of these studies' outputs: once
    every task of the run has ended, only a worker that died mid-write can have left them."""
    from .batch import _TMP_PATTERN

    names = {p.name for s in studies for p in s.outputs(out).values()}
    removed = 0
    for entry in out.iterdir():
        if _TMP_PATTERN.match(entry.name) and entry.name[1:].rsplit(".tmp-", 1)[0] in names:
            try:
                entry.unlink()
                removed += 1
            except OSError as exc:
                log.warning("cannot remove the temporary file %s: %s", entry, exc)
    return removed


def run_studies(
    todo,
    out,
    *,
    workers: int,
    scheduler,
    device: str,
    bundle_arg,
    labels_dir,
    scoring,
    settings: dict,
    replace_outputs: bool,
    finished: Callable[[dict], None],
    note: Callable[[str], None],
    cancel: Callable[[], bool] | None = None,
    max_in_flight: int | None = None,
) -> None:
    """Score ``todo`` (StudyInput list) on Dask; ``finished(row)`` is called in this (the
    client's) process for each study as it ends, in the order they end. ``bundle_arg``: False
    for label maps, else the bundle path (None: the default). See the module docstring."""
    out = Path(out).absolute()
    labels_dir = None if labels_dir is None else str(Path(labels_dir).absolute())
    studies = [_absolute(s) for s in todo]
    with quiet_dask_logs():
        _run_on_cluster(studies, out, workers=workers, scheduler=scheduler, device=device, bundle_arg=bundle_arg,
                        labels_dir=labels_dir, scoring=scoring, settings=settings, replace_outputs=replace_outputs,
                        finished=finished, note=note, cancel=cancel, max_in_flight=max_in_flight)
    removed = _remove_temporaries_of(studies, out)
    if removed:
        log.info("removed %d temporary files left by workers that died", removed)


def _run_on_cluster(studies, out: Path, *, workers, scheduler, device, bundle_arg, labels_dir, scoring, settings,
                    replace_outputs, finished, note, cancel, max_in_flight) -> None:
    """:func:`run_studies` on the cluster: submit the studies, hand back their rows, close."""
    from distributed import KilledWorker, as_completed

    client, cluster, where = _connect(scheduler, workers)
    waiting = studies[::-1]  # popped from the end: in study order
    running: dict = {}  # future key -> (study, future)
    futures = as_completed()
    complete = False
    try:
        note(f"scoring {len(studies)} studies on {where}")

        def limit() -> int:
            if max_in_flight:
                return max(1, int(max_in_flight))
            return max(MIN_IN_FLIGHT, 2 * sum(client.nthreads().values()))

        def submit_more() -> None:
            if not waiting:
                return
            room, per_host = limit() - len(running), _workers_per_host(client)
            for _ in range(max(0, room)):
                if not waiting:
                    break
                s = waiting.pop()
                fut = client.submit(score_study_task, s, out, device, bundle_arg, labels_dir, scoring, settings,
                                    replace_outputs, per_host, key=f"ccdino-study-{s.name}-{uuid.uuid4().hex[:12]}",
                                    pure=False, retries=0)
                running[fut.key] = (s, fut)
                futures.add(fut)

        submit_more()
        for fut in futures:
            s, _ = running.pop(fut.key)
            try:
                row = fut.result()
            except KilledWorker:
                _remove_partial_outputs(s, out)
                from .batch import _row

                row = _row(s.name, None, "the worker scoring it died each time it was tried (killed, or out of "
                           "memory); the next run tries it again", None)
            except Exception as exc:  # noqa: BLE001 - the cluster failed (not the study): an error row
                from .batch import _one_line, _row

                _remove_partial_outputs(s, out)
                row = _row(s.name, None, f"worker failed: {_one_line(exc)}", None)
            fut.release()
            finished(row)
            if cancel is not None and cancel():
                raise Cancelled("batch cancelled")
            submit_more()
        complete = True
    finally:
        if not complete and running:  # cancelled or interrupted: stop the studies still queued or running
            try:
                client.cancel([f for _, f in running.values()], force=True)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        if not _is_client(scheduler):  # a client given by the caller stays open
            client.close()
        if cluster is not None:
            cluster.close()


def _is_client(obj) -> bool:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Client)
