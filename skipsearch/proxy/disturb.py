"""Disturbance check: FID must grow with the strength of known image corruptions (Heusel et al. 2017, fig. 1).

Five disturbances at four strengths are applied to real images; every level reuses the same random draws (noise
field, speckle positions, rectangle centres), so a stronger level is the weaker one pushed further and FID should
increase strictly. A feature space failing this (e.g. scoring speckled images as closer to the data than clean ones)
is not a usable search objective.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
import torch.nn.functional as F

from skipsearch.proxy.extractors import FeatureExtractor, as_uint8, get_extractor
from skipsearch.proxy.metrics import fid_features
from skipsearch.proxy.stats import FeatureStats, compute_reference_stats

if TYPE_CHECKING:
    from skipsearch.settings import Settings

# Strength per level 1..4 (level 0 is the clean images); units in each function's docstring.
STRENGTHS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.03, 0.06, 0.12, 0.24),
    "gaussian_blur": (0.5, 0.8, 1.2, 1.8),
    "salt_pepper": (0.01, 0.02, 0.05, 0.1),
    "black_rectangles": (0.2, 0.3, 0.4, 0.5),
    "swirl": (1.0, 2.0, 3.0, 4.0),
}


class DisturbanceRow(NamedTuple):
    disturbance: str
    level: int
    fid: float


def gaussian_noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of std ``sigma`` (image range [0,1])."""
    return x + sigma * torch.randn(x.shape, generator=g)


def gaussian_blur(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur of std ``sigma`` pixels (zero padding: MNIST's background is black)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)


def salt_pepper(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    """A ``fraction`` of pixels set to white or black (half each); hits are nested across strengths."""
    u = torch.rand(x.shape[0], 1, *x.shape[2:], generator=g).expand_as(x)
    salt = (torch.rand(x.shape[0], 1, *x.shape[2:], generator=g) < 0.5).expand_as(x)
    hit = u < fraction
    return torch.where(hit & salt, 1.0, torch.where(hit, 0.0, x))


def black_rectangles(x: torch.Tensor, size: float, g: torch.Generator) -> torch.Tensor:
    """One black square per image, side ``size`` x image side, centred at a random point of the middle half."""
    n, _, h, w = x.shape
    cy = h * (0.25 + 0.5 * torch.rand(n, generator=g))
    cx = w * (0.25 + 0.5 * torch.rand(n, generator=g))
    half_h, half_w = size * h / 2, size * w / 2
    yy = torch.arange(h, dtype=x.dtype)[None, :, None] + 0.5
    xx = torch.arange(w, dtype=x.dtype)[None, None, :] + 0.5
    inside = ((yy - cy[:, None, None]).abs() < half_h) & ((xx - cx[:, None, None]).abs() < half_w)
    return x.masked_fill(inside[:, None], 0.0)


def swirl(x: torch.Tensor, strength: float, g: torch.Generator, radius: float | None = None) -> torch.Tensor:
    """scikit-image's swirl about the centre: rotation ``strength * exp(-r / (ln2 * radius / 5))``, bilinear.

    ``radius`` defaults to the image side.
    """
    n, _, h, w = x.shape
    radius = float(max(h, w)) if radius is None else radius
    decay = math.log(2) * radius / 5
    yy, xx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = torch.hypot(yy - cy, xx - cx)
    theta = torch.atan2(yy - cy, xx - cx) + strength * torch.exp(-r / decay)
    src_x, src_y = cx + r * torch.cos(theta), cy + r * torch.sin(theta)
    # Pixel centres -> grid_sample's [-1,1] coordinates (align_corners=False).
    grid = torch.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], dim=-1)
    return F.grid_sample(x, grid.expand(n, h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False)


DISTURBANCES: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "salt_pepper": salt_pepper,
    "black_rectangles": black_rectangles,
    "swirl": swirl,
}


def disturb(images: torch.Tensor, disturbance: str, level: int, seed: int = 0) -> torch.Tensor:
    """``images`` (uint8 or float [-1,1]) disturbed at ``level`` (0 = unchanged, 1..4), as uint8."""
    pixels = as_uint8(images)
    if level == 0:
        return pixels
    strength = STRENGTHS[disturbance][level - 1]
    g = torch.Generator().manual_seed(seed)  # same seed at every level: stronger levels extend weaker ones
    out = DISTURBANCES[disturbance](pixels.to(torch.float32) / 255, strength, g)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def disturbance_table(extractor: FeatureExtractor, images: torch.Tensor, ref_stats: FeatureStats,
                      disturbances: tuple[str, ...] | None = None, seed: int = 0) -> list[DisturbanceRow]:
    """FID against ``ref_stats`` of ``images`` under each disturbance at levels 0 (clean) to 4."""
    clean = fid_features(extractor(images), ref_stats).fid
    rows = []
    for name in disturbances or tuple(STRENGTHS):
        rows.append(DisturbanceRow(name, 0, clean))
        for level in range(1, len(STRENGTHS[name]) + 1):
            features = extractor(disturb(images, name, level, seed))
            rows.append(DisturbanceRow(name, level, fid_features(features, ref_stats).fid))
    return rows


def is_monotone(table: list[DisturbanceRow]) -> bool:
    """Whether every disturbance's FID increases strictly with its level."""
    by_name: dict[str, list[DisturbanceRow]] = {}
    for row in table:
        by_name.setdefault(row.disturbance, []).append(row)
    for rows in by_name.values():
        fids = [r.fid for r in sorted(rows, key=lambda r: r.level)]
        if any(b <= a for a, b in zip(fids, fids[1:])):
            return False
    return True


def proxy_check(extractor_name: str = "mnist-features", n: int = 500, weights_path: str | None = None,
                device: str = "cpu", seed: int = 0, settings: Settings | None = None) -> list[DisturbanceRow]:
    """Disturbance table for ``n`` random MNIST test images against the MNIST-train reference statistics (MNIST and
    the statistics' cache where ``settings`` say; None: the environment's, as :func:`compute_reference_stats`)."""
    from skipsearch.data import load_mnist

    extractor = get_extractor(extractor_name, weights_path=weights_path, device=device)
    ref = compute_reference_stats("mnist", "train", extractor, settings=settings).stats
    images = load_mnist("test", settings=settings)[0]
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return disturbance_table(extractor, images[pick], ref, seed=seed)


def format_table(table: list[DisturbanceRow]) -> str:
    """Plain-text table: one line per disturbance, FID at each level."""
    by_name: dict[str, list[DisturbanceRow]] = {}
    for row in table:
        by_name.setdefault(row.disturbance, []).append(row)
    lines = [f"{'disturbance':<18}" + "".join(f"{'level ' + str(r.level):>12}" for r in next(iter(by_name.values())))]
    for name, rows in by_name.items():
        lines.append(f"{name:<18}" + "".join(f"{r.fid:>12.3f}" for r in sorted(rows, key=lambda r: r.level)))
    return "\n".join(lines)
