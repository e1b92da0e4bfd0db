"""JSON report and CSV score table.

JSON numbers are unrounded; rounding is for display only. The CSV table has one row per
metric and one column per artery (``LM``, ``LAD``, ``LCX``, ``RCA``) plus ``total``.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from .. import __version__
from ..constants import ARTERIES, disclaimer
from ..io.atomic import write_text_atomic
from ..io.jsonfile import check_finite, read_json, write_json  # noqa: F401 - the report's JSON writer (and reader)
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
    return write_text_atomic(path, buf.getvalue())


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
    for flag in report.get("review_flags") or []:  # report/flags.py: when the study needs a human look
        lines.append(f"Review: {flag['message']}")
    return "\n".join(lines)
