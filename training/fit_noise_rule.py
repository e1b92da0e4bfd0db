"""Fit a bundle's noise rule (:class:`CoronaryCalciumDINOLib.pipeline.candidates.NoiseRule`)
on calibration studies.

    python -m training.fit_noise_rule --bundle runs/default-bundle/candidate \\
        --studies runs/default-bundle/calibration --out runs/default-bundle/noise_rule.json

The bundle runs without a rule on every calibration study (synthetic studies with labels,
never training or held-out studies). Each lesion it labels belongs to one candidate, whose
contrast over soft tissue (noise SDs), area and contrast on the neighbouring slices decide
whether a rule keeps it. For no rule
and every rule of a grid, the studies' totals without the lesions it drops give the power
of zero (calcium-free studies scored exactly 0) and the risk-category accuracy; the one
with the highest sum of the two is chosen (risk accuracy alone without calcium-free
studies), ties going to the one that drops the fewest lesions (then the lowest contrast,
then the smallest area), so a rule is installed only where it does better than none. The
output holds the rule, the best rows and the calibration figures without and with it.

``--split N`` also fits a rule on the first N studies alone and gives its figures on the
others: what a rule fitted on N studies does on studies it never saw, measured on
calibration studies only (a rule fitted on 100 of 0.6.4's calibration studies scored all 32
calcium-free ones among them 0, and 121 of the other 300's 133). ``--save-table`` keeps the
lesion table (the slow part: the bundle run on every study); ``--from-table`` fits from one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from CoronaryCalciumDINOLib.data.studies import load_study
from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.models.bundle import ModelBundle, load_bundle
from CoronaryCalciumDINOLib.pipeline import candidates as cd
from CoronaryCalciumDINOLib.pipeline import run_pipeline
from CoronaryCalciumDINOLib.pipeline.preprocess import canonical_flips
from CoronaryCalciumDINOLib.io.jsonfile import read_json
from CoronaryCalciumDINOLib.report import write_json
from CoronaryCalciumDINOLib.scoring import ScoringParams, risk_category, score

#: The grid searched: contrast over soft tissue (noise SDs) and area (mm^2) limits, and the
#: neighbour-slice contrast (noise SDs; 0 = not used).
CONTRAST_GRID = tuple(np.round(np.arange(2.0, 10.01, 0.25), 2))
AREA_GRID = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
NEIGHBOUR_GRID = (0.0, *np.round(np.arange(2.0, 12.01, 0.5), 2))


def lesion_table(bundle: ModelBundle, study_dirs, device: str = "cpu",
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Per calibration study: the reference total and, per lesion the bundle labels (without a
    noise rule), its Agatston and its candidate's contrast (noise SDs) and area (mm^2)."""
    bundle.manifest.pop("noise_rule", None)  # the lesions a rule would choose from
    rule = cd.NoiseRule()
    params = ScoringParams()
    out = []
    for i, d in enumerate(study_dirs):
        st = load_study(d, with_heart=False)
        if canonical_flips(st.ct.direction) != (False, False, False):
            raise InputError(f"{d}: calibration studies must be stored in the canonical axial layout")
        hu = np.asarray(st.ct.hu, dtype=np.float32)
        res = run_pipeline(st.ct, bundle, device=device, params=params)
        cands = cd.find_candidates(hu, st.ct.spacing, bundle.candidate_config)
        owner = cands.paint(np.arange(1, len(cands) + 1, dtype=np.int32)).ravel()
        contrast = rule.contrast_sd(cands.context)
        neighbour = rule.neighbour_sd(cands.context)
        area = np.exp(cands.context[:, cd.CONTEXT_INDEX["log_area_mm2"]])
        lesions = []
        for les, vox in zip(res.score.lesions, res.score.lesion_voxels):
            # a lesion is labelled from one candidate; it may reach past the heart field,
            # where no candidate is painted
            own = owner[vox]
            own = own[own > 0]
            if own.size == 0:
                raise InputError(f"{d}: a labelled lesion outside every candidate")
            k = int(np.bincount(own).argmax()) - 1
            lesions.append({"agatston": float(les.agatston), "contrast_sd": float(contrast[k]),
                            "area_mm2": float(area[k]), "neighbour_sd": float(neighbour[k])})
        ref = score(st.ct.hu, st.labels, st.ct.spacing, params)
        out.append({"study": Path(d).name, "reference_total": float(ref.total.agatston), "lesions": lesions})
        if log:
            log(f"calibration {i + 1}/{len(study_dirs)} {Path(d).name}: reference {ref.total.agatston:.1f}, "
                f"model {res.score.total.agatston:.1f}")
    return out


