"""Frozen-feature protocols, PEFT and the candidate evaluation script
(``training.evaluate_protocols``) on small synthetic data with known answers (tiny ViTs, CPU)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CoronaryCalciumDINOLib.errors import InputError  # noqa: E402
from training.common import protocols as P  # noqa: E402
from training.common.peft import (  # noqa: E402
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


def write_cache(path, studies, seed=0, n_pos=4, n_neg=12, max_neg=None, windows=None):
    """A candidate cache in the format of ``training.candidate_data`` with known classes.

    ``studies``: {name: has coronary calcium}. Each study has ``n_neg`` non-coronary
    candidates (alternately a 700 HU bone edge over half the crop and a faint 150 HU 2 x 2
    spot) and, when it has calcium, ``n_pos`` coronary ones (a 500 HU 3 x 3 spot at the
    centre, arteries 1..4 in turn). Soft tissue 40 +- 20 HU around; crops 40 px (32 + 2 x 4).
    """
    from CoronaryCalciumDINOLib.pipeline.candidates import CandidateConfig

    rng = np.random.default_rng(seed)
    crops, target, study = [], [], []
    for i, has_pos in enumerate(studies.values()):
        k = n_pos if has_pos else 0
        for j in range(k + n_neg):
            c = rng.normal(40.0, 20.0, (40, 40))
            if j < k:
                c[19:22, 19:22] = 500.0
                target.append(1 + j % 4)
            else:
                if j % 2:
                    c[:, 22:] = 700.0
                else:
                    c[19:21, 19:21] = 150.0
                target.append(0)
            crops.append(c)
            study.append(i)
    cfg = CandidateConfig().to_dict()
    if windows is not None:
        cfg["windows"] = windows
    meta = {"version": 1, "config": cfg, "margin": 4, "max_neg": max_neg, "n_random": 0, "seed": seed,
            "studies": list(studies)}
    np.savez(path, meta=json.dumps(meta), crops=np.array(crops, np.float16), target=np.array(target),
             study=np.array(study), weight=np.ones(len(target), np.float32))
    return path


def write_backbone_file(path, depth=2):
    """A ``backbone.pt`` as pretrain_candidates writes it, of a tiny ViT (32 px, 3 windows)."""
    from CoronaryCalciumDINOLib.models.backbone import backbone_config

    bb = tiny_vit(depth=depth, seed=1)
    torch.save({"config": backbone_config(bb), "state": bb.state_dict()}, path)
    return path


def test_split_patients_stratified_and_deterministic():
    from training.evaluate_protocols import split_patients

    pid = np.repeat([f"p{i}" for i in range(10)], 3)
    y = np.where(np.isin(pid, ["p0", "p1", "p2", "p3", "p4"]), 1, 0)
    val = split_patients(pid, y, 0.2, seed=0)
    # round(0.2 x 5) = 1 patient of each kind
    assert len(val & {"p0", "p1", "p2", "p3", "p4"}) == 1 and len(val) == 2
    assert split_patients(pid, y, 0.2, seed=0) == val
    assert len({frozenset(split_patients(pid, y, 0.2, seed=s)) for s in range(10)}) > 1
    # a group of two gives one patient to validation, never both
    val2 = split_patients(np.array(["a", "b", "c", "d"]), np.array([1, 1, 0, 0]), 0.9, seed=0)
    assert len(val2 & {"a", "b"}) == 1 and len(val2 & {"c", "d"}) == 1
    with pytest.raises(InputError):
        split_patients(np.array(["a", "a"]), np.array([1, 0]), 0.2, seed=0)
    with pytest.raises(InputError):
        split_patients(pid, y, 0.0, seed=0)


def test_finetune_subset_caps_and_balances():
    from training.evaluate_protocols import finetune_subset

    lab = np.r_[np.ones(30, int), np.zeros(300, int), np.ones(5, int)]  # last 5: the evaluation cache
    split = np.r_[np.full(330, "train"), np.full(5, "test")]
    data = {"labels": lab, "masks": {"test": split == "test"}}
    idx = finetune_subset(data, 40, seed=0)
    assert idx.size == 40 and lab[idx].sum() == 20 and idx.max() < 330
    idx = finetune_subset(data, 100, seed=0)
    assert idx.size == 100 and lab[idx].sum() == 30  # every coronary candidate, the rest negatives
    assert finetune_subset(data, 1000, seed=0).size == 330


def test_evaluate_protocols_on_known_caches(tmp_path):
    from training.evaluate_protocols import main

    train = write_cache(tmp_path / "train.npz", {f"s{i:02d}": i < 6 for i in range(10)}, seed=0)
    ev = write_cache(tmp_path / "eval.npz", {f"e{i:02d}": i < 2 for i in range(3)}, seed=1)
    tiny = write_backbone_file(tmp_path / "backbone.pt")
    out = tmp_path / "res.json"
    common = ["--few-shot-ks", "1,2", "--few-shot-seeds", "2", "--finetune-epochs", "1", "--lora-r", "4",
              "--epochs", "3", "--bootstrap", "50"]
    rc = main(["--train", str(train), "--eval", str(ev), "--backbone", "random:0", "--backbone", f"tiny={tiny}",
               "--out", str(out), *common])
    assert rc == 0
    res = json.loads(out.read_text())
    d = res["data"]
    # training cache: 6 studies with 4 coronary + 12 other candidates, 4 with 12 others; one
    # study of each kind goes to validation. Evaluation: 2 x 16 + 12 candidates, 8 coronary
    # (arteries 1..4 all count as coronary).
    assert d["n_patients"] == {"train": 8, "val": 2, "test": 3}
    assert d["n_positive_patients"] == {"train": 5, "val": 1, "test": 2}
    assert d["n_candidates"] == {"train": 5 * 16 + 3 * 12, "val": 16 + 12, "test": 44}
    assert d["n_positive"] == {"train": 20, "val": 4, "test": 8}
    assert d["notes"] == []
    assert list(res["backbones"]) == ["random:0", "tiny"]
    rnd, tb = res["backbones"]["random:0"], res["backbones"]["tiny"]
    assert rnd["feature_sets"] == {"last1": 128, "last1+avgpool": 256, "last4": 512, "last4+avgpool": 640}
    assert tb["feature_sets"] == {"last1": 32, "last1+avgpool": 64}  # depth 2: block 4 is dropped
    for name, r in res["backbones"].items():
        assert set(r) >= set(("knn", "linear", "fewshot", "finetune", "lora", "bitfit"))
        for proto in ("knn", "linear", "finetune", "lora", "bitfit"):
            e = r[proto]["eval"]
            assert e["n"] == 44 and e["n_positive"] == 8
            assert 0.0 <= e["auroc"] <= 1.0 and 0.0 <= e["auprc"] <= 1.0
            lo, hi = e["auroc_ci95"]
            assert lo <= e["auroc"] + 1e-9 and e["auroc"] <= hi + 1e-9
        # the calcium spot is easy to tell from bone edges and faint spots
        assert r["knn"]["eval"]["auroc"] > 0.9, name
        assert r["linear"]["eval"]["auroc"] > 0.9, name
        k = r["knn"]["selected"]["k"]
        assert r["knn"]["eval"]["auroc"] == pytest.approx(r["knn"]["eval_per_k"]["per_k"][str(k)]["auroc"])
        assert r["knn"]["eval_per_k"]["n_train"] == 144
        # the reported probabilities are those of linear_probe's own retrained model
        assert r["linear"]["eval"]["auroc"] == pytest.approx(r["linear"]["test"]["auroc"], abs=1e-12)
        assert r["linear"]["n"] == {"train": 116, "val": 28, "test": 44}
        curve = {e["k"]: e for e in r["fewshot"]["curve"]}
        assert set(curve) == {1, 2} and curve[1]["n_seeds"] == 2
        assert curve[2]["auroc_mean"] > 0.9 and 0.0 < curve[2]["auprc_mean"] <= 1.0
        assert r["fewshot"]["features"] == "last1+avgpool"
        assert r["finetune"]["train"]["lr"] == 1e-5 and r["finetune"]["train"]["n_train"] == 144
        assert r["finetune"]["train"]["n_train_positive"] == 24
        assert r["lora"]["train"]["trainable"] < r["finetune"]["train"]["trainable"]
    bb = tiny_vit(depth=2)
    assert tb["bitfit"]["train"]["trainable"] == sum(p.numel() for n, p in bb.named_parameters()
                                                     if n.endswith("bias"))
    rows = {(r["backbone"], r["protocol"], r.get("k")) for r in res["summary"]}
    assert ("tiny", "linear", None) in rows and ("random:0", "fewshot", 2) in rows
    assert len(res["summary"]) == 2 * (5 + 2)

    # refuses to overwrite without --overwrite
    assert main(["--train", str(train), "--eval", str(ev), "--backbone", "random:0", "--out", str(out)]) == 2
    bad = tmp_path / "bad.json"
    # the same studies in both caches: patient leak
    assert main(["--train", str(train), "--eval", str(train), "--backbone", "random:0", "--protocols", "knn",
                 "--out", str(bad)]) == 2
    # caches made with other HU windows
    other = write_cache(tmp_path / "other.npz", {"o0": True}, windows=[[0, 100], [0, 200], [0, 300]])
    assert main(["--train", str(train), "--eval", str(other), "--backbone", "random:0", "--protocols", "knn",
                 "--out", str(bad)]) == 2
    assert main(["--train", str(train), "--eval", str(ev), "--backbone", "random:0", "--protocols", "knn,svm",
                 "--out", str(bad)]) == 2
    assert main(["--train", str(train), "--eval", str(ev), "--backbone", str(tmp_path / "missing.pt"),
                 "--out", str(bad)]) == 2
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert main(["--train", str(train), "--eval", str(ev), "--backbone", str(tmp_path / "garbage.pt"),
                 "--out", str(bad)]) == 2
    assert not bad.exists()


def test_evaluate_protocols_on_built_cache(tmp_path):
    """Caches written by training.candidate_data from tiny synthetic studies."""
    from CoronaryCalciumDINOLib.data.studies import write_study
    from CoronaryCalciumDINOLib.pipeline.candidates import CandidateConfig
    from CoronaryCalciumDINOLib.synth import render_study
    from training.candidate_data import build_cache, load_cache
    from training.evaluate_protocols import main

    dirs = {}
    for seed in (1, 5, 3):  # 96 x 96 studies, each with coronary candidates
        st = render_study(seed, plaques=True, matrix=96).study
        write_study(st, tmp_path / "studies")
        dirs[seed] = tmp_path / "studies" / st.id
    train = build_cache([dirs[1], dirs[5]], tmp_path / "train.npz", CandidateConfig(), max_neg=60, n_random=2,
                        log=lambda m: None)
    ev = build_cache([dirs[3]], tmp_path / "eval.npz", CandidateConfig(), max_neg=None, n_random=2,
                     log=lambda m: None)
    ct, ce = load_cache(train), load_cache(ev)
    assert (ct["target"] > 0).any() and (ce["target"] > 0).any()
    out = tmp_path / "res.json"
    rc = main(["--train", str(train), "--eval", str(ev), "--backbone", "random:0",
               "--protocols", "knn,linear,fewshot,lora", "--few-shot-ks", "1", "--few-shot-seeds", "1",
               "--epochs", "2", "--lora-r", "4", "--finetune-epochs", "1", "--finetune-max-train", "8",
               "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    d = res["data"]
    assert d["n_patients"] == {"train": 1, "val": 1, "test": 1}
    assert d["n_candidates"]["train"] + d["n_candidates"]["val"] == len(ct["target"])
    assert d["n_candidates"]["test"] == len(ce["target"])
    assert d["n_positive"]["train"] + d["n_positive"]["val"] == int((ct["target"] > 0).sum())
    assert d["n_positive"]["test"] == int((ce["target"] > 0).sum())
    r = res["backbones"]["random:0"]
    assert d["n_candidates"]["train"] > 8 and r["lora"]["train"]["n_train"] == 8  # the cap applies
    assert r["lora"]["eval"]["n"] == len(ce["target"])
    # one evaluation study: no study-bootstrap interval
    assert r["knn"]["eval"]["auroc_ci95"] is None
    assert {row["protocol"] for row in res["summary"]} == {"knn", "linear", "fewshot", "lora"}
