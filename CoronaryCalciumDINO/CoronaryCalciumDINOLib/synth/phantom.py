"""Synthetic calcium-scoring phantoms: a thorax phantom with a cardiac calcification insert.

Users scan such phantoms (e.g. the QRM thorax phantom with its cardiac calcification
insert) to check a scanner and a scoring program; the calcium in the insert is meant to be
scored. A model trained on patients only takes that calcium - dense cylinders in a
water-equivalent cylinder, no epicardial fat, no heart chambers - for valve or annulus
calcium and scores a phantom 0. These studies teach the networks what a phantom is.

What is modelled (all sizes and HU drawn per study, in the ranges below):

* body: an ellipse (lateral semi-axis 140-160 mm, AP 85-100 mm, its centre 15-25 mm behind
  the insert's) of soft-tissue-equivalent material (30-90 HU), cut by the reconstruction
  circle as in a cardiac field of view;
* lungs: two lung-equivalent ellipses (-850..-750 HU) hugging the insert on either side;
* spine: a vertebral body (cortex 250-700 HU, core 100-300 HU) behind the insert, a spinous
  process and a transverse bar (200-550 HU);
* insert: a cylinder (radius 48-56 mm, wall of the fill's HU -40..+20) filled with water-equivalent
  material (40-90 HU) over part of the scan; beyond its fill the bore is air, and the scan
  may start or end beyond the phantom (air slices);
* calcifications: none drawn in 15 % of phantoms (and the scan range may miss them), else
  3-12 cylinders along z, diameter 1-6 mm, length
  0.8-1.6 times the diameter, 150-1400 HU above the fill, near one plane of the insert;
* calibration rods (60 %): a bone-equivalent rod (150-450 HU) and a water rod (-20..20 HU),
  10-22 mm across, over 20-50 mm of the insert. They are not calcifications (unlabelled).

Scanner: the patient generator's geometry, point spread, textured noise and streaks.

Labels: calcification voxels >= 130 HU. A phantom has no coronary arteries, so the artery
is a convention by side (:func:`..pipeline.candidates.phantom_artery`), seen from the heart
centre the pipeline finds on the rendered scan (:func:`..pipeline.anatomy.heart_centre`, the
insert's centre give or take a few mm): the patient's right is RCA, left anterior LAD, left
posterior LCX (never LM). The total is what a phantom measures; the per-artery split of a
phantom means nothing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from ..data.studies import Study
from ..pipeline.anatomy import heart_centre
from ..io.volume import CTVolume
from ..pipeline.candidates import phantom_artery
from . import scanner
from .render import Grid, blend, coverage, ellipse_sd

AIR = -1000.0
P_EMPTY = 0.15
_SUPER = 4  # sub-pixel samples per side for a calcification's cross-section


def _slab(z: np.ndarray, z0: float, z1: float, s_z: float) -> np.ndarray:
    """Share of each slice's sensitivity profile (Gaussian, sigma ``s_z``) inside [z0, z1]."""
    s = max(s_z, 1e-3)
    return (ndtr((z1 - z) / s) - ndtr((z0 - z) / s)).astype(np.float32)


def sample_phantom(rng: np.random.Generator) -> dict:
    """Draw the phantom's geometry and materials (mm in world x, y relative to the insert centre)."""
    body_a, body_b = rng.uniform(140, 160), rng.uniform(85, 100)
    radius = rng.uniform(48, 56)
    length = rng.uniform(90, 140)
    fill_len = length * rng.uniform(0.75, 1.0)
    fill_lo = rng.uniform(0, length - fill_len)
    lung_a = rng.uniform(45, 60)
    fill = rng.uniform(40, 90)
    p = {
        "body_semi": [body_a, body_b], "body_y": rng.uniform(15, 25), "body_hu": rng.uniform(30, 90),
        "lung_hu": rng.uniform(-850, -750), "lung_x": radius + lung_a - rng.uniform(5, 20),
        "lung_semi": [lung_a, rng.uniform(60, 85)],
        "insert_radius": radius, "wall_mm": rng.uniform(1.0, 2.5), "fill_hu": fill,
        "wall_hu": fill + rng.uniform(-40, 20), "length": length, "fill": [fill_lo, fill_lo + fill_len],
        "vertebra_y": radius + rng.uniform(12, 18), "vertebra_r": rng.uniform(12, 16),
        "cortex_hu": rng.uniform(250, 700), "core_hu": rng.uniform(100, 300), "process_hu": rng.uniform(200, 550),
        "bar_half": rng.uniform(30, 45),
    }
    # calcifications and rods: positions in the insert, apart from each other
    n = 0 if rng.random() < P_EMPTY else int(rng.integers(3, 13))
    rods = []
    if rng.random() < 0.6:
        rods = [{"kind": "bone_rod", "hu": rng.uniform(150, 450)}, {"kind": "water_rod", "hu": rng.uniform(-20, 20)}]
    items = [{"kind": "calcification"} for _ in range(n)] + rods
    placed: list[tuple[float, float, float]] = []
    out = []
    plane = rng.uniform(*p["fill"]) if n else 0.0
    plane = float(np.clip(plane, p["fill"][0] + 10, p["fill"][1] - 10))
    for it in items:
        r = rng.uniform(5, 11) if it["kind"] != "calcification" else 0.5 * float(rng.choice([1, 1.5, 2, 3, 4, 5, 6]))
        for _ in range(200):
            rho = (radius - 8 - r) * np.sqrt(rng.random())
            ang = rng.uniform(0, 2 * np.pi)
            x, y = rho * np.cos(ang), rho * np.sin(ang)
            if all(np.hypot(x - qx, y - qy) > r + qr + 6 for qx, qy, qr in placed):
                break
        else:
            continue
        placed.append((x, y, r))
        if it["kind"] == "calcification":
            h = r * rng.uniform(0.8, 1.6)
            zc = plane + rng.uniform(-6, 6)
            out.append({**it, "x": x, "y": y, "r": r, "z": [zc - h, zc + h], "hu": rng.uniform(150, 1400)})
        else:
            z0 = rng.uniform(p["fill"][0], max(p["fill"][0], p["fill"][1] - 50))
            out.append({**it, "x": x, "y": y, "r": r, "z": [z0, min(z0 + rng.uniform(20, 50), p["fill"][1])]})
    p["objects"] = out
    return p


