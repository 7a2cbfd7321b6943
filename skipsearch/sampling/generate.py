"""Image generation: a model adapter + a ``SkipSchedule`` + an exact-NFE sampler, one generator per image seed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from skipsearch.data import to_uint8
from skipsearch.device import autocast, default_batch_size
from skipsearch.models.adapter import SkipAdapter
from skipsearch.sampling.samplers import SeededNoise, get_sampler, sample
from skipsearch.schedule.core import Churn, SkipSchedule


class NonFiniteOutputError(RuntimeError):
    """The sampler produced NaN/inf images (e.g. an extreme schedule); the trial must fail, not score."""


@dataclass
class GenerateResult:
    images: torch.Tensor  # uint8 [N,C,H,W]
    seeds: list[int]
    nfe: int  # denoiser calls per image
    denoiser_calls: int  # batched calls made in total
    seconds: float


def generate(adapter: SkipAdapter, *, sampler: str, nfe: int, seeds: Sequence[int],
             schedule: SkipSchedule | None = None, churn: Churn | None = None, batch_size: int | None = None,
             precision: str = "fp32", progress: Callable[[int], None] | None = None,
             **sampler_options) -> GenerateResult:
    """Sample ``len(seeds)`` images; image k depends only on ``seeds[k]`` (common random numbers across trials).

    ``churn`` defaults to the schedule's; deterministic samplers ignore a zero churn.
    """
    device = adapter.device
    churn = churn if churn is not None else (schedule.churn if schedule is not None else Churn())
    if not get_sampler(sampler).stochastic and churn.s_churn == 0:
        churn = Churn()
    batch_size = batch_size or default_batch_size(device, adapter.img_shape)
    seeds = [int(s) for s in seeds]
    chunks: list[torch.Tensor] = []
    calls = 0
    start = time.perf_counter()
    applied = adapter.apply(schedule) if schedule is not None else None
    try:
        with torch.inference_mode(), autocast(device, precision):
            for first in range(0, len(seeds), batch_size):
                batch_seeds = seeds[first:first + batch_size]
                noise = SeededNoise(batch_seeds, device)
                latents = noise.randn(adapter.img_shape)
                labels = (F.one_hot(noise.randint(adapter.label_dim), adapter.label_dim).float()
                          if adapter.label_dim else None)
                result = sample(lambda x, sigma: adapter.denoise(x, sigma, labels), latents, sampler=sampler,
                                nfe=nfe, sigma_min=adapter.sigma_min, sigma_max=adapter.sigma_max,
                                round_sigma=adapter.round_sigma,  # identity unless the model has a sigma grid
                                noise=noise, churn=churn, **sampler_options)
                if not torch.isfinite(result.x).all():
                    bad = [s for s, ok in zip(batch_seeds, torch.isfinite(result.x).flatten(1).all(1)) if not ok]
                    raise NonFiniteOutputError(f"non-finite images for seeds {bad[:5]} (sampler {sampler}, "
                                               f"NFE {nfe}); the schedule is outside the model's stable range")
                chunks.append(to_uint8(result.x.float()).cpu())
                calls += result.nfe
                if progress is not None:
                    progress(len(batch_seeds))
    finally:
        if applied is not None:
            applied.remove()
    return GenerateResult(torch.cat(chunks), seeds, nfe, calls, time.perf_counter() - start)
