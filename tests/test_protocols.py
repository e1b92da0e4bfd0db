"""Frozen-feature protocols, PEFT and the evaluation stage script on small synthetic data
with known answers (tiny ViTs, CPU)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CoronaryCalciumDINOLib.errors import InputError  # noqa: E402
from CoronaryCalciumDINOLib.evaluation import protocols as P  # noqa: E402
from CoronaryCalciumDINOLib.evaluation.peft import (  # noqa: E402
    LoRALinear,
    apply_bitfit,
    apply_lora,
    lora_parameters,
    merge_lora,
    unmerge_lora,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_vit(depth=4, seed=0):
    from CoronaryCalciumDINOLib.models.backbone import build_backbone

    torch.manual_seed(seed)
    return build_backbone("vit_tiny_patch16_224", img_size=32, in_chans=3, drop_path=0.0,
                          overrides={"depth": depth, "embed_dim": 32, "num_heads": 2, "patch_size": 8}).eval()


# ----------------------------------------------------------------------------- kNN


def clusters(n_per_class, seed, d=16, scale=10.0):
    """Two Gaussian clusters (sd 1) centred on orthogonal axes, 10 sd from the origin."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    x = rng.normal(size=(y.size, d))
    x[y == 0, 0] += scale
    x[y == 1, 1] += scale
    return x.astype(np.float32), y


def test_knn_separated_clusters_perfect():
    tx, ty = clusters(100, 0)
    qx, qy = clusters(50, 1)
    r = P.knn_eval(tx, ty, qx, qy)
    assert set(r["per_k"]) == {"5", "20", "50", "100", "200"}
    for res in r["per_k"].values():
        assert res["accuracy"] == 1.0
        assert res["auroc"] == 1.0


def test_knn_noise_labels_near_chance():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(800, 16)).astype(np.float32)
    y = rng.integers(0, 2, 800)
    r = P.knn_eval(x[:400], y[:400], x[400:], y[400:], ks=(5, 20, 50))
    for res in r["per_k"].values():
        # chance = 0.5; binomial sd of an accuracy over 400 samples is 0.025 -> 4 sd band
        assert abs(res["accuracy"] - 0.5) < 0.1
        assert abs(res["auroc"] - 0.5) < 0.1


def test_knn_weighted_vote_hand_example_and_k_cap():
    # query (1, 0); training (1,0)->0, (0,1)->1, (1,1)->1: cosine 1, 0, 1/sqrt(2).
    tx = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    ty = np.array([0, 1, 1])
    q = np.array([[1, 0]], np.float32)
    p2 = P.knn_predict_proba(tx, ty, q, k=2, temperature=0.07)
    w0, w1 = math.exp(1 / 0.07), math.exp((1 / math.sqrt(2)) / 0.07)
    assert p2[0, 1] == pytest.approx(w1 / (w0 + w1), rel=1e-5)
    p3 = P.knn_predict_proba(tx, ty, q, k=3, temperature=0.07)
    w2 = math.exp(0.0)
    assert p3[0, 1] == pytest.approx((w1 + w2) / (w0 + w1 + w2), rel=1e-5)
    r = P.knn_eval(tx, ty, q, np.array([0]), ks=(5, 200))
    assert r["per_k"]["200"]["k"] == 3 and r["n_train"] == 3
    with pytest.raises(InputError):
        P.knn_eval(tx, ty, np.ones((1, 3), np.float32), np.array([0]))


# ----------------------------------------------------------------------------- linear probe


def probe_data(seed, n=300, d=32, informative=True):
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if informative:
        x[:, 0] += 1.5 * (2 * y - 1)  # class means -1.5 / +1.5 on one axis, sd 1
    return x, y


def test_linear_probe_picks_informative_set_and_working_lr():
    x, y = probe_data(0)
    noise, _ = probe_data(100, informative=False)
    split = np.array(["train"] * 150 + ["val"] * 74 + ["test"] * 76)
    pid = np.array([f"p{i // 2}" for i in range(300)])  # 2 slices per patient, splits disjoint
    # lr 1e-5 cannot move a randomly initialised layer in 3 epochs; 5e-2 can.
    r = P.linear_probe({"noise": noise, "informative": x}, y, split, patient_ids=pid,
                       lrs=(1e-5, 5e-2), epochs=3, batch_size=32)
    assert len(r["grid"]) == 4
    assert r["selected"]["features"] == "informative"
    assert r["selected"]["lr"] == 5e-2
    # Bayes AUROC of one axis with means +-1.5, sd 1: Phi(3 / sqrt 2) = 0.983
    assert r["test"]["auroc"] > 0.85
    assert r["n"] == {"train": 150, "val": 74, "test": 76}
    s = r["test"]["slice"]
    assert s["at_threshold"]["tp"] + s["at_threshold"]["fn"] == 38
    assert "at_val_threshold" in r["test"]


