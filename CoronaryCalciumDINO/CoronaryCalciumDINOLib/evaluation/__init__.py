"""Evaluation: metrics (NumPy / SciPy) and the pipeline evaluation behind ``ccdino evaluate``.

Submodules are imported explicitly (``from CoronaryCalciumDINOLib.evaluation import
metrics``). The research protocols (kNN, linear probe, few-shot, fine-tuning / LoRA /
BitFit) and the side-by-side comparison of variants are training code: ``training/common/``.
This package file imports nothing heavy.
"""