def outcome(table: list[dict], min_contrast_sd: float, min_area_mm2: float, min_neighbour_sd: float = 0.0) -> dict:
    """Power of zero, risk accuracy and dropped lesions of one rule on ``table``."""
    rule = cd.NoiseRule(min_contrast_sd, min_area_mm2, min_neighbour_sd=min_neighbour_sd)
    zero_ok, risk_ok, dropped, n_zero = 0, 0, 0, 0
    for s in table:
        les = s["lesions"]
        keep = rule.keeps([x["contrast_sd"] for x in les], [x["area_mm2"] for x in les],
                          [x.get("neighbour_sd", -np.inf) for x in les])
        total = float(sum(x["agatston"] for x, k in zip(les, keep) if k))
        dropped += int((~keep).sum())
        if s["reference_total"] == 0:
            n_zero += 1
            zero_ok += total == 0
        risk_ok += risk_category(total) == risk_category(s["reference_total"])
    return {"min_contrast_sd": float(min_contrast_sd), "min_area_mm2": float(min_area_mm2),
            "min_neighbour_sd": float(min_neighbour_sd), "power_of_zero": zero_ok / n_zero if n_zero else None, "zero_studies": n_zero,
            "risk_accuracy": risk_ok / len(table), "dropped_lesions": dropped}


def fit(table: list[dict]) -> dict:
    """The grid's best rule on ``table`` (see the module docstring) and the figures."""
    if not table:
        raise InputError("no calibration studies")
    # no rule (0, 0) competes too: a rule is installed only where it does better
    rows = [outcome(table, 0.0, 0.0)] + [outcome(table, k, a, n) for k in CONTRAST_GRID for a in AREA_GRID
                                         for n in NEIGHBOUR_GRID]
    rows.sort(key=lambda r: (-((r["power_of_zero"] or 0.0) + r["risk_accuracy"]), r["dropped_lesions"],
                             r["min_contrast_sd"], r["min_area_mm2"], r["min_neighbour_sd"]))
    best = rows[0]
    rule = cd.NoiseRule(best["min_contrast_sd"], best["min_area_mm2"], min_neighbour_sd=best["min_neighbour_sd"])
    return {"rule": rule.to_dict(), "studies": len(table), "without_rule": outcome(table, 0.0, 0.0),
            "with_rule": best, "best_rows": rows[:10]}


def check_split(n: int, n_studies: int) -> None:
    """A split must leave studies on both sides."""
    if not 0 < n < n_studies:
        raise InputError(f"--split {n}: needs 0 < N < the {n_studies} studies")


def split_check(table: list[dict], n: int) -> dict:
    """The rule fitted on ``table[:n]`` and its figures there and on ``table[n:]``, beside the
    figures there of the rule fitted on the whole table."""
    check_split(n, len(table))
    first, rest = table[:n], table[n:]
    r_first, r_all = fit(first)["rule"], fit(table)["rule"]

    def on(rule, part):
        return outcome(part, rule["min_contrast_sd"], rule["min_area_mm2"], rule["min_neighbour_sd"])

    return {"n_fit": n, "n_rest": len(rest), "rule_fitted_on_first": r_first,
            "first_rule_on_first": on(r_first, first), "first_rule_on_rest": on(r_first, rest),
            "rule_fitted_on_all": r_all, "all_rule_on_rest": on(r_all, rest)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.fit_noise_rule", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", help="bundle folder (its noise rule, if any, is ignored)")
    p.add_argument("--studies", type=Path, help="folder of labelled calibration study folders")
    p.add_argument("--out", required=True, type=Path, help="JSON file for the rule and the figures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--split", type=int, default=None, metavar="N",
                   help="also fit on the first N studies (in name order) and measure that rule on the others")
    p.add_argument("--save-table", type=Path, default=None, metavar="FILE", help="write the lesion table (JSON) here")
    p.add_argument("--from-table", type=Path, default=None, metavar="FILE",
                   help="fit from a lesion table written by --save-table (no --bundle / --studies)")
    args = p.parse_args(argv)
    if args.from_table is None and (args.bundle is None or args.studies is None):
        p.error("--bundle and --studies are needed (or --from-table)")
    if args.from_table is not None and (args.bundle or args.studies or args.save_table):
        p.error("--from-table fits from a saved table: no --bundle, --studies or --save-table with it")
    if args.split is not None and args.split < 1:
        p.error("--split N needs N >= 1")
    return args


def check_table(table) -> list[dict]:
    """``table`` as :func:`lesion_table` gives it, or a one-line :class:`InputError`."""
    ok = isinstance(table, list) and all(
        isinstance(s, dict) and isinstance(s.get("reference_total"), (int, float)) and isinstance(s.get("lesions"), list)
        and all(isinstance(x, dict) and {"agatston", "contrast_sd", "area_mm2"} <= set(x) for x in s["lesions"])
        for s in table)
    if not ok:
        raise InputError("the lesion table is not one written by --save-table (a list of studies, each with "
                         "reference_total and lesions of agatston, contrast_sd and area_mm2)")
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.from_table is not None:
            table = check_table(read_json(args.from_table, "lesion table"))
        else:
            dirs = sorted(d for d in args.studies.iterdir() if (d / "study.json").is_file())
            if args.split is not None:
                check_split(args.split, len(dirs))  # before the slow part
            table = lesion_table(load_bundle(args.bundle), dirs, args.device,
                                 lambda m: print(m, file=sys.stderr, flush=True))
            if args.save_table is not None:
                write_json(table, args.save_table)
        result = fit(table)
        if args.split is not None:
            result["split"] = split_check(table, args.split)
    except (InputError, OSError, ValueError) as e:
        print(f"fit_noise_rule: error: {e}", file=sys.stderr)
        return 2
    write_json(result, args.out)
    print(json.dumps({k: result[k] for k in ("rule", "without_rule", "with_rule", "split") if k in result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

