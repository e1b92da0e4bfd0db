"""The project's definition of coronary artery calcium scores.

Everything that turns HU and per-artery labels into numbers lives here, once.

Definitions
-----------
Labels
    0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA (:mod:`..constants`).
Candidate voxel
    A voxel inside an artery's label whose HU is >= the threshold (130 HU at 120 kVp).
Lesion
    A 2D connected component of candidate voxels of one artery within one axial slice,
    using in-plane 8-connectivity. Lesions never span slices or arteries. A lesion is kept
    when its area (voxel count x row spacing x column spacing) is >= ``min_area_mm2``
    (1.0 mm^2 by default; compared with a 1e-9 mm^2 tolerance so that an area that is
    exactly the limit in decimal is not lost to floating-point rounding).
Weight
    From the lesion's peak HU: 1 for [t1, t2), 2 for [t2, t3), 3 for [t3, t4), 4 for >= t4,
    with (t1, t2, t3, t4) = (130, 200, 300, 400) HU at 120 kVp.
Agatston
    Sum over kept lesions of area_mm2 x weight x slice factor, where the slice factor is
    slice spacing / 3 mm (1 for contiguous 3 mm slices; 0.5 for 3 mm slices reconstructed
    every 1.5 mm). ``slice_correction=False`` fixes the factor to 1.
Volume
    Kept voxels x voxel volume (dz x dy x dx), no slice factor.
Mass (McCollough)
    Sum over kept lesions of c x lesion volume x lesion mean HU, with c the calibration
    factor in mg HA / cm^3 per HU (so mass_mg = c x volume_mm3 x mean_hu / 1000). c comes
    from the user or from a calibration ROI (:func:`calibration_factor`). Without c the
    mass is ``None``: it is never guessed.
Tube voltage
    The classic definition is for 120 kVp. :func:`params_for_kvp` gives the kVp-adapted
    threshold of Graeni et al. (2018) and scales the weight band edges by the same ratio
    (threshold / 130). The table (:data:`KVP_THRESHOLDS_HU`) is a plain mapping that a study
    can replace; check its values against the publication before reporting kVp-adapted
    scores in research.
Risk category (of the unrounded total Agatston A)
    ``0`` for A == 0, ``1-10`` for 0 < A <= 10, ``11-100`` for 10 < A <= 100,
    ``101-400`` for 100 < A <= 400, ``>400`` for A > 400.
CAC-DRS
    ``A0`` when A == 0; else ``A<k>/N<n>`` with A1 for 0 < A < 100, A2 for 100 <= A < 300,
    A3 for A >= 300, and n the number of arteries (LM, LAD, LCX, RCA: LM counts as its own
    vessel) whose Agatston is > 0.

The implementation is vectorised: candidate voxels are found in one pass over the volume;
each artery's candidates are labelled once inside their bounding box (a 3D structuring
element that only connects within a slice) and per-lesion statistics come from
``reduceat`` over the sorted component ids, with no Python loop over voxels or slices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..constants import ARTERIES, ARTERY_TO_LABEL
from ..errors import InputError
from ..limits import CALIBRATION_FACTOR, HU_RANGE, KVP_RANGE, MIN_AREA_MM2, THRESHOLD_HU, check_range, is_finite_number

#: Reference slice spacing of the Agatston method (mm).
REFERENCE_SLICE_MM = 3.0
#: Tolerance used when comparing a lesion's area with the minimum area (mm^2).
AREA_TOLERANCE_MM2 = 1e-9

#: Classic (120 kVp) lower edges of the weight bands 1..4 (HU).
CLASSIC_BANDS_HU: tuple[float, float, float, float] = (130.0, 200.0, 300.0, 400.0)

#: kVp-adapted thresholds (HU) after Graeni et al. 2018, Eur Heart J Cardiovasc Imaging.
KVP_THRESHOLDS_HU: dict[int, float] = {70: 182.0, 80: 167.0, 100: 147.0, 120: 130.0, 135: 120.0}

#: In-plane 8-connectivity that never connects two slices (axis 0 is z).
_INPLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_INPLANE_8[1] = True


@dataclass(frozen=True)
class ScoringParams:
    """Parameters of the score definition (defaults: classic 120 kVp Agatston)."""

    threshold_hu: float = 130.0
    #: Lower HU edges of weights 1, 2, 3, 4. The first equals ``threshold_hu``.
    band_edges_hu: tuple[float, float, float, float] = CLASSIC_BANDS_HU
    min_area_mm2: float = 1.0
    slice_correction: bool = True
    #: mg HA / cm^3 per HU; None -> mass is not reported.
    calibration_factor: float | None = None
    #: Tube voltage the parameters were chosen for (informational; None if unknown).
    kvp: float | None = None

    def __post_init__(self) -> None:
        # finite and plausible (limits and their reasoning: ..limits)
        check_range(self.threshold_hu, *THRESHOLD_HU, "calcium threshold", unit="HU")
        edges = tuple(check_range(e, *HU_RANGE, "weight band edge", unit="HU") for e in self.band_edges_hu)
        if len(edges) != 4 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise InputError(f"weight band edges must be 4 increasing HU values, got {edges}")
        if not is_finite_number(self.min_area_mm2) or self.min_area_mm2 < 0:
            raise InputError(f"minimum lesion area must be a finite number >= 0 mm^2, got {self.min_area_mm2}")
        check_range(self.min_area_mm2, *MIN_AREA_MM2, "minimum lesion area", unit="mm^2")
        if self.calibration_factor is not None:
            c = self.calibration_factor
            if not is_finite_number(c) or not c > CALIBRATION_FACTOR[0]:
                raise InputError(f"calibration factor must be a finite number > 0 mg/cm^3 per HU, got {c}")
            check_range(c, *CALIBRATION_FACTOR, "calibration factor", unit="mg/cm^3 per HU")
        if self.kvp is not None:
            check_range(self.kvp, *KVP_RANGE, "tube voltage", unit="kVp")


def params_for_kvp(kvp: float | None, **overrides) -> ScoringParams:
    """Scoring parameters for a tube voltage (Graeni 2018 thresholds, scaled bands).

    ``kvp=None`` or 120 gives the classic definition. Other voltages must be within 5 kVp of
    one of :data:`KVP_THRESHOLDS_HU`; anything else is an :class:`InputError` (there is no
    published threshold to fall back on).
    """
    if kvp is None:
        return ScoringParams(**overrides)
    kvp = check_range(kvp, *KVP_RANGE, "tube voltage", unit="kVp")
    nearest = min(KVP_THRESHOLDS_HU, key=lambda k: abs(k - float(kvp)))
    if abs(nearest - float(kvp)) > 5:
        raise InputError(
            f"no kVp-adapted threshold for {kvp:g} kVp (known: "
            f"{', '.join(str(k) for k in KVP_THRESHOLDS_HU)} kVp); use --kvp 120 for the classic definition"
        )
    thr = KVP_THRESHOLDS_HU[nearest]
    ratio = thr / CLASSIC_BANDS_HU[0]
    edges = tuple(e * ratio for e in CLASSIC_BANDS_HU)
    return ScoringParams(threshold_hu=thr, band_edges_hu=edges, kvp=float(kvp), **overrides)


def calibration_factor(
    rod_mean_hu: float, water_mean_hu: float, rod_density_mg_cm3: float = 200.0
) -> float:
    """Mass calibration factor c (mg HA / cm^3 per HU) from a calibration ROI.

    c = rod density / (mean HU of the rod - mean HU of water), e.g. a 200 mg HA/cm^3 rod.
    """
    diff = float(rod_mean_hu) - float(water_mean_hu)
    if not diff > 0:
        raise InputError(
            f"calibration rod ({rod_mean_hu:.1f} HU) must be denser than water ({water_mean_hu:.1f} HU)"
        )
    return float(rod_density_mg_cm3) / diff


def calibration_factor_from_masks(
    hu: np.ndarray, rod_mask: np.ndarray, water_mask: np.ndarray, rod_density_mg_cm3: float = 200.0
) -> float:
    """:func:`calibration_factor` with the means measured in two ROIs of ``hu``."""
    if not np.any(rod_mask) or not np.any(water_mask):
        raise InputError("calibration ROI is empty (rod or water mask has no voxel)")
    return calibration_factor(float(hu[rod_mask].mean()), float(hu[water_mask].mean()), rod_density_mg_cm3)


@dataclass
class Lesion:
    """One kept lesion (2D component within one slice and one artery)."""

    artery: str
    slice: int
    area_mm2: float
    peak_hu: float
    mean_hu: float
    agatston: float
    volume_mm3: float
    mass_mg: float | None
    voxels: int


@dataclass
class ArteryScore:
    agatston: float = 0.0
    volume_mm3: float = 0.0
    mass_mg: float | None = None
    lesions: int = 0


@dataclass
class ScoreResult:
    """Scores per artery and in total, the kept lesions and the categories."""

    params: ScoringParams
    spacing_mm: tuple[float, float, float]
    arteries: dict[str, ArteryScore]
    total: ArteryScore
    lesions: list[Lesion] = field(default_factory=list)
    risk_category: str = "0"
    cac_drs: str = "A0"
    #: label volume restricted to the kept lesions' voxels (0..4), same shape as the input
    kept_labels: np.ndarray | None = field(default=None, repr=False)
    #: flat voxel indices of each lesion, in ``lesions`` order (``keep_lesion_voxels``)
    lesion_voxels: list[np.ndarray] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready dict (numbers unrounded) following the report contract."""
        return {
            "spacing_mm": [float(s) for s in self.spacing_mm],
            "threshold_hu": float(self.params.threshold_hu),
            "band_edges_hu": [float(e) for e in self.params.band_edges_hu],
            "min_area_mm2": float(self.params.min_area_mm2),
            "slice_factor": slice_factor(self.spacing_mm[0], self.params.slice_correction),
            "calibration_factor": self.params.calibration_factor,
            "kvp": self.params.kvp,
            "arteries": {a: asdict(s) for a, s in self.arteries.items()},
            "total": asdict(self.total),
            "risk_category": self.risk_category,
            "cac_drs": self.cac_drs,
            "lesions": [
                {k: v for k, v in asdict(les).items() if k != "voxels"} for les in self.lesions
            ],
        }


