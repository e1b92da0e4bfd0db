"""Supervised stages: the detector's threshold choice (the candidate stages themselves live in
``training.train_candidates``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from CoronaryCalciumDINOLib.evaluation.metrics import choose_thresholds  # noqa: E402


def test_threshold_for_target_sensitivity_hand_made():
    # 10 positives; sensitivity >= 0.9 needs 9 of them at or above t: the 9th largest
    # positive probability is 0.30. Youden: at t = 0.55, TPR 7/10, FPR 0/6 -> J 0.7;
    # at t = 0.30, TPR 9/10, FPR 2/6 -> J 0.567; at t = 0.2, 1.0 - 3/6 = 0.5.
    pos = [0.9, 0.85, 0.8, 0.7, 0.6, 0.58, 0.55, 0.35, 0.30, 0.2]
    neg = [0.5, 0.4, 0.32, 0.31, 0.25, 0.1]
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    p = np.r_[pos, neg]
    thr = choose_thresholds(y, p, 0.90)
    assert thr["threshold"] == pytest.approx(0.30)
    assert thr["youden_threshold"] == pytest.approx(0.55)
    assert choose_thresholds(y, p, 1.0)["threshold"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no calcified slice"):
        choose_thresholds(np.zeros(4), [0.1, 0.2, 0.3, 0.4])
