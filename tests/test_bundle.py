"""Model bundle format: save / load round trip, checksums, missing files, sharding."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from CoronaryCalciumDINOLib.errors import ModelBundleError  # noqa: E402
from CoronaryCalciumDINOLib.models import bundle as bundle_mod  # noqa: E402
from CoronaryCalciumDINOLib.models.bundle import (  # noqa: E402
    MANIFEST,
    load_bundle,
    save_bundle,
    save_random_bundle,
    verify_bundle,
)
from CoronaryCalciumDINOLib.pipeline.candidates import CONTEXT_NAMES, CandidateConfig  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return save_random_bundle(tmp_path_factory.mktemp("b") / "tiny", threshold=0.25, seed=3)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_round_trip_weights_and_manifest(tiny_bundle):
    from safetensors.torch import load_file

    b = load_bundle(tiny_bundle)
    man = json.loads((tiny_bundle / MANIFEST).read_text())
    assert man["format_version"] == 2
    assert b.threshold == 0.25
    assert man["detector"]["feature_dim"] == 2 * man["backbone"]["embed_dim"] == 256
    assert man["detector"]["context_dim"] == len(CONTEXT_NAMES) == man["segmenter"]["context_dim"]
    # the candidate settings of training travel with the bundle and rebuild the same config
    assert b.candidate_config == CandidateConfig.from_dict(man["candidates"]) == CandidateConfig()
    # sha256 of the bundle = sha256 of its manifest file, computed here independently
    assert b.model_info()["sha256"] == hashlib.sha256((tiny_bundle / MANIFEST).read_bytes()).hexdigest()
    assert set(b.model_info()) == {"name", "version", "sha256", "trained_on"}
    # every file listed with its real size and checksum
    for name, info in man["files"].items():
        data = (tiny_bundle / name).read_bytes()
        assert info["bytes"] == len(data)
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
    # stored weights are fp16 and load back as the same values in fp32
    for part, module in (("backbone", b.backbone), ("detector", b.detector), ("segmenter", b.segmenter)):
        stored = {}
        for f in man["weights"][part]:
            stored.update(load_file(str(tiny_bundle / f)))
        own = module.state_dict()
        assert set(stored) == set(own)
        for k, v in stored.items():
            if v.is_floating_point():
                assert v.dtype == torch.float16
                assert own[k].dtype == torch.float32
            assert torch.equal(own[k].to(v.dtype), v), k
    assert not b.backbone.training and not b.segmenter.training


def test_manifest_path_is_accepted(tiny_bundle):
    b = load_bundle(tiny_bundle / MANIFEST)
    assert b.path == tiny_bundle


def test_corrupted_byte_names_the_file(tiny_bundle, tmp_path):
    bad = _copy(tiny_bundle, tmp_path / "bad")
    man = json.loads((bad / MANIFEST).read_text())
    target = man["weights"]["segmenter"][0]
    data = bytearray((bad / target).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / target).write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match=f"checksum mismatch for {target}"):
        load_bundle(bad)



def test_manifest_alone_gives_the_facts_of_the_loaded_bundle(tmp_path):
    """load_manifest verifies the bundle as load_bundle does and gives the same
    manifest-level facts without networks; load_bundle builds the networks from it."""
    from CoronaryCalciumDINOLib.models.bundle import BundleManifest, ModelBundle, load_manifest

    out = save_random_bundle(tmp_path / "ph", threshold=0.3, seed=1, phantom=True)
    light, full = load_manifest(out), load_bundle(out)
    assert type(light) is BundleManifest and isinstance(full, BundleManifest)
    for name in ("name", "version", "threshold", "phantom_threshold", "has_phantom_detector", "candidate_config",
                 "noise_rule", "sha256"):
        assert getattr(light, name) == getattr(full, name), name
    assert light.has_phantom_detector and light.model_info() == full.model_info()
    built = load_bundle(light)
    assert isinstance(built, ModelBundle) and built.sha256 == light.sha256 and len(built.modules()) == 4
    for a, b in zip(built.modules(), full.modules()):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    plain = load_manifest(save_random_bundle(tmp_path / "plain"))
    assert not plain.has_phantom_detector and plain.phantom_threshold is None
    data = bytearray((out / "detector-00.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "detector-00.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match="checksum mismatch for detector-00.safetensors"):
        load_manifest(out)

def test_missing_file_names_the_file(tiny_bundle, tmp_path):
    bad = _copy(tiny_bundle, tmp_path / "missing")
    (bad / "MODEL_CARD.md").unlink()
    with pytest.raises(ModelBundleError, match="MODEL_CARD.md is missing"):
        verify_bundle(bad)


def test_missing_bundle_and_manifest(tmp_path):
    with pytest.raises(ModelBundleError, match="not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelBundleError, match="no manifest.json"):
        load_bundle(tmp_path / "empty")


def test_wrong_format_version(tiny_bundle, tmp_path):
    bad = _copy(tiny_bundle, tmp_path / "v")
    man = json.loads((bad / MANIFEST).read_text())
    man["format_version"] = 99
    (bad / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ModelBundleError, match="format_version 99"):
        load_bundle(bad)


def test_refuses_to_overwrite(tiny_bundle):
    with pytest.raises(ModelBundleError, match="exists"):
        save_random_bundle(tiny_bundle)


def test_large_state_is_split_into_shards(tmp_path, monkeypatch):
    """With a 1 MiB file limit a ~2 MB backbone is split and loads back identically."""
    from CoronaryCalciumDINOLib.models.backbone import backbone_config, build_backbone
    from CoronaryCalciumDINOLib.models.detector import CandidateDetector
    from CoronaryCalciumDINOLib.models.unet import SegmenterConfig, build_candidate_segmenter

    monkeypatch.setattr(bundle_mod, "MAX_FILE_BYTES", 1024 * 1024)
    torch.manual_seed(0)
    bb = build_backbone("vit_tiny_patch16_224", img_size=32, drop_path=0.0, overrides={"depth": 2})
    det = CandidateDetector(384, len(CONTEXT_NAMES), hidden=16)
    seg_cfg = SegmenterConfig(input_size=32, channels=[4, 8], strides=[2], neighbours=0, context_dim=len(CONTEXT_NAMES))
    unet = build_candidate_segmenter(seg_cfg)
    out = save_bundle(
        tmp_path / "sharded", name="s", version="1", trained_on="t", not_validated_on="n",
        backbone_config=backbone_config(bb), backbone_state=bb.state_dict(),
        detector_state=det.state_dict(), detector_info={**det.config(), "threshold": 0.5},
        segmenter_config=seg_cfg.to_dict(), segmenter_state=unet.state_dict(),
        candidates=CandidateConfig().to_dict(), half=False,
    )
    man = json.loads((out / MANIFEST).read_text())
    assert len(man["weights"]["backbone"]) >= 2
    assert all(info["bytes"] <= 1024 * 1024 for info in man["files"].values())
    b = load_bundle(out)
    for k, v in bb.state_dict().items():
        assert torch.equal(b.backbone.state_dict()[k], v), k


def test_default_bundle_ships_and_verifies():
    man = verify_bundle(None)
    assert "synthetic" in man["trained_on"].lower()
    assert man["not_validated_on"]
    sizes = [info["bytes"] for info in man["files"].values()]
    assert max(sizes) <= 16 * 1024 * 1024
    assert np.isfinite(man["detector"]["threshold"])


def test_default_bundle_is_package_data_and_the_environment_can_point_elsewhere(tiny_bundle, tmp_path, monkeypatch):
    import importlib.resources

    packaged = importlib.resources.files("CoronaryCalciumDINOLib") / "bundles" / "ccdino-default"
    assert (packaged / MANIFEST).is_file()
    monkeypatch.delenv(bundle_mod.DEFAULT_BUNDLE_ENV, raising=False)
    assert bundle_mod.resolve_bundle_path(None) == bundle_mod.DEFAULT_BUNDLE_DIR
    monkeypatch.setenv(bundle_mod.DEFAULT_BUNDLE_ENV, str(tiny_bundle / MANIFEST))
    assert bundle_mod.resolve_bundle_path(None) == tiny_bundle
    assert load_bundle(None).name == "random-untrained"
    monkeypatch.setenv(bundle_mod.DEFAULT_BUNDLE_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ModelBundleError, match="CCDINO_DEFAULT_BUNDLE"):
        verify_bundle(None)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["detector"].__setitem__("threshold", "0.5"), "threshold"),
        (lambda m: m["detector"].__setitem__("threshold", 0.0), "threshold"),
        (lambda m: m["detector"].__setitem__("threshold", float("nan")), "threshold"),
        (lambda m: m.__setitem__("candidates", ["x"]), "'candidates' must be an object"),
        (lambda m: m["candidates"].__setitem__("crop_px", 0), "crop_px"),
        (lambda m: m["candidates"].__setitem__("context", ["only_one"]), "context features"),
        (lambda m: m.pop("candidates"), "lacks 'candidates'"),
        # the manifest schema: types, ranges and consistency of every field used
        (lambda m: next(iter(m["files"].values())).__setitem__("bytes", "abc"), "bytes"),
        (lambda m: next(iter(m["files"].values())).__setitem__("sha256", "xyz"), "sha256"),
        (lambda m: m.__setitem__("files", list(m["files"])), "'files' must be an object"),
        (lambda m: m.__setitem__("weights", ["backbone-00.safetensors"]), "'weights' must be an object"),
        (lambda m: m["weights"].__setitem__("detector", "detector-00.safetensors"), "weights.detector"),
        (lambda m: m["detector"].__setitem__("threshold", True), "threshold"),
        (lambda m: m["detector"].__setitem__("feature_dim", -3), "detector.feature_dim"),
        (lambda m: m["detector"].__setitem__("use_context", "yes"), "use_context"),
        (lambda m: m["segmenter"].__setitem__("input_size", -32), "segmenter.input_size"),
        (lambda m: m["segmenter"].__setitem__("input_size", 30), "divisible"),
        (lambda m: m["segmenter"].__setitem__("windows", "x"), "segmenter.windows"),
        (lambda m: m["segmenter"].__setitem__("windows", [[240.0, -160.0]]), "high > low"),
        (lambda m: m["segmenter"].__setitem__("crop_mm", float("nan")), "crop_mm"),
        (lambda m: m["segmenter"].__setitem__("strides", [2]), "strides"),
        (lambda m: m["segmenter"].__setitem__("out_classes", 4), "out_classes"),
        (lambda m: m["candidates"].__setitem__("threshold_hu", 0.0), "candidates.threshold_hu"),
        (lambda m: m["candidates"].__setitem__("pixel_mm", 0.0), "candidates.pixel_mm"),
        (lambda m: m["candidates"].__setitem__("field_mm", 0.0), "candidates.field_mm"),
        (lambda m: m["candidates"].__setitem__("windows", "x"), "candidates.windows"),
        (lambda m: m["scoring"].__setitem__("threshold_hu", float("inf")), "scoring.threshold_hu"),
        (lambda m: m["backbone"].__setitem__("embed_dim", "128"), "backbone.embed_dim"),
        (lambda m: m.__setitem__("noise_rule", [4.5, 5.0]), "'noise_rule' must be an object"),
        (lambda m: m.__setitem__("phantom_detector", {**m["detector"], "threshold": 1.5}), "phantom_detector.threshold"),
        (lambda m: m.__setitem__("phantom_detector", {**m["detector"]}), "phantom_detector weights are not listed"),
        (lambda m: m.__setitem__("phantom_detector", {}), "phantom_detector"),
        (lambda m: m["weights"].__setitem__("phantom_detector", ["detector-00.safetensors"]), "must come together"),
        (lambda m: m["weights"].__setitem__("phantom_detector", "x.safetensors"), "weights.phantom_detector"),
        (lambda m: m["weights"].__setitem__("extra", ["detector-00.safetensors"]), "unknown weights part"),
        (lambda m: m.__setitem__("noise_rule", {"min_contrast_sd": float("nan"), "min_area_mm2": 5.0}),
         "noise_rule: .*min_contrast_sd"),
        (lambda m: m.__setitem__("noise_rule", {"min_contrast_sd": 4.5, "min_area_mm2": -1.0}), "noise_rule: .*min_area_mm2"),
        (lambda m: m.__setitem__("noise_rule", {"min_contrast_sd": 4.5, "min_area": 5.0}), "noise_rule: .*unknown keys"),
    ],
)
def test_manifest_values_are_checked_before_weights_load(tiny_bundle, tmp_path, change, message, monkeypatch):
    """A manifest with a bad value is refused with a line naming it (the file checksums
    still match: only the manifest changed)."""
    b = _copy(tiny_bundle, tmp_path / "b")
    man = json.loads((b / MANIFEST).read_text())
    change(man)
    (b / MANIFEST).write_text(json.dumps(man))

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the manifest was validated")

    monkeypatch.setattr(bundle_mod, "_load_state", no_weights)
    with pytest.raises(ModelBundleError, match=message) as info:
        load_bundle(b)
    assert "\n" not in str(info.value)


def test_phantom_head_round_trip(tmp_path):
    """The optional phantom detector head is saved, checksummed and loaded like the others;
    bundles without one load with none."""
    from safetensors.torch import load_file

    out = save_random_bundle(tmp_path / "ph", threshold=0.3, seed=1, phantom=True)
    man = json.loads((out / MANIFEST).read_text())
    assert man["phantom_detector"]["threshold"] == 0.3 and man["weights"]["phantom_detector"]
    b = load_bundle(out)
    assert b.phantom_threshold == 0.3 and b.phantom_detector in b.modules()
    stored = {}
    for f in man["weights"]["phantom_detector"]:
        stored.update(load_file(str(out / f)))
    assert set(stored) == set(b.phantom_detector.state_dict())
    plain = load_bundle(save_random_bundle(tmp_path / "plain"))
    assert plain.phantom_detector is None and plain.phantom_threshold is None and len(plain.modules()) == 3


def test_phantom_head_weights_are_checksummed(tmp_path):
    """An optional part's weights are verified like the others: a file not pinned in the
    manifest's checksums is refused."""
    out = save_random_bundle(tmp_path / "ph", phantom=True)
    man = json.loads((out / MANIFEST).read_text())
    man["files"].pop(man["weights"]["phantom_detector"][0])
    (out / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ModelBundleError, match="phantom_detector weights are not listed"):
        load_bundle(out)


