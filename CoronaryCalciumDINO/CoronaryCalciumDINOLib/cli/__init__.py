"""The ``ccdino`` command line.

Each module of this package that defines ``register(subparsers)`` adds one subcommand;
``register`` calls ``set_defaults(func=run)``; :data:`_HELPERS` are the other modules. Heavy
imports (SciPy, SimpleITK, the pipeline, torch) happen inside ``run`` so that ``ccdino --help``
stays fast; this is the one place where the package imports its own modules lazily for speed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from .. import __version__
from ..errors import CCDinoError

#: Order in which subcommands are listed in ``--help``; others follow alphabetically.
_ORDER = ("score", "batch", "evaluate", "synth", "sheet", "coca")
#: Modules of this package that are helpers of the subcommands, not subcommands.
_HELPERS = ("ai", "common", "progress")
#: OpenMP threads that wait for work sleep instead of spinning (unless the environment says
#: otherwise): the command runs beside Slicer or other work, and a spinning thread takes a CPU
#: that another process, or the command's other thread, needs (on a busy 2-CPU machine the
#: detector took 0.5 s with spinning threads, 0.25 s with sleeping ones).
_OMP_WAIT_POLICY = "PASSIVE"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccdino",
        description="Coronary artery calcium scoring on CT (research use only; not a medical device).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in _HELPERS]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if "torch" not in sys.modules:  # read by OpenMP when torch loads it (see _OMP_WAIT_POLICY)
        os.environ.setdefault("OMP_WAIT_POLICY", _OMP_WAIT_POLICY)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CCDinoError as exc:
        print(f"ccdino: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ccdino: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
