"""Headless batch scoring inside 3D Slicer.

    Slicer --no-splash --no-main-window --python-script ccdino_batch_slicer.py \
        --input STUDIES_DIR --out OUT_DIR [--device auto|cpu|cuda] [--bundle PATH]
        [--labels-dir DIR] [--shard I/N] [--overwrite] [--kvp auto|N]
        [--install-dependencies]

Scores every study of STUDIES_DIR with the library's batch runner
(``CoronaryCalciumDINOLib.batch.run_batch``): per study OUT/<study>.seg.nrrd, .png and
.json, and OUT/summary.csv. Nothing asks questions: missing Python packages are an error
unless ``--install-dependencies`` is given. Exit status: 0 all studies scored, 1 some
studies failed (see the summary), 2 bad arguments or missing dependencies, 3 an unexpected
error (its traceback on stderr).

The script always ends with ``sys.exit(status)``, whatever happens: Slicer started with
``--no-main-window --python-script`` exits only then (an uncaught exception would leave a
windowless Slicer running).

The script also runs with any Python that has the library's dependencies (e.g.
``PythonSlicer``), since it needs no Slicer scene.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Exit status of an unexpected error.
EXIT_UNEXPECTED = 3


def parse_args(argv):
    """The script's own options; everything else goes to ``ccdino batch`` unchanged."""
    p = argparse.ArgumentParser(
        prog="ccdino_batch_slicer.py",
        description="CoronaryCalciumDINO batch scoring (headless Slicer). Options other than "
        "these are those of 'ccdino batch' (--device, --bundle, --shard, --overwrite, --kvp, ...).",
    )
    p.add_argument("--input", required=True, help="folder of studies (DICOM sub-folders or NIfTI/NRRD/MHA files)")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--labels-dir", default=None, help="score these label maps instead of running the AI")
    p.add_argument("--install-dependencies", action="store_true", help="pip-install missing packages (torch via PyTorchUtils in Slicer)")
    return p.parse_known_args(argv)


def missing_packages(need_ai: bool):
    """Import names of the library's requirements (:mod:`CoronaryCalciumDINOLib.requirements`)
    that are not installed; the AI's only when ``need_ai``."""
    from CoronaryCalciumDINOLib import requirements

    return requirements.missing(ai=need_ai)


def install_dependencies(missing):
    """Install missing packages non-interactively (inside Slicer only), as the module's first
    Compute does: torch through PyTorchUtils, then the others with that torch pinned as a
    pip constraint (so that no dependency replaces the build PyTorchUtils chose)."""
    import tempfile

    import slicer  # noqa: F401 - only inside Slicer

    from CoronaryCalciumDINOLib import requirements

    if "torch" in missing:
        import PyTorchUtils

        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirements.TORCH_VERSION) is None:
            raise RuntimeError("PyTorch could not be installed")
    wanted = requirements.pip_requirements(missing)
    if wanted:
        with tempfile.TemporaryDirectory() as folder:
            constraints = os.path.join(folder, "constraints.txt")
            with open(constraints, "w") as f:
                f.write("".join(line + "\n" for line in requirements.torch_constraints()))
            slicer.util.pip_install([*wanted, "-c", constraints])


def main(argv) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args, batch_options = parse_args(argv)
    except SystemExit as exc:  # argparse: bad arguments or --help
        return 0 if not exc.code else 2
    if MODULE_DIR not in sys.path:
        sys.path.insert(0, MODULE_DIR)
    missing = missing_packages(need_ai=args.labels_dir is None)
    if missing:
        if not args.install_dependencies:
            print(f"ccdino: missing Python packages: {', '.join(missing)} "
                  "(open the module once in Slicer and press Compute, or pass --install-dependencies)", file=sys.stderr)
            return 2
        try:
            install_dependencies(missing)
        except Exception as exc:  # noqa: BLE001 - reported as one line
            print(f"ccdino: installing dependencies failed: {exc}", file=sys.stderr)
            return 2

    from CoronaryCalciumDINOLib.cli import main as ccdino

    command = ["batch", args.input, "--out", args.out, *batch_options]
    if args.labels_dir:
        command += ["--labels-dir", args.labels_dir]
    return ccdino(command)


def exit_status(code) -> int:
    """The process exit status of a ``SystemExit`` code (None: 0; a message: printed, 2)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 2


def run(argv) -> int:
    """:func:`main`, with any exception turned into an exit status (traceback on stderr)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exit_status(exc.code)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt included: never left running
        traceback.print_exc()
        print(f"ccdino: unexpected error: {exc!r}", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    status = EXIT_UNEXPECTED
    try:
        status = run(sys.argv[1:])
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not prevent the exit
                pass
        sys.exit(status)