def _disk_cover(grid: Grid, cx: float, cy: float, r: float, s_xy: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """(box, coverage) of a disk: sub-pixel area share, blurred by the in-plane point spread."""
    half = r + 4 * s_xy + grid.pixel
    ys, xs = grid.index_range(cy - half, cy + half, 1), grid.index_range(cx - half, cx + half, 2)
    off = (np.arange(_SUPER) + 0.5) / _SUPER - 0.5
    Y = (grid.y[ys, None] + off[None, :] * grid.pixel)[:, :, None, None]
    X = (grid.x[xs, None] + off[None, :] * grid.pixel)[None, None, :, :]
    inside = ((X - cx) ** 2 + (Y - cy) ** 2 <= r * r).mean(axis=(1, 3)).astype(np.float32)
    return (ys, xs), ndimage.gaussian_filter(inside, s_xy / grid.pixel, truncate=3.0)


def render_phantom(study_id: str, rngs: list[np.random.Generator], sp: dict, overrides: dict) -> tuple[Study, Grid, dict]:
    """Render one phantom study; ``sp`` are the scanner parameters drawn for its seed,
    ``overrides`` hold ``matrix`` and ``slices_range`` (the generator's defaults filled in)."""
    r_geo, r_noise, r_streak = rngs
    p = sample_phantom(r_geo)
    matrix = int(overrides["matrix"])
    pixel = float(overrides.get("pixel", sp["fov_mm"] / matrix))
    spacing = float(overrides.get("spacing", sp["spacing"]))
    thickness = float(overrides.get("thickness", sp["thickness"] if "spacing" not in overrides else spacing))
    s_xy, s_z = scanner.psf_sigmas(pixel, thickness, sp["inplane_fwhm_mm"])
    edge = max(2.5 * s_xy, 0.5 * pixel)
    # scan range: the phantom's length, sometimes starting or ending in the air beyond it
    z_lo, z_hi = 0.0, p["length"]
    over = r_geo.uniform(-20, 25, size=2)
    lo_n, hi_n = overrides["slices_range"]
    n_slices = int(overrides.get("n_slices", np.clip(int(np.ceil((z_hi - z_lo + over.sum()) / spacing)) + 1, lo_n, hi_n)))
    z_top = z_hi + over[1]
    centre = np.asarray(sp["fov_shift"]) * 0.5
    origin = (float(centre[0] - (matrix - 1) / 2 * pixel), float(centre[1] - (matrix - 1) / 2 * pixel),
              float(z_top - (n_slices - 1) * spacing))
    grid = Grid(matrix, n_slices, pixel, spacing, thickness, origin)
    X, Y = grid.x[None, :], grid.y[:, None]

    def cov2(sd):
        return coverage(sd, edge).astype(np.float32)

    bore = cov2(ellipse_sd(X, Y, 0.0, 0.0, p["insert_radius"] - p["wall_mm"], p["insert_radius"] - p["wall_mm"]))
    layers = [  # (2D coverage, z extent, HU) painted in order
        (cov2(ellipse_sd(X, Y, 0.0, p["body_y"], *p["body_semi"])), (z_lo, z_hi), p["body_hu"]),
        (cov2(ellipse_sd(X, Y, -p["lung_x"], 0.0, *p["lung_semi"])), (z_lo, z_hi), p["lung_hu"]),
        (cov2(ellipse_sd(X, Y, p["lung_x"], 0.0, *p["lung_semi"])), (z_lo, z_hi), p["lung_hu"]),
        (cov2(ellipse_sd(X, Y, 0.0, p["vertebra_y"] + 22, 6.0, 22.0)), (z_lo, z_hi), p["process_hu"]),
        (cov2(ellipse_sd(X, Y, 0.0, p["vertebra_y"] + 16, p["bar_half"], 5.0, power=4.0)), (z_lo, z_hi), p["process_hu"]),
        (cov2(ellipse_sd(X, Y, 0.0, p["vertebra_y"], p["vertebra_r"], p["vertebra_r"])), (z_lo, z_hi), p["cortex_hu"]),
        (cov2(ellipse_sd(X, Y, 0.0, p["vertebra_y"], p["vertebra_r"] - 2.0, p["vertebra_r"] - 2.0)), (z_lo, z_hi), p["core_hu"]),
        (cov2(ellipse_sd(X, Y, 0.0, 0.0, p["insert_radius"], p["insert_radius"])), (z_lo, z_hi), p["wall_hu"]),
        (bore, (z_lo, z_hi), AIR),
        (bore, tuple(p["fill"]), p["fill_hu"]),
    ]
    for o in p["objects"]:
        if o["kind"] != "calcification":
            layers.append((cov2(ellipse_sd(X, Y, o["x"], o["y"], o["r"], o["r"])), tuple(o["z"]), o["hu"]))
    vol = np.full((n_slices, matrix, matrix), AIR, dtype=np.float32)
    for cov, (z0, z1), hu in layers:
        w = _slab(grid.z, z0, z1, s_z)
        for k in np.flatnonzero(w > 1e-3):
            blend(vol[k], cov * w[k], np.float32(hu))
    heart = np.zeros(vol.shape, dtype=bool)
    heart[:, ((X**2 + Y**2) <= p["insert_radius"] ** 2)] = True
    heart &= (_slab(grid.z, *p["fill"], s_z) > 0.5)[:, None, None]

    # calcifications: added on top of the fill, with their support for the labels
    support = np.zeros(vol.shape, dtype=np.uint8)  # 1 + index of the calcification
    calc = [o for o in p["objects"] if o["kind"] == "calcification"]
    for i, o in enumerate(calc):
        (ys, xs), c2 = _disk_cover(grid, o["x"], o["y"], o["r"], s_xy)
        w = _slab(grid.z, *o["z"], s_z)
        near = c2 > 0.02
        for k in np.flatnonzero(w > 1e-3):
            vol[k, ys, xs] += np.float32(o["hu"]) * w[k] * c2
            if w[k] > 0.02:
                support[k, ys, xs][near] = i + 1

    noise_sd = float(overrides.get("noise_sd", sp["noise_sd"]))
    scanner.add_noise(vol, grid, r_noise, noise_sd, max(sp["noise_grain_mm"] / pixel, 0.5))
    if overrides.get("streaks", r_streak.random() < sp["streak_probability"]):
        scanner.add_streaks(vol, grid, r_streak, [(0.0, p["vertebra_y"], float(r_streak.uniform(z_lo, z_hi)),
                                                    float(r_streak.uniform(20, 60)))])
    # outside the reconstruction circle: nothing (air)
    fov_r = 0.5 * matrix * pixel
    vol[:, ((X - centre[0]) ** 2 + (Y - centre[1]) ** 2) > fov_r**2] = AIR
    np.rint(vol, out=vol)
    np.maximum(vol, -1024.0, out=vol)
    cy, cx = heart_centre(vol, (spacing, pixel, pixel))  # where the pipeline will see the centre
    p["centre_found_mm"] = [float(grid.x[0] + cx * pixel), float(grid.y[0] + cy * pixel)]
    lut = np.zeros(len(calc) + 1, dtype=np.uint8)
    for i, o in enumerate(calc):
        o["label"] = int(phantom_artery(o["x"] - p["centre_found_mm"][0], o["y"] - p["centre_found_mm"][1]))
        lut[i + 1] = o["label"]
    labels = np.where(vol >= 130.0, lut[support], 0).astype(np.uint8)
    ct = CTVolume(hu=vol, spacing=(spacing, pixel, pixel), origin=origin, direction=np.eye(3), kvp=120.0,
                  source="synthetic", meta={"slice_thickness_mm": thickness})
    params = {"kind": "phantom", "matrix": matrix, "pixel_mm": pixel, "slice_spacing_mm": spacing,
              "slice_thickness_mm": thickness, "n_slices": n_slices, "noise_sd_hu": noise_sd,
              "psf_sigma_mm": [s_xy, s_z], "scanner": sp, "phantom": p}
    return Study(id=study_id, ct=ct, labels=labels, heart=heart.astype(np.uint8), meta={"params": params}), grid, p
