"""A small KL autoencoder and a latent ε-DDPM on its latents: the bundled latent model ``ldm-mnist``.

The autoencoder is a diffusers ``AutoencoderKL`` (28 -> 14 -> 7, 4 latent channels) so that it saves as the
``vae/`` folder of a diffusers pipeline; the latent UNet is a one-level ``UNet2DModel`` (UNet2DModel cannot
downsample 7x7 and upsample back to 7x7, so it keeps 7x7 throughout: its skips are conv_in and the down resnets).
Both train with :func:`skipsearch.training.loop.train`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

AUTOENCODER_CONFIG: dict[str, Any] = dict(
    in_channels=1, out_channels=1, latent_channels=4, sample_size=28, layers_per_block=1, norm_num_groups=8,
    block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
)
LATENT_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=7, in_channels=4, out_channels=4, block_out_channels=(48,), layers_per_block=2,
    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=8, attention_head_dim=8,
)


def autoencoder_kl(**overrides: Any) -> nn.Module:
    from skipsearch.models.sources import require_diffusers
    return require_diffusers().AutoencoderKL(**{**AUTOENCODER_CONFIG, **overrides})


def latent_unet(**overrides: Any) -> nn.Module:
    from skipsearch.models.sources import require_diffusers
    return require_diffusers().UNet2DModel(**{**LATENT_UNET_CONFIG, **overrides})


class AutoencoderLoss:
    """``MSE(decode(z), x) + kl_weight * KL(q(z|x) || N(0, I))`` per sample (means over pixels and latents), with
    z drawn from the posterior by the loop's generator."""

    def __init__(self, kl_weight: float = 1e-6):
        self.kl_weight = kl_weight

    def __call__(self, vae: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        posterior = vae.encode(images).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator,
                                                         device=images.device)
        reconstruction = vae.decode(z).sample
        kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1.0 - posterior.logvar).flatten(1).mean(1)
        return ((reconstruction - images) ** 2).flatten(1).mean(1) + self.kl_weight * kl


@torch.no_grad()
def encode_all(vae: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Posterior means of ``images`` (unscaled latents)."""
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(batch)])


@torch.no_grad()
def reconstruction_mse(vae: nn.Module, images: torch.Tensor, batch: int = 500) -> float:
    """Mean squared error of decode(mean latent) on ``images`` (data range [-1, 1])."""
    total = sum(float(((vae.decode(vae.encode(chunk).latent_dist.mean).sample - chunk) ** 2).sum())
                for chunk in images.split(batch))
    return total / images.numel()


def deadline(seconds: float) -> Callable[[], bool]:
    """A ``should_stop`` for :func:`~skipsearch.training.loop.train`: true once ``seconds`` of wall time passed."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


def save_latent_pipeline(folder: str | os.PathLike, *, unet: nn.Module, vae: nn.Module, scheduler: Any,
                         card: dict) -> None:
    """A diffusers latent pipeline folder (``unet/``, ``vae/``, ``scheduler/``, ``model_index.json``) + card."""
    from skipsearch.models.checkpoints import file_sha256
    folder = Path(folder)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "LatentDiffusionPipeline", "unet": ["diffusers", type(unet).__name__],
         "vae": ["diffusers", type(vae).__name__], "scheduler": ["diffusers", type(scheduler).__name__]},
        indent=2) + "\n")
    weights = {part: folder / part / "diffusion_pytorch_model.safetensors" for part in ("unet", "vae")}
    card = {**card, "weights": {part: str(path.relative_to(folder)) for part, path in weights.items()},
            "sha256": {part: file_sha256(path) for part, path in weights.items()}}
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