def test_segmenter_decides_calcium_without_its_blind_features():
    """probabilities(): with calcium_blind empty, the softmax of the logits; with it set, the
    background is that of a pass with those context features at the training average (so
    changing them moves the arteries, not the calcium) and the arteries share the calcium
    as the pass with every feature shares it."""
    from CoronaryCalciumDINOLib.models.unet import SegmenterConfig, build_candidate_segmenter

    torch.manual_seed(0)
    base = dict(input_size=16, channels=[4, 8], strides=[2], neighbours=0, context_dim=4, windows=[[0.0, 100.0]])
    x = torch.randn(3, 1, 16, 16)
    ctx = torch.randn(3, 4)
    one = build_candidate_segmenter(SegmenterConfig(**base)).eval()
    with torch.no_grad():
        assert torch.allclose(one.probabilities(x, ctx), torch.softmax(one(x, ctx), 1))
        two = build_candidate_segmenter(SegmenterConfig(**base, calcium_blind=[1, 3])).eval()
        two.load_state_dict(one.state_dict())
        two.set_standardisation(torch.randn(50, 4) * 3 + 1)
        p = two.probabilities(x, ctx)
        assert torch.allclose(p.sum(1), torch.ones(3, 16, 16), atol=1e-5)
        averaged = ctx.clone()
        averaged[:, [1, 3]] = two.context_mean[[1, 3]]
        assert torch.allclose(p[:, 0], torch.softmax(two(x, averaged), 1)[:, 0], atol=1e-6)
        full = torch.softmax(two(x, ctx), 1)
        assert torch.allclose(p[:, 1:] / p[:, 1:].sum(1, keepdim=True), full[:, 1:] / full[:, 1:].sum(1, keepdim=True),
                              atol=1e-5)
        moved = ctx.clone()
        moved[:, [1, 3]] += 5.0
        q = two.probabilities(x, moved)
        assert torch.allclose(q[:, 0], p[:, 0], atol=1e-6) and not torch.allclose(q[:, 1:], p[:, 1:], atol=1e-3)
        assert not torch.allclose(p[:, 0], full[:, 0], atol=1e-3)
        # a first pass sure of background (every artery's probability below float precision) still
        # shares out the calcium the blind pass finds
        calls = []

        def sure_of_background(module, inputs, out):
            calls.append(1)
            return out + torch.tensor([200.0, 0, 0, 0, 0])[None, :, None, None] if len(calls) == 1 else out

        two.unet.register_forward_hook(sure_of_background)
        sure = two.probabilities(x, ctx)
        assert torch.allclose(sure.sum(1), torch.ones(3, 16, 16), atol=1e-5)
        assert torch.allclose(sure[:, 1:] / sure[:, 1:].sum(1, keepdim=True), p[:, 1:] / p[:, 1:].sum(1, keepdim=True), atol=1e-5)


