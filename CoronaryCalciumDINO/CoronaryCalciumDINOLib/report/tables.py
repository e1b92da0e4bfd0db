"""JSON report and CSV score table.

JSON numbers are unrounded; rounding is for display only. The CSV table has one row per
metric and one column per artery (``LM``, ``LAD``, ``LCX``, ``RCA``) plus ``total``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from .. import __version__
from ..constants import ARTERIES, disclaimer
from ..errors import InputError
from ..scoring import ScoreResult

METRICS = ("agatston", "volume_mm3", "mass_mg", "lesions")


def build_report(result: ScoreResult, input_path: str, kvp: float | None = None, warnings=None, **extra) -> dict:
    """The report dict of the JSON contract (see README, "Report format")."""
    body = result.to_dict()
    params_kvp = body.pop("kvp")
    report = {
        "input": str(input_path),
        "spacing_mm": body.pop("spacing_mm"),
        "threshold_hu": body.pop("threshold_hu"),
        "kvp": params_kvp if params_kvp is not None else kvp,
    }
    report.update(body)
    report["warnings"] = list(warnings or [])
    report["software"] = {"name": "CoronaryCalciumDINO", "version": __version__}
    report["disclaimer"] = disclaimer(model_ran=extra.get("model") is not None)
    confidence = extra.pop("lesion_confidence", None)
    if confidence is not None and len(confidence) == len(report.get("lesions", [])):
        for lesion, conf in zip(report["lesions"], confidence):
            lesion["confidence"] = dict(conf)
    report.update(extra)
    check_finite(report)
    return report


def _non_finite(obj, where: str = ""):
    """Path of the first NaN/inf number in a JSON-like structure, or None."""
    import numpy as np

    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite(v, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fc" and not np.all(np.isfinite(obj)):
            return where
    elif isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return f"{where} = {float(obj)}"
    return None


def check_finite(report: dict) -> None:
    """A report never holds NaN or infinity: one-line :class:`InputError` naming the value
    (an input the checks of :mod:`..limits` let through would otherwise give a silent
    non-number)."""
    found = _non_finite(report)
    if found:
        raise InputError(f"the report would hold a non-finite number ({found}); the input gives no valid score")


def _atomic_write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        raise
    return path


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(report: dict, path: str | os.PathLike) -> Path:
    """Write a report as JSON (atomically: temporary file, then rename); never NaN/inf."""
    check_finite(report)
    return _atomic_write_text(Path(path), json.dumps(report, indent=2, default=_json_default, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file"):
    """Read a JSON file; a missing or malformed file is a one-line :class:`InputError`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{what} {p.name} is not valid JSON: {exc}") from None


def score_table_rows(report: dict) -> list[list]:
    """Rows ``[metric, LM, LAD, LCX, RCA, total]`` of a report (values unrounded, None kept)."""
    rows = []
    for metric in METRICS:
        row = [metric] + [report["arteries"][a][metric] for a in ARTERIES] + [report["total"][metric]]
        rows.append(row)
    return rows


def write_score_csv(report: dict, path: str | os.PathLike) -> Path:
    """CSV score table: header ``metric,LM,LAD,LCX,RCA,total``; empty cell for a null mass."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", *ARTERIES, "total"])
    for row in score_table_rows(report):
        w.writerow(["" if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in row])
    w.writerow(["risk_category", "", "", "", "", report["risk_category"]])
    w.writerow(["cac_drs", "", "", "", "", report["cac_drs"]])
    return _atomic_write_text(Path(path), buf.getvalue())


def format_summary(report: dict) -> str:
    """A short human-readable summary (rounded for display)."""
    lines = [f"{'':8}{'Agatston':>10}{'volume mm3':>12}{'mass mg':>10}{'lesions':>9}"]
    for name in (*ARTERIES, "total"):
        s = report["total"] if name == "total" else report["arteries"][name]
        mass = "-" if s["mass_mg"] is None else f"{s['mass_mg']:.1f}"
        lines.append(f"{name:8}{s['agatston']:>10.1f}{s['volume_mm3']:>12.1f}{mass:>10}{s['lesions']:>9d}")
    lines.append(f"risk category {report['risk_category']}   CAC-DRS {report['cac_drs']}")
    if "slices" in report:  # AI mode: what the model looked at and how sure it was
        slices = report["slices"]
        sel = sum(1 for s in slices if s.get("selected"))
        cands = sum(int(s.get("candidates", 0)) for s in slices)
        thr = report.get("threshold_hu", 130.0)
        line = (f"model: {cands} candidates (regions >= {thr:g} HU of >= 1 mm^2 in the heart field), "
                f"{sel} of {len(slices)} slices selected")
        conf = [les["confidence"]["calcium"] for les in report.get("lesions", [])
                if isinstance(les.get("confidence"), dict) and les["confidence"].get("calcium") is not None]
        if conf:
            line += f"; lesion confidence {min(conf):.2f}-{max(conf):.2f}"
        lines.append(line)
    return "\n".join(lines)
