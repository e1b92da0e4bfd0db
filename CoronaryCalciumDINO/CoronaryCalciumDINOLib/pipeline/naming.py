"""Stage *name*: which coronary artery a calcification lies on, from the heart's anatomy.

The segmenter says where calcium is; the artery it lies on follows from where the arteries
run, measured from a landmark found on the scan itself: the ascending aorta, followed down
to its root (:func:`.anatomy.ascending_aorta`). The coronary arteries leave the aortic root
and run in fixed grooves round the heart, so their course is fixed relative to it.

Definitions (canonical layout; on each slice, ``c`` is the aorta's centre and ``r`` its
radius, with ``x`` measured towards the patient's left and ``y`` forwards from ``c``, in mm;
below the top heart level, ``c`` is the root's centre; lesions 8-connected within one slice,
as the Agatston score counts them)
-------------------------------------------------------------------------------------------
RCA
    The right coronary artery leaves the right (anterior) sinus and runs down the right
    atrioventricular groove: a lesion whose centroid lies right of ``c`` (``x < 0``). In the
    pipeline this decides the side (RCA or left tree) only near the root; elsewhere the side
    is the segmenter's (below): under the heart the RCA's posterior descending branch
    crosses left of the root's centre, and the rule would call it LCX.
LM
    The left main leaves the left sinus and runs left for about 10 mm (:data:`LM_MM`)
    before it divides: calcium of a left lesion within ``r + LM_MM`` of ``c``, on the slices
    from the top heart level (the root) up.
LAD
    The left main leaves the root towards the left and back (the left sinus is the
    posterior-left one); from its division the anterior descending artery goes on to the
    left, round the pulmonary trunk, into the anterior interventricular groove and down to
    the apex: the rest of a left lesion, when the direction from ``c`` to its centroid is
    less than :data:`LCX_DEG` behind the patient's left on the root's levels (down to
    :data:`ROOT_ZONE_BELOW_MM` below the top heart level), and in front of the patient's
    left (less than :data:`LCX_DEG_BELOW` behind it) below them.
LCX
    The circumflex turns backwards into the left atrioventricular groove and runs round
    the heart's left side: the rest of a left lesion whose centroid's direction from ``c``
    points further back than that. On the root's levels the left main and the first
    centimetres of the LAD leave the left (posterior-left) sinus and lie behind-left of
    ``c`` (real dev scans 3 and 4: 8-42 degrees behind the left); below them the anterior
    interventricular groove lies in front of the root's centre and the left
    atrioventricular groove beside or behind it, so the patient's left divides them there.

Where the aorta is not found (a phantom, a scan that does not reach above the heart) the
segmenter's names stay, one side of the tree per lesion (:func:`one_side_per_lesion`).
Otherwise the side of each lesion (left tree or RCA) comes from two sources:

Proximal lesions: the aorta
    A lesion with a voxel within :data:`ROOT_ZONE_MM` of the aorta's wall (or inside it), on
    a slice at most :data:`ROOT_ZONE_BELOW_MM` below the top heart level, whose centroid lies
    less than 45 degrees from the patient's left or right as seen from ``c`` (:func:`root_zone`), lies
    on the first centimetres of an artery leaving the root: the left main leaves the left
    (posterior-left) sinus towards the patient's left, the RCA the right (anterior) sinus
    towards the right. Its side is its centroid's side of ``c``. In front of the root
    (where the RCA leaves it and the LAD passes round the pulmonary trunk) and behind it
    the side is not clear from the position and stays the segmenter's. The segmenter sees a
    crop and its place in a box round the heart, not the root, and a real heart's root sits
    elsewhere in that box than a synthetic one's: segmenters trained alike have called real
    dev scan 3's left main / LAD calcification (15-19 mm from the wall, left and slightly
    behind) RCA. On the generator's true calcium of 135 studies (seeds 100-299 with calcium
    and an aorta found) the zone holds 478 lesions, and the rule gives none the wrong side
    (reaching 15 mm below the top heart level, or not keeping to the two sectors, it gives
    some the wrong side: docs/model.md).
The other lesions: the segmenter
    Under the heart the RCA's posterior descending branch crosses left of the root's
    centre, where a rule by position would call it LCX; the segmenter tells the sides
    apart from the course of the calcium it sees. Each such lesion keeps the segmenter's
    side (one side per lesion).

The aorta's names (the side of the proximal lesions, and LM, LAD or LCX for the whole left
tree) are used only where the aorta and the segmenter agree on the side of the other
lesions' calcium, bar at most :data:`MAX_SIDE_DISAGREEMENT` of it (with no calcium outside
the root's zone, the check takes all of it, with the segmenter's sides, so that a tube
wrongly taken for the aorta cannot re-side the lesions unchecked): the two are independent
(the segmenter learnt the sides on synthetic hearts, where it tells them apart almost
perfectly), and such a disagreement means the tube taken for the aorta is most likely
another one; the segmenter's names then stay for every lesion. On the 100 synthetic
held-out studies the aorta's branches took the RCA's agreement from ICC 0.960 to 0.998 (its
distal calcium had been called LCX); on the five real dev scans (as acquired, heart-centred,
and ended 20 or 30 mm above the heart) they disagree on at most 8 % of the calcium compared
(one lesion of scan 4), and the aorta's names stand on every one.

The check counts only the calcium outside the root's zone whose side the segmenter is sure of
(its P(RCA | calcium) at least ``1 - SURE_SIDE`` where it gave RCA, at most :data:`SURE_SIDE`
where it gave the left tree), and is made only where that is at least :data:`MIN_SURE_SHARE`
of the calcium outside the zone (:func:`sure_sides`, :func:`enough_sure`); otherwise the aorta's names stand
(calcium only in the zone is checked as above, sure or not). Sides the segmenter is unsure of
say nothing about the tube. Before this rule, real dev scan 4 in fields set 20-35 mm towards
the back kept the segmenter's names (the left main / LAD as LCX): it called the calcium right
of the root left tree with P(RCA | calcium) 0.26-0.39 (RCA with 0.63-0.99 in the centred
field), and was sure of 0-5 % of the calcium checked in four such fields, 46 % in a fifth; in
a draw of scan 4 under 40 HU of noise one lesion right of the root (0.38) made the sides
disagree on 24 % of the calcium, on none of what the segmenter is sure of. On the synthetic
held-out studies, where the sides are what it learnt, it is sure of at least 84 % of the
calcium checked in every study (docs/model.md, "The segmenter unsure of the sides").

Known limits: where the left main ends varies from patient to patient (:data:`LM_MM` is
an average); away from the root, the side of a lesion the segmenter gets wrong stays wrong;
where little calcium lies outside the root's zone, that little decides whether the aorta is
trusted (requiring more of it made a noisy draw of real dev scan 3 fall back to the
segmenter's names, which call its left main / LAD calcification RCA); where the segmenter is
unsure of most of the sides checked, a tube wrongly taken for the aorta is not caught.

Array order (z, y, x) in the canonical axial LPS layout (anterior at row 0, patient left at
the last column). Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..scoring.agatston import _INPLANE_8
from .anatomy import Anatomy

#: Length (mm) of the left main beyond the aorta's wall (adults: 5-20 mm, about 10 on average).
LM_MM = 10.0
#: Share of the calcium voxels checked (those outside the root's zone; all of them where
#: there are none) whose side (left tree or RCA) the aorta and the segmenter disagree on
#: above which the aorta found is not trusted (it is then most likely another tube, e.g.
#: the superior vena cava or the pulmonary trunk): the segmenter's names stay.
MAX_SIDE_DISAGREEMENT = 0.2
#: The segmenter is sure of the side it gave a voxel when its P(RCA | calcium) there (its
#: candidate's mean P(RCA) over its mean P(not background)) is at least 1 minus this where it
#: gave RCA, at most this where it gave the left tree.
SURE_SIDE = 0.25
#: Share of the calcium checked (outside the root's zone) whose side the segmenter must be
#: sure of for the check to be made: with less, its sides cannot tell the aorta found wrong,
#: and the aorta's names stand. A development-set choice ("most of it"): on the 100 synthetic
#: held-out studies it is sure of at least 84 % in every study (99-100 % in most), of real dev
#: scan 4 in fields set towards the back of 0-5 % in four and 46 % in a fifth, which is named
#: from the aorta only because 46 % is under this (module docstring).
MIN_SURE_SHARE = 0.5
#: Distance (mm) beyond the aorta's wall within which a lesion is on the proximal part of an
#: artery leaving the root (the left main is 5-20 mm long): its side is the aorta's. Set to
#: take in real dev scan 3's left main / LAD calcification (15-19 mm beyond the wall): a
#: development-set choice, which the generator's calcium bears out (module docstring).
ROOT_ZONE_MM = 20.0
#: How far (mm) below the top heart level the proximal zone reaches: the ostia lie in the
#: sinuses at the root; far below it the RCA's posterior descending branch crosses left.
#: The same depth ends the root's levels of the LAD / LCX boundary (:data:`LCX_DEG_BELOW`).
ROOT_ZONE_BELOW_MM = 10.0
#: Direction (degrees behind the patient's left, seen from the aorta's centre) beyond which a
#: left lesion is on the circumflex on the root's levels: half-way between left and straight
#: back.
LCX_DEG = 45.0
#: The LAD / LCX boundary more than :data:`ROOT_ZONE_BELOW_MM` below the top heart level
#: (degrees behind the patient's left), where the LAD runs in front of the root's centre and
#: the circumflex beside or behind it: the patient's left.
#: On the generator's calcium below those levels (seeds 100-129) no LAD or LCX lesion's
#: centroid lies within 15 degrees of it: 15 degrees behind or in front name every voxel
#: alike (``python training/naming_on_synthetic.py --lcx-deg-below DEG``).
LCX_DEG_BELOW = 0.0


def _below_root_levels(z: np.ndarray, root: int, dz: float, below_mm: float = ROOT_ZONE_BELOW_MM) -> np.ndarray:
    """bool per slice index ``z``: more than ``below_mm`` under the top heart level ``root``
    (``dz``: slice spacing, mm), i.e. below the root's levels."""
    return np.asarray(z) < root - below_mm / float(dz) - 1e-6


