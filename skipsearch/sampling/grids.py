"""Sigma grids: EDM's Karras sampling noise levels, and schedule interval bounds that group them into windows."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from skipsearch.schedule.validation import ScheduleError, positive_int
from skipsearch.schedule.values import TimeGrid

__all__ = ["DISCRETE_SPACINGS", "SPACINGS", "RoundSigma", "discrete_timesteps", "grid_sigmas",
           "karras_interval_bounds", "karras_sigmas", "knots_sigmas", "sampling_sigmas"]

RoundSigma = Callable[[torch.Tensor], torch.Tensor]


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  round_sigma: RoundSigma | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """EDM's noise levels (Karras et al. 2022, eq. 5) in float64: ``num_steps`` values from sigma_max to sigma_min,
    optionally snapped by ``round_sigma``, then a final 0. ``num_steps == 1`` gives ``[sigma_max, 0]``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)
    max_inv, min_inv = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    if round_sigma is not None:
        sigmas = torch.as_tensor(round_sigma(sigmas)).to(device=sigmas.device, dtype=torch.float64).reshape(num_steps)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_interval_bounds(sigma_min: float, sigma_max: float, num_steps: int, steps_per_interval: int,
                           rho: float = 7.0) -> tuple[float, ...]:
    """Sigma bounds grouping the Karras sampling sigmas into windows of ``steps_per_interval`` consecutive steps.

    Each inner bound sits at the geometric midpoint between the last sigma of one window and the first of the next;
    outer bounds are inf and 0 so every sigma is covered. The last window may hold fewer steps. The paper's window
    search (13 windows of 4 steps over [0.002, 80]) is ``karras_interval_bounds(0.002, 80, 52, 4)``.
    """
    # Stricter than karras_sigmas (sigma_min < sigma_max < inf) and a ScheduleError: these bounds become a schedule.
    steps_per_interval = positive_int(steps_per_interval, "steps_per_interval")
    num_steps = positive_int(num_steps, "num_steps")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ScheduleError(f"sigma_min/sigma_max: need 0 < sigma_min < sigma_max < inf, "
                            f"got {sigma_min}, {sigma_max}")
    if not rho > 0:
        raise ScheduleError(f"rho: {rho} must be > 0")
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho)[:-1].tolist()  # without the final 0
    inner = [math.sqrt(sigmas[k - 1] * sigmas[k]) for k in range(steps_per_interval, len(sigmas), steps_per_interval)]
    return (math.inf, *inner, 0.0)


# Timestep spacings for discrete-time (DDPM) models, with diffusers' meanings; karras and log-snr work for any model.
SPACINGS = ("karras", "log-snr", "linspace", "uniform", "leading", "trailing")
DISCRETE_SPACINGS = ("linspace", "uniform", "leading", "trailing")


def discrete_timesteps(spacing: str, num_steps: int, num_timesteps: int) -> list[int]:
    """The N evaluation timesteps (descending) of a discrete model with T training steps.

    ``leading`` (DDIM's default): ``arange(N) * (T // N)``; ``trailing``: ``round(arange(T, 0, -T/N)) - 1``;
    ``linspace``/``uniform`` (DPM-Solver's and UniPC's default): ``linspace(0, T - 1, N + 1)`` rounded, t = 0
    dropped. Every sampler then steps from each timestep's sigma to the next and finally to sigma = 0.
    """
    if num_steps > num_timesteps:
        raise ValueError(f"{num_steps} steps exceed the model's {num_timesteps} timesteps")
    if spacing == "leading":
        ratio = num_timesteps // num_steps
        steps = [i * ratio for i in range(num_steps)]
    elif spacing == "trailing":
        ratio = num_timesteps / num_steps
        steps = [int(round(num_timesteps - i * ratio)) - 1 for i in range(num_steps)][::-1]
    elif spacing in ("linspace", "uniform"):
        points = torch.linspace(0, num_timesteps - 1, num_steps + 1, dtype=torch.float64).round().long().tolist()
        steps = points[1:]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use {', '.join(DISCRETE_SPACINGS)}")
    ordered = sorted(set(steps), reverse=True)
    if len(ordered) != num_steps:
        raise ValueError(f"{spacing} spacing gives repeated timesteps for {num_steps} steps of {num_timesteps}")
    return ordered


