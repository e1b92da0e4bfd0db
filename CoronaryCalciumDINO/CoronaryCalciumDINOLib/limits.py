"""Plausibility limits of every value that enters a score, in one place.

A value outside these limits cannot come from a CT scan (or a sensible option) and is
refused with a one-line :class:`~.errors.InputError` naming the file and the value; a
non-finite value (NaN, +-inf) is always refused. The limits are deliberately wide: they
catch damaged headers, wrong units and flipped bits, not unusual but real scans.

Reasoning, limit by limit:

* :data:`PIXEL_SPACING_MM`: in-plane pixel size. Clinical CT reconstructs 512 x 512 over
  a 150-500 mm field (0.3-1.0 mm pixels); high-resolution and phantom scans go below
  0.1 mm, resampled volumes up to a few mm. Under 0.01 mm is micro-CT at best; over
  10 mm would make a 512-pixel slice 5 m wide.
* :data:`SLICE_SPACING_MM`: distance between slice centres. Cardiac CT uses 0.5-3 mm
  (Agatston: 3 mm), old or thick reconstructions up to 10 mm. Below 0.05 mm or above
  30 mm is no axial CT stack (and a 1e-6 mm spacing would make any resampling to mm
  allocate without bound).
* :data:`POSITION_MM`: any coordinate of ``ImagePositionPatient`` / a volume origin.
  Table positions reach about +-2 m; beyond 100 m is a damaged value.
* :data:`RESCALE_SLOPE`: HU = stored x slope + intercept. CT uses slope 1 almost always
  (0.5 or 2 on some exports, small slopes for float-like storage); it is never 0 or
  negative. Outside [0.001, 1000] the HU scale is broken.
* :data:`RESCALE_INTERCEPT`: usually -1024, -1000, 0 or -8192 (extended scales); beyond
  +-32768 no 16-bit CT scale could be meant.
* :data:`HU_RANGE`: HU after rescaling. The 12-bit CT scale ends at 3071 HU, extended
  scales (metal) at about 30,700 HU: above 32,767 HU no CT scale reaches (a flipped
  ``PixelRepresentation`` reads -1000 as 64,536). Below, padding values outside the
  field of view go as low as a signed 16-bit minimum plus the usual intercept
  (-32768 - 1024); lower is no CT value. Low values never reach a calcium score (the
  threshold is >= 100 HU), but garbage there means the scale is broken.
* :data:`AIR_HU_MAX`: a chest CT always holds air (outside the body, lungs) near
  -1000 HU. When no voxel of a DICOM series lies at or below this value, the rescale is
  probably wrong (e.g. an intercept of 0 instead of -1024, which adds 1024 HU to every
  voxel): a warning, since a tightly cropped scan can legitimately lack air.
* :data:`KVP_RANGE`: CT tube voltages run 70-150 kVp; a KVP tag outside [40, 200] is a
  damaged value and is treated as missing (with a warning).
* :data:`MIN_AREA_MM2`: the minimum lesion area option; the Agatston definition uses 1 mm^2,
  research variants 0-5 mm^2; 100 mm^2 would drop every coronary lesion.
* :data:`CALIBRATION_FACTOR`: mg HA/cm^3 per HU; phantom calibrations give about 0.6-1.0.
  (0, 10] leaves room for unusual protocols but refuses unit mix-ups by 1000.
* :data:`THRESHOLD_HU`: a calcium threshold (scoring or candidate search): published
  kVp-adapted thresholds run 100-200 HU; [50, 1000] keeps research variants.
* :data:`LABEL_VALUES`: label maps hold 0 background and 1..4 (LM, LAD, LCX, RCA).
"""

from __future__ import annotations

import math

from .errors import InputError

PIXEL_SPACING_MM: tuple[float, float] = (0.01, 10.0)
SLICE_SPACING_MM: tuple[float, float] = (0.05, 30.0)
POSITION_MM: float = 1e5
RESCALE_SLOPE: tuple[float, float] = (1e-3, 1e3)
RESCALE_INTERCEPT: float = 32768.0
HU_RANGE: tuple[float, float] = (-33792.0, 32767.0)
AIR_HU_MAX: float = -500.0
KVP_RANGE: tuple[float, float] = (40.0, 200.0)
MIN_AREA_MM2: tuple[float, float] = (0.0, 100.0)
CALIBRATION_FACTOR: tuple[float, float] = (0.0, 10.0)  # exclusive low, inclusive high
THRESHOLD_HU: tuple[float, float] = (50.0, 1000.0)
LABEL_VALUES: tuple[int, int] = (0, 4)


def is_finite_number(value) -> bool:
    """True for an int or float (not bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def check_range(value, lo: float, hi: float, what: str, where: str = "", unit: str = "") -> float:
    """``value`` as a float if finite and within [lo, hi]; else a one-line InputError."""
    prefix = f"{where}: " if where else ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{prefix}{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{prefix}{what} is not a finite number ({value!r})")
    if not lo <= v <= hi:
        u = f" {unit}" if unit else ""
        raise InputError(f"{prefix}{what} {v:g}{u} is implausible (expected {lo:g} to {hi:g}{u})")
    return v


def check_spacing(spacing, where: str) -> tuple[float, float, float]:
    """(dz, dy, dx) in mm, each finite and plausible; else a one-line InputError."""
    dz, dy, dx = (float(s) for s in spacing)
    check_range(dz, *SLICE_SPACING_MM, "slice spacing", where, "mm")
    check_range(dy, *PIXEL_SPACING_MM, "pixel spacing (rows)", where, "mm")
    check_range(dx, *PIXEL_SPACING_MM, "pixel spacing (columns)", where, "mm")
    return dz, dy, dx


def check_position(values, what: str, where: str) -> None:
    """Every coordinate finite and within +-POSITION_MM."""
    for v in values:
        check_range(v, -POSITION_MM, POSITION_MM, what, where, "mm")


def check_hu(hu, where: str) -> tuple[float, float]:
    """A HU volume must be finite and within :data:`HU_RANGE` (else InputError); returns its
    (lowest, highest) value."""
    import numpy as np

    if hu.size == 0:
        raise InputError(f"{where}: the volume is empty")
    lo, hi = float(np.min(hu)), float(np.max(hu))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(hu)))
        raise InputError(f"{where}: {bad} voxels are not finite numbers (NaN or infinite)")
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise InputError(
            f"{where}: values {lo:g} to {hi:g} HU are outside any CT scale "
            f"({HU_RANGE[0]:g} to {HU_RANGE[1]:g} HU); check the rescale/pixel-representation tags"
        )
    return lo, hi


def air_warning(lowest_hu: float) -> list[str]:
    """A warning when a CT (from stored values and rescale tags) holds no air at all."""
    if lowest_hu > AIR_HU_MAX:
        return [
            f"no voxel is at or below {AIR_HU_MAX:g} HU (lowest {lowest_hu:g} HU): a chest CT holds air near "
            "-1000 HU, so the HU scale (RescaleIntercept/RescaleSlope) may be wrong"
        ]
    return []
