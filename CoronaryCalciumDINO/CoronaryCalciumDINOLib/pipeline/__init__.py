"""Inference: heart field -> slice detector -> per-artery segmenter -> scores.

Public API::

    from CoronaryCalciumDINOLib.pipeline import run_pipeline, load_bundle, PipelineResult
    bundle = load_bundle(None)            # the default bundle; or a folder / manifest.json
    res = run_pipeline(ct, bundle, device="auto", params=None, attention=False,
                       progress=None, cancel=None)
    res = run_pipeline(ct, None, ...)     # the same, the bundle loaded by the pipeline

Importing this package imports no torch. The pipeline imports it after its candidate
stage; given a bundle path (or None) instead of a loaded bundle, it reads only the
bundle's verified manifest (:func:`load_manifest`) before that stage and builds the
networks after it.
"""

from __future__ import annotations

from ..models.bundle import BundleManifest, ModelBundle, load_bundle, load_manifest  # noqa: F401
from .inference import PipelineResult, run_pipeline  # noqa: F401
