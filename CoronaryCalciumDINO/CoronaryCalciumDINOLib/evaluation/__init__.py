"""Evaluation: metrics (NumPy / SciPy), frozen-feature protocols (kNN, linear probe,
few-shot, fine-tuning / LoRA / BitFit) and the side-by-side comparison of model variants.

Submodules are imported explicitly (``from CoronaryCalciumDINOLib.evaluation import
metrics``); :mod:`.protocols`, :mod:`.peft` need torch, :mod:`.metrics` and :mod:`.compare`
do not. This package file imports nothing heavy.
"""
