"""``check-model``: does the model file (or registered model) describe its network right?

The network denoises reference images (MNIST test digits for MNIST-shaped models, :meth:`SkipAdapter.probe_images`)
at a few noise levels, under the spec as given and under each plausible alternative of one field (data range,
number of timesteps, beta schedule, prediction type, time convention), each built by re-wrapping the same network.
An alternative that denoises clearly better than the spec names the field that looks wrong. A few rho = 1 images
show whether the model itself (weights or spec) is broken before any schedule is searched.

Errors are relative: the denoiser's mean squared error over that of the best trivial predictor (the noisy input, or
the data mean), so that alternatives in other units (a [0, 1] reading of [-1, 1] data) compare fairly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from skipsearch.data import DataRange
from skipsearch.models.parametrization import (
    PREDICTION_TYPES,
    DataParametrization,
    EpsilonParametrization,
    PreconditionedParametrization,
    alphas_cumprod_for,
)

if TYPE_CHECKING:
    from skipsearch.models.adapter import SkipAdapter
    from skipsearch.models.spec import ModelFile
    from skipsearch.settings import Settings

CLEARLY_BETTER = 3.0  # an alternative this many times lower in error ...
MOST_LEVELS = 0.5  # ... at least at this share of the noise levels, names the field
ALT_TIMESTEPS = (1000, 200, 4000)
ALT_RANGES = ((-1.0, 1.0), (0.0, 1.0))
ALT_TIMES = ("timestep", "scaled")
ALT_CONTINUOUS = ("edm", "vp", "ve", "denoiser")

@dataclass
class Reading:
    """One way of reading the network: the field it changes (None: the spec as given), its value, its errors."""

    field: str | None
    value: str
    errors: list[float] = field(default_factory=list)  # relative error per noise level
    factor: float = 1.0  # geometric mean over the levels of spec error / this error
    better_at: int = 0  # levels where this reading is CLEARLY_BETTER times lower in error than the spec


@dataclass
class CheckReport:
    model: str
    sigmas: list[float]
    spec: Reading
    trivial: list[float]  # best trivial predictor's MSE per level (the spec's units)
    alternatives: list[Reading] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.warnings

    def lines(self) -> list[str]:
        out = [f"model {self.model}: relative denoising error (MSE / best trivial predictor's) at sigma "
               + ", ".join(f"{s:.3g}" for s in self.sigmas)]
        for reading in [self.spec, *self.alternatives]:
            label = "spec as given" if reading.field is None else f"{reading.field} = {reading.value}"
            errors = " ".join(f"{e:.3f}" for e in reading.errors)
            extra = "" if reading.field is None else f"  ({reading.factor:.2g}x the spec's accuracy)"
            out.append(f"  {label:<48} {errors}{extra}")
        return out


def _fmt(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return str(value)


def check_sigmas(adapter: SkipAdapter, levels: int = 4) -> list[float]:
    """Noise levels spread (geometrically) over the part of the model's range where denoising is informative."""
    lo = max(float(adapter.sigma_min) * 2, 0.05)
    hi = min(float(adapter.sigma_max), 2.5)
    if hi <= lo:
        return [lo]
    return [lo * (hi / lo) ** (i / (levels - 1)) for i in range(levels)]


