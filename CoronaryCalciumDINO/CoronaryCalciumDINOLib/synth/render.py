"""Rendering primitives of the synthetic CT generator: the voxel grid and soft shapes.

Every shape is drawn with a soft edge: its coverage of a voxel is
``clip(0.5 - d / edge, 0, 1)`` with ``d`` the (approximate) signed distance in mm from the
voxel centre to the shape's surface, negative inside. A shape is painted by blending,
``hu += coverage * (value - hu)``, so later shapes cover earlier ones. Work is done inside
each shape's bounding box only.

Array order is (z, y, x); world coordinates are LPS millimetres, x to the patient's left
(image right), y posterior (image down), z superior.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel grid: ``n`` x ``n`` pixels of ``pixel`` mm, ``nz`` slices every ``dz`` mm."""

    n: int
    nz: int
    pixel: float
    dz: float
    thickness: float
    origin: tuple[float, float, float]  # (x, y, z) of voxel [0, 0, 0]

    @cached_property
    def x(self) -> np.ndarray:
        return (self.origin[0] + self.pixel * np.arange(self.n)).astype(np.float32)

    @cached_property
    def y(self) -> np.ndarray:
        return (self.origin[1] + self.pixel * np.arange(self.n)).astype(np.float32)

    @cached_property
    def z(self) -> np.ndarray:
        return (self.origin[2] + self.dz * np.arange(self.nz)).astype(np.float32)

    def index_range(self, lo: float, hi: float, axis: int) -> slice:
        """Index slice of the voxels whose centres lie in [lo, hi] mm along ``axis`` (0 z, 1 y, 2 x)."""
        step = self.dz if axis == 0 else self.pixel
        o = self.origin[2 - axis]
        size = self.nz if axis == 0 else self.n
        i0 = max(int(np.ceil((lo - o) / step)), 0)
        i1 = min(int(np.floor((hi - o) / step)) + 1, size)
        return slice(i0, max(i0, i1))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """(z, y, x) index box of the world box [lo, hi] (x, y, z mm); None when empty."""
        b = (self.index_range(lo[2], hi[2], 0), self.index_range(lo[1], hi[1], 1), self.index_range(lo[0], hi[0], 2))
        if any(s.stop <= s.start for s in b):
            return None
        return b

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) world coordinates of a box."""
        z = self.z[box[0]][:, None, None]
        y = self.y[box[1]][None, :, None]
        x = self.x[box[2]][None, None, :]
        return z, y, x


def coverage(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft-edge coverage from a signed distance (mm, negative inside)."""
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def blend(target: np.ndarray, cov: np.ndarray, value) -> None:
    """In place: ``target += cov * (value - target)``."""
    target += cov * (value - target)


def paint_ellipse(img: np.ndarray, grid: Grid, cx: float, cy: float, a: float, b: float, value, edge: float,
                  angle_deg: float = 0.0, power: float = 2.0) -> None:
    """Blend a 2D (super)ellipse into a slice ``img`` (y, x), inside its bounding box only.

    ``value`` is a number or a full-slice array.
    """
    r = max(a, b) * (1.2 if power > 2 else 1.0) + edge
    ys, xs = grid.index_range(cy - r, cy + r, 1), grid.index_range(cx - r, cx + r, 2)
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return
    X, Y = grid.x[None, xs], grid.y[ys, None]
    v = value[ys, xs] if isinstance(value, np.ndarray) else value
    blend(img[ys, xs], coverage(ellipse_sd(X, Y, cx, cy, a, b, angle_deg, power), edge), v)


def ellipse_sd(x, y, cx: float, cy: float, a: float, b: float, angle_deg: float = 0.0, power: float = 2.0):
    """Approximate signed distance (mm) to a rotated (super)ellipse in the xy plane.

    ``power`` 2 is an ellipse; larger values are boxier. Uses ``f / |grad f|`` with
    ``f = |u/a|^p + |v/b|^p - 1``, exact on the boundary to first order.
    """
    t = np.deg2rad(angle_deg)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    au, av = np.abs(u) / a, np.abs(v) / b
    if power == 2.0:
        f = au * au + av * av - 1.0
        gu, gv = 2.0 * au / a, 2.0 * av / b
    else:
        f = au**power + av**power - 1.0
        gu = power * au ** (power - 1) / a
        gv = power * av ** (power - 1) / b
    return f / np.maximum(np.sqrt(gu * gu + gv * gv), 1e-3)


