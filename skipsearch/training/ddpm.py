"""DDPM training (Ho et al. 2020): epsilon-prediction loss at uniform discrete timesteps, and the bundled DDPM.

The bundled DDPM is a small diffusers ``UNet2DModel`` on MNIST 28x28 (linear beta, T = 1000), saved as a diffusers
pipeline folder so that ``--model diffusers:PATH`` exercises the same route a user's own model takes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The bundled architecture: 28 -> 14 -> 7, attention at 7x7, one resnet per level (6 skip points).
BUNDLED_DDPM_CONFIG: dict[str, Any] = dict(
    sample_size=28, in_channels=1, out_channels=1, block_out_channels=(16, 32, 32), layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8,
)


class DDPMLoss:
    """Simple DDPM loss ``|eps - eps_theta(sqrt(abar) x0 + sqrt(1 - abar) eps, t)|^2`` with t ~ U{0..T-1}."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32)

    def __call__(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        abar_all = self.alphas_cumprod.to(images.device)
        t = torch.randint(abar_all.numel(), [images.shape[0]], generator=generator, device=images.device)
        abar = abar_all[t].reshape(-1, 1, 1, 1)
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        noisy = abar.sqrt() * images + (1 - abar).sqrt() * noise
        out = net(noisy, t) if labels is None else net(noisy, t, class_labels=labels)
        prediction = out.sample if hasattr(out, "sample") else out
        return ((prediction - noise) ** 2).flatten(1).mean(1)


def bundled_ddpm_unet() -> nn.Module:
    from diffusers import UNet2DModel
    return UNet2DModel(**BUNDLED_DDPM_CONFIG)


def save_ddpm_folder(unet: nn.Module, scheduler: Any, folder: str | os.PathLike, card: dict) -> None:
    """A diffusers pipeline folder (``unet/``, ``scheduler/``, ``model_index.json``) and ``card.json``."""
    from skipsearch.models.checkpoints import file_sha256
    folder = Path(folder)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
         "scheduler": ["diffusers", type(scheduler).__name__]}, indent=2) + "\n")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    card = {**card, "weights": str(weights.relative_to(folder)), "sha256": file_sha256(weights)}
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