def test_linear_probe_rejects_patient_leak_and_missing_split():
    x, y = probe_data(1, n=20)
    split = np.array(["train"] * 10 + ["val"] * 5 + ["test"] * 5)
    pid = np.array(["a"] * 20)
    with pytest.raises(InputError):
        P.linear_probe({"f": x}, y, split, patient_ids=pid)
    with pytest.raises(InputError):
        P.linear_probe({"f": x}, y, np.array(["train"] * 20))


# ----------------------------------------------------------------------------- few-shot


def patient_table(n_patients=24, slices=6, n_pos_patients=12):
    """Patients p00..: the first ``n_pos_patients`` have 2 calcified slices each."""
    pid, lab = [], []
    for p in range(n_patients):
        for s in range(slices):
            pid.append(f"p{p:02d}")
            lab.append(1 if p < n_pos_patients and s < 2 else 0)
    return np.array(pid), np.array(lab)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_few_shot_sampling_exact_k_disjoint(k):
    pid, lab = patient_table()
    test_patients = {"p00", "p01", "p12", "p13"}
    cand = ~np.isin(pid, list(test_patients))
    for seed in range(5):
        pick = P.sample_few_shot(lab, pid, k, seed, candidates=cand)
        pos, neg = set(pick["patients"]["1"]), set(pick["patients"]["0"])
        assert len(pos) == k and len(neg) == k
        assert not pos & neg
        assert not (pos | neg) & test_patients
        idx = pick["indices"]
        # every returned slice belongs to a patient picked for its own class
        for i in idx:
            assert pid[i] in (pos if lab[i] == 1 else neg)
        assert set(pid[idx]) == pos | neg
        # all class-1 slices of the positive patients are there (2 per patient)
        assert int((lab[idx] == 1).sum()) == 2 * k
    with pytest.raises(InputError):
        P.sample_few_shot(lab, pid, 11, 0, candidates=cand)  # only 10 positive candidates


def test_few_shot_curve_shape_and_notes():
    pid, lab = patient_table(n_patients=30, n_pos_patients=15)
    rng = np.random.default_rng(0)
    f = rng.normal(size=(lab.size, 8)).astype(np.float32)
    f[:, 0] += 4.0 * lab  # calcified slices are easy to tell apart
    patient_no = np.array([int(p[1:]) for p in pid])
    split = np.where(np.isin(patient_no, [0, 1, 2, 15, 16, 17]), "test", "train")
    r = P.few_shot_curve(f, lab, pid, split, ks=(1, 4, 16), seeds=3, method="linear")
    by_k = {e["k"]: e for e in r["curve"]}
    assert by_k[1]["n_seeds"] == 3 and len(by_k[1]["auroc"]) == 3
    assert by_k[4]["auroc_mean"] > 0.95  # class gap of 4 sd
    assert by_k[16]["auroc_mean"] is None and "fewer than K=16" in by_k[16]["note"]
    rk = P.few_shot_curve(f, lab, pid, split, ks=(2,), seeds=2, method="knn")
    assert rk["curve"][0]["auroc_mean"] > 0.95
    leak = split.copy()
    leak[np.flatnonzero(pid == "p00")[0]] = "train"
    with pytest.raises(InputError):
        P.few_shot_curve(f, lab, pid, leak, ks=(1,), seeds=1)


# ----------------------------------------------------------------------------- frozen features


def test_extract_block_features_layout():
    from CoronaryCalciumDINOLib.models.backbone import extract_features

    bb = tiny_vit()
    x = torch.randn(5, 3, 32, 32)
    feats = P.extract_block_features(bb, x, blocks=(1, 4), mean_pool=(False, True), batch_size=2)
    d = 32
    assert feats["last1"].shape == (5, d)
    assert feats["last1+avgpool"].shape == (5, 2 * d)
    assert feats["last4"].shape == (5, 4 * d)
    assert feats["last4+avgpool"].shape == (5, 5 * d)
    with torch.no_grad():
        ref = extract_features(bb, x).numpy()
        inter = bb.forward_intermediates(x, indices=4, return_prefix_tokens=True, norm=True,
                                         output_fmt="NLC", intermediates_only=True)
    np.testing.assert_allclose(feats["last1+avgpool"], ref, atol=1e-5)
    # timm's own intermediates (final norm applied): CLS of the last 4 blocks in order
    cls4 = np.concatenate([pre[:, 0].numpy() for _, pre in inter], axis=1)
    np.testing.assert_allclose(feats["last4"], cls4, atol=1e-5)
    with pytest.raises(InputError):
        P.extract_block_features(bb, x, blocks=(5,))


