"""The four coronary arteries as 3D centrelines on the synthetic heart.

* LM leaves the left aortic sinus, runs left and anterior for ~5-15 mm and splits into
* LAD, which reaches the anterior interventricular groove and follows it to the apex, and
* LCX, which follows the left atrioventricular (AV) groove round to the posterior side.
* RCA leaves the right (anterior) sinus, follows the right AV groove round to the crux and
  turns down the posterior interventricular groove (posterior descending branch).

Each artery is a polyline resampled every 0.5 mm with a lumen radius that tapers
distally. The vessels sit in epicardial fat (a fat sleeve around each centreline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import ARTERIES
from .anatomy import heart_frame, landmarks, surface_point, unit
from .render import Grid, blend, resample_curve, tube_coverage

STEP_MM = 0.5


@dataclass
class Artery:
    name: str
    points: np.ndarray  # (n, 3) x, y, z mm
    radius: np.ndarray  # (n,) lumen radius mm
    arclength: np.ndarray  # (n,) mm from the ostium


def _smooth(points: np.ndarray, passes: int = 3) -> np.ndarray:
    p = np.asarray(points, float)
    for _ in range(passes):
        q = p.copy()
        q[1:-1] = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
        p = q
    return p


def build_coronaries(a: dict, rng: np.random.Generator) -> dict[str, Artery]:
    """Sample the coronary tree of a heart (see the module docstring)."""
    c, L, e_ant, e_left = heart_frame(a)
    aL = a["heart_semi"][0]
    u_av = a["av_u"]
    lm = landmarks(a)
    ao = lm["aortic_root"]
    r_ao = a["aorta_radius"]
    off = a["epicardial_fat_mm"] * 0.5 + 1.0  # centreline depth: inside the epicardial fat
    phi_ant = rng.uniform(15, 40)  # anterior interventricular groove azimuth
    phi_post = -180 + rng.uniform(-20, 20)  # crux / posterior interventricular groove

    ost_l = ao + r_ao * unit([0.85, 0.1, 0.0]) + [0, 0, rng.uniform(-4, 0)]
    ost_r = ao + r_ao * unit([-0.3, -0.95, 0.0]) + [0, 0, rng.uniform(-6, -2)]

    # LM: short trunk towards the top of the anterior groove.
    g_ant = surface_point(a, u_av + 4, phi_ant, off)
    lm_len = rng.uniform(6, 14)
    bif = ost_l + lm_len * unit(g_ant - ost_l)
    lm_pts = np.array([ost_l, ost_l + 0.5 * (bif - ost_l) + [0, 0, 1.0], bif])

    u_lad = np.linspace(u_av + 4, 0.97 * aL, 24)
    phi_lad = phi_ant + np.linspace(0, rng.uniform(-15, 25), len(u_lad))
    lad_pts = np.vstack([bif, g_ant] + [surface_point(a, u, p, off) for u, p in zip(u_lad[1:], phi_lad[1:])])

    phi_lcx = np.linspace(phi_ant + 35, phi_ant + rng.uniform(120, 160), 20)
    lcx_pts = np.vstack([bif] + [surface_point(a, u_av + 1, p, off) for p in phi_lcx])

    phi_rca = np.linspace(-25, phi_post, 26)
    ring = [surface_point(a, u_av + 1, p, off) for p in phi_rca]
    pda = [surface_point(a, u, phi_post - 5, off) for u in np.linspace(u_av + 6, u_av + rng.uniform(40, 70), 8)]
    rca_pts = np.vstack([ost_r, ost_r + 8 * unit(ring[0] - ost_r)] + ring + pda)

    spec = {"LM": (lm_pts, rng.uniform(1.8, 2.1), 0.9),
            "LAD": (lad_pts, rng.uniform(1.6, 1.9), 0.7),
            "LCX": (lcx_pts, rng.uniform(1.5, 1.8), 0.8),
            "RCA": (rca_pts, rng.uniform(1.7, 2.0), 0.8)}
    out: dict[str, Artery] = {}
    for name in ARTERIES:
        pts, r0, r_end = spec[name]
        pts, s = resample_curve(pts, 2.0)
        pts, s = resample_curve(_smooth(pts, 4 if name != "LM" else 1), STEP_MM)
        frac = s / max(s[-1], 1e-6)
        radius = r0 * (1 - frac) + min(r_end, r0) * frac if name != "LM" else np.full(len(s), r0)
        out[name] = Artery(name, pts, radius, s)
    return out


def paint_coronaries(vol: np.ndarray, heart: np.ndarray, grid: Grid, a: dict, arteries: dict[str, Artery],
                     edge: float) -> None:
    """Fat sleeves (the grooves) then the vessel lumens; marks the sleeves in ``heart``."""
    sleeve = 2.5 + a["epicardial_fat_mm"] * 0.6
    res = tube_coverage(grid, [(art.points[::4], art.radius[::4] + sleeve) for art in arteries.values()], edge)
    if res is not None:
        box, cov = res
        blend(vol[box], cov, a["fat_hu"])
        heart[box] |= cov >= 0.5
    res = tube_coverage(grid, [(art.points[::4], art.radius[::4]) for art in arteries.values()], edge, seg_len=3.0)
    if res is not None:
        box, cov = res
        blend(vol[box], cov, a["blood_hu"] + 5.0)
