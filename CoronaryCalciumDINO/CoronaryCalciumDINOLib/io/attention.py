"""Attention maps kept quantised (:class:`AttentionMaps`), and their file.

The pipeline's attention is float32 (heads + 1, z, y, x), index 0 the mean over heads: 2.1 GB
for a 512 x 512 x 400 CT. What is kept of it for display is quantised: values in 0..1 (the
pipeline scales each head to a maximum of 1) stored in ``bits`` bits per map and voxel (8,
fewer only when 8 would exceed :data:`ATTENTION_BUDGET_BYTES`), only in the box of the
voxels the attention reaches (elsewhere it is 0), or only at those voxels when that is
smaller. A head is decoded when it is shown.

The scoring command quantises the maps itself and writes them as one file
(:meth:`AttentionMaps.save`, ``ccdino score --attention-codes FILE``: an uncompressed NumPy
``.npz`` of the codes), so that the Slicer module loads what it keeps
(:meth:`AttentionMaps.load`) and never holds or quantises the float maps on its main thread.
Imports no VTK or Slicer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import atomic_path

#: Version of the file written by :meth:`AttentionMaps.save`.
FILE_FORMAT = 1


#: Most bytes :class:`AttentionMaps` keeps for one result (the bound holds for any CT up to
#: 512 x 512 x 400 voxels with 4 heads + mean even when the attention covers every voxel).
ATTENTION_BUDGET_BYTES = 280 * 1024 * 1024


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes (< 2**bits) packed ``8 // bits`` to a byte (the last byte zero-padded)."""
    if bits == 8:
        return np.ascontiguousarray(values, dtype=np.uint8).ravel()
    per = 8 // bits
    flat = np.ascontiguousarray(values, dtype=np.uint8).ravel()
    padded = np.zeros(-(-flat.size // per) * per, dtype=np.uint8)
    padded[: flat.size] = flat
    groups = padded.reshape(-1, per)
    out = np.zeros(groups.shape[0], dtype=np.uint8)
    for i in range(per):
        out |= groups[:, i] << np.uint8(i * bits)
    return out


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return packed[:count]
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((packed.size, per), dtype=np.uint8)
    for i in range(per):
        out[:, i] = (packed >> np.uint8(i * bits)) & mask
    return out.ravel()[:count]


class AttentionMaps:
    """Attention maps (count, z, y, x) kept quantised; :meth:`head` decodes one map.

    ``maps`` are the pipeline's float maps (values >= 0; 0 where the attention does not
    reach). Each map ``h`` is stored as codes ``round(value / step[h])`` in ``bits`` bits,
    ``step[h] = max(map h) / (2**bits - 1)``, so a decoded value is within ``step[h] / 2`` of
    the original, and 0 stays exactly 0. Storage: the box of the reached voxels (dense), or
    only the reached voxels (their flat index in the box and their codes) when that is
    smaller; ``nbytes`` is what is kept.
    """

    def __init__(self, maps: np.ndarray, budget_bytes: int = ATTENTION_BUDGET_BYTES):
        maps = np.asarray(maps)
        if maps.ndim != 4:
            raise InputError(f"attention maps must be (heads + 1, z, y, x), got shape {maps.shape}")
        self.count = int(maps.shape[0])
        self.grid = tuple(int(n) for n in maps.shape[1:])
        reached = np.zeros(self.grid, dtype=bool)
        for h in range(self.count):  # one map at a time: no temporary of all maps' size
            if maps[h].size and not (np.isfinite(maps[h]).all() and float(maps[h].min()) >= 0):
                raise InputError("attention maps must hold finite values >= 0")
            reached |= maps[h] > 0
        box = [np.flatnonzero(reached.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        if any(b.size == 0 for b in box):
            self.box = (slice(0, 0),) * 3
        else:
            self.box = tuple(slice(int(b[0]), int(b[-1]) + 1) for b in box)
        inside = reached[self.box]
        del reached
        box_voxels = int(inside.size)
        points = int(np.count_nonzero(inside))
        for bits in (8, 4, 2, 1):
            dense = self.count * -(-box_voxels * bits // 8)
            sparse = 4 * points + self.count * -(-points * bits // 8)
            if min(dense, sparse) <= budget_bytes or bits == 1:
                break
        self.bits = bits
        self.sparse = sparse < dense
        levels = (1 << bits) - 1
        self.step = np.array([float(maps[h].max()) / levels if maps[h].size else 0.0 for h in range(self.count)])
        self.index = np.flatnonzero(inside).astype(np.int32) if self.sparse else None
        self.voxels = points if self.sparse else box_voxels
        self.codes = []
        for h in range(self.count):
            box = maps[h][self.box]
            step = self.step[h] if self.step[h] > 0 else 1.0
            codes = np.empty(self.voxels, dtype=np.uint8)
            plane = box.shape[1] * box.shape[2]
            chunk = max(1, (1 << 22) // max(plane, 1))  # a few million voxels at a time
            done = 0
            for z in range(0, box.shape[0], chunk):
                values = box[z: z + chunk].reshape(-1)
                if self.sparse:
                    first = z * plane
                    lo, hi = np.searchsorted(self.index, [first, first + values.size])
                    index = self.index[lo:hi] - first
                    values = values[index]
                q = np.rint(np.asarray(values, dtype=np.float64) / step)
                codes[done: done + values.size] = np.clip(q, 0, levels)
                done += values.size
            self.codes.append(_pack(codes, bits))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the quantised maps to ``path`` (an uncompressed ``.npz``; atomically)."""
        path = Path(path)
        arrays = {
            "format": np.array([FILE_FORMAT, self.count, self.bits, int(self.sparse), self.voxels], dtype=np.int64),
            "grid": np.array(self.grid, dtype=np.int64),
            "box": np.array([[s.start, s.stop] for s in self.box], dtype=np.int64).reshape(3, 2),
            "step": np.asarray(self.step, dtype=np.float64),
            "index": self.index if self.index is not None else np.zeros(0, dtype=np.int32),
        }
        arrays.update({f"codes{h}": codes for h, codes in enumerate(self.codes)})
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, grid=None) -> "AttentionMaps":
        """The maps :meth:`save` wrote to ``path``; ``grid`` (z, y, x): the CT grid they must be
        on. A file that is not such maps, or is on another grid, is an :class:`InputError`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                head = [int(v) for v in f["format"]]
                if len(head) != 5 or head[0] != FILE_FORMAT:
                    raise ValueError(f"format {head[:1]}")
                self = cls.__new__(cls)
                self.count, self.bits, sparse, self.voxels = head[1], head[2], bool(head[3]), head[4]
                self.sparse = sparse
                self.grid = tuple(int(n) for n in f["grid"])
                self.box = tuple(slice(int(a), int(b)) for a, b in f["box"])
                self.step = np.asarray(f["step"], dtype=np.float64)
                self.index = np.asarray(f["index"], dtype=np.int32) if sparse else None
                self.codes = [np.asarray(f[f"codes{h}"], dtype=np.uint8) for h in range(self.count)]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path.name} holds no attention maps this version reads ({exc})") from None
        per_map = -(-self.voxels * self.bits // 8)
        box_voxels = int(np.prod([s.stop - s.start for s in self.box]))
        if (self.bits not in (1, 2, 4, 8) or len(self.grid) != 3 or len(self.step) != self.count
                or any(c.size != per_map for c in self.codes)
                or any(s.start < 0 or s.stop > n or s.stop < s.start for s, n in zip(self.box, self.grid))
                or (self.voxels != box_voxels if not sparse else self.index.size != self.voxels)):
            raise InputError(f"{path.name}: the attention maps are inconsistent (a damaged file?)")
        if grid is not None and tuple(int(n) for n in grid) != self.grid:
            raise InputError(f"{path.name}: attention maps on a {self.grid} grid, not the CT's {tuple(grid)}")
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.grid)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.codes) + (self.index.nbytes if self.index is not None else 0)

    def head(self, h: int, out: np.ndarray | None = None) -> np.ndarray:
        """Map ``h`` (0 = mean) decoded on the whole grid as float32 (into ``out`` if given)."""
        if not 0 <= int(h) < self.count:
            raise InputError(f"attention head {h} out of range 0..{self.count - 1} (0 = mean)")
        if out is None:
            out = np.zeros(self.grid, dtype=np.float32)
        else:
            out[...] = 0
        codes = _unpack(self.codes[int(h)], self.bits, self.voxels).astype(np.float32) * np.float32(self.step[int(h)])
        region = out[self.box]
        if self.sparse:
            flat = np.zeros(region.size, dtype=np.float32)
            flat[self.index] = codes
            region[...] = flat.reshape(region.shape)
        else:
            region[...] = codes.reshape(region.shape)
        return out
