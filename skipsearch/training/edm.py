"""EDM's training loss (Karras et al. 2022): log-normal sigma, the EDM weight, data-prediction regression."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from skipsearch.settings import Settings


def edm_sigma_and_weight(batch: int, p_mean: float, p_std: float, sigma_data: float, generator: torch.Generator,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ln(sigma) ~ N(p_mean, p_std^2) and the EDM weight (sigma^2 + sd^2)/(sigma sd)^2, both [B,1,1,1]."""
    rnd = torch.randn([batch, 1, 1, 1], generator=generator, device=device)
    sigma = (rnd * p_std + p_mean).exp()
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return sigma, weight


@dataclass(frozen=True)
class EDMLoss:
    """EDM's denoising score-matching loss (Karras et al. 2022, Eq. 2 with their sigma density and weight)."""

    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5

    def __call__(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        sigma, weight = edm_sigma_and_weight(images.shape[0], self.p_mean, self.p_std, self.sigma_data, generator,
                                             images.device)
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        denoised = net(images + noise * sigma, sigma, labels)
        return (weight * (denoised - images) ** 2).flatten(1).mean(1)


def train_bundled_model(output: Path, *, steps: int = 8000, batch_size: int = 64, lr: float = 2e-3,
                        seed: int = 0, device: torch.device | str = "cpu", data_root: Path | None = None,
                        checkpoint_every: int = 500,
                        on_step: Callable[[int, float], None] | None = None,
                        settings: Settings | None = None) -> dict:
    """Train the bundled architecture with the EDM loss; writes ``edm_mnist.safetensors`` + ``edm_mnist.json``.

    MNIST comes from ``data_root``, else where ``settings`` say (:func:`skipsearch.data.mnist_root`)."""
    from skipsearch.data import load_mnist, to_model_range
    from skipsearch.models.bundled import BUNDLED_CONFIG, BUNDLED_WEIGHTS, save_bundled_checkpoint
    from skipsearch.models.checkpoints import create_network
    from skipsearch.training.loop import TrainConfig, train

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    images, _ = load_mnist("train", data_root, settings=settings)
    config = dict(BUNDLED_CONFIG)
    net = create_network(config.pop("precond"), **config)
    train_config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_warmup_steps=200, log_every=100,
                               seed=seed)
    start = time.perf_counter()

    def card(step: int, loss: float) -> dict:
        return {"model": "edm", "architecture": BUNDLED_CONFIG,
                "num_skip_points": len(config["channel_mult"]) * (config["num_blocks"] + 1),
                "data": "MNIST train (60000 images, 28x28, [-1,1]), unconditional", "loss": "EDM (P_mean -1.2, "
                "P_std 1.2, sigma_data 0.5)", "optimizer": f"Adam lr {lr} (warm-up 200 steps), batch {batch_size}",
                "ema": "EDM EMA: half-life 500k images, ramp-up ratio 0.05", "steps": step, "final_loss": loss,
                "wall_seconds": round(time.perf_counter() - start, 1), "device": str(device),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}

    def on_log(step: int, loss: float, ema: torch.nn.Module) -> None:
        if on_step is not None:
            on_step(step, loss)
        if step % checkpoint_every == 0 or step == steps:
            save_bundled_checkpoint(ema, output / BUNDLED_WEIGHTS.name, card(step, loss))

    _, result = train(net, to_model_range(images), config=train_config, loss_fn=EDMLoss(), device=device,
                      on_log=on_log)
    return card(result.steps, result.final_loss)
