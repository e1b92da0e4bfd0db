"""Where coronary calcium can be: the lungs, bone and the heart region, from HU alone, in 3D.

The one module that owns the anatomy step of the pipeline (training calls it too). Nothing
here uses calcium labels: they do not exist when a new CT is scored.

Definitions (all on a working grid of about 2 mm in-plane, block means of the CT's own
pixels; every slice kept)
--------------------------------------------------------------------------------------
body
    Per slice, the largest connected region > -400 HU with its holes filled.
lungs
    3D connected air (< -400 HU) of at least :data:`MIN_LUNG_CM3` that is not the air
    around the patient: apart from the image edge, inside the body or with a mean above
    :data:`OUTSIDE_AIR_HU` (air around a patient is about -1000 HU, lung -950 to -700); or,
    cut by the field of view (a heart-centred reconstruction), reaching the image edge with
    such a mean and median (the air in front of the chest, in a field's corner, has its mean
    lifted above it by the skin's partial volume; its median stays near -1000; the mean
    alone where the median would leave no air of that size), at least :data:`MIN_EDGE_LUNG_CM3` and
    centred in the middle 70 % of the rows (the air between the back and the table lies
    against the image's back).
mediastinum
    Per slice, the convex hull of the lungs (over the slices within
    :data:`HULL_Z_MM` above and below, so that a slice where a lung tapers off keeps its
    hull) minus the lungs: the heart, the great vessels, the oesophagus, the spine between
    the lungs and the back of the sternum. Where a lung (over those slices) leaves the view's
    right edge (the patient's right: a heart-centred field set towards the patient's left) at
    its own front, and that front lies more than :data:`RIGHT_LUNG_BEHIND_MM` behind the front
    of the lungs, the right lung's front is out of view: the hull takes in that edge from the
    lungs' front down to where the lung leaves it (:func:`_right_lung_cut_front`); otherwise
    the hull of what is on view of the right lung runs through the heart. Only on the right:
    at the heart's levels the right lung's front lies against the chest wall beside the
    sternum, while the heart pushes the left lung's front back.
bone
    3D connected regions >= :data:`BONE_HU` (on the working grid, the marrow inside a
    cortical shell filled per slice) of at least :data:`MIN_BONE_CM3`, or of any size
    cut by the field of view: reaching the image's in-plane edge, or within
    :data:`BACK_EDGE_BONE_MM` of its back edge with only tissue behind it and not a strip
    along the view (running front to back: at least :data:`BACK_EDGE_STRIP_RATIO` times as
    tall as wide on the slices) (a bone cut by a heart-centred field shows only a part of itself, such
    as a rib's end or a vertebral body's front cortex, a plate across the view with its
    marrow running to the edge; the heart and the calcium on it lie inside such a field; a
    plaque on the descending aorta's side wall is a strip along the view): vertebrae, sternum,
    ribs and calcified costal cartilage joined to them; never a region of at most
    :data:`INNER_MAX_CM3` lying wholly inside the lungs' hull, apart from the image's edge
    and out of the hull's back quarter (:func:`inner_calcification`): heavily calcified
    coronary arteries, the aortic root and valves can reach a bone's size on the working
    grid, and they are the calcium the region is for (coronary) or the networks' hard
    negatives (aortic, valve).
spine
    The bone reaching the back quarter of the lungs' hull within :data:`SPINE_REACH_MM` of
    the spine's column, the column taken from such bone lying between the lungs
    (:func:`_chest_wall_limits`): the vertebrae and what joins them, not a rib beside one
    lung.
heart levels
    Slices where the mediastinum holds soft tissue (-30..150 HU; holes up to
    :data:`SOFT_HOLE_MM2` filled: the noise of thin low-dose slices, calcium) at least
    :data:`HEART_DEPTH_MM` deep (the distance to its edge: a blob >= 60 mm across, which
    only the heart, or the liver below it, is; the aortic arch and great vessels are 30-40
    mm), in runs of at least :data:`HEART_RUN_MM` (a shorter run apart from the others is
    great vessels merged by noise, :func:`heart_levels`). Coronary calcium lies from the
    aortic root, just above the heart's top level, down to the diaphragm: the region reaches :data:`ABOVE_HEART_MM` above the most superior
    heart level and ends above the upper abdomen.
upper abdomen
    Going down from the heart, the slices whose lungs' hull is more than
    :data:`ABDOMEN_SHARE` mediastinum (:func:`abdomen_top`): only the lung bases remain,
    round the liver, stomach and spleen.
ascending aorta
    The thickest long vertical tube of soft tissue in the mediastinum (in front of the spine,
    apart from the descending aorta and bone; noise specks up to :data:`NOISE_HOLE_MM2`
    filled) over the :data:`AORTA_SEARCH_MM` above the top heart level. On each slice, the
    tube centres are the local maxima of the distance to the soft tissue's edge between the
    ends of :data:`AORTA_RADIUS_MM` (deeper is the heart; a big blob such as the heart's top
    has no centre of a vessel's radius). Centres are chained from the top of the range down
    (each within :data:`AORTA_TRACK_MM` of the one above, one slice may be skipped); the
    aorta is the chain, its centres on average within :data:`AORTA_MIDLINE_MM` of the
    midline (the middle of the lungs' hull; where the hull took in the view's right edge,
    the spine's column: :func:`_midline`), with the largest sum of radii over the upper half of the range (the superior
    vena cava, 8-12 mm, is thinner; the pulmonary trunk turns back and the atria end lower).
    Chains within :data:`AORTA_TIE` of that sum tie (a scan that ends before the pulmonary
    trunk turns back: it then runs as long as the aorta and is as wide); the patient's
    rightmost of them is the aorta (the trunk leaves the heart left of it). It is then followed down to the aortic root: the nearest centre of a like radius within
    :data:`AORTA_STEP_MM` on each slice, until there is none (it enters the heart, where the
    root sits in the heart's base and the coronary arteries leave it: :mod:`.naming`). Not
    found (None) on a scan that does not reach :data:`AORTA_MIN_MM` above the heart, or
    without such a tube over :data:`AORTA_TUBE_MM`.
heart region
    The mediastinum on the slices above the upper abdomen, up to :data:`ABOVE_HEART_MM`
    above the top heart level (on a scan longer than :data:`CARDIAC_SCAN_MM`: a chest CT; a
    cardiac scan is the heart), minus the bone regions outside it (grown by
    :data:`BONE_MARGIN_MM`), minus everything behind the front of the spine (the
    oesophagus, the azygos, the ribs' heads), minus the descending aorta, minus anything in
    front of :data:`STERNUM_GAP_MM` behind the back of the sternum, and minus what lies in
    front of a lung in its own column where that lung's front lies within
    :data:`CHEST_WALL_MM` of the hull's front in that column (the chest wall and costal
    cartilage beside the sternum; where the lung lies deeper, behind the heart, the heart in
    front of it stays).

heart centre
    The centre of the square field the networks see (:func:`heart_centre`, :func:`heart_box`;
    training and inference call the same functions): the centre of a heart mask's box when
    a mask exists (training on labelled studies), otherwise the HU localiser: on up to nine
    central slices, the thickest blob of blood / myocardium HU inside the body, weighted
    towards where a supine patient's heart lies (:func:`_localise_slice`), median over the
    slices.

A scan without lungs (a calcium-scoring phantom, a scan cut to the heart alone) has no
anatomy to go by: :attr:`Anatomy.found` is False and the region is the whole image.

Array order is (z, y, x), canonical axial LPS layout (anterior at row 0, patient left at
the last column, slices inferior to superior; :func:`.preprocess.canonical_flips`).
Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

#: Working in-plane pixel size (mm): block means of the CT's pixels.
WORK_MM = 2.0
AIR_HU = -400.0
#: Mean HU below which air touching the image edge is the air around the patient (and, for
#: air reaching the edge kept as a lung cut by the view, its median must lie above it too).
OUTSIDE_AIR_HU = -960.0
MIN_LUNG_CM3 = 30.0
#: Air reaching the image edge counts as lung from this volume (cm^3) on.
MIN_EDGE_LUNG_CM3 = 100.0
HULL_Z_MM = 10.0
#: A lung leaving the view's right edge at its own front, more than this far (mm) behind the
#: front of the lungs (over the slices within :data:`HULL_Z_MM`), has its front out of view
#: (:func:`_right_lung_cut_front`).
RIGHT_LUNG_BEHIND_MM = 30.0
#: Working-grid HU of bone (cortex 400-1000 HU and marrow 100-300 HU average above this).
BONE_HU = 180.0
MIN_BONE_CM3 = 2.0
#: A dense region within this distance (mm) of the image's back edge with only tissue behind
#: it is a bone cut by the field of view however small, unless a strip along the view
#: (:data:`BACK_EDGE_STRIP_RATIO`): the front cortex of a vertebral body whose marrow runs to
#: the edge (:func:`_cut_at_back_edge`). Real dev scan 3's, in fields moved forward, lay 0-14
#: mm from the edge (a thoracic vertebral body is 25-35 mm deep).
BACK_EDGE_BONE_MM = 20.0
#: ... but not a region whose tallest extent on a slice (front to back, mm) is at least this
#: many times its widest (a plaque on the descending aorta's side wall: 4 mm by 12 mm on the
#: working grid; a vertebral body's front cortex there is 8-14 mm wide and 6-10 mm deep).
BACK_EDGE_STRIP_RATIO = 2.0
#: A dense region of at most this volume (cm^3) lying wholly inside the lungs' hull, apart
#: from the image's edge and out of the hull's back quarter, is calcification of the heart
#: and its vessels, not bone (:func:`inner_calcification`).
INNER_MAX_CM3 = 10.0
#: ... and apart from the image's in-plane edge by more than this many working cells (a bone
#: leaving the field of view obliquely can fall below :data:`BONE_HU` in the edge cell).
INNER_EDGE_CELLS = 2
BONE_MARGIN_MM = 3.0
STERNUM_Z_MM = 20.0
#: The front of the spine is that of its columns within this distance (mm) of its middle:
#: the vertebral body (35-50 mm wide in the chest), not the rib heads beside it.
SPINE_HALF_WIDTH_MM = 15.0
#: Bone reaching the back quarter of the lungs' hull is the spine when its middle column lies
#: within this distance (mm) of the spine's column (:func:`_chest_wall_limits`).
SPINE_REACH_MM = 30.0
#: Dense cells (>= :data:`BONE_HU`) at the front of the hull at least this wide (mm) are the
#: sternum even when they are too small a volume for bone (:func:`_chest_wall_limits`).
STERNUM_MIN_WIDTH_MM = 16.0
#: ... and whose front lies at most this far (mm) behind the body's front (or the image's
#: edge) in their columns (the five dev scans' sternums: 24-44 mm in a heart-centred view).
STERNUM_MAX_DEPTH_MM = 50.0
#: The region starts this far (mm) behind the back of the sternum: the costal cartilages
#: beside it reach a little further back, with calcified rims; the heart's front lies behind
#: the pericardium and its fat, and no coronary artery runs within it.
STERNUM_GAP_MM = 5.0
#: Columns where a lung's front lies within this distance (mm) of the front of the lungs'
#: hull in the same column: what is in front of the lung there is chest wall (cut from the
#: region). Deeper, a lower lobe lies behind the heart, and what is in front of it is the heart.
CHEST_WALL_MM = 20.0
AORTA_MARGIN_MM = 4.0
#: The descending aorta is taken across a run of at most this length (mm) of slices where it
#: was not found, from the slices where it was on both sides (:func:`descending_aorta`).
AORTA_GAP_MM = 15.0
#: A disc taken for the descending aorta whose centre lies more than AORTA_OFF_TRACK_MM from
#: the median position (relative to the spine) of the discs within AORTA_TRACK_Z_MM along
#: the scan is not the aorta (:func:`descending_aorta`).
AORTA_TRACK_Z_MM = 25.0
AORTA_OFF_TRACK_MM = 10.0
SLIVER_MM = 4.0
#: The lungs' edge given to the mediastinum (mm): calcium on the heart's surface next to the
#: lung shares its working-grid cells with lung.
LUNG_RIM_MM = 4.0
#: Holes in a slice's lungs up to this area (cm^2) are its vessels and airways.
MAX_LUNG_HOLE_CM2 = 6.0
SOFT_TISSUE_HU = (-30.0, 150.0)
#: Holes in a slice's soft tissue up to this area (mm^2) are noise (thin, low-dose slices)
#: or calcium, not fat between organs: filled before the heart's depth is measured.
SOFT_HOLE_MM2 = 50.0
#: ... and up to this area (mm^2) are noise specks, filled before vessels are looked for.
NOISE_HOLE_MM2 = 10.0
HEART_DEPTH_MM = 30.0
#: Heart levels at most this far apart (mm) are one run (:func:`heart_levels`).
HEART_GAP_MM = 10.0
#: A run of heart levels shorter than this (mm) beside a longer one is not the heart.
HEART_RUN_MM = 20.0
ABOVE_HEART_MM = 45.0
#: A scan longer than this (mm) reaches above the heart (a chest CT): the region is cut
#: above the heart levels. A cardiac scan (gated calcium scoring: 120-200 mm) is the heart.
CARDIAC_SCAN_MM = 200.0
#: Length (mm) of the cardiac range of a chest CT (:meth:`Anatomy.cardiac_range`): a gated
#: calcium-scoring scan covers 120-170 mm.
CARDIAC_RANGE_MM = 160.0
#: Share of the lungs' hull that is mediastinum above which a slice is the upper abdomen.
ABDOMEN_SHARE = 0.8
#: The ascending aorta is looked for from the top heart level to this far (mm) above it.
AORTA_SEARCH_MM = 80.0
#: ... on at least this length (mm) of scan above the top heart level.
AORTA_MIN_MM = 15.0
#: The aorta's tube is followed over at least this length (mm).
AORTA_TUBE_MM = 10.0
#: Radius range (mm) of the ascending aorta (about 14-18 mm; dilated up to 22 mm).
AORTA_RADIUS_MM = (9.0, 24.0)
#: The centre of a tube moves at most this far (mm) from one slice to the next (its local
#: maximum of depth jumps where it touches another vessel; two touching vessels' centres are
#: 20-35 mm apart).
AORTA_TRACK_MM = 14.0
#: Going down to the aortic root, the centre moves at most this far (mm) per slice, and the
#: radius by at most this share of the tube's above the heart.
AORTA_STEP_MM = 6.0
AORTA_RADIUS_CHANGE = 0.35
#: Tubes above the heart whose sums of radii lie within this share of the thickest one's
#: are a tie, decided by their side (:func:`ascending_aorta`).
AORTA_TIE = 0.1
#: The ascending aorta's centre lies on average within this distance (mm) of the midline
#: (:func:`_midline`); the superior vena cava lies 30-70 mm right of it.
AORTA_MIDLINE_MM = 45.0


@dataclass
class Anatomy:
    """The anatomy of one CT (canonical layout) on the working grid (``factor`` CT pixels per cell)."""

    shape: tuple[int, int, int]  # CT (z, y, x)
    factor: tuple[int, int]  # CT pixels per working cell (y, x)
    found: bool
    lungs: np.ndarray = field(repr=False)  # bool (z, Y, X)
    bone: np.ndarray = field(repr=False)  # bool (z, Y, X)
    region: np.ndarray = field(repr=False)  # bool (z, Y, X): where coronary calcium can be
    #: heart levels (first, last slice index) or None
    heart_levels: tuple[int, int] | None = None
    #: (z, 2) float: the ascending aorta's centre (row, column in CT pixels) on each slice
    #: (:func:`ascending_aorta`; slices below the top heart level take the root's, above
    #: the search range the highest found), or None when not found
    aorta_axis: np.ndarray | None = field(default=None, repr=False)
    #: the ascending aorta's radius (mm), or None
    aorta_radius_mm: float | None = None

    def cardiac_range(self, dz: float) -> tuple[int, int]:
        """Slices [first, last + 1) a cardiac scan of this patient would hold: the whole scan,
        unless it is a chest CT (longer than :data:`CARDIAC_SCAN_MM`, with heart levels found):
        then :data:`CARDIAC_RANGE_MM` ending :data:`ABOVE_HEART_MM` above the top heart level
        (the aortic root and the left main lie above the heart's thick part)."""
        return _cardiac_range(self.heart_levels, self.shape[0], dz)

    def crop(self, z0: int, z1: int) -> "Anatomy":
        """The anatomy of slices [z0, z1) (e.g. :meth:`cardiac_range`)."""
        levels = None
        if self.heart_levels is not None:
            a, b = max(self.heart_levels[0], z0) - z0, min(self.heart_levels[1], z1 - 1) - z0
            levels = (a, b) if a <= b else None
        axis = None if self.aorta_axis is None else self.aorta_axis[z0:z1]
        return Anatomy((z1 - z0, *self.shape[1:]), self.factor, self.found, self.lungs[z0:z1], self.bone[z0:z1],
                       self.region[z0:z1], levels, axis, self.aorta_radius_mm)

    def _cells(self, y, x) -> tuple[np.ndarray, np.ndarray]:
        fy, fx = self.factor
        yy = np.clip(np.asarray(y) // fy, 0, self.region.shape[1] - 1)
        xx = np.clip(np.asarray(x) // fx, 0, self.region.shape[2] - 1)
        return yy, xx

    def in_region(self, z, y, x) -> np.ndarray:
        """bool per CT voxel (z, y, x index arrays): inside the heart region."""
        yy, xx = self._cells(y, x)
        return self.region[np.asarray(z), yy, xx]

    def on_bone(self, z, y, x) -> np.ndarray:
        """bool per CT voxel: on bone (grown by :data:`BONE_MARGIN_MM`)."""
        yy, xx = self._cells(y, x)
        return self.bone[np.asarray(z), yy, xx]

    def region_full(self) -> np.ndarray:
        """bool (z, y, x) region on the CT grid (for pictures and the Slicer scene)."""
        fy, fx = self.factor
        r = np.repeat(np.repeat(self.region, fy, axis=1), fx, axis=2)
        return r[:, : self.shape[1], : self.shape[2]]  # the working grid covers the image (edge-padded)


def _cardiac_range(levels: tuple[int, int] | None, nz: int, dz: float) -> tuple[int, int]:
    if levels is None or nz * dz <= CARDIAC_SCAN_MM:
        return 0, nz
    top = min(nz, levels[1] + int(np.floor(ABOVE_HEART_MM / dz + 1e-6)) + 1)
    return max(0, top - int(round(CARDIAC_RANGE_MM / dz))), top


def _block_means(hu: np.ndarray, fy: int, fx: int) -> np.ndarray:
    z, h, w = hu.shape
    hh, ww = -(-h // fy), -(-w // fx)
    pad = np.pad(np.asarray(hu, dtype=np.float32), ((0, 0), (0, hh * fy - h), (0, ww * fx - w)), mode="edge")
    return pad.reshape(z, hh, fy, ww, fx).mean(axis=(2, 4))


def _largest_filled(mask2d: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask2d)
    if n == 0:
        return np.zeros_like(mask2d)
    sizes = np.bincount(lab.ravel())[1:]
    return _fill_small_holes(lab == 1 + int(np.argmax(sizes)), np.inf)


def _touches_edge(lab: np.ndarray, n: int) -> np.ndarray:
    edge = np.zeros(n + 1, dtype=bool)
    for s in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        edge[np.unique(s)] = True
    return edge[1:]


def find_lungs(small: np.ndarray, body: np.ndarray, cell_cm3: float) -> np.ndarray:
    """bool (z, Y, X) lungs on the working grid (see the module docstring)."""
    air = small < AIR_HU
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    idx = np.arange(1, n + 1)
    size = np.bincount(lab.ravel(), minlength=n + 1)[1:] * cell_cm3
    mean = ndimage.mean(small, lab, idx)
    inside = ndimage.sum(body, lab, idx) / np.maximum(size / cell_cm3, 1)
    edge = _touches_edge(lab, n)
    keep = (size >= MIN_LUNG_CM3) & ~edge & ((inside > 0.5) | (mean > OUTSIDE_AIR_HU))
    # Lungs cut by the field of view reach its edge; so does the air around the patient, and
    # pockets of it between the back and the table (partial volume lifts their mean): a lung
    # is large and lies in the middle rows, not against the front or back of the image.
    rows = ndimage.mean(np.broadcast_to(np.arange(small.shape[1])[None, :, None], small.shape), lab, idx)
    middle = (rows > 0.15 * small.shape[1]) & (rows < 0.85 * small.shape[1])
    cut = (size >= MIN_EDGE_LUNG_CM3) & edge & (mean > OUTSIDE_AIR_HU) & middle
    # the median too: the skin's partial volume lifts the mean of the air round the patient.
    # Where that leaves no air of a lung's size (MIN_EDGE_LUNG_CM3: the lungs and the air round
    # the patient one region, a chest wall thinner than the working grid's cells), the mean
    # alone decides, as before.
    by_median = cut.copy()
    if cut.any():
        by_median[cut] = np.asarray(ndimage.median(small, lab, idx[cut])) > OUTSIDE_AIR_HU
    keep |= by_median if ((keep | by_median) & (size >= MIN_EDGE_LUNG_CM3)).any() else cut
    lut = np.zeros(n + 1, dtype=bool)
    lut[1:] = keep
    return lut[lab]


def _fill_small_holes(mask2d: np.ndarray, max_cells: float) -> np.ndarray:
    """``mask2d`` with its holes of at most ``max_cells`` filled (the lungs' vessels and
    airways; never the heart, which lungs meeting in front of and behind it enclose). A hole
    is a 4-connected part of the background that does not reach the image's edge (as
    ``ndimage.binary_fill_holes`` defines it)."""
    lab, n = ndimage.label(~mask2d)
    if n == 0:
        return mask2d
    small = np.bincount(lab.ravel(), minlength=n + 1) <= max_cells
    small[0] = False
    small[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = False  # reaching the edge
    return mask2d | small[lab]


def _hulls(lungs: np.ndarray, reach: int, pixel_mm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bool (z, Y, X), bool (z,)): per slice, the convex hull of the lungs on the slices
    within ``reach`` above and below, with the view's right edge where the right lung's front
    is out of view (:func:`_right_lung_cut_front`; ``pixel_mm``: the working grid's row size,
    mm; None: not looked for), and the slices whose hull took in that edge."""
    from skimage.morphology import convex_hull_image

    out = np.zeros_like(lungs)
    nz = lungs.shape[0]
    edge = np.zeros(nz, bool)
    for k in range(nz):
        m = lungs[max(0, k - reach): k + reach + 1].any(axis=0)
        if pixel_mm is not None:
            cut = _right_lung_cut_front(m, pixel_mm)
            edge[k] = cut.any()
            m = m | cut
        if np.count_nonzero(m) >= 3:
            out[k] = convex_hull_image(m)
    return out, edge


def _right_lung_cut_front(lungs2d: np.ndarray, pixel_mm: float) -> np.ndarray:
    """bool (Y, X): the view's right edge (column 0: the patient's right) from the front of
    the lungs ``lungs2d`` down to where a lung leaves the view there, when it leaves at its
    own front row (within one row) and that front lies more than
    :data:`RIGHT_LUNG_BEHIND_MM` behind the front of the lungs (``pixel_mm``: row size, mm);
    else nothing. Added to the lungs for their hull only (the module docstring, mediastinum)."""
    out = np.zeros_like(lungs2d)
    if not lungs2d[:, 0].any():
        return out
    lab, _ = ndimage.label(lungs2d)
    ids = np.unique(lab[:, 0])
    own = np.isin(lab, ids[ids > 0]).any(axis=1)
    top, own_front, leaves = np.argmax(lungs2d.any(axis=1)), np.argmax(own), np.argmax(lungs2d[:, 0])
    if leaves <= own_front + 1 and (own_front - top) * pixel_mm > RIGHT_LUNG_BEHIND_MM:
        out[top: leaves + 1, 0] = True
    return out


def dense_cells(small: np.ndarray) -> np.ndarray:
    """bool (z, Y, X): working cells >= :data:`BONE_HU`, each slice's holes (marrow) filled."""
    dense = small >= BONE_HU
    for k in range(dense.shape[0]):
        if dense[k].any():
            dense[k] = _fill_small_holes(dense[k], np.inf)
    return dense


def find_bone(small: np.ndarray, cell_cm3: float, dense: np.ndarray | None = None,
              row_mm: float = WORK_MM, col_mm: float | None = None) -> np.ndarray:
    """bool (z, Y, X): 3D regions >= :data:`BONE_HU` (marrow filled per slice) of >= :data:`MIN_BONE_CM3`,
    or cut by the field of view: reaching the image's in-plane edge, or with a cell at most
    :data:`BACK_EDGE_BONE_MM` in front of its back edge with only tissue behind it and not a
    strip along the view (:func:`_cut_at_back_edge`). ``row_mm``, ``col_mm``: the working
    cells' height and width (None: square cells)."""
    dense = dense_cells(small) if dense is None else dense
    lab, n = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return dense
    keep = np.bincount(lab.ravel(), minlength=n + 1) * cell_cm3 >= MIN_BONE_CM3
    keep[1:] |= _touches_edge(lab, n) | _cut_at_back_edge(small, lab, n, int(BACK_EDGE_BONE_MM / row_mm),
                                                          row_mm / (row_mm if col_mm is None else col_mm))
    keep[0] = False
    return keep[lab]


def _cut_at_back_edge(small: np.ndarray, lab: np.ndarray, n: int, rows: int, aspect: float = 1.0) -> np.ndarray:
    """bool (n,): the regions of ``lab`` with a cell at most ``rows`` rows in front of the
    image's back edge with tissue (>= :data:`AIR_HU`: no lung, no air) in every cell behind it,
    and not a strip along the view: its tallest extent on a slice less than
    :data:`BACK_EDGE_STRIP_RATIO` times its widest, in mm (``aspect``: a cell's height over
    its width). The two extents may come from different slices.

    A heart-centred field of view set forward of the heart cuts the vertebral body: its
    marrow (often below :data:`BONE_HU`, in older patients near soft tissue) then runs to the
    image's edge and only the front cortex is dense, a thin plate of under a cm^3 per vertebra
    that neither reaches the edge nor closes round the marrow (real dev scan 3 in a 200 mm
    field moved 20 mm forward: 14 mm of marrow behind it, and its 1,083 points were scored
    as RCA). Coronary calcium lies on the heart: this close to the back edge with no lung
    behind it the field would cut the heart itself. The front cortex is a plate across the
    vertebral body: on the working grid 8-14 mm wide at its widest and 6-10 mm deep at its
    deepest (real dev scan 3 in fields moved forward), and a piece of a vertebra at a scan's
    end is a blob; a plaque on the side wall of the descending aorta, which lies there too,
    beside the vertebral body, is a strip along the view, 4 mm wide and 12 mm long
    (real dev scan 3 in a 180 mm field moved 35 mm towards the patient's left: taken for bone,
    it was taken for the spine's front, and the descending aorta, searched for beside it, was
    not found: the plaque on its front wall scored 532 "RCA" points)."""
    tissue = small >= AIR_HU
    behind = np.ones_like(tissue)  # every cell behind this one, to the back edge, is tissue
    behind[:, :-1] = np.flip(np.logical_and.accumulate(np.flip(tissue[:, 1:], axis=1), axis=1), axis=1)
    near = np.arange(small.shape[1]) >= small.shape[1] - 1 - rows
    out = np.zeros(n + 1, dtype=bool)
    out[lab[behind & near[None, :, None] & (lab > 0)]] = True
    boxes = ndimage.find_objects(lab)
    for j in np.flatnonzero(out):
        part = lab[boxes[j - 1]] == j  # (z, y, x) within its box
        width, height = _spans(part.any(axis=1)), _spans(part.any(axis=2))  # cells, per slice
        out[j] = bool(height.max() * aspect < BACK_EDGE_STRIP_RATIO * width.max())
    return out[1:]


def _spans(occupied: np.ndarray) -> np.ndarray:
    """(z,) from bool (z, n): last minus first True index + 1 on each slice (0 without any)."""
    n = occupied.shape[1]
    return np.where(occupied.any(axis=1), n - np.argmax(occupied[:, ::-1], axis=1) - np.argmax(occupied, axis=1), 0)


def inner_calcification(dense: np.ndarray, hull: np.ndarray, cell_cm3: float) -> np.ndarray:
    """bool (z, Y, X): the 3D regions of ``dense`` (26-connected) lying wholly inside
    ``hull``, of at most :data:`INNER_MAX_CM3`, reaching neither the image's in-plane edge
    (within :data:`INNER_EDGE_CELLS`) nor the back quarter of the hull's rows on any slice
    (where ``_chest_wall_limits`` looks for the spine: the vertebral bodies and the rib
    heads beside them lie inside the hull there).

    Bone does not lie wholly inside the hull elsewhere: the costal cartilages and ribs lie
    in front of and beside the lungs, the vertebrae's arches behind them, and a bone cut by
    a heart-centred field of view reaches the image's edge. What does is calcification of
    the heart and its vessels: heavily calcified coronary arteries, whose calcium fills the
    vessel and runs on through many slices, can join into a region of a bone's size on the
    working grid (a few cm^3), with the aortic root or a valve's calcification even more so.
    The heart's front lies in the hull's front quarter and can touch its front edge, so
    nothing is asked there: a sternum pushed into the chest (pectus excavatum) that lies
    wholly inside the hull is left to the thin-sternum rule of ``_chest_wall_limits``,
    which sees every dense cell and keeps the region behind it."""
    lab, n = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros_like(dense)
    total = np.bincount(lab.ravel(), minlength=n + 1)
    in_hull = np.bincount(lab.ravel(), weights=hull.ravel(), minlength=n + 1)
    keep = (in_hull >= total) & (total * cell_cm3 <= INNER_MAX_CM3)
    e = INNER_EDGE_CELLS
    out = np.zeros(dense.shape, bool)
    out[:, :e] = out[:, -e:] = True
    out[:, :, :e] = out[:, :, -e:] = True
    rows, cols = np.arange(dense.shape[1])[:, None], np.arange(dense.shape[2])[None, :]
    for k in np.flatnonzero(hull.any(axis=(1, 2))):
        ys = np.flatnonzero(hull[k].any(axis=1))
        out[k] |= rows > ys[-1] - 0.25 * (ys[-1] - ys[0] + 1)
    keep[lab[out]] = False
    keep[0] = False
    return keep[lab]


def soft_tissue(small: np.ndarray, where: np.ndarray, pixel_mm: tuple[float, float],
                hole_mm2: float = SOFT_HOLE_MM2) -> np.ndarray:
    """bool (z, Y, X): ``where`` at soft-tissue HU (:data:`SOFT_TISSUE_HU`), each slice's
    holes up to ``hole_mm2`` filled."""
    soft = where & (small >= SOFT_TISSUE_HU[0]) & (small <= SOFT_TISSUE_HU[1])
    max_cells = hole_mm2 / (pixel_mm[0] * pixel_mm[1])
    return np.stack([_fill_small_holes(m, max_cells) & where[k] for k, m in enumerate(soft)])


def heart_levels(soft: np.ndarray, pixel_mm: float, dz: float) -> np.ndarray:
    """(z,) bool: slices whose mediastinum's ``soft`` tissue (:func:`soft_tissue`) is at least
    :data:`HEART_DEPTH_MM` deep, in runs (slices at most :data:`HEART_GAP_MM` apart joined) of
    at least :data:`HEART_RUN_MM` (``dz``: slice spacing, mm). A shorter run apart from the
    others is not the heart, which spans 80-130 mm: it is the great vessels and the fat between
    them merged by a noisy slice (a low-dose scan), and taking it would put the top heart level
    above the aortic root. With no run that long, every run is kept."""
    depth = np.zeros(soft.shape[0])
    for k in range(soft.shape[0]):
        if soft[k].any():
            depth[k] = float(ndimage.distance_transform_edt(soft[k]).max()) * pixel_mm
    deep = depth >= HEART_DEPTH_MM
    at = np.flatnonzero(deep)
    if at.size == 0:
        return deep
    runs = np.split(at, np.flatnonzero(np.diff(at) * dz > HEART_GAP_MM + 1e-6) + 1)
    short = [r for r in runs if (r[-1] - r[0] + 1) * dz < HEART_RUN_MM - 1e-6]
    if len(short) < len(runs):  # with no long run, every run is kept
        for r in short:
            deep[r] = False
    return deep


def _in_front_of_lungs(lungs2d: np.ndarray, hull2d: np.ndarray, reach: int) -> np.ndarray:
    """bool (Y, X): the chest wall inside the lungs' hull ``hull2d`` (in a heart-centred
    field of view the lungs are cut by its edges, and the chest wall and the costal
    cartilage beside the sternum lie inside their hull): in each column, what lies in front
    of the lungs' front where that front lies within ``reach`` cells of the hull's front.
    Where it lies deeper, the heart lies in front of it (the lower lobes wrap round behind
    the heart) and stays."""
    out = np.zeros_like(lungs2d)
    if not hull2d.any():
        return out
    ys = np.flatnonzero(hull2d.any(axis=1))
    front = lungs2d.copy()
    front[int(0.5 * (ys[0] + ys[-1])):] = False
    first = np.argmax(front, axis=0)
    hull_first = np.argmax(hull2d, axis=0)
    has = front.any(axis=0) & (first <= hull_first + reach)
    rows = np.arange(lungs2d.shape[0])[:, None]
    return has[None, :] & (rows < first[None, :])


def _chest_wall_limits(bone: np.ndarray, hull: np.ndarray, dz: float, dense: np.ndarray | None = None,
                       wide: int = 0, body: np.ndarray | None = None, deep: int = 0,
                       cell_mm: float = WORK_MM, lungs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z,) working-grid row of the back of the sternum, of the front of the spine (-1:
    none) and the spine's column (-1: none).

    On each slice with a hull: the spine is the bone reaching the back quarter of the hull's
    rows (and not its front quarter) whose middle column lies within :data:`SPINE_REACH_MM`
    of the spine's column (of several such parts, the front one). That column is the median
    over the slices of the middle column of each slice's largest such part: the vertebra
    keeps its column from slice to slice, a rib's back arc or a scapula at the side does not
    (their front can lie up to 70 mm in front of the vertebral body's, across the back of the
    heart), and in a heart-centred view the spine lies well off the hull's centre. Only the
    parts between the ``lungs`` (lung on both sides of the part's middle column, level with
    or behind its front; every part without ``lungs``) count for the column, none of them: no
    spine. A heart-centred field of view set forward of the heart shows little of the spine,
    but the ribs beside a lung at its side (real dev scans 3 and 4 in a 200 mm field moved
    20-30 mm forward: the column was taken from a rib at the view's left side, whose front
    cut the heart region across the slice, through the left main / LAD). The parts within
    reach of the column are the spine on every slice, also those beside one lung (a field
    moved to the side leaves one lung out of view on most slices). The
    spine's front is that of its columns within :data:`SPINE_HALF_WIDTH_MM` of its middle
    (``cell_mm``: the working cell's width), the vertebral body's, not that of the rib heads
    joined to it. The sternum is the bone whose front lies in the front quarter of the hull's rows
    and within the middle fifth of its columns either side of its centre. A sternum of thin
    bone cut short by a heart-centred scan's slices (below :data:`MIN_BONE_CM3`, apart from
    the image's edge) is not bone; there the ``dense`` cells (:func:`dense_cells`) of a slice at least
    ``wide`` cells across whose front lies at most ``deep`` cells behind the front of the
    ``body`` (or of the image) in its columns count as well (:data:`STERNUM_MIN_WIDTH_MM`,
    :data:`STERNUM_MAX_DEPTH_MM`: a long calcification of the left main or LAD lies deeper,
    behind the pulmonary trunk). A slice without a
    sternum (between its segments, below the xiphoid) takes the nearest slice's within
    :data:`STERNUM_Z_MM`.
    """
    nz = bone.shape[0]
    half = max(1, int(round(SPINE_HALF_WIDTH_MM / cell_mm)))
    front = np.full(nz, -1)
    back = np.full(nz, -1)
    spine_x = np.full(nz, -1.0)
    in_back: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(nz)]  # bone reaching the back quarter
    for k in range(nz):
        solid = bone[k] if dense is None else bone[k] | dense[k]
        if not hull[k].any() or not solid.any():
            continue
        ys = np.flatnonzero(hull[k].any(axis=1))
        xs = np.flatnonzero(hull[k].any(axis=0))
        y0, y1, h = ys[0], ys[-1], ys[-1] - ys[0] + 1
        xc, w = 0.5 * (xs[0] + xs[-1]), xs[-1] - xs[0] + 1
        lab, n = ndimage.label(solid)
        for j, sl in enumerate(ndimage.find_objects(lab), start=1):
            part = lab[sl] == j
            yy, xx = np.nonzero(part)
            yy, xx = yy + sl[0].start, xx + sl[1].start
            if not bone[k][sl][part].any():  # dense, not bone: a sternum only if wide and near the front
                near = body is not None and yy.min() - np.argmax(body[k][:, xx.min(): xx.max() + 1], axis=0).min() <= deep
                if (near and xx.max() - xx.min() + 1 >= wide and yy.min() < y0 + 0.25 * h
                        and abs(np.median(xx) - xc) < 0.2 * w):
                    front[k] = max(front[k], yy.max())
                continue
            if yy.max() > y1 - 0.25 * h and yy.min() > y0 + 0.25 * h:
                mid = float(np.median(xx))
                m = int(mid)
                between = lungs is None or bool(lungs[k, yy.min():, :m].any() and lungs[k, yy.min():, m + 1:].any())
                in_back[k].append((yy, xx, mid, between))
            elif yy.min() < y0 + 0.25 * h and abs(np.median(xx) - xc) < 0.2 * w:
                front[k] = max(front[k], yy.max())
    # the spine's column: over the slices, the middle of each slice's largest part in the back
    # quarter (the vertebra; a rib's back arc at the side, a scapula outside the hull, move
    # from slice to slice), of those between the lungs (a rib beside one lung is not the
    # vertebra). A heart-centred view has the spine off its centre.
    pick = [[p for p in parts if p[3]] for parts in in_back]
    largest = [max(parts, key=lambda p: p[0].size)[2] for parts in pick if parts]
    if largest:
        column = float(np.median(largest))
        near = SPINE_REACH_MM / cell_mm
        for k, parts in enumerate(in_back):
            for yy, xx, mid, _ in parts:
                if abs(mid - column) <= near:
                    # the vertebral body's front, not that of the rib heads joined to it
                    top = int(yy[np.abs(xx - mid) <= half].min())
                    if back[k] < 0 or top < back[k]:
                        back[k], spine_x[k] = top, mid
    reach = int(round(STERNUM_Z_MM / dz))
    have = np.flatnonzero(front >= 0)
    if have.size:
        for k in np.flatnonzero(front < 0):
            j = have[np.argmin(np.abs(have - k))]
            if abs(j - k) <= reach:
                front[k] = front[j]
    return front, back, spine_x


def descending_aorta(small: np.ndarray, soft_ok: np.ndarray, spine_front: np.ndarray, spine_x: np.ndarray,
                     pixel_mm: tuple[float, float], dz: float = 5.0) -> np.ndarray:
    """bool (z, Y, X): the descending aorta, grown by :data:`AORTA_MARGIN_MM`, on the slices
    where the spine was found.

    The thickest soft-tissue (blood, -30..150 HU) disc of ``soft_ok`` (the body without
    bone) centred beside the front of the spine, its noise specks (holes up to
    :data:`NOISE_HOLE_MM2`) filled first: under a low-dose scan's noise they shrank the disc
    to the distance between them, the cut ended inside the wall and a plaque on the wall
    stayed in the heart region. The window reaches from 25 mm in front of the spine to 15 mm
    behind, from the spine's middle to 50 mm left of it (the disc chosen by its thickness less 0.3 x its
    distance from where the aorta usually lies, 5 mm in front and 25 mm left). Its centre is smoothed along z
    (median of five slices); its radius is the distance from the centre to the disc's
    edge, 8-18 mm (outside that range nothing is taken for the aorta). The aorta is one tube
    beside the spine: a disc whose centre (relative to the spine's front and middle) lies
    more than :data:`AORTA_OFF_TRACK_MM` from the median of the discs within
    :data:`AORTA_TRACK_Z_MM` along the scan is not it (the left atrium or the heart's back,
    merged with the aorta, reaching into the window; ``dz``: the slice spacing, mm). A run of
    slices where it is not found, at most :data:`AORTA_GAP_MM` long between two slices where
    it is found, takes their centre and radius, interpolated: noise or a calcified wall can
    break the disc on a few slices.
    """
    py, px = pixel_mm
    nz, ny, nx = small.shape
    out = np.zeros(small.shape, dtype=bool)
    found = np.full((nz, 3), np.nan)
    for k in np.flatnonzero(spine_front >= 0):
        y0 = max(0, int(spine_front[k] - 25.0 / py))
        y1 = min(ny, int(spine_front[k] + 15.0 / py))
        x0 = max(0, int(spine_x[k]))
        x1 = min(nx, int(spine_x[k] + 50.0 / px))
        if y1 <= y0 or x1 <= x0:
            continue
        soft = soft_ok[k] & (small[k] >= SOFT_TISSUE_HU[0]) & (small[k] <= SOFT_TISSUE_HU[1])
        soft = _fill_small_holes(soft, NOISE_HOLE_MM2 / (py * px)) & soft_ok[k]  # noise specks
        d = ndimage.distance_transform_edt(soft, sampling=(py, px))
        win = d[y0:y1, x0:x1]
        # the thickest disc, favouring one where the aorta lies (5 mm in front of the
        # spine, 25 mm to its left) over the edge of the heart reaching into the window
        gy, gx = np.mgrid[y0:y1, x0:x1]
        away = np.hypot((gy - (spine_front[k] - 5.0 / py)) * py, (gx - (spine_x[k] + 25.0 / px)) * px)
        iy, ix = np.unravel_index(int(np.argmax(win - 0.3 * away)), win.shape)
        r = float(win[iy, ix])
        if 8.0 <= r <= 18.0:
            found[k] = (y0 + iy, x0 + ix, r)
    ok = np.flatnonzero(np.isfinite(found[:, 0]))
    # the aorta is one tube beside the spine: a disc off the track of the others nearby (the
    # left atrium or the heart's back reaching into the window) is not it
    if ok.size:
        off = np.stack([(found[ok, 0] - spine_front[ok]) * py, (found[ok, 1] - spine_x[ok]) * px], axis=1)
        reach = AORTA_TRACK_Z_MM / dz
        keep = np.array([np.hypot(*(off[i] - np.median(off[np.abs(ok - k) <= reach], axis=0))) <= AORTA_OFF_TRACK_MM
                         for i, k in enumerate(ok)], dtype=bool)
        found[ok[~keep]] = np.nan
        ok = ok[keep]
    # a run of slices where it was not found (noise or a calcified wall broke its disc), at
    # most AORTA_GAP_MM long between two where it was, takes it from them
    for lo, hi in zip(ok[:-1], ok[1:]):
        if 1 < hi - lo and (hi - lo - 1) * dz <= AORTA_GAP_MM + 1e-6:
            t = (np.arange(lo + 1, hi) - lo)[:, None] / (hi - lo)
            found[lo + 1: hi] = (1 - t) * found[lo] + t * found[hi]
    ok = np.flatnonzero(np.isfinite(found[:, 0]))
    yy, xx = np.mgrid[0:ny, 0:nx]
    for k in ok:
        near = ok[np.abs(ok - k) <= 2]
        cy, cx, r = np.median(found[near], axis=0)
        out[k] = ((yy - cy) * py) ** 2 + ((xx - cx) * px) ** 2 <= (r + AORTA_MARGIN_MM) ** 2
    return out


def _midline(hull: np.ndarray, spine_x: np.ndarray | None = None) -> float | None:
    """The midline's column (working cells): the median over slices of the middle of the
    lungs' hull; where the hull took in the view's right edge (:func:`_right_lung_cut_front`),
    whose middle then lies far left of the midline, the median of the spine's column over
    the slices where it was found (``spine_x`` >= 0, :func:`_chest_wall_limits`; given only
    then), if found. None without either."""
    if spine_x is not None and (spine_x >= 0).any():
        return float(np.median(spine_x[spine_x >= 0]))
    mids = [0.5 * (xs[0] + xs[-1]) for xs in (np.flatnonzero(h.any(axis=0)) for h in hull) if xs.size]
    return float(np.median(mids)) if mids else None


def _tube_centres(depth: np.ndarray, lo: float, hi: float, reach: tuple[int, int]) -> list[tuple[int, int, float]]:
    """The centres of round soft tissue of a great vessel's radius on one slice: the local
    maxima of ``depth`` (distance to the soft tissue's edge, mm) over ``reach`` (cells, y and
    x) between ``lo`` and ``hi`` mm, one (row, column, radius mm) per plateau."""
    peak = (depth >= lo) & (depth <= hi)
    peak &= depth >= ndimage.maximum_filter(depth, size=(2 * reach[0] + 1, 2 * reach[1] + 1))
    labels, n = ndimage.label(peak)
    if n == 0:
        return []
    spots = ndimage.maximum_position(depth, labels, range(1, n + 1))
    return [(int(y), int(x), float(depth[y, x])) for y, x in spots]


def ascending_aorta(soft: np.ndarray, top: int, dz: float, pixel_mm: tuple[float, float],
                    midline: float | None = None) -> tuple[np.ndarray, float] | None:
    """The ascending aorta (see the module docstring) from ``soft`` (bool (z, Y, X): soft
    tissue of the mediastinum in front of the spine, without the descending aorta and bone),
    the top heart level ``top`` and the midline's column ``midline`` (working cells,
    :func:`_midline`; None: unknown): ((z, 2) centre per slice in working cells, radius mm), or None."""
    nz = soft.shape[0]
    py, px = pixel_mm
    k1 = min(nz, top + int(np.floor(AORTA_SEARCH_MM / dz + 1e-6)) + 1)
    if (k1 - 1 - top) * dz < AORTA_MIN_MM - 1e-6:
        return None
    lo, hi = AORTA_RADIUS_MM
    reach = (max(1, int(lo / py)), max(1, int(lo / px)))
    # 1. The tube above the heart: chains of tube centres from the top of the search range
    # down to its middle, each centre within AORTA_TRACK_MM of the one above (a slice may be
    # skipped); the aorta's is the one with the largest sum of radii (the thickest long tube:
    # the vena cava is thinner, the pulmonary trunk turns back within the range), of those
    # that tie the patient's rightmost.
    upper = (top + k1) // 2
    centres = {k: _tube_centres(ndimage.distance_transform_edt(soft[k], sampling=(py, px)), lo, hi, reach)
               for k in range(top, k1)}
    Chain = tuple  # (sum of radii, [(k, y, x, r) top down])
    chains: list[Chain] = []
    ends: dict[int, list[Chain]] = {}  # slice -> chains whose lowest centre is on it
    for k in range(k1 - 1, upper - 1, -1):
        ends[k] = []
        for y, x, r in centres[k]:
            best: Chain = (0.0, [])
            for gap in (1, 2):
                for chain in ends.get(k + gap, []):
                    _, cy, cx, _ = chain[1][-1]
                    if np.hypot((y - cy) * py, (x - cx) * px) <= AORTA_TRACK_MM and chain[0] > best[0]:
                        best = chain
            item = (best[0] + r, best[1] + [(k, y, x, r)])
            ends[k].append(item)
            chains.append(item)
    if midline is not None:  # not the superior vena cava
        chains = [c for c in chains if abs(np.mean([p[2] for p in c[1]]) - midline) * px <= AORTA_MIDLINE_MM]
    if not chains:
        return None
    # the thickest long tube; where tubes tie (the scan ends before the pulmonary trunk turns
    # back, so it runs as long as the aorta), the patient's rightmost: the pulmonary trunk
    # leaves the heart left of the aorta
    best = max(c[0] for c in chains)
    near = [c for c in chains if c[0] >= (1.0 - AORTA_TIE) * best]
    mean_x = [float(np.mean([p[2] for p in c[1]])) for c in near]
    right = min(mean_x)
    chain = list(max((c for c, x in zip(near, mean_x) if (x - right) * px <= AORTA_TRACK_MM), key=lambda c: c[0])[1])
    # 2. Down to the aortic root: the nearest tube centre of a like radius within
    # AORTA_STEP_MM of the last one, until there is none (the aorta enters the heart).
    radius = float(np.median([p[3] for p in chain]))
    k = chain[-1][0] - 1
    while k >= top and chain[-1][0] - k <= 2:
        _, cy, cx, _ = chain[-1]
        near = [(d, y, x, r) for y, x, r in centres[k]
                for d in [np.hypot((y - cy) * py, (x - cx) * px)]
                if d <= AORTA_STEP_MM and abs(r - radius) <= AORTA_RADIUS_CHANGE * radius]
        if near:
            _, y, x, r = min(near)
            chain.append((k, y, x, r))
        k -= 1
    if (chain[0][0] - chain[-1][0]) * dz < AORTA_TUBE_MM - 1e-6:  # no tube over an aorta's length
        return None
    ks = np.array([p[0] for p in chain][::-1])
    yx = np.array([(p[1], p[2]) for p in chain][::-1], float)
    centre = np.zeros((nz, 2))
    for j in range(2):  # between the chain's centres: interpolated; beyond its ends: the end's
        centre[:, j] = np.interp(np.arange(nz), ks, yx[:, j])
    return centre, float(np.median([p[3] for p in chain]))


def abdomen_top(mediastinum: np.ndarray, hull: np.ndarray, heart: np.ndarray) -> int | None:
    """The highest slice of the upper abdomen, or None: going down from the top heart level
    (else the top slice with lungs), the first slice whose lungs' hull is more than
    :data:`ABDOMEN_SHARE` mediastinum. At the heart's levels the lungs fill half the hull or
    more; below the diaphragm only their bases remain, round the liver, stomach and spleen
    (whose arteries calcify too)."""
    area = hull.sum(axis=(1, 2))
    share = mediastinum.sum(axis=(1, 2)) / np.maximum(area, 1)
    with_hull = np.flatnonzero(area > 0)
    if not with_hull.size:
        return None
    start = int(np.flatnonzero(heart)[-1]) if heart.any() else int(with_hull[-1])
    for k in range(start, -1, -1):
        if area[k] > 0 and share[k] > ABDOMEN_SHARE:
            return k
    return None


def _square_erode(mask: np.ndarray, n: int) -> np.ndarray:
    """``mask`` (z, Y, X) eroded in-plane by an n-cell square on each side (what ``n``
    iterations of a 3 x 3 square erosion give, outside the image counting as background),
    as one separable minimum filter."""
    if n <= 0:
        return mask.copy()
    return ndimage.minimum_filter(mask.view(np.uint8), size=(1, 2 * n + 1, 2 * n + 1), mode="constant", cval=0) > 0


def _square_dilate(mask: np.ndarray, n: int) -> np.ndarray:
    """``mask`` (z, Y, X) grown in-plane by an n-cell square (``n`` iterations of a 3 x 3
    square dilation), as one separable maximum filter."""
    if n <= 0:
        return mask.copy()
    return ndimage.maximum_filter(mask.view(np.uint8), size=(1, 2 * n + 1, 2 * n + 1), mode="constant", cval=0) > 0


def _main_part(region: np.ndarray, n: int) -> np.ndarray:
    """The region without slivers (parts thinner than about 2 ``n`` cells, e.g. the gaps
    between the lungs and the chest wall) and without pieces apart from its largest 3D part."""
    core = _square_dilate(_square_erode(region, n), n)  # opening
    region = region & _square_dilate(core, n)
    lab, m = ndimage.label(region)
    if m > 1:
        region = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    return region


def find_anatomy(hu: np.ndarray, spacing: Sequence[float]) -> Anatomy:
    """The :class:`Anatomy` of a CT (z, y, x) in HU, canonical layout, ``spacing`` (dz, dy, dx) mm."""
    hu = np.asarray(hu)
    dz, dy, dx = (float(s) for s in spacing)
    fy, fx = max(1, int(round(WORK_MM / dy))), max(1, int(round(WORK_MM / dx)))
    small = _block_means(hu, fy, fx)
    py, px = dy * fy, dx * fx
    cell_cm3 = py * px * dz / 1000.0
    nz = small.shape[0]
    body = np.stack([_largest_filled(s > AIR_HU) for s in small])
    lungs = find_lungs(small, body, cell_cm3)
    empty = np.zeros_like(lungs)
    if not lungs.any():
        return Anatomy(tuple(hu.shape), (fy, fx), False, lungs, empty, np.ones_like(lungs))
    hull, cut_right = _hulls(lungs, int(round(HULL_Z_MM / dz)), py)
    # the lungs' own vessels and airways are not mediastinum
    filled = np.stack([_fill_small_holes(m, MAX_LUNG_HOLE_CM2 * 100.0 / (py * px)) for m in lungs])
    rim = max(1, int(round(LUNG_RIM_MM / min(py, px))))
    mediastinum = hull & ~_square_erode(filled, rim)
    heart = heart_levels(soft_tissue(small, mediastinum, (py, px)), min(py, px), dz)
    dense = dense_cells(small)
    # calcification wholly inside the lungs' hull is the heart's, never bone; the dense cells
    # stay as they are for a thin sternum (it must be wide and near the body's front)
    bone = find_bone(small, cell_cm3, dense & ~inner_calcification(dense, hull, cell_cm3), py, px)
    region = mediastinum.copy()
    levels = (int(np.flatnonzero(heart)[0]), int(np.flatnonzero(heart)[-1])) if heart.any() else None
    region[_cardiac_range(levels, nz, dz)[1]:] = False  # a chest CT: nothing above the aortic root's range
    below = abdomen_top(mediastinum, hull, heart)
    if below is not None:
        region[: below + 1] = False
    front, back, spine_x = _chest_wall_limits(bone, hull, dz, dense, int(np.ceil(STERNUM_MIN_WIDTH_MM / px)),
                                              body, int(STERNUM_MAX_DEPTH_MM / py), px, lungs)
    rows = np.arange(small.shape[1])[:, None]
    sternum_gap = int(round(STERNUM_GAP_MM / py))
    chest_wall = int(round(CHEST_WALL_MM / py))
    for k in range(nz):
        if front[k] >= 0:
            region[k] &= rows > front[k] + sternum_gap
        if back[k] >= 0:
            region[k] &= rows < back[k]
        region[k] &= ~_in_front_of_lungs(filled[k], hull[k], chest_wall)
    aorta = descending_aorta(small, body & ~bone, back, spine_x, (py, px), dz)
    region &= ~aorta
    region = _main_part(region, max(1, int(round(SLIVER_MM / min(py, px)))))
    grown = _square_dilate(bone, max(1, int(round(BONE_MARGIN_MM / min(py, px)))))
    region &= ~grown
    axis, radius = None, None
    if levels is not None:
        # from the top heart level up (where the aorta is looked for); only noise specks
        # filled: a larger hole can be the fat between two vessels
        top = levels[1]
        soft = np.zeros_like(mediastinum)
        soft[top:] = soft_tissue(small[top:], (mediastinum & ~bone & ~aorta)[top:], (py, px), NOISE_HOLE_MM2)
        for k in np.flatnonzero(back >= 0):
            soft[k, back[k]:] = False
        found = ascending_aorta(soft, top, dz, (py, px), _midline(hull[top:], spine_x if cut_right[top:].any() else None))
        if found is not None:
            cells, radius = found
            axis = (cells + 0.5) * np.array([fy, fx], float) - 0.5  # working cell centre -> CT pixel
    return Anatomy(tuple(hu.shape), (fy, fx), True, lungs, grown, region, heart_levels=levels, aorta_axis=axis,
                   aorta_radius_mm=radius)


# --------------------------------------------------------------------------- heart centre
# The heart localiser: the centre of the heart field the networks see (training and
# inference alike), from a heart mask when one exists, otherwise from HU alone.

#: Default side of the heart field (mm). A heart is about 12-14 cm across; the margin
#: absorbs the error of the HU-based localiser.
DEFAULT_BOX_MM = 160.0
#: Margin (mm) added around a heart mask's extent when it is larger than the default field.
HEART_MASK_MARGIN_MM = 10.0

#: HU band of blood / myocardium used by the localiser (after smoothing to about 2 mm).
_SOFT_TISSUE_HU = (-20.0, 200.0)
#: HU above which a voxel belongs to the body (air and lung are below).
_BODY_HU = -400.0
#: Pixel size (mm) at which the localiser works.
_LOCALISER_MM = 2.0


def _inplane_spacing(spacing: Sequence[float]) -> tuple[float, float]:
    sp = [float(s) for s in spacing]
    if len(sp) not in (2, 3) or not all(s > 0 for s in sp):
        raise InputError(f"spacing must be (dy, dx) or (dz, dy, dx) with positive values, got {spacing}")
    return sp[-2], sp[-1]


def _localise_slice(hu2d: np.ndarray, dy: float, dx: float) -> tuple[float, float] | None:
    """Heart centre (row, column) in pixels of one slice from HU alone, or None.

    The slice is averaged to about 2 mm pixels; blood/myocardium-like voxels (-20..200 HU)
    inside the body form a mask whose holes are filled; the heart is taken as the thickest
    part of that mask (maximum of the distance to its border), weighted by a broad prior
    centred anteriorly-left of the body centroid, where the heart lies in a supine patient.
    """
    fy = max(1, int(round(_LOCALISER_MM / dy)))
    fx = max(1, int(round(_LOCALISER_MM / dx)))
    h, w = hu2d.shape
    hh, ww = h // fy, w // fx
    if hh < 8 or ww < 8:
        return None
    small = hu2d[: hh * fy, : ww * fx].astype(np.float32).reshape(hh, fy, ww, fx).mean(axis=(1, 3))
    body = small > _BODY_HU
    lab, n = ndimage.label(body)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(body, lab, index=np.arange(1, n + 1))
    body = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    if body.sum() * fy * fx * dy * dx < 2500.0:  # less than 50 x 50 mm of body
        return None
    soft = (small >= _SOFT_TISSUE_HU[0]) & (small <= _SOFT_TISSUE_HU[1]) & body
    soft = ndimage.binary_fill_holes(ndimage.binary_opening(soft, iterations=1))
    if not soft.any():
        return None
    # Thickness in mm (pixels are close to square after the block averaging).
    depth = ndimage.distance_transform_edt(soft, sampling=(fy * dy, fx * dx))
    ys, xs = np.nonzero(body)
    cy, cx = ys.mean(), xs.mean()
    height = (ys.max() - ys.min() + 1) * fy * dy
    width = (xs.max() - xs.min() + 1) * fx * dx
    # Anterior is towards row 0, patient left towards the last column (LPS, axial).
    py = cy - 0.15 * height / (fy * dy)
    px = cx + 0.08 * width / (fx * dx)
    sigma = 0.35 * max(height, width)
    gy, gx = np.mgrid[0:hh, 0:ww]
    d2 = ((gy - py) * fy * dy) ** 2 + ((gx - px) * fx * dx) ** 2
    score = depth * np.exp(-d2 / (2.0 * sigma**2))
    if depth.max() < 15.0:  # no blob at least 30 mm thick: not a heart-level slice
        return None
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    # Centre of the thick blob around the best point: centroid of the voxels whose depth
    # is at least half the best depth, within the connected component holding it.
    core = depth >= 0.5 * depth[iy, ix]
    clab, _ = ndimage.label(core)
    comp = clab == clab[iy, ix]
    ys, xs = np.nonzero(comp)
    return ((ys.mean() + 0.5) * fy - 0.5, (xs.mean() + 0.5) * fx - 0.5)


def _body_centre(hu2d: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(hu2d > _BODY_HU)
    if ys.size == 0:
        return None
    return float(ys.mean()), float(xs.mean())


def _square_box(cy: float, cx: float, side_y: int, side_x: int, h: int, w: int) -> tuple[int, int, int, int]:
    side_y = min(max(1, side_y), h)
    side_x = min(max(1, side_x), w)
    y0 = int(round(cy - side_y / 2.0))
    x0 = int(round(cx - side_x / 2.0))
    y0 = min(max(y0, 0), h - side_y)
    x0 = min(max(x0, 0), w - side_x)
    return y0, y0 + side_y, x0, x0 + side_x


def _mask_projection(hu: np.ndarray, heart_mask) -> np.ndarray | None:
    """In-plane projection of a heart mask (over all slices), None if absent or empty."""
    if heart_mask is None:
        return None
    mask = np.asarray(heart_mask)
    if mask.shape != hu.shape:
        raise InputError(f"heart mask shape {mask.shape} does not match the CT shape {hu.shape}")
    proj = mask.reshape((-1,) + hu.shape[-2:]).any(axis=0)
    return proj if proj.any() else None


def _check_input(hu) -> np.ndarray:
    hu = np.asarray(hu)
    if hu.ndim not in (2, 3):
        raise InputError(f"heart localisation needs a slice (H, W) or a volume (Z, H, W), got shape {hu.shape}")
    return hu


def heart_centre(hu: np.ndarray, spacing: Sequence[float], heart_mask: np.ndarray | None = None) -> tuple[float, float]:
    """Centre (row, column), in pixel indices, of the heart on a slice (H, W) or volume (Z, H, W).

    With a non-empty ``heart_mask`` (same shape as ``hu``): the centre of the mask's bounding
    box over all slices. Otherwise the HU-only localiser (the thickest blood/myocardium-like
    blob between the lungs, see :func:`_localise_slice`) on the slice, or on up to nine
    slices of the central 60 % of a volume (median of the centres found); if nothing
    heart-like is found, the centroid of the body (HU > -400); the image centre if there is
    no body at all. Calcium labels are never used.
    """
    hu = _check_input(hu)
    dy, dx = _inplane_spacing(spacing)
    h, w = hu.shape[-2:]
    proj = _mask_projection(hu, heart_mask)
    if proj is not None:
        rows = np.flatnonzero(proj.any(axis=1))
        cols = np.flatnonzero(proj.any(axis=0))
        return (rows[0] + rows[-1]) / 2.0, (cols[0] + cols[-1]) / 2.0
    slices = [hu] if hu.ndim == 2 else [hu[k] for k in _central_slices(hu.shape[0])]
    centres = [c for c in (_localise_slice(s, dy, dx) for s in slices) if c is not None]
    if not centres:
        centres = [c for c in (_body_centre(s) for s in slices) if c is not None]
    if not centres:
        return (h - 1) / 2.0, (w - 1) / 2.0
    cy, cx = np.median(np.asarray(centres, dtype=float), axis=0)
    return float(cy), float(cx)


def heart_box(
    hu: np.ndarray,
    spacing: Sequence[float],
    heart_mask: np.ndarray | None = None,
    size_mm: float = DEFAULT_BOX_MM,
) -> tuple[int, int, int, int]:
    """A square field (``size_mm`` on each side) centred on the heart: ``(y0, y1, x0, x1)``.

    ``hu`` is one slice (H, W) or a volume (Z, H, W) in HU; ``spacing`` is (dy, dx) or
    (dz, dy, dx) in mm. The centre is :func:`heart_centre` (from ``heart_mask`` when given
    and non-empty, otherwise from HU alone; never from calcium labels). The box is
    half-open (``hu[..., y0:y1, x0:x1]``) and square in mm (``size_mm / dy`` rows by
    ``size_mm / dx`` columns). It is always inside the image: near a border it is shifted
    inwards (so its centre is then not the heart centre), and along an axis where the image
    is smaller than the field it spans the whole image. With a heart mask larger than
    ``size_mm``, the field grows to the mask's extent plus 10 mm on each side.
    """
    hu = _check_input(hu)
    if not size_mm > 0:
        raise InputError(f"heart field size must be > 0 mm, got {size_mm}")
    dy, dx = _inplane_spacing(spacing)
    h, w = hu.shape[-2:]
    side_y = max(1, int(round(size_mm / dy)))
    side_x = max(1, int(round(size_mm / dx)))
    cy, cx = heart_centre(hu, spacing, heart_mask)
    proj = _mask_projection(hu, heart_mask)
    if proj is not None:
        rows = np.flatnonzero(proj.any(axis=1))
        cols = np.flatnonzero(proj.any(axis=0))
        need_y = int(np.ceil((rows[-1] - rows[0] + 1) + 2 * HEART_MASK_MARGIN_MM / dy))
        need_x = int(np.ceil((cols[-1] - cols[0] + 1) + 2 * HEART_MASK_MARGIN_MM / dx))
        grow = max(need_y / side_y, need_x / side_x, 1.0)
        side_y, side_x = int(np.ceil(side_y * grow)), int(np.ceil(side_x * grow))
    return _square_box(cy, cx, side_y, side_x, h, w)


def _central_slices(nz: int, count: int = 9) -> list[int]:
    lo = int(np.floor(0.2 * (nz - 1)))
    hi = int(np.ceil(0.8 * (nz - 1)))
    return sorted(set(int(round(v)) for v in np.linspace(lo, hi, min(count, hi - lo + 1))))
