"""The S²-DM skip-step loss (arXiv 2401.01520) for EDM models (sigma, data prediction) and DDPM epsilon models.

    L = tau * L0 + (1 - tau) * L_skip,   L_skip = || eps' - c * eps_theta(x_t, t) ||^2,   c^2 = (1 - a_skip) / a_skip

per sample; a sample whose skip target lies below the schedule start (DDPM: t < skip; EDM: sigma_s <= sigma_min)
gets L0 alone with weight 1. See ``../shared/docs/s2dm-spec.md`` (beside the checkout) for sources and derivations.

Reading chosen: **eps' is a fresh draw, independent of the eps that made x_t** (the authors' code,
``e2 = torch.randn_like(x0)``), not the same eps (a reading of the paper's Eq. 13). Why:
- the code is the only unambiguous source: the method sections of the paper could not be retrieved, and the
  reviewers call its derivation (Eqs. 8-12) unsound or typo-ridden, so "the formula the published numbers were
  trained with" is the code's;
- the two readings push the optimum in opposite directions (independent eps': a shrinkage of eps_theta towards 0,
  same eps: an amplification for c < 1, spec §1b), so mixing them is not an option, and a faithful re-implementation
  must pick the one that produced the reported FIDs;
- it is well defined in expectation: E L_skip = d + c^2 ||eps_theta||^2, a c^2-weighted L2 penalty on the predicted
  noise, i.e. (EDM units) a pull of D towards the noisy input x. Its cost is gradient noise from eps'.

EDM translation (spec §3): x = y + sigma n, eps_hat = (x - D)/sigma, and under the VP map abar = 1/(1 + sigma^2),
a_skip = (1 + sigma_s^2)/(1 + sigma^2), so c^2 = (sigma^2 - sigma_s^2)/(1 + sigma_s^2). sigma_s is the sigma
``skip`` steps below sigma on the N-step Karras grid (rho = 7) through sigma, i.e. a step of
(sigma_max^(1/rho) - sigma_min^(1/rho))/(N - 1) in sigma^(1/rho); N should be the sampler's step count, so that
skip = 1 is the jump the accelerated sampler actually makes. Both terms are compared in epsilon space as in the
DDPM code, hence the skip term is scaled by sigma^2 (lambda sigma^2 ||n - eps_hat||^2 = lambda ||D - y||^2) and
both carry EDM's weight lambda(sigma):

    L = lambda(sigma) [ tau ||D - y||^2 + (1 - tau) ||sigma n' - c (x - D)||^2 ]   (per-pixel means)

Gradients flow through both terms (no stop-gradient, no target network), as in the code.

Random draws, in order: EDM ln(sigma), n, then n'; DDPM eps, t (antithetic pairs t, T-1-t), then eps'. With
tau = 1 no n'/eps' is drawn, so ``S2DMLoss(tau=1)`` consumes the generator exactly like ``EDMLoss`` and a whole
training run with it is the plain EDM run, bit for bit (the fair baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from skipsearch.training.edm import edm_sigma_and_weight

__all__ = ["S2DMLoss", "DDPMLoss", "DDPMS2DMLoss", "karras_skip_sigma", "edm_skip_c2", "edm_weight",
           "linear_alphas_cumprod", "antithetic_timesteps"]


def _check_tau_skip(tau: float, skip: int) -> None:
    if not 0.0 <= float(tau) <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"skip must be an integer >= 1, got {skip!r}")


# --------------------------------------------------------------------------------------------------------------------
# EDM parametrisation: D(x; sigma), x = y + sigma n.


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sd^2)/(sigma sd)^2 (same expression as ``edm_sigma_and_weight``)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def karras_skip_sigma(sigma: torch.Tensor, skip: int, num_steps: int, sigma_min: float = 0.002,
                      sigma_max: float = 80.0, rho: float = 7.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_s, active): sigma ``skip`` Karras steps (N = ``num_steps``) lower; inactive where sigma_s <= sigma_min.

    Inactive entries get sigma_s = 0 (finite, unused by the loss).
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 for a Karras step, got {num_steps}")
    step = (sigma_max ** (1 / rho) - sigma_min ** (1 / rho)) / (num_steps - 1)
    base = sigma ** (1 / rho) - skip * step
    active = base > sigma_min ** (1 / rho)
    return torch.where(active, base.clamp_min(0) ** rho, torch.zeros_like(sigma)), active


def edm_skip_c2(sigma: torch.Tensor, sigma_s: torch.Tensor) -> torch.Tensor:
    """c^2 = (1 - a_skip)/a_skip with a_skip = (1 + sigma_s^2)/(1 + sigma^2) (the VP map; spec §3)."""
    return (sigma**2 - sigma_s**2) / (1 + sigma_s**2)


@dataclass(frozen=True)
class S2DMLoss:
    """S²-DM loss for EDM-preconditioned networks; ``(net, images, labels, generator) -> [B]`` like ``EDMLoss``."""

    tau: float = 0.99
    skip: int = 1
    num_steps: int = 18
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self) -> None:
        _check_tau_skip(self.tau, self.skip)
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {self.num_steps}")

    def __call__(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        sigma, _ = edm_sigma_and_weight(images.shape[0], self.p_mean, self.p_std, self.sigma_data, generator,
                                        images.device)
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        # tau = 1 draws no n': the generator then advances exactly as under EDMLoss (see module docstring).
        skip_noise = (None if self.tau == 1.0
                      else torch.randn(images.shape, generator=generator, device=images.device))
        return self.from_draws(net, images, labels, sigma, noise, skip_noise)

    def from_draws(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, sigma: torch.Tensor,
                   noise: torch.Tensor, skip_noise: torch.Tensor | None) -> torch.Tensor:
        """Per-sample loss for given sigma [B,1,1,1], n and n' (None: L0 only, i.e. the EDM loss)."""
        weight = edm_weight(sigma, self.sigma_data)
        x = images + noise * sigma
        denoised = net(x, sigma, labels)
        l0 = (weight * (denoised - images) ** 2).flatten(1).mean(1)
        if skip_noise is None:
            return l0
        sigma_s, active = karras_skip_sigma(sigma, self.skip, self.num_steps, self.sigma_min, self.sigma_max,
                                            self.rho)
        c = edm_skip_c2(sigma, sigma_s).clamp_min(0).sqrt()
        # sigma^2 ||n' - c eps_hat||^2 written without the division by sigma (stable at small sigma).
        l_skip = (weight * (sigma * skip_noise - c * (x - denoised)) ** 2).flatten(1).mean(1)
        return torch.where(active.flatten(), self.tau * l0 + (1 - self.tau) * l_skip, l0)


