"""A built wheel in a fresh virtual environment: the core (``pip install .``) scores label
maps and the phantom without PyTorch and finds its packaged default bundle; with the ``ai``
extra it runs the quick start's command.

Both install packages with pip from the configured index (the pip cache makes reruns quick),
so they are slow tests. The ``[ai]`` one downloads PyTorch (gigabytes): it runs only when
``CCDINO_TEST_AI_WHEEL=1`` is set as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PHANTOM = ROOT / "Testing" / "Data" / "qrm-phantom-canon"

pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=1800, check=True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CCDINO_DEFAULT_BUNDLE", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: the build writes build/ and *.egg-info next to the sources, and
    # setuptools would pack files left in an old build/ by an earlier layout
    src = out / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    lib = Path("CoronaryCalciumDINO") / "CoronaryCalciumDINOLib"
    shutil.copytree(ROOT / lib, src / lib, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, src], cwd=out)
    (whl,) = out.glob("coronary_calcium_dino-*.whl")
    return whl


@pytest.fixture
def venv_dir(tmp_path):
    """A folder for a fresh virtual environment, removed after the test (hundreds of MB
    without the AI, gigabytes with it)."""
    path = tmp_path / "venv"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _fresh_venv(path: Path, requirement: str, cwd: Path) -> Path:
    venv.create(path, with_pip=True)
    bindir = path / ("Scripts" if os.name == "nt" else "bin")
    _run([bindir / "python", "-m", "pip", "install", "-q", requirement], cwd=cwd)
    return bindir


def _phantom_labels(path: Path):
    from CoronaryCalciumDINOLib.io import load_ct, write_volume
    from CoronaryCalciumDINOLib.scoring import score

    ct = load_ct(PHANTOM)
    labels = np.zeros(ct.shape, np.uint8)
    labels[20:24] = np.where(ct.hu[20:24] >= 130, 2, 0)  # the insert's slices as "LAD"
    write_volume(labels, ct, path)
    return score(ct.hu, labels, ct.spacing)


def test_core_wheel_scores_without_torch_and_finds_its_bundle(wheel, tmp_path, venv_dir):
    names = zipfile.ZipFile(wheel).namelist()
    bundle = [n for n in names if n.startswith("CoronaryCalciumDINOLib/bundles/ccdino-default/")]
    assert "CoronaryCalciumDINOLib/bundles/ccdino-default/manifest.json" in bundle and len(bundle) >= 5
    assert not [n for n in names if n.startswith("training/") or n.endswith(("/protocols.py", "/peft.py"))]
    bindir = _fresh_venv(venv_dir, str(wheel), tmp_path)
    py = bindir / "python"
    absent = _run([py, "-c", "import importlib.util as u; print([n for n in ('torch', 'timm', 'monai', 'torchvision') if u.find_spec(n)])"],
                  cwd=tmp_path)
    assert absent.stdout.strip() == "[]", "pip install . pulled in the AI packages"

    expected = _phantom_labels(tmp_path / "labels.nrrd")
    _run([bindir / "ccdino", "score", PHANTOM, "--labels", "labels.nrrd", "--json", "r.json", "--quiet"], cwd=tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["total"]["agatston"] == pytest.approx(expected.total.agatston, rel=1e-12)
    assert report["total"]["agatston"] > 0

    # the packaged default bundle is found (and verified) where the wheel put it
    found = _run([py, "-c", "from CoronaryCalciumDINOLib.models import bundle as b; print(b.resolve_bundle_path(None)); "
                  "print(b.verify_bundle(None)['name'])"], cwd=tmp_path)
    where, name = found.stdout.split()
    assert "site-packages" in where and name == "ccdino-default"

    # the AI without its extra: one line naming the extra, exit 2
    ai = _run([bindir / "ccdino", "score", PHANTOM, "--quiet"], cwd=tmp_path, check=False)
    assert ai.returncode == 2
    assert ai.stderr.strip().splitlines() == [
        "ccdino: error: the AI needs torch, timm, monai, safetensors, which are not installed: "
        "pip install 'coronary-calcium-dino[ai]' (or score a label map with --labels)"
    ]


@pytest.mark.skipif(os.environ.get("CCDINO_TEST_AI_WHEEL") != "1",
                    reason="downloads PyTorch (GBs); set CCDINO_TEST_AI_WHEEL=1 to run")
def test_ai_wheel_runs_the_quick_start(wheel, tmp_path, venv_dir):
    bindir = _fresh_venv(venv_dir, f"coronary-calcium-dino[ai] @ {wheel.as_uri()}", tmp_path)
    out = tmp_path / "out"
    _run([bindir / "ccdino", "score", PHANTOM, "--out", out, "--attention", out / "qrm-phantom-canon.attention.nrrd"],
         cwd=tmp_path)
    report = json.loads((out / "qrm-phantom-canon.json").read_text())
    assert report["model"]["name"] == "ccdino-default"
    assert len(report["slices"]) == 47
    for name in ("qrm-phantom-canon.csv", "qrm-phantom-canon.labels.nrrd", "qrm-phantom-canon.seg.nrrd",
                 "qrm-phantom-canon.attention.nrrd"):
        assert (out / name).is_file(), name
