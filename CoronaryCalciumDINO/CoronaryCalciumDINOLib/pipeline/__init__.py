"""Inference: heart field -> slice detector -> per-artery segmenter -> scores.

Public API::

    from CoronaryCalciumDINOLib.pipeline import run_pipeline, load_bundle, PipelineResult
    bundle = load_bundle(None)            # the default bundle; or a folder / manifest.json
    res = run_pipeline(ct, bundle, device="auto", params=None, attention=False,
                       progress=None, cancel=None)

Torch is imported only when the pipeline runs.
"""

from __future__ import annotations

from ..models.bundle import ModelBundle, load_bundle  # noqa: F401
from .inference import PipelineResult, run_pipeline  # noqa: F401
