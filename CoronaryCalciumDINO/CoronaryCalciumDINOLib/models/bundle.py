"""Model bundles: a folder holding everything the inference pipeline needs.

Layout::

    <bundle>/manifest.json           format, name, version, provenance, configs, metrics,
                                     and the sha256 / size of every other file
    <bundle>/backbone-NN.safetensors frozen teacher ViT of candidate crops (fp16 unless noted; shards <= 16 MiB)
    <bundle>/detector-NN.safetensors candidate detector head (+ input standardisation)
    <bundle>/segmenter-NN.safetensors 2D UNet (MONAI layout) on candidate crops + context, 5 classes
    <bundle>/phantom_detector-NN.safetensors  (optional) detector head for calcium-scoring phantoms
    <bundle>/MODEL_CARD.md           what the model is, how it was trained, its measured metrics

``manifest.json`` keys: ``format_version`` (2), ``name``, ``version``, ``created`` (UTC ISO),
``trained_on``, ``not_validated_on``, ``files`` ({file: {sha256, bytes}}), ``weights``
({part: [files]}), ``backbone`` (config for
:func:`..models.backbone.build_backbone_from_config`), ``detector``
(:meth:`..models.detector.CandidateDetector.config` plus ``threshold``,
``youden_threshold``, ``target_sensitivity``), ``segmenter``
(:class:`..models.unet.SegmenterConfig`), ``candidates`` (the
:class:`..pipeline.candidates.CandidateConfig` of training and inference: threshold, field,
crop size and pixel, windows, context feature names), ``noise_rule`` (optional: the
:class:`..pipeline.candidates.NoiseRule` fitted on calibration studies; absent = every
candidate counts), ``phantom_detector`` (optional, with its weights: the config and
``threshold`` of the head that scans taken for phantoms go to), ``scoring``
(``threshold_hu``), ``metrics``.

Loading verifies every listed file's size and sha256 before anything is deserialised and
raises :class:`..errors.ModelBundleError` naming the first bad file. Weights load on the
CPU (``map_location="cpu"`` semantics); nothing is ever downloaded.

Two steps: :func:`load_manifest` verifies the bundle and returns its manifest-level facts
(:class:`BundleManifest`) without importing torch, timm or MONAI; :func:`load_bundle` does
that and builds the networks (:class:`ModelBundle`, which extends :class:`BundleManifest`).
The pipeline, given a bundle path, runs its stages up to the candidates on the first and
builds the networks after them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.resources
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import limits
from ..errors import ModelBundleError
from ..requirements import require_ai

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MODEL_CARD = "MODEL_CARD.md"
#: Largest weight file written (bytes); bigger state dicts are split into shards.
MAX_FILE_BYTES = 16 * 1024 * 1024
#: The default bundle ships as package data of the library, in this folder (``bundles/``
#: next to the subpackages): found through importlib.resources in a source checkout, an
#: installed wheel and the Slicer module alike. ``training.build_default_bundle`` writes it.
DEFAULT_BUNDLE_DIR = Path(str(importlib.resources.files("CoronaryCalciumDINOLib") / "bundles" / "ccdino-default"))
#: Environment variable naming another default bundle (a folder or its manifest.json).
DEFAULT_BUNDLE_ENV = "CCDINO_DEFAULT_BUNDLE"
PARTS = ("backbone", "detector", "segmenter")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class BundleManifest:
    """A verified bundle without its networks: the manifest-level facts the pipeline's early
    stages need (candidate settings, thresholds, whether it has a phantom head, noise rule,
    name and version). Made by :func:`load_manifest`, which imports no torch, timm or MONAI;
    :func:`load_bundle` builds the networks from it."""

    path: Path
    manifest: dict
    sha256: str  # of manifest.json, which pins every other file's checksum

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    @property
    def threshold(self) -> float:
        """Detector probability threshold (a slice is selected when prob >= threshold)."""
        return float(self.manifest["detector"]["threshold"])

    @property
    def phantom_threshold(self) -> float | None:
        """Threshold of the phantom detector head (None without one)."""
        d = self.manifest.get("phantom_detector")
        return None if d is None else float(d["threshold"])

    @property
    def has_phantom_detector(self) -> bool:
        """Whether the bundle has a detector head for calcium-scoring phantoms."""
        return "phantom_detector" in self.manifest

    @property
    def candidate_config(self):
        from ..pipeline.candidates import CandidateConfig

        return CandidateConfig.from_dict(self.manifest["candidates"])

    @property
    def noise_rule(self):
        """The bundle's :class:`..pipeline.candidates.NoiseRule` (inactive when the manifest has none)."""
        from ..pipeline.candidates import NoiseRule

        d = self.manifest.get("noise_rule")
        return NoiseRule() if d is None else NoiseRule.from_dict(d)

    @property
    def segmenter_config(self):
        from .unet import SegmenterConfig

        return SegmenterConfig.from_dict(self.manifest["segmenter"])

    def model_info(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "trained_on": self.manifest.get("trained_on", ""),
        }


