"""EDM's training loss (Karras et al. 2022): log-normal sigma, the EDM weight, data-prediction regression."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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