def test_bundle_keeps_the_segmenters_blind_features(tmp_path):
    """calcium_blind travels in the manifest and comes back on load; indices that are not
    context features are an invalid config."""
    from CoronaryCalciumDINOLib.models.backbone import backbone_config, build_backbone
    from CoronaryCalciumDINOLib.models.detector import CandidateDetector
    from CoronaryCalciumDINOLib.models.unet import SegmenterConfig, build_candidate_segmenter

    torch.manual_seed(0)
    bb = build_backbone("vit_tiny_patch16_224", img_size=32, drop_path=0.0, overrides={"depth": 1})
    det = CandidateDetector(384, len(CONTEXT_NAMES), hidden=16)
    seg_cfg = SegmenterConfig(input_size=32, channels=[4, 8], strides=[2], neighbours=0, context_dim=len(CONTEXT_NAMES),
                              calcium_blind=[2, 5])
    kw = dict(name="s", version="1", trained_on="t", not_validated_on="n", backbone_config=backbone_config(bb),
              backbone_state=bb.state_dict(), detector_state=det.state_dict(),
              detector_info={**det.config(), "threshold": 0.5}, segmenter_state=build_candidate_segmenter(seg_cfg).state_dict(),
              candidates=CandidateConfig().to_dict(), half=False)
    out = save_bundle(tmp_path / "blind", segmenter_config=seg_cfg.to_dict(), **kw)
    assert load_bundle(out).segmenter.config.calcium_blind == [2, 5]
    bad = seg_cfg.to_dict()
    bad["calcium_blind"] = [len(CONTEXT_NAMES)]
    out = save_bundle(tmp_path / "bad", segmenter_config=bad, **kw)
    with pytest.raises(ModelBundleError, match="invalid config in manifest.*calcium_blind indices"):
        load_bundle(out)
