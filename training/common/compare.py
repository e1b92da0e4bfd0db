"""Side-by-side table of model variants (DINO, DINO-LG, multi-view, DINOv2, location ...).

Input: one results JSON per variant, as written by ``training.evaluate_protocols``,
optionally with a ``"pipeline"`` entry holding the whole pipeline's risk-category
agreement. Pipeline results may also be passed separately per variant; accepted forms:
a :func:`.pipeline_eval.summarise` result, ``{"risk": risk_metrics(...)}`` or a
:func:`.metrics.risk_metrics` result.

Columns per variant:

* slice sensitivity / specificity of the linear detector on the test split, at the
  threshold chosen on validation for the target sensitivity (``at_val_threshold``; at 0.5
  when the results lack it), and its test AUROC;
* weighted-kNN test accuracy at one k (20 by default, as in DINO) on the linear probe's
  selected feature set;
* the few-shot curve: mean +- sd test AUROC for each K (patients per class);
* pipeline risk-category accuracy (and, when the pipeline results hold it, the
  "UNET alone" baseline's, segmenting every slice).

:func:`build_comparison` returns a JSON-ready dict, :func:`to_markdown` renders it and
:func:`write_comparison` writes both. Run as a module to build the table from files::

    python -m training.common.compare DINO=dino.json DINO-LG=dino_lg.json \\
        --md comparison.md --json comparison.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

from CoronaryCalciumDINOLib.errors import CCDinoError, InputError
from CoronaryCalciumDINOLib.io.atomic import write_text_atomic
from CoronaryCalciumDINOLib.io.jsonfile import read_json

#: Canonical display order; other variants follow in the order given.
VARIANT_ORDER: tuple[str, ...] = (
    "DINO", "DINO-LG", "DINO-LG+multi-view", "DINOv2", "DINOv2+LG", "DINO-LG+location",
)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _risk_accuracy(pipeline, mode: str = "pipeline") -> float | None:
    """Risk accuracy from a :func:`.pipeline_eval.summarise` result (``mode`` = ``"pipeline"``
    or ``"unet_all_slices"``), a ``{"risk": ...}`` dict or a :func:`.metrics.risk_metrics` result."""
    if not isinstance(pipeline, Mapping):
        return None
    if isinstance(pipeline.get(mode), Mapping):
        return _get(pipeline, mode, "risk", "accuracy")
    if mode != "pipeline":
        return None
    acc = _get(pipeline, "risk", "accuracy")
    return acc if acc is not None else pipeline.get("accuracy")


def variant_row(name: str, results: Mapping, pipeline: Mapping | None = None, knn_k: int = 20) -> dict:
    """One table row from a variant's results (missing parts stay None)."""
    pipe = pipeline if pipeline is not None else results.get("pipeline")
    test = _get(results, "linear", "test") or {}
    at = test.get("at_val_threshold") or _get(test, "slice", "at_threshold") or {}
    feature_set = _get(results, "linear", "selected", "features")
    knn = results.get("knn") or {}
    knn_set = feature_set if feature_set in knn else (next(iter(knn)) if knn else None)
    knn_acc = _get(knn, knn_set, "per_k", str(knn_k), "accuracy") if knn_set else None
    curve = {}
    for e in _get(results, "fewshot", "curve") or []:
        curve[str(e["k"])] = {"mean": e.get("auroc_mean"), "sd": e.get("auroc_sd")}
    return {
        "variant": name,
        "slice_threshold": at.get("threshold"),
        "slice_sensitivity": at.get("sensitivity"),
        "slice_specificity": at.get("specificity"),
        "slice_auroc": test.get("auroc"),
        "linear_features": feature_set,
        "knn_k": int(knn_k),
        "knn_features": knn_set,
        "knn_accuracy": knn_acc,
        "few_shot": curve,
        "risk_accuracy": _risk_accuracy(pipe),
        "risk_accuracy_unet_all_slices": _risk_accuracy(pipe, "unet_all_slices"),
    }


