"""CoronaryCalciumDINO library: coronary artery calcium scoring on CT.

Pure Python (NumPy, SciPy, SimpleITK, pydicom, PyTorch); imports no Slicer or Qt,
except the ``scene`` subpackage, which talks to MRML objects handed to it.

Subpackages
-----------
scoring   the project's definition of Agatston / volume / mass scores (one module)
io        CT and label loading / writing (DICOM folders, NIfTI, NRRD, MHA)
synth     synthetic non-contrast cardiac CT studies with exact labels
data      COCA reader, slice-level datasets, splits
models    ViT backbones, DINO heads, UNET, model bundles
pipeline  inference: detector -> segmenter -> scores (+ attention maps)
evaluation metrics and the pipeline evaluation (research protocols: training/common/)
report    JSON / CSV / PNG reports
scene     Slicer scene glue (MRML segmentation / table nodes)
cli       the ``ccdino`` command line
"""

from __future__ import annotations

__version__ = "0.1.0"
