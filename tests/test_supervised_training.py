"""Supervised stages: threshold choice, detector head, and 1-2 step runs of both scripts."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CoronaryCalciumDINOLib.io.volume import CTVolume  # noqa: E402
from CoronaryCalciumDINOLib.models.detector import choose_thresholds  # noqa: E402


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


def test_detector_head_learns_a_separable_problem():
    from training.train_detector import predict, train_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32) * 5 + 100  # unstandardised features
    y = x[:, 3] > 100 + 5 * 1.0  # ~16 % positives, decided by one feature
    det = train_head(x, y, epochs=300, lr=0.05, weight_decay=0.0)
    p = predict(det, x)
    assert ((p >= 0.5) == y).mean() > 0.95


def _write_tiny_studies(root, n=4, nz=6, size=64, seed=0):
    """Hand-made 1.5 mm-pixel studies: body disc, heart-like blob, calcium on some slices."""
    from CoronaryCalciumDINOLib.data.studies import Study, write_study

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        hu = np.full((nz, size, size), -1000.0, np.float32)
        hu[:, (yy - 32) ** 2 + (xx - 32) ** 2 < 29 ** 2] = -800.0  # lung
        hu[:, (yy - 30) ** 2 + (xx - 34) ** 2 < 14 ** 2] = 40.0  # heart
        hu += rng.normal(0, 10, hu.shape).astype(np.float32)
        labels = np.zeros(hu.shape, np.uint8)
        for z in range(1, nz, 2):
            y0, x0 = 24 + rng.integers(0, 8), 28 + rng.integers(0, 8)
            hu[z, y0 : y0 + 3, x0 : x0 + 3] = 400.0
            labels[z, y0 : y0 + 3, x0 : x0 + 3] = 1 + (z + i) % 4
        ct = CTVolume(hu=hu, spacing=(3.0, 1.5, 1.5))
        write_study(Study(id=f"s{i:02d}", ct=ct, labels=labels), root)
    return root


def _write_ssl_output(folder):
    from CoronaryCalciumDINOLib.models.backbone import (
        BACKBONE_CONFIG_FILE,
        BACKBONE_WEIGHTS_FILE,
        backbone_config,
        build_backbone,
    )

    folder.mkdir(parents=True)
    bb = build_backbone("vit_tiny_patch16_224", img_size=32, drop_path=0.0, overrides={"depth": 1})
    torch.save(bb.state_dict(), folder / BACKBONE_WEIGHTS_FILE)
    (folder / BACKBONE_CONFIG_FILE).write_text(json.dumps(backbone_config(bb)))
    return folder


def test_train_detector_main_runs(tmp_path):
    from training.train_detector import DETECTOR_FILE, METRICS_FILE, main

    studies = _write_tiny_studies(tmp_path / "studies")
    ssl = _write_ssl_output(tmp_path / "ssl")
    rc = main(["--studies", str(studies), "--backbone", str(ssl), "--out", str(tmp_path / "det"),
               "--epochs", "2", "--val-fraction", "0.5", "--device", "cpu", "--crop-mm", "90"])
    assert rc == 0
    ck = torch.load(tmp_path / "det" / DETECTOR_FILE, map_location="cpu")
    assert ck["in_dim"] == 384 and 0.0 <= ck["threshold"] <= 1.0
    assert ck["preprocessing"]["input_size"] == 32
    m = json.loads((tmp_path / "det" / METRICS_FILE).read_text())
    assert set(m["train_studies"]).isdisjoint(m["val_studies"])
    assert len(m["train_studies"]) + len(m["val_studies"]) == 4
    # 2 validation studies x 3 calcified slices of 6; threshold keeps sensitivity >= 0.9
    assert m["val"]["n"] == 12 and m["val"]["n_positive"] == 6
    assert m["val"]["at_threshold"]["sensitivity"] >= 0.9


def test_train_segmenter_main_runs(tmp_path):
    from CoronaryCalciumDINOLib.models.unet import build_unet
    from training.train_segmenter import METRICS_FILE, SEGMENTER_FILE, main

    studies = _write_tiny_studies(tmp_path / "studies")
    rc = main(["--studies", str(studies), "--out", str(tmp_path / "seg"), "--steps", "2", "--batch", "2",
               "--input-size", "32", "--patch", "16", "--channels", "4,8", "--crop-mm", "60",
               "--val-fraction", "0.5", "--device", "cpu"])
    assert rc == 0
    ck = torch.load(tmp_path / "seg" / SEGMENTER_FILE, map_location="cpu")
    assert ck["config"]["in_channels"] == 9  # 3 windows x (slice + 1 neighbour each side)
    build_unet(ck["config"]).load_state_dict(ck["state_dict"])
    m = json.loads((tmp_path / "seg" / METRICS_FILE).read_text())
    assert m["val"]["n_slices"] == 6  # calcified slices of the 2 validation studies
    assert m["steps"] == 2


def test_segmenter_training_crops_are_unflipped_windows():
    """Every training crop is a plain window of the field: no flip, no transpose."""
    from training.train_segmenter import random_crops

    rng = np.random.default_rng(1)
    x = rng.permutation(32 * 32).reshape(1, 1, 32, 32).astype(np.float32)  # unique values
    y = np.zeros((1, 32, 32), np.uint8)
    y[0, 10:12, 20:22] = 4
    for _ in range(20):
        xb, yb = random_crops(x, y, np.array([0]), 16, 0.5, rng)
        y0, x0 = np.argwhere(x[0, 0] == xb[0, 0, 0, 0])[0]
        np.testing.assert_array_equal(xb[0, 0], x[0, 0, y0 : y0 + 16, x0 : x0 + 16])
        np.testing.assert_array_equal(yb[0], y[0, y0 : y0 + 16, x0 : x0 + 16])
