"""Packaging: one list of requirements, a core that runs without PyTorch, the AI as an extra."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from CoronaryCalciumDINOLib import requirements

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "CoronaryCalciumDINO" / "CoronaryCalciumDINOLib"
PHANTOM = ROOT / "Testing" / "Data" / "qrm-phantom-canon"

# Run a command of the library in a fresh interpreter in which the AI packages cannot be
# imported (``sys.modules[name] = None`` is what Python does for a module that is absent:
# the import fails and importlib.util.find_spec returns None).
HIDE_AI = (
    "import sys\n"
    "for n in ('torch', 'timm', 'monai', 'safetensors', 'torchvision'):\n"
    "    sys.modules[n] = None\n"
)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_pyproject_declares_the_requirements_module():
    project = _pyproject()["project"]
    assert sorted(project["dependencies"]) == sorted(requirements.CORE.values())
    extras = project["optional-dependencies"]
    assert sorted(extras[requirements.AI_EXTRA]) == sorted(requirements.AI.values())
    for extra in ("test", "train"):  # they run the AI
        assert f"coronary-calcium-dino[{requirements.AI_EXTRA}]" in extras[extra]
    assert "torch" + requirements.TORCH_VERSION == requirements.AI["torch"]
    assert sorted(extras[requirements.DICOM_OUT_EXTRA]) == sorted(requirements.DICOM_OUT.values())
    for requirement in requirements.DICOM_OUT.values():  # the DICOM results are tested
        assert any(r.split(";")[0].strip() == requirement for r in extras["test"]), requirement


def _imported_top_level(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_of_the_library_is_declared():
    files = [p for p in LIB.rglob("*.py") if "scene" not in p.relative_to(LIB).parts]
    imported = _imported_top_level(files)
    third_party = {n for n in imported if n not in sys.stdlib_module_names and n != "CoronaryCalciumDINOLib"}
    # openpyxl is optional (COCA score tables as XLSX; the error says how to install it), and
    # so is Dask (batches on a cluster: the 'cluster' extra, see tests/test_batch_dask.py)
    undeclared = (third_party - set(requirements.CORE) - set(requirements.AI) - set(requirements.DICOM_OUT)
                  - {"openpyxl", "dask", "distributed"})
    assert not undeclared, f"imported but not in requirements.py / pyproject: {sorted(undeclared)}"
    unused = (set(requirements.CORE) | set(requirements.AI)) - imported - {"pylibjpeg", "openjpeg", "libjpeg", "jpeg_ls"}  # pydicom plugins
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_slicer_module_and_batch_script_read_the_requirements_module():
    module = (ROOT / "CoronaryCalciumDINO" / "CoronaryCalciumDINO.py").read_text(encoding="utf-8")
    script = (ROOT / "CoronaryCalciumDINO" / "Resources" / "Scripts" / "ccdino_batch_slicer.py").read_text(encoding="utf-8")
    for text in (module, script):
        assert re.search(r"requirements(\(\))?\.missing\(ai=", text), "missing packages not from requirements.missing"
        assert "pip_requirements(" in text and "TORCH_VERSION" in text
        for pin in ("timm>=", "monai>=", '">=2.2"'):
            assert pin not in text, f"a requirement written outside requirements.py: {pin}"


def test_pip_requirements_leave_torch_to_the_pytorch_extension():
    assert requirements.pip_requirements(["torch", "timm", "nrrd"]) == [requirements.AI["timm"], "pynrrd>=1.0"]


def _ccdino_without_ai(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``ccdino ARGV`` in a fresh interpreter in which the AI packages cannot be imported;
    it fails if anything imported one anyway."""
    code = HIDE_AI + (
        f"sys.path.insert(0, {str(ROOT / 'CoronaryCalciumDINO')!r})\n"
        "from CoronaryCalciumDINOLib.cli import main\n"
        f"rc = main({argv!r})\n"
        "assert all(sys.modules.get(n) is None for n in ('torch', 'timm', 'monai')), 'the AI was imported'\n"
        "sys.exit(rc)\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_labels_scoring_runs_without_torch(tmp_path):
    from CoronaryCalciumDINOLib.io import load_ct, write_volume

    ct = load_ct(PHANTOM)
    labels = np.zeros(ct.shape, np.uint8)
    labels[20:24] = np.where(ct.hu[20:24] >= 130, 2, 0)
    write_volume(labels, ct, tmp_path / "labels.nrrd")
    proc = _ccdino_without_ai(["score", str(PHANTOM), "--labels", "labels.nrrd", "--json", "r.json", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["arteries"]["LAD"]["agatston"] > 0 and report["total"]["agatston"] == report["arteries"]["LAD"]["agatston"]


def test_ai_without_torch_is_one_line_naming_the_extra(tmp_path):
    proc = _ccdino_without_ai(["score", str(PHANTOM), "--quiet"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("ccdino: error: the AI needs torch") and requirements.AI_INSTALL_HINT in lines[-1]
    assert "Traceback" not in proc.stderr


def test_batch_with_label_maps_runs_without_torch(tmp_path):
    from CoronaryCalciumDINOLib.io import load_ct, write_volume

    full = load_ct(PHANTOM)
    ct = dataclasses.replace(full, hu=full.hu[18:26].copy())  # the insert's slices are enough
    (tmp_path / "studies").mkdir()
    write_volume(ct.hu.astype(np.int16), ct, tmp_path / "studies" / "phantom.nrrd")
    labels = np.zeros(ct.shape, np.uint8)
    labels[2:6] = np.where(ct.hu[2:6] >= 130, 4, 0)
    write_volume(labels, ct, tmp_path / "labels" / "phantom.nrrd")
    proc = _ccdino_without_ai(["batch", "studies", "--out", "out", "--labels-dir", "labels", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "phantom.json").read_text())
    assert report["arteries"]["RCA"]["agatston"] > 0 and (tmp_path / "out" / "phantom.png").is_file()


def test_command_line_help_loads_neither_numpy_nor_the_ai():
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'CoronaryCalciumDINO')!r})\n"
        "from CoronaryCalciumDINOLib.cli import build_parser\n"
        "build_parser().format_help()\n"
        "print(sorted(n for n in ('numpy', 'scipy', 'torch', 'SimpleITK') if n in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


#: The oldest Slicer the module supports, and the Python it ships.
MIN_SLICER, MIN_PYTHON = "5.8", "3.9"


def test_minimum_slicer_and_python_agree_everywhere():
    """pyproject, the CMake extension, the README, docs/slicer.md, ruff's target and the
    Python 3.9 test step name the same minimum Slicer and Python."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^requires-python = "(.*)"$', pyproject, re.M).group(1) == f">={MIN_PYTHON}"
    assert re.search(r'^target-version = "(.*)"$', pyproject, re.M).group(1) == "py" + MIN_PYTHON.replace(".", "")
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.findall(r"find_package\(Slicer\b([^)]*)\)", cmake) == [f" {MIN_SLICER} REQUIRED"]
    # docs/slicer.md also says that slicer-core needs Python >= 3.10
    for doc, minimum_pythons in (("README.md", {MIN_PYTHON}), ("docs/slicer.md", {MIN_PYTHON, "3.10"})):
        text = (ROOT / doc).read_text(encoding="utf-8")
        slicers = set(re.findall(r"Slicer (?:≥|>=) ?(\d+\.\d+)", text))
        pythons = set(re.findall(r"Python (?:≥|>=) ?(\d+\.\d+)", text))
        assert slicers == {MIN_SLICER}, f"{doc}: minimum Slicer {sorted(slicers)}"
        assert pythons == minimum_pythons, f"{doc}: minimum Python {sorted(pythons)}"
        assert f"Slicer {MIN_SLICER} ships Python {MIN_PYTHON}" in " ".join(text.split()), doc
    script = (ROOT / "scripts" / "test_py39.sh").read_text(encoding="utf-8")
    assert f"sys.version_info[:2] != ({MIN_PYTHON.replace('.', ', ')})" in script
    assert "bash scripts/test_py39.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