def slice_factor(slice_spacing_mm: float, slice_correction: bool = True) -> float:
    """Slice factor of the Agatston score: slice spacing / 3 mm, or 1 when disabled."""
    return float(slice_spacing_mm) / REFERENCE_SLICE_MM if slice_correction else 1.0


def weights_from_peak(peak_hu: np.ndarray, band_edges_hu: Sequence[float] = CLASSIC_BANDS_HU) -> np.ndarray:
    """Agatston density weight (0..4) of each peak HU; 0 below the first edge."""
    return np.searchsorted(np.asarray(band_edges_hu, dtype=np.float64), np.asarray(peak_hu, dtype=np.float64), side="right")


def risk_category(total_agatston: float) -> str:
    """Risk category of the (unrounded) total Agatston score."""
    a = float(total_agatston)
    if a <= 0:
        return "0"
    if a <= 10:
        return "1-10"
    if a <= 100:
        return "11-100"
    if a <= 400:
        return "101-400"
    return ">400"


def cac_drs(total_agatston: float, artery_agatston: dict[str, float] | Iterable[float]) -> str:
    """CAC-DRS grade ``A0`` or ``A<1-3>/N<1-4>`` (N = arteries with Agatston > 0)."""
    a = float(total_agatston)
    if a <= 0:
        return "A0"
    grade = 1 if a < 100 else (2 if a < 300 else 3)
    values = artery_agatston.values() if isinstance(artery_agatston, dict) else artery_agatston
    n = sum(1 for v in values if float(v) > 0)
    return f"A{grade}/N{max(n, 1)}"


