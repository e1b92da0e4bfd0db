"""Is this CT contrast-enhanced? A label-free check of the blood pool, with a loud warning.

Calcium scoring needs a *non-contrast* CT: blood measures about 20-60 HU there, so every
voxel at or above 130 HU is calcium (or bone). In a contrast-enhanced CT (CT angiography,
contrast chest CT) iodine raises the blood pool of the heart chambers and the aorta to
typically 200-500 HU (up to about 700 HU at 70-80 kVp): the scoring threshold then no
longer separates calcium from blood, and any score is meaningless. :func:`contrast_warning`
finds such a blood pool from HU alone (no labels, no model) and returns a one-line warning.

Method (``hu`` in the canonical axial layout: anterior at row 0, patient left at the last
column; ``spacing`` (dz, dy, dx) in mm):

1. **Central slab**: the central 60 % of the slices (all of them for a scan of up to three
   slices; a single slice works), where a cardiac scan holds the heart.
2. **2 mm smoothing**: block averaging to about 2 mm in every direction (factors
   ``round(2 mm / spacing)``, at least 1; a 0.5 mm pixel becomes the mean of 16), then a
   3 x 3 median on each averaged slice, so that noise leaves no holes or specks at the
   threshold. It also shrinks the work 16-fold or more.
3. **Body** on each averaged slice: HU > -400, the largest connected component plus any
   component at least 10 % of its size (a chest wall cut off by a small field of view,
   arms; not the table), holes (the lungs) filled; slices with less than 25 cm^2 of body
   are skipped. Its bounding box gives the slice's anterior-posterior (AP) and
   left-right extent.
4. **Mediastinal window**: 12-60 % of the body's AP extent from its anterior edge and
   15-85 % of its width. It holds the heart chambers, the aortic root and ascending aorta
   and the pulmonary trunk, and leaves out the two thick bones that reach 180-600 HU after
   averaging: the sternum (within about 10 % of the anterior edge) and the vertebral
   bodies (posterior midline, their anterior edge beyond about 64 % of the AP extent on
   the synthetic studies, 70 % on the real patient slices and the phantom), as well as the
   humeral heads of arms kept down (lateral). Without the window the QRM phantom's
   bone-equivalent spine (53 mL at about 390 HU) and the synthetic vertebral column
   (about 80 mL at 220-240 HU) and sternum (20-30 mL at 200-280 HU) would flag every
   non-contrast scan.
5. **Blood-pool blobs**: in the window, averaged voxels with HU in [180, 800] as 2D
   connected components (8-connected); a component counts when it is **thick**: its
   deepest point lies at least 8 mm from its edge or from the window's edge (a blob at
   least about 16 mm across, as a heart chamber or the aorta). Ribs, cortical bone,
   coronary, valve and annulus calcium, vessel walls and the slice of a bone cut by the
   window's edge are thinner. 180 HU is three to four times non-contrast blood and more
   than 5 noise SDs above it after the smoothing; 800 HU keeps the brightest blood pool of
   low-kVp angiography (bone and metal are ruled out by the window and the thickness,
   not by the upper bound).
6. **Decision**: the volume of blood-pool blobs (area times slab thickness) must reach
   :data:`MIN_VOLUME_ML` = 20 mL (a small chamber, or a few centimetres of aorta; a
   contrast-filled heart gives hundreds of mL in the slab), or, for a slab thinner than
   20 mm (a few slices, one slice), 10 cm^2 per slice on average (the same 20 mL spread
   over 20 mm; a mid-heart slice of a contrast CT has 40-110 cm^2 of blood pool). The
   largest non-contrast confounders in the window - heavy mitral-annulus or aortic-valve
   calcification - are a few mL and mostly thinner than 16 mm. The warning quotes the
   median HU of the blood-pool blobs.

Measured: 104 synthetic non-contrast studies (128, 256 and 512 matrices) 0 mL, and 0 cm^2
on every one of their slices taken alone; the QRM phantom 5.6 mL (a 20 mm rod of about
300 HU in the middle of the phantom, over six slices; 3.3 cm^2 per slice); the two real
non-contrast patient slices 0 cm^2. The same synthetic studies with the heart's 0-100 HU
voxels raised to 300 HU: 309-1040 mL at about 300 HU, and at least 53 cm^2 on the middle
slice alone; the real slices with their heart raised to about 300 HU: 80 cm^2 each. Cost:
about 0.1 s on a 512 x 512 x 64 volume (one CPU core).

A contrast scan whose blood pool stays below 180 HU (a late venous phase) is not flagged.

:func:`check_contrast` applies the check to a :class:`~..io.volume.CTVolume` once (it
flips the rows into the canonical order when the CT is stored posterior-to-anterior),
appends the warning to ``ct.warnings`` and returns it; the command line, the batch runner
and the Slicer module call it, so the warning reaches the report's ``warnings``, stderr
and the panel.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

#: Averaging block size (mm) in every direction.
BLOCK_MM = 2.0
#: Body mask: HU above this (air and lung below).
BODY_HU = -400.0
#: HU range of a contrast-enhanced blood pool after the averaging.
ENHANCED_HU = (180.0, 800.0)
#: A blob's deepest point must be at least this far (mm) from its edge (or the window's edge).
MIN_DEPTH_MM = 8.0
#: Mediastinal window, as fractions of the body's bounding box on the slice:
#: rows (anterior 0 -> posterior 1) and columns.
WINDOW_AP = (0.12, 0.60)
WINDOW_LR = (0.15, 0.85)
#: Blood-pool volume that triggers the warning (mL) ...
MIN_VOLUME_ML = 20.0
#: ... or, for a slab thinner than MIN_VOLUME_ML / this, this mean area per slice (cm^2).
MIN_AREA_CM2 = 10.0
#: Body parts smaller than this fraction of the largest (the table, cables) are left out.
BODY_PART_FRACTION = 0.1
#: Slices with less body than this (cm^2) are skipped.
MIN_BODY_CM2 = 25.0
#: Non-contrast blood, quoted in the message.
NON_CONTRAST_BLOOD_HU = (20, 60)

_EIGHT = np.ones((3, 3), dtype=bool)


def _central_slab(nz: int) -> slice:
    if nz <= 3:
        return slice(0, nz)
    lo = int(np.floor(0.2 * (nz - 1)))
    hi = int(np.ceil(0.8 * (nz - 1)))
    return slice(lo, hi + 1)


def _block_mean(vol: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    fz, fy, fx = f
    nz, ny, nx = (vol.shape[0] // fz) * fz, (vol.shape[1] // fy) * fy, (vol.shape[2] // fx) * fx
    v = vol[:nz, :ny, :nx]
    return v.reshape(nz // fz, fz, ny // fy, fy, nx // fx, fx).mean(axis=(1, 3, 5), dtype=np.float32)


def _body_mask(s: np.ndarray) -> np.ndarray | None:
    """HU > -400, the largest component and every component at least
    :data:`BODY_PART_FRACTION` of its size (the chest wall cut off by a small field of
    view, arms), holes filled."""
    body = s > BODY_HU
    lab, n = ndimage.label(body, structure=_EIGHT)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= BODY_PART_FRACTION * sizes.max()
    return ndimage.binary_fill_holes(keep[lab])


def blood_pool(hu: np.ndarray, spacing: Sequence[float]) -> dict:
    """Measure the contrast-like blood pool (see the module docstring).

    Returns ``{"volume_ml", "threshold_ml", "median_hu", "slab_mm", "slices"}``;
    ``median_hu`` is None when no blob qualifies.
    """
    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"contrast check needs a volume (z, y, x) or a slice (y, x), got shape {hu.shape}")
    sp = [float(s) for s in spacing]
    if len(sp) == 2:
        sp = [1.0, *sp]
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise ValueError(f"spacing must be (dz, dy, dx) with positive values, got {spacing}")
    dz, dy, dx = sp
    slab = hu[_central_slab(hu.shape[0])]
    f = (
        min(max(1, int(round(BLOCK_MM / dz))), slab.shape[0]),
        min(max(1, int(round(BLOCK_MM / dy))), slab.shape[1]),
        min(max(1, int(round(BLOCK_MM / dx))), slab.shape[2]),
    )
    small = _block_mean(slab, f)
    sz, sy, sx = f[0] * dz, f[1] * dy, f[2] * dx  # averaged voxel size (mm)
    pixel_mm2 = sy * sx
    slab_mm = small.shape[0] * sz
    lo_hu, hi_hu = ENHANCED_HU
    area_mm2 = 0.0
    values: list[np.ndarray] = []
    for s in small:
        body = _body_mask(s)
        if body is None or body.sum() * pixel_mm2 < MIN_BODY_CM2 * 100.0:
            continue
        rows = np.flatnonzero(body.any(axis=1))
        cols = np.flatnonzero(body.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
        # The mediastinal window, as a crop of the slice (one pixel more on each side
        # for the median filter).
        ya = int(np.ceil(r0 + WINDOW_AP[0] * (r1 - r0)))
        yb = int(np.floor(r0 + WINDOW_AP[1] * (r1 - r0))) + 1
        xa = int(np.ceil(c0 + WINDOW_LR[0] * (c1 - c0)))
        xb = int(np.floor(c0 + WINDOW_LR[1] * (c1 - c0))) + 1
        if yb <= ya or xb <= xa:
            continue
        pa, pb = max(ya - 1, 0), max(xa - 1, 0)
        crop = s[pa : yb + 1, pb : xb + 1]
        if not (crop >= lo_hu).any():
            continue
        # 3 x 3 median: no isolated noisy holes or specks at the threshold.
        smooth = ndimage.median_filter(crop, size=3, mode="nearest")
        smooth = smooth[ya - pa : yb - pa, xa - pb : xb - pb]
        enhanced = (smooth >= lo_hu) & (smooth <= hi_hu) & body[ya:yb, xa:xb]
        if not enhanced.any():
            continue
        lab, _ = ndimage.label(enhanced, structure=_EIGHT)
        # Depth: distance to the nearest pixel outside the blob or outside the window
        # (the False border), so a bone cut by the window edge stays thin.
        depth = ndimage.distance_transform_edt(np.pad(enhanced, 1), sampling=(sy, sx))[1:-1, 1:-1]
        thick = np.unique(lab[depth >= MIN_DEPTH_MM])
        if thick.size == 0:
            continue
        pool = np.isin(lab, thick)
        area_mm2 += float(pool.sum()) * pixel_mm2
        values.append(smooth[pool])
    volume_ml = area_mm2 * sz / 1000.0
    threshold_ml = min(MIN_VOLUME_ML, MIN_AREA_CM2 * 100.0 * slab_mm / 1000.0)
    median = float(np.median(np.concatenate(values))) if values else None
    return {
        "volume_ml": volume_ml,
        "threshold_ml": threshold_ml,
        "median_hu": median,
        "slab_mm": slab_mm,
        "slices": int(small.shape[0]),
    }


def contrast_message(median_hu: float) -> str:
    """The one-line warning for a blood pool of ``median_hu``."""
    lo, hi = NON_CONTRAST_BLOOD_HU
    return (
        f"the blood pool measures about {int(round(median_hu, -1))} HU (non-contrast blood is {lo}-{hi} HU): "
        "this looks like a contrast-enhanced CT, which is not a calcium-scoring scan; "
        "iodine may be scored as calcium and the scores are not valid"
    )


def contrast_warning(hu: np.ndarray, spacing) -> str | None:
    """A one-line warning when the CT looks contrast-enhanced, else None.

    ``hu``: (z, y, x) HU (or one slice (y, x)) in the canonical axial layout (anterior at
    row 0, patient left at the last column); ``spacing``: (dz, dy, dx) mm. See the module
    docstring for the criterion.
    """
    m = blood_pool(hu, spacing)
    if m["median_hu"] is None or m["volume_ml"] < m["threshold_ml"]:
        return None
    return contrast_message(m["median_hu"])


def _rows_reversed(direction) -> bool:
    """True when the CT's rows run posterior to anterior (row axis close to -P)."""
    try:
        d = np.asarray(direction, dtype=float).reshape(3, 3)
    except (TypeError, ValueError):
        return False
    return bool(d[1, 1] <= -0.9)


def check_contrast(ct) -> str | None:
    """Run :func:`contrast_warning` on a CTVolume once; add its warning to ``ct.warnings``.

    The result is cached in ``ct.meta["contrast_warning"]``, so calling it again (the
    command line, then the pipeline) costs nothing and adds the warning only once. Rows
    stored posterior-to-anterior are flipped into the canonical order first. Returns the
    warning (or None); printing or logging it is the caller's business.
    """
    meta = getattr(ct, "meta", None)
    if isinstance(meta, dict) and "contrast_warning" in meta:
        message = meta["contrast_warning"]
    else:
        hu = np.asarray(ct.hu)
        if _rows_reversed(getattr(ct, "direction", np.eye(3))):
            hu = hu[:, ::-1]
        message = contrast_warning(hu, ct.spacing)
        if isinstance(meta, dict):
            meta["contrast_warning"] = message
    if message and message not in ct.warnings:
        ct.warnings.append(message)
    return message