def ellipsoid_bounds(centre: np.ndarray, axes: np.ndarray, semi: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounds (x, y, z) of an ellipsoid with axis columns ``axes``."""
    m = axes @ np.diag(np.asarray(semi, float) ** 2) @ axes.T
    half = np.sqrt(np.diag(m)) + margin
    return centre - half, centre + half


def ellipsoid_sd(grid: Grid, box, centre: np.ndarray, axes: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid on a grid box (z, y, x)."""
    z, y, x = grid.coords(box)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    q = np.zeros(np.broadcast_shapes(dz.shape, dy.shape, dx.shape), dtype=np.float32)
    g2 = np.zeros_like(q)
    for k in range(3):
        ax = axes[:, k] / float(semi[k])
        t = (dx * np.float32(ax[0]) + dy * np.float32(ax[1])) + dz * np.float32(ax[2])
        q += t * t
        g = t / np.float32(semi[k])
        g2 += g * g
    return (q - 1.0) / np.maximum(2.0 * np.sqrt(g2), 1e-3)


def ellipsoid_slices(grid: Grid, centre: np.ndarray, axes: np.ndarray, semi: np.ndarray, margin: float):
    """Per slice, the tight (z, y, x) box of an ellipsoid's cross-section (grown by ``margin``)."""
    centre = np.asarray(centre, float)
    m = axes @ np.diag(np.asarray(semi, float) ** 2) @ axes.T  # (p-c)^T m^-1 (p-c) <= 1
    half_z = np.sqrt(m[2, 2]) + margin
    zs = grid.index_range(centre[2] - half_z, centre[2] + half_z, 0)
    for k in range(zs.start, zs.stop):
        dz = float(grid.z[k]) - centre[2]
        # Cross-section of the (margin-grown) ellipsoid at height dz: centre and extents.
        f = dz / m[2, 2]
        cxy = centre[:2] + m[:2, 2] * f
        scale = max(1.0 - dz * dz / (m[2, 2] + 2 * margin * np.sqrt(m[2, 2]) + margin**2), 0.0)
        cond = m[:2, :2] - np.outer(m[:2, 2], m[:2, 2]) / m[2, 2]
        half = np.sqrt(np.maximum(np.diag(cond), 0) * scale) + margin
        ys = grid.index_range(cxy[1] - half[1], cxy[1] + half[1], 1)
        xs = grid.index_range(cxy[0] - half[0], cxy[0] + half[0], 2)
        if ys.stop > ys.start and xs.stop > xs.start:
            yield (slice(k, k + 1), ys, xs)


def paint_ellipsoid(vol: np.ndarray, grid: Grid, centre, axes, semi, value: float, edge: float,
                    where_below: float | None = None, mask: np.ndarray | None = None) -> None:
    """Blend a rotated ellipsoid of ``value`` HU into ``vol``, slice by slice in tight boxes.

    ``where_below``: only change voxels whose current HU is below this value (e.g. paint
    over lung only). ``mask``: boolean volume set to True inside the ellipsoid.
    """
    centre = np.asarray(centre, float)
    axes = np.asarray(axes, float)
    semi = np.asarray(semi, float)
    for box in ellipsoid_slices(grid, centre, axes, semi, edge):
        sd = ellipsoid_sd(grid, box, centre, axes, semi)
        cov = coverage(sd, edge)
        sub = vol[box]
        if where_below is not None:
            cov = cov * (sub < where_below)
        blend(sub, cov, value)
        if mask is not None:
            mask[box] |= sd <= 0


def tube_coverage(grid: Grid, curves: list[tuple[np.ndarray, np.ndarray]], edge: float, seg_len: float = 4.0):
    """Coverage of tapered tubes (chains of capsules) around polylines.

    ``curves``: (points (n, 3) mm, radii (n,) mm) per tube. Each polyline is cut into
    pieces of at most ``seg_len`` mm (or two radii) and every capsule is evaluated in its
    own small box; the union is the maximum. Returns ``(box, cov)`` over the (z, y, x) box
    enclosing all tubes, or ``None`` when nothing falls on the grid.
    """
    p0s, p1s, r0s, r1s = [], [], [], []
    for pts, rad in curves:
        pts = np.asarray(pts, float).reshape(-1, 3)
        rad = np.broadcast_to(np.asarray(rad, float), (len(pts),))
        if len(pts) < 2:
            continue
        # Cut every polyline segment into n equal pieces.
        length = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        n = np.maximum(np.ceil(length / np.maximum(seg_len, 2 * np.maximum(rad[:-1], rad[1:]))), 1).astype(int)
        seg = np.repeat(np.arange(len(n)), n)
        k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        t0, t1 = k / n[seg], (k + 1) / n[seg]
        d, dr = pts[1:] - pts[:-1], rad[1:] - rad[:-1]
        p0s.append(pts[seg] + t0[:, None] * d[seg])
        p1s.append(pts[seg] + t1[:, None] * d[seg])
        r0s.append(rad[seg] + t0 * dr[seg])
        r1s.append(rad[seg] + t1 * dr[seg])
    if not p0s:
        return None
    P0, P1, R0, R1 = (np.concatenate(v) for v in (p0s, p1s, r0s, r1s))
    reach = np.maximum(R0, R1) + edge
    los = np.minimum(P0, P1) - reach[:, None]
    his = np.maximum(P0, P1) + reach[:, None]
    lo, hi = los.min(axis=0), his.max(axis=0)
    box = grid.box(lo, hi)
    if box is None:
        return None
    shape = tuple(s.stop - s.start for s in box)
    cov = np.zeros(shape, dtype=np.float32)
    # Index boxes of all capsules at once, relative to the enclosing box (z, y, x).
    org = np.array([grid.origin[2], grid.origin[1], grid.origin[0]])
    step = np.array([grid.dz, grid.pixel, grid.pixel])
    start = np.array([b.start for b in box])
    i0 = np.maximum(np.ceil((los[:, ::-1] - org) / step).astype(int) - start, 0)
    i1 = np.minimum(np.floor((his[:, ::-1] - org) / step).astype(int) + 1 - start, shape)
    ok = np.all(i1 > i0, axis=1)
    gz, gy, gx = grid.coords(box)
    for p0, p1, r0, r1, a0, a1 in zip(P0[ok], P1[ok], R0[ok], R1[ok], i0[ok], i1[ok]):
        rel = (slice(a0[0], a1[0]), slice(a0[1], a1[1]), slice(a0[2], a1[2]))
        z, y, x = gz[rel[0]], gy[:, rel[1]], gx[:, :, rel[2]]
        d = (p1 - p0).astype(np.float32)
        dd = float(d @ d) or 1.0
        vx, vy, vz = x - np.float32(p0[0]), y - np.float32(p0[1]), z - np.float32(p0[2])
        t = np.clip((vx * d[0] + vy * d[1] + vz * d[2]) / np.float32(dd), 0.0, 1.0)
        qx, qy, qz = vx - t * d[0], vy - t * d[1], vz - t * d[2]
        dist = np.sqrt(qx * qx + qy * qy + qz * qz) - (np.float32(r0) + t * np.float32(r1 - r0))
        c = np.clip(0.5 - dist / np.float32(edge), 0.0, 1.0)
        np.maximum(cov[rel], c, out=cov[rel])
    return box, cov


def resample_curve(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step`` mm along a polyline, and their arc length."""
    points = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.r_[0.0, np.cumsum(seg)]
    if s[-1] <= 0:
        return points[:1], np.zeros(1)
    t = np.arange(0.0, s[-1] + 1e-9, step)
    out = np.stack([np.interp(t, s, points[:, k]) for k in range(3)], axis=1)
    return out, t
