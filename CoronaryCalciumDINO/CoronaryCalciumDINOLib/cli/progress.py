"""The command line's progress lines (on stderr), for ``progress(fraction, message)`` callbacks."""

from __future__ import annotations

import sys
from typing import Callable

Progress = Callable[[float, str], None]


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
