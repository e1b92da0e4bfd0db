"""The headless Slicer batch script always ends the process with an exit status.

Slicer started with ``--no-main-window --python-script FILE`` runs FILE in its ``__main__``
namespace; an uncaught exception is printed and Slicer keeps running without a window, so
only ``sys.exit`` ends it. ``SLICER_LIKE_RUNNER`` does the same in plain Python with a
stand-in for the ``slicer`` module: it exits 99 when the script returns or raises without
calling ``sys.exit``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH_SCRIPT = REPO / "CoronaryCalciumDINO" / "Resources" / "Scripts" / "ccdino_batch_slicer.py"

SLICER_LIKE_RUNNER = textwrap.dedent(
    """
    import runpy, sys, traceback, types

    script, failure, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    slicer = types.ModuleType("slicer")  # stand-in: an application without a main window
    slicer.app = types.SimpleNamespace(commandOptions=lambda: types.SimpleNamespace(noMainWindow=True))
    slicer.util = types.SimpleNamespace(pip_install=lambda *a, **k: None)
    sys.modules["slicer"] = slicer

    import CoronaryCalciumDINOLib.cli

    def broken(argv):
        if failure == "error":
            raise RuntimeError("disk on fire")
        if failure == "interrupt":
            raise KeyboardInterrupt
        return 0

    CoronaryCalciumDINOLib.cli.main = broken
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()  # Slicer prints the exception and keeps running
    print("the script ended without sys.exit: Slicer would keep running", file=sys.stderr)
    sys.exit(99)
    """
)


def run_like_slicer(failure: str, tmp_path: Path) -> subprocess.CompletedProcess:
    studies = tmp_path / "in"
    studies.mkdir(exist_ok=True)
    args = ["--input", str(studies), "--out", str(tmp_path / "out"), "--labels-dir", str(studies)]
    return subprocess.run(
        [sys.executable, "-c", SLICER_LIKE_RUNNER, str(BATCH_SCRIPT), failure, *args],
        capture_output=True, text=True, timeout=120,
    )


def test_unexpected_exception_exits_three(tmp_path):
    proc = run_like_slicer("error", tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "RuntimeError: disk on fire" in proc.stderr  # the traceback
    assert proc.stderr.strip().splitlines()[-1] == "ccdino: unexpected error: RuntimeError('disk on fire')"


def test_keyboard_interrupt_exits_non_zero(tmp_path):
    proc = run_like_slicer("interrupt", tmp_path)
    assert proc.returncode == 3, proc.stderr


def test_normal_end_exits_with_the_command_status(tmp_path):
    proc = run_like_slicer("none", tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_bad_arguments_exit_two_through_the_same_path(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SLICER_LIKE_RUNNER, str(BATCH_SCRIPT), "none", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
