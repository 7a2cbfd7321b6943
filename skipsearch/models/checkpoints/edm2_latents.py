"""EDM2's latent space: the per-channel standardisation of the Stable Diffusion VAE's latents its img512 models
were trained on, as published and as an official pickle's ``encoder`` records it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from skipsearch.models.checkpoints.errors import CheckpointError


@dataclass(frozen=True)
class LatentStandardisation:
    """EDM2's latents per channel: ``final = raw * scale + bias``, where raw is the VAE posterior's mean of an image
    in [0, 1] (so decoded images are in [0, 1] too)."""

    scale: tuple[float, ...]
    bias: tuple[float, ...]

    @classmethod
    def from_stats(cls, raw_mean: Sequence[float], raw_std: Sequence[float], final_mean: float = 0.0,
                   final_std: float = 0.5) -> LatentStandardisation:
        """Raw latents of mean ``raw_mean`` and std ``raw_std`` mapped to ``final_mean``, ``final_std``."""
        scale = tuple(final_std / s for s in raw_std)
        return cls(scale, tuple(final_mean - m * k for m, k in zip(raw_mean, scale, strict=True)))


# EDM2's assumed statistics of the SD VAE's raw ImageNet-512 latents, mapped to mean 0 and std 0.5.
SD_VAE_LATENTS = LatentStandardisation.from_stats(raw_mean=(5.81, 3.25, 0.12, -2.15),
                                                  raw_std=(4.17, 4.62, 3.71, 3.28))


def encoder_standardisation(record: Any, source: str) -> LatentStandardisation | None:
    """The standardisation an official pickle's ``encoder`` records (``StabilityVAEEncoder``); None for pixel
    models (``StandardRGBEncoder``) or no encoder."""
    if getattr(record, "class_name", None) != "StabilityVAEEncoder":
        return None
    try:
        scale, bias = (tuple(float(v) for v in record.state[k]) for k in ("scale", "bias"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: unreadable latent encoder scale/bias ({exc})") from None
    return LatentStandardisation(scale, bias)
