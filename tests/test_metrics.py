"""Evaluation metrics against values derived by hand (derivations in the comments)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.evaluation import metrics as M

# ----------------------------------------------------------------------------- slice metrics

# 3 positives, 4 negatives.
Y7 = [1, 1, 1, 0, 0, 0, 0]
P7 = [0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.5]


def test_confusion_at_hand_example():
    # t = 0.5 -> predicted positive: 0.9, 0.6 (true), 0.7, 0.5 (false) -> TP 2, FP 2;
    # 0.2 missed -> FN 1; 0.3, 0.1 -> TN 2.
    c = M.confusion_at(Y7, P7, 0.5)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 2, 2, 1)
    assert c["sensitivity"] == pytest.approx(2 / 3)
    assert c["specificity"] == pytest.approx(0.5)
    assert c["fn_rate"] == pytest.approx(1 / 3)
    assert c["fp_rate"] == pytest.approx(0.5)
    assert c["precision"] == pytest.approx(0.5)
    assert c["npv"] == pytest.approx(2 / 3)
    assert c["accuracy"] == pytest.approx(4 / 7)


def test_confusion_rates_undefined_without_positives():
    c = M.confusion_at([0, 0], [0.2, 0.8], 0.5)
    assert c["sensitivity"] is None and c["fn_rate"] is None
    assert c["specificity"] == pytest.approx(0.5)


def test_auroc_perfect_reversed_ties():
    y = [0, 0, 0, 1, 1]
    assert M.auroc(y, [0.1, 0.2, 0.3, 0.8, 0.9]) == 1.0
    assert M.auroc(y, [0.9, 0.8, 0.7, 0.2, 0.1]) == 0.0
    assert M.auroc(y, [0.5] * 5) == 0.5


def test_auroc_hand_examples():
    # Pairs (pos, neg): 0.35 beats 0.1 only; 0.8 beats both -> 3 of 4 pairs.
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # pos {0.35, 0.8, 0.5}, neg {0.1, 0.4, 0.5}: 0.35 -> 1; 0.8 -> 3; 0.5 -> 1 + 1 + 0.5 (tie)
    # = 6.5 of 9 pairs.
    assert M.auroc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.5, 0.5]) == pytest.approx(6.5 / 9)


def test_auroc_one_class_is_none_with_reason():
    assert M.auroc([1, 1, 1], [0.2, 0.5, 0.9]) is None
    m = M.slice_metrics([0, 0, 0], [0.2, 0.5, 0.9])
    assert m["auroc"] is None and m["youden_threshold"] is None
    assert m["auprc"] is None and m["sensitivity_threshold"] is None
    assert any("one class" in n for n in m["notes"])


def test_average_precision_hand_examples():
    # Descending: 0.8 (pos) P=1 R=1/2; 0.4 (neg); 0.35 (pos) P=2/3 R=1.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    # 0.9 pos: P=1, R=1/3; 0.8 neg; 0.7 neg; 0.6 (two tied positives enter together):
    # TP=3, FP=2, P=3/5, R=1.  AP = 1/3 * 1 + 2/3 * 3/5 = 11/15.
    assert M.average_precision([1, 0, 0, 1, 1], [0.9, 0.8, 0.7, 0.6, 0.6]) == pytest.approx(11 / 15)
    assert M.average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0


def test_youden_and_sensitivity_thresholds():
    # J(t) = TP/3 - FP/4 for t in the observed values:
    # 0.1: 1-1=0; 0.2: 1-3/4; 0.3: 2/3-3/4; 0.5: 2/3-1/2; 0.6: 2/3-1/4 = 5/12 (max);
    # 0.7: 1/3-1/4; 0.9: 1/3.
    assert M.youden_threshold(Y7, P7) == pytest.approx(0.6)
    # Sensitivity >= 0.9 with 3 positives needs all 3 -> the smallest positive, 0.2.
    assert M.threshold_for_sensitivity(Y7, P7, 0.9) == pytest.approx(0.2)
    # >= 0.6 needs ceil(1.8) = 2 -> second largest positive, 0.6.
    assert M.threshold_for_sensitivity(Y7, P7, 0.6) == pytest.approx(0.6)
    m = M.slice_metrics(Y7, P7, threshold=0.5)
    assert m["n"] == 7 and m["n_positive"] == 3
    assert m["at_threshold"]["tp"] == 2
    # hand: pos {0.9, 0.6, 0.2} vs neg {0.7, 0.3, 0.1, 0.5}: 0.9 beats 4, 0.6 beats
    # 0.3, 0.1, 0.5, 0.2 beats 0.1 -> 4 + 3 + 1 = 8 of 12 pairs
    assert m["auroc"] == pytest.approx(8 / 12)


@pytest.mark.parametrize("bad", [([], []), ([0, 1], [0.5]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1, float("nan")])])
def test_slice_metrics_bad_input(bad):
    with pytest.raises(InputError):
        M.slice_metrics(*bad)


# ----------------------------------------------------------------------------- agreement


# Shrout & Fleiss (1979), "Intraclass correlations: uses in assessing rater reliability",
# Psychological Bulletin 86(2):420-428, Table 2: 6 targets rated by 4 judges. The paper
# reports ICC(1,1) = .17, ICC(2,1) = .29, ICC(3,1) = .71 and the mean squares
# BMS = 11.24, WMS = 6.26, JMS = 32.49, EMS = 1.02 (Table 3).
SHROUT_FLEISS = [
    [9, 2, 5, 8],
    [6, 1, 3, 2],
    [8, 4, 6, 8],
    [7, 1, 2, 6],
    [10, 5, 6, 9],
    [6, 2, 4, 7],
]


def test_icc_shrout_fleiss_table():
    bms, wms, jms, ems, n, k = 11.24, 6.26, 32.49, 1.02, 6, 4
    from_ms = {
        "1,1": (bms - wms) / (bms + (k - 1) * wms),  # 0.1659
        "2,1": (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n),  # 0.2897
        "3,1": (bms - ems) / (bms + (k - 1) * ems),  # 0.7147
    }
    published = {"1,1": 0.17, "2,1": 0.29, "3,1": 0.71}
    for form in ("1,1", "2,1", "3,1"):
        v = M.icc(SHROUT_FLEISS, form)
        assert v == pytest.approx(published[form], abs=0.005)
        assert v == pytest.approx(from_ms[form], abs=0.002)  # mean squares are rounded


def test_icc_identical_and_constant():
    x = np.array([1.0, 5.0, 2.0, 9.0])
    assert M.icc(np.stack([x, x], 1)) == pytest.approx(1.0)
    assert M.icc(np.ones((4, 2))) is None
    # A constant offset hurts absolute agreement (2,1) but not consistency (3,1).
    assert M.icc(np.stack([x, x + 3], 1), "3,1") == pytest.approx(1.0)
    assert M.icc(np.stack([x, x + 3], 1), "2,1") < 0.9
    with pytest.raises(InputError):
        M.icc([[1, 2]])
    with pytest.raises(InputError):
        M.icc(SHROUT_FLEISS, "2,k")


def test_bland_altman_mae_pearson_known():
    ref = np.array([10.0, 20.0, 30.0, 40.0])
    pred = ref + np.array([2.0, 4.0, 2.0, 4.0])
    ba = M.bland_altman(pred, ref)
    # differences 2, 4, 2, 4: mean 3; sample variance (4 * 1) / 3
    sd = math.sqrt(4 / 3)
    assert ba["bias"] == pytest.approx(3.0)
    assert ba["sd"] == pytest.approx(sd)
    assert ba["lower_loa"] == pytest.approx(3 - 1.96 * sd)
    assert ba["upper_loa"] == pytest.approx(3 + 1.96 * sd)
    assert M.mae(pred, ref) == pytest.approx(3.0)
    # deviations ref (-15, -5, 5, 15), pred (-16, -4, 4, 16): 520 / sqrt(500 * 544)
    assert M.pearson_r(pred, ref) == pytest.approx(520 / math.sqrt(500 * 544))
    a = M.agreement_metrics(pred, ref)
    assert a["n"] == 4 and a["mae"] == pytest.approx(3.0)
    assert a["icc_3_1"] > a["icc_2_1"]  # the offset lowers absolute agreement only


def test_agreement_edge_cases():
    assert M.pearson_r([1, 1, 1], [1, 2, 3]) is None
    a = M.agreement_metrics([5.0], [4.0])
    assert a["pearson_r"] is None and a["icc_2_1"] is None and a["bland_altman"]["sd"] is None
    assert a["notes"]
    with pytest.raises(InputError):
        M.mae([], [])
    with pytest.raises(InputError):
        M.bland_altman([1, 2], [1, 2, 3])


# ----------------------------------------------------------------------------- risk categories


def test_weighted_kappa_hand_examples():
    # 2 x 2: p_o = 35/50 = 0.7; p_e = (25*30 + 25*20)/2500 = 0.5 -> kappa = 0.4 (any weights)
    two = [[20, 5], [10, 15]]
    for w in ("none", "linear", "quadratic"):
        assert M.weighted_kappa(two, w) == pytest.approx(0.4)
    # 3 x 3, N = 10, rows (reference) sums 4, 3, 3; column sums 4, 3, 3.
    o = [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    # linear weights 0, 1/2, 1: observed  sum w*O = 1/2 + 1/2 + 1 = 2.0
    # expected E = r c^T / 10 -> sum w*E = 1/2 * (1.2 + 1.2 + 0.9 + 0.9) + 1 * (1.2 + 1.2) = 4.5
    assert M.weighted_kappa(o, "linear") == pytest.approx(1 - 2.0 / 4.5)
    # quadratic weights 0, 1/4, 1: observed 1/4 + 1/4 + 1 = 1.5; expected 1/4 * 4.2 + 2.4 = 3.45
    assert M.weighted_kappa(o, "quadratic") == pytest.approx(1 - 1.5 / 3.45)
    # unweighted: p_o = 7/10; p_e = (16 + 9 + 9)/100 = 0.34 -> (0.7 - 0.34)/(0.66)
    assert M.weighted_kappa(o, "none") == pytest.approx(0.36 / 0.66)
    assert M.weighted_kappa([[5, 0], [0, 0]]) is None
    with pytest.raises(InputError):
        M.weighted_kappa([[1, 2, 3]])


def test_risk_metrics_from_scores_and_names():
    ref = [0, 5, 50, 200, 500, 0]  # 0, 1-10, 11-100, 101-400, >400, 0
    pred = [0.0, 12, 50, 150, 300, 1]  # 0, 11-100, 11-100, 101-400, 101-400, 1-10
    r = M.risk_metrics(pred, ref)
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(3 / 6)
    cm = np.array(r["confusion"])
    expected = np.zeros((5, 5), int)
    for i, j in [(0, 0), (1, 2), (2, 2), (3, 3), (4, 3), (0, 1)]:
        expected[i, j] += 1
    np.testing.assert_array_equal(cm, expected)
    # "0": 2 reference studies, 1 found -> sensitivity 1/2; never predicted for the other 4
    assert r["per_category"]["0"]["sensitivity"] == pytest.approx(0.5)
    assert r["per_category"]["0"]["specificity"] == pytest.approx(1.0)
    # "101-400": 1 reference (found); predicted also for the ">400" study -> spec 4/5
    assert r["per_category"]["101-400"]["sensitivity"] == pytest.approx(1.0)
    assert r["per_category"]["101-400"]["specificity"] == pytest.approx(4 / 5)
    assert r["per_category"]["1-10"]["sensitivity"] == 0.0
    # linear kappa of the same matrix by hand: weights |i-j|/4, observed disagreement
    # (1/4 + 1/4 + 1/4) / 6 = 0.125; marginals ref (2,1,1,1,1), pred (1,1,2,2,0).
    w = np.abs(np.subtract.outer(np.arange(5), np.arange(5))) / 4
    e = np.outer([2, 1, 1, 1, 1], [1, 1, 2, 2, 0]) / 6
    assert r["kappa_linear"] == pytest.approx(1 - 0.75 / np.sum(w * e))
    names = M.risk_metrics(["0", "1-10", ">400"], ["0", "1-10", ">400"])
    assert names["accuracy"] == 1.0 and names["kappa_linear"] == pytest.approx(1.0)


def test_risk_boundaries_and_bad_input():
    # 10 is still "1-10", 10.5 is "11-100", 400 is "101-400"
    r = M.risk_metrics([10, 10.5, 400, 400.5], ["1-10", "11-100", "101-400", ">400"])
    assert r["accuracy"] == 1.0
    with pytest.raises(InputError):
        M.risk_metrics(["low"], ["0"])
    with pytest.raises(InputError):
        M.risk_metrics([], [])
    with pytest.raises(InputError):
        M.risk_metrics([1, 2], [1])


# ----------------------------------------------------------------------------- comparison table


def _variant(sens, spec, auc, knn_acc, curve, risk=None):
    res = {
        "linear": {"selected": {"features": "last4"},
                   "test": {"auroc": auc, "at_val_threshold": {"threshold": 0.3, "sensitivity": sens,
                                                               "specificity": spec}}},
        "knn": {"last1": {"per_k": {"20": {"accuracy": 0.1}}}, "last4": {"per_k": {"20": {"accuracy": knn_acc}}}},
        "fewshot": {"curve": [{"k": k, "auroc_mean": m, "auroc_sd": s} for k, m, s in curve]},
    }
    if risk is not None:
        res["pipeline"] = {"risk": {"accuracy": risk}}
    return res


def test_comparison_table(tmp_path):
    from training.common import compare as C

    results = {
        "DINO-LG": _variant(0.89, 0.90, 0.95, 0.93, [(1, 0.7, 0.05), (4, 0.9, 0.01)], risk=0.9),
        "DINO": _variant(0.79, 0.77, 0.85, 0.81, [(1, 0.6, 0.1)]),
    }
    table = C.build_comparison(results, pipeline={"DINO": {"accuracy": 0.76}})
    assert [r["variant"] for r in table["rows"]] == ["DINO", "DINO-LG"]  # canonical order
    assert table["few_shot_ks"] == [1, 4]
    dino, lg = table["rows"]
    assert (lg["slice_sensitivity"], lg["slice_specificity"], lg["slice_auroc"]) == (0.89, 0.90, 0.95)
    assert lg["knn_accuracy"] == 0.93 and lg["knn_features"] == "last4"  # the probe's feature set
    assert lg["risk_accuracy"] == 0.9 and dino["risk_accuracy"] == 0.76
    md = C.to_markdown(table)
    assert "| DINO | 0.790 | 0.770 | 0.850 | 0.810 | 0.760 |" in md
    assert "| DINO-LG | 0.890 | 0.900 | 0.950 | 0.930 | 0.900 |" in md
    assert "| DINO | 0.600 ± 0.100 | n/a |" in md
    assert "| DINO-LG | 0.700 ± 0.050 | 0.900 ± 0.010 |" in md
    C.write_comparison(table, tmp_path / "c.md", tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["rows"][0]["variant"] == "DINO"
    with pytest.raises(InputError):
        C.write_comparison(table, tmp_path / "c.md")
    # the module's command line: files named by variant
    (tmp_path / "a.json").write_text(json.dumps({"variant": "DINOv2", **results["DINO"]}))
    assert C.main([str(tmp_path / "a.json"), "--md", str(tmp_path / "d.md")]) == 0
    assert "| DINOv2 | 0.790 |" in (tmp_path / "d.md").read_text()
    assert C.main([str(tmp_path / "missing.json")]) == 2
    # a pipeline-evaluation summary adds the "UNET alone" column
    summary = {"pipeline": {"risk": {"accuracy": 0.9}}, "unet_all_slices": {"risk": {"accuracy": 0.76}}}
    t2 = C.build_comparison({"DINO-LG": results["DINO-LG"]}, pipeline={"DINO-LG": summary})
    assert t2["rows"][0]["risk_accuracy_unet_all_slices"] == 0.76
    assert "| DINO-LG | 0.890 | 0.900 | 0.950 | 0.930 | 0.900 | 0.760 |" in C.to_markdown(t2)
    with pytest.raises(InputError):
        C.build_comparison({})
