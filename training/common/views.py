"""View pairing for multi-view self-supervision (VET-DINO adapted to CT) and neighbour views.

A *view* is another image of the same anatomy. Best first:

* ``adjacent``: another axial slice of the same series at 3-6 mm from the anchor
  (:func:`adjacent_offsets`: 1-2 slices at 3 mm, 2-4 at 1.5 mm, always at least 1 slice);
* ``series``: the same slice position in a second series of the study (another
  reconstruction or acquisition on the same grid) when the study has one, otherwise the
  adjacent view.

With label guidance, when the anchor slice is calcified the partner is drawn inside the z-range
of one of the anchor's lesions (a 3D connected component of the labels, chosen in proportion
to its area on the anchor) and the partner's guided crops target that lesion at the same
(x, y): its pixels on the partner slice when it has some, else the anchor's pixel. A lesion
seen on one slice only has no partner inside its range; the partner is then an ordinary
adjacent slice, still guided to the same (x, y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

VIEW_MODES = ("none", "adjacent", "series")


def adjacent_offsets(dz_mm: float, min_mm: float = 3.0, max_mm: float = 6.0) -> list[int]:
    """Positive slice offsets k whose distance k * dz lies in about [min_mm, max_mm] (>= 1 slice)."""
    dz = float(dz_mm)
    if not dz > 0:
        return [1]
    k_min = max(1, int(round(min_mm / dz)))
    k_max = max(k_min, int(math.floor(max_mm / dz + 1e-6)))
    return list(range(k_min, k_max + 1))


def lesion_components(labels: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """3D lesion components (26-connected, any artery label) and each one's z-range (inclusive)."""
    comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    ranges: dict[int, tuple[int, int]] = {}
    for i, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is not None:
            ranges[i] = (int(sl[0].start), int(sl[0].stop - 1))
    return comp.astype(np.uint16 if n < 65535 else np.int32), ranges


@dataclass
class ViewChoice:
    """The partner of an anchor slice: where it comes from and where to guide its crops."""

    z: int
    series: int = 0  # 0 = the primary series, k >= 1 = the k-th extra series
    targets: np.ndarray | None = None  # (N, 2) pixels to guide the partner's crops to
    anchor_point: tuple[int, int] | None = None  # the anchor lesion pixel the pair is about
    in_lesion_range: bool = False


def pick_adjacent(
    z: int, nz: int, offsets: list[int], rng: np.random.Generator, z_range: tuple[int, int] | None = None
) -> tuple[int, bool]:
    """A slice z + s*k (s = +-1, k in ``offsets``) inside the volume, preferring ``z_range``.

    Returns ``(z_partner, inside_range)``. When no candidate lies in ``z_range`` (or no range is
    given) any in-volume candidate is used; with none at all (a 1-slice volume) ``z`` itself.
    """
    cands = [z + s * k for k in offsets for s in (-1, 1) if 0 <= z + s * k < nz]
    if z_range is not None:
        inside = [c for c in cands if z_range[0] <= c <= z_range[1]]
        if inside:
            return int(inside[int(rng.integers(len(inside)))]), True
    if not cands:
        return int(z), False
    return int(cands[int(rng.integers(len(cands)))]), False


def choose_partner(
    mode: str,
    z: int,
    nz: int,
    dz_mm: float,
    rng: np.random.Generator,
    components: np.ndarray | None = None,
    comp_ranges: dict[int, tuple[int, int]] | None = None,
    n_series: int = 0,
    guided: bool = False,
    min_mm: float = 3.0,
    max_mm: float = 6.0,
) -> ViewChoice:
    """Pick the partner view of slice ``z`` (see the module docstring).

    ``components`` / ``comp_ranges`` come from :func:`lesion_components` of the study's labels;
    ``n_series`` is the number of extra series on the same grid; ``guided`` turns on lesion
    z-range pairing and same-(x, y) guidance.
    """
    anchor = _anchor_lesion_pixel(z, components, rng) if guided else None
    cid = int(components[z, anchor[0], anchor[1]]) if anchor is not None else 0
    if mode == "series" and n_series > 0:
        choice = ViewChoice(z=int(z), series=int(rng.integers(1, n_series + 1)))
        if anchor is not None:
            choice.targets = _component_pixels(components, z, cid, anchor)
            choice.anchor_point = anchor
            choice.in_lesion_range = True
        return choice
    offsets = adjacent_offsets(dz_mm, min_mm, max_mm)
    if anchor is None:
        zp, _ = pick_adjacent(z, nz, offsets, rng)
        return ViewChoice(z=zp)
    zp, inside = pick_adjacent(z, nz, offsets, rng, comp_ranges.get(cid) if comp_ranges else None)
    targets = _component_pixels(components, zp, cid, anchor)
    return ViewChoice(z=zp, targets=targets, anchor_point=anchor, in_lesion_range=inside)


def _anchor_lesion_pixel(z: int, components: np.ndarray | None, rng: np.random.Generator):
    if components is None:
        return None
    pts = np.argwhere(components[z] > 0)
    if len(pts) == 0:
        return None
    p = pts[int(rng.integers(len(pts)))]
    return int(p[0]), int(p[1])


def _component_pixels(components: np.ndarray, z: int, cid: int, anchor: tuple[int, int]) -> np.ndarray:
    """Pixels of lesion component ``cid`` on slice ``z``; the anchor pixel if it has none there."""
    pts = np.argwhere(components[z] == cid)
    if len(pts):
        return pts
    return np.array([anchor], dtype=np.int64)
