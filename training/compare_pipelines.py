"""Whole-pipeline figures of several bundles side by side: synthetic held-out and real dev set.

    python -m training.compare_pipelines \\
        --row "DINO-LG=SYNTH.json,REAL.json,REAL-HC.json" --row "...=..." \\
        --out training/results/ssl-methods-pipeline [--title T] [--note FILE]

Each ``--row`` is a label and three result files of one bundle, all measured by the same
pipeline:

* the synthetic held-out evaluation: the ``*-metrics.json`` of
  :mod:`training.build_default_bundle` (its ``heldout_synthetic``) or the JSON of
  ``ccdino evaluate --synthetic-seeds`` (its bundle ``A``);
* ``training/evaluate_real.py`` on the real dev set as acquired, and with
  ``--heart-centred`` (either may be ``-``: not measured).

Writes ``OUT.json`` (the figures) and ``OUT.md`` (one table, one row per bundle; ``--note``
adds a markdown file's text above the table). Nothing is measured here: the figures are
read from the files, so the table says exactly what those runs printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ARTERIES = ("LM", "LAD", "LCX", "RCA", "total")


def _read(path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(d, dict):
        raise SystemExit(f"{path}: not a result file (a JSON object is expected)")
    return d


def synthetic_figures(path: Path) -> dict:
    """Slice sensitivity / specificity, per-artery ICC(2,1), risk accuracy and calcium-free
    studies scored 0 from a synthetic held-out result file (either format), and its bundle."""
    d = _read(path)
    try:
        if "metrics" in d:
            h, model = d["metrics"]["heldout_synthetic"], Path(d.get("bundle", "?")).name
        elif "synthetic" in d:
            h, b = d["synthetic"]["A"], d.get("bundles", {}).get("A", {})
            model = f"{b.get('name', '?')} {b.get('version', '')}".strip()
        else:
            raise SystemExit(f"{path}: neither a build_default_bundle metrics file nor a ccdino evaluate result")
        return _synthetic(h, model)
    except (KeyError, TypeError) as e:
        raise SystemExit(f"{path}: a synthetic result without {e}") from None


def _synthetic(h: dict, model: str) -> dict:
    at, p = h["slices"]["at_threshold"], h["pipeline"]
    zero = p["zero_scored_zero"]
    return {
        "model": model,
        "studies": h["n_studies"],
        "slice_sensitivity": at["sensitivity"],
        "slice_specificity": at["specificity"],
        "false_positive_slices": at["fp"],
        "icc": {a: p["agatston_agreement"][a]["icc_2_1"] for a in ARTERIES},
        "risk_accuracy": p["risk"]["accuracy"],
        "calcium_free": p["zero_studies"],
        "calcium_free_scored_0": None if zero is None else round(zero * p["zero_studies"]),
    }


def real_figures(path) -> dict | None:
    """The summary of an ``evaluate_real`` result file (None for ``-``)."""
    if str(path) == "-":
        return None
    d = _read(path)
    try:
        return _real(d)
    except (KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not an evaluate_real result (no {e})") from None


def _real(d: dict) -> dict:
    s = d["summary"]
    return {
        "model": f"{d['model']['name']} {d['model']['version']}",
        "geometry": d["geometry"],
        "risk_right": [s["risk_category_right"]["k"], s["risk_category_right"]["n"]],
        "arteries_within_0.5x_2x": [s["arteries_ref_ge_50_within_0.5x_2x"]["k"], s["arteries_ref_ge_50_within_0.5x_2x"]["n"]],
        "ref_0_below_10": [s["arteries_ref_0_ai_below_10"]["k"], s["arteries_ref_0_ai_below_10"]["n"]],
        "false_positive_on_calcium_free": s["false_positive_agatston_on_calcium_free_scans"],
        "right_artery_at_most": s["ai_agatston_on_the_right_artery_at_most"],
        # per scan and artery: [reference, AI] (AI None where the scan was not scored)
        "per_scan": {sc["scan"]: {a: [sc["reference"][a], (sc.get("ai") or {}).get(a)] for a in ARTERIES}
                     for sc in d["scans"]},
    }


def parse_row(text: str) -> tuple[str, list[str]]:
    label, sep, files = text.partition("=")
    parts = [p.strip() for p in files.split(",")]
    if not sep or not label.strip() or len(parts) != 3 or not parts[0] or parts[0] == "-":
        raise SystemExit(f"--row {text!r}: give LABEL=SYNTHETIC.json,REAL.json,REAL-HEART-CENTRED.json "
                         "(a real file may be -)")
    return label.strip(), parts


def _f(v, nd=3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _kn(v) -> str:
    return "-" if v is None else f"{v[0]}/{v[1]}"


def _real_cells(r: dict | None) -> list[str]:
    if r is None:
        return ["-"] * 4
    return [_kn(r["risk_right"]), _kn(r["arteries_within_0.5x_2x"]), f"{r['false_positive_on_calcium_free']:.1f}",
            f"{100 * r['right_artery_at_most']:.0f} %" if r["right_artery_at_most"] is not None else "-"]


def markdown(rows: dict, title: str, note: str = "") -> str:
    head = ("| bundle | synthetic slice sens / spec | ICC LM / LAD / LCX / RCA / total | synthetic risk accuracy | "
            "calcium-free scored 0 | real: risk right | real: arteries 0.5-2x | real: FP on calcium-free | "
            "real: right artery at most | heart-centred: risk right | heart-centred: arteries 0.5-2x | "
            "heart-centred: FP on calcium-free | heart-centred: right artery at most |")
    lines = [f"# {title}", ""]
    if note:
        lines += [note.rstrip(), ""]
    lines += [head, "|" + "---|" * head.count(" | ") + "---|"]
    for label, r in rows.items():
        s = r["synthetic"]
        lines.append(
            f"| {label} | {_f(s['slice_sensitivity'])} / {_f(s['slice_specificity'])} | "
            + " / ".join(_f(s["icc"][a]) for a in ARTERIES)
            + f" | {_f(s['risk_accuracy'], 2)} | "
            + ("-" if s["calcium_free_scored_0"] is None else f"{s['calcium_free_scored_0']}/{s['calcium_free']}") + " | "
            + " | ".join(_real_cells(r["real"]) + _real_cells(r["real_heart_centred"])) + " |")
    lines += ["", "Bundles as the files name them: " + "; ".join(
        f"{label}: " + ", ".join(m for m in [r["synthetic"]["model"]] + [r[k]["model"] for k in ("real", "real_heart_centred")
                                                                         if r[k] is not None])
        for label, r in rows.items())]
    for key, name in (("real", "as acquired"), ("real_heart_centred", "heart-centred")):
        lines += _per_artery_table(rows, key, name)
    lines += ["", "Sources (their figures are copied into the JSON next to this file): "
              + "; ".join(f"{label}: " + ", ".join(f"`{p}`" for p in r["files"])
                                          for label, r in rows.items()), ""]
    return "\n".join(lines)


def _per_artery_table(rows: dict, key: str, name: str) -> list[str]:
    """Per scan, the points of LM / LAD / LCX / RCA: the reference, then each bundle's AI."""
    measured = {label: r[key] for label, r in rows.items() if r[key] is not None}
    if not measured:
        return []
    scans = list(next(iter(measured.values()))["per_scan"])
    ref = next(iter(measured.values()))["per_scan"]

    def cells(per_scan, i):
        return [" / ".join("-" if per_scan.get(sc, {}).get(a, [None, None])[i] is None
                           else f"{per_scan[sc][a][i]:.0f}" for a in ARTERIES[:4]) for sc in scans]

    out = ["", f"Real dev set, {name}: Agatston points per scan, LM / LAD / LCX / RCA", "",
           "| | " + " | ".join(f"scan {sc}" for sc in scans) + " |", "|---|" + "---|" * len(scans),
           "| reference | " + " | ".join(cells(ref, 0)) + " |"]
    out += [f"| {label} | " + " | ".join(cells(r["per_scan"], 1)) + " |" for label, r in measured.items()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.compare_pipelines", description=__doc__.splitlines()[0])
    ap.add_argument("--row", action="append", required=True, help="LABEL=SYNTHETIC.json,REAL.json,REAL-HC.json")
    ap.add_argument("--out", required=True, help="write OUT.json and OUT.md")
    ap.add_argument("--title", default="Whole-pipeline figures side by side")
    ap.add_argument("--note", type=Path, default=None, help="markdown put above the table")
    args = ap.parse_args(argv)
    rows = {}
    for text in args.row:
        label, (syn, real, hc) = parse_row(text)
        if label in rows:
            raise SystemExit(f"--row {label!r} given twice")
        rows[label] = {"files": [syn, real, hc], "synthetic": synthetic_figures(Path(syn)),
                       "real": real_figures(real), "real_heart_centred": real_figures(hc)}
        real_models = {r["model"] for r in (rows[label]["real"], rows[label]["real_heart_centred"]) if r is not None}
        if len(real_models) > 1:
            raise SystemExit(f"--row {label!r}: its real results come from different bundles: {sorted(real_models)}")
    out = Path(args.out)
    js, md = out.parent / (out.name + ".json"), out.parent / (out.name + ".md")
    note = args.note.read_text() if args.note else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps({"title": args.title, "rows": rows}, indent=2) + "\n")
    md.write_text(markdown(rows, args.title, note))
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
