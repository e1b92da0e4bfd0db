"""Scanner model: point spread, slice profile, correlated noise and streak artifacts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .render import Grid

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def psf_sigmas(pixel: float, thickness: float, inplane_fwhm: float) -> tuple[float, float]:
    """(in-plane, through-plane) Gaussian sigmas in mm.

    In-plane: the reconstruction point spread (FWHM ``inplane_fwhm``) combined with the
    pixel's own averaging (a box of one pixel, variance pixel^2 / 12). Through-plane: a
    slice sensitivity profile whose FWHM equals the slice thickness.
    """
    s_xy = np.sqrt((inplane_fwhm * FWHM_TO_SIGMA) ** 2 + pixel**2 / 12.0)
    return float(s_xy), float(thickness * FWHM_TO_SIGMA)


#: Reconstruction kernels (``kernel`` option of the generator): in-plane point spread FWHM
#: (mm), noise grain (mm: the width of the noise texture), noise SD relative to the study's
#: drawn noise, and edge enhancement (gain of ``image - gaussian(image, sigma)`` added back,
#: and that sigma in mm). Without the option a study draws FWHM 0.6-0.9 mm and grain 0.6-1.0
#: mm (a body kernel, e.g. Siemens B30f / Qr36 or GE Standard, what calcium scoring uses).
#: A sharp kernel (e.g. B46f / Qr44, GE Lung / Bone Plus) resolves more: calcium peaks rise,
#: edges overshoot (a bright rim on bone and calcium, a dark halo round them), the noise is
#: finer and stronger at the same dose. A smooth kernel (e.g. B26f, GE Soft) is the reverse.
KERNELS = {
    "smooth": {"inplane_fwhm_mm": 1.1, "noise_grain_mm": 1.3, "noise_gain": 0.75, "edge_gain": 0.0, "edge_sigma_mm": 0.0},
    "standard": {"inplane_fwhm_mm": 0.75, "noise_grain_mm": 0.8, "noise_gain": 1.0, "edge_gain": 0.0, "edge_sigma_mm": 0.0},
    "sharp": {"inplane_fwhm_mm": 0.5, "noise_grain_mm": 0.4, "noise_gain": 1.6, "edge_gain": 0.6, "edge_sigma_mm": 1.0},
}


def enhance_edges(vol: np.ndarray, pixel: float, gain: float, sigma_mm: float) -> None:
    """A sharp kernel's edge enhancement, in place, per slice: ``vol += gain * (vol -
    gaussian(vol, sigma_mm))`` (unsharp masking: overshoot on both sides of an edge)."""
    if gain <= 0 or sigma_mm <= 0:
        return
    smooth = ndimage.gaussian_filter(vol, (0, sigma_mm / pixel, sigma_mm / pixel), truncate=3.0)
    vol += np.float32(gain) * (vol - smooth)


def add_noise(vol: np.ndarray, grid: Grid, rng: np.random.Generator, sd: float, grain_px: float) -> None:
    """Add correlated (textured) Gaussian noise of standard deviation ``sd`` HU in place.

    White noise is filtered in-plane with a Gaussian of ``grain_px`` pixels (the noise
    texture of a smooth reconstruction kernel) and rescaled to ``sd``. When slices overlap
    (spacing < thickness) neighbouring slices share part of their noise.
    """
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    ndimage.gaussian_filter(noise, (0, grain_px, grain_px), output=noise, truncate=2.0)
    delta = np.zeros((25, 25), np.float32)
    delta[12, 12] = 1.0
    gain = float(np.sqrt(np.square(ndimage.gaussian_filter(delta, grain_px, truncate=2.0)).sum()))
    if grid.dz < grid.thickness - 1e-6 and vol.shape[0] > 1:
        rho = 1.0 - grid.dz / grid.thickness  # overlap fraction of neighbouring slices
        noise[1:] += rho * noise[:-1]
        gain *= np.sqrt(1.0 + rho * rho)
    vol += noise * np.float32(sd / gain)


def add_streaks(vol: np.ndarray, grid: Grid, rng: np.random.Generator, sources: list[tuple[float, float, float, float]]) -> int:
    """Streak artifacts radiating from dense objects; returns the number of slices touched.

    ``sources``: (x, y, z, strength) of dense objects. On the slices through each source a
    few thin alternating bright/dark lines pass through it, fading with distance.
    """
    x, y = grid.x[None, :], grid.y[:, None]
    touched = 0
    for sx, sy, sz, strength in sources:
        ks = np.flatnonzero(np.abs(grid.z - sz) <= max(grid.thickness * 0.6, grid.dz * 0.5))
        n_lines = int(rng.integers(2, 6))
        angles = rng.uniform(0, np.pi, n_lines)
        amps = strength * rng.uniform(0.5, 1.0, n_lines) * rng.choice([-1.0, 1.0], n_lines)
        widths = rng.uniform(0.4, 1.2, n_lines)
        r = np.sqrt((x - sx) ** 2 + (y - sy) ** 2)
        fade = np.exp(-r / rng.uniform(40, 90)) * (r > 2.0)
        streak = np.zeros(r.shape, np.float32)
        for ang, amp, w in zip(angles, amps, widths):
            d = (x - sx) * np.sin(ang) - (y - sy) * np.cos(ang)
            streak += amp * np.exp(-0.5 * (d / w) ** 2)
        streak *= fade
        for k in ks:
            vol[k] += streak
            touched += 1
    return touched
