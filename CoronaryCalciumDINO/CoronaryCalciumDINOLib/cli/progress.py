"""The command line's progress lines, for ``progress(fraction, message)`` callbacks.

Two forms:

* for people (:func:`progress_printer`): ``[ 42%] message`` on stderr;
* for programs (:func:`progress_line_printer`, ``ccdino score --progress-lines``): one line
  on stdout per step, ``PROGRESS <fraction> <message>``, e.g.
  ``PROGRESS 0.4200 detector 120/300 candidates``: the word ``PROGRESS``, one space, the
  overall fraction done in [0, 1] with 4 decimals, one space, the message (one line, may be
  empty). Flushed at once, so that a program reading the pipe sees each step when it
  happens. :func:`parse_progress_line` reads it back (the Slicer module does). Other lines
  of the run (``CUDA 0|1``, warnings, errors) are not progress lines.
"""

from __future__ import annotations

import math
import sys
from typing import Callable

Progress = Callable[[float, str], None]

#: First word of a machine-readable progress line.
PROGRESS_WORD = "PROGRESS"
#: First word of the line telling whether PyTorch found a CUDA GPU (``CUDA 1`` or ``CUDA 0``).
CUDA_WORD = "CUDA"


def progress_printer(in_place: bool = False, quiet: bool = False) -> Progress | None:
    """A callback printing ``[ 42%] message`` to stderr; None when ``quiet``.

    ``in_place``: one line rewritten as the work advances (steps of one job; printed only when
    the percentage changes, ended by a newline at 100 %); otherwise one line a call (e.g. one a
    study of a batch, kept in a log)."""
    if quiet:
        return None
    last = {"pct": -1}

    def progress(fraction: float, message: str) -> None:
        pct = int(fraction * 100)
        if not in_place:
            print(f"[{100 * fraction:5.1f}%] {message}", file=sys.stderr, flush=True)
        elif pct != last["pct"]:
            last["pct"] = pct
            print(f"\r[{pct:3d}%] {message:<50}", end="" if fraction < 1.0 else "\n", file=sys.stderr, flush=True)

    return progress


def format_progress_line(fraction: float, message: str) -> str:
    """``PROGRESS <fraction> <message>`` (fraction clipped to [0, 1]; message on one line)."""
    fraction = float(fraction)
    fraction = 0.0 if not math.isfinite(fraction) else min(max(fraction, 0.0), 1.0)
    text = " ".join(str(message).split())
    return f"{PROGRESS_WORD} {fraction:.4f} {text}".rstrip()


def parse_progress_line(line: str) -> tuple[float, str] | None:
    """(fraction, message) of a line written by :func:`format_progress_line`; None for any
    other line (a fraction that is not a number in [0, 1] is not a progress line)."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] != PROGRESS_WORD:
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
        return None
    return fraction, parts[2] if len(parts) == 3 else ""


def progress_line_printer(stream=None) -> Progress:
    """A callback printing :func:`format_progress_line` lines to ``stream`` (stdout), flushed."""

    def progress(fraction: float, message: str) -> None:
        print(format_progress_line(fraction, message), file=stream or sys.stdout, flush=True)

    return progress


def parse_cuda_line(line: str) -> bool | None:
    """True / False for a ``CUDA 1`` / ``CUDA 0`` line, None for any other line."""
    parts = line.split()
    if len(parts) == 2 and parts[0] == CUDA_WORD and parts[1] in ("0", "1"):
        return parts[1] == "1"
    return None
