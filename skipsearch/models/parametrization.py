"""Wrapping non-EDM diffusion models into the denoiser convention D(x; sigma) (data prediction, EDM/VE units).

A DDPM-style model sees ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps`` at a discrete timestep t. In EDM units the same
state is ``x = x_vp / sqrt(abar) = x0 + sigma eps`` with ``sigma = sqrt((1 - abar) / abar)``, so
``x_vp = x / sqrt(1 + sigma^2)`` and an epsilon prediction gives ``D = x - sigma * eps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# fn(model_input, t_or_sigma) -> raw model output (epsilon, v, x0 or D depending on the parametrization)
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _batch_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as a [B] tensor in x's dtype and device (a scalar is broadcast to the batch)."""
    s = torch.as_tensor(sigma, device=x.device).to(x.dtype).reshape(-1)
    if s.numel() == 1:
        return s.expand(x.shape[0])
    if s.numel() != x.shape[0]:
        raise ValueError(f"sigma has {s.numel()} values for a batch of {x.shape[0]}")
    return s


class DataParametrization:
    """EDM data prediction: the wrapped model already returns D given (x, sigma); sigmas are continuous."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def denoise(self, fn: ModelFn, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return fn(x, _batch_sigma(sigma, x)).to(x.dtype)


class EpsilonParametrization:
    """A discrete-time VP (DDPM) model predicting epsilon (or v, or x0) from ``alphas_cumprod`` [T].

    ``sigmas[t]`` ascends with t. A continuous sigma is served by the nearest timestep in log-sigma; the input scaling
    and the output conversion use the sigma itself, so a sampler that snaps with :meth:`round_sigma` is exact.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().reshape(-1)
        if abar.numel() < 2:
            raise ValueError("alphas_cumprod needs at least 2 timesteps")
        if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must lie in (0, 1) and strictly decrease with t")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not supported; use one of "
                             f"{', '.join(PREDICTION_TYPES)}")
        self.alphas_cumprod, self.prediction_type = abar, prediction_type
        self.sigmas = ((1 - abar) / abar).sqrt()
        self._log_sigmas = self.sigmas.log()
        # Midpoints between neighbouring log-sigmas: bucketize against them is the nearest-timestep lookup.
        self._log_mids = (self._log_sigmas[1:] + self._log_sigmas[:-1]) / 2
        self._device_cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    # --- constructors -----------------------------------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: torch.Tensor, prediction_type: str = "epsilon") -> EpsilonParametrization:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, dim=0), prediction_type)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               prediction_type: str = "epsilon") -> EpsilonParametrization:
        """DDPM's linear beta schedule (diffusers ``beta_schedule='linear'``, computed in float64)."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), prediction_type)

    @classmethod
    def from_scheduler(cls, scheduler, prediction_type: str | None = None) -> EpsilonParametrization:
        """From a diffusers scheduler: its ``alphas_cumprod`` and ``config.prediction_type``."""
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod (not a discrete VP scheduler)")
        config = getattr(scheduler, "config", None)
        kind = prediction_type or getattr(config, "prediction_type", None) or "epsilon"
        return cls(scheduler.alphas_cumprod, kind)

    # --- sigma <-> timestep -----------------------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.numel())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        # MPS has no float64.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        key = (device, dtype)
        if key not in self._device_cache:
            self._device_cache[key] = tuple(t.to(device=device, dtype=dtype)
                                            for t in (self.sigmas, self._log_sigmas, self._log_mids))
        return self._device_cache[key]

    def timestep_for_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Nearest discrete timestep in log-sigma (LongTensor of sigma's shape); sigma <= 0 maps to t = 0."""
        sigma = torch.as_tensor(sigma)
        _, _, mids = self._on(sigma.device)
        return torch.bucketize(sigma.to(mids.dtype).clamp_min(0).log(), mids)

    def sigma_for_timestep(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma of a timestep; fractional timesteps interpolate log-sigma (schedulers with float timesteps)."""
        t = torch.as_tensor(t)
        sigmas, log_sigmas, _ = self._on(t.device)
        t = t.to(log_sigmas.dtype).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp_max(self.num_timesteps - 1)
        w = t - lo
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Snap sigma to the grid of the model's timesteps (same shape, dtype and device)."""
        sigma = torch.as_tensor(sigma)
        sigmas, _, _ = self._on(sigma.device)
        rounded = sigmas[self.timestep_for_sigma(sigma)]
        return rounded.to(sigma.dtype) if sigma.is_floating_point() else rounded

    # --- the denoiser -----------------------------------------------------------------------------------------------
    def denoise(self, fn: ModelFn, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """D(x; sigma) where ``fn(x_vp, t)`` runs the model at the timestep nearest sigma."""
        s = _batch_sigma(sigma, x)
        c = s.reshape(-1, *([1] * (x.ndim - 1)))
        c_in = (1 + c * c).rsqrt()  # = sqrt(abar)
        x_vp = x * c_in
        out = fn(x_vp, self.timestep_for_sigma(s)).to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - c * out
        if self.prediction_type == "v_prediction":
            # x0 = sqrt(abar) x_vp - sqrt(1 - abar) v, with sqrt(1 - abar) = sigma sqrt(abar).
            return c_in * x_vp - c * c_in * out
        return out


Parametrization = EpsilonParametrization | DataParametrization


def alphas_cumprod_for(schedule: str, *, beta_start: float = 1e-4, beta_end: float = 0.02,
                       num_timesteps: int = 1000) -> torch.Tensor:
    """abar_t of diffusers' named beta schedules (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``), float64."""
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif schedule == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    elif schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine schedule, betas capped at 0.999
        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999)
                              for i in range(num_timesteps)], dtype=torch.float64)
    else:
        raise ValueError(f"unknown beta schedule {schedule!r}; use linear, scaled_linear or squaredcos_cap_v2")
    return torch.cumprod(1 - betas, dim=0)