def _lesions(labels: np.ndarray) -> tuple[int, np.ndarray, int] | None:
    """The lesions (calcium 8-connected within one slice) of the slices from the first to
    the last one with labels (no CT-sized temporaries): (first slice, component ids of those
    slices, count), or None without labels."""
    zs = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return None
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    comp, n = ndimage.label(labels[z0:z1] > 0, structure=_INPLANE_8)
    return z0, comp, n


def _lesion_voxels(labels: np.ndarray, axis: np.ndarray, spacing: Sequence[float]):
    """The calcium voxels of ``labels`` with their lesion and their place round the aorta:
    (lesion count n, lesion id 1..n per voxel, (z, y, x), (xr, yr)), ``xr`` mm towards the
    patient's left and ``yr`` mm forwards from the aorta's centre on the voxel's slice
    (``axis``, ``spacing`` as :func:`name_by_aorta`); None without calcium."""
    found = _lesions(labels)
    if found is None:
        return None
    z0, comp, n = found
    _, dy, dx = (float(s) for s in spacing)
    z, y, x = np.nonzero(comp)
    c = comp[z, y, x].astype(np.int64)
    z = z + z0
    return n, c, (z, y, x), ((x - axis[z, 1]) * dx, (axis[z, 0] - y) * dy)


def one_side_per_lesion(labels: np.ndarray) -> np.ndarray:
    """``labels`` (z, y, x) with every lesion (calcium 8-connected within one slice, as the
    Agatston score counts it) on one side of the coronary tree.

    The left tree (LM, LAD, LCX) and the RCA run in different grooves and never meet, so one
    calcification cannot belong to both; a per-pixel segmenter can still split one that way.
    Where a lesion holds both, the side with more of its voxels takes it all: RCA voxels take
    the lesion's most frequent left artery, left-tree voxels become RCA. Within the left
    tree a lesion may hold several arteries (the left main's bifurcation).

    The per-voxel artery confidence of the pipeline (``p_art``) stays the segmenter's
    probability of the artery it chose, also for voxels moved to the other side."""
    found = _lesions(labels)
    if found is None:
        return labels
    z0, comp, n = found
    sub = labels[z0: z0 + comp.shape[0]]
    m = comp > 0
    c, lab = comp[m].astype(np.int64), sub[m].astype(np.int64)
    counts = np.bincount(c * 5 + lab, minlength=(n + 1) * 5).reshape(n + 1, 5)
    left, right = counts[:, 1:4].sum(axis=1), counts[:, 4]
    mixed = (left > 0) & (right > 0)
    mixed[0] = False
    if not mixed.any():
        return labels
    to_left = mixed & (left >= right)
    best_left = 1 + np.argmax(counts[:, 1:4], axis=1)
    new = lab.copy()
    sel = to_left[c] & (lab == 4)
    new[sel] = best_left[c[sel]]
    new[(mixed & ~to_left)[c] & (lab >= 1) & (lab <= 3)] = 4
    out = labels.copy()
    out[z0: z0 + comp.shape[0]][m] = new.astype(labels.dtype)
    return out