# ----------------------------------------------------------------------------- PEFT


def test_lora_init_identity_grads_and_merge():
    bb = tiny_vit()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = bb(x).clone()
    names = apply_lora(bb, r=48, alpha=16)
    assert len(names) == 3 * 4  # qkv, fc1, fc2 in each of 4 blocks
    lora = [m for m in bb.modules() if isinstance(m, LoRALinear)]
    assert all(m.scaling == pytest.approx(16 / 48) for m in lora)
    with torch.no_grad():
        np.testing.assert_array_equal(bb(x).numpy(), before.numpy())  # B = 0 at start
    bb(x).pow(2).mean().backward()
    lora_ids = {id(p) for p in lora_parameters(bb)}
    for name, p in bb.named_parameters():
        if id(p) in lora_ids:
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None, name
    # B starts at zero so only B gets a non-zero gradient on the first step
    assert all(m.lora_B.grad.abs().sum() > 0 for m in lora)
    with torch.no_grad():
        for m in lora:
            m.lora_B.normal_(0, 0.05)
        adapted = bb(x).clone()
        w0 = lora[0].base.weight.clone()
    assert not torch.allclose(adapted, before)
    assert merge_lora(bb) == 12
    with torch.no_grad():
        np.testing.assert_allclose(bb(x).numpy(), adapted.numpy(), atol=1e-5)
    unmerge_lora(bb)
    with torch.no_grad():
        np.testing.assert_allclose(lora[0].base.weight.numpy(), w0.numpy(), atol=1e-6)
        np.testing.assert_allclose(bb(x).numpy(), adapted.numpy(), atol=1e-5)


