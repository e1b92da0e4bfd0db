"""The SSL variants of the candidate detector at tiny scale, on the CPU: multi-view
(neighbouring slices), DINOv2-style ViT (register tokens, local checkpoint), location
conditioning, and the side-by-side probe of all of them (``training.ssl_probe``)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from CoronaryCalciumDINOLib.data.studies import load_study  # noqa: E402
from CoronaryCalciumDINOLib.models.backbone import (  # noqa: E402
    backbone_config,
    build_backbone,
    extract_features,
    forward_tokens,
    num_register_tokens,
)
from CoronaryCalciumDINOLib.models.conditioning import LocationFiLM  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.candidates import CandidateConfig, crop_hu, find_candidates  # noqa: E402
from CoronaryCalciumDINOLib.pipeline.inference import keep_heart_region, locate  # noqa: E402
from CoronaryCalciumDINOLib.synth import write_studies  # noqa: E402
from training import pretrain_candidates, ssl_probe  # noqa: E402
from training.candidate_data import build_adjacent, build_cache, load_cache  # noqa: E402
from training.train_candidates import load_backbone  # noqa: E402
from shared_data import interrupt_on_call  # noqa: E402

WINDOWS = [(-160, 240), (-200, 800), (130, 1130)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sslm")
    dirs = write_studies([12, 18, 14, 19], root / "studies", matrix=192, n_slices=12, plaques=True)
    cfg = CandidateConfig()
    train = build_cache(dirs[:2], root / "train.npz", cfg, max_neg=40, n_random=20)
    val = build_cache(dirs[2:3], root / "val.npz", cfg, max_neg=None, n_random=0)
    ev = build_cache(dirs[3:], root / "eval.npz", cfg, max_neg=None, n_random=0)
    adj = build_adjacent(train, root / "studies", root / "train-adjacent.npz")
    return {"root": root, "dirs": dirs, "train": train, "val": val, "eval": ev, "adjacent": adj}


def _ssl_args(t, out, *extra, steps=4):
    return ["--cache", str(t["train"]), "--out", str(out), "--steps", str(steps), "--batch", "8", "--ckpt-every", "2",
            "--threads", "1", "--device", "cpu", "--label-guided", *extra]


def test_multiview_pairs_are_neighbouring_slices_of_the_same_study(tiny):
    d = load_cache(tiny["train"])
    with np.load(tiny["adjacent"]) as z:
        adj, dz, unmatched = z["crops_adjacent"], z["adjacent_dz"], int(z["unmatched"])
    assert adj.shape == (len(d["target"]), 2) + d["crops"].shape[1:] and unmatched == 0
    assert set(np.unique(dz[:, 0])) <= {-1, 0} and set(np.unique(dz[:, 1])) <= {0, 1}
    # recompute one calcified candidate of the second study from its own volume, independently
    i = 1
    st = load_study(tiny["dirs"][i], with_heart=False)
    hu = np.asarray(st.ct.hu, np.float32)
    anatomy, (z0, z1) = locate(hu, st.ct.spacing)
    hu, labels = hu[z0:z1], st.labels[z0:z1]
    c, _ = keep_heart_region(find_candidates(hu, st.ct.spacing, CandidateConfig()), anatomy, hu)
    y = c.targets(labels)
    j = int(np.flatnonzero((y > 0) & (c.z > 0) & (c.z < hu.shape[0] - 1))[0])
    k = [n for n in np.flatnonzero(d["study"] == i)
         if np.allclose(d["crops"][n, 4:36, 4:36].astype(np.float32), crop_hu(hu, c, [j])[0], atol=0.5)]
    assert len(k) == 1
    k = k[0]
    for side, step in ((0, -1), (1, 1)):
        sub = replace(c, z=c.z.copy())
        sub.z[j] = c.z[j] + step  # same (x, y), neighbouring slice of the same study
        want = crop_hu(hu, sub, [j], size=40)[0]
        np.testing.assert_allclose(adj[k, side].astype(np.float32), want, atol=0.5)
        assert dz[k, side] == step
        assert not np.allclose(adj[k, side].astype(np.float32), d["crops"][k].astype(np.float32), atol=1.0)
    # the training sampler draws one of the two, never the clamped copy of the anchor itself
    rng = np.random.default_rng(0)
    anchor = d["crops"].astype(np.float32)
    fake = {"crops_adjacent": np.stack([anchor + 1000, anchor + 2000], 1),
            "adjacent_dz": np.stack([np.zeros_like(dz[:, 0]), np.ones_like(dz[:, 1])], 1)}
    crops, partner, loc = pretrain_candidates._sampler(d, True, 0.4, rng, fake)(16)
    assert loc is None and np.all(partner - crops.astype(np.float32) == 2000)
    # and the second global view is cut from the partner, the first from the anchor
    gen = torch.Generator().manual_seed(0)
    hu_t = torch.from_numpy(d["crops"][:4].astype(np.float32))
    air = torch.full_like(hu_t, -1000.0)
    views = pretrain_candidates.make_views(hu_t, 32, 4, 2, 16, True, WINDOWS, gen, partner=air)
    assert float(views[1].max()) == 0.0 and float(views[0].max()) > 0.0 and float(views[2].max()) > 0.0


def test_multiview_and_location_runs_resume_to_the_same_backbone(tiny, tmp_path, monkeypatch, capsys):
    extra = ["--multiview", "adjacent", "--adjacent", str(tiny["adjacent"]), "--location-conditioning"]
    straight = tmp_path / "straight"
    pretrain_candidates.main(_ssl_args(tiny, straight, *extra))
    out = tmp_path / "resumed"
    interrupt_on_call(monkeypatch, pretrain_candidates, "update_teacher", 3)
    with pytest.raises(KeyboardInterrupt):
        pretrain_candidates.main(_ssl_args(tiny, out, *extra))
    monkeypatch.undo()
    pretrain_candidates.main(_ssl_args(tiny, out, *extra))
    assert "resuming at step 2" in capsys.readouterr().out
    a = torch.load(straight / "backbone.pt", weights_only=False)
    b = torch.load(out / "backbone.pt", weights_only=False)
    assert a["ssl"]["multiview"] == "adjacent" and a["ssl"]["location_conditioning"] is True
    assert a["config"]["location_conditioning"] == 3
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        torch.testing.assert_close(a["state"][key], b["state"][key], rtol=0, atol=0)


def test_multiview_needs_guided_samples_and_the_crop_file(tiny, tmp_path):
    with pytest.raises(SystemExit):
        pretrain_candidates.main(_ssl_args(tiny, tmp_path / "x", "--multiview", "adjacent"))
    args = [a for a in _ssl_args(tiny, tmp_path / "y", "--location-conditioning") if a != "--label-guided"]
    with pytest.raises(SystemExit):
        pretrain_candidates.main(args)


def test_location_conditioning_changes_the_features_with_the_location(tiny, tmp_path):
    out = tmp_path / "loc"
    pretrain_candidates.main(_ssl_args(tiny, out, "--location-conditioning", steps=6))
    bb = load_backbone(str(out / "backbone.pt"))
    assert bb.location_film.n_coords == 3
    assert float(bb.location_film.out.weight.abs().max()) > 0  # learnt away from its zero start
    d = load_cache(tiny["eval"])
    x = pretrain_candidates.plain_view(torch.from_numpy(d["crops"][:6].astype(np.float32)), 32, WINDOWS)
    loc = torch.from_numpy(pretrain_candidates.candidate_locations(d)[:6])
    np.testing.assert_array_equal(loc.numpy(), d["context"][:6, :3])  # x_field, y_field, z_scan
    with torch.no_grad():
        f_here = extract_features(bb, x, loc)
        f_same = extract_features(bb, x, loc.clone())
        moved = loc.clone()
        moved[:, 2] = -moved[:, 2] + 0.5  # another height in the heart
        f_moved = extract_features(bb, x, moved)
    torch.testing.assert_close(f_here, f_same)
    assert float((f_here - f_moved).abs().max()) > 1e-4
    # one-coordinate (slice) conditioning keeps its earlier format and Fourier embedding
    one = build_backbone("vit_tiny_patch16_224", img_size=32, in_chans=3, location_conditioning=True,
                         overrides=pretrain_candidates.DEFAULT_OVERRIDES)
    assert backbone_config(one)["location_conditioning"] is True and one.location_film.n_coords == 1
    film = LocationFiLM(16, 2)
    c = torch.tensor([-0.5, 0.25])
    ang = c[:, None] * (2.0 ** torch.arange(4)) * np.pi
    torch.testing.assert_close(film.embed(c), torch.cat([c[:, None], ang.sin(), ang.cos()], 1))


def test_dinov2_style_backbone_has_registers_outside_the_features_and_takes_a_local_checkpoint(tiny, tmp_path):
    out = tmp_path / "v2"
    pretrain_candidates.main(_ssl_args(tiny, out, "--arch", pretrain_candidates.DINOV2_ARCH))
    bb = load_backbone(str(out / "backbone.pt"))
    assert num_register_tokens(bb) == 4 and bb.num_prefix_tokens == 5
    assert backbone_config(bb)["patch_size"] == 8 and backbone_config(bb)["embed_dim"] == 128
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        tok = forward_tokens(bb, x)
        feats = extract_features(bb, x)
    assert tok.shape[1] == 5 + 16  # CLS, 4 registers, 4 x 4 patches
    torch.testing.assert_close(feats, torch.cat([tok[:, 0], tok[:, 5:].mean(1)], 1))
    assert float((feats[:, 128:] - tok[:, 1:].mean(1)).abs().max()) > 1e-6  # registers are left out
    # a local checkpoint (here the run above, as a DINOv2-layout state dict) is the start point
    ckpt = tmp_path / "dinov2_local.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in bb.state_dict().items()}}, ckpt)
    started = tmp_path / "v2-from-ckpt"
    pretrain_candidates.main(_ssl_args(tiny, started, "--arch", pretrain_candidates.DINOV2_ARCH, "--pretrained",
                                       str(ckpt), "--lr", "0", "--min-lr", "0", steps=2))
    loaded = torch.load(started / "backbone.pt", weights_only=False)
    for k, v in bb.state_dict().items():
        torch.testing.assert_close(loaded["state"][k], v)
    scratch = build_backbone(pretrain_candidates.DINOV2_ARCH, img_size=32, in_chans=3, drop_path=0.0,
                             overrides=pretrain_candidates.DEFAULT_OVERRIDES)
    assert not torch.equal(scratch.state_dict()["reg_token"], loaded["state"]["reg_token"])


def test_ssl_probe_puts_every_variant_side_by_side(tiny, tmp_path):
    out = tmp_path / "methods.json"
    md = tmp_path / "methods.md"
    ssl_probe.main(["--train", str(tiny["train"]), "--val", str(tiny["val"]), "--eval", str(tiny["eval"]),
                    "--work", str(tmp_path / "work"), "--seeds", "0", "--steps", "2", "--batch", "8",
                    "--threads", "1", "--variants", ",".join(ssl_probe.VARIANTS), "--adjacent",
                    str(tiny["adjacent"]), "--few-shot", "1", "--out", str(out), "--markdown", str(md)])
    res = json.loads(out.read_text())
    assert set(res["summary"]) >= set(ssl_probe.VARIANTS)
    ev = load_cache(tiny["eval"])
    for kind in ssl_probe.VARIANTS:
        r = res["runs"][f"{kind}/seed0"]
        assert 0.0 <= r["linear_auroc"] <= 1.0 and 0.0 <= r["knn_auroc"] <= 1.0
        assert r["few_shot"]["1"]["studies"] == 1
        assert r["slice"]["sensitivity"] is not None or not ev["slice_has_calcium"].any()
        if kind != "random":
            cfg = res["ssl"][f"{kind}/seed0"]["config"]
            assert (cfg["num_register_tokens"] == 4) == (kind == "dino-lg-v2")
            assert (cfg["location_conditioning"] == 3) == (kind == "dino-lg-loc")
    # the 1-shot head saw only one training study's candidates, the full head all of them
    tr = load_cache(tiny["train"])
    per_study = [int((tr["study"] == i).sum()) for i in range(2)]
    assert (tr["target"][tr["study"] == 0] > 0).any() and (tr["target"][tr["study"] == 1] > 0).any()
    assert res["runs"]["dino-lg/seed0"]["few_shot"]["1"]["candidates"] in per_study
    text = md.read_text()
    for label, _ in ssl_probe.VARIANTS.values():
        assert label in text
    assert "K = 1" in text and res["studies"]["eval"] == load_cache(tiny["eval"])["meta"]["studies"]
    # with two seeds the variants are compared to DINO-LG seed by seed
    two = json.loads(out.read_text())
    two["runs"].update({k.replace("seed0", "seed1"): v for k, v in two["runs"].items()})
    two["ssl"].update({k.replace("seed0", "seed1"): v for k, v in two["ssl"].items()})
    paired = ssl_probe.markdown(two, [0, 1])
    diff = res["runs"]["dino-lg-mv/seed0"]["knn_auroc"] - res["runs"]["dino-lg/seed0"]["knn_auroc"]
    row = next(x for x in paired.split("Paired difference")[1].splitlines() if x.startswith("| DINO-LG + multi-view"))
    assert row.split(" | ")[2] == f"{diff:+.4f} ± 0.0000"
