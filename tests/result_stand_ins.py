"""A pipeline result made of known labels (what ``pipeline.run_pipeline`` returns, as far as
the scene glue and the Slicer module read it), and the small two-lesion CT the module tests
compute on."""

from __future__ import annotations

import numpy as np

from CoronaryCalciumDINOLib.constants import ARTERY_TO_LABEL
from CoronaryCalciumDINOLib.io.volume import CTVolume
from CoronaryCalciumDINOLib.scoring import ScoringParams, score


class FakeResult:
    """PipelineResult-like object made of known labels, scored with ``scoring.score``; without
    ``labels``, those of :func:`small_ct` (its LAD and RCA lesions)."""

    def __init__(self, ct: CTVolume, labels: np.ndarray | None = None, attention: np.ndarray | None = None):
        if labels is None:
            labels = small_ct_labels(ct.shape)
        self.labels = labels
        self.score = score(ct.hu, labels, ct.spacing, ScoringParams())
        self.slice_probabilities = np.linspace(0.0, 1.0, ct.shape[0]).astype(np.float32)
        self.selected = self.slice_probabilities > 0.5
        self.attention = attention
        self.model_info = {"name": "known-labels"}

    def report_extra(self) -> dict:
        return {"model": dict(self.model_info)}


def small_ct() -> CTVolume:
    """6 x 24 x 24 CT: one lesion of 300 HU on slice 2, one of 450 HU on slice 3."""
    hu = np.full((6, 24, 24), -50.0, np.float32)
    hu[2, 4:8, 4:8] = 300.0
    hu[3, 14:18, 14:18] = 450.0
    return CTVolume(hu=hu, spacing=(3.0, 0.7, 0.7))


def small_ct_labels(shape) -> np.ndarray:
    """The labels of :func:`small_ct`'s lesions: LAD on slice 2, RCA on slice 3."""
    labels = np.zeros(shape, np.uint8)
    labels[2, 4:8, 4:8] = ARTERY_TO_LABEL["LAD"]
    labels[3, 14:18, 14:18] = ARTERY_TO_LABEL["RCA"]
    return labels
