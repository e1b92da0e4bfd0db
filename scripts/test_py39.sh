#!/usr/bin/env bash
# The core library under the Python of the oldest supported Slicer (5.8: Python 3.9.10),
# with the packages Slicer 5.8 bundles at the versions it bundles, and nothing else but
# pynrrd (the Slicer segmentation files; the module installs it with the other missing
# packages) and pytest. Creates .venv-py39/ if needed, installs from PyPI, then runs the
# import walk over every library module (tests/test_imports.py) and the core tests:
# scoring, I/O, reports (JSON/CSV, review flags), the command line on label maps, the
# attention maps kept quantised and the CPU threads of the networks.
#
# Not here: the AI (torch, timm, MONAI), the scene glue (slicer-core has wheels for
# Python >= 3.10 only) and the PNG report picture (matplotlib is not bundled).
# Extra arguments go to pytest. PYTHON39=/path/to/python3.9 names the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

is_py39() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' 2>/dev/null; }
PY39=${PYTHON39:-}
if [ -z "$PY39" ]; then
    for candidate in "$(command -v python3.9 || true)" "$HOME"/.pyenv/versions/3.9*/bin/python; do
        if is_py39 "$candidate"; then
            PY39=$candidate
            break
        fi
    done
fi
if ! is_py39 "$PY39"; then
    echo "test_py39.sh: error: no Python 3.9 found (set PYTHON39=/path/to/python3.9)" >&2
    exit 2
fi

# Slicer 5.8.0's bundled versions (SuperBuild/External_python-*.cmake, External_SimpleITK.cmake).
SLICER58_PACKAGES=(
    "numpy==1.26.4"
    "scipy==1.13.1"
    "pydicom==2.4.4"
    "pillow==10.3.0"
    "SimpleITK==2.3.1"
)
# what the module's first-use install adds for reading (CoronaryCalciumDINOLib/requirements.py CORE)
EXTRA_PACKAGES=("pynrrd>=1.0" "pytest>=7" "pylibjpeg>=2.0" "pylibjpeg-openjpeg>=2.0" "pylibjpeg-libjpeg>=2.1" "pyjpegls>=1.2")

VENV=.venv-py39
if [ ! -x "$VENV/bin/python" ]; then
    "$PY39" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${SLICER58_PACKAGES[@]}" "${EXTRA_PACKAGES[@]}"

CORE_TESTS=(
    tests/test_imports.py
    tests/test_scoring.py
    tests/test_phantom_scoring.py
    tests/test_io_volume.py
    tests/test_io_dicom.py
    tests/test_dicom_jpeg_lossless.py
    tests/test_value_checks.py
    tests/test_fuzz_reader.py
    tests/test_segfile.py
    tests/test_geometry.py
    tests/test_cli_score.py
    tests/test_metrics.py
    tests/test_review_flags.py
    tests/test_attention_codes.py
    tests/test_cpu_threads.py
)
echo "Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())') with Slicer 5.8's packages: ${SLICER58_PACKAGES[*]}"
PYTHONPATH=CoronaryCalciumDINO "$VENV/bin/python" -m pytest -p no:cacheprovider "${CORE_TESTS[@]}" "$@"
