"""Per-artery calcium segmenter: a MONAI 2D UNet with 5 output classes.

Input channels are the HU windows of the slice being segmented, optionally followed by the
same windows of its neighbouring slices (``neighbours`` = 1 gives z-1, z, z+1, in that
order: 3 slices x n windows channels). Output: logits of background, LM, LAD, LCX, RCA.
The network is fully convolutional; the input side must be divisible by
``2 ** len(strides)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..constants import NUM_CLASSES


@dataclass
class SegmenterConfig:
    """What a bundle stores about its segmenter (all JSON-ready)."""

    windows: list[list[float]] = field(default_factory=lambda: [[-160.0, 240.0], [-200.0, 800.0], [130.0, 1130.0]])
    #: neighbouring slices on each side given as extra channels (0: the slice alone)
    neighbours: int = 1
    #: side of the square field (mm) around the heart centre that is segmented
    crop_mm: float = 150.0
    #: side (pixels) the field is resampled to; crop_mm / input_size = pixel size seen
    input_size: int = 256
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 1
    out_classes: int = NUM_CLASSES
    #: context features given as extra constant channels (candidate segmenter: where in
    #: the heart the crop lies; 0 for none)
    context_dim: int = 0
    #: candidate segmenter: indices of the context features that the calcium decision does
    #: not see (they read as the training set's average in a second pass, whose background
    #: probability is kept; the artery comes from the pass with every feature). Empty: one
    #: pass decides both (bundles up to 0.6.5).
    calcium_blind: list[int] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return len(self.windows) * (2 * self.neighbours + 1) + int(self.context_dim)

    @property
    def divisor(self) -> int:
        d = 1
        for s in self.strides:
            d *= int(s)
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["in_channels"] = self.in_channels
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SegmenterConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        cfg = cls(**known)
        if cfg.input_size % cfg.divisor:
            raise ValueError(f"segmenter input size {cfg.input_size} is not divisible by {cfg.divisor}")
        bad = [i for i in cfg.calcium_blind if not 0 <= int(i) < int(cfg.context_dim)]
        if bad:
            raise ValueError(f"segmenter calcium_blind indices {bad} are not context features (0-{int(cfg.context_dim) - 1})")
        return cfg


def build_unet(config: SegmenterConfig | dict):
    """The MONAI 2D UNet described by ``config`` (randomly initialised)."""
    from monai.networks.nets import UNet

    cfg = config if isinstance(config, SegmenterConfig) else SegmenterConfig.from_dict(config)
    if len(cfg.channels) != len(cfg.strides) + 1:
        raise ValueError("segmenter config: len(channels) must be len(strides) + 1")
    return UNet(
        spatial_dims=2,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_classes,
        channels=tuple(int(c) for c in cfg.channels),
        strides=tuple(int(s) for s in cfg.strides),
        num_res_units=int(cfg.num_res_units),
        norm="batch",
    )


def build_candidate_segmenter(config: SegmenterConfig | dict, unet=None):
    """UNet on a candidate crop with its context as constant extra channels.

    ``forward(windows, context)``: windows (N, W, P, P) from
    :func:`..pipeline.candidates.crop_windows`, context (N, C) from
    :func:`..pipeline.candidates.find_candidates`; the context is standardised with the
    training set's mean / std (buffers ``context_mean`` / ``context_std``, saved with the
    weights), broadcast to P x P and appended to the windows. Returns (N, 5, P, P) logits.
    ``probabilities(windows, context)``: (N, 5, P, P) class probabilities as inference uses
    them: the softmax of ``forward``; with ``config.calcium_blind`` set, background is that of
    a second pass with those context features at the training set's average (what the
    network standardises to 0) and the calcium probability is shared between the arteries as
    the first pass shares it.
    ``unet``: the UNet to wrap (default: :func:`build_unet` of ``config``; inference passes
    the plain-PyTorch one of :mod:`.plain`, which has the same state-dict keys).
    """
    import torch
    from torch import nn

    cfg = config if isinstance(config, SegmenterConfig) else SegmenterConfig.from_dict(config)

    class _CandidateSegmenter(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = cfg
            self.unet = build_unet(cfg) if unet is None else unet
            self.register_buffer("context_mean", torch.zeros(int(cfg.context_dim)))
            self.register_buffer("context_std", torch.ones(int(cfg.context_dim)))

        def set_standardisation(self, context) -> None:
            c = torch.as_tensor(context).float()
            self.context_mean.copy_(c.mean(0))
            self.context_std.copy_(c.std(0).clamp_min(1e-3))

        def forward(self, windows, context):
            n, _, p, q = windows.shape
            c = (context.float() - self.context_mean) / self.context_std
            x = torch.cat([windows.float(), c[:, :, None, None].expand(n, c.shape[1], p, q)], dim=1)
            return self.unet(x)

        def probabilities(self, windows, context):
            logits = self(windows, context).float()
            idx = [int(i) for i in self.config.calcium_blind]
            if not idx:
                return torch.softmax(logits, 1)
            blind = context.clone()
            blind[:, idx] = self.context_mean[idx].to(blind.dtype)
            background = torch.softmax(self(windows, blind).float(), 1)[:, :1]
            arteries = torch.softmax(logits[:, 1:], 1)  # the arteries' shares of the first pass's calcium
            return torch.cat([background, (1.0 - background) * arteries], dim=1)

    return _CandidateSegmenter()
