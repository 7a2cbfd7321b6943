"""Image generation: a model adapter + a ``SkipSchedule`` + an exact-NFE sampler, one generator per image seed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from skipsearch.device import autocast, default_batch_size
from skipsearch.errors import SkipsearchError
from skipsearch.models.adapter import SkipAdapter
from skipsearch.sampling.noise import SeededNoise
from skipsearch.sampling.samplers import get_sampler, sample
from skipsearch.schedule import Churn, SkipSchedule


class NonFiniteOutputError(SkipsearchError, RuntimeError):
    """The sampler produced NaN/inf images (e.g. an extreme schedule); the trial must fail, not score."""


class DegenerateOutputError(SkipsearchError, RuntimeError):
    """The images are constant, all black/white or saturated: a broken schedule, not a score."""


# A batch is degenerate when most of its images are: blank (almost every pixel the same value: all black, all white,
# flat grey), or with almost every pixel far outside the data range (a clipped image carries no shape a feature
# extractor could score fairly). A real MNIST digit covers ~19% of its pixels.
DEGENERATE_IMAGE_SHARE = 0.9
SATURATED_PIXEL_SHARE = 0.99
BLANK_PIXEL_SHARE = 0.99
BLANK_CONTRAST = 64  # of 255: pixels all within a quarter of the range show nothing (near-black, flat grey)
SATURATION_MARGIN = 0.05  # of the data range; a few percent below black is an ordinary background


def degenerate_reason(x: torch.Tensor, images: torch.Tensor, data_range) -> str | None:
    """Why a batch is degenerate (None if it is not): ``x`` the float samples, ``images`` their uint8 form."""
    flat = images.flatten(1)
    mode = flat.mode(dim=1).values
    contrast = flat.max(dim=1).values.int() - flat.min(dim=1).values.int()
    blank = ((flat == mode[:, None]).float().mean(dim=1) >= BLANK_PIXEL_SHARE) | (contrast <= BLANK_CONTRAST)
    unit = data_range.to_unit(x.float()).flatten(1)
    saturated = ((unit < -SATURATION_MARGIN) | (unit > 1 + SATURATION_MARGIN)).float().mean(dim=1) \
        > SATURATED_PIXEL_SHARE
    bad = blank | saturated
    if bad.float().mean() < DEGENERATE_IMAGE_SHARE:
        return None
    if bool(blank.all()):
        levels = set(mode.tolist())
        kind = ("all black" if levels == {0} and int(flat.max()) == 0 else "all white" if levels == {255}
                else "blank (no contrast: near-black, near-white or flat)")
        return f"{kind} images"
    return (f"{int(bad.sum())} of {len(bad)} images blank or saturated (>{SATURATED_PIXEL_SHARE:.0%} of pixels "
            f"outside the data range {data_range.describe()})")


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
    discrete = adapter.timestep_sigmas is not None
    options = {"spacing": adapter.default_spacing, "timestep_sigmas": adapter.timestep_sigmas,
               "vp_start": discrete, **sampler_options}
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
                                noise=noise, churn=churn, **options)
                if not torch.isfinite(result.x).all():
                    bad = [s for s, ok in zip(batch_seeds, torch.isfinite(result.x).flatten(1).all(1)) if not ok]
                    raise NonFiniteOutputError(f"non-finite images for seeds {bad[:5]} (sampler {sampler}, "
                                               f"NFE {nfe}); the schedule is outside the model's stable range")
                images = adapter.data_range.to_uint8(result.x.float()).cpu()
                reason = degenerate_reason(result.x, images, adapter.data_range)
                if reason is not None:
                    raise DegenerateOutputError(f"{reason} (sampler {sampler}, NFE {nfe}, seeds {batch_seeds[0]}.."
                                                f"{batch_seeds[-1]}); the schedule breaks the model")
                chunks.append(images)
                calls += result.nfe
                if progress is not None:
                    progress(len(batch_seeds))
    finally:
        if applied is not None:
            applied.remove()
    return GenerateResult(torch.cat(chunks), seeds, nfe, calls, time.perf_counter() - start)
