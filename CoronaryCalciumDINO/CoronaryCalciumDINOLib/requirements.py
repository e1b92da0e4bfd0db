"""The Python packages the library needs, in one place.

``pyproject.toml`` declares the same requirements (a test checks that they agree); the Slicer
module and the Slicer batch script read them from here to find and install what is missing.

* :data:`CORE`: scoring, I/O, reports, synthetic data, ``ccdino score --labels`` and
  ``ccdino batch --labels-dir``. No PyTorch.
* :data:`AI`: the AI pipeline and training (the ``ai`` extra:
  ``pip install coronary-calcium-dino[ai]``). timm and MONAI are bounded above because the
  models use their internals (timm's ViT blocks and checkpoint filter, MONAI's UNet layout).
* :data:`DICOM_OUT`: DICOM SEG + SR results (the ``dicom-out`` extra: highdicom), imported
  only where they are written or a DICOM SEG is read.

Keys are import names, values pip requirements. This module imports only the standard
library and :mod:`.errors`, so the Slicer module can read it before anything is installed.
"""

from __future__ import annotations

import importlib.util

from .errors import MissingDependencyError

#: Name of the optional dependency group holding :data:`AI`.
AI_EXTRA = "ai"
#: How a user installs the AI.
AI_INSTALL_HINT = "pip install 'coronary-calcium-dino[ai]'"

#: Version range of PyTorch (Slicer installs it through the PyTorch extension with this range).
TORCH_VERSION = ">=2.2,<2.15"

CORE: dict[str, str] = {
    "numpy": "numpy>=1.23",
    "scipy": "scipy>=1.9",
    "SimpleITK": "SimpleITK>=2.2",
    "pydicom": "pydicom>=2.4",
    "pylibjpeg": "pylibjpeg>=2.0",
    "openjpeg": "pylibjpeg-openjpeg>=2.0",
    "libjpeg": "pylibjpeg-libjpeg>=2.1",  # JPEG Lossless (1.2.840.10008.1.2.4.70), as many archives store CT
    "jpeg_ls": "pyjpegls>=1.2",  # JPEG-LS (1.2.840.10008.1.2.4.80/81)
    "nrrd": "pynrrd>=1.0",
    "matplotlib": "matplotlib>=3.6",
    "skimage": "scikit-image>=0.19",
}

AI: dict[str, str] = {
    "torch": "torch" + TORCH_VERSION,
    "timm": "timm>=1.0,<1.1",
    "monai": "monai>=1.3,<1.7",
    "safetensors": "safetensors>=0.4",
}

#: Name of the optional dependency group for DICOM SEG / SR results (``ccdino score --dicom-out``,
#: ``--labels SEG.dcm``, the Slicer module's Export DICOM): highdicom, which needs Python >= 3.10.
DICOM_OUT_EXTRA = "dicom-out"
#: How a user installs it.
DICOM_OUT_INSTALL_HINT = "pip install 'coronary-calcium-dino[dicom-out]'"
DICOM_OUT: dict[str, str] = {
    "highdicom": "highdicom>=0.26",
}


def missing(ai: bool = True) -> list[str]:
    """Import names of :data:`CORE` (and :data:`AI` when ``ai``) that cannot be imported."""
    names = list(CORE) + (list(AI) if ai else [])
    return [name for name in names if importlib.util.find_spec(name) is None]


def pip_requirements(names) -> list[str]:
    """pip requirements for the import ``names`` (as from :func:`missing`), torch excluded
    (Slicer installs it through the PyTorch extension, which picks the build for the GPU)."""
    table = {**CORE, **AI}
    return [table[name] for name in names if name != "torch"]


def torch_constraints() -> list[str]:
    """pip constraint lines (``torch==X``, ``torchvision==Y``) pinning the installed PyTorch
    build, so that a later pip step does not replace the build PyTorchUtils chose."""
    import importlib.metadata

    lines = []
    for name in ("torch", "torchvision"):
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return lines


def require_ai() -> None:
    """Raise :class:`..errors.MissingDependencyError` (one line, naming the missing packages
    and the ``ai`` extra) unless PyTorch, timm, MONAI and safetensors can be imported. The AI
    entry points (:func:`..models.bundle.load_bundle`, :func:`..models.bundle.save_random_bundle`)
    call it before importing any of them."""
    absent = [name for name in AI if importlib.util.find_spec(name) is None]
    if absent:
        raise MissingDependencyError(
            f"the AI needs {', '.join(absent)}, which {'is' if len(absent) == 1 else 'are'} not installed: "
            f"{AI_INSTALL_HINT} (or score a label map with --labels)"
        )


def require_dicom_out(what: str = "DICOM SEG / SR") -> None:
    """Raise :class:`..errors.MissingDependencyError` (one line, naming highdicom and the
    ``dicom-out`` extra) unless highdicom can be imported."""
    absent = [name for name in DICOM_OUT if importlib.util.find_spec(name) is None]
    if absent:
        raise MissingDependencyError(
            f"{what} needs {', '.join(absent)}, which is not installed: {DICOM_OUT_INSTALL_HINT}"
        )