# --------------------------------------------------------------------------------------------------------------------
# DDPM parametrisation: eps_theta(x_t, t), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t in {0..T-1}.


def linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> torch.Tensor:
    """abar_t for the DDPM linear beta schedule (float64, 0-indexed like the DDIM code)."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def antithetic_timesteps(batch: int, num_timesteps: int, generator: torch.Generator,
                         device: torch.device) -> torch.Tensor:
    """t ~ U{0..T-1} in antithetic pairs (t, T-1-t), as the DDIM training loop draws them."""
    t = torch.randint(0, num_timesteps, (batch // 2 + 1,), generator=generator, device=device)
    return torch.cat([t, num_timesteps - t - 1])[:batch]


@dataclass(frozen=True, eq=False)
class DDPMLoss:
    """The plain DDPM epsilon loss (per-sample mean over C*H*W, as the S²-DM code reduces it).

    Callable as ``(eps_model, images, labels, generator) -> [B]`` so ``skipsearch.train.train`` can run it;
    ``eps_model(x_t, t)`` gets t as float32 (labels must be None: the DDIM/S²-DM models are unconditional).
    """

    alphas_cumprod: torch.Tensor = field(default_factory=linear_alphas_cumprod)

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def draws(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, t) in the DDIM code's order: noise first, then the antithetic timesteps."""
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        return noise, antithetic_timesteps(images.shape[0], self.num_timesteps, generator, images.device)

    def __call__(self, eps_model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        noise, t = self.draws(images, generator)
        return self.from_draws(eps_model, images, labels, t, noise, None)

    def _predict(self, eps_model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        if labels is not None:
            raise ValueError("DDPM epsilon losses take unconditional models (labels must be None)")
        abar = self.alphas_cumprod.to(images.device)[t].to(images.dtype).view(-1, 1, 1, 1)
        x_t = abar.sqrt() * images + (1 - abar).sqrt() * noise
        return eps_model(x_t, t.to(torch.float32))

    def from_draws(self, eps_model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor,
                   noise: torch.Tensor, skip_noise: torch.Tensor | None) -> torch.Tensor:
        """Per-sample L0 for given t [B] (long) and eps ([B,C,H,W]); ``skip_noise`` is ignored here."""
        output = self._predict(eps_model, images, labels, t, noise)
        return ((noise - output) ** 2).flatten(1).mean(1)


@dataclass(frozen=True, eq=False)
class DDPMS2DMLoss(DDPMLoss):
    """S²-DM loss for epsilon models, as in the authors' ``functions/losses.py`` (0.99/0.01 there = tau 0.99).

    a_skip(t) = abar_t / abar_{t-skip}; samples with t < skip get L0 alone.
    """

    tau: float = 0.99
    skip: int = 9

    def __post_init__(self) -> None:
        _check_tau_skip(self.tau, self.skip)
        if self.skip >= self.num_timesteps:
            raise ValueError(f"skip {self.skip} must be below the number of timesteps {self.num_timesteps}")

    def __call__(self, eps_model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        noise, t = self.draws(images, generator)
        # tau = 1 draws no eps': identical generator use (and numbers) to the plain DDPMLoss.
        skip_noise = (None if self.tau == 1.0
                      else torch.randn(images.shape, generator=generator, device=images.device))
        return self.from_draws(eps_model, images, labels, t, noise, skip_noise)

    def skip_c2(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c^2 [B] float64, active [B]) with c^2 = (1 - a_skip)/a_skip; inactive (t < skip) entries are 0."""
        abar = self.alphas_cumprod.to(t.device)
        active = t >= self.skip
        a_skip = abar[t] / abar[(t - self.skip).clamp_min(0)]  # the code's clamp; the value is unused when inactive
        return torch.where(active, (1 - a_skip) / a_skip, torch.zeros_like(a_skip)), active

    def from_draws(self, eps_model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor,
                   noise: torch.Tensor, skip_noise: torch.Tensor | None) -> torch.Tensor:
        """Per-sample loss for given t, eps and eps' (None: L0 only)."""
        output = self._predict(eps_model, images, labels, t, noise)
        l0 = ((noise - output) ** 2).flatten(1).mean(1)
        if skip_noise is None:
            return l0
        c2, active = self.skip_c2(t)
        c = c2.sqrt().to(images.dtype).view(-1, 1, 1, 1)
        l_skip = ((skip_noise - c * output) ** 2).flatten(1).mean(1)
        return torch.where(active, self.tau * l0 + (1 - self.tau) * l_skip, l0)
