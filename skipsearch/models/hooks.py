"""Where a ``SkipSchedule`` touches tensors: the skip scaling (:func:`scale_skip_tensor`) and the output
(epsilon) scaling (:func:`scale_output`).

Two ways lead there, both exactly the paper's ``concat(u_i, rho_i * d_i)``:

* consumer hooks (EDM, diffusers): the adapter names the modules whose input *is* ``cat([main, skip])``;
  ``install_skip_hooks`` puts a forward pre-hook on each that scales the skip channels of that input;
* concatenation interception (any other UNet, :mod:`skipsearch.models.generic`): the skip tensor is scaled as it
  enters ``torch.cat``, so whatever the decoder does after the concatenation (``+ emb``, a norm, attention) sees
  ``rho * d`` and nothing else is scaled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from skipsearch.schedule import SkipSchedule
from skipsearch.schedule.batch import ScheduleBatch


@dataclass(frozen=True)
class SkipPoint:
    """One encoder->decoder skip, in decoder order (index 0 = bottom = consumed first)."""

    index: int
    consumer: str  # module whose input is the concatenation (consumer hooks); for intercepted cats, a description
    resolution: int
    main_channels: int
    skip_channels: int
    skip_first: bool = False  # True where the model concatenates cat([skip, main])
    source: str | None = None  # encoder module that produced the skip, where known
    cat_index: int | None = None  # intercepted: which recorded concatenation of the forward (0 = first) ...
    part: int | None = None  # ... and which of its parts is the skip
    tokens: bool = False  # [N, L, D] tokens joined along features (U-ViT); resolution is then the token count L

    @property
    def cat_dim(self) -> int:
        """The axis main and skip are concatenated along: channels (1), or the token features (-1)."""
        return -1 if self.tokens else 1

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(main, skip) parts of the consumer's input."""
        main_width = x.shape[self.cat_dim] - self.skip_channels
        if self.skip_first:
            skip, main = x.split([self.skip_channels, main_width], dim=self.cat_dim)
        else:
            main, skip = x.split([main_width, self.skip_channels], dim=self.cat_dim)
        return main, skip


def scale_skip_tensor(skip: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """The one place rho multiplies a skip tensor d_i: ``rho * d_i``.

    ``rho`` is [B] (per sample, when a batch mixes sigmas) or [1], broadcast over the skip's other axes (any rank:
    [B, C, H, W] feature maps, [B, L, D] tokens). Not in place: the skip tensor may be shared.
    """
    return skip * rho.to(device=skip.device, dtype=skip.dtype).reshape(-1, *([1] * (skip.ndim - 1)))


def scale_skip(point: SkipPoint, x: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """A consumer's input ``cat([main, skip])`` with its skip channels times rho."""
    main, skip = point.split(x)
    skip = scale_skip_tensor(skip, rho)
    return torch.cat([skip, main] if point.skip_first else [main, skip], dim=point.cat_dim)


def rho_lookup(schedule: SkipSchedule | ScheduleBatch, probe: SigmaProbe) -> Callable[[int], torch.Tensor]:
    """``rho(point_index)`` for the denoiser call in progress: a constant per point, or by the call's sigma (per row
    for a :class:`ScheduleBatch`)."""
    if isinstance(schedule, SkipSchedule) and schedule.num_intervals == 1:
        constants = {i: torch.tensor([float(schedule.rho[0, i])]) for i in range(schedule.num_skip_points)}
        return constants.__getitem__
    return lambda index: schedule.rho_for_sigma(probe.current())[:, index]


def scale_output(x: torch.Tensor, denoised: torch.Tensor, eps_scale: float | torch.Tensor) -> torch.Tensor:
    """Epsilon scaling (Ning et al. 2023): eps/eps_scale, i.e. D pulled toward x: x - (x - D)/eps_scale (a float,
    or [B, 1, 1, 1] per row)."""
    if isinstance(eps_scale, torch.Tensor):
        return x - (x - denoised) / eps_scale.to(device=x.device, dtype=x.dtype)
    return denoised if eps_scale == 1.0 else x - (x - denoised) / eps_scale


class SigmaProbe:
    """Holds the sigma of the denoiser call in progress, so skip hooks deep in the UNet can pick their interval."""

    def __init__(self) -> None:
        self.sigma: torch.Tensor | None = None

    def capture_from(self, module: nn.Module,
                     sigma_of_call: Callable[[tuple, dict], torch.Tensor | None]) -> list[RemovableHandle]:
        """Hooks on the outer model that record sigma for calls made outside ``SkipAdapter.denoise``."""
        captured = []

        def before(_module, args, kwargs):
            if self.sigma is None:
                sigma = sigma_of_call(args, kwargs)
                if sigma is not None:
                    self.sigma = torch.as_tensor(sigma).reshape(-1)
                    captured.append(True)

        def after(_module, _args, _output):  # always_call: a failing forward must not leave a stale sigma
            if captured:
                captured.pop()
                self.sigma = None

        return [module.register_forward_pre_hook(before, with_kwargs=True),
                module.register_forward_hook(after, always_call=True)]

    def current(self) -> torch.Tensor:
        if self.sigma is None:
            raise RuntimeError("a skip hook ran outside a denoiser call: call the model as D(x, sigma) so the "
                               "schedule can select its sigma interval")
        return self.sigma


def install_skip_hooks(modules: Sequence[nn.Module], points: Sequence[SkipPoint],
                       schedule: SkipSchedule | ScheduleBatch,
                       probe: SigmaProbe) -> list[RemovableHandle]:
    """One pre-hook per consumer. Points whose rho is 1 in every interval get no hook at all."""
    handles = []
    rho = rho_lookup(schedule, probe)
    for module, point in zip(modules, points):
        if bool((schedule.rho[:, point.index] == 1.0).all()):
            continue

        def hook(_module, args, point=point):
            return (scale_skip(point, args[0], rho(point.index)), *args[1:])

        handles.append(module.register_forward_pre_hook(hook))
    return handles


def install_observers(modules: Sequence[nn.Module], points: Sequence[SkipPoint],
                      observe: Callable[[SkipPoint, torch.Tensor, torch.Tensor], None]) -> list[RemovableHandle]:
    """Pre-hooks that see (main, skip) of each consumer without changing anything (norm ratios, tests)."""
    handles = []
    for module, point in zip(modules, points):
        def hook(_module, args, point=point):
            observe(point, *point.split(args[0]))

        handles.append(module.register_forward_pre_hook(hook))
    return handles
