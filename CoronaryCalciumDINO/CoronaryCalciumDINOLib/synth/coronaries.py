"""The four coronary arteries as 3D centrelines on the synthetic heart.

* LM leaves the left (posterior-left) aortic sinus and runs left, level or slightly
  downwards, between the pulmonary trunk and the left atrium, for ~6-14 mm, then splits into
* LAD, which runs on, nearly level, to the left of the pulmonary trunk, then forwards and down, reaches the anterior
  interventricular groove and follows it to the apex, and
* LCX, which turns backwards and down into the left atrioventricular (AV) groove and
  follows it round to the posterior side.
* RCA leaves the right (anterior) sinus, follows the right AV groove round to the crux and
  turns down the posterior interventricular groove (posterior descending branch).

The left coronary branches never rise above their bifurcation (:data:`LCX_DROP_MM`,
:data:`LAD_DROP_MM`), as on real scans: on an axial CT the LM is the highest coronary
segment, the proximal LAD lies in front of it and the LCX behind and below. The ellipsoid
heart's base ring is wider than a real AV groove and, tilted with the long axis, its left
side rises above the aortic root; the branches therefore follow the heart's surface at the
height they would have, not the ring's (:func:`_surface_at_height`).

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
#: The LCX runs from this far below the bifurcation (first value, where it enters the AV
#: groove) to the second value below it (where it reaches the posterior side), at most.
LCX_DROP_MM = (2.0, 30.0)
#: The LAD reaches the anterior interventricular groove at least this far below the bifurcation.
LAD_DROP_MM = 4.0


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


def _surface_at_height(a: dict, u0: float, phi: float, off: float, z_max: float) -> np.ndarray:
    """The surface point at azimuth ``phi`` (``off`` mm out) at axial position ``u0``, or
    further towards the apex where that point lies above ``z_max``: the first position, in
    1 mm steps up to the heart's middle, at or below that height."""
    aL = a["heart_semi"][0]
    for u in np.arange(u0, 0.5 * aL, 1.0):
        p = surface_point(a, u, phi, off)
        if p[2] <= z_max:
            return p
    return surface_point(a, 0.5 * aL, phi, off)


def _outside(a: dict, p: np.ndarray, off: float) -> np.ndarray:
    """``p``, or, where it lies inside the ventricles (less than ``off`` mm out of their
    surface), the surface point ``off`` mm out at its azimuth, at its axial position or
    further towards the apex, never above ``p`` (:func:`_surface_at_height`)."""
    c, L, e_ant, e_left = heart_frame(a)
    d = np.asarray(p, float) - c
    u = float(d @ L)
    r = d - u * L
    if abs(u) >= a["heart_semi"][0]:
        return np.asarray(p, float)
    phi = float(np.degrees(np.arctan2(r @ e_left, r @ e_ant)))
    q = surface_point(a, u, phi, off)
    if np.linalg.norm(r) >= np.linalg.norm(q - c - u * L):
        return np.asarray(p, float)
    return _surface_at_height(a, u, phi, off, float(p[2]))


def _over_surface(a: dict, p0: np.ndarray, p1: np.ndarray, off: float, step: float = 3.0) -> list[np.ndarray]:
    """Points from ``p0`` to ``p1`` (both excluded) every ~``step`` mm, kept out of the ventricles
    (:func:`_outside`): a vessel follows the heart's surface, never through it."""
    n = int(np.linalg.norm(np.asarray(p1) - p0) // step)
    return [_outside(a, p0 + (p1 - p0) * t, off) for t in np.linspace(0, 1, n + 2)[1:-1]]


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

    # the left sinus is the root's posterior-left one, the right sinus its anterior one
    ost_l = ao + r_ao * unit([0.75, rng.uniform(0.4, 0.7), 0.0]) + [0, 0, rng.uniform(-4, 0)]
    ost_r = ao + r_ao * unit([-0.3, -0.95, 0.0]) + [0, 0, rng.uniform(-6, -2)]

    # LM: short trunk to the left, level or slightly down, behind the pulmonary trunk.
    lm_len = rng.uniform(6, 14)
    bif = ost_l + lm_len * unit([1.0, rng.uniform(-0.35, 0.0), rng.uniform(-0.3, -0.05)])
    lm_pts = np.array([ost_l, 0.5 * (ost_l + bif), bif])

    # LAD: on to the left of the pulmonary trunk, nearly level, then forwards and down the
    # anterior groove to the apex.
    lad_bend = bif + [rng.uniform(10, 16), rng.uniform(-6, -2), rng.uniform(-4, -1)]
    g_ant = _surface_at_height(a, u_av + 4, phi_ant, off, bif[2] - LAD_DROP_MM)
    u_g = float(np.dot(g_ant - c, L))
    u_lad = np.linspace(u_g, 0.97 * aL, 24)
    phi_lad = phi_ant + np.linspace(0, rng.uniform(-15, 25), len(u_lad))
    lad_pts = np.vstack([bif, lad_bend] + _over_surface(a, lad_bend, g_ant, off)
                         + [surface_point(a, u, p, off) for u, p in zip(u_lad, phi_lad)])

    # LCX: backwards and down into the left AV groove, then round it to the posterior side.
    phi_lcx = np.linspace(phi_ant + rng.uniform(45, 65), phi_ant + rng.uniform(120, 160), 20)
    drop = np.linspace(LCX_DROP_MM[0], rng.uniform(0.6, 1.0) * LCX_DROP_MM[1], len(phi_lcx))
    lcx_bend = bif + [rng.uniform(3, 6), rng.uniform(4, 8), -rng.uniform(4, 7)]
    groove = [_surface_at_height(a, u_av + 1, p, off, bif[2] - d) for p, d in zip(phi_lcx, drop)]
    lcx_pts = np.vstack([bif, lcx_bend] + _over_surface(a, lcx_bend, groove[0], off) + groove)

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
