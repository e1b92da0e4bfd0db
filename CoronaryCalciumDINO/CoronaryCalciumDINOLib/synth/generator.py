"""Synthetic non-contrast ECG-gated cardiac CT studies with per-artery calcium labels.

:func:`generate_study` renders one study in memory from a seed; :func:`write_studies`
writes many to disk in the project's study format (:mod:`..data.studies`). The same seed
always gives the same arrays. See ``docs/synthetic-data.md`` for what is modelled.

Overrides (keyword arguments of :func:`generate_study`) replace sampled parameters after
everything has been drawn, so the rest of the study stays the same:

``matrix`` (pixels per side, default 512; the field of view is kept, so the pixel grows),
``pixel`` (mm), ``spacing`` and ``thickness`` (mm; ``spacing`` alone means contiguous slices), ``n_slices``, ``slices_range``
((min, max) slice count, default (40, 80)), ``noise_sd`` (HU), ``p_zero`` (probability of a
study without coronary plaques, default 0.3), ``plaques`` (False: none; True: at least
one plaque drawn), ``phantom`` (True: a calcium-scoring phantom instead of a patient, see
:mod:`.phantom`; its id is ``synth-phantom-<seed>``), ``confounders`` (False: no aortic/valve/annulus calcium), ``streaks``
(True/False: force or forbid streak artifacts), ``keep_clean`` (also return the
noise-free HU in :attr:`SynthResult.clean` and :attr:`SynthResult.anatomy_hu`),
``non_gated`` (True: a non-gated chest-CT reconstruction of the same patient: 5 mm slices
every 5 mm unless ``spacing`` / ``thickness`` say otherwise, and cardiac motion blur: the
heart's structures and all calcium blobs blurred in-plane by a Gaussian of
:data:`MOTION_SIGMA_MM` drawn from the seed's own stream; the labels follow the blurred
calcium), ``kernel`` (``"smooth"``, ``"standard"`` or ``"sharp"``: the same patient and
noise reconstructed with that kernel, :data:`.scanner.KERNELS`: its point spread, noise
grain and strength, and a sharp kernel's edge enhancement; the labels follow the
reconstructed calcium; ids ``synth-<kernel>-<seed>``), ``broad_plaques`` (a share, 0..1:
that share of the coronary plaques drawn broad, a calcified band round the artery as wide
as the artery rather than a crescent on one side, as heavy real calcification is; see
:func:`.plaques.sample_plaques`; default 0: the studies as they were, seed for seed).

Small/fast mode for tests: ``generate_study(seed, matrix=128, n_slices=24)`` takes about
0.15 s of CPU instead of about 1.1 s, with the same anatomy at a coarser pixel (the top
24 slices: aortic root, proximal coronaries and the upper heart).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..constants import ARTERIES
from ..data.studies import Study, is_study_dir, read_study_meta, write_study
from ..errors import InputError
from ..io.volume import CTVolume
from . import anatomy, coronaries, phantom, plaques, scanner
from .render import Grid, ellipsoid_bounds

#: Bumped when the same seed gives other images; a study folder made by another version is
#: never taken for this version's study of its seed.
GENERATOR_VERSION = 1
DEFAULT_SLICES_RANGE = (40, 80)
MATRIX = 512
_OVERRIDES = {"matrix", "pixel", "spacing", "thickness", "n_slices", "slices_range", "noise_sd", "p_zero",
              "plaques", "confounders", "streaks", "keep_clean", "phantom", "non_gated", "kernel", "broad_plaques"}
#: ``non_gated``: slice spacing and thickness (mm) and the range of the in-plane Gaussian
#: sigma (mm) of cardiac motion during a non-gated acquisition.
NON_GATED_SLICE_MM = 5.0
MOTION_SIGMA_MM = (0.8, 2.0)
#: Overrides that apply to phantoms (the others describe a patient's anatomy).
_PHANTOM_OVERRIDES = {"matrix", "pixel", "spacing", "thickness", "n_slices", "slices_range", "noise_sd", "streaks",
                      "phantom"}


def study_id(seed: int, phantom: bool = False, non_gated: bool = False, kernel: str | None = None) -> str:
    """Study id of a seed, e.g. ``synth-000123`` (a phantom: ``synth-phantom-000123``; the
    non-gated reconstruction of a patient: ``synth-nongated-000123``; with a ``kernel``:
    ``synth-sharp-000123``, ``synth-nongated-sharp-000123``)."""
    kind = "phantom-" if phantom else "nongated-" if non_gated else ""
    if kernel is not None and not phantom:
        kind += f"{kernel}-"
    return f"synth-{kind}{int(seed):06d}"


@dataclass
class SynthResult:
    """A rendered study and what was used to make it (for tests and pictures)."""

    study: Study
    grid: Grid
    anatomy: dict
    arteries: dict
    blobs: list
    timings: dict = field(default_factory=dict)
    clean: np.ndarray | None = None  # noise-free HU (only with keep_clean=True)
    anatomy_hu: np.ndarray | None = None  # noise-free HU before calcium (only with keep_clean=True)


def _streams(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def _motion_blur(vol: np.ndarray, heart: np.ndarray, sigma_mm: float, pixel: float) -> None:
    """Blur ``vol`` in-plane by a Gaussian of ``sigma_mm`` where ``heart`` is, fading out over
    about 3 mm around it (cardiac motion during a non-gated acquisition), in place."""
    from scipy import ndimage

    weight = ndimage.gaussian_filter(heart.astype(np.float32), (0, 3.0 / pixel, 3.0 / pixel))
    blurred = ndimage.gaussian_filter(vol, (0, sigma_mm / pixel, sigma_mm / pixel))
    vol += weight * (blurred - vol)


def _scanner_params(rng: np.random.Generator) -> dict:
    mode = rng.choice(3, p=[0.35, 0.4, 0.25])
    spacing, thickness = [(2.5, 2.5), (3.0, 3.0), (1.5, 3.0)][mode]
    return {
        "fov_mm": float(rng.uniform(0.4, 0.8) * MATRIX),
        "spacing": spacing,
        "thickness": thickness,
        "inplane_fwhm_mm": float(rng.uniform(0.6, 0.9)),
        "noise_sd": float(rng.uniform(10, 40)),
        "noise_grain_mm": float(rng.uniform(0.6, 1.0)),
        "fov_shift": rng.uniform(-15, 15, size=2).tolist(),
        "top_margin_mm": float(rng.uniform(4, 18)),
        "bottom_margin_mm": float(rng.uniform(0, 25)),
        "streak_probability": 0.35,
    }


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    if isinstance(v, (np.floating, float)):
        return round(float(v), 4)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def render_study(seed: int, progress: Callable[[float, str], None] | None = None, **overrides) -> SynthResult:
    """Render one synthetic study (see the module docstring for ``overrides``)."""
    unknown = set(overrides) - _OVERRIDES
    if unknown:
        raise InputError(f"unknown synthetic-study option(s): {', '.join(sorted(unknown))}")
    if overrides.get("phantom"):
        return _render_phantom(seed, overrides)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name):
        nonlocal t0
        t = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + t - t0
        t0 = t
        if progress:
            progress(len(timings) / 10.0, name)

    r_scan, r_anat, r_cor, r_plq, r_conf, r_rib, r_lung, r_noise, r_streak = _streams(seed, 9)
    sp = _scanner_params(r_scan)
    kernel = overrides.get("kernel")
    if kernel is not None:
        if kernel not in scanner.KERNELS:
            raise InputError(f"kernel must be one of {', '.join(scanner.KERNELS)}, got {kernel!r}")
        sp.update({k: scanner.KERNELS[kernel][k] for k in ("inplane_fwhm_mm", "noise_grain_mm")})
    a = anatomy.sample_anatomy(r_anat)
    arteries = coronaries.build_coronaries(a, r_cor)
    p_zero = float(overrides.get("p_zero", 0.3))
    broad_share = float(overrides.get("broad_plaques", 0.0))
    if not 0.0 <= broad_share <= 1.0:
        raise InputError(f"broad_plaques must be a share between 0 and 1, got {broad_share}")
    # its own stream: without broad plaques every draw (and so every study) stays as it was
    broad = (_streams(seed, 12)[11], broad_share) if broad_share > 0 else None
    blobs, burden = plaques.sample_plaques(r_plq, arteries, p_zero, broad)
    if overrides.get("plaques") is False:
        blobs, burden = [], 0.0
    elif overrides.get("plaques") is True and not blobs:
        blobs, burden = plaques.sample_plaques(r_plq, arteries, 0.0, broad)
    conf = plaques.sample_confounders(r_conf, a, arteries, burden)
    if overrides.get("confounders") is False:
        conf = []

    # Geometry.
    matrix = int(overrides.get("matrix", MATRIX))
    pixel = float(overrides.get("pixel", sp["fov_mm"] / matrix))
    non_gated = bool(overrides.get("non_gated", False))
    # its own stream: a gated study of the same seed draws exactly what it drew before
    motion_mm = float(_streams(seed, 11)[10].uniform(*MOTION_SIGMA_MM)) if non_gated else 0.0
    if non_gated and "spacing" not in overrides:
        overrides = {**overrides, "spacing": NON_GATED_SLICE_MM,
                     "thickness": overrides.get("thickness", NON_GATED_SLICE_MM)}
    spacing = float(overrides.get("spacing", sp["spacing"]))
    # A spacing override alone gives contiguous slices (thickness = spacing).
    thickness = float(overrides.get("thickness", sp["thickness"] if "spacing" not in overrides else spacing))
    lo_n, hi_n = overrides.get("slices_range", DEFAULT_SLICES_RANGE)
    if not (matrix >= 16 and pixel > 0 and spacing > 0 and thickness > 0 and 1 <= lo_n <= hi_n):
        raise InputError("synthetic study geometry out of range (matrix >= 16, positive sizes, 1 <= min <= max slices)")
    lm = anatomy.landmarks(a)
    c, L, _, _ = anatomy.heart_frame(a)
    lo_h, hi_h = ellipsoid_bounds(c, anatomy.heart_axes(a), np.asarray(a["heart_semi"]) + a["epicardial_fat_mm"], 0.0)
    z_top = max(hi_h[2], lm["la"][2] + anatomy.LA_SEMI[2], lm["aortic_root"][2]) + sp["top_margin_mm"]
    z_bot = lo_h[2] - sp["bottom_margin_mm"]
    n_slices = int(overrides.get("n_slices", np.clip(int(np.ceil((z_top - z_bot) / spacing)) + 1, lo_n, hi_n)))
    centre = 0.5 * (lm["base"][:2] + c[:2]) + np.asarray(sp["fov_shift"])
    origin = (float(centre[0] - (matrix - 1) / 2 * pixel), float(centre[1] - (matrix - 1) / 2 * pixel),
              float(z_top - (n_slices - 1) * spacing))
    grid = Grid(matrix, n_slices, pixel, spacing, thickness, origin)
    s_xy, s_z = scanner.psf_sigmas(pixel, thickness, sp["inplane_fwhm_mm"])
    edge = max(2.5 * s_xy, 0.5 * pixel)
    lap("sampling")

    # Anatomy.
    body, disc, (sy, sx) = anatomy.thorax_template(grid, a, edge)
    vol = np.empty((n_slices, matrix, matrix), dtype=np.float32)
    vol[:] = body
    w = anatomy.disc_weight(grid.z, a, thickness)
    for k in np.flatnonzero(w > 0):
        vol[k, sy, sx] += np.float32(w[k]) * (disc[sy, sx] - body[sy, sx])
    lap("thorax")
    cartilage: list = []
    anatomy.paint_ribs(vol, grid, a, r_rib, edge, cartilage)
    # its own stream: the other draws (and so every earlier study's anatomy) stay as they were
    r_cart = _streams(seed, 10)[9]
    share = float(r_cart.uniform(0.1, 0.6)) if r_cart.random() < 0.6 else 0.0
    a["cartilage_calcified"] = 0.0 if overrides.get("confounders") is False else share
    n_cart = anatomy.paint_cartilage_calcification(vol, grid, a, cartilage, r_cart, edge)
    lap("ribs")
    anatomy.paint_diaphragm(vol, grid, a, edge)
    anatomy.paint_lung_vessels(vol, grid, a, r_lung, edge)
    lap("lungs")
    heart = np.zeros(vol.shape, dtype=bool)
    anatomy.paint_heart(vol, heart, grid, a, edge)
    lap("heart")
    coronaries.paint_coronaries(vol, heart, grid, a, arteries, edge)
    if motion_mm > 0:  # the beating heart blurs its own structures, not the chest wall
        _motion_blur(vol, heart, motion_mm, pixel)
    lap("coronaries")
    anatomy_hu = vol.copy() if overrides.get("keep_clean") else None
    # every calcium blob takes the motion blur: the plaques, valve and annulus calcium on the
    # heart, and (a simplification) the aortic-wall calcium, also on the descending aorta
    s_calcium = float(np.hypot(s_xy, motion_mm))
    support = plaques.render_blobs(vol, grid, blobs + conf, (s_calcium, s_z))
    lap("calcium")
    if kernel is not None:  # a sharp kernel's edge enhancement, on the noise-free image
        scanner.enhance_edges(vol, pixel, scanner.KERNELS[kernel]["edge_gain"], scanner.KERNELS[kernel]["edge_sigma_mm"])
    clean = vol.copy() if overrides.get("keep_clean") else None

    # Scanner: noise (the kernel's grain and strength) and streaks.
    noise_sd = float(overrides.get("noise_sd", sp["noise_sd"]))
    if kernel is not None:
        noise_sd *= scanner.KERNELS[kernel]["noise_gain"]
    scanner.add_noise(vol, grid, r_noise, noise_sd, max(sp["noise_grain_mm"] / pixel, 0.5))
    lap("noise")
    want_streaks = overrides.get("streaks", r_streak.random() < sp["streak_probability"])
    streak_slices = 0
    if want_streaks:
        sources = [(0.0, a["vertebra_y"], float(r_streak.uniform(grid.z[0], grid.z[-1])), float(r_streak.uniform(20, 60)))]
        dense = [b for b in blobs + conf if b.amplitude > 500]
        if dense:
            b = dense[int(r_streak.integers(len(dense)))]
            sources.append((*map(float, b.centre), float(r_streak.uniform(20, 50))))
        streak_slices = scanner.add_streaks(vol, grid, r_streak, sources)
    np.rint(vol, out=vol)
    np.maximum(vol, -1024.0, out=vol)
    labels = plaques.label_calcium(vol, support)
    lap("scanner+labels")

    ct = CTVolume(hu=vol, spacing=(spacing, pixel, pixel), origin=origin, direction=np.eye(3), kvp=120.0,
                  source="synthetic", meta={"slice_thickness_mm": thickness})
    params = {
        "generator_version": GENERATOR_VERSION,
        "matrix": matrix, "pixel_mm": pixel, "slice_spacing_mm": spacing, "slice_thickness_mm": thickness,
        "n_slices": n_slices, "noise_sd_hu": noise_sd, "psf_sigma_mm": [s_xy, s_z],
        "non_gated": non_gated, "motion_sigma_mm": motion_mm, "kernel": kernel,
        "scanner": sp, "anatomy": a, "plaque_burden": burden,
        "n_plaque_blobs": len(blobs),
        **({"broad_plaques": broad_share} if broad_share > 0 else {}),
        "confounders": {**{k: sum(1 for b in conf if b.kind == k) for k in ("aortic_wall", "aortic_valve", "mitral_annulus")},
                        "costal_cartilage": n_cart},
        "streak_slices": streak_slices,
        "overrides": {k: v for k, v in overrides.items() if k != "keep_clean"},
    }
    meta = {
        "source": "synthetic", "seed": int(seed), "kvp": 120, "params": _jsonable(params),
        "centrelines": {name: np.round(arteries[name].points[::4], 2).tolist() for name in ARTERIES},
        "centreline_radius_mm": {name: np.round(arteries[name].radius[::4], 3).tolist() for name in ARTERIES},
    }
    study = Study(id=study_id(seed, non_gated=non_gated, kernel=kernel), ct=ct, labels=labels, heart=heart.astype(np.uint8), meta=meta)
    timings["total"] = sum(timings.values())
    return SynthResult(study, grid, a, arteries, blobs + conf, timings, clean, anatomy_hu)


def _render_phantom(seed: int, overrides: dict) -> SynthResult:
    unknown = set(overrides) - _PHANTOM_OVERRIDES
    if unknown:
        raise InputError(f"synthetic-study option(s) not for phantoms: {', '.join(sorted(unknown))}")
    t = time.perf_counter()
    r_scan, r_geo, r_noise, r_streak = _streams(seed, 4)
    study, grid, p = phantom.render_phantom(study_id(seed, phantom=True), [r_geo, r_noise, r_streak],
                                            _scanner_params(r_scan),
                                            {"matrix": MATRIX, "slices_range": DEFAULT_SLICES_RANGE, **overrides})
    study.meta.update({"source": "synthetic", "seed": int(seed), "kvp": 120,
                       "params": _jsonable({"generator_version": GENERATOR_VERSION, **study.meta["params"],
                                            "overrides": overrides})})
    return SynthResult(study, grid, p, {}, p["objects"], {"total": time.perf_counter() - t})


def generate_study(seed: int, **overrides) -> Study:
    """One synthetic study in memory (no disk). Same seed and overrides -> identical arrays."""
    return render_study(seed, **overrides).study


def _write_one(job: tuple[int, str, dict]) -> tuple[int, str, float, float, bool]:
    """Generate and write one study unless its folder is complete (worker function)."""
    seed, out, overrides = job
    folder = Path(out) / study_id(seed, bool(overrides.get("phantom")), bool(overrides.get("non_gated")),
                                  overrides.get("kernel"))
    if is_study_dir(folder):
        meta = read_study_meta(folder)
        made_by = meta.get("params", {}).get("generator_version")
        if made_by != GENERATOR_VERSION:
            raise InputError(f"{folder} was made by synthetic generator version {made_by}; this one (version "
                             f"{GENERATOR_VERSION}) makes another study from seed {seed}: remove the folder or "
                             "write to another one")
        made, asked = (float(d.get("broad_plaques", 0.0)) for d in (meta.get("params", {}), overrides))
        if made != asked:
            raise InputError(f"{folder} was made with broad_plaques={made:g}, not {asked:g}: remove the folder "
                             "or write to another one")
        return seed, str(folder), meta["scores"]["total"]["agatston"], 0.0, False
    t = time.perf_counter()
    study = generate_study(seed, **overrides)
    write_study(study, out)
    meta = read_study_meta(folder)
    return seed, str(folder), meta["scores"]["total"]["agatston"], time.perf_counter() - t, True


def write_studies(seeds, out, workers: int = 1, progress: Callable[[float, str], None] | None = None,
                  cancel: Callable[[], bool] | None = None, **overrides) -> list[str]:
    """Generate and write one study folder per seed under ``out``; complete ones are skipped."""
    seeds = [int(s) for s in seeds]
    jobs = [(s, str(out), overrides) for s in seeds]
    done: list[str] = []

    def report(res, i):
        seed, folder, agat, secs, made = res
        done.append(folder)
        if progress:
            state = f"{secs:.1f} s" if made else "exists, skipped"
            progress(i / len(jobs), f"{Path(folder).name}: Agatston {agat:.1f} ({state})")

    if workers <= 1:
        for i, job in enumerate(jobs, 1):
            if cancel and cancel():
                break
            report(_write_one(job), i)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for i, res in enumerate(pool.imap(_write_one, jobs), 1):
                report(res, i)
                if cancel and cancel():
                    pool.terminate()
                    break
    return done
