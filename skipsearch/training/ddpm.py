"""DDPM training (Ho et al. 2020): epsilon-prediction loss at uniform discrete timesteps, and the bundled DDPM.

The bundled DDPM is a small diffusers ``UNet2DModel`` on MNIST 28x28 (linear beta, T = 1000), saved as a diffusers
pipeline folder so that ``--model diffusers:PATH`` exercises the same route a user's own model takes.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from skipsearch.settings import Settings

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
    from skipsearch.models.sources import require_diffusers
    return require_diffusers().UNet2DModel(**BUNDLED_DDPM_CONFIG)


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


def train_bundled_ddpm(output: str | os.PathLike, *, steps: int = 6000, batch_size: int = 64, lr: float = 1e-3,
                       seed: int = 0, device: torch.device | str = "cpu", data_root: Path | None = None,
                       checkpoint_every: int = 500, on_step: Callable[[int, float], None] | None = None,
                       settings: Settings | None = None) -> dict:
    """Train the bundled DDPM (linear beta, T = 1000, epsilon prediction, data in [-1, 1]) on MNIST (from
    ``data_root``, else where ``settings`` say: :func:`skipsearch.data.mnist_root`).

    Writes the diffusers folder every ``checkpoint_every`` steps and at the end; returns the card.
    """
    from skipsearch.data import load_mnist, to_model_range
    from skipsearch.models.sources import require_diffusers
    from skipsearch.training.loop import TrainConfig, train
    diffusers = require_diffusers()  # a missing extra: one line, before MNIST is read

    output = Path(output)
    torch.manual_seed(seed)
    images, _ = load_mnist("train", data_root, settings=settings)
    unet = bundled_ddpm_unet()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                        beta_end=0.02, prediction_type="epsilon", clip_sample=False)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_warmup_steps=200, log_every=100,
                         grad_clip=1.0, ema_halflife_images=500_000, seed=seed)
    start = time.perf_counter()

    def card(step: int, loss: float) -> dict:
        return {"model": "ddpm-mnist", "format": "diffusers UNet2DModel + DDPMScheduler",
                "architecture": BUNDLED_DDPM_CONFIG,
                "data": "MNIST train (60000 images, 28x28), unconditional, data range [-1, 1]",
                "parametrization": "epsilon prediction, linear beta 1e-4..0.02, T = 1000",
                "loss": "MSE(eps_hat, eps), t uniform in [0, 999]",
                "optimizer": f"Adam lr {lr} (warm-up 200 steps), batch {batch_size}, grad clip 1.0",
                "ema": "EDM-style EMA: half-life 500k images, ramp-up ratio 0.05",
                "steps": step, "final_loss": loss, "wall_seconds": round(time.perf_counter() - start, 1),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
                "num_params": sum(p.numel() for p in unet.parameters())}

    def on_log(step: int, loss: float, ema: nn.Module) -> None:
        if on_step is not None:
            on_step(step, loss)
        if step % checkpoint_every == 0 or step == steps:
            save_ddpm_folder(ema, scheduler, output, card(step, loss))

    _, result = train(unet, to_model_range(images), config=config, loss_fn=DDPMLoss(scheduler.alphas_cumprod),
                      device=device, on_log=on_log)
    return card(result.steps, result.final_loss)
