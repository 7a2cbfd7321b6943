"""A small U-ViT (Bao et al. 2023): a vision transformer with long skips between shallow and deep blocks.

Written for skipsearch from the paper's description (facts: ``reference-facts.md`` §9). Read top to bottom:

* the image is cut into p x p patches, each a token of width D (a strided conv);
* a time token (and, for class-conditional models, a label token) goes in front along the *token* axis,
  ``cat((time_token, tokens), dim=1)``, then a learned positional embedding is added;
* ``in_blocks`` (depth // 2 transformer blocks) each push their output, a ``mid_block`` runs, and ``out_blocks``
  (depth // 2) each pop one: ``skip_linear(cat([x, skip], dim=-1))`` then the block. These concatenations along
  the *feature* axis are the long skips Skip-Tuning scales (rho * skip before the cat);
* LayerNorm, a Linear to p*p*C values per token, the extra tokens dropped, unpatchify, an optional 3x3 conv.

The forward takes ``(x, t)`` or ``(x, t, class_labels)`` with ``t`` the (integer or float) DDPM timestep.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of the timesteps [N]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float().reshape(-1, 1) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, (H/p)(W/p), p*p*C] (row-major patches, each p, p, C)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """[N, L, p*p*C] -> [N, C, H, W] for a square image of side ``size``; the inverse of :func:`patchify`."""
    n, length, width = tokens.shape
    side = int(round(math.sqrt(length)))
    patch = int(round(math.sqrt(width // channels)))
    x = tokens.reshape(n, side, side, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, size, size)


class Attention(nn.Module):
    """Multi-head self-attention over the token axis."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """A pre-norm transformer block; in the decoder half it first fuses the long skip: ``skip_linear(cat)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, skip: bool = False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # main first, skip second, along features
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """U-ViT for square images: ``depth`` blocks (odd: depth // 2 in, one mid, depth // 2 out)."""

    def __init__(self, img_size: int = 28, patch_size: int = 4, in_chans: int = 1, embed_dim: int = 64,
                 depth: int = 7, num_heads: int = 4, mlp_ratio: float = 4.0, num_classes: int = 0,
                 conv: bool = True):
        super().__init__()
        if img_size % patch_size or depth % 2 == 0:
            raise ValueError("U-ViT needs img_size divisible by patch_size and an odd depth")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.time_embed = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(),
                                        nn.Linear(4 * embed_dim, embed_dim))
        self.label_emb = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.extras = 1 + int(num_classes > 0)  # the time token, and the label token
        num_patches = (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.in_blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth // 2))
        self.mid_block = Block(embed_dim, num_heads, mlp_ratio)
        self.out_blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, skip=True) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size * patch_size * in_chans)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()

    def tokens(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """Patch tokens with the time (and label) token in front and the positional embedding added."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        time_token = self.time_embed(timestep_embedding(timesteps.reshape(-1), self.embed_dim))
        x = torch.cat((time_token.unsqueeze(1), x), dim=1)  # along tokens: not a skip
        if self.label_emb is not None:
            labels = class_labels.argmax(-1) if class_labels.ndim == 2 else class_labels  # one-hot or indices
            x = torch.cat((self.label_emb(labels.long()).unsqueeze(1), x), dim=1)
        return x + self.pos_embed

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """The last tokens back to an image: norm, per-token pixels, extra tokens dropped, unpatchify, conv."""
        x = self.decoder_pred(self.norm(x))[:, self.extras:]
        return self.final_layer(unpatchify(x, self.in_chans, self.img_size))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.tokens(x, timesteps.expand(x.shape[0]) if timesteps.numel() == 1 else timesteps, class_labels)
        skips = []
        for block in self.in_blocks:
            h = block(h)
            skips.append(h)
        h = self.mid_block(h)
        for block in self.out_blocks:
            h = block(h, skips.pop())
        return self.image(h)
