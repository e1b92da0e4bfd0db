"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (another process, a resumed batch, Slicer) never sees a half-written file, and a
failed write leaves the previous file as it was.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error it is
    renamed to ``path``, otherwise it is removed. ``keep_suffix``: the temporary name ends
    with ``path``'s suffixes (``.nii.gz``, ``.nrrd``), for writers that pick the format by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix if keep_suffix else ''}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
