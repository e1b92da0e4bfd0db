"""Attention maps of the frozen teacher ViT on the CT grid.

For each candidate the segmenter looked at, the CLS-token attention of the backbone's last
block (:func:`..models.backbone.last_attention`, one map per head over the crop's patch
grid) is spread over the crop's pixels and written to the CT voxels under the crop (the
larger value where crops overlap). Index 0 of the result is the mean over heads; 1..heads
are the heads. Voxels under no such crop stay 0.
"""

from __future__ import annotations

import numpy as np

from . import candidates as cd
from .device import autocast_for, chunks


def attention_maps(hu: np.ndarray, cands: cd.Candidates, index, bundle, dev, batch: int, report=None) -> np.ndarray:
    """Last-block CLS attention over the crops of candidates ``index``: (heads+1, z, y, x) float32."""
    import torch
    import torch.nn.functional as F

    from ..models.backbone import last_attention, patch_grid

    heads = int(bundle.backbone.blocks[-1].attn.num_heads)
    out = np.zeros((heads + 1, *hu.shape), dtype=np.float32)
    index = np.asarray(index, dtype=int)
    p = cands.config.crop_px
    done = 0
    for idx in chunks(index, batch):
        x = torch.from_numpy(cd.crop_windows(hu, cands, idx)).to(dev)
        with autocast_for(dev, cpu_bf16=None):
            att = last_attention(bundle.backbone, x).float()  # (n, heads, patches)
        gh, gw = patch_grid(bundle.backbone, p, p)
        att = att.cpu().reshape(att.shape[0], heads, gh, gw)
        att = att / att.flatten(2).max(-1).values.clamp_min(1e-12)[..., None, None]
        maps = torch.cat([att.mean(1, keepdim=True), att], 1)
        maps = F.interpolate(maps, size=(p, p), mode="bilinear", align_corners=False).numpy()
        sub = cd.subset(cands, idx)
        z, y, x_, ok = sub.nearest_pixels(p)
        for h in range(heads + 1):
            np.maximum.at(out[h], (z[ok], y[ok], x_[ok]), maps[:, h][ok])
        done += len(idx)
        if report:
            report(done / max(index.size, 1), f"attention {done}/{index.size}")
    return out
