"""Attention maps of the frozen teacher ViT on the CT grid.

For each selected slice the CLS-token attention of the backbone's last block
(:func:`..models.backbone.last_attention`, one map per head over the patch grid) is
upsampled bilinearly to the detector field and pasted into the CT grid. Index 0 of the
result is the mean over heads; 1..heads are the heads. Unselected slices stay 0.
"""

from __future__ import annotations

import numpy as np

from . import preprocess as pp
from .device import autocast_for, chunks


def attention_maps(
    ct_hu: np.ndarray, indices, field: pp.Field, bundle, dev, batch: int, report=None, locations: np.ndarray | None = None
) -> np.ndarray:
    """Last-block CLS attention of slices ``indices`` on the CT grid: (heads+1, z, y, x)."""
    import torch

    from ..models.backbone import last_attention, patch_grid

    prep = bundle.preprocessing
    size, windows = int(prep["input_size"]), prep["windows"]
    out = None
    done = 0
    for chunk in chunks(np.asarray(indices, dtype=int), batch):
        x = pp.to_windows(pp.extract_field(ct_hu[chunk], field), size, windows).to(dev)
        with autocast_for(dev):
            loc = None if locations is None else torch.from_numpy(locations[chunk]).to(dev)
            att = last_attention(bundle.backbone, x, location=loc).float()  # (n, heads, patches)
        gh, gw = patch_grid(bundle.backbone, size, size)
        att = att.cpu().reshape(att.shape[0], att.shape[1], gh, gw)
        maps = np.concatenate([att.mean(1, keepdim=True).numpy(), att.numpy()], axis=1)
        grid = pp.field_to_grid(maps, field, ct_hu.shape[1:], mode="bilinear")  # (n, heads+1, y, x)
        if out is None:
            out = np.zeros((grid.shape[1], *ct_hu.shape), dtype=np.float32)
        out[:, chunk] = grid.transpose(1, 0, 2, 3)
        done += len(chunk)
        if report:
            report(done / max(len(indices), 1), f"attention {done}/{len(indices)}")
    if out is None:  # nothing selected: zeros with the backbone's head count
        heads = int(bundle.backbone.blocks[-1].attn.num_heads)
        out = np.zeros((heads + 1, *ct_hu.shape), dtype=np.float32)
    return out