@torch.no_grad()
def _errors(denoise: Callable, images: torch.Tensor, data_range: DataRange | None, sigmas: list[float],
            noise: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[list[float], list[float]]:
    """Relative errors and the best trivial predictor's MSE per level, in the units of ``data_range`` (None: the
    ``images`` are a latent model's float latents, used as they are)."""
    x0 = (images.float() if data_range is None else data_range.from_uint8(images)).to(noise.device)
    mean = x0.mean(dim=0, keepdim=True)
    relative, trivial = [], []
    for sigma in sigmas:
        x = x0 + sigma * noise
        d = denoise(x, torch.full((len(x),), sigma, device=x.device), labels).float()
        mse = float(((d - x0) ** 2).mean())
        best = min(float(((x - x0) ** 2).mean()), float(((mean - x0) ** 2).mean()), float((x0 ** 2).mean()))
        relative.append(mse / max(best, 1e-12) if math.isfinite(mse) else math.inf)
        trivial.append(best)
    return relative, trivial


@contextlib.contextmanager
def _swapped(obj: object, **values: object) -> Iterator[None]:
    own = vars(obj)
    old = {k: own[k] for k in values if k in own}
    try:
        for k, v in values.items():
            setattr(obj, k, v)
        yield
    finally:
        for k in values:
            if k in old:
                setattr(obj, k, old[k])
            else:
                delattr(obj, k)


def _named_schedule(p: EpsilonParametrization) -> tuple[str, float, float] | None:
    """(beta_schedule, beta_start, beta_end) when ``p`` is a linear or cosine schedule, else None."""
    abar = p.alphas_cumprod
    T = abar.numel()
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    start, end = float(betas[0]), float(betas[-1])
    if torch.allclose(betas, torch.linspace(start, end, T, dtype=abar.dtype), rtol=1e-2, atol=1e-6):
        return "linear", start, end
    if torch.allclose(abar, alphas_cumprod_for("squaredcos_cap_v2", num_timesteps=T), rtol=1e-3, atol=1e-6):
        return "squaredcos_cap_v2", start, end
    return None


def _discrete(schedule: str, start: float, end: float, T: int, kind: str) -> EpsilonParametrization:
    return EpsilonParametrization(alphas_cumprod_for(schedule, beta_start=start, beta_end=end, num_timesteps=T),
                                  kind)


def _alternatives(adapter: SkipAdapter, file: ModelFile | None) -> Iterator[tuple[str, object, Callable]]:
    """(field, value, context manager factory) for every plausible alternative reading of the network."""
    rng = adapter.data_range
    if rng.mean is None and adapter.latent_decoder is None:  # a latent UNet never sees the data range
        for lo_hi in ALT_RANGES:
            if (rng.lo, rng.hi) != lo_hi:
                yield "[data] range", lo_hi, lambda lo_hi=lo_hi: _swapped(adapter, data_range=DataRange(*lo_hi))
    p = getattr(adapter, "parametrization", None)
    if isinstance(p, EpsilonParametrization):
        named = _named_schedule(p)
        T = p.num_timesteps
        for kind in PREDICTION_TYPES:
            if kind != p.prediction_type:
                alt = EpsilonParametrization(p.alphas_cumprod, kind)
                yield "[parametrization] type", kind, lambda alt=alt: _swapped(adapter, parametrization=alt)
        if named is not None:
            schedule, start, end = named
            for steps in ALT_TIMESTEPS:
                if steps != T:
                    alt = _discrete(schedule, start, end, steps, p.prediction_type)
                    yield ("[parametrization] num_timesteps", steps,
                           lambda alt=alt: _swapped(adapter, parametrization=alt))
            other = "squaredcos_cap_v2" if schedule == "linear" else "linear"
            alt = _discrete(other, 1e-4, 0.02, T, p.prediction_type)
            yield "[parametrization] beta_schedule", other, lambda alt=alt: _swapped(adapter, parametrization=alt)
        if file is not None and hasattr(adapter, "call"):
            from skipsearch.models.loading import _call_for
            current = file.call.time or "timestep"
            for form in ALT_TIMES:
                if form != current:
                    alt_file = dataclasses.replace(file, call=dataclasses.replace(file.call, time=form))
                    yield "[call] time", form, lambda f=alt_file: _swapped(adapter, call=_call_for(f))
    elif isinstance(p, DataParametrization):
        current = p.kind if isinstance(p, PreconditionedParametrization) else "denoiser"
        for kind in ALT_CONTINUOUS:
            if kind != current:
                alt = DataParametrization(p.sigma_min, p.sigma_max) if kind == "denoiser" else \
                    PreconditionedParametrization(kind, p.sigma_min, p.sigma_max,
                                                  getattr(p, "sigma_data", 0.5))
                yield "[parametrization] type", kind, lambda alt=alt: _swapped(adapter, parametrization=alt)
    elif _edm_unet(adapter.net) is not None and hasattr(adapter.net, "sigma_data"):  # EDM/EDM2 preconditioned
        for kind in ("vp", "ve", "denoiser"):
            yield "[parametrization] type", kind, lambda kind=kind: _edm_reading(adapter, kind)


def _edm_unet(net: object) -> torch.nn.Module | None:
    """The raw UNet of an EDM (``net.model``) or EDM2 (``net.unet``) preconditioned network, else None."""
    return getattr(net, "model", None) or getattr(net, "unet", None)


@contextlib.contextmanager
def _edm_reading(adapter: SkipAdapter, kind: str) -> Iterator[None]:
    """An EDM/EDM2 adapter's raw UNet (``net.model``/``net.unet``) under another preconditioning."""
    net = adapter.net
    unet = _edm_unet(net)
    p = DataParametrization(adapter.sigma_min, adapter.sigma_max) if kind == "denoiser" else \
        PreconditionedParametrization(kind, adapter.sigma_min, adapter.sigma_max, float(net.sigma_data))

    def raw(x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return p.denoise(lambda x_in, c: unet(x_in.float(), c.float().flatten(), class_labels=labels).float(),
                         x, sigma)

    with _swapped(adapter, _denoise_raw=raw):
        yield


def _compare(spec: Reading, reading: Reading) -> None:
    ratios = [s / max(a, 1e-12) for s, a in zip(spec.errors, reading.errors, strict=True)]
    finite = [min(r, 1e6) for r in ratios if math.isfinite(r)] or [0.0]
    reading.factor = math.exp(sum(math.log(max(r, 1e-6)) for r in finite) / len(finite))
    reading.better_at = sum(r >= CLEARLY_BETTER for r in ratios)


def _wrong_field_line(adapter: SkipAdapter, spec_value: object, best: Reading) -> str:
    name = best.field.split("] ")[1]
    what = f"{best.value} data" if best.field == "[data] range" else f"with {name} = {best.value}"
    return (f"{best.field} = {_fmt(spec_value)} looks wrong: the network denoises {what} "
            f"{best.factor:.0f}x better (model {adapter.name})")


def _spec_value(adapter: SkipAdapter, field_name: str, file: ModelFile | None) -> object:
    p = getattr(adapter, "parametrization", None)
    if field_name == "[data] range":
        return (adapter.data_range.lo, adapter.data_range.hi)
    if field_name == "[parametrization] type":
        if isinstance(p, EpsilonParametrization):
            return p.prediction_type
        return p.kind if isinstance(p, PreconditionedParametrization) else "denoiser" if p is not None else "edm"
    if field_name == "[parametrization] num_timesteps":
        return p.num_timesteps
    if field_name == "[parametrization] beta_schedule":
        named = _named_schedule(p)
        return named[0] if named else "given"
    if field_name == "[call] time":
        return (file.call.time if file is not None else None) or "timestep"
    return "?"


def check_images(adapter: SkipAdapter, reference: torch.Tensor, sample: Callable) -> str | None:
    """A warning naming the model when its rho = 1 images (``sample(adapter) -> (uint8 images, recipe)``, e.g.
    :func:`skipsearch.sampling.generate.untuned_images`) are degenerate or far from the reference, else None."""
    from skipsearch.errors import SkipsearchError
    try:
        images, recipe = sample(adapter)
    except SkipsearchError as exc:
        return f"model {adapter.name}: its rho = 1 images are unusable: {exc}; the model (weights or spec) is at " \
               "fault, not a skip schedule"
    gen, ref = images.float().cpu() / 255, reference.float().cpu() / 255
    gap = abs(float(gen.mean()) - float(ref.mean()))
    spread = float(gen.std(dim=(1, 2, 3)).mean()) / max(float(ref.std(dim=(1, 2, 3)).mean()), 1e-6)
    if gap > 0.25 or not 1 / 3 <= spread <= 3:
        return (f"model {adapter.name}: its rho = 1 images ({recipe}) are far from the reference data (mean "
                f"{gen.mean():.2f} vs {ref.mean():.2f}, contrast {spread:.2f}x); the model (weights or spec) is at "
                "fault, not a skip schedule")
    return None


def check_model(adapter: SkipAdapter, file: ModelFile | None = None, *, n: int = 64, seed: int = 0,
                images: Callable | None = None, settings: Settings | None = None) -> CheckReport:
    """Denoising error under the spec and under each alternative reading; warnings for a field that looks wrong
    and, with ``images`` (a sampler of rho = 1 images: :func:`skipsearch.sampling.generate.untuned_images`, which
    this layer cannot import), for degenerate ones. An applied schedule is removed first (the check reads the
    model as trained); the adapter is otherwise left as it was."""
    start = time.perf_counter()
    if adapter.schedule is not None:
        adapter.remove_schedule()
    reference = adapter.probe_images(n, seed, settings)
    latent = adapter.latent_decoder is not None  # its state is float latents: no uint8 grid, no data range
    uint8 = reference if latent else adapter.data_range.to_uint8(reference)
    sigmas = check_sigmas(adapter)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(uint8.shape, generator=generator).to(adapter.device)
    uint8 = uint8.to(adapter.device)
    labels = None
    if adapter.label_dim:  # a class-conditional model: labels cycled, as for the skip-points probe
        labels = torch.nn.functional.one_hot(torch.arange(len(uint8)) % adapter.label_dim, adapter.label_dim)
        labels = labels.float().to(adapter.device)
    errors, trivial = _errors(adapter.denoise, uint8, None if latent else adapter.data_range, sigmas, noise, labels)
    report = CheckReport(adapter.name, sigmas, Reading(None, "", errors), trivial)
    for field_name, value, reading_of in _alternatives(adapter, file):
        with reading_of():
            alt_errors, _ = _errors(adapter.denoise, uint8, None if latent else adapter.data_range, sigmas, noise,
                                    labels)
        reading = Reading(field_name, _fmt(value), alt_errors)
        _compare(report.spec, reading)
        report.alternatives.append(reading)
    wrong = [r for r in report.alternatives
             if r.factor >= CLEARLY_BETTER and r.better_at >= MOST_LEVELS * len(sigmas)]
    if wrong:
        best = max(wrong, key=lambda r: r.factor)
        report.warnings.append(_wrong_field_line(adapter, _spec_value(adapter, best.field, file), best))
    elif images:
        pixels = adapter.data_range.to_uint8(adapter.probe_pixels(n, seed, settings)) if latent else uint8
        warning = check_images(adapter, pixels.cpu(), images)
        if warning:
            report.warnings.append(warning)
    report.seconds = time.perf_counter() - start
    return report


def check_spec(adapter: SkipAdapter, spec: str, **kwargs) -> CheckReport:
    """:func:`check_model` for an adapter loaded from ``spec``: a model file's [call] alternatives come with it."""
    from skipsearch.models.spec import parse_model_file, spec_kind
    file = parse_model_file(spec) if spec_kind(spec) == "file" else None
    return check_model(adapter, file, **kwargs)
