"""Coronary calcium scores: the definitions live in :mod:`.agatston` (one module)."""

from __future__ import annotations

from .agatston import (  # noqa: F401
    CLASSIC_BANDS_HU,
    KVP_THRESHOLDS_HU,
    ArteryScore,
    Lesion,
    ScoreResult,
    ScoringParams,
    cac_drs,
    calibration_factor,
    calibration_factor_from_masks,
    params_for_kvp,
    risk_category,
    score,
    slice_factor,
    slices_with_calcium,
    weights_from_peak,
)
from .options import ScoringOptions  # noqa: F401