@dataclass
class ModelBundle(BundleManifest):
    """A loaded, verified bundle: the manifest (:class:`BundleManifest`) plus its modules in
    eval mode on the CPU."""

    backbone: object  # torch.nn.Module
    detector: object  # CandidateDetector
    segmenter: object  # candidate segmenter (MONAI UNet + context)
    #: optional detector head for calcium-scoring phantoms (None in bundles without one)
    phantom_detector: object = None

    @property
    def has_phantom_detector(self) -> bool:
        return self.phantom_detector is not None

    def modules(self):
        return tuple(m for m in (self.backbone, self.detector, self.segmenter, self.phantom_detector) if m is not None)


# ----------------------------------------------------------------------------- saving


def _to_storage(state: dict, half: bool) -> dict:
    """Contiguous CPU tensors; floating tensors as fp16 when ``half`` and representable."""
    import torch

    out = {}
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        if half and t.is_floating_point() and t.dtype != torch.float16:
            h = t.to(torch.float16)
            # keep fp32 where fp16 would overflow
            if bool(torch.isfinite(h).all()) or not bool(torch.isfinite(t).all()):
                t = h
        out[k] = t.clone()
    return out


def _shards(state: dict, limit: int) -> list[dict]:
    """Split a state dict into consecutive groups whose tensor bytes stay under ``limit``."""
    groups: list[dict] = [{}]
    size = 0
    budget = limit - 256 * 1024  # room for the safetensors header
    for k, t in state.items():
        nbytes = t.numel() * t.element_size()
        if nbytes > budget:
            raise ModelBundleError(f"tensor {k} ({nbytes} bytes) exceeds the {limit}-byte file limit")
        if size + nbytes > budget and groups[-1]:
            groups.append({})
            size = 0
        groups[-1][k] = t
        size += nbytes
    return groups