def _check_inputs(hu: np.ndarray, labels: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    if hu.ndim != 3:
        raise InputError(f"CT must be a 3D volume (z, y, x), got shape {hu.shape}")
    if labels.shape != hu.shape:
        raise InputError(f"label map shape {labels.shape} does not match the CT shape {hu.shape}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"voxel spacing must be three positive numbers (dz, dy, dx), got {tuple(spacing)}")
    lab_max = int(labels.max()) if labels.size else 0
    lab_min = int(labels.min()) if labels.size else 0
    if lab_min < 0 or lab_max > len(ARTERIES):
        raise InputError(
            f"label map holds values outside 0..{len(ARTERIES)} (found {lab_min}..{lab_max}); "
            "expected 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA"
        )
    return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def score(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    params: ScoringParams | None = None,
    keep_label_map: bool = False,
    keep_lesion_voxels: bool = False,
) -> ScoreResult:
    """Score a CT volume given a per-artery label map.

    Parameters
    ----------
    hu : (z, y, x) array of HU (already rescaled with slope/intercept).
    labels : (z, y, x) integer array, 0 background, 1 LM, 2 LAD, 3 LCX, 4 RCA.
    spacing : (dz, dy, dx) in mm; dz is the distance between slice centres.
    params : the score definition (default: classic 120 kVp Agatston).
    keep_label_map : also return ``kept_labels``, the labels of the kept lesions' voxels.
    keep_lesion_voxels : also return ``lesion_voxels``, each kept lesion's flat voxel indices.
    """
    params = params or ScoringParams()
    hu = np.asarray(hu)
    labels = np.asarray(labels)
    dz, dy, dx = _check_inputs(hu, labels, spacing)
    pixel_area = dy * dx
    voxel_volume = dz * dy * dx
    factor = slice_factor(dz, params.slice_correction)
    c = params.calibration_factor

    # Candidate voxels, found once; everything after works on this sparse set.
    flat = np.flatnonzero((hu >= params.threshold_hu) & (labels != 0))
    cand_labels = labels.ravel()[flat]
    cand_hu = hu.ravel()[flat].astype(np.float64)
    cz, cy, cx = np.unravel_index(flat, hu.shape)
    kept_map = np.zeros(hu.shape, dtype=np.uint8) if keep_label_map else None

    per_artery: dict[str, ArteryScore] = {}
    all_lesions: list[Lesion] = []
    all_voxels: list[np.ndarray] = []
    for artery in ARTERIES:
        lab = ARTERY_TO_LABEL[artery]
        per_artery[artery] = ArteryScore(mass_mg=0.0 if c is not None else None)
        sel = np.flatnonzero(cand_labels == lab)
        if sel.size == 0:
            continue
        z, y, x = cz[sel], cy[sel], cx[sel]
        # Label the artery's candidates inside their bounding box only.
        lo = (z.min(), y.min(), x.min())
        box = np.zeros((z.max() - lo[0] + 1, y.max() - lo[1] + 1, x.max() - lo[2] + 1), dtype=bool)
        box[z - lo[0], y - lo[1], x - lo[2]] = True
        comp, _ = ndimage.label(box, structure=_INPLANE_8)
        ids = comp[z - lo[0], y - lo[1], x - lo[2]]
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        values = cand_hu[sel][order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        counts = np.diff(np.r_[starts, ids.size])
        peak = np.maximum.reduceat(values, starts)
        mean = np.add.reduceat(values, starts) / counts
        lesion_z = z[order][starts]
        area = counts * pixel_area
        keep = area >= params.min_area_mm2 - AREA_TOLERANCE_MM2
        if not keep.any():
            continue
        weight = weights_from_peak(peak, params.band_edges_hu)
        lesion_score = area * weight * factor
        volume = counts * voxel_volume
        mass = c * volume * mean / 1000.0 if c is not None else None
        if kept_map is not None:
            voxel_kept = np.repeat(keep, counts)
            kept_map.ravel()[flat[sel][order][voxel_kept]] = lab
        per_artery[artery] = ArteryScore(
            agatston=float(lesion_score[keep].sum()),
            volume_mm3=float(volume[keep].sum()),
            mass_mg=float(mass[keep].sum()) if mass is not None else None,
            lesions=int(keep.sum()),
        )
        lesion_flat = flat[sel][order] if keep_lesion_voxels else None
        for i in np.flatnonzero(keep):
            if lesion_flat is not None:
                all_voxels.append(lesion_flat[starts[i]: starts[i] + counts[i]])
            all_lesions.append(
                Lesion(
                    artery=artery,
                    slice=int(lesion_z[i]),
                    area_mm2=float(area[i]),
                    peak_hu=float(peak[i]),
                    mean_hu=float(mean[i]),
                    agatston=float(lesion_score[i]),
                    volume_mm3=float(volume[i]),
                    mass_mg=float(mass[i]) if mass is not None else None,
                    voxels=int(counts[i]),
                )
            )

    order_out = sorted(range(len(all_lesions)), key=lambda k: (
        all_lesions[k].slice, ARTERIES.index(all_lesions[k].artery), -all_lesions[k].area_mm2))
    all_lesions = [all_lesions[k] for k in order_out]
    total = ArteryScore(
        agatston=float(sum(s.agatston for s in per_artery.values())),
        volume_mm3=float(sum(s.volume_mm3 for s in per_artery.values())),
        mass_mg=float(sum(s.mass_mg for s in per_artery.values())) if c is not None else None,  # type: ignore[misc]
        lesions=int(sum(s.lesions for s in per_artery.values())),
    )
    return ScoreResult(
        params=params,
        spacing_mm=(dz, dy, dx),
        arteries=per_artery,
        total=total,
        lesions=all_lesions,
        risk_category=risk_category(total.agatston),
        cac_drs=cac_drs(total.agatston, {a: s.agatston for a, s in per_artery.items()}),
        kept_labels=kept_map,
        lesion_voxels=[all_voxels[k] for k in order_out] if keep_lesion_voxels else None,
    )


def slices_with_calcium(result: ScoreResult, n_slices: int) -> np.ndarray:
    """Boolean per slice: True where the slice holds at least one kept lesion."""
    out = np.zeros(int(n_slices), dtype=bool)
    for les in result.lesions:
        out[les.slice] = True
    return out


def with_params(params: ScoringParams, **changes) -> ScoringParams:
    """Copy of ``params`` with fields changed (validated again)."""
    return replace(params, **changes)
