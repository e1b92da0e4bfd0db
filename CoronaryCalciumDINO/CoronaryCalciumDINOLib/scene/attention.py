"""Attention maps as a scalar volume overlay on the CT grid.

The pipeline returns ``attention`` as float32 (heads + 1, z, y, x), index 0 the mean over
heads. One volume node per result holds one map at a time; :func:`show_attention_head`
refills it with another head on demand (no per-head copies in the scene).

The maps kept for that (:class:`AttentionMaps`) are quantised: values in 0..1 (the
pipeline scales each head to a maximum of 1) stored in ``bits`` bits per map and voxel
(8, fewer only when 8 would exceed :data:`ATTENTION_BUDGET_BYTES`), only in the box of the
voxels the attention reaches (elsewhere it is 0), or only at those voxels when that is
smaller. A head is decoded when it is shown.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .volume import _vtk, node_ijk_to_ras, nodes_by_class, numpy_to_matrix

HEAD_ATTRIBUTE = "CoronaryCalciumDINO.AttentionHead"
#: Slice composite node attributes: the view's own foreground (node ID, "" for none) and
#: its opacity while the attention overlay replaces them.
PREVIOUS_FOREGROUND = "CoronaryCalciumDINO.PreviousForeground"
PREVIOUS_OPACITY = "CoronaryCalciumDINO.PreviousForegroundOpacity"


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


def attention_name(volume_node) -> str:
    return f"{volume_node.GetName()} attention"


def show_attention_head(scene, volume_node, attention: np.ndarray, head: int = 0, node=None):
    """Fill (or create) the attention volume with map ``head`` (0 = mean); returns the node."""
    import slicer

    vtk, ns = _vtk()
    if not isinstance(attention, AttentionMaps):
        attention = np.asarray(attention)
    dims = volume_node.GetImageData().GetDimensions()
    grid = (dims[2], dims[1], dims[0])
    if len(attention.shape) != 4 or tuple(attention.shape[1:]) != grid:
        raise InputError(f"attention maps of shape {tuple(attention.shape)} do not match the CT grid {grid}")
    if not 0 <= int(head) < attention.shape[0]:
        raise InputError(f"attention head {head} out of range 0..{attention.shape[0] - 1} (0 = mean)")
    if node is None:
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(attention_name(volume_node))
        scene.AddNode(node)
    image = vtk.vtkImageData()  # filled in place: no float copy of the map besides the node's own
    image.SetDimensions(dims)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    target = ns.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(grid)
    if isinstance(attention, AttentionMaps):
        attention.head(int(head), out=target)
    else:
        target[...] = attention[int(head)]
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(numpy_to_matrix(node_ijk_to_ras(volume_node)))
    node.SetAttribute(HEAD_ATTRIBUTE, str(int(head)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        color = scene.GetNodeByID("vtkMRMLColorTableNodeFileInferno.txt") or scene.GetNodeByID(
            "vtkMRMLColorTableNodeRainbow"
        )
        if color is not None:
            display.SetAndObserveColorNodeID(color.GetID())
        display.AutoWindowLevelOn()
    return node


def _composites(scene) -> list:
    return nodes_by_class(scene, "vtkMRMLSliceCompositeNode")


def set_overlay(scene, attention_node, show: bool, opacity: float) -> int:
    """Show or hide ``attention_node`` as the foreground layer of every slice view; returns
    the number of views changed.

    Only the foreground layer is touched, and only in views where it changes: showing puts
    the attention into each view that does not show it yet (remembering that view's own
    foreground and opacity); hiding gives each view that shows it back what it had before.
    The background volume is never changed, so calling this with ``show=False`` while the
    overlay is hidden changes nothing. A scene without slice views (headless), or no
    attention node, is left unchanged.
    """
    if attention_node is None:
        return 0
    node_id = attention_node.GetID()
    changed = 0
    for composite in _composites(scene):
        shown = composite.GetForegroundVolumeID() == node_id
        if show and not shown:
            wasModifying = composite.StartModify()
            composite.SetAttribute(PREVIOUS_FOREGROUND, composite.GetForegroundVolumeID() or "")
            composite.SetAttribute(PREVIOUS_OPACITY, repr(float(composite.GetForegroundOpacity())))
            composite.SetForegroundVolumeID(node_id)
            composite.SetForegroundOpacity(_clip(opacity))
            composite.EndModify(wasModifying)
            changed += 1
        elif not show and shown:
            previous = composite.GetAttribute(PREVIOUS_FOREGROUND) or None
            if previous is not None and scene.GetNodeByID(previous) is None:
                previous = None  # the user's foreground was removed meanwhile
            opacity_text = composite.GetAttribute(PREVIOUS_OPACITY)
            wasModifying = composite.StartModify()
            composite.SetForegroundVolumeID(previous)
            if opacity_text is not None:
                composite.SetForegroundOpacity(float(opacity_text))
            composite.RemoveAttribute(PREVIOUS_FOREGROUND)
            composite.RemoveAttribute(PREVIOUS_OPACITY)
            composite.EndModify(wasModifying)
            changed += 1
    return changed


def set_overlay_opacity(scene, attention_node, opacity: float) -> int:
    """Set the foreground opacity of the views that show ``attention_node``; returns their
    number (0 while the overlay is hidden: no view is touched)."""
    if attention_node is None:
        return 0
    changed = 0
    for composite in _composites(scene):
        if composite.GetForegroundVolumeID() == attention_node.GetID():
            composite.SetForegroundOpacity(_clip(opacity))
            changed += 1
    return changed


def _clip(opacity: float) -> float:
    return float(np.clip(opacity, 0.0, 1.0))
