"""training.compare_pipelines: the side-by-side table reads both synthetic result formats and
the real-dev summaries, and refuses a malformed row."""

from __future__ import annotations

import json

import pytest

from training import compare_pipelines as cp


def _heldout(spec: float, zero: float) -> dict:
    agree = {a: {"icc_2_1": 0.5 + 0.1 * i} for i, a in enumerate(cp.ARTERIES)}
    return {"n_studies": 10, "slices": {"at_threshold": {"sensitivity": 0.99, "specificity": spec, "fp": 7}},
            "pipeline": {"agatston_agreement": agree, "risk": {"accuracy": 0.9}, "zero_studies": 4,
                         "zero_scored_zero": zero}}


def _real(k: int) -> dict:
    s = {"risk_category_right": {"k": k, "n": 5}, "arteries_ref_ge_50_within_0.5x_2x": {"k": 2, "n": 8},
         "arteries_ref_0_ai_below_10": {"k": 9, "n": 10}, "false_positive_agatston_on_calcium_free_scans": 1.5,
         "ai_agatston_on_the_right_artery_at_most": 0.456}
    ref = {a: 0.0 for a in cp.ARTERIES}
    scans = [{"scan": "1", "reference": ref, "ai": {**ref, "LAD": 1.5, "total": 1.5}},
             {"scan": "2", "reference": {**ref, "RCA": 9.0, "total": 9.0}, "ai": None}]
    return {"summary": s, "model": {"name": "m", "version": "1"}, "geometry": "as acquired", "scans": scans}


def test_table_from_both_synthetic_formats(tmp_path, capsys):
    built = tmp_path / "built.json"
    built.write_text(json.dumps({"metrics": {"heldout_synthetic": _heldout(0.95, 0.75)}}))
    evaluated = tmp_path / "evaluated.json"
    evaluated.write_text(json.dumps({"synthetic": {"A": _heldout(0.98, 1.0)}}))
    real = tmp_path / "real.json"
    real.write_text(json.dumps(_real(4)))
    out = tmp_path / "t"
    assert cp.main(["--row", f"first={built},{real},-", "--row", f"second={evaluated},-,{real}", "--out", str(out),
                    "--title", "T"]) == 0
    md = (out.with_suffix(".md")).read_text().splitlines()
    first = next(line for line in md if line.startswith("| first |"))
    second = next(line for line in md if line.startswith("| second |"))
    assert "0.990 / 0.950" in first and "| 3/4 |" in first and "| 4/5 | 2/8 | 1.5 | 46 % | - | - | - | - |" in first
    assert "0.990 / 0.980" in second and "| 4/4 |" in second and "| - | - | - | - | 4/5 | 2/8 | 1.5 | 46 % |" in second
    assert "0.500 / 0.600 / 0.700 / 0.800 / 0.900" in first
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["rows"]["first"]["synthetic"]["calcium_free_scored_0"] == 3
    assert doc["rows"]["second"]["real"] is None and doc["rows"]["second"]["real_heart_centred"]["risk_right"] == [4, 5]
    text = "\n".join(md)
    assert "Real dev set, as acquired" in text and "Real dev set, heart-centred" in text
    assert "| reference | 0 / 0 / 0 / 0 | 0 / 0 / 0 / 9 |" in md and "| first | 0 / 2 / 0 / 0 | - / - / - / - |" in md
    per_scan = doc["rows"]["first"]["real"]["per_scan"]
    assert per_scan["1"]["LAD"] == [0.0, 1.5] and per_scan["2"]["RCA"] == [9.0, None]


@pytest.mark.parametrize("row", ["no-equals", "x=a.json,b.json", "x=-,b.json,c.json", "=a.json,b.json,c.json"])
def test_a_malformed_row_is_refused(row, tmp_path):
    with pytest.raises(SystemExit, match="--row"):
        cp.main(["--row", row, "--out", str(tmp_path / "t")])


def test_an_unknown_result_file_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="neither"):
        cp.main(["--row", f"x={bad},-,-", "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="cannot read it as JSON"):
        cp.main(["--row", f"x={tmp_path / 'missing.json'},-,-", "--out", str(tmp_path / "t")])
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"synthetic": {"A": _heldout(0.98, 1.0)}}))
    with pytest.raises(SystemExit, match="not an evaluate_real result"):
        cp.main(["--row", f"x={good},{good},-", "--out", str(tmp_path / "t")])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**_real(4), "model": {"name": "n", "version": "2"}}))
    real = tmp_path / "real.json"
    real.write_text(json.dumps(_real(4)))
    with pytest.raises(SystemExit, match="different bundles"):
        cp.main(["--row", f"x={good},{real},{other}", "--out", str(tmp_path / "t")])


def test_no_calcium_free_study_and_a_dotted_out_name(tmp_path):
    h = _heldout(0.98, None)
    h["pipeline"]["zero_studies"] = 0
    syn = tmp_path / "s.json"
    syn.write_text(json.dumps({"synthetic": {"A": h}, "bundles": {"A": {"name": "m", "version": "1"}}}))
    assert cp.main(["--row", f"x={syn},-,-", "--out", str(tmp_path / "cmp-0.6")]) == 0
    md = (tmp_path / "cmp-0.6.md").read_text()
    assert "| 0.90 | - |" in md and "x: m 1" in md and (tmp_path / "cmp-0.6.json").is_file()
