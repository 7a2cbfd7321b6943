"""The training loop shared by every loss: Adam with warm-up, EDM's bad-gradient guard, EMA of the weights.

Used to make the bundled models (EDM loss, DDPM loss) and by S²-DM fine-tuning trials (skip-step loss).
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from skipsearch.training.errors import TrainingDivergedError, TrainingError

# A loss maps (net, clean images in the model's range, labels or None, generator) to per-sample losses [B].
LossFn = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", torch.Generator], torch.Tensor]


@dataclass
class TrainConfig:
    steps: int = 20000
    batch_size: int = 128
    lr: float = 1e-3
    lr_warmup_steps: int = 500
    ema_halflife_images: float = 500_000
    ema_rampup_ratio: float = 0.05
    seed: int = 0
    log_every: int = 100
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        """Refuse settings no run can use (``lr = inf`` used to train to a NaN loss and report success)."""
        for name in ("steps", "batch_size", "log_every", "lr_warmup_steps"):
            value, least = getattr(self, name), int(name != "lr_warmup_steps")
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise TrainingError(f"training {name} must be an integer >= {least}, got {value!r}")
        for name in ("lr", "ema_halflife_images", "ema_rampup_ratio", "grad_clip"):
            value = getattr(self, name)
            if name == "grad_clip" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value <= 0:
                raise TrainingError(f"training {name} must be a finite positive number, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**63:
            raise TrainingError(f"training seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")


@dataclass
class TrainResult:
    config: dict
    steps: int
    wall_seconds: float
    final_loss: float
    loss_history: list[tuple[int, float]] = field(default_factory=list)


def update_ema(ema: nn.Module, net: nn.Module, beta: float) -> None:
    with torch.no_grad():
        ema_params = list(ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1 - beta)


def train(net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None, *,
          config: TrainConfig = TrainConfig(), loss_fn: LossFn, ema: nn.Module | None = None,
          device: torch.device | str = "cpu", on_log: Callable[[int, float, nn.Module], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> tuple[nn.Module, TrainResult]:
    """Train ``net`` on float images in [-1,1] ([N,C,H,W]); returns (EMA network, result).

    ``on_log(step, mean_loss, ema)`` is called every ``log_every`` steps (progress, checkpoints, pruning reports).
    """
    device = torch.device(device)
    net.train().requires_grad_(True).to(device)
    ema = (ema if ema is not None else copy.deepcopy(net)).eval().requires_grad_(False).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator(device).manual_seed(config.seed)
    index_generator = torch.Generator().manual_seed(config.seed)
    history: list[tuple[int, float]] = []
    running, count, last = 0.0, 0, math.nan
    start = time.perf_counter()
    step = 0
    for step in range(1, config.steps + 1):
        idx = torch.randint(images.shape[0], [config.batch_size], generator=index_generator)
        batch = images[idx].to(device)
        batch_labels = labels[idx].to(device) if labels is not None else None
        loss = loss_fn(net, batch, batch_labels, generator).mean()
        value = loss.item()
        if not math.isfinite(value):  # the weights (or the data) are already lost: stop with the step that showed it
            raise TrainingDivergedError(f"training diverged at step {step} of {config.steps}: the loss is {value} "
                                        f"(learning rate {config.lr:g}; a lower --lr usually trains)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for g in optimizer.param_groups:
            g["lr"] = config.lr * min(step / max(config.lr_warmup_steps, 1), 1.0)
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if not all(torch.isfinite(g).all() for g in grads):  # EDM's guard: a rare bad gradient must not poison
            for g in grads:
                torch.nan_to_num(g, nan=0, posinf=1e5, neginf=-1e5, out=g)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()
        seen = step * config.batch_size
        halflife = min(config.ema_halflife_images, seen * config.ema_rampup_ratio)
        update_ema(ema, net, 0.5 ** (config.batch_size / max(halflife, 1e-8)))
        running += value
        count += 1
        if step % config.log_every == 0 or step == config.steps:
            last = running / count
            history.append((step, last))
            running, count = 0.0, 0
            if on_log is not None:
                on_log(step, last, ema)
        if should_stop is not None and should_stop():
            break
    net.eval().requires_grad_(False)
    result = TrainResult(config=asdict(config), steps=step, wall_seconds=time.perf_counter() - start,
                         final_loss=last, loss_history=history)
    return ema, result
