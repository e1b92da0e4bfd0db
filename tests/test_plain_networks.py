"""The plain-PyTorch inference networks (models.plain) against the timm ViT and the MONAI UNet.

With the shipped bundle's weights the plain modules give the timm / MONAI modules' outputs
(features, last-block attention, segmenter logits), the pipeline gives the same labels and
scores with either on a synthetic study and on the real phantom (in float32 and under the
CPU's bf16 autocast), and a whole ``ccdino score`` run imports neither timm nor MONAI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("monai")

from CoronaryCalciumDINOLib.models import plain  # noqa: E402
from CoronaryCalciumDINOLib.models.backbone import (  # noqa: E402
    backbone_config,
    build_backbone,
    extract_features,
    features_and_attention,
    last_attention,
)
from CoronaryCalciumDINOLib.models.bundle import load_bundle, load_manifest  # noqa: E402
from CoronaryCalciumDINOLib.models.unet import SegmenterConfig, build_unet  # noqa: E402
from CoronaryCalciumDINOLib.pipeline import run_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHANTOM = ROOT / "Testing" / "Data" / "qrm-phantom-canon"
TOL = 1e-5


@pytest.fixture(scope="module")
def bundles():
    """The shipped bundle with the plain modules and with the timm / MONAI ones."""
    light = load_manifest(None)
    return load_bundle(light), load_bundle(light, timm_monai=True)


def _max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def test_shipped_bundle_loads_the_plain_modules(bundles):
    fast, ref = bundles
    assert isinstance(fast.backbone, plain.PlainViT) and isinstance(fast.segmenter.unet, plain.PlainUNet)
    assert type(ref.backbone).__module__.startswith("timm.")
    assert type(ref.segmenter.unet).__module__.startswith("monai.")
    for part in ("backbone", "segmenter"):
        a, b = getattr(fast, part).state_dict(), getattr(ref, part).state_dict()
        assert list(a) == list(b)
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert not any(p.requires_grad for p in fast.backbone.parameters())
    assert not fast.backbone.training and not fast.segmenter.training


@pytest.mark.parametrize("bf16", [False, True])
def test_backbone_outputs_match_timm(bundles, bf16):
    fast, ref = bundles
    cand = fast.candidate_config
    gen = torch.Generator().manual_seed(5)
    for shape in [(9, 3, cand.crop_px, cand.crop_px), (2, 3, 48, 64)]:  # the crop, and a resampled position grid
        x = torch.randn(*shape, generator=gen) * 1.5
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fa, fb = extract_features(fast.backbone, x), extract_features(ref.backbone, x)
            aa, ab = last_attention(fast.backbone, x), last_attention(ref.backbone, x)
            fa2, aa2 = features_and_attention(fast.backbone, x)
            ya, yb = fast.backbone(x), ref.backbone(x)
        assert fa.shape == fb.shape == (shape[0], 2 * fast.backbone.embed_dim)
        assert aa.shape == ab.shape and ya.shape == yb.shape
        assert _max_diff(fa, fb) <= TOL and _max_diff(aa, ab) <= TOL and _max_diff(ya, yb) <= TOL
        assert _max_diff(fa2, fb) <= TOL and _max_diff(aa2, ab) <= TOL
        assert float(fa.float().std()) > 0.1 and float(aa.float().std()) > 1e-3  # not a degenerate output


@pytest.mark.parametrize("bf16", [False, True])
def test_segmenter_outputs_match_monai(bundles, bf16):
    fast, ref = bundles
    cfg = fast.segmenter_config
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(6, len(cfg.windows) * (2 * cfg.neighbours + 1), cfg.input_size, cfg.input_size, generator=gen)
    c = torch.randn(6, cfg.context_dim, generator=gen) * 3
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        a, b = fast.segmenter(w, c), ref.segmenter(w, c)
    assert a.shape == b.shape == (6, cfg.out_classes, cfg.input_size, cfg.input_size)
    assert _max_diff(a, b) <= TOL
    assert float(a.float().std()) > 0.1


@pytest.mark.parametrize(
    "channels,strides,res",
    [([16, 32, 64], [2, 2], 0), ([8, 16, 32, 64], [2, 2, 1], 2), ([8, 16], [2], 1)],
)
def test_plain_unet_matches_monai_on_other_layouts(channels, strides, res):
    cfg = SegmenterConfig(neighbours=1, input_size=32, channels=channels, strides=strides, num_res_units=res)
    torch.manual_seed(1)
    ref = build_unet(cfg)
    for m in ref.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fast = plain.build_plain_unet(cfg)
    fast.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    fast.eval()
    x = torch.randn(3, cfg.in_channels, 32, 32)
    with torch.inference_mode():
        assert _max_diff(fast(x), ref(x)) <= TOL


def test_plain_vit_matches_timm_with_location_conditioning():
    torch.manual_seed(2)
    ref = build_backbone("vit_tiny_patch16_224", img_size=32, in_chans=3, drop_path=0.0, location_conditioning=True,
                         overrides={"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2})
    torch.nn.init.normal_(ref.location_film.out.weight, std=0.05)  # zero-initialised otherwise
    cfg = backbone_config(ref)
    assert plain.plain_backbone_supported(cfg)
    fast = plain.build_plain_backbone(cfg)
    fast.load_state_dict(ref.state_dict(), strict=True)
    assert backbone_config(fast) == cfg
    ref.eval()
    fast.eval()
    x, loc = torch.randn(4, 3, 32, 32), torch.tensor([-0.8, -0.1, 0.3, 0.9])
    with torch.inference_mode():
        assert _max_diff(extract_features(fast, x, loc), extract_features(ref, x, loc)) <= TOL
        assert _max_diff(last_attention(fast, x, loc), last_attention(ref, x, loc)) <= TOL


def test_configs_the_plain_modules_do_not_build_go_to_timm_and_monai():
    light = load_manifest(None)
    cfg = dict(light.manifest["backbone"])
    assert plain.plain_backbone_supported(cfg)
    assert not plain.plain_backbone_supported({**cfg, "name": "vit_small_patch14_reg4_dinov2"})
    assert not plain.plain_backbone_supported({**cfg, "num_register_tokens": 4})
    assert not plain.plain_backbone_supported({**cfg, "overrides": {**cfg["overrides"], "qkv_bias": False}})
    assert not plain.plain_backbone_supported({**cfg, "format": "other"})
    with pytest.raises(ValueError):
        plain.build_plain_backbone({**cfg, "num_register_tokens": 4})
    assert plain.plain_unet_supported(light.segmenter_config)
    assert not plain.plain_unet_supported({**light.manifest["segmenter"], "channels": [16], "strides": []})


def _same_result(a, b) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.selected, b.selected)
    np.testing.assert_allclose(a.slice_probabilities, b.slice_probabilities, rtol=0, atol=TOL)
    assert a.score.to_dict() == b.score.to_dict()
    assert a.lesion_confidence == b.lesion_confidence
    assert a.counts == b.counts


@pytest.mark.parametrize("bf16", [False, True])
def test_pipeline_gives_the_same_result_on_a_synthetic_study(bundles, bf16, monkeypatch):
    from CoronaryCalciumDINOLib.pipeline import device
    from CoronaryCalciumDINOLib.synth import generate_study

    monkeypatch.setattr(device, "cpu_bf16_supported", lambda: bf16)
    fast, ref = bundles
    ct = generate_study(3, matrix=256, n_slices=24).ct
    a = run_pipeline(ct, fast, device="cpu", attention=True)
    b = run_pipeline(ct, ref, device="cpu", attention=True)
    assert a.counts["candidates"] > 0 and a.counts["segmented"] > 0  # the networks ran on candidates
    _same_result(a, b)
    np.testing.assert_allclose(a.attention, b.attention, rtol=0, atol=TOL)


def test_pipeline_gives_the_same_result_on_the_phantom(bundles):
    from CoronaryCalciumDINOLib.io import load_ct

    fast, ref = bundles
    ct = load_ct(PHANTOM)
    a = run_pipeline(ct, fast, device="cpu")
    b = run_pipeline(ct, ref, device="cpu")
    assert a.score.total.agatston > 0
    _same_result(a, b)


def test_score_command_imports_neither_timm_nor_monai(tmp_path):
    """A whole ``ccdino score`` run (the default bundle, the AI outputs written) in a fresh
    interpreter loads torch but not timm or MONAI."""
    out = tmp_path / "out"
    code = (
        "import json, sys\n"
        "from CoronaryCalciumDINOLib.cli import main\n"
        f"rc = main(['score', {str(PHANTOM)!r}, '--device', 'cpu', '--out', {str(out)!r}, '--quiet'])\n"
        "print(json.dumps({'rc': rc, 'modules': sorted(m for m in ('torch', 'timm', 'monai', 'torchvision')"
        " if m in sys.modules)}))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=str(ROOT / "CoronaryCalciumDINO"))
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res == {"rc": 0, "modules": ["torch"]}
    assert list(out.glob("*.labels.nrrd")) and list(out.glob("*.json"))