def name_by_aorta(labels: np.ndarray, axis: np.ndarray, radius_mm: float, root: int | None,
                  spacing: Sequence[float], sides: np.ndarray | None = None,
                  lcx_deg_below: float | None = None) -> np.ndarray:
    """``labels`` (z, y, x; 0 background, any artery code for calcium) renamed by the
    definitions of the module docstring. ``axis`` (z, 2): the aorta's centre (row, column
    in pixels) per slice; ``root``: the top heart level (slice index; None: every slice can
    hold the left main and is on the root's levels); ``spacing`` (dz, dy, dx) mm; ``sides``: labels giving each lesion's
    side (4: RCA, else the left tree; one side per lesion), or None: the side from the
    lesion's centroid (right of the aorta's centre: RCA); ``lcx_deg_below``: the LAD / LCX
    boundary below the root's levels (None: :data:`LCX_DEG_BELOW`; other values are for
    measuring the rule: training/naming_on_synthetic.py)."""
    labels = np.asarray(labels)
    found = _lesion_voxels(labels, axis, spacing)
    if found is None:
        return labels
    n, c, (z, y, x), (xr, yr) = found
    if sides is None:
        right = np.bincount(c, weights=xr, minlength=n + 1) < 0  # centroid right of the aorta's centre
    else:  # the side (RCA or left tree) given per voxel, one side per lesion
        right = np.bincount(c, weights=np.asarray(sides)[z, y, x] == 4, minlength=n + 1) > 0
    lm = (xr >= 0) & (np.hypot(xr, yr) <= radius_mm + LM_MM) & ~right[c]
    if root is not None:
        lm &= z >= root
    rest = ~lm
    mx = np.bincount(c[rest], weights=xr[rest], minlength=n + 1)
    my = np.bincount(c[rest], weights=yr[rest], minlength=n + 1)
    angle = np.degrees(np.arctan2(my, mx))  # centroid direction (sums: same angle)
    limit = np.full(n + 1, -LCX_DEG)
    if root is not None:  # below the root's levels: the grooves' boundary (lesions lie on one slice)
        deep = np.zeros(n + 1, bool)
        deep[c] = _below_root_levels(z, root, spacing[0])
        limit[deep] = -(LCX_DEG_BELOW if lcx_deg_below is None else lcx_deg_below)
    front = angle > limit
    code = np.where(right[c], 4, np.where(lm, 1, np.where(front[c], 2, 3)))
    out = labels.copy()
    out[z, y, x] = code.astype(labels.dtype)
    return out


