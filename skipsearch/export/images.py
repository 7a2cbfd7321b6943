"""Image files: PNG grids and EDM-style ``.npz`` image batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MAX_GRID_SIDE = 65535  # pixels a side of a PNG grid: what common image viewers and libraries still open


def grid_size(n: int, image_shape: tuple[int, ...], nrow: int | None = None, padding: int = 2,
              scale: int = 1) -> tuple[int, int]:
    """(height, width) in pixels of the grid :func:`save_grid` writes for ``n`` images of ``image_shape`` (C, H, W),
    computed without the images (a size check before sampling)."""
    _, h, w = image_shape
    nrow = nrow or (math.isqrt(n - 1) + 1 if n > 1 else 1)  # ceil(sqrt(n)) as image_grid, exact for any n
    rows = -(-n // nrow)
    return (rows * (h + padding) + padding) * scale, (nrow * (w + padding) + padding) * scale


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 [N,C,H,W] -> one uint8 HxWxC (or HxW) array laid out row by row."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.zeros((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), dtype=np.uint8)
    for k, image in enumerate(images.cpu().numpy()):
        r, col = divmod(k, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y:y + h, x:x + w] = image
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image_grid(images, nrow))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    picture.save(path)
    return path


def save_npz(images: torch.Tensor, path: str | Path, **extra) -> Path:
    """uint8 NHWC under key ``samples`` (EDM/ADM evaluation convention) plus any extra arrays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, samples=images.permute(0, 2, 3, 1).cpu().numpy(), **extra)
    return path
