"""Calcifications: coronary plaques (labelled) and confounders (never labelled).

Every calcification is a sum of 3D Gaussian blobs. A blob with covariance ``S0`` and
intrinsic peak ``A`` (HU above the local background), seen through a Gaussian scanner
response ``P`` (in-plane point spread, slice sensitivity profile), is again a Gaussian:
covariance ``S = S0 + P`` and peak ``A * sqrt(det S0 / det S)``. The blur is therefore exact
and computed in a small box around each blob; small or faint plaques really drop below
130 HU. A blob's *support* is its blurred 3-sigma ellipsoid (Mahalanobis distance <= 3).

Confounders, at their anatomical places: aortic wall calcification (ascending and
descending aorta), aortic valve calcification (at the root, below the coronary ostia)
and mitral annulus calcification (posterior annulus, inside the left AV groove).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import ARTERIES, ARTERY_TO_LABEL
from .anatomy import great_vessels, heart_frame, landmarks, surface_point, unit
from .coronaries import Artery
from .render import Grid

#: Share of artery choice for a coronary plaque (LM, LAD, LCX, RCA).
ARTERY_WEIGHTS = (0.08, 0.42, 0.2, 0.3)
SUPPORT_MAHALANOBIS = 3.0
#: A broad plaque (``sample_plaques(broad=...)``): how many blobs it gets beyond its own
#: (at least, at most), round the circumference, and how much wider across the vessel.
BROAD_EXTRA_BLOBS = (1, 3)
BROAD_WIDEN = (1.3, 1.9)


@dataclass
class Blob:
    centre: np.ndarray  # (x, y, z) mm
    cov: np.ndarray  # 3x3 mm^2, intrinsic (before blur)
    amplitude: float  # intrinsic peak HU above background
    label: int  # 1..4 coronary artery, 0 confounder
    kind: str  # "plaque", "aortic_wall", "aortic_valve", "mitral_annulus"


def _frame(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t = unit(t)
    n1 = unit(np.cross(t, rng.normal(size=3)))
    return np.stack([t, n1, np.cross(t, n1)], axis=1)


def _cov(frame: np.ndarray, sig: tuple[float, float, float]) -> np.ndarray:
    return frame @ np.diag(np.square(sig)) @ frame.T


def sample_plaques(rng: np.random.Generator, arteries: dict[str, Artery], p_zero: float,
                   broad: tuple[np.random.Generator, float] | None = None) -> tuple[list[Blob], float]:
    """Coronary plaques: none with probability ``p_zero``, else a heavy-tailed number.

    ``broad`` = (its own random stream, share): that share of the plaques is drawn *broad*,
    as heavy real calcification is: its blobs spread round the vessel's circumference
    (:data:`BROAD_EXTRA_BLOBS` more of them) and :data:`BROAD_WIDEN` times wider across the
    vessel, a band as wide as the artery rather than a crescent on one side of it. Every other
    draw comes from ``rng`` as without ``broad``, so the plaques that are not broad stay as
    they were.

    Returns the blobs and the study's burden parameter (0 without plaques).
    """
    if rng.random() < p_zero:
        return [], 0.0
    burden = float(np.exp(rng.uniform(np.log(0.3), np.log(60.0))))
    n = min(1 + rng.poisson(burden), 80)
    blobs: list[Blob] = []
    for _ in range(n):
        art = arteries[ARTERIES[rng.choice(4, p=ARTERY_WEIGHTS)]]
        i = int(rng.beta(1.2, 2.2) * (len(art.points) - 1))
        i = min(max(i, 1), len(art.points) - 2)
        t = art.points[i + 1] - art.points[i - 1]
        sig_t = float(np.exp(rng.uniform(np.log(0.3), np.log(2.2)))) * (1 + 0.025 * burden)
        sig_n = float(np.exp(rng.uniform(np.log(0.25), np.log(1.1))))
        amp = rng.uniform(250, 1300) * (0.75 + 0.25 * min(sig_n / 0.7, 1.6))
        psi = rng.uniform(0, 2 * np.pi)
        n_sub = 1 + min(rng.poisson(0.3 + 0.05 * burden), 3)
        extra, widen = 0, 1.0
        if broad is not None and broad[0].random() < broad[1]:
            extra = int(broad[0].integers(BROAD_EXTRA_BLOBS[0], BROAD_EXTRA_BLOBS[1] + 1))
            widen = float(broad[0].uniform(*BROAD_WIDEN))
        for j in range(n_sub + extra):
            if j < n_sub:  # the plaque's own blobs, one after the other along the vessel
                r, step = rng, float(j)
            else:  # an extra blob: from the broad stream, somewhere along the plaque's own
                r = broad[0]
                step = r.uniform(0, n_sub - 1) if n_sub > 1 else 0.0
            k = min(max(i + int(round(step * 3 * sig_t / 0.5)), 1), len(art.points) - 2)
            fr = _frame(art.points[k + 1] - art.points[k - 1], r)
            ang = psi + r.normal(0, 0.5)
            if extra:  # round the circumference
                ang += 2 * np.pi * j / (n_sub + extra)
            radial = np.cos(ang) * fr[:, 1] + np.sin(ang) * fr[:, 2]
            centre = art.points[k] + art.radius[k] * r.uniform(0.5, 1.0) * radial
            f2 = np.stack([fr[:, 0], radial, np.cross(fr[:, 0], radial)], axis=1)
            s = (sig_t * r.uniform(0.7, 1.2), widen * sig_n * r.uniform(0.6, 1.0), widen * sig_n * r.uniform(0.8, 1.3))
            blobs.append(Blob(centre, _cov(f2, s), amp * r.uniform(0.7, 1.1), ARTERY_TO_LABEL[art.name], "plaque"))
    return blobs, burden


def sample_confounders(rng: np.random.Generator, a: dict, arteries: dict[str, Artery], burden: float) -> list[Blob]:
    """Aortic wall, aortic valve and mitral annulus calcifications (label 0)."""
    blobs: list[Blob] = []
    risk = min(burden / 10.0, 1.0)
    # Aortic wall: ascending aorta (from the sinus rim upwards) and descending aorta.
    if rng.random() < 0.25 + 0.5 * risk:
        asc = great_vessels(a)[0][1]
        dax, day, dar = a["desc_aorta"]
        for _ in range(rng.integers(1, 10)):
            if rng.random() < 0.5:
                seg = rng.integers(0, len(asc) - 1)
                t = rng.uniform(0.15, 1.0)
                axis_pt = asc[seg] + t * (asc[seg + 1] - asc[seg])
                r = a["aorta_radius"]
                tang = unit(asc[seg + 1] - asc[seg])
            else:
                axis_pt = np.array([dax, day, rng.uniform(-120, 80)])
                r = dar
                tang = np.array([0.0, 0.0, 1.0])
            d = unit(np.cross(tang, rng.normal(size=3)))
            circ = np.cross(tang, d)
            fr = np.stack([circ, d, tang], axis=1)
            s = (rng.uniform(1.0, 4.0), rng.uniform(0.4, 1.0), rng.uniform(0.6, 2.0))
            blobs.append(Blob(axis_pt + (r + 0.3) * d, _cov(fr, s), rng.uniform(300, 1200), 0, "aortic_wall"))
    lm = landmarks(a)
    # Aortic valve cusps, at the root below the ostia.
    if rng.random() < 0.1 + 0.3 * risk:
        ao = lm["aortic_root"]
        for _ in range(rng.integers(1, 7)):
            ang = rng.uniform(0, 2 * np.pi)
            c = ao + a["aorta_radius"] * rng.uniform(0.2, 0.75) * np.array([np.cos(ang), np.sin(ang), 0]) \
                + [0, 0, -rng.uniform(6, 12)]
            s = rng.uniform(0.6, 2.0, size=3)
            blobs.append(Blob(c, _cov(_frame(rng.normal(size=3), rng), tuple(s)), rng.uniform(300, 1500), 0, "aortic_valve"))
    # Mitral annulus: posterior part of the left AV ring, inside the heart.
    if rng.random() < 0.08 + 0.25 * risk:
        c, L, _, _ = heart_frame(a)
        ring_c = c + a["av_u"] * L
        for phi in rng.uniform(80, 200, size=rng.integers(2, 7)):
            p = surface_point(a, a["av_u"], phi)
            q = surface_point(a, a["av_u"], phi + 5)
            centre = ring_c + 0.7 * (p - ring_c)
            fr = _frame(q - p, rng)
            s = (rng.uniform(1.5, 4.0), rng.uniform(0.6, 1.5), rng.uniform(0.6, 1.5))
            blobs.append(Blob(centre, _cov(fr, s), rng.uniform(300, 1000), 0, "mitral_annulus"))
    # Keep confounders clear of the coronaries so that a label never lands on them.
    cl = np.concatenate([art.points for art in arteries.values()])
    keep = []
    for b in blobs:
        reach = 3.0 * np.sqrt(np.linalg.eigvalsh(b.cov).max()) + 6.0
        if np.min(np.linalg.norm(cl - b.centre, axis=1)) > reach:
            keep.append(b)
    return keep


def render_blobs(vol: np.ndarray, grid: Grid, blobs: list[Blob], psf: tuple[float, float]):
    """Add the blurred blobs to ``vol``; return the support records for labelling.

    ``psf`` = (in-plane sigma, through-plane sigma) in mm. Returns ``(flat, value, label)``
    arrays: every support voxel of every blob with the blob's blurred value there.
    """
    s_xy, s_z = psf
    P = np.diag([s_xy**2, s_xy**2, s_z**2])
    flats, vals, labs = [], [], []
    shape = vol.shape
    for b in blobs:
        S = b.cov + P
        peak = b.amplitude * np.sqrt(np.linalg.det(b.cov) / np.linalg.det(S))
        half = SUPPORT_MAHALANOBIS * np.sqrt(np.diag(S))
        box = grid.box(b.centre - half, b.centre + half)
        if box is None:
            continue
        z, y, x = grid.coords(box)
        Si = np.linalg.inv(S).astype(np.float32)
        dx, dy, dz = x - np.float32(b.centre[0]), y - np.float32(b.centre[1]), z - np.float32(b.centre[2])
        m = (Si[0, 0] * dx * dx + Si[1, 1] * dy * dy + Si[2, 2] * dz * dz
             + 2 * (Si[0, 1] * dx * dy + Si[0, 2] * dx * dz + Si[1, 2] * dy * dz))
        val = (peak * np.exp(-0.5 * m)).astype(np.float32)
        vol[box] += val
        inside = m <= SUPPORT_MAHALANOBIS**2
        zi, yi, xi = np.nonzero(inside)
        flats.append(np.ravel_multi_index((zi + box[0].start, yi + box[1].start, xi + box[2].start), shape))
        vals.append(val[inside])
        labs.append(np.full(len(zi), b.label, dtype=np.uint8))
    if not flats:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.uint8)
    return np.concatenate(flats), np.concatenate(vals), np.concatenate(labs)


def label_calcium(hu: np.ndarray, support: tuple[np.ndarray, np.ndarray, np.ndarray], threshold: float = 130.0) -> np.ndarray:
    """Per-artery calcium labels: support voxels with HU >= ``threshold``, each given to the
    blob contributing most there (a confounder's win leaves the voxel unlabelled)."""
    flat, val, lab = support
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if flat.size == 0:
        return labels
    order = np.lexsort((val, flat))  # by voxel, then by value: the last of each voxel wins
    flat, lab = flat[order], lab[order]
    last = np.r_[flat[1:] != flat[:-1], True]
    flat, lab = flat[last], lab[last]
    keep = (hu.ravel()[flat] >= threshold) & (lab > 0)
    labels.ravel()[flat[keep]] = lab[keep]
    return labels
