"""Self-supervised training machinery: DINO loss / schedules / EMA, label-guided crops, view
pairing, backbones (DINO, DINOv2, location conditioning, local checkpoints) and end-to-end
runs of ``training.pretrain_dino`` on CPU at a tiny scale."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.models.backbone import (
    backbone_config,
    block_attention,
    build_backbone,
    build_backbone_from_config,
    extract_features,
    features_and_attention,
    forward_tokens,
    last_attention,
    load_backbone_dir,
)
from training.common.crops import CropConfig, LabelGuidedCropSampler, MultiCropAugment, hard_negative_candidates
from training.common.dino import DINOHead, DINOLoss, teacher_temperature_schedule
from training.common.ema import update_teacher
from training.common.schedules import (
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_schedule,
    param_groups,
)
from training.common.views import adjacent_offsets, choose_partner, lesion_components

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- DINO loss


def _loss(n_t=2, out_dim=4, **kw):
    return DINOLoss(out_dim, epochs=10, n_teacher_crops=n_t, **kw)


def test_dino_loss_uniform_is_log_k():
    k = 7
    loss_fn = _loss(out_dim=k)
    teacher = torch.zeros(2 * 3, k)  # 2 crops x batch 3
    student = torch.zeros(4 * 3, k)  # 4 crops x batch 3
    assert loss_fn(student, teacher, epoch=0).item() == pytest.approx(math.log(k), rel=1e-6)


def test_dino_loss_hand_case_and_pair_exclusion():
    """Teacher crops are one-hot (sharp logits); CE by hand over pairs (i, v), v != i."""
    loss_fn = _loss(out_dim=3)
    teacher = torch.tensor([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])  # crop 0 -> class 0, crop 1 -> class 1
    s = [[0.3, 0.1, 0.0], [0.0, 0.2, 0.1], [0.1, 0.1, 0.1]]  # 3 student crops, batch 1
    student = torch.tensor(s)

    def ce(target, logits):  # -log softmax(logits / 0.1)[target]
        z = [v / 0.1 for v in logits]
        return math.log(sum(math.exp(v) for v in z)) - z[target]

    expected = (ce(0, s[1]) + ce(0, s[2]) + ce(1, s[0]) + ce(1, s[2])) / 4
    assert loss_fn(student, teacher, epoch=0).item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_no_gradient_to_teacher():
    loss_fn = _loss(out_dim=5)
    teacher = torch.randn(4, 5, requires_grad=True)
    student = torch.randn(6, 5, requires_grad=True)
    loss_fn(student, teacher, epoch=0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_center_ema_update():
    loss_fn = _loss(out_dim=2, center_momentum=0.9)
    t1 = torch.tensor([[1.0, 3.0], [3.0, 5.0]])  # batch mean (2, 4)
    loss_fn.update_center(t1)
    assert torch.allclose(loss_fn.center, torch.tensor([[0.2, 0.4]]))
    t2 = torch.tensor([[10.0, 0.0]])
    loss_fn.update_center(t2)
    assert torch.allclose(loss_fn.center, torch.tensor([[0.9 * 0.2 + 1.0, 0.9 * 0.4]]))


def test_centering_shifts_teacher_distribution():
    """With centre c, teacher probs are softmax((t - c) / T): a centre equal to t gives uniform."""
    loss_fn = _loss(out_dim=3)
    t = torch.tensor([[1.0, 2.0, 3.0]])
    loss_fn.center.copy_(t)
    q = loss_fn.teacher_probs(torch.cat([t, t]), epoch=0)
    assert torch.allclose(q[0], torch.full((1, 3), 1 / 3))


def test_teacher_collapse_stats_hand_cases():
    """Per-sample and batch-mean teacher entropies: ln K / ln K uniform, 0 / 0 for every
    sample on one prototype, 0 / ln B for B samples on B different prototypes."""
    from training.pretrain_dino import teacher_collapse_stats

    k, b = 8, 4
    uniform = [torch.full((b, k), 1.0 / k)] * 2
    same = torch.zeros(b, k)
    same[:, 3] = 1.0
    spread = torch.eye(k)[:b]
    s = teacher_collapse_stats(uniform)
    assert s["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-6)
    assert s["teacher_batch_entropy"] == pytest.approx(math.log(k), rel=1e-6)
    s = teacher_collapse_stats([same, same])
    assert s["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert s["teacher_batch_entropy"] == pytest.approx(0.0, abs=1e-6)
    s = teacher_collapse_stats([spread, spread])
    assert s["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert s["teacher_batch_entropy"] == pytest.approx(math.log(b), rel=1e-6)


def test_center_momentum_zero_centres_on_last_batch():
    """``--center-momentum 0`` (exposed by pretrain_dino): the centre is the last batch mean."""
    from training.pretrain_dino import build_parser

    args = build_parser().parse_args(["--synthetic", "1", "--output", "x", "--center-momentum", "0"])
    loss_fn = _loss(out_dim=2, center_momentum=args.center_momentum)
    loss_fn.update_center(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))
    loss_fn.update_center(torch.tensor([[10.0, 0.0]]))
    assert torch.allclose(loss_fn.center, torch.tensor([[10.0, 0.0]]))
    from training.pretrain_dino import check_args

    with pytest.raises(InputError):
        check_args(build_parser().parse_args(["--synthetic", "1", "--output", "x", "--center-momentum", "1.5"]))


def test_teacher_temperature_warmup():
    s = teacher_temperature_schedule(0.07, 0.04, warmup_epochs=3, epochs=5)
    assert np.allclose(s, [0.04, 0.055, 0.07, 0.07, 0.07])


# ----------------------------------------------------------------------------- schedules / EMA


def test_cosine_schedule_endpoints():
    s = cosine_schedule(1.0, 0.0, epochs=2, iters_per_epoch=10)
    assert len(s) == 20
    assert s[0] == pytest.approx(1.0)
    assert s[10] == pytest.approx(0.5)  # half-way through the cosine
    assert s[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    w = cosine_schedule(1.0, 0.1, epochs=3, iters_per_epoch=5, warmup_epochs=1)
    assert np.allclose(w[:5], [0.0, 0.2, 0.4, 0.6, 0.8])
    assert w[5] == pytest.approx(1.0)
    assert np.all(np.diff(w[5:]) < 0) and w[-1] > 0.1


def test_teacher_ema_update():
    student, teacher = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(1.0)
        for p in teacher.parameters():
            p.fill_(0.0)
    update_teacher(student, teacher, 0.9)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in teacher.parameters())
    update_teacher(student, teacher, 0.9)
    assert all(torch.allclose(p, torch.full_like(p, 0.19)) for p in teacher.parameters())


def test_last_layer_frozen_in_first_epoch():
    head = DINOHead(8, 16, hidden_dim=8, bottleneck_dim=4)
    head(torch.randn(3, 8)).sum().backward()
    assert head.last_layer.weight_v.grad is not None
    cancel_last_layer_gradients(head, epoch=0, freeze_last_layer=1)
    assert head.last_layer.weight_v.grad is None
    assert head.mlp[0].weight.grad is not None
    head.zero_grad()
    head(torch.randn(3, 8)).sum().backward()
    cancel_last_layer_gradients(head, epoch=1, freeze_last_layer=1)
    assert head.last_layer.weight_v.grad is not None


def test_head_last_layer_is_unit_norm():
    head = DINOHead(8, 16, hidden_dim=8, bottleneck_dim=4)
    w = head.last_layer.weight()
    assert torch.allclose(w.norm(dim=1), torch.ones(16), atol=1e-6)


def test_param_groups_and_clipping():
    head = DINOHead(4, 6, hidden_dim=4, bottleneck_dim=3)
    decay, no_decay = param_groups(head)
    assert no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in no_decay["params"])  # biases
    assert all(p.ndim == 2 for p in decay["params"])
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([6.0, 8.0, 0.0])  # norm 10 -> clipped to 3
    b.grad = torch.tensor([0.6, 0.8])  # norm 1 -> unchanged
    mod = torch.nn.Module()
    mod.a, mod.b = a, b
    norms = clip_gradients(mod, 3.0)
    assert norms == pytest.approx([10.0, 1.0])
    assert torch.allclose(a.grad, torch.tensor([1.8, 2.4, 0.0]), atol=1e-5)
    assert torch.allclose(b.grad, torch.tensor([0.6, 0.8]))


# ----------------------------------------------------------------------------- crops


def _field_with_lesions(size=100):
    hu = np.full((size, size), 40.0, np.float32)
    labels = np.zeros((size, size), np.uint8)
    for (y, x, r) in [(20, 30, 1), (70, 75, 2), (50, 12, 0)]:
        labels[y - r: y + r + 1, x - r: x + r + 1] = 2
        hu[y - r: y + r + 1, x - r: x + r + 1] = 450.0
    hu[85:95, 40:60] = 700.0  # bone: hard-negative material
    return hu, labels


def test_guided_crops_always_contain_a_lesion():
    hu, labels = _field_with_lesions()
    cfg = CropConfig(n_global=2, n_local=8, label_guided=True, p_guided=1.0, p_hard_negative=0.0)
    sampler = LabelGuidedCropSampler(cfg, np.random.default_rng(0))
    targets = np.argwhere(labels > 0)
    for _ in range(100):
        for box in sampler.local_boxes(labels.shape, targets, None):
            assert box.kind == "guided"
            assert labels[box.y0: box.y1, box.x0: box.x1].any()
        for box in sampler.global_boxes(labels.shape, targets):
            assert labels[box.y0: box.y1, box.x0: box.x1].any()


def test_unguided_crops_are_lesion_blind():
    """LG off: a crop hits a single lesion pixel as often as uniform placement predicts."""
    size, py, px = 101, 50, 50
    labels = np.zeros((size, size), np.uint8)
    labels[py, px] = 1
    targets = np.argwhere(labels > 0)
    cfg = CropConfig(n_local=8, label_guided=False)
    sampler = LabelGuidedCropSampler(cfg, np.random.default_rng(1))
    hits, expected, var = 0, 0.0, 0.0
    for _ in range(500):
        for box in sampler.local_boxes(labels.shape, targets, None):
            assert box.kind == "random"
            ch, cw = box.y1 - box.y0, box.x1 - box.x0
            # number of top-left positions that contain the pixel, over all positions
            ny = min(py, size - ch) - max(0, py - ch + 1) + 1
            nx = min(px, size - cw) - max(0, px - cw + 1) + 1
            p = ny / (size - ch + 1) * nx / (size - cw + 1)
            expected += p
            var += p * (1 - p)
            hits += int(box.contains(targets).any())
    assert abs(hits - expected) < 4 * math.sqrt(var)
    guided = LabelGuidedCropSampler(
        CropConfig(n_local=8, label_guided=True, p_guided=0.5, p_hard_negative=0.0), np.random.default_rng(2)
    )
    hits_lg = sum(int(b.contains(targets).any()) for _ in range(500) for b in guided.local_boxes(labels.shape, targets, None))
    # half the crops are guided (always hit), the other half hit at the label-blind rate
    expected_lg = 0.5 * 4000 + 0.5 * expected
    assert abs(hits_lg - expected_lg) < 4 * math.sqrt(4000 * 0.25)


def test_hard_negatives_centre_on_bright_non_coronary_pixels():
    hu, labels = _field_with_lesions()
    cfg = CropConfig(n_local=8, label_guided=True, p_guided=0.0, p_hard_negative=1.0, exclusion_px=3)
    neg = hard_negative_candidates(hu, labels, cfg)
    assert len(neg) == 10 * 20  # exactly the bone block; the lesions and their rims are excluded
    sampler = LabelGuidedCropSampler(cfg, np.random.default_rng(3))
    for _ in range(50):
        for box in sampler.local_boxes(hu.shape, np.argwhere(labels > 0), neg):
            assert box.kind == "hard_negative"
            cy, cx = box.center
            assert hu[cy, cx] >= 130 and labels[cy, cx] == 0
            assert box.contains(np.array([[cy, cx]])).all()


def test_multicrop_render_shapes_and_range():
    hu, labels = _field_with_lesions()
    cfg = CropConfig(global_size=32, local_size=16, n_global=2, n_local=3, label_guided=True)
    g, loc, boxes = MultiCropAugment(cfg)(hu, labels, np.random.default_rng(0))
    assert [t.shape for t in g] == [(3, 32, 32)] * 2 and [t.shape for t in loc] == [(3, 16, 16)] * 3
    assert len(boxes) == 5
    assert all(float(t.min()) >= 0.0 and float(t.max()) <= 1.0 for t in g + loc)


# ----------------------------------------------------------------------------- views


def test_adjacent_offsets():
    assert adjacent_offsets(3.0) == [1, 2]
    assert adjacent_offsets(1.5) == [2, 3, 4]
    assert adjacent_offsets(0.5) == list(range(6, 13))
    assert adjacent_offsets(8.0) == [1]


def test_partner_within_offset_and_lesion_range():
    labels = np.zeros((20, 16, 16), np.uint8)
    labels[6:10, 5:7, 5:7] = 2  # lesion A, slices 6..9
    labels[6, 12, 12] = 4  # lesion B, single slice 6
    comps, ranges = lesion_components(labels)
    assert sorted(ranges.values()) == [(6, 6), (6, 9)]
    rng = np.random.default_rng(0)
    in_range = 0
    for _ in range(300):
        ch = choose_partner("adjacent", 7, 20, 3.0, rng, comps, ranges, guided=True)
        assert abs(ch.z - 7) in (1, 2)
        assert 6 <= ch.z <= 9  # only lesion A is on slice 7: partner inside its range
        assert ch.in_lesion_range
        assert all(labels[ch.z, y, x] == 2 for y, x in ch.targets)  # guided to the same lesion
        ch6 = choose_partner("adjacent", 6, 20, 3.0, rng, comps, ranges, guided=True)
        assert abs(ch6.z - 6) in (1, 2)
        if ch6.anchor_point == (12, 12):  # single-slice lesion: an adjacent slice, same (x, y)
            assert ch6.targets.tolist() == [[12, 12]]
        else:
            assert 6 <= ch6.z <= 9
            in_range += 1
        ch0 = choose_partner("adjacent", 0, 20, 3.0, rng, comps, ranges, guided=False)
        assert ch0.z in (1, 2) and ch0.targets is None
    assert in_range > 0
    series = choose_partner("series", 7, 20, 3.0, rng, comps, ranges, n_series=2, guided=True)
    assert series.z == 7 and series.series in (1, 2)


# ----------------------------------------------------------------------------- backbones


def _tiny(**kw):
    kw.setdefault("img_size", 32)
    kw.setdefault("overrides", {"depth": 2})
    return build_backbone("vit_tiny_patch16_224", drop_path=0.0, **kw).eval()


def test_dynamic_size_and_feature_shapes():
    bb = _tiny()
    for s in (32, 16, 48):
        assert extract_features(bb, torch.randn(2, 3, s, s)).shape == (2, 2 * 192)
    assert last_attention(bb, torch.randn(2, 3, 32, 32)).shape == (2, 3, 4)


def test_dinov2_registers_excluded():
    bb = build_backbone("vit_small_patch14_reg4_dinov2", img_size=28, overrides={"depth": 1}, drop_path=0.0).eval()
    cfg = backbone_config(bb)
    assert cfg["patch_size"] == 14 and cfg["num_register_tokens"] == 4 and cfg["num_prefix_tokens"] == 5
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = forward_tokens(bb, x)
        feats = extract_features(bb, x)
    assert tokens.shape[1] == 1 + 4 + 4  # CLS, 4 registers, 2x2 patches
    assert torch.allclose(feats[:, :384], tokens[:, 0])
    assert torch.allclose(feats[:, 384:], tokens[:, -4:].mean(1), atol=1e-6)
    assert not torch.allclose(feats[:, 384:], tokens[:, 1:].mean(1), atol=1e-4)
    assert last_attention(bb, x).shape == (2, 6, 4)


def test_attention_matches_manual_softmax_and_timm_output():
    bb = _tiny(img_size=48)
    x = torch.randn(2, 3, 48, 48)
    blk = bb.blocks[-1]
    seen = {}
    h = blk.attn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    with torch.no_grad():
        forward_tokens(bb, x)
        attn = block_attention(bb, x)
        h.remove()
        y = seen["inp"]
        b, n, c = y.shape
        nh = blk.attn.num_heads
        q, k, v = blk.attn.qkv(y).reshape(b, n, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
        manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // nh), dim=-1)
        assert torch.allclose(attn, manual, atol=1e-5)
        # the explicit weights reproduce timm's fused attention output
        out = blk.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        assert torch.allclose(out, seen["out"], atol=1e-5)
    cls_patch = last_attention(bb, x)
    assert torch.allclose(cls_patch, attn[:, :, 0, 1:])
    feats, cls_patch2 = features_and_attention(bb, x)
    assert torch.allclose(cls_patch2, cls_patch, atol=1e-6)
    assert torch.allclose(feats, extract_features(bb, x), atol=1e-6)


def test_pretrained_round_trip_prefixes_and_missing_file(tmp_path):
    torch.manual_seed(0)
    src = _tiny()
    x = torch.randn(2, 3, 32, 32)
    ref = extract_features(src, x)
    p1 = tmp_path / "ddp.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, p1)
    p2 = tmp_path / "dino.pth"
    teacher = {"module.backbone." + k: v for k, v in src.state_dict().items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save({"teacher": teacher, "student": {}, "epoch": 3}, p2)
    for p in (p1, p2):
        torch.manual_seed(1)
        dst = _tiny(pretrained_path=p)
        assert torch.allclose(extract_features(dst, x), ref, atol=1e-6)
    with pytest.raises(InputError, match="nope.pth"):
        _tiny(pretrained_path=tmp_path / "nope.pth")
    torch.save({"blocks.0.norm1.weight": torch.ones(192)}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="missing"):
        _tiny(pretrained_path=tmp_path / "partial.pth")


def test_pretrained_in_chans_and_pos_embed_adaptation(tmp_path):
    torch.manual_seed(0)
    src = _tiny(img_size=64)
    torch.save(src.state_dict(), tmp_path / "rgb.pth")
    grey = _tiny(img_size=32, in_chans=1, pretrained_path=tmp_path / "rgb.pth")
    x1 = torch.randn(2, 1, 32, 32)
    # summing the kernel over channels = feeding the grey image to all three channels
    src32 = _tiny(img_size=32, pretrained_path=tmp_path / "rgb.pth")
    assert torch.allclose(extract_features(grey, x1), extract_features(src32, x1.repeat(1, 3, 1, 1)), atol=1e-5)
    torch.save(grey.state_dict(), tmp_path / "grey.pth")
    rgb = _tiny(img_size=32, in_chans=3, pretrained_path=tmp_path / "grey.pth")
    assert torch.allclose(extract_features(rgb, x1.repeat(1, 3, 1, 1)), extract_features(grey, x1), atol=1e-5)


def test_config_round_trip():
    bb = _tiny(location_conditioning=True)
    cfg = json.loads(json.dumps(backbone_config(bb)))
    bb2 = build_backbone_from_config(cfg)
    assert {k: v.shape for k, v in bb.state_dict().items()} == {k: v.shape for k, v in bb2.state_dict().items()}
    assert cfg["feature_dim"] == 384 and cfg["location_conditioning"] is True


def test_location_conditioning_zero_init_then_learns():
    torch.manual_seed(0)
    plain = _tiny()
    cond = _tiny(location_conditioning=True)
    cond.load_state_dict(plain.state_dict(), strict=False)  # same ViT weights, fresh FiLM
    x = torch.randn(4, 3, 32, 32)
    ref = extract_features(plain, x)
    for c in (-1.0, -0.3, 0.0, 0.7, 1.0):
        assert torch.allclose(extract_features(cond, x, location=torch.full((4,), c)), ref, atol=1e-6)
    with pytest.raises(InputError, match="location"):
        extract_features(cond, x)
    opt = torch.optim.SGD(cond.location_film.parameters(), lr=0.1)
    loc = torch.tensor([-1.0, -0.5, 0.5, 1.0])
    extract_features(cond, x, location=loc).pow(2).sum().backward()
    opt.step()
    with torch.no_grad():
        a = extract_features(cond, x[:1], location=torch.tensor([-1.0]))
        b = extract_features(cond, x[:1], location=torch.tensor([1.0]))
    assert not torch.allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- end to end


def _tiny_study(sid: str, seed: int):
    from CoronaryCalciumDINOLib.data.studies import Study
    from CoronaryCalciumDINOLib.io.volume import CTVolume

    rng = np.random.default_rng(seed)
    z, n = 10, 64
    yy, xx = np.mgrid[0:n, 0:n]
    body = (yy - 32) ** 2 + (xx - 32) ** 2 < 30**2
    heart2d = (yy - 30) ** 2 + (xx - 36) ** 2 < 15**2
    hu = np.where(body, 30.0, -1000.0)[None].repeat(z, 0) + rng.normal(0, 10, (z, n, n))
    hu[:, 52:58, 28:36] = 700.0  # vertebra
    labels = np.zeros((z, n, n), np.uint8)
    labels[3:6, 29:32, 39:42] = 2
    labels[6, 36:38, 28:30] = 4
    hu[labels > 0] = 450.0
    heart = np.zeros((z, n, n), np.uint8)
    heart[1:9] = heart2d
    ct = CTVolume(hu=hu.astype(np.float32), spacing=(3.0, 0.6, 0.6))
    return Study(id=sid, ct=ct, labels=labels, heart=heart, meta={"source": "test"})


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    from CoronaryCalciumDINOLib.data.studies import write_study

    root = tmp_path_factory.mktemp("studies")
    for i in range(2):
        write_study(_tiny_study(f"s{i}", i), root)
    return root


TINY = [
    "--arch", "vit_tiny_patch16_224", "--depth", "2", "--img-size", "32", "--local-size", "16",
    "--local-crops", "2", "--out-dim", "64", "--head-hidden", "32", "--head-bottleneck", "16",
    "--batch-size", "2", "--epochs", "2", "--iters-per-epoch", "2", "--warmup-epochs", "1",
    "--num-workers", "0", "--device", "cpu", "--max-steps", "2",
]


def _run(out: Path, *extra: str, data: Path) -> dict:
    from training.pretrain_dino import main

    assert main(["--data", str(data), "--output", str(out), *TINY, *extra]) == 0
    steps = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    return {"steps": [s for s in steps if "loss" in s], "epochs": [s for s in steps if "epoch_end" in s]}


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--label-guided"],
        ["--label-guided", "--multiview", "adjacent"],
        ["--label-guided", "--arch", "vit_small_patch14_reg4_dinov2", "--depth", "1", "--img-size", "28", "--local-size", "14"],
        ["--label-guided", "--location-conditioning", "--neighbor-loss-weight", "0.5"],
    ],
    ids=["dino", "lg", "lg-multiview", "dinov2-lg", "lg-location"],
)
def test_pretrain_end_to_end(tmp_path, study_root, extra):
    log = _run(tmp_path / "run", *extra, data=study_root)
    assert [s["step"] for s in log["steps"]] == [1, 2]
    assert all(math.isfinite(s["loss"]) for s in log["steps"])
    assert all(0.0 <= s["teacher_entropy"] <= math.log(64) + 1e-5 for s in log["steps"])
    if "--neighbor-loss-weight" in extra:
        assert all("loss_neighbor" in s for s in log["steps"])
    ck = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=False)
    assert ck["step"] == 2 and ck["epoch"] == 1
    bb = load_backbone_dir(tmp_path / "run")
    size = int(extra[extra.index("--img-size") + 1]) if "--img-size" in extra else 32
    x = torch.rand(1, 3, size, size)
    loc = torch.zeros(1)
    teacher_bb = build_backbone_from_config(backbone_config(bb))
    teacher_bb.load_state_dict({k[len("backbone."):]: v for k, v in ck["teacher"].items() if k.startswith("backbone.")})
    teacher_bb.eval()
    assert torch.allclose(extract_features(bb, x, loc), extract_features(teacher_bb, x, loc))
    assert json.loads((tmp_path / "run" / "args.json").read_text())["max_steps"] == 2


def test_resume_continues_from_saved_step(tmp_path, study_root):
    out = tmp_path / "run"
    _run(out, data=study_root)
    before = torch.load(out / "checkpoint.pth", weights_only=False)
    from training.pretrain_dino import main

    assert main(["--data", str(study_root), "--output", str(out), *TINY]) == 2  # refuses to overwrite
    assert main(["--data", str(study_root), "--output", str(out), *TINY, "--out-dim", "32", "--resume"]) == 2
    assert main(["--data", str(study_root), "--output", str(out / "x"), *TINY, "--local-size", "24"]) == 2
    log = _run(out, "--resume", "--max-steps", "3", data=study_root)
    assert [s["step"] for s in log["steps"]] == [1, 2, 3]
    after = torch.load(out / "checkpoint.pth", weights_only=False)
    assert after["step"] == 3
    assert not torch.equal(after["student"]["head.mlp.0.weight"], before["student"]["head.mlp.0.weight"])
    assert int(after["optimizer"]["state"][0]["step"]) == int(before["optimizer"]["state"][0]["step"]) + 1
    assert after["optimizer"]["state"] and not torch.equal(after["dino_loss"]["center"], before["dino_loss"]["center"])


@pytest.mark.slow  # two torchrun processes
def test_torchrun_ddp_two_cpu_processes(tmp_path, study_root):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    if not Path(torchrun).exists():
        pytest.skip("torchrun not available")
    out = tmp_path / "ddp"
    # the training scripts and the library of this checkout (not another installed copy)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "CoronaryCalciumDINO")]))
    cmd = [
        torchrun, "--standalone", "--nproc_per_node=2", "-m", "training.pretrain_dino",
        "--data", str(study_root), "--output", str(out), *TINY,
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert [s["step"] for s in steps] == [1, 2]  # written by rank 0 only
    assert torch.load(out / "checkpoint.pth", weights_only=False)["step"] == 2


def test_ssl_dataset_views_locations_and_oversampling():
    from training.common.ssl_data import CalcifiedOversampler, SSLDataset, StudySource

    source, records = StudySource.in_memory([_tiny_study("a", 0)])
    st = source.get(records[0].study_dir)
    # heart mask spans slices 1..8, identity direction: c = 2 (z - 1) / 7 - 1, clipped
    assert np.allclose(st.locations, np.clip(2 * (np.arange(10) - 1) / 7 - 1, -1, 1))
    assert [r.z for r in records if r.has_calcium] == [3, 4, 5, 6]
    cfg = CropConfig(global_size=32, local_size=16, n_global=2, n_local=3, label_guided=True)
    ds = SSLDataset(source, records, cfg, multiview="adjacent")
    torch.manual_seed(0)
    for _ in range(20):
        item = ds[4]
        assert len(item["crops"]) == 2 * 2 + 2 * 3
        assert [t.shape[-1] for t in item["crops"]] == [32] * 4 + [16] * 6
        locs = [float(v) for v in item["locations"]]
        # globals: view a, view a, view b, view b; locals: 3 x view a, 3 x view b
        assert locs[0] == locs[1] == locs[4] == locs[5] == locs[6]
        assert locs[2] == locs[3] == locs[7] == locs[8] == locs[9]
        zs = {int(np.argmin(np.abs(st.locations - v))) for v in locs}
        assert 4 in zs and all(z in (3, 4, 5) for z in zs)  # partner inside the lesion's z-range 3..5
    nb = SSLDataset(source, records, cfg, neighbor=True)[2]
    assert len(nb["crops"]) == 2 + 3 and nb["neighbor"].shape == (3, 32, 32)
    assert abs(float(nb["neighbor_location"]) - st.locations[2]) > 0
    # 4 of 10 slices are calcified: oversampling to 60 % vs the natural 40 %
    drawn = np.array([records[i].has_calcium for i in CalcifiedOversampler(records, 4000, 0.6, seed=0)], float)
    assert abs(drawn.mean() - 0.6) < 4 * math.sqrt(0.24 / 4000)
    plain = np.array([records[i].has_calcium for i in CalcifiedOversampler(records, 4000, None)], float)
    assert abs(plain.mean() - 0.4) < 4 * math.sqrt(0.24 / 4000)


def test_pretrain_synthetic_second_series(tmp_path):
    from training.common.ssl_data import StudySource
    from training.pretrain_dino import main, synthetic_studies

    studies, extras = synthetic_studies(1, 5, {"matrix": 64, "n_slices": 12}, second_series=True)
    st = StudySource.in_memory(studies, extras)[0].get("memory:0:" + studies[0].id)
    assert len(st.extra_series) == 1 and st.extra_series[0].shape == st.hu.shape
    diff = st.extra_series[0].astype(float) - st.hu
    assert 1.0 < np.abs(diff).mean() < 200.0  # same anatomy, another noise realisation
    out = tmp_path / "syn"
    args = ["--synthetic", "2", "--synthetic-matrix", "64", "--synthetic-slices", "12", "--output", str(out),
            "--multiview", "series", "--label-guided", *TINY]
    assert main(args) == 0
    assert torch.load(out / "checkpoint.pth", weights_only=False)["step"] == 2
