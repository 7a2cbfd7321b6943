"""The model adapter interface: a denoiser ``D(x, sigma, labels)`` plus its ``skip_points`` and schedule hooks."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from skipsearch.data import SYMMETRIC, DataRange
from skipsearch.models.errors import ModelError
from skipsearch.models.hooks import SigmaProbe, SkipPoint, install_observers, install_skip_hooks, scale_output
from skipsearch.models.latent import LatentDecoder
from skipsearch.models.sources import state_dict_sha256
from skipsearch.schedule import ModelIdentity, ScheduleError, SkipSchedule
from skipsearch.schedule.batch import ScheduleBatch

if TYPE_CHECKING:
    from skipsearch.settings import Settings


class AppliedSchedule:
    """The hooks of one applied schedule; ``remove()`` (or leaving the ``with`` block) restores the model."""

    def __init__(self, adapter: SkipAdapter, schedule: SkipSchedule | ScheduleBatch, handles: list[RemovableHandle]):
        self.adapter, self.schedule, self._handles = adapter, schedule, handles

    def add_handles(self, handles: list[RemovableHandle]) -> None:
        """Extra hooks an adapter needs while the schedule is on (removed together with the skip hooks)."""
        self._handles.extend(handles)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.adapter._applied is self:
            self.adapter._applied = None

    def __enter__(self) -> AppliedSchedule:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@dataclass(frozen=True)
class BatchCalibration:
    """Lets ``generate()`` measure this model's fastest batch (:mod:`skipsearch.sampling.batching`), caching the
    choice under ``cache`` (None: in this process only)."""

    cache: Path | None = None


class SkipAdapter(abc.ABC):
    """A skip-tunable diffusion model. Subclasses set the fields and implement ``_denoise_raw``.

    Conventions: ``denoise(x, sigma, labels)`` returns the data prediction in the model's own data units
    (``data_range`` maps them to images, [-1, 1] by default) with x = x0 + sigma * noise (EDM/VE units);
    ``skip_points`` in decoder order with index 0 = bottom.
    """

    name: str
    net: nn.Module  # the module that moves between devices
    skip_points: list[SkipPoint]
    img_shape: tuple[int, int, int]
    label_dim: int = 0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    data_range: DataRange = SYMMETRIC
    dataset: str | None = None  # the data set it was trained on, for the proxy's reference ("mnist")
    spec_digest: str = ""  # what else changes outputs (parametrisation, range, skip table): part of the identity
    batch_calibration: BatchCalibration | None = None  # set by load_model; None: the formula's batch
    # A latent model's autoencoder: img_shape is then the latent shape the sampler draws, and generate() decodes
    # its samples to latent_decoder.pixel_shape before anything looks at images.
    latent_decoder: LatentDecoder | None = None
    # Set by skipsearch.models.adapt, whose cache holds adapters weakly: while a schedule is on, the net holds its
    # adapter (a no-op hook), so a later adapt(net) finds it and replaces the schedule instead of adding a second.
    pinned_by_net: bool = False

    def __init__(self) -> None:
        self.probe = SigmaProbe()
        self._applied: AppliedSchedule | None = None
        self._identity: ModelIdentity | None = None
        self.weights_sha256: str | None = None

    # --- to implement ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _denoise_raw(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def consumer_modules(self) -> list[nn.Module]:
        """The module of each skip point, aligned with ``skip_points``."""
        modules = dict(self.net.named_modules())
        return [modules[point.consumer] for point in self.skip_points]

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def _install_scaling(self, schedule: SkipSchedule) -> list:
        """Handles (each with ``remove()``) that make the skips follow ``schedule``: consumer pre-hooks here."""
        return install_skip_hooks(self.consumer_modules(), self.skip_points, schedule, self.probe)

    def _install_observers(self, observe) -> list:
        """Handles that call ``observe(point, main, skip)`` at every skip point, changing nothing."""
        return install_observers(self.consumer_modules(), self.skip_points, observe)

    def sigma_of_call(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The sigma of a direct call to ``self.net`` (for schedules applied to a bare network); None if unknown."""
        return None

    # --- common -----------------------------------------------------------------------------------------------------
    @property
    def identity(self) -> ModelIdentity:
        if self._identity is None:
            sha = self.weights_sha256 or state_dict_sha256(self.net)
            if self.spec_digest:  # same weights read another way (range, parametrisation, skips) is another model
                sha = hashlib.sha256(f"{sha}:{self.spec_digest}".encode()).hexdigest()
            self._identity = ModelIdentity(self.name, sha, len(self.skip_points))
        return self._identity

    @property
    def timestep_sigmas(self) -> torch.Tensor | None:
        """A discrete-time (DDPM) model's sigma per training timestep (ascending in t); None for continuous ones."""
        table = getattr(getattr(self, "parametrization", None), "sigmas", None)
        return table if isinstance(table, torch.Tensor) else None

    @property
    def default_spacing(self) -> str:
        """The sampling grid used unless a study or flag names one: trailing timesteps for discrete models (they
        start at the last training timestep, like diffusers' trailing spacing), EDM's Karras grid otherwise."""
        return "trailing" if self.timestep_sigmas is not None else "karras"

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def schedule(self) -> SkipSchedule | None:
        return self._applied.schedule if self._applied else None

    def to(self, device: torch.device | str) -> SkipAdapter:
        self.net.to(device)
        return self

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) with the applied schedule (skip scaling in the hooks, epsilon scaling here)."""
        sigma = torch.as_tensor(sigma, device=x.device)
        self.probe.sigma = sigma.reshape(-1)
        try:
            denoised = self._denoise_raw(x, sigma, class_labels)
        finally:
            self.probe.sigma = None
        schedule = self.schedule
        return denoised if schedule is None else scale_output(x, denoised, schedule.eps_scale)

    __call__ = denoise

    def apply(self, schedule: SkipSchedule | ScheduleBatch, *, check_identity: bool = True) -> AppliedSchedule:
        """Install ``schedule`` (replacing any applied one). Use as ``with adapter.apply(s):`` or keep it."""
        if check_identity:
            schedule.check_model(self.identity)
        elif schedule.num_skip_points != len(self.skip_points):
            raise ScheduleError(f"schedule has {schedule.num_skip_points} skip points but model {self.name!r} has "
                                f"{len(self.skip_points)}")
        if self._applied is not None:
            self._applied.remove()
        handles = self._install_scaling(schedule)
        if schedule.num_intervals > 1:
            handles += self.probe.capture_from(self.net, self.sigma_of_call)
        if self.pinned_by_net:
            handles.append(self.net.register_forward_pre_hook(lambda _module, _args, _keep=self: None))
        self._applied = AppliedSchedule(self, schedule, handles)
        return self._applied

    def remove_schedule(self) -> None:
        if self._applied is not None:
            self._applied.remove()

    @torch.no_grad()
    def norm_ratios(self, x: torch.Tensor, sigma: torch.Tensor | float,
                    class_labels: torch.Tensor | None = None) -> list[float]:
        """Mean over the batch of ||d_i|| / ||u_i|| (skip over main path) at each skip point (paper §3)."""
        ratios: dict[int, float] = {}

        def observe(point: SkipPoint, main: torch.Tensor, skip: torch.Tensor) -> None:
            ratio = skip.flatten(1).norm(dim=1) / main.flatten(1).norm(dim=1).clamp_min(1e-12)
            ratios[point.index] = float(ratio.mean())

        handles = self._install_observers(observe)
        try:
            self.denoise(x, sigma, class_labels)
        finally:
            for handle in handles:
                handle.remove()
        return [ratios[p.index] for p in self.skip_points]

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """The shape of the images the proxy sees: ``img_shape`` unless a latent decoder maps samples to pixels."""
        return self.latent_decoder.pixel_shape if self.latent_decoder is not None else tuple(self.img_shape)

    def probe_pixels(self, n: int, seed: int = 0, settings: Settings | None = None) -> torch.Tensor:
        """Reference images in the data range: real test digits for MNIST models (found with ``settings``:
        :func:`skipsearch.data.mnist_root`), else noise of the data's scale."""
        if self.dataset == "mnist" and self.pixel_shape == (1, 28, 28):
            from skipsearch.data import load_mnist
            return self.data_range.from_uint8(load_mnist("test", settings=settings)[0][:n])
        generator = torch.Generator().manual_seed(seed)
        uint8 = (torch.rand(n, *self.pixel_shape, generator=generator) * 255).to(torch.uint8)
        return self.data_range.from_uint8(uint8)

    def probe_images(self, n: int, seed: int = 0, settings: Settings | None = None) -> torch.Tensor:
        """A batch of the sampler's state to measure skip norms on: :meth:`probe_pixels`, encoded for a latent
        model (noise of the latents' unit scale when its autoencoder has no encoder)."""
        decoder = self.latent_decoder
        if decoder is None:
            return self.probe_pixels(n, seed, settings)
        if decoder.encode is None:
            return torch.randn(n, *self.img_shape, generator=torch.Generator().manual_seed(seed))
        return decoder.encode_batched(self.probe_pixels(n, seed, settings).to(self.device)).cpu()

    def probe_norm_ratios(self, n: int, sigma: float, seed: int = 0,
                          settings: Settings | None = None) -> list[float]:
        """||d_i|| / ||u_i|| per skip point on ``n`` probe images noised to ``sigma`` (labels cycled for a
        class-conditional model): the table of ``skipsearch skip-points``."""
        images = self.probe_images(n, seed, settings)
        generator = torch.Generator().manual_seed(seed)
        x = (images + sigma * torch.randn(images.shape, generator=generator)).to(self.device)
        labels = None
        if self.label_dim:
            labels = torch.nn.functional.one_hot(torch.arange(n) % self.label_dim, self.label_dim).float()
            labels = labels.to(self.device)
        return self.norm_ratios(x, torch.full((n,), sigma, device=self.device), labels)

    def iter_levels(self) -> Iterator[tuple[int, list[SkipPoint]]]:
        """Skip points grouped by resolution, bottom level first."""
        seen: dict[int, list[SkipPoint]] = {}
        for point in self.skip_points:
            seen.setdefault(point.resolution, []).append(point)
        yield from seen.items()

    def level_of_points(self) -> list[int]:
        """Level index (0 = bottom) of each skip point, for the per-level search space."""
        levels = {res: i for i, (res, _) in enumerate(self.iter_levels())}
        return [levels[p.resolution] for p in self.skip_points]


def check_points(points: Sequence[SkipPoint]) -> None:
    if not points:
        raise ModelError("the model has no skip points: no decoder concatenation of an encoder tensor was found")
    if [p.index for p in points] != list(range(len(points))):
        raise ModelError("skip points must be numbered 0..K-1 in decoder order")
