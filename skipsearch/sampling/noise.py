"""Per-image seeded noise: the same seed gives the same draws whatever the batch it is sampled in."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["SeededNoise"]


class SeededNoise:
    """One ``torch.Generator`` per image, seeded with ``seed % 2**32`` (like EDM's per-image generators).

    Each image's draws depend only on its own seed, so any image is reproducible on its own, in any batch position
    or batch size, and trials that reuse seeds share their noise (common random numbers).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str | None = None) -> None:
        if len(seeds) == 0:
            raise ValueError("SeededNoise needs at least one seed")
        self.seeds = [int(seed) for seed in seeds]
        self.device = torch.device(device if device is not None else "cpu")
        self.generators = [torch.Generator(self.device).manual_seed(seed % 2**32) for seed in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape_per_image: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws, [B, *shape_per_image]; float32 by default like ``torch.randn``."""
        return torch.stack([torch.randn(tuple(shape_per_image), generator=gen, dtype=dtype, device=self.device)
                            for gen in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal draws shaped and typed like ``x`` (drawn in x's dtype, as EDM's ``randn_like`` does)."""
        self._check_batch(x.shape[0])
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)

    def randint(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per image, LongTensor [B] (e.g. class labels)."""
        return torch.stack([torch.randint(high, (), generator=gen, device=self.device) for gen in self.generators])

    def _check_batch(self, batch: int) -> None:
        if batch != len(self.generators):
            raise ValueError(f"batch of {batch} images but SeededNoise holds {len(self.generators)} seeds")
