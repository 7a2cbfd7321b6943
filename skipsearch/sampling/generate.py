"""Image generation: a model adapter + a ``SkipSchedule`` + an exact-NFE sampler, one generator per image seed."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from skipsearch.device import autocast
from skipsearch.errors import SkipsearchError
from skipsearch.inputs import check_memory
from skipsearch.models.adapter import SkipAdapter
from skipsearch.models.parametrization import is_consistency_model
from skipsearch.sampling.batching import batch_size_for
from skipsearch.sampling.errors import DegenerateOutputError, NonFiniteOutputError
from skipsearch.sampling.grids import grid_sigmas, sampling_sigmas
from skipsearch.sampling.noise import SeededNoise
from skipsearch.sampling.samplers import (
    CONSISTENCY,
    DIFFUSION,
    check_sampler_for_model,
    get_sampler,
    sample,
    steps_for_nfe,
)
from skipsearch.schedule import Churn, SkipSchedule
from skipsearch.schedule.batch import ScheduleBatch

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
    denoiser_calls: int  # batched calls its images were in (generate_many: shared with the other schedules)
    seconds: float


def untuned_images(adapter: SkipAdapter, n: int = 8) -> tuple[torch.Tensor, str]:
    """``n`` rho = 1 images at a moderate NFE (DDIM 10 for a discrete-time model, one step for a consistency model,
    Heun 9 otherwise) and the recipe in words: what ``check-model`` looks at
    (:func:`skipsearch.models.check.check_images`)."""
    sampler, nfe = ("ddim", 10) if adapter.timestep_sigmas is not None else \
        ("onestep", 1) if is_consistency_model(adapter) else ("heun", 9)
    return generate(adapter, sampler=sampler, nfe=nfe, seeds=list(range(n))).images, f"{sampler}, NFE {nfe}"


def generate(adapter: SkipAdapter, *, sampler: str, nfe: int, seeds: Sequence[int],
             schedule: SkipSchedule | None = None, churn: Churn | None = None, batch_size: int | None = None,
             precision: str = "fp32", progress: Callable[[int], None] | None = None,
             **sampler_options) -> GenerateResult:
    """Sample ``len(seeds)`` images; image k depends only on ``seeds[k]`` (common random numbers across trials).

    ``churn`` defaults to the schedule's; deterministic samplers ignore a zero churn.
    """
    result = generate_many(adapter, [schedule], sampler=sampler, nfe=nfe, seeds=seeds, churn=churn,
                           batch_size=batch_size, precision=precision, progress=progress, **sampler_options)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def generate_many(adapter: SkipAdapter, schedules: Sequence[SkipSchedule | None], *, sampler: str, nfe: int,
                  seeds: Sequence[int], churn: Churn | None = None, batch_size: int | None = None,
                  precision: str = "fp32", progress: Callable[[int], None] | None = None,
                  **sampler_options) -> list[GenerateResult | SkipsearchError]:
    """The same seeds under each schedule, in shared forwards (``batch_size`` images per pass in all).

    Entry j is schedule j's images, exactly what ``generate(schedule=schedules[j])`` gives (every image is drawn
    from its own seed), or the error that stopped schedule j (non-finite or degenerate images); the others go on.
    The schedules must share their churn and time grid (one sampler pass); ``churn`` defaults to theirs, and their
    grid (``SkipSchedule.grid``; None: the sampler's default grid) is used.
    """
    device = adapter.device
    check_sampler_for_model(sampler, CONSISTENCY if is_consistency_model(adapter) else DIFFUSION, adapter.name)
    if churn is None:
        churns = {(s.churn if s is not None else Churn()) for s in schedules}
        if len(churns) != 1:
            raise ValueError("schedules sampled together must share their churn; group them by churn")
        churn = churns.pop()
    grids = {(s.grid if s is not None else None) for s in schedules}
    if len(grids) != 1:
        raise ValueError("schedules sampled together must share their time grid; group them by grid")
    grid = grids.pop()
    if not get_sampler(sampler).stochastic and churn.s_churn == 0:
        churn = Churn()
    # The uint8 images of every schedule are kept, and the seeds as a list: refuse what cannot fit before starting.
    check_memory(len(seeds) * (len(schedules) * math.prod(adapter.pixel_shape) + 36),
                 f"sampling {len(seeds)} images x {len(schedules)} schedule(s)", "sample fewer images")
    batch_size = batch_size or batch_size_for(adapter, precision)  # measured once per model and device
    discrete = adapter.timestep_sigmas is not None
    options = {"spacing": adapter.default_spacing, "timestep_sigmas": adapter.timestep_sigmas,
               "vp_start": discrete, "grid": grid, **sampler_options}
    seeds = [int(s) for s in seeds]
    identity = SkipSchedule.identity(len(adapter.skip_points))  # None beside others: the model as trained
    chunks: list[list[torch.Tensor]] = [[] for _ in schedules]
    calls, seconds = [0] * len(schedules), [0.0] * len(schedules)
    failed: dict[int, SkipsearchError] = {}
    done = 0
    with torch.inference_mode(), autocast(device, precision):
        while done < len(seeds):
            active = [j for j in range(len(schedules)) if j not in failed]
            if not active:
                break
            per_pass = max(1, batch_size // len(active))  # seeds per schedule that fit in one pass
            # Equal passes (200 seeds at batch 128: 2 x 100, not 128 + 72): a small tail batch runs slower per image.
            passes = -(-(len(seeds) - done) // per_pass)
            batch_seeds = seeds[done:done + -(-(len(seeds) - done) // passes)]
            m = len(batch_seeds)
            start = time.perf_counter()
            noise = SeededNoise(batch_seeds * len(active), device)  # schedule-major rows, the same noise for each
            latents = noise.randn(adapter.img_shape)
            labels = (F.one_hot(noise.randint(adapter.label_dim), adapter.label_dim).float()
                      if adapter.label_dim else None)
            on = [schedules[j] for j in active]
            if len(on) == 1:  # one schedule: exactly the single-trial path
                applied = adapter.apply(on[0]) if on[0] is not None else None
            else:
                applied = adapter.apply(ScheduleBatch([identity if s is None else s for s in on], m))
            try:
                result = sample(lambda x, sigma: adapter.denoise(x, sigma, labels), latents, sampler=sampler,
                                nfe=nfe, sigma_min=adapter.sigma_min, sigma_max=adapter.sigma_max,
                                round_sigma=adapter.round_sigma,  # identity unless the model has a sigma grid
                                noise=noise, churn=churn, **options)
            finally:
                if applied is not None:
                    applied.remove()
            elapsed = (time.perf_counter() - start) / len(active)
            for k, j in enumerate(active):
                x = result.x[k * m:(k + 1) * m]
                checked = _check_images(x, batch_seeds, sampler, nfe, adapter)
                if isinstance(checked, SkipsearchError):
                    failed[j] = checked
                    continue
                chunks[j].append(checked)
                calls[j] += result.nfe
                seconds[j] += elapsed
            done += m
            if progress is not None:
                progress(m * len(active))
    return [failed[j] if j in failed else GenerateResult(torch.cat(chunks[j]), seeds, nfe, calls[j], seconds[j])
            for j in range(len(schedules))]


def recipe_of(schedule: SkipSchedule | None, sampler: str, nfe: int,
              options: dict | None = None) -> tuple[str, int, dict]:
    """(sampler, NFE, options) to sample ``schedule`` with: the ones it names (a searched sampler, one NFE of a
    multi-NFE study, its sampler options), else the given defaults; default options apply to their sampler only."""
    own = schedule.sampler if schedule is not None and schedule.sampler else sampler
    steps = schedule.nfe if schedule is not None and schedule.nfe else nfe
    merged = {**((options or {}) if own == sampler else {}),
              **(schedule.sampler_options if schedule is not None else {})}
    return own, steps, merged


def schedule_sigmas(adapter: SkipAdapter, schedule: SkipSchedule | None, *, sampler: str | None = None,
                    nfe: int | None = None) -> torch.Tensor:
    """The noise levels (descending, final 0, float64) that sampling ``schedule`` on ``adapter`` steps through:
    its own time grid, else the model's default grid, at the step count of ``sampler`` and ``nfe`` (default: the
    ones the schedule names). With ``skipsearch.apply(model, schedule)`` this is all a sampling loop of one's own
    needs to reproduce ``skipsearch sample --schedule``."""
    sampler = sampler or (schedule.sampler if schedule is not None and schedule.sampler else "heun")
    nfe = nfe or (schedule.nfe if schedule is not None and schedule.nfe else None)
    if nfe is None:
        raise ValueError("schedule_sigmas: the schedule names no NFE; pass nfe=")
    steps = get_sampler(sampler).grid_steps(steps_for_nfe(sampler, nfe))
    if schedule is not None and schedule.grid is not None:
        return grid_sigmas(schedule.grid, steps, sigma_min=adapter.sigma_min, sigma_max=adapter.sigma_max,
                           round_sigma=adapter.round_sigma, device=adapter.device)
    return sampling_sigmas(steps, spacing=adapter.default_spacing, sigma_min=adapter.sigma_min,
                           sigma_max=adapter.sigma_max, round_sigma=adapter.round_sigma,
                           timestep_sigmas=adapter.timestep_sigmas, device=adapter.device)


def _check_images(x: torch.Tensor, seeds: list[int], sampler: str, nfe: int,
                  adapter: SkipAdapter) -> torch.Tensor | SkipsearchError:
    """The uint8 images of one schedule's rows (a latent model's decoded first), or why they cannot be scored."""
    failure = _non_finite(x, seeds, sampler, nfe, "latents" if adapter.latent_decoder is not None else "images")
    if failure is None and adapter.latent_decoder is not None:
        x = adapter.latent_decoder.decode_batched(x, check=False)  # the one place samples become images
        failure = _non_finite(x, seeds, sampler, nfe, "decoded images")
    if failure is not None:
        return failure
    images = adapter.data_range.to_uint8(x.float()).cpu()
    reason = degenerate_reason(x, images, adapter.data_range)
    if reason is not None:
        return DegenerateOutputError(f"{reason} (sampler {sampler}, NFE {nfe}, seeds {seeds[0]}..{seeds[-1]}); the "
                                     "schedule breaks the model")
    return images


def _non_finite(x: torch.Tensor, seeds: list[int], sampler: str, nfe: int, what: str) -> SkipsearchError | None:
    finite = torch.isfinite(x).flatten(1).all(1)
    if bool(finite.all()):
        return None
    bad = [s for s, ok in zip(seeds, finite) if not ok]
    return NonFiniteOutputError(f"non-finite {what} for seeds {bad[:5]} (sampler {sampler}, NFE {nfe}); the schedule "
                                "is outside the model's stable range")