def name_arteries(labels: np.ndarray, anatomy: Anatomy | None, spacing: Sequence[float],
                  p_right: np.ndarray | None = None) -> np.ndarray:
    """Stage *name*: ``labels`` (canonical layout, the slices of ``anatomy``) named from the
    aorta when the anatomy step found it, else the segmenter's names with one side of the
    tree per lesion; ``p_right`` as :func:`name_with_source`."""
    return name_with_source(labels, anatomy, spacing, p_right)[0]


def root_zone(labels: np.ndarray, axis: np.ndarray, radius_mm: float, root: int | None,
              spacing: Sequence[float], zone_mm: float = ROOT_ZONE_MM,
              below_mm: float = ROOT_ZONE_BELOW_MM, sectors: bool = True) -> np.ndarray:
    """bool (z, y, x): the voxels of the lesions of ``labels`` (calcium 8-connected within one
    slice) that lie on the proximal part of an artery leaving the aortic root towards the
    patient's left or right: a voxel within ``zone_mm`` (:data:`ROOT_ZONE_MM`) of the
    aorta's wall or inside it, on a slice at most ``below_mm`` (:data:`ROOT_ZONE_BELOW_MM`)
    below the top heart level ``root`` (None: any slice), the centroid less than 45 degrees
    from the patient's left or right as seen from the aorta's centre (``sectors=False``: in any direction; the
    other two settings are for measuring the rule: training/naming_on_synthetic.py).
    ``axis``, ``radius_mm``, ``spacing`` as :func:`name_by_aorta`."""
    out = np.zeros(np.shape(labels), bool)
    found = _lesion_voxels(np.asarray(labels), axis, spacing)
    if found is None:
        return out
    n, c, (z, y, x), (xr, yr) = found
    dz = float(spacing[0])
    near = np.zeros(n + 1)
    np.maximum.at(near, c, np.hypot(xr, yr) - radius_mm <= zone_mm)
    if sectors:  # centroid towards the left or the right, not the front or the back (sums: same
        # direction; strictly, so that a ring centred on the root, its wall's calcification, is out)
        near *= np.abs(np.bincount(c, weights=yr, minlength=n + 1)) < np.abs(np.bincount(c, weights=xr, minlength=n + 1))
    if root is not None:
        near[np.unique(c[_below_root_levels(z, root, dz, below_mm)])] = 0
    sel = near[c] > 0
    out[z[sel], y[sel], x[sel]] = True
    return out


