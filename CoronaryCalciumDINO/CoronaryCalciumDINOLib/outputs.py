"""Checks of output paths before any work is done.

A user's results are never overwritten without asking: an existing output file is an
:class:`~.errors.InputError` unless ``overwrite`` is given. A path that cannot be written
(an existing file where a folder is wanted, a folder that cannot be created or written) is
a one-line :class:`~.errors.InputError` too, raised before a model runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import InputError


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the folder ``path`` if needed and make sure files can be written into it."""
    if path is None or not str(path).strip():
        raise InputError(f"{what} is empty; give a folder, e.g. results")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{what} {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{what} {p} cannot be created: {_reason(exc)}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".ccdino-write-check-")
    except OSError as exc:
        raise InputError(f"{what} {p} is not writable: {_reason(exc)}") from None
    os.close(fd)
    os.unlink(probe)
    return p


def check_output_files(paths: Iterable[tuple[str | os.PathLike, str]], overwrite: bool = False) -> list[Path]:
    """Check ``(path, what)`` output files: none may be a folder, none may exist unless
    ``overwrite``, and each one's folder must be writable (it is created if needed).
    All existing files are named in one message."""
    checked: list[Path] = []
    existing: list[str] = []
    for path, what in paths:
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{what} {p} is a folder; give a file name")
        try:
            check_output_dir(p.parent, "its folder")
        except InputError as exc:
            raise InputError(f"cannot write {what} {p}: {exc}") from None
        if p.exists() and not overwrite:
            existing.append(str(p))
        checked.append(p)
    if existing:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise InputError(f"{shown} {'exists' if len(existing) == 1 else 'exist'}; use --overwrite to replace "
                         f"{'it' if len(existing) == 1 else 'them'}")
    return checked
