"""Every module of the library imports, and the core imports without the AI extras.

Slicer loads the module, and through it the library, before anything is installed: the
core (scoring, I/O, reports, command line, scene glue) must import with only what Slicer
bundles, and on the oldest Python the module supports (3.9, Slicer 5.8:
``scripts/test_py39.sh`` runs this file there). Only the model definitions import PyTorch
at module level; everything else imports it inside the functions that run the AI.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import CoronaryCalciumDINOLib

#: Import names of the ``ai`` extra (CoronaryCalciumDINOLib.requirements.AI).
AI_PACKAGES = ("torch", "timm", "monai", "safetensors")

#: The modules that import PyTorch at module level: network definitions, which only the AI
#: pipeline, the model bundles and training load.
AI_MODULES = frozenset(
    f"CoronaryCalciumDINOLib.models.{name}" for name in ("backbone", "conditioning", "detector", "plain")
)


def _walk_error(name: str) -> None:
    raise AssertionError(f"package {name} does not import: {sys.exc_info()[1]!r}")


def library_modules() -> list[str]:
    """Every module and package of the library (``__main__`` modules, which run the command
    line, left out)."""
    return sorted(
        m.name
        for m in pkgutil.walk_packages(CoronaryCalciumDINOLib.__path__, "CoronaryCalciumDINOLib.", onerror=_walk_error)
        if not m.name.endswith(".__main__")
    )


def test_the_walk_finds_the_library():
    names = library_modules()
    assert len(names) >= 60, names
    assert AI_MODULES <= set(names), "an AI module named here no longer exists"
    for core in ("io", "io.dicom", "scoring.agatston", "report.tables", "cli", "batch", "scene.logic"):
        assert f"CoronaryCalciumDINOLib.{core}" in names


def test_requirements_name_the_same_ai_packages():
    from CoronaryCalciumDINOLib.requirements import AI

    assert set(AI) == set(AI_PACKAGES)


@pytest.mark.parametrize("name", library_modules())
def test_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if name in AI_MODULES and missing in AI_PACKAGES:
            pytest.skip(f"{name} needs {missing} (the ai extra), which is not installed")
        raise


def test_core_modules_import_no_ai_package():
    """In a fresh interpreter, importing every module but the AI ones loads none of the AI
    packages (where they are installed, this shows that nothing imports them early)."""
    core = [n for n in library_modules() if n not in AI_MODULES]
    code = (
        "import importlib, json, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(p for p in {list(AI_PACKAGES)!r} if p in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
