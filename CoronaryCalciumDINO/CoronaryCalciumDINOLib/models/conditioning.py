"""Location conditioning of a ViT (the DrasCLR idea, applied to axial slices).

DrasCLR makes features anatomy-specific by routing a 3D encoder's kernels by the patch's
anatomical location. For 2D slices the location is one number::

    c = slice position within the heart's z-extent, mapped to [-1, 1]
        (-1 = inferior end of the heart, +1 = superior end)

It is computed from the heart / body geometry only, never from calcium labels, so it is
available at inference (:func:`CoronaryCalciumDINOLib.data.slices.slice_location`).
:class:`LocationFiLM` maps ``c`` through a small MLP (on Fourier features of ``c``) to a
per-block scale and shift applied to the tokens entering each transformer block::

    x_l  <-  x_l * (1 + gamma_l(c)) + beta_l(c)

A location of several coordinates (``n_coords`` > 1, e.g. a calcium candidate's position in
the heart field: left-right, anterior-posterior, inferior-superior) embeds each coordinate
alike and concatenates the embeddings; ``n_coords=1`` is the slice-location model above.

The MLP's output layer is zero-initialised, so at initialisation the conditioned backbone is
exactly the unconditioned one (pretrained weights are untouched), and conditioning is learnt
from there.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LocationFiLM(nn.Module):
    """MLP of the location ``c`` -> per-block (scale, shift), zero-initialised output.

    Parameters
    ----------
    embed_dim : token width of the ViT.
    depth : number of transformer blocks conditioned.
    hidden : hidden width of the MLP.
    n_freq : number of Fourier frequencies used to embed ``c`` (``sin/cos(2^k pi c)``).
    n_coords : number of location coordinates (``c`` of shape (B,) when 1, else (B, n_coords)).
    """

    def __init__(self, embed_dim: int, depth: int, hidden: int = 128, n_freq: int = 4, n_coords: int = 1):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.depth = int(depth)
        self.n_freq = int(n_freq)
        self.n_coords = int(n_coords)
        self.mlp = nn.Sequential(
            nn.Linear(self.n_coords * (1 + 2 * self.n_freq), hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.out = nn.Linear(hidden, self.depth * 2 * self.embed_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, c: torch.Tensor) -> torch.Tensor:
        """Fourier features ``[c, sin(2^k pi c), cos(2^k pi c)]`` per coordinate: (B, n_coords (1 + 2 n_freq))."""
        c = c.reshape(-1, self.n_coords, 1).float()
        freqs = (2.0 ** torch.arange(self.n_freq, device=c.device, dtype=c.dtype)) * math.pi
        ang = c * freqs
        return torch.cat([c, torch.sin(ang), torch.cos(ang)], dim=2).flatten(1)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """Return (B, depth, 2, embed_dim): ``[:, l, 0]`` = gamma_l, ``[:, l, 1]`` = beta_l."""
        h = self.mlp(self.embed(c))
        return self.out(h).view(-1, self.depth, 2, self.embed_dim)


def apply_film(x: torch.Tensor, params: torch.Tensor, block: int) -> torch.Tensor:
    """Apply block ``block``'s scale/shift from ``params`` (B, depth, 2, D) to tokens (B, N, D)."""
    gamma = params[:, block, 0].unsqueeze(1).to(x.dtype)
    beta = params[:, block, 1].unsqueeze(1).to(x.dtype)
    return x * (1.0 + gamma) + beta