def tiny_images(n=24, seed=0):
    """Class 1 images have a bright square in the middle; class 0 are plain noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.1
    y = np.arange(n) % 2
    x[torch.from_numpy(y == 1), :, 12:20, 12:20] += 2.0
    return x.numpy(), y


def test_bitfit_trains_only_biases():
    bb = tiny_vit()
    names = apply_bitfit(bb)
    assert names and all(n.endswith("bias") for n in names)
    assert all(p.requires_grad == n.endswith("bias") for n, p in bb.named_parameters())

    bb = tiny_vit()
    start = {k: v.clone() for k, v in bb.state_dict().items()}
    x, y = tiny_images()
    clf, info = P.finetune_classifier(bb, x, y, mode="bitfit", epochs=1, batch_size=8)
    # the caller's backbone is untouched
    for k, v in bb.state_dict().items():
        assert torch.equal(v, start[k])
    tuned = clf.module.backbone.state_dict()
    changed = {k for k in start if not torch.equal(tuned[k], start[k])}
    assert changed and all(k.endswith("bias") for k in changed)
    assert info["trainable"] == sum(p.numel() for n, p in bb.named_parameters() if n.endswith("bias"))


def test_lora_and_full_finetune_run():
    x, y = tiny_images()
    bb = tiny_vit()
    start = {k: v.clone() for k, v in bb.state_dict().items()}
    clf, info = P.finetune_classifier(bb, x, y, mode="lora", epochs=1, batch_size=8, lora_r=4)
    assert 0 < info["trainable"] < info["total"] / 2
    tuned = clf.module.backbone
    assert all(m.merged for m in tuned.modules() if isinstance(m, LoRALinear))
    # frozen parts (e.g. the patch embedding) did not move
    assert torch.equal(tuned.patch_embed.proj.weight, start["patch_embed.proj.weight"])
    clf, info = P.finetune_classifier(bb, x, y, mode="full", lr=1e-3, head_lr=1e-2, epochs=4, batch_size=8)
    assert info["trainable"] == info["total"] and info["lr"] == 1e-3
    assert info["losses"][-1] < info["losses"][0]
    res = P.evaluate_classifier(clf, x, y)
    assert res["n"] == 24 and "slice" in res
    with pytest.raises(InputError):
        P.finetune_classifier(bb, x, y, mode="prompt")


# ----------------------------------------------------------------------------- stage script


def test_evaluate_protocols_script_on_features(tmp_path):
    from training.evaluate_protocols import main

    rng = np.random.default_rng(0)
    pid, lab = patient_table(n_patients=30, n_pos_patients=15)
    patient_no = np.array([int(p[1:]) for p in pid])
    split = np.where(np.isin(patient_no, [0, 1, 2, 15, 16, 17]), "test",
                     np.where(np.isin(patient_no, [3, 4, 18, 19]), "val", "train"))
    good = rng.normal(size=(lab.size, 8)).astype(np.float32)
    good[:, 0] += 6.0 * lab  # the classes point along different axes (cosine kNN)
    good[:, 1] += 6.0 * (1 - lab)
    npz = tmp_path / "feats.npz"
    np.savez(npz, labels=lab, patient_ids=pid, split=split, **{"features__last1+avgpool": good,
                                                                "features__noise": rng.normal(size=(lab.size, 8))})
    out = tmp_path / "results.json"
    rc = main(["--features", str(npz), "--protocols", "knn,linear,fewshot", "--few-shot-ks", "1,2",
               "--few-shot-seeds", "2", "--out", str(out), "--variant", "test-variant"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["variant"] == "test-variant"
    assert res["knn"]["last1+avgpool"]["per_k"]["5"]["accuracy"] > 0.95
    assert res["linear"]["selected"]["features"] == "last1+avgpool"
    assert [e["k"] for e in res["fewshot"]["curve"]] == [1, 2]
    # refuses to overwrite without --overwrite
    assert main(["--features", str(npz), "--protocols", "knn", "--out", str(out)]) == 2


def write_tiny_studies(root, n=8, nz=6, size=48):
    """``n`` small studies: a 40 HU body disk in air; even-numbered studies get a 600 HU
    LAD lesion on slices 2 and 3."""
    from CoronaryCalciumDINOLib.data.studies import Study, write_study
    from CoronaryCalciumDINOLib.io.volume import CTVolume

    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    for i in range(n):
        hu = np.where(disk, 40.0, -1000.0).astype(np.float32)[None].repeat(nz, 0)
        labels = np.zeros(hu.shape, np.uint8)
        if i % 2 == 0:
            hu[2:4, 20:24, 26:30] = 600.0
            labels[2:4, 20:24, 26:30] = 2
        ct = CTVolume(hu=hu, spacing=(3.0, 2.0, 2.0))
        write_study(Study(id=f"s{i:02d}", ct=ct, labels=labels), root)


def test_evaluate_protocols_script_end_to_end(tmp_path):
    from CoronaryCalciumDINOLib.models.backbone import (
        BACKBONE_CONFIG_FILE,
        BACKBONE_WEIGHTS_FILE,
        backbone_config,
    )
    from training.evaluate_protocols import main

    studies = tmp_path / "studies"
    write_tiny_studies(studies)
    ssl = tmp_path / "ssl"
    ssl.mkdir()
    bb = tiny_vit()
    torch.save(bb.state_dict(), ssl / BACKBONE_WEIGHTS_FILE)
    (ssl / BACKBONE_CONFIG_FILE).write_text(json.dumps(backbone_config(bb)))
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"version": 1, "train": ["s00", "s01", "s02", "s03"],
                                  "val": ["s04", "s05"], "test": ["s06", "s07"]}))
    out, feats = tmp_path / "res.json", tmp_path / "feats.npz"
    rc = main(["--ssl-dir", str(ssl), "--studies", str(studies), "--splits", str(splits),
               "--protocols", "knn,linear,fewshot,lora,bitfit,finetune", "--few-shot-ks", "1",
               "--few-shot-seeds", "2", "--finetune-epochs", "1", "--lora-r", "4", "--epochs", "2",
               "--save-features", str(feats), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    # 8 studies x 6 slices; the lesion studies s00, s02 (train), s04 (val), s06 (test)
    # hold 2 calcified slices each
    assert res["n_slices"] == {"train": 24, "val": 12, "test": 12}
    assert res["n_positive"] == {"train": 4, "val": 2, "test": 2}
    assert res["feature_sets"] == {"last1": 32, "last1+avgpool": 64, "last4": 128, "last4+avgpool": 160}
    # k capped at the 36 train + val slices
    assert res["knn"]["last1"]["per_k"]["200"]["k"] == 36
    assert set(res["finetune"]) == {"full", "lora", "bitfit"}
    assert res["finetune"]["full"]["train"]["lr"] == 1e-5
    assert res["finetune"]["lora"]["train"]["trainable"] < res["finetune"]["full"]["train"]["trainable"]
    assert res["finetune"]["bitfit"]["test"]["n"] == 12
    saved = np.load(feats)
    assert saved["features__last4"].shape == (48, 128)
    assert list(saved["split"][:6]) == ["train"] * 6 and saved["patient_ids"][0] == "s00"
    # features-only input cannot run the image protocols: one-line error, exit 2
    assert main(["--features", str(feats), "--protocols", "lora", "--out", str(tmp_path / "x.json")]) == 2
