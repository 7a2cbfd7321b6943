"""Consistency distillation (Song et al. 2023, CD with an EDM teacher): a loss for :func:`training.loop.train`.

The student f(x, sigma) (consistency preconditioning, :class:`skipsearch.models.parametrization.ConsistencyNetwork`)
starts as a copy of the teacher's UNet. Each step draws n, noises the data to sigma_{n+1} of a Karras grid of N
levels, lets the teacher take one Heun step of the probability-flow ODE down to sigma_n, and pulls the student's
output at (x_{n+1}, sigma_{n+1}) towards the *target* network's output at (x_n, sigma_n). The target is an EMA of the
student (mu ~ 0.95), separate from the EMA that ``train()`` keeps for the shipped weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from skipsearch.sampling.grids import karras_sigmas
from skipsearch.training.errors import TrainingError
from skipsearch.training.loop import update_ema

DISTANCES = ("l2", "pseudo-huber")


def karras_levels(num_scales: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The N distillation levels, descending from sigma_max to sigma_min (float64, no final 0)."""
    return karras_sigmas(num_scales, sigma_min, sigma_max, rho)[:-1]


def heun_step(teacher: nn.Module, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
              labels: torch.Tensor | None) -> torch.Tensor:
    """One Heun step of dx/dsigma = (x - D(x, sigma)) / sigma from sigma to sigma_next > 0 (per-sample [B,1,1,1])."""
    d = (x - teacher(x, sigma.flatten(), labels)) / sigma
    x_euler = x + (sigma_next - sigma) * d
    d_next = (x_euler - teacher(x_euler, sigma_next.flatten(), labels)) / sigma_next
    return x + (sigma_next - sigma) * (d + d_next) / 2


@dataclass
class ConsistencyDistillationLoss:
    """Per-sample CD loss; call it as ``loss_fn(student, images, labels, generator)``.

    ``teacher(x, sigma, labels)`` is the EDM denoiser D. The target network is made from the student on the first
    call and follows it by EMA with ``target_ema`` at every later call (that is, after each optimiser step).
    ``distance``: ``l2`` (mean squared error over pixels) or ``pseudo-huber`` (sqrt(|a-b|^2 + c^2) - c with
    c = 0.00054 sqrt(dim), Song & Dhariwal 2023).
    """

    teacher: nn.Module
    num_scales: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    target_ema: float = 0.95
    distance: str = "l2"
    target: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.num_scales < 2:
            raise TrainingError(f"consistency distillation needs at least 2 scales, got {self.num_scales}")
        if not 0 <= self.target_ema < 1:
            raise TrainingError(f"target EMA must be in [0, 1), got {self.target_ema}")
        if self.distance not in DISTANCES:
            raise TrainingError(f"unknown distance {self.distance!r}; use {', '.join(DISTANCES)}")
        self.teacher.eval().requires_grad_(False)
        self.levels = karras_levels(self.num_scales, self.sigma_min, self.sigma_max, self.rho)

    def _follow(self, student: nn.Module) -> nn.Module:
        if self.target is None:
            self.target = copy.deepcopy(student).eval().requires_grad_(False)
        else:
            update_ema(self.target, student, self.target_ema)
        return self.target

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        squares = (a - b).flatten(1) ** 2
        if self.distance == "l2":
            return squares.mean(1)
        c = 0.00054 * math.sqrt(squares.shape[1])
        return (squares.sum(1) + c * c).sqrt() - c

    def __call__(self, student: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        target = self._follow(student)
        batch = images.shape[0]
        n = torch.randint(self.num_scales - 1, [batch], generator=generator, device=images.device)
        levels = self.levels.to(images.device, images.dtype)
        sigma, sigma_next = (levels[n].reshape(-1, 1, 1, 1), levels[n + 1].reshape(-1, 1, 1, 1))
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        x = images + sigma * noise
        with torch.no_grad():
            x_next = heun_step(self.teacher, x, sigma, sigma_next, labels)
            wanted = target(x_next, sigma_next.flatten(), labels)
        return self._distance(student(x, sigma.flatten(), labels), wanted)