def _ordered(names: Sequence[str]) -> list[str]:
    known = [v for v in VARIANT_ORDER if v in names]
    return known + [v for v in names if v not in VARIANT_ORDER]


def build_comparison(results: Mapping[str, Mapping], pipeline: Mapping[str, Mapping] | None = None,
                     knn_k: int = 20) -> dict:
    """The comparison table of ``{variant: results}`` (``pipeline``: ``{variant: risk results}``)."""
    if not results:
        raise InputError("no variant results to compare")
    pipeline = pipeline or {}
    rows = [variant_row(n, results[n], pipeline.get(n), knn_k) for n in _ordered(list(results))]
    ks = sorted({int(k) for r in rows for k in r["few_shot"]})
    return {"knn_k": int(knn_k), "few_shot_ks": ks, "rows": rows}


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def to_markdown(table: Mapping) -> str:
    """Two markdown tables: the detector / kNN / risk summary, then the few-shot curve."""
    k = table["knn_k"]
    unet = any(r.get("risk_accuracy_unet_all_slices") is not None for r in table["rows"])
    head = f"| variant | slice sensitivity | slice specificity | slice AUROC | kNN accuracy (k={k}) | risk accuracy |"
    lines = [head + (" risk accuracy, UNET alone |" if unet else ""), "|---|---|---|---|---|---|" + ("---|" if unet else "")]
    for r in table["rows"]:
        line = (f"| {r['variant']} | {_fmt(r['slice_sensitivity'])} | {_fmt(r['slice_specificity'])} | "
                f"{_fmt(r['slice_auroc'])} | {_fmt(r['knn_accuracy'])} | {_fmt(r['risk_accuracy'])} |")
        lines.append(line + (f" {_fmt(r.get('risk_accuracy_unet_all_slices'))} |" if unet else ""))
    ks = table["few_shot_ks"]
    if ks:
        lines += ["", "Few-shot test AUROC (mean ± sd over seeds) by K patients per class:", "",
                  "| variant | " + " | ".join(f"K={x}" for x in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for r in table["rows"]:
            cells = []
            for x in ks:
                e = r["few_shot"].get(str(x))
                if not e or e["mean"] is None:
                    cells.append("n/a")
                else:
                    cells.append(f"{e['mean']:.3f} ± {_fmt(e['sd'])}")
            lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass overwrite to replace it")
    write_text_atomic(path, text)


def write_comparison(table: Mapping, md_path: str | Path | None = None, json_path: str | Path | None = None,
                     overwrite: bool = False) -> None:
    """Write the table as markdown and / or JSON (refuses to replace files unless ``overwrite``)."""
    if md_path is not None:
        _write_text(Path(md_path), to_markdown(table), overwrite)
    if json_path is not None:
        _write_text(Path(json_path), json.dumps(table, indent=2) + "\n", overwrite)


def load_results(specs: Sequence[str]) -> dict[str, dict]:
    """``["NAME=path.json", "path.json", ...]`` -> ``{variant: results}``.

    Without ``NAME=`` the variant is the file's ``"variant"`` entry, else its stem.
    """
    out: dict[str, dict] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        p = Path(path if sep else spec)
        data = read_json(p, "results file")
        if not isinstance(data, dict):
            raise InputError(f"results file {p.name} does not hold a JSON object")
        key = name if sep else (data.get("variant") or p.stem)
        if key in out:
            raise InputError(f"variant {key!r} given twice")
        out[key] = data
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="compare", description="Side-by-side table of model variants.")
    p.add_argument("results", nargs="+", help="NAME=results.json (or results.json with a 'variant' entry)")
    p.add_argument("--pipeline", nargs="*", default=[], help="NAME=pipeline_risk.json per variant")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        table = build_comparison(load_results(args.results), load_results(args.pipeline), args.knn_k)
        write_comparison(table, args.md, args.json, args.overwrite)
    except CCDinoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