def save_bundle(
    out_dir: str | os.PathLike,
    *,
    name: str,
    version: str,
    trained_on: str,
    not_validated_on: str,
    backbone_config: dict,
    backbone_state: dict,
    detector_state: dict,
    detector_info: dict,
    segmenter_config: dict,
    segmenter_state: dict,
    candidates: dict,
    noise_rule: dict | None = None,
    phantom_state: dict | None = None,
    phantom_info: dict | None = None,
    scoring_threshold_hu: float = 130.0,
    metrics: dict | None = None,
    model_card: str = "",
    half: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a bundle folder (weights, model card, then the manifest last) and return it.

    ``detector_info`` must hold the detector config and ``threshold`` (optionally
    ``youden_threshold``, ``target_sensitivity``); so must ``phantom_info``, the config of
    the optional detector head for calcium-scoring phantoms (``phantom_state``). The folder is built next to ``out_dir``
    and renamed into place, so a reader never sees a half-written bundle. An existing
    ``out_dir`` is replaced only with ``overwrite=True``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ModelBundleError(f"bundle folder exists (use overwrite): {out}")
    for key in ("feature_dim", "context_dim", "threshold"):
        if key not in detector_info:
            raise ModelBundleError(f"detector_info lacks {key!r}")
        if phantom_state is not None and key not in (phantom_info or {}):
            raise ModelBundleError(f"phantom_info lacks {key!r}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    weights: dict[str, list[str]] = {}
    parts = [("backbone", backbone_state), ("detector", detector_state), ("segmenter", segmenter_state)]
    if phantom_state is not None:
        parts.append(("phantom_detector", phantom_state))
    for part, state in parts:
        stored = _to_storage(state, half)
        weights[part] = []
        for i, group in enumerate(_shards(stored, MAX_FILE_BYTES)):
            fname = f"{part}-{i:02d}.safetensors"
            save_file(group, str(tmp / fname), metadata={"part": part, "format_version": str(FORMAT_VERSION)})
            weights[part].append(fname)
    (tmp / MODEL_CARD).write_text(model_card or f"# {name} {version}\n", encoding="utf-8")

    files = {}
    for f in sorted(p for p in tmp.iterdir() if p.is_file()):
        os.chmod(f, 0o644)  # readable by everyone, like any installed resource
        files[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "trained_on": trained_on,
        "not_validated_on": not_validated_on,
        "files": files,
        "weights": weights,
        "backbone": backbone_config,
        "detector": dict(detector_info),
        "segmenter": segmenter_config,
        "candidates": candidates,
        **({"noise_rule": dict(noise_rule)} if noise_rule is not None else {}),
        **({"phantom_detector": dict(phantom_info)} if phantom_state is not None else {}),
        "scoring": {"threshold_hu": float(scoring_threshold_hu)},
        "metrics": metrics or {},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.chmod(tmp / MANIFEST, 0o644)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- loading


def default_bundle_dir() -> Path:
    """The default bundle: ``$CCDINO_DEFAULT_BUNDLE`` when set, else the packaged one."""
    env = os.environ.get(DEFAULT_BUNDLE_ENV, "").strip()
    return Path(env).expanduser() if env else DEFAULT_BUNDLE_DIR


def resolve_bundle_path(path: str | os.PathLike | None) -> Path:
    """Bundle folder for ``path`` (None: the default bundle; a manifest.json: its folder)."""
    p = default_bundle_dir() if path is None else Path(path).expanduser()
    if p.is_file() and p.name == MANIFEST:
        p = p.parent
    if not p.exists():
        if path is None:
            where = f"${DEFAULT_BUNDLE_ENV}" if os.environ.get(DEFAULT_BUNDLE_ENV, "").strip() else "the installed package"
            raise ModelBundleError(
                f"default model bundle not found at {p} ({where}; reinstall the package, set "
                f"{DEFAULT_BUNDLE_ENV} to a bundle folder, or pass --bundle PATH)"
            )
        raise ModelBundleError(f"model bundle not found: {p}")
    if not p.is_dir():
        raise ModelBundleError(f"a model bundle is a folder with {MANIFEST} (or that file), got: {p}")
    if not (p / MANIFEST).is_file():
        raise ModelBundleError(f"model bundle {p} has no {MANIFEST}")
    return p


def read_manifest(path: str | os.PathLike | None) -> dict:
    folder = resolve_bundle_path(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelBundleError(f"cannot read {folder / MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelBundleError(f"{folder / MANIFEST} is not a JSON object")
    fv = manifest.get("format_version")
    if fv != FORMAT_VERSION:
        raise ModelBundleError(f"model bundle {folder.name}: format_version {fv!r} is not supported (expected {FORMAT_VERSION})")
    validate_manifest(manifest, folder.name)
    return manifest


# ----------------------------------------------------------------------------- manifest schema
# Every field the loader and the pipeline use, with its type and plausible range; checked
# before any weight is read (limits of HU, areas and pixel sizes: ..limits).


def _bad(where: str, key: str, what: str, value) -> ModelBundleError:
    return ModelBundleError(f"model bundle {where}: manifest {key} must be {what}, got {value!r}")


def _num(where, key, value, lo=None, hi=None, lo_open=False, hi_open=False):
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise _bad(where, key, "a finite number", value)
    v = float(value)
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi)):
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        raise _bad(where, key, f"a number in {lo_s or '(-inf'}, {hi_s or 'inf)'}", value)
    return v


def _int(where, key, value, lo=0, hi=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise _bad(where, key, f"an integer >= {lo}" + ("" if hi is None else f" and <= {hi}"), value)
    return value


def _windows(where, key, value):
    if not isinstance(value, list) or not value:
        raise _bad(where, key, "a non-empty list of [low, high] HU windows", value)
    for i, w in enumerate(value):
        if not isinstance(w, list) or len(w) != 2:
            raise _bad(where, f"{key}[{i}]", "a [low, high] pair", w)
        lo = _num(where, f"{key}[{i}][0]", w[0], *limits.HU_RANGE)
        hi = _num(where, f"{key}[{i}][1]", w[1], *limits.HU_RANGE)
        if not hi > lo:
            raise _bad(where, f"{key}[{i}]", "a window with high > low", w)


def _object(where, manifest, key, required=True) -> dict:
    value = manifest.get(key)
    if value is None and not required:
        return {}
    if key not in manifest:
        raise ModelBundleError(f"model bundle {where}: manifest lacks {key!r}")
    if not isinstance(value, dict):
        raise _bad(where, f"{key!r}", "an object", value)
    return value


def validate_manifest(manifest: dict, where: str) -> None:
    """Validate a format-2 manifest against its schema (types, ranges, consistency); raise
    :class:`ModelBundleError` naming the field and its value. Runs before any weight loads."""
    import re

    from ..constants import NUM_CLASSES
    from ..errors import InputError
    from ..pipeline.candidates import NoiseRule

    for key in ("name", "version"):
        if key in manifest and not isinstance(manifest[key], str):
            raise _bad(where, key, "a string", manifest[key])
    files = _object(where, manifest, "files")
    for fname, info in files.items():
        if not isinstance(info, dict):
            raise _bad(where, f"files[{fname!r}]", "an object {sha256, bytes}", info)
        _int(where, f"files[{fname!r}].bytes", info.get("bytes"))
        sha = info.get("sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise _bad(where, f"files[{fname!r}].sha256", "64 lower-case hex digits", sha)
    weights = _object(where, manifest, "weights")
    for part in (*PARTS, *(["phantom_detector"] if "phantom_detector" in weights else [])):
        listed = weights.get(part)
        if not isinstance(listed, list) or not listed or not all(isinstance(f, str) for f in listed):
            raise _bad(where, f"weights.{part}", "a non-empty list of file names", listed)

    backbone = _object(where, manifest, "backbone")
    if not isinstance(backbone.get("name"), str):
        raise _bad(where, "backbone.name", "a string", backbone.get("name"))
    for key in ("img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads", "feature_dim"):
        if key in backbone:
            _int(where, f"backbone.{key}", backbone[key], lo=1)
    for key in ("num_prefix_tokens", "num_register_tokens"):
        if key in backbone:
            _int(where, f"backbone.{key}", backbone[key], lo=0)
    if "overrides" in backbone and backbone["overrides"] is not None and not isinstance(backbone["overrides"], dict):
        raise _bad(where, "backbone.overrides", "an object", backbone["overrides"])
    if not isinstance(backbone.get("location_conditioning", False), bool):
        raise _bad(where, "backbone.location_conditioning", "true or false", backbone.get("location_conditioning"))

    for key, required in (("detector", True), ("phantom_detector", False)):
        det = _object(where, manifest, key, required=required)
        if not det:
            continue
        _int(where, f"{key}.feature_dim", det.get("feature_dim"), lo=1)
        _int(where, f"{key}.context_dim", det.get("context_dim"), lo=0)
        _int(where, f"{key}.hidden", det.get("hidden", 0), lo=0)
        if not isinstance(det.get("use_context", True), bool):
            raise _bad(where, f"{key}.use_context", "true or false", det.get("use_context"))
        _num(where, f"{key}.threshold", det.get("threshold"), 0.0, 1.0, lo_open=True, hi_open=True)
        if det.get("youden_threshold") is not None:
            _num(where, f"{key}.youden_threshold", det["youden_threshold"], 0.0, 1.0)
        if det.get("target_sensitivity") is not None:
            _num(where, f"{key}.target_sensitivity", det["target_sensitivity"], 0.0, 1.0, lo_open=True)
    has_config, has_weights = "phantom_detector" in manifest, "phantom_detector" in manifest.get("weights", {})
    if has_config and not manifest.get("phantom_detector"):
        raise _bad(where, "phantom_detector", "the head's config (or no key at all)", manifest.get("phantom_detector"))
    if has_config != has_weights or (has_weights and not manifest["weights"]["phantom_detector"]):
        raise ModelBundleError(f"model bundle {where}: phantom_detector config and weights must come together "
                               "(phantom_detector weights are not listed in the manifest, or have no config)")
    unknown = set(manifest.get("weights", {})) - {*PARTS, "phantom_detector"}
    if unknown:
        raise ModelBundleError(f"model bundle {where}: unknown weights part(s) {sorted(unknown)}")

    seg = _object(where, manifest, "segmenter")
    _windows(where, "segmenter.windows", seg.get("windows"))
    _int(where, "segmenter.neighbours", seg.get("neighbours", 1), lo=0, hi=16)
    _num(where, "segmenter.crop_mm", seg.get("crop_mm", 150.0), 0.0, 1000.0)
    size = _int(where, "segmenter.input_size", seg.get("input_size"), lo=1, hi=4096)
    channels, strides = seg.get("channels"), seg.get("strides")
    if not isinstance(channels, list) or len(channels) < 2:
        raise _bad(where, "segmenter.channels", "a list of at least 2 channel counts", channels)
    for i, c in enumerate(channels):
        _int(where, f"segmenter.channels[{i}]", c, lo=1)
    if not isinstance(strides, list) or len(strides) != len(channels) - 1:
        raise _bad(where, "segmenter.strides", f"a list of {len(channels) - 1} strides (one per down step)", strides)
    divisor = 1
    for i, st in enumerate(strides):
        divisor *= _int(where, f"segmenter.strides[{i}]", st, lo=1, hi=8)
    if size % divisor:
        raise _bad(where, "segmenter.input_size", f"divisible by the strides' product {divisor}", size)
    _int(where, "segmenter.num_res_units", seg.get("num_res_units", 1), lo=0, hi=16)
    if seg.get("out_classes", NUM_CLASSES) != NUM_CLASSES:
        raise _bad(where, "segmenter.out_classes", f"{NUM_CLASSES} (background + 4 arteries)", seg.get("out_classes"))
    _int(where, "segmenter.context_dim", seg.get("context_dim", 0), lo=0)

    cand = _object(where, manifest, "candidates")
    _num(where, "candidates.threshold_hu", cand.get("threshold_hu", 130.0), *limits.THRESHOLD_HU)
    _num(where, "candidates.min_area_mm2", cand.get("min_area_mm2", 1.0), *limits.MIN_AREA_MM2)
    _num(where, "candidates.field_mm", cand.get("field_mm", 160.0), 10.0, 1000.0)
    _int(where, "candidates.crop_px", cand.get("crop_px", 32), lo=4, hi=1024)
    _num(where, "candidates.pixel_mm", cand.get("pixel_mm", 0.5), *limits.PIXEL_SPACING_MM)
    if "windows" in cand:
        _windows(where, "candidates.windows", cand["windows"])
    ctx = cand.get("context")
    if ctx is not None and (not isinstance(ctx, list) or not all(isinstance(c, str) for c in ctx)):
        raise _bad(where, "candidates.context", "a list of feature names", ctx)

    rule = _object(where, manifest, "noise_rule", required=False)
    if rule:
        try:  # the rule's own definition of its valid values
            NoiseRule.from_dict(rule)
        except InputError as exc:
            raise ModelBundleError(f"model bundle {where}: manifest noise_rule: {exc}") from None

    scoring = _object(where, manifest, "scoring", required=False)
    if "threshold_hu" in scoring:
        _num(where, "scoring.threshold_hu", scoring["threshold_hu"], *limits.THRESHOLD_HU)



def verify_bundle(path: str | os.PathLike | None) -> dict:
    """Check that every file listed in the manifest exists with its size and sha256.

    Returns the manifest. Raises :class:`ModelBundleError` naming the first bad file.
    """
    folder = resolve_bundle_path(path)
    manifest = read_manifest(folder)
    for part in (*PARTS, *(p for p in manifest["weights"] if p not in PARTS)):
        for fname in manifest["weights"].get(part, []) or [None]:
            if fname is None or fname not in manifest["files"]:
                raise ModelBundleError(f"model bundle {folder.name}: {part} weights are not listed in the manifest")
    for fname, info in manifest["files"].items():
        f = folder / fname
        if Path(fname).name != fname:
            raise ModelBundleError(f"model bundle {folder.name}: bad file name {fname!r} in manifest")
        if not f.is_file():
            raise ModelBundleError(f"model bundle {folder.name}: file {fname} is missing")
        if f.stat().st_size != int(info.get("bytes", -1)):
            raise ModelBundleError(
                f"model bundle {folder.name}: file {fname} has {f.stat().st_size} bytes, manifest says {info.get('bytes')}"
            )
        if sha256_file(f) != info.get("sha256"):
            raise ModelBundleError(f"model bundle {folder.name}: checksum mismatch for {fname} (file corrupted or changed)")
    return manifest


def _load_state(folder: Path, files: list[str]) -> dict:
    from safetensors.torch import load_file

    state: dict = {}
    for fname in files:
        try:
            part = load_file(str(folder / fname), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelBundleError(f"model bundle {folder.name}: cannot read {fname}: {exc}") from None
        state.update({k: (v.float() if v.is_floating_point() else v) for k, v in part.items()})
    return state


def _load_into(module, state: dict, folder: Path, part: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelBundleError(f"model bundle {folder.name}: {part} weights do not fit its config ({first})") from None


def load_manifest(path: str | os.PathLike | None = None) -> BundleManifest:
    """Verify a bundle (folder or its manifest.json; None = the default bundle) and return its
    manifest-level facts, without its networks: every file's size and sha256 and the
    manifest's schema are checked, and the candidate and segmenter settings parsed. Imports
    no torch, timm or MONAI (the pipeline runs its early stages on it, then
    :func:`load_bundle` builds the networks)."""
    from ..errors import InputError
    from ..pipeline.candidates import CandidateConfig
    from .unet import SegmenterConfig

    folder = resolve_bundle_path(path)
    manifest = verify_bundle(folder)
    try:
        CandidateConfig.from_dict(manifest["candidates"])
        SegmenterConfig.from_dict(manifest["segmenter"])
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise ModelBundleError(f"model bundle {folder.name}: invalid config in manifest ({exc})") from None
    return BundleManifest(path=folder, manifest=manifest, sha256=sha256_file(folder / MANIFEST))


def load_bundle(path: str | os.PathLike | BundleManifest | None = None, *, timm_monai: bool = False) -> ModelBundle:
    """Load and verify a bundle (folder or its manifest.json; None = the default bundle).

    ``path`` may also be a :class:`BundleManifest` from :func:`load_manifest`: its files were
    verified then, and only its networks are built and their weights read.

    The backbone and the segmenter's UNet are the plain-PyTorch modules of :mod:`.plain`
    where they support the bundle's configs (the default bundle's are), so that inference
    imports neither timm nor MONAI; otherwise, or with ``timm_monai=True``, the timm ViT and
    the MONAI UNet that training uses. Both hold the same weights under the same keys and
    compute the same outputs."""
    require_ai()  # before anything imports torch, timm or MONAI
    light = path if isinstance(path, BundleManifest) else load_manifest(path)
    from ..errors import InputError
    from .backbone import build_backbone_from_config
    from .detector import CandidateDetector
    from .plain import build_plain_backbone, build_plain_unet, plain_backbone_supported, plain_unet_supported
    from .unet import build_candidate_segmenter

    folder, manifest = light.path, light.manifest
    try:
        if not timm_monai and plain_backbone_supported(manifest["backbone"]):
            backbone = build_plain_backbone(manifest["backbone"])
        else:
            backbone = build_backbone_from_config(manifest["backbone"])
        d = manifest["detector"]
        detector = CandidateDetector(int(d["feature_dim"]), int(d["context_dim"]), int(d.get("hidden", 0)),
                                     bool(d.get("use_context", True)))
        seg_cfg = light.segmenter_config
        plain_unet = None if timm_monai or not plain_unet_supported(seg_cfg) else build_plain_unet(seg_cfg)
        segmenter = build_candidate_segmenter(seg_cfg, unet=plain_unet)
        phantom = None
        if "phantom_detector" in manifest:
            d = manifest["phantom_detector"]
            phantom = CandidateDetector(int(d["feature_dim"]), int(d["context_dim"]), int(d.get("hidden", 0)),
                                        bool(d.get("use_context", True)))
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise ModelBundleError(f"model bundle {folder.name}: invalid config in manifest ({exc})") from None
    parts = [("backbone", backbone), ("detector", detector), ("segmenter", segmenter)]
    if phantom is not None:
        parts.append(("phantom_detector", phantom))
    for part, module in parts:
        _load_into(module, _load_state(folder, manifest["weights"][part]), folder, part)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    return ModelBundle(
        path=folder,
        manifest=manifest,
        sha256=light.sha256,
        backbone=backbone,
        detector=detector,
        segmenter=segmenter,
        phantom_detector=phantom,
    )


def save_random_bundle(
    out_dir: str | os.PathLike,
    *,
    threshold: float = 0.5,
    seed: int = 0,
    overwrite: bool = False,
    phantom: bool = False,
) -> Path:
    """Write an *untrained* (randomly initialised) bundle: for tests and speed benchmarks.

    Same architecture as the default bundle; its outputs are meaningless and its manifest
    says so (``trained_on: "nothing"``). ``phantom=True`` adds a (random) phantom detector head.
    """
    require_ai()
    import torch

    from ..pipeline.candidates import CONTEXT_NAMES, CandidateConfig
    from .backbone import backbone_config, build_backbone
    from .detector import CandidateDetector
    from .unet import SegmenterConfig, build_candidate_segmenter

    torch.manual_seed(seed)
    cand = CandidateConfig()
    backbone = build_backbone("vit_tiny_patch16_224", img_size=cand.crop_px, in_chans=len(cand.windows), drop_path=0.0,
                              overrides={"patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4})
    cfg = backbone_config(backbone)
    detector = CandidateDetector(int(cfg["feature_dim"]), len(CONTEXT_NAMES), hidden=0)
    seg_cfg = SegmenterConfig(windows=[list(w) for w in cand.windows], neighbours=0, crop_mm=0.0,
                              input_size=cand.crop_px, channels=[8, 16, 32], strides=[2, 2],
                              context_dim=len(CONTEXT_NAMES))
    seg = build_candidate_segmenter(seg_cfg)
    return save_bundle(
        out_dir,
        name="random-untrained",
        version="0",
        trained_on="nothing (random initialisation)",
        not_validated_on="anything: outputs are meaningless",
        backbone_config=cfg,
        backbone_state=backbone.state_dict(),
        detector_state=detector.state_dict(),
        detector_info={**detector.config(), "threshold": float(threshold), "youden_threshold": None},
        segmenter_config=seg_cfg.to_dict(),
        segmenter_state=seg.state_dict(),
        candidates=cand.to_dict(),
        **({"phantom_state": (ph := CandidateDetector(int(cfg["feature_dim"]), len(CONTEXT_NAMES), hidden=16)).state_dict(),
            "phantom_info": {**ph.config(), "threshold": float(threshold)}} if phantom else {}),
        model_card="# random-untrained\n\nRandomly initialised weights for tests and benchmarks. Not a model.\n",
        overwrite=overwrite,
    )