# EDM's VP preconditioning constants (Karras et al. 2022, Table 1, after Song et al. 2021).
_VP_BETA_D, _VP_BETA_MIN, _VP_M = 19.9, 0.1, 1000


# How a consistency network was trained to see sigma: EDM's ln(sigma)/4 (a student distilled from an EDM network),
# or the consistency-models repository's rescaled time 1000 * 0.25 * ln(sigma + 1e-44).
CONSISTENCY_NOISE = ("edm", "cm")


def consistency_coefficients(s: torch.Tensor, sigma_min: float, sigma_data: float,
                             c_noise: str = "edm") -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) of a consistency function (Song et al. 2023): f(x, sigma_min) = x exactly."""
    sd2 = sigma_data**2
    c_skip = sd2 / ((s - sigma_min) ** 2 + sd2)
    c_out = (s - sigma_min) * sigma_data / (s * s + sd2).sqrt()
    c_in = 1 / (s * s + sd2).sqrt()
    noise = s.log() / 4 if c_noise == "edm" else 250 * (s + 1e-44).log()
    return c_skip, c_out, c_in, noise


class PreconditionedParametrization(DataParametrization):
    """A raw network F(c_in x, c_noise) wrapped as D = c_skip x + c_out F (EDM, VP, VE or consistency
    preconditioning; ``c_noise`` says how a consistency network sees sigma, see ``CONSISTENCY_NOISE``)."""

    KINDS = ("edm", "vp", "ve", "consistency")

    def __init__(self, kind: str, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 c_noise: str = "edm"):
        if kind not in self.KINDS:
            raise ValueError(f"unknown preconditioning {kind!r}; use {', '.join(self.KINDS)}")
        if c_noise not in CONSISTENCY_NOISE:
            raise ValueError(f"unknown c_noise {c_noise!r}; use {', '.join(CONSISTENCY_NOISE)}")
        super().__init__(sigma_min, sigma_max)
        self.kind, self.sigma_data, self.c_noise = kind, float(sigma_data), c_noise

    def coefficients(self, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) for sigma ``s`` of shape [B, 1, 1, 1]."""
        if self.kind == "consistency":
            return consistency_coefficients(s, self.sigma_min, self.sigma_data, self.c_noise)
        if self.kind == "edm":
            sd2 = self.sigma_data**2
            c_skip = sd2 / (s * s + sd2)
            c_out = s * self.sigma_data / (s * s + sd2).sqrt()
            c_in = 1 / (s * s + sd2).sqrt()
            return c_skip, c_out, c_in, s.log() / 4
        if self.kind == "vp":
            t = ((_VP_BETA_MIN**2 + 2 * _VP_BETA_D * (s * s).log1p()).sqrt() - _VP_BETA_MIN) / _VP_BETA_D
            return torch.ones_like(s), -s, 1 / (s * s + 1).sqrt(), (_VP_M - 1) * t
        return torch.ones_like(s), s, torch.ones_like(s), (0.5 * s).log()

    def denoise(self, fn: ModelFn, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        s = _batch_sigma(sigma, x)
        if self.kind != "consistency":  # consistency scalings stay in x's dtype: f(x, sigma_min) = x bit for bit
            s = s.to(torch.float64)
        c_skip, c_out, c_in, c_noise = (c.to(x.dtype) for c in self.coefficients(s.reshape(-1, 1, 1, 1)))
        out = fn(c_in * x, c_noise.reshape(-1)).to(x.dtype)
        return c_skip * x + c_out * out


class ConsistencyNetwork(torch.nn.Module):
    """A raw UNet ``model(x, c_noise, class_labels=...)`` (EDM's SongUNet/DhariwalUNet) as a consistency function
    f(x, sigma) with EDM's call ``net(x, sigma, class_labels)``; ``model`` keeps EDM's name, so an EDM network's
    state dict loads into it and EDM's skip points (``model.dec.*``) are found as for any EDM network."""

    kind = "consistency"

    def __init__(self, model: torch.nn.Module, *, img_resolution: int, img_channels: int, label_dim: int = 0,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5, c_noise: str = "edm"):
        super().__init__()
        self.model = model
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.parametrization = PreconditionedParametrization("consistency", sigma_min, sigma_max, sigma_data, c_noise)
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """f(x, sigma) in the network's dtype (float32, as EDM's networks run). The scalings are computed in that
        dtype too, so a sigma_min given in it gives c_out = 0 exactly: f(x, sigma_min) = x bit for bit."""
        labels = None if self.label_dim == 0 else class_labels

        def raw(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            return self.model(x_in, c_noise, class_labels=labels)[:, : self.img_channels]

        return self.parametrization.denoise(raw, x.to(next(self.model.parameters()).dtype), sigma)


def is_consistency_model(adapter: object) -> bool:
    """Whether an adapter's denoiser is a consistency function (sampled by onestep/multistep, not by ODE solvers):
    its parametrisation (model files) or its network (EDM-style networks) says so."""
    for holder in (getattr(adapter, "parametrization", None), getattr(adapter, "net", None)):
        if getattr(holder, "kind", None) == "consistency":
            return True
    return False
