"""A plain-PyTorch MNIST UNet written the way many papers' repositories write one.

The decoder adds the time embedding right after concatenating the skip: ``decoder(torch.cat((skip, h), 1) + emb)``,
so no module ever receives the concatenation itself, the skip comes first, and the data range is [0, 1]. It is an
epsilon-prediction DDPM (linear beta, T = 1000) taking the integer timestep. ``catemb-mnist.toml`` beside this file
tells skipsearch all of that; nothing here knows about skipsearch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(nn.functional.silu(self.norm(self.conv1(h))))


class CatEmbUNet(nn.Module):
    """28 -> 14 -> 7 and back; three skips (28, 14, 7 px), each concatenated first and followed by ``+ emb``."""

    def __init__(self, channels: int = 16, emb_dim: int = 64):
        super().__init__()
        c = channels
        self.emb_dim = emb_dim
        self.time = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inc = nn.Conv2d(1, c, 3, padding=1)
        self.down1 = Block(c, 2 * c, stride=2)
        self.down2 = Block(2 * c, 2 * c, stride=2)
        self.mid = Block(2 * c, 2 * c)
        self.emb3, self.emb2, self.emb1 = (nn.Linear(emb_dim, 4 * c), nn.Linear(emb_dim, 4 * c),
                                           nn.Linear(emb_dim, 3 * c))
        self.dec3 = Block(4 * c, 2 * c)
        self.dec2 = Block(4 * c, 2 * c)
        self.dec1 = Block(3 * c, c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.emb_dim))
        s1 = self.inc(x)
        s2 = self.down1(s1)
        s3 = self.down2(s2)
        h = self.mid(s3)
        h = self.dec3(torch.cat((s3, h), 1) + self.emb3(emb)[:, :, None, None])
        h = nn.functional.interpolate(h, scale_factor=2)
        h = self.dec2(torch.cat((s2, h), 1) + self.emb2(emb)[:, :, None, None])
        h = nn.functional.interpolate(h, scale_factor=2)
        h = self.dec1(torch.cat((s1, h), 1) + self.emb1(emb)[:, :, None, None])
        return self.out(h)


def build(channels: int = 16, emb_dim: int = 64) -> CatEmbUNet:
    return CatEmbUNet(channels, emb_dim)