def sampling_sigmas(num_steps: int, *, spacing: str = "karras", sigma_min: float, sigma_max: float,
                    rho: float = 7.0, round_sigma: RoundSigma | None = None,
                    timestep_sigmas: torch.Tensor | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The sampler's noise levels: ``num_steps`` descending sigmas then a final 0 (float64).

    ``karras``: EDM's rho-spaced grid; ``log-snr``: uniform in log sigma (= uniform log-SNR); both snapped by
    ``round_sigma``. The discrete spacings pick timesteps of ``timestep_sigmas`` (the model's sigma per timestep,
    ascending in t) exactly.
    """
    if spacing == "karras":
        return karras_sigmas(num_steps, sigma_min, sigma_max, rho, round_sigma, device=device)
    if spacing == "log-snr":
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        ramp = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)
        sigmas = (math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max))).exp()
        if round_sigma is not None:
            sigmas = torch.as_tensor(round_sigma(sigmas)).to(device=sigmas.device, dtype=torch.float64)
        return torch.cat([sigmas.reshape(num_steps), sigmas.new_zeros(1)])
    if spacing not in DISCRETE_SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {', '.join(SPACINGS)}")
    if timestep_sigmas is None:
        raise ValueError(f"{spacing} spacing needs a discrete-time (DDPM) model; use karras or log-snr")
    table = torch.as_tensor(timestep_sigmas, dtype=torch.float64)
    steps = discrete_timesteps(spacing, num_steps, int(table.numel()))
    sigmas = table[torch.tensor(steps)].to(device=device)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def knots_sigmas(knots: tuple[float, ...] | list[float], num_steps: int,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``num_steps`` sigmas from K+1 descending knots: the knots themselves when num_steps = K+1, else log-sigma
    interpolated linearly along the normalised step index (Align-Your-Steps' rule for other step counts)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    exact = torch.tensor(knots, dtype=torch.float64)
    if num_steps == len(knots):
        return exact.to(device)
    log_knots = exact.log()
    position = torch.arange(num_steps, dtype=torch.float64) * (len(knots) - 1) / max(num_steps - 1, 1)
    left = position.floor().long().clamp(max=len(knots) - 2)
    frac = position - left
    values = (log_knots[left] + frac * (log_knots[left + 1] - log_knots[left])).exp()
    on_knot = frac == 0  # a step on a knot takes the knot itself (no log/exp rounding)
    values[on_knot] = exact[left[on_knot]]
    if num_steps > 1:
        values[-1] = exact[-1]
    return values.to(device)


def grid_sigmas(grid: TimeGrid, num_steps: int, *, sigma_min: float, sigma_max: float,
                round_sigma: RoundSigma | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A schedule's time grid at ``num_steps`` steps, then a final 0 (float64); a Karras grid's missing ends are
    the model's ``sigma_min``/``sigma_max``. Snapped by ``round_sigma`` like the default grids."""
    if grid.kind == "karras":
        return karras_sigmas(num_steps, grid.sigma_min if grid.sigma_min is not None else sigma_min,
                             grid.sigma_max if grid.sigma_max is not None else sigma_max, grid.rho, round_sigma,
                             device=device)
    sigmas = knots_sigmas(grid.knots, num_steps, device=device)
    if round_sigma is not None:
        sigmas = torch.as_tensor(round_sigma(sigmas)).to(device=sigmas.device, dtype=torch.float64)
    return torch.cat([sigmas.reshape(num_steps), sigmas.new_zeros(1)])
