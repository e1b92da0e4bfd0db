"""``python -m CoronaryCalciumDINOLib.cli``: the ``ccdino`` command (how the Slicer module runs it).

Once the AI has run, the process ends without tearing down its modules: after torch, timm
and MONAI were imported that teardown takes seconds (2.9 s measured on the 2-core machine
under load) and does nothing for the results, whose files are all written and closed when
the command returns. Output streams are flushed first; the exit code is the command's.
"""

from __future__ import annotations

import logging
import os
import sys

from . import main

code = main()
if "torch" in sys.modules:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
