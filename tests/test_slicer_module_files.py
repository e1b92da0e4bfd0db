"""Static checks of the Slicer module files (no Slicer application needed).

* the module CMakeLists lists every .py file of CoronaryCalciumDINOLib and every resource;
* the .ui is well-formed and holds every widget the module code uses (``self.ui.<name>``),
  and its ``SlicerParameterName`` properties name fields of the parameter node;
* the terminology file loads in Slicer's terminology logic (slicer-core) and the segment
  terminology entries resolve against it;
* the module file and the headless batch script compile; the batch script's exit codes.

Run ``python tests/test_slicer_module_files.py --update-cmake`` to rewrite the list of
library files in CoronaryCalciumDINO/CMakeLists.txt.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "CoronaryCalciumDINO"
MODULE_PY = MODULE / "CoronaryCalciumDINO.py"
MODULE_CMAKE = MODULE / "CMakeLists.txt"
UI = MODULE / "Resources" / "UI" / "CoronaryCalciumDINO.ui"
TERM = MODULE / "Resources" / "CoronaryCalciumDINO.term.json"
ICON = MODULE / "Resources" / "Icons" / "CoronaryCalciumDINO.png"
BATCH_SCRIPT = MODULE / "Resources" / "Scripts" / "ccdino_batch_slicer.py"
BEGIN, END = "# BEGIN CoronaryCalciumDINOLib", "# END CoronaryCalciumDINOLib"


def lib_files() -> list[str]:
    """Every .py file of the library package, relative to the module folder, sorted."""
    return sorted(
        p.relative_to(MODULE).as_posix()
        for p in (MODULE / "CoronaryCalciumDINOLib").rglob("*.py")
        if "__pycache__" not in p.parts
    )


def cmake_block(text: str, variable: str) -> list[str]:
    """Entries of ``set(<variable> ...)`` (comments dropped)."""
    m = re.search(r"set\(\s*" + variable + r"\b(.*?)\)", text, re.S)
    assert m, f"set({variable} ...) not found"
    entries = []
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        entries += line.split()
    return entries


def update_cmake() -> None:
    text = MODULE_CMAKE.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    indent = "  "
    body = "\n" + "".join(f"{indent}{f}\n" for f in lib_files()) + indent
    MODULE_CMAKE.write_text(text[:start] + body + text[stop:])


# ----------------------------------------------------------------------------- CMake


def test_cmake_lists_every_library_file():
    listed = cmake_block(MODULE_CMAKE.read_text(), "MODULE_PYTHON_SCRIPTS")
    assert listed[0] == "${MODULE_NAME}.py"
    lib_listed = [e for e in listed[1:]]
    missing = sorted(set(lib_files()) - set(lib_listed))
    stale = sorted(set(lib_listed) - set(lib_files()))
    assert not missing and not stale, (
        f"MODULE_PYTHON_SCRIPTS out of date: missing {missing}, not existing {stale}; "
        "run `python tests/test_slicer_module_files.py --update-cmake`"
    )
    assert len(lib_listed) == len(set(lib_listed)), "a library file is listed twice"


def test_cmake_lists_every_resource():
    text = MODULE_CMAKE.read_text()
    listed = [e.replace("${MODULE_NAME}", "CoronaryCalciumDINO") for e in cmake_block(text, "MODULE_PYTHON_RESOURCES")]
    assert "${MODULE_MODEL_FILES}" in listed
    assert "${CMAKE_CURRENT_SOURCE_DIR}/CoronaryCalciumDINOLib/bundles/ccdino-default/*" in text and "GLOB_RECURSE MODULE_MODEL_FILES" in text
    explicit = [e for e in listed if not e.startswith("$")]
    for entry in explicit:
        assert (MODULE / entry).is_file(), f"listed resource does not exist: {entry}"
    on_disk = sorted(
        p.relative_to(MODULE).as_posix()
        for p in (MODULE / "Resources").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert sorted(set(on_disk) - set(explicit)) == [], "resource files not listed in MODULE_PYTHON_RESOURCES"


def test_extension_cmake():
    text = (REPO / "CMakeLists.txt").read_text()
    for needed in ("project(CoronaryCalciumDINO)", "find_package(Slicer 5.8 REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(CoronaryCalciumDINO)", "## NEXT_MODULE", "Slicer_EXTENSION_GENERATE_CONFIG",
                   "Slicer_EXTENSION_CPACK", 'set(EXTENSION_DEPENDS "PyTorch")'):
        assert needed in text, needed
    module = MODULE_CMAKE.read_text()
    assert "slicerMacroBuildScriptedModule(" in module and "WITH_GENERIC_TESTS" in module
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module


# ----------------------------------------------------------------------------- module code vs .ui


def module_tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(), filename=str(MODULE_PY))


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def used_ui_names() -> set[str]:
    """Names in ``self.ui.<name>`` anywhere in the module file."""
    names = set()
    for node in ast.walk(module_tree()):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def parameter_fields() -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class."""
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            return {
                s.target.id: ast.unparse(s.annotation)
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class")


def test_ui_is_well_formed_and_has_every_used_widget():
    widgets = ui_widgets()
    assert ET.parse(UI).getroot().find("class").text == "CoronaryCalciumDINO"
    used = used_ui_names()
    assert len(used) >= 15
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui names with no widget in the .ui: {missing}"
    names = [w.get("name") for w in ET.parse(UI).getroot().iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names in the .ui"


def test_ui_parameter_names_match_the_parameter_node():
    fields = parameter_fields()
    expected_class = {"bool": "QCheckBox", "vtkMRMLScalarVolumeNode": "qMRMLNodeComboBox",
                      "vtkMRMLSegmentationNode": "qMRMLNodeComboBox"}
    bound = {}
    for name, w in ui_widgets().items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = w.get("class")
    assert bound, "no SlicerParameterName in the .ui"
    for param, cls in bound.items():
        assert param in fields, f"SlicerParameterName {param} is not a parameter node field"
        annotation = fields[param]
        if annotation in expected_class:
            assert cls == expected_class[annotation], (param, cls)
        elif "float" in annotation:
            assert cls in ("QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox"), (param, cls)
        elif "Choice" in annotation:
            assert cls == "QComboBox", (param, cls)
    for needed in ("inputVolume", "device", "bundlePath", "computeAttention", "attentionOpacity", "attentionHead", "kvp"):
        assert needed in fields, needed


def test_module_classes_and_category():
    tree = module_tree()
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for name, base in (("CoronaryCalciumDINO", "ScriptedLoadableModule"), ("CoronaryCalciumDINOWidget", "ScriptedLoadableModuleWidget"),
                       ("CoronaryCalciumDINOLogic", "ScriptedLoadableModuleLogic"), ("CoronaryCalciumDINOTest", "ScriptedLoadableModuleTest")):
        assert name in classes, name
        assert base in [ast.unparse(b) for b in classes[name].bases], (name, base)
    source = MODULE_PY.read_text()
    assert re.search(r'categories = \[translate\("qSlicerAbstractCoreModule", "Cardiac"\)\]', source)
    widget_methods = {f.name for f in classes["CoronaryCalciumDINOWidget"].body if isinstance(f, ast.FunctionDef)}
    assert {"setup", "cleanup", "onSceneStartClose", "onSceneEndClose", "onCompute", "onCancel", "onRescore", "onCorrect"} <= widget_methods
    # the library is imported lazily: no top-level CoronaryCalciumDINOLib / torch import
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert not (mod or "").startswith(("CoronaryCalciumDINOLib", "torch")), mod
    # the Segment Editor intensity mask goes through scene.edits.IntensityMask (restored for
    # other segmentations; tested in test_slicer_module_logic.py)
    assert "edits.IntensityMask(" in source
    assert "installTorch" in source and "confirmOkCancelDisplay" in source


def test_module_and_scripts_compile(tmp_path):
    py_compile.compile(str(MODULE_PY), cfile=str(tmp_path / "m.pyc"), doraise=True)
    py_compile.compile(str(BATCH_SCRIPT), cfile=str(tmp_path / "b.pyc"), doraise=True)


def test_icon_is_128_png():
    from PIL import Image

    with Image.open(ICON) as im:
        assert im.format == "PNG" and im.size == (128, 128)


# ----------------------------------------------------------------------------- terminology


def test_terminology_file_and_segment_entries():
    from CoronaryCalciumDINOLib.io import segfile

    data = json.loads(TERM.read_text())
    assert data["SegmentationCategoryTypeContextName"] == segfile.TERMINOLOGY_CONTEXT
    category = data["SegmentationCodes"]["Category"][0]
    assert (category["CodingSchemeDesignator"], category["CodeValue"]) == ("SCT", "49755003")
    assert category["CodeMeaning"] == "Morphologically Altered Structure"
    ctype = category["Type"][0]
    assert (ctype["CodingSchemeDesignator"], ctype["CodeValue"], ctype["CodeMeaning"]) == ("SCT", "18115005", "Calcification")
    # regions: the four coronary arteries with their SNOMED CT codes (Slicer's DICOM anatomic list)
    codes = {"LM": "3227004", "LAD": "59438005", "LCX": "57396003", "RCA": "13647002"}
    for artery, code in codes.items():
        entry = segfile.terminology_entry(artery).split("~")
        assert entry[0] == data["SegmentationCategoryTypeContextName"]
        assert entry[1] == "SCT^49755003^Morphologically Altered Structure"
        assert entry[2] == "SCT^18115005^Calcification"
        assert entry[5].split("^")[:2] == ["SCT", code]


def test_terminology_loads_in_slicer_terminology_logic():
    slicer = pytest.importorskip("slicer")
    from CoronaryCalciumDINOLib.io.segfile import terminology_entry

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = logic.LoadTerminologyFromFile(str(TERM))
    assert context == json.loads(TERM.read_text())["SegmentationCategoryTypeContextName"]
    category = slicer.vtkSlicerTerminologyCategory()
    assert logic.GetNthCategoryInTerminology(context, 0, category)
    assert category.GetCodeValue() == "49755003" and category.GetShowAnatomy()
    ctype = slicer.vtkSlicerTerminologyType()
    assert logic.GetNthTypeInTerminologyCategory(context, category, 0, ctype)
    assert ctype.GetCodeValue() == "18115005"
    for artery, code in {"LM": "3227004", "LAD": "59438005", "LCX": "57396003", "RCA": "13647002"}.items():
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(terminology_entry(artery), entry)
        assert entry.GetTerminologyContextName() == context
        assert entry.GetTypeObject().GetCodeValue() == "18115005"
        assert entry.GetRegionObject().GetCodeValue() == code


# ----------------------------------------------------------------------------- batch script


def run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BATCH_SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_batch_script_scores_label_maps_and_exits_zero(tmp_path):
    from CoronaryCalciumDINOLib.io.volume import CTVolume, write_volume
    from CoronaryCalciumDINOLib.scoring import score

    studies, labels_dir, out = tmp_path / "in", tmp_path / "labels", tmp_path / "out"
    hu = np.full((4, 16, 16), 0.0, np.float32)
    hu[1, 4:8, 4:8] = 250.0  # 16 voxels of 1 mm2 at 250 HU: weight 2
    ct = CTVolume(hu=hu, spacing=(3.0, 1.0, 1.0))
    labels = np.zeros(hu.shape, np.uint8)
    labels[1, 4:8, 4:8] = 2  # LAD
    write_volume(hu, ct, studies / "s1.nrrd")
    write_volume(labels, ct, labels_dir / "s1.nrrd")
    proc = run_script("--input", str(studies), "--out", str(out), "--labels-dir", str(labels_dir))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "s1.json").read_text())
    assert report["arteries"]["LAD"]["agatston"] == pytest.approx(16 * 2 * 1.0)  # area x weight x (3 mm / 3 mm)
    assert report["total"]["agatston"] == pytest.approx(score(hu, labels, ct.spacing).total.agatston)
    assert (out / "summary.csv").is_file()


def test_batch_script_bad_input_exits_two(tmp_path):
    assert run_script("--out", str(tmp_path)).returncode == 2  # --input missing
    proc = run_script("--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--labels-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ccdino:") and "Traceback" not in proc.stderr


if __name__ == "__main__":
    if "--update-cmake" in sys.argv:
        update_cmake()
        print(f"updated {MODULE_CMAKE.relative_to(REPO)}")
