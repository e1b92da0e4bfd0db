"""Fuzzing the DICOM reader with damaged copies of the real phantom series.

Each case copies four slices of the QRM phantom (slices 20-23: the insert's calcium, the
spine, air), damages them in one way drawn from a seed, and checks two outcomes:

* **reader level** (what the AI path receives): :func:`read_dicom_series` either raises
  :class:`InputError` with a one-line message, or returns a volume that is *identical* to
  the undamaged one (HU, spacing, origin, direction, kVp), or returns a different volume
  together with a *new warning* (which reaches the report). A different volume without a
  new warning is a **silent wrong** input; any other exception is a **traceback**; a case
  running over :data:`CASE_SECONDS` is a **hang**.
* **labels path** (``ccdino score CT --labels L --json R``, in process): exit 2 with one
  ``ccdino: error:`` line, or exit 0 with a finite report whose Agatston total equals the
  undamaged series' unless the report carries a new warning. Anything else is a traceback
  or a silent wrong score.

The oracle: every damage drawn here is *implausible or structurally broken* (NaN, +-inf,
0 or negative where only positive values exist, values beyond :mod:`..limits`, several
values where one is expected, one where several are, wrong bit depths and sizes, foreign
modalities, truncated files, a slice missing in the middle, a duplicated slice). A damage
that produces another *plausible* scan (a PixelSpacing of 0.6 instead of 0.488, an
intercept of -1 instead of 0, a changed pixel value) is indistinguishable from a real scan
by any reader and is therefore not drawn: counting it as "silent" would test nothing.

Budget: the default suite runs :data:`FIXED_SEEDS` plus :data:`N_RANDOM` random seeds
(printed on failure; set ``CCDINO_FUZZ_SEED`` to replay one); ``-m slow`` runs
:data:`SLOW_CASES` seeds. ``python tests/test_fuzz_reader.py N`` prints the outcome counts
of N seeds.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import sys
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as dcm_config

from CoronaryCalciumDINOLib.cli import main as cli_main
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io.dicom import read_dicom_series
from CoronaryCalciumDINOLib.io.volume import write_volume
from shared_data import phantom_files_by_z, save_dicom

#: Seeds every run checks (they cover every kind of damage at least once).
FIXED_SEEDS = tuple(range(120))
#: Random seeds per default run.
N_RANDOM = 60
#: Seeds of the slow run.
SLOW_CASES = 2000
#: A case running longer than this (s) is a hang.
CASE_SECONDS = 30

_DS_BAD = ["nan", "inf", "-inf", "1e308", "-1e308", "abc", "1\\2"]
#: Tag -> implausible or broken values (strings are written as DICOM text).
HOSTILE = {
    "RescaleSlope": _DS_BAD + ["0", "-1", "1e-30", "1e-6", "1e6", "-0.5"],
    "RescaleIntercept": _DS_BAD + ["1e6", "-1e6", "4e4"],
    "SliceThickness": _DS_BAD + ["0", "-3", "1e6"],
    "KVP": _DS_BAD + ["0", "-120", "1e6", "5"],
    "PixelSpacing": ["nan\\nan", "0\\0", "-0.5\\-0.5", "1e-6\\1e-6", "1e308\\1e308", "inf\\0.488", "0.488",
                     "0.488\\0.488\\0.488", "abc\\def", "1e-30\\0.488"],
    "ImagePositionPatient": ["nan\\0\\0", "1e308\\0\\0", "0\\0", "0", "inf\\inf\\inf", "a\\b\\c", "1e9\\0\\0",
                             "0\\0\\1e-300"],
    "ImageOrientationPatient": ["nan\\0\\0\\0\\1\\0", "0\\0\\0\\0\\0\\0", "1\\0\\0", "2\\0\\0\\0\\2\\0",
                                "1\\0\\0\\1\\0\\0", "inf\\0\\0\\0\\1\\0"],
    "Rows": [0, 1, 511, 513, 65535, [512, 512]],
    "Columns": [0, 1, 511, 513, 65535, [512, 512]],
    "BitsAllocated": [0, 1, 8, 12, 32, 64, [16, 16]],
    "BitsStored": [0, 1, 8, 17, 64, [16, 16]],
    "PixelRepresentation": [0, 2, [1, 1]],
    "SamplesPerPixel": [0, 2, 3, [1, 1]],
    "NumberOfFrames": [0, 2, 47, [1, 2]],
    "Modality": ["MR", "PT", "OT", "SEG"],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "YBR_FULL"],
}
#: Non-numeric text written under a numeric VR (pydicom refuses to set it directly).
_TEXT_TAGS = {"abc", "a\\b\\c", "abc\\def"}
KINDS = ("tag", "tag", "tag", "tag", "tag_all", "tag_all", "delete_tag", "truncate", "pixel_length",
         "drop_middle", "duplicate", "new_series", "syntax")
DELETABLE = ("RescaleSlope", "RescaleIntercept", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
             "Rows", "Columns", "BitsAllocated", "PixelData", "SeriesInstanceUID", "SOPClassUID", "Modality",
             "PixelRepresentation", "BitsStored", "KVP", "SliceThickness")


class Hang(Exception):
    pass


def _set(ds, name: str, value) -> None:
    if isinstance(value, str) and value in _TEXT_TAGS:
        tag = pydicom.datadict.tag_for_keyword(name)
        if tag in ds:
            del ds[tag]
        ds.add_new(tag, "LO", value)  # stored as text; read back under its dictionary VR
        return
    setattr(ds, name, value)


def _save(ds, path: Path) -> None:
    save_dicom(ds, path, enforce_file_format=False)


def mutate(case_dir: Path, rng: random.Random) -> str:
    """Damage the series in ``case_dir`` in one way; returns a description."""
    files = sorted(p for p in case_dir.iterdir())
    kind = rng.choice(KINDS)
    target = rng.choice(files)
    if kind in ("tag", "tag_all"):
        name = rng.choice(sorted(HOSTILE))
        value = rng.choice(HOSTILE[name])
        for f in files if kind == "tag_all" else [target]:
            ds = pydicom.dcmread(f)
            _set(ds, name, value)
            _save(ds, f)
        return f"{kind} {name}={value!r} ({'all files' if kind == 'tag_all' else target.name})"
    if kind == "delete_tag":
        name = rng.choice(DELETABLE)
        ds = pydicom.dcmread(target)
        if name in ds:
            delattr(ds, name)
        _save(ds, target)
        return f"delete {name} ({target.name})"
    if kind == "truncate":
        data = target.read_bytes()
        n = rng.choice([0, 1, 100, 128, 131, 132, 140, 400, rng.randrange(len(data)), len(data) - 1])
        target.write_bytes(data[:n])
        return f"truncate {target.name} to {n} bytes"
    if kind == "pixel_length":
        ds = pydicom.dcmread(target)
        delta = rng.choice([-1024, -2, 2, 1024, -len(ds.PixelData) // 2])
        ds.PixelData = ds.PixelData[:delta] if delta < 0 else ds.PixelData + b"\0" * delta
        _save(ds, target)
        return f"pixel data {delta:+d} bytes ({target.name})"
    if kind == "drop_middle":
        victim = files[rng.randrange(1, len(files) - 1)]
        victim.unlink()
        return f"middle slice {victim.name} removed"
    if kind == "duplicate":
        shutil.copy(target, case_dir / f"{target.name}-copy")
        return f"duplicate of {target.name}"
    if kind == "new_series":
        ds = pydicom.dcmread(target)
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        _save(ds, target)
        return f"{target.name} in its own series"
    syntax = rng.choice(["1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.3"])
    _announce_syntax(target, syntax)
    return f"transfer syntax {syntax} announced ({target.name})"


def _announce_syntax(path: Path, syntax: str) -> None:
    """Rewrite the file meta's TransferSyntaxUID (bytes unchanged otherwise): the data set
    is then misread as that syntax."""
    import struct

    data = path.read_bytes()
    i = data.index(b"\x02\x00\x10\x00UI")
    old_len = struct.unpack("<H", data[i + 6 : i + 8])[0]
    value = syntax.encode() + (b"\0" if len(syntax) % 2 else b"")
    data = data[:i + 6] + struct.pack("<H", len(value)) + value + data[i + 8 + old_len:]
    g = data.index(b"\x02\x00\x00\x00UL\x04\x00")
    group_len = struct.unpack("<I", data[g + 8 : g + 12])[0] + len(value) - old_len
    path.write_bytes(data[:g + 8] + struct.pack("<I", group_len) + data[g + 12:])


def _alarm(signum, frame):
    raise Hang()


class Fuzzer:
    """The undamaged series, its labels and baseline, and the oracle for one case."""

    def __init__(self, work: Path):
        dcm_config.settings.reading_validation_mode = dcm_config.IGNORE
        dcm_config.settings.writing_validation_mode = dcm_config.IGNORE
        self.work = work
        self.base = work / "base"
        self.base.mkdir(parents=True)
        for i, f in enumerate(phantom_files_by_z()[20:24]):
            shutil.copy(f, self.base / f"s{i}")
        self.ct = read_dicom_series(self.base)
        labels = np.zeros(self.ct.shape, np.uint8)
        labels[:, 100:330, 150:360] = 2  # the insert: calcium of every density, some of the bone-free field
        self.labels = write_volume(labels, self.ct, work / "labels.nrrd")
        rc, out, err, report = self._cli(self.base)
        assert rc == 0, err
        self.score = report["total"]["agatston"]
        assert self.score > 0
        self.warnings = set(report["warnings"])

    def _cli(self, folder: Path):
        out_json = self.work / "report.json"
        out_json.unlink(missing_ok=True)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli_main(["score", str(folder), "--labels", str(self.labels), "--json", str(out_json), "--quiet"])
        report = json.loads(out_json.read_text()) if rc == 0 else None
        return rc, out.getvalue(), err.getvalue(), report

    def same_volume(self, ct) -> bool:
        a = self.ct
        return (ct.shape == a.shape and np.array_equal(ct.hu, a.hu) and tuple(ct.spacing) == tuple(a.spacing)
                and tuple(ct.origin) == tuple(a.origin) and np.array_equal(ct.direction, a.direction)
                and ct.kvp == a.kvp)

    def run_case(self, seed: int) -> tuple[str, str]:
        """(outcome, detail): outcome is one of error, same, warned, silent, traceback, hang."""
        rng = random.Random(seed)
        case = self.work / f"case{seed}"
        shutil.copytree(self.base, case)
        what = ""
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(CASE_SECONDS)
        try:
            what = mutate(case, rng)
            outcome, detail = self._reader_outcome(case)
            if outcome in ("traceback", "silent"):
                return outcome, f"seed {seed}: {what}: reader: {detail}"
            cli_outcome, cli_detail = self._cli_outcome(case)
            if cli_outcome in ("traceback", "silent"):
                return cli_outcome, f"seed {seed}: {what}: labels path: {cli_detail}"
            return outcome, f"seed {seed}: {what}: {detail}"
        except Hang:
            return "hang", f"seed {seed}: {what}: over {CASE_SECONDS} s"
        except Exception as exc:  # noqa: BLE001 - the oracle itself must report, not crash
            return "traceback", f"seed {seed}: {what}: {type(exc).__name__}: {exc}"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            shutil.rmtree(case, ignore_errors=True)

    def _reader_outcome(self, case: Path) -> tuple[str, str]:
        try:
            ct = read_dicom_series(case)
        except InputError as exc:
            msg = str(exc)
            if "\n" in msg or not msg.strip():
                return "traceback", f"error message is not one line: {msg!r}"
            return "error", msg
        except Hang:
            raise
        except Exception as exc:  # noqa: BLE001
            return "traceback", f"{type(exc).__name__}: {exc}"
        if self.same_volume(ct):
            return "same", ""
        new = set(ct.warnings) - set(self.ct.warnings)
        if new:
            return "warned", "; ".join(sorted(new))
        return "silent", "the volume differs from the undamaged series and no warning says so"

    def _cli_outcome(self, case: Path) -> tuple[str, str]:
        try:
            rc, out, err, report = self._cli(case)
        except Hang:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit included
            return "traceback", f"{type(exc).__name__}: {exc}"
        errors = [line for line in err.splitlines() if line.startswith("ccdino: error:")]
        if rc == 2:
            if len(errors) != 1 or not err.rstrip().splitlines()[-1].startswith("ccdino: error:"):
                return "traceback", f"exit 2 without one error line: {err!r}"
            return "error", errors[0]
        if rc != 0:
            return "traceback", f"exit {rc}: {err!r}"
        if report["total"]["agatston"] != self.score and not set(report["warnings"]) - self.warnings:
            return "silent", f"Agatston {report['total']['agatston']} instead of {self.score}, no new warning"
        return "ok", ""


def run_seeds(fuzzer: Fuzzer, seeds) -> tuple[Counter, list[str]]:
    counts: Counter = Counter()
    failures = []
    for seed in seeds:
        outcome, detail = fuzzer.run_case(seed)
        counts[outcome] += 1
        if outcome in ("traceback", "silent", "hang"):
            failures.append(f"{outcome}: {detail}")
    return counts, failures


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    return Fuzzer(tmp_path_factory.mktemp("fuzz"))


def _random_seeds(n: int) -> list[int]:
    given = os.environ.get("CCDINO_FUZZ_SEED")
    if given:
        return [int(s) for s in given.split(",")]
    r = random.SystemRandom()
    return [r.randrange(10**6, 10**9) for _ in range(n)]


def test_fuzz_fixed_seeds(fuzzer):
    counts, failures = run_seeds(fuzzer, FIXED_SEEDS)
    print(f"fixed seeds: {dict(counts)}")
    assert not failures, "\n".join(failures)
    assert counts["error"] > len(FIXED_SEEDS) // 2  # the damage is real: most cases are refused


def test_fuzz_random_seeds(fuzzer):
    seeds = _random_seeds(N_RANDOM)
    counts, failures = run_seeds(fuzzer, seeds)
    print(f"random seeds {seeds}: {dict(counts)}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_fuzz_large_budget(fuzzer):
    seeds = list(range(1000, 1000 + SLOW_CASES // 2)) + _random_seeds(SLOW_CASES // 2)
    counts, failures = run_seeds(fuzzer, seeds)
    print(f"slow fuzz, {len(seeds)} seeds: {dict(counts)}")
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_fuzz_truncated_volume_files(fuzzer, tmp_path, suffix):
    """A volume file cut anywhere is refused in one line or read completely (the cut
    removed nothing but padding): never read with a part missing."""
    from CoronaryCalciumDINOLib.io.volume import read_volume_file

    whole = write_volume(fuzzer.ct.hu.astype(np.int16), fuzzer.ct, tmp_path / f"whole{suffix}")
    data = whole.read_bytes()
    rng = random.Random(len(data))
    cuts = sorted({0, 1, 100, 347, 348, 352, len(data) - 1, *(rng.randrange(len(data)) for _ in range(12))})
    for n in cuts:
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[:n])
        try:
            ct = read_volume_file(cut)
        except InputError as exc:
            assert "\n" not in str(exc)
            continue
        assert np.array_equal(ct.hu, fuzzer.ct.hu), f"{suffix} cut at {n} of {len(data)} bytes read with data missing"


def test_oracle_sees_a_silent_wrong_score(fuzzer, tmp_path):
    """The oracle can fail: a plausible but different slope (2 instead of 1) in every slice
    is not detectable by the reader, and the oracle calls it silent (at the reader level)."""
    case = tmp_path / "plausible"
    shutil.copytree(fuzzer.base, case)
    for f in case.iterdir():
        ds = pydicom.dcmread(f)
        ds.RescaleSlope = "2"
        _save(ds, f)
    assert fuzzer._reader_outcome(case)[0] == "silent"
    assert fuzzer._cli_outcome(case)[0] == "silent"


if __name__ == "__main__":  # figures for a given number of seeds
    import tempfile
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    start = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with tempfile.TemporaryDirectory() as tmp:
        fz = Fuzzer(Path(tmp))
        t0 = time.perf_counter()
        counts, failures = run_seeds(fz, range(start, start + n))
        print(f"{n} cases in {time.perf_counter() - t0:.1f} s: {dict(sorted(counts.items()))}")
        for f in failures:
            print(f)