@dataclass(frozen=True)
class NamingCheck:
    """What the check on the aorta's names (module docstring) counted and found, in calcium
    voxels: ``checked``, those outside the root's zone (all of them where none are:
    ``zone_only``); ``sure``, those of them whose side the segmenter is sure of
    (:func:`sure_sides`; all of them where it gave no side probabilities); ``made``, whether
    the check was made (always where ``zone_only``; else where ``sure`` is at least
    :data:`MIN_SURE_SHARE` of ``checked``); ``counted``, the voxels the sides were compared on
    (``sure``; all of ``checked`` where ``zone_only``; 0 where the check was not made);
    ``disagree``, those of them whose side the aorta and the segmenter disagree on."""

    checked: int
    zone_only: bool
    sure: int
    made: bool
    counted: int
    disagree: int

    @property
    def sure_share(self) -> float:
        """Share of the calcium checked whose side the segmenter is sure of."""
        return self.sure / self.checked if self.checked else 0.0

    @property
    def disagreement(self) -> float | None:
        """Share of the calcium counted whose side the aorta and the segmenter disagree on
        (None: the check was not made)."""
        return self.disagree / self.counted if self.made and self.counted else None

    @property
    def passed(self) -> bool:
        """The aorta's names stand: the check was not made, or the sides disagree on at most
        :data:`MAX_SIDE_DISAGREEMENT` of the calcium counted."""
        return self.disagreement is None or self.disagreement <= MAX_SIDE_DISAGREEMENT

    def as_dict(self) -> dict:
        """The figures for a report (JSON types, unrounded)."""
        return {
            "zone_only": bool(self.zone_only),
            "voxels_checked": int(self.checked),
            "segmenter_sure_share": float(self.sure_share),
            "check_made": bool(self.made),
            "voxels_counted": int(self.counted),
            "sides_disagree_share": None if self.disagreement is None else float(self.disagreement),
            "min_sure_share": MIN_SURE_SHARE,
            "max_disagreement": MAX_SIDE_DISAGREEMENT,
        }


