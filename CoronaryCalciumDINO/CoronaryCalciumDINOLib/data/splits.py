"""Patient-level train / validation / test splits and the held-out synthetic seeds.

Splits are made over *groups* (patients): every study of a group lands in the same split,
so no patient is seen in training and in evaluation. For COCA, a patient with several
series keeps one group (see :func:`coca_patient`). Splits are deterministic for a given
seed and independent of the input order.

Synthetic studies are generated from integer seeds. :data:`HELDOUT_SYNTHETIC_SEEDS` is a
fixed range reserved for evaluation; :func:`check_disjoint` rejects any training set using
one of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..io.jsonfile import read_json, write_json

SPLITS_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")

#: Seeds of the synthetic studies reserved for evaluation (never used for training).
HELDOUT_SYNTHETIC_SEEDS = range(900000, 900200)
#: The held-out synthetic calcium-scoring phantoms (inside the reserved range).
HELDOUT_PHANTOM_SEEDS = range(900100, 900200)


def coca_patient(study_id: str) -> str:
    """Group key of a COCA study id: the patient id before any series suffix.

    ``"coca-123"``, ``"coca-123-2"`` and ``"coca-123_s2"`` all give ``"coca-123"``; ids
    without a ``coca-<digits>`` prefix are their own group.
    """
    m = re.match(r"^(coca-\d+)", study_id)
    return m.group(1) if m else study_id


def make_splits(
    study_ids: Iterable[str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    group: Callable[[str], str] | None = None,
) -> dict:
    """Split study ids into ``{"train": [...], "val": [...], "test": [...]}`` by group.

    ``group`` maps a study id to its patient (default: each study is its own patient).
    Groups are sorted, shuffled with ``seed`` and cut so that the numbers of *groups*
    follow ``fractions`` (rounded; each non-zero fraction gets at least one group when
    there are enough groups). Each list is sorted. The same ids, fractions and seed always
    give the same split, whatever the input order.
    """
    ids = sorted(set(str(s) for s in study_ids))
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(f < 0 for f in fr) or not abs(sum(fr) - 1.0) < 1e-6:
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    key = group or (lambda s: s)
    groups: dict[str, list[str]] = {}
    for s in ids:
        groups.setdefault(str(key(s)), []).append(s)
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    names = [names[i] for i in order]
    counts = _group_counts(len(names), fr)
    out: dict = {}
    start = 0
    for split, n in zip(SPLIT_NAMES, counts):
        out[split] = sorted(s for g in names[start : start + n] for s in groups[g])
        start += n
    return out


def _group_counts(n: int, fr: Sequence[float]) -> list[int]:
    """Numbers of groups per split: largest remainder, then one group for each non-zero
    fraction that got none, taken from the largest split."""
    raw = [f * n for f in fr]
    counts = [int(np.floor(r)) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if fr[i] > 0 and counts[i] == 0:
            j = int(np.argmax(counts))
            if counts[j] > 1:
                counts[j] -= 1
                counts[i] += 1
    return counts


def save_splits(splits: dict, path: str | Path, seed: int | None = None, **extra) -> Path:
    """Write splits as JSON ``{"version", "seed", "train", "val", "test", ...extra}``."""

    for name in SPLIT_NAMES:
        if name not in splits:
            raise InputError(f"splits lack the '{name}' list")
    check_no_overlap(splits)
    data = {"version": SPLITS_VERSION, "seed": seed if seed is not None else splits.get("seed")}
    data.update(extra)
    data.update({name: list(splits[name]) for name in SPLIT_NAMES})
    return write_json(data, path)


def load_splits(path: str | Path) -> dict:
    """Read a splits file written by :func:`save_splits` (checks version and overlap)."""

    p = Path(path)
    data = read_json(p, "splits file")
    if not isinstance(data, dict) or data.get("version") != SPLITS_VERSION:
        raise InputError(f"splits file {p.name} has version {data.get('version') if isinstance(data, dict) else None}, expected {SPLITS_VERSION}")
    for name in SPLIT_NAMES:
        if not isinstance(data.get(name), list):
            raise InputError(f"splits file {p.name} lacks the '{name}' list")
    check_no_overlap(data)
    return data


def check_no_overlap(splits: dict) -> None:
    """Raise :class:`InputError` if a study id is in more than one split."""
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for s in splits.get(name, []):
            if s in seen and seen[s] != name:
                raise InputError(f"study {s} is in both '{seen[s]}' and '{name}' splits")
            seen[s] = name


def check_disjoint(train_seeds: Iterable[int]) -> None:
    """Raise :class:`InputError` if any training seed is one of the held-out synthetic seeds."""
    bad = sorted({int(s) for s in train_seeds if int(s) in HELDOUT_SYNTHETIC_SEEDS})
    if bad:
        shown = ", ".join(str(s) for s in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise InputError(
            f"{len(bad)} training seed(s) are reserved for evaluation "
            f"({HELDOUT_SYNTHETIC_SEEDS.start}-{HELDOUT_SYNTHETIC_SEEDS.stop - 1}): {shown}"
        )
