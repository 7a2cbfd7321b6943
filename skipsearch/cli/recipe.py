"""How ``sample`` and ``evaluate`` sample: the schedule (a file or ``--rho``), the weights a schedule names, the
sampler, NFE and options a schedule carries, and whether the images fit in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.markup import escape

from skipsearch.cli.app import console
from skipsearch.errors import UsageError
from skipsearch.settings import Settings


def parse_rho(text: str, num_skip_points: int):
    """``0.7`` -> constant; ``0.68:1.0`` -> linear bottom->top (the paper's notation 0.68 -> 1.0)."""
    import math

    from skipsearch.schedule import SkipSchedule
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise UsageError(f"--rho {text!r}: give a number (0.7) or bottom:top (0.68:1.0)") from None
    if not all(math.isfinite(p) for p in parts):
        raise UsageError(f"--rho {text!r}: rho must be a finite number")
    if len(parts) == 1:
        return SkipSchedule.constant(parts[0], num_skip_points)
    if len(parts) == 2:
        return SkipSchedule.linear(parts[0], parts[1], num_skip_points)
    raise UsageError(f"--rho {text!r}: give a number (0.7) or bottom:top (0.68:1.0)")


def weights_of(schedule: Path, settings: Settings) -> Optional[Path]:
    """Fine-tuned weights a schedule names (S²-DM exports): :func:`skipsearch.export.weights.weights_named_by`."""
    from skipsearch.export.weights import weights_named_by
    from skipsearch.store import default_storage_url
    from skipsearch.store.studies import artifact_dir
    return weights_named_by(schedule, artifact_dir(default_storage_url(settings), settings))


def resolve_schedule(adapter, schedule: Optional[Path], rho: Optional[str], *, sampler: Optional[str] = None,
                     nfe: Optional[int] = None):
    """The schedule to sample with; a warning on stderr when it was tuned for another sampler or NFE."""
    from skipsearch.schedule import SkipSchedule
    if schedule is not None and rho is not None:
        raise UsageError("give either --schedule or --rho, not both")
    if schedule is not None:
        tuned = SkipSchedule.load(schedule, expect_model=adapter.identity)
        other = (tuned.sampler is not None and sampler is not None and tuned.sampler != sampler) or (
            tuned.nfe is not None and nfe is not None and tuned.nfe != nfe and nfe not in tuned.nfe_set)
        if other:  # allowed (a schedule may transfer), but rarely what was meant
            tuned_for = " ".join(p for p in (tuned.sampler, f"NFE {tuned.nfe}" if tuned.nfe else None) if p)
            console.print(f"[yellow]warning:[/yellow] {escape(schedule.name)} was tuned for {escape(tuned_for)}; "
                          f"sampling {escape(sampler or '')} NFE {nfe}", soft_wrap=True)
        return tuned
    if rho is not None:
        return parse_rho(rho, len(adapter.skip_points)).with_metadata(model=adapter.identity)
    return None


def recipe(schedule: Optional[Path], sampler: Optional[str], nfe: Optional[int], *, default_nfe: int,
            model: Optional[str] = None) -> tuple[str, int, dict]:
    """(sampler, NFE, sampler options) to sample with: the flags, else what the schedule names (schema v2 keeps
    its searched sampler and options), else the model's default (:func:`skipsearch.search.definition.default_sampler`)
    at ``default_nfe``. Options travel only with their sampler."""
    named = None
    if schedule is not None:  # a missing or unreadable file is refused here, before the model is loaded
        from skipsearch.sampling.samplers import SAMPLERS, check_sampler_options
        from skipsearch.schedule import SkipSchedule
        named = SkipSchedule.load(schedule)  # the model is checked once it is loaded
        if named.sampler in SAMPLERS and named.sampler_options:  # an option the sampler does not take: not later
            check_sampler_options(named.sampler, named.sampler_options, where=f"{schedule}: sampler_options")
    if sampler is None and not (named is not None and named.sampler):
        from skipsearch.search.definition import default_sampler
        sampler = default_sampler(model) if model else "heun"  # DDIM for a discrete-time model
    chosen = sampler if sampler is not None else named.sampler
    steps = nfe if nfe is not None else (named.nfe if named is not None and named.nfe else default_nfe)
    options = dict(named.sampler_options) if named is not None and named.sampler == chosen else {}
    if named is not None and named.sampler_options and named.sampler != chosen:
        console.print(f"[yellow]warning:[/yellow] {escape(schedule.name)} was searched with {named.sampler} "
                      f"options {named.sampler_options}; sampling {chosen} without them", soft_wrap=True)
    return chosen, steps, options


def check_sample_size(n: int, image_shape: tuple[int, ...], scale: int) -> None:
    """Refuse, before sampling, images and a grid that cannot be held or written (a lower bound of the memory)."""
    import math

    from skipsearch.export.images import MAX_GRID_SIDE, grid_size
    from skipsearch.inputs import check_memory
    height, width = grid_size(n, image_shape, scale=scale)
    if max(height, width) > MAX_GRID_SIDE:
        raise UsageError(f"--n {n} images at --scale {scale} make a {width}x{height}-pixel PNG grid; a side may be "
                         f"at most {MAX_GRID_SIDE} pixels: give a smaller --n or --scale")
    pixels = math.prod(image_shape)
    unscaled = grid_size(n, image_shape)
    need = n * (2 * pixels + 36) + image_shape[0] * unscaled[0] * unscaled[1] * (1 + (scale > 1) * scale ** 2)
    check_memory(need, f"sampling {n} images of {'x'.join(map(str, image_shape))} and their grid",
                 "give a smaller --n or --scale")