def name_with_source(labels: np.ndarray, anatomy: Anatomy | None, spacing: Sequence[float],
                     p_right: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """:func:`name_arteries` and where the names came from: ``"aorta"``, ``"segmenter: no
    aorta found"``, ``"segmenter: the aorta disagrees"`` or ``"segmenter"`` (no calcium to
    name). ``p_right``: float (z, y, x), the segmenter's P(RCA | calcium) at each voxel of
    ``labels`` (None: taken as sure everywhere): the check counts only the calcium whose side
    it is sure of, and is not made where that is less than :data:`MIN_SURE_SHARE` of the
    calcium checked (:func:`sure_sides`, :func:`enough_sure`)."""
    return name_and_check(labels, anatomy, spacing, p_right)[:2]


def name_and_check(labels: np.ndarray, anatomy: Anatomy | None, spacing: Sequence[float],
                   p_right: np.ndarray | None = None) -> tuple[np.ndarray, str, NamingCheck | None]:
    """:func:`name_with_source` and what its check on the aorta's names counted and found
    (:class:`NamingCheck`; None where there was no check: no calcium, no aorta found).

    The work is done on the box round the calcium (every rule is measured from the aorta's
    centre, its wall and the top heart level, which move with the box), so that its cost
    follows the calcium, not the scan."""
    labels = np.asarray(labels)
    box = _calcium_box(labels)
    if box is None:
        return one_side_per_lesion(labels), "segmenter", None
    if anatomy is None or anatomy.aorta_axis is None or anatomy.aorta_radius_mm is None:
        return one_side_per_lesion(labels), "segmenter: no aorta found", None
    (z0, z1), (y0, y1), (x0, x1) = box
    axis = np.asarray(anatomy.aorta_axis, dtype=float)[z0:z1] - np.array([y0, x0], dtype=float)
    root = None if anatomy.heart_levels is None else anatomy.heart_levels[1] - z0
    inside = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    named, source, found = _name_in_box(labels[inside], axis, anatomy.aorta_radius_mm, root, spacing,
                                        None if p_right is None else np.asarray(p_right)[inside])
    out = np.zeros_like(labels)
    out[inside] = named
    return out, source, found


def _calcium_box(labels: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """The bounds [start, stop) along (z, y, x) of the calcium of ``labels``; None without."""
    zs = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return None
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    rows = np.flatnonzero(labels[z0:z1].any(axis=(0, 2)))
    cols = np.flatnonzero(labels[z0:z1].any(axis=(0, 1)))
    return (z0, z1), (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)


def _name_in_box(labels: np.ndarray, axis: np.ndarray, radius: float, root: int | None, spacing: Sequence[float],
                 p_right: np.ndarray | None) -> tuple[np.ndarray, str, NamingCheck]:
    """:func:`name_and_check` on ``labels`` holding calcium, the aorta found (``axis``,
    ``radius``, ``root`` as :func:`name_by_aorta`)."""
    model = one_side_per_lesion(labels)
    by_position = name_by_aorta(labels, axis, radius, root, spacing)
    zone = root_zone(labels, axis, radius, root, spacing)
    calc = model > 0
    check = calc & ~zone
    zone_only = not check.any()
    if zone_only:  # calcium only near the ostia: all of it checked with the segmenter's sides, sure
        check = calc  # or not, so that a tube wrongly taken for the aorta cannot re-side it unchecked
    sure = sure_sides(check, model == 4, p_right)
    made = zone_only or enough_sure(sure, check)
    counted = check if zone_only else sure if made else np.zeros_like(check)
    disagree = int(((model[counted] == 4) != (by_position[counted] == 4)).sum())
    found = NamingCheck(checked=int(check.sum()), zone_only=zone_only, sure=int(sure.sum()), made=made,
                        counted=int(counted.sum()), disagree=disagree)
    if not found.passed:
        return model, "segmenter: the aorta disagrees", found
    sides = np.where(zone, by_position, model)
    return name_by_aorta(labels, axis, radius, root, spacing, sides=sides), "aorta", found


def sure_sides(check: np.ndarray, right: np.ndarray, p_right: np.ndarray | None) -> np.ndarray:
    """The voxels of ``check`` (bool (z, y, x), the calcium checked) whose side the segmenter
    gave (``right``: bool, RCA; else left tree) it is sure of: its P(RCA | calcium) ``p_right``
    at least ``1 - SURE_SIDE`` where it gave RCA, at most :data:`SURE_SIDE` where it gave the
    left tree (``p_right`` None: sure everywhere, ``check`` itself). The check is made only
    where they are enough of ``check`` (:func:`enough_sure`)."""
    if p_right is None:
        return check
    p = np.asarray(p_right)
    return check & np.where(right, p >= 1.0 - SURE_SIDE, p <= SURE_SIDE)


def enough_sure(sure: np.ndarray, check: np.ndarray) -> bool:
    """The voxels the segmenter is sure of (``sure``, :func:`sure_sides`) are at least
    :data:`MIN_SURE_SHARE` of the calcium checked (``check``): with fewer, sides it is unsure
    of cannot tell the aorta found wrong, nor right, and the check is not made."""
    return bool(sure.sum() >= MIN_SURE_SHARE * check.sum())
