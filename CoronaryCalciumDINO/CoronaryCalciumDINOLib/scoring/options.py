"""What a user chooses about the score definition, and how it becomes :class:`ScoringParams`.

One rule for every front end (``ccdino score``, ``ccdino batch``, the Slicer panel and its
batch script): the tube voltage is either not given (the classic 120 kVp definition), a
number, or ``"auto"`` (the CT's own kVp, from the DICOM KVP tag); the kVp-adapted
threshold and weight bands then come from :func:`.agatston.params_for_kvp`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import InputError
from .agatston import ScoringParams, params_for_kvp

AUTO = "auto"


@dataclass(frozen=True)
class ScoringOptions:
    """Options of the score definition, before the CT's kVp is known.

    ``kvp``: None (classic 120 kVp), a number, or ``"auto"`` (the CT's kVp). With ``"auto"``
    and a CT without kVp, :meth:`resolve` raises unless ``auto_kvp_required`` is False (then
    the classic definition applies: what the Slicer panel does when its kVp field is 0).
    """

    kvp: float | str | None = None
    min_area_mm2: float = 1.0
    slice_correction: bool = True
    calibration_factor: float | None = None
    auto_kvp_required: bool = True

    def __post_init__(self) -> None:
        kvp = self.kvp
        if isinstance(kvp, str):
            if kvp.strip().lower() == AUTO:
                kvp = AUTO
            else:
                try:
                    kvp = float(kvp)
                except ValueError:
                    raise InputError(f"--kvp must be 'auto' or a number, got {self.kvp!r}") from None
        elif kvp is not None:
            kvp = float(kvp)
        object.__setattr__(self, "kvp", kvp)
        self.resolve(None if kvp == AUTO else kvp, _checking=True)  # bad values fail here, once

    @classmethod
    def of(cls, value: "ScoringOptions | dict | None") -> "ScoringOptions":
        """``value`` as options: None gives the defaults, a dict its keys (see the fields)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise InputError(f"scoring options must be a ScoringOptions or a dict, got {type(value).__name__}")

    def to_dict(self) -> dict:
        return asdict(self)

    def resolve(self, ct_kvp: float | None, _checking: bool = False) -> ScoringParams:
        """The :class:`ScoringParams` for a CT whose kVp is ``ct_kvp`` (None if unknown)."""
        kvp = self.kvp
        if kvp == AUTO:
            if ct_kvp is None and self.auto_kvp_required and not _checking:
                raise InputError("--kvp auto: the input has no KVP tag; give the tube voltage, e.g. --kvp 100")
            kvp = None if ct_kvp is None else float(ct_kvp)
        return params_for_kvp(
            kvp,
            min_area_mm2=self.min_area_mm2,
            slice_correction=self.slice_correction,
            calibration_factor=self.calibration_factor,
        )
