"""Conformance: every registered sampler, feature extractor, proxy metric and search space passes the same checks.

Like diffusers' ``SchedulerCommonTest``, each check is written once (``check_*`` below) and every registered item runs
it; the last test registers a toy of each kind from here, through its registry alone, and runs the same checks, so
adding one is one spec plus its maths.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from skipsearch.proxy.config import METRICS, MetricSpec, ProxyConfig
from skipsearch.proxy.errors import ExtractorWeightsError
from skipsearch.proxy.extractors import EXTRACTORS, FeatureExtractor, get_extractor
from skipsearch.proxy.metrics import MetricInputs
from skipsearch.proxy.stats import FeatureStats, StatsAccumulator
from skipsearch.sampling.noise import SeededNoise
from skipsearch.sampling.samplers import (
    SAMPLERS,
    SampleResult,
    SamplerOption,
    SamplerSpec,
    check_sampler_options,
    sample,
    steps_for_nfe,
)
from skipsearch.schedule import Churn, SkipSchedule
from skipsearch.search.spaces import SPACES, SearchSpace, SpaceContext, baselines, get_space, parse_space_name

optuna.logging.set_verbosity(optuna.logging.WARNING)

# --------------------------------------------------------------------------------------------------------------------
# Samplers: the spec describes the function (options, NFE), and on a real network the function spends exactly its NFE


def check_sampler_spec(spec: SamplerSpec) -> None:
    """The options spec is the function's keyword options; searched ranges lie inside the valid ones; the NFE
    functions invert each other."""
    signature = spec.signature_options()
    assert set(spec.options) == set(signature), f"{spec.name}: options {set(spec.options)} vs fn {set(signature)}"
    for key, option in spec.options.items():
        hint, default = signature[key]
        assert option.type is hint, f"{spec.name}.{key}: type {option.type} vs the function's {hint}"
        assert option.default == default and option.accepts(default), f"{spec.name}.{key}: default {default!r}"
        check_sampler_options(spec.name, {key: default})
        if option.search is None:
            continue
        if option.type in (int, float):
            low, high = option.search
            assert low <= default <= high, f"{spec.name}.{key}: the baseline {default!r} is outside the search"
            values = range(low, high + 1) if option.type is int else (low, high)
        else:
            values = option.search
            assert default in values, f"{spec.name}.{key}: the baseline {default!r} is outside the search"
        assert values and all(option.accepts(v) for v in values), f"{spec.name}.{key}: searches invalid values"
    nfes = [spec.nfe_of_steps(steps) for steps in range(1, min(30, (spec.max_steps or 29) + 1))]  # onestep: 1
    assert nfes == sorted(set(nfes)) and nfes[0] >= 1, f"{spec.name}: NFE must grow with the steps"
    for steps, nfe in enumerate(nfes, start=1):
        assert spec.steps_of_nfe(nfe) == steps_for_nfe(spec.name, nfe) == steps


class CountingDenoiser:
    """A real network's D(x, sigma), counting the calls."""

    def __init__(self, adapter) -> None:
        self.adapter, self.calls = adapter, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        return self.adapter.denoise(x.float(), sigma.float())


def check_sampler_runs(spec: SamplerSpec, adapter) -> None:
    """Exactly its NFE in counted calls (at two step counts, with every searched option value, with churn when
    stochastic), a finite float64 result, and the same seeds giving the same images."""
    runs = [({}, Churn())] + [({key: value}, Churn()) for key, option in spec.searched_options().items()
                              for value in option.search]  # ends, or choices
    if spec.stochastic:
        runs.append(({}, Churn(s_churn=5.0, s_min=0.01, s_max=50.0)))
    results = []
    step_counts = [steps for steps in (1, 3) if steps <= (spec.max_steps or steps)]
    for steps in step_counts:
        nfe = spec.nfe_of_steps(steps)
        for options, churn in runs:
            denoiser, noise = CountingDenoiser(adapter), SeededNoise([3, 4])
            result = sample(denoiser, noise.randn(adapter.img_shape), sampler=spec.name, nfe=nfe,
                            sigma_min=adapter.sigma_min, sigma_max=adapter.sigma_max, round_sigma=adapter.round_sigma,
                            noise=noise, churn=churn, **options)
            assert denoiser.calls == result.nfe == nfe, f"{spec.name} {options} {churn}: {denoiser.calls} calls"
            assert result.x.dtype == torch.float64 and result.x.shape == (2, *adapter.img_shape)
            assert torch.isfinite(result.x).all(), f"{spec.name} {options}: non-finite output"
            results.append(result.x)
    noise = SeededNoise([3, 4])
    again = sample(CountingDenoiser(adapter), noise.randn(adapter.img_shape), sampler=spec.name,
                   nfe=spec.nfe_of_steps(step_counts[-1]), sigma_min=adapter.sigma_min, sigma_max=adapter.sigma_max,
                   round_sigma=adapter.round_sigma, noise=noise, churn=runs[0][1])
    assert torch.equal(again.x, results[len(runs) * (len(step_counts) - 1)]), \
        f"{spec.name}: the same seeds gave other samples"


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_spec_conforms(name: str) -> None:
    check_sampler_spec(SAMPLERS[name])


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_spends_exactly_its_nfe_on_a_real_network(name: str, tiny_edm) -> None:
    check_sampler_runs(SAMPLERS[name], tiny_edm)


# --------------------------------------------------------------------------------------------------------------------
# Feature extractors: uint8 or [-1, 1] images -> finite float32 [N, dim], whatever the batch


def check_extractor(name: str) -> None:
    try:
        extractor = get_extractor(name, offline=True)
    except ExtractorWeightsError as exc:
        pytest.skip(f"{name}: its weights are not on disk and this check runs offline ({exc})")
    assert isinstance(extractor, FeatureExtractor) and extractor.name == name and extractor.dim > 0
    generator = torch.Generator().manual_seed(0)
    for channels in (1, 3):
        images = torch.randint(0, 256, (3, channels, 28, 28), generator=generator, dtype=torch.uint8)
        features = extractor(images)
        assert features.dtype == torch.float32 and features.shape == (3, extractor.dim)
        assert torch.isfinite(features).all()
        torch.testing.assert_close(extractor(images, batch_size=1), features, rtol=1e-4, atol=1e-4)
        as_float = images.to(torch.float64) / 127.5 - 1  # the same pixels in [-1, 1]
        torch.testing.assert_close(extractor(as_float), features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", EXTRACTORS.names())
def test_extractor_conforms(name: str) -> None:
    check_extractor(name)


# --------------------------------------------------------------------------------------------------------------------
# Proxy metrics: the function imports, gives (finite float, bool), and prefers the reference's distribution


def _score(name: str, spec: MetricSpec, features: np.ndarray, reference: np.ndarray) -> float:
    accumulator = StatsAccumulator()
    accumulator.update(features)
    inputs = MetricInputs(accumulator, features if spec.needs_features else None,
                          FeatureStats.from_features(reference), lambda: reference,
                          ProxyConfig(metric=name, kid_subset_size=50))
    value, deficient = spec.function()(inputs)
    assert isinstance(value, float) and math.isfinite(value), f"{name}: value {value!r}"
    assert isinstance(deficient, bool), f"{name}: rank_deficient {deficient!r} is no bool"
    return value


def check_metric(name: str) -> None:
    spec = METRICS[name]
    assert spec.direction in ("minimize", "maximize") and callable(spec.function())
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(160, 6))
    same = rng.normal(size=(96, 6))
    shifted = same * 1.5 + 1.0
    near, far = _score(name, spec, same, reference), _score(name, spec, shifted, reference)
    assert spec.better(near, far), f"{name}: {near} for the reference's distribution, {far} for a shifted one"
    assert spec.best([near, far]) == near and sorted([far, near], key=spec.sort_key)[0] == near


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_conforms(name: str) -> None:
    check_metric(name)


# --------------------------------------------------------------------------------------------------------------------
# Search spaces: valid parameters in a real Optuna trial, baselines inside the distributions, JSON round trip

CTX = SpaceContext(num_skip_points=4, level_of_point=[0, 0, 1, 1], num_steps=5, stochastic=True, sampler="heun")


def _suggest(space: SearchSpace, trial) -> SkipSchedule:
    schedule = space.suggest(trial)
    if space.finetune:
        space.suggest_finetune(trial)
    return schedule


def check_schedule(space: SearchSpace, schedule: SkipSchedule) -> None:
    assert schedule.num_skip_points == CTX.num_skip_points and np.isfinite(schedule.rho).all()
    lo, hi = space.bounds.rho_min, max(1.0, space.bounds.rho_max)
    assert lo - 1e-9 <= schedule.rho.min() and schedule.rho.max() <= hi + 1e-9
    if schedule.sampler is not None:
        assert schedule.sampler in space.ctx.samplers
        check_sampler_options(schedule.sampler, schedule.sampler_options)
    back = SkipSchedule.from_json(schedule.to_json())
    assert back.to_dict() == schedule.to_dict() and np.array_equal(back.rho, schedule.rho)


def check_space(name: str) -> None:
    space = get_space(name, CTX)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        check_schedule(space, _suggest(space, trial))
        study.tell(trial, 0.0)
    for baseline in baselines(space, nfe=9):
        study.enqueue_trial(baseline.params)
        trial = study.ask()
        check_schedule(space, _suggest(space, trial))
        drawn = set(trial.params) - set(baseline.params)
        assert not drawn, f"{name}: baseline {baseline.label!r} leaves {drawn} to chance"
        for key, value in trial.params.items():
            distribution = trial.distributions[key]
            assert distribution._contains(distribution.to_internal_repr(value)), \
                f"{name}: baseline {baseline.label!r} sets {key}={value!r} outside {distribution}"
        study.tell(trial, 0.0)


def space_variants(names: list[str]) -> list[str]:
    """Each rho family alone and, where parts apply, with the grid and sampler parts, and with eps and a free grid."""
    out = []
    for name in names:
        out.append(name)
        if not SPACES[name].finetune:
            out += [f"{name}+grid+sampler", f"{name}+eps+free-grid"]
    return out


@pytest.mark.parametrize("name", space_variants(SPACES.names()))
def test_space_conforms(name: str) -> None:
    assert parse_space_name(name).base in SPACES
    check_space(name)


# --------------------------------------------------------------------------------------------------------------------
# Adding one: a toy of each kind, registered here through its registry alone, passes the same checks


def sample_toy_euler(denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: SeededNoise | None = None,
                     churn: Churn = Churn(), step_scale: float = 1.0) -> SampleResult:
    """Euler on dx/dsigma = (x - D)/sigma, each step scaled by ``step_scale``: one call per step."""
    x, s = x.to(torch.float64), sigmas.tolist()
    for a, b in zip(s, s[1:]):
        x = x + step_scale * (b - a) * (x - denoiser(x, x.new_full([x.shape[0]], a)).to(torch.float64)) / a
    return SampleResult(x, len(s) - 1)


def toy_mean_distance(inputs: MetricInputs) -> tuple[float, bool]:
    """Distance between the mean features and the reference's."""
    return float(np.linalg.norm(inputs.stats.stats().mu - inputs.reference.mu)), False


class ToySpace(SearchSpace):
    name, description = "toy-bottom", "one rho at the bottom level, 1 elsewhere"

    def _rho(self, trial):
        levels = max(self.ctx.level_of_point) + 1
        return SkipSchedule.per_level([self._rho_param(trial, "toy_rho"), *[1.0] * (levels - 1)],
                                      self.ctx.level_of_point)

    def _linear_params(self, rho_bottom, rho_top):
        return {"toy_rho": rho_bottom}


class ToyExtractor(FeatureExtractor):
    """Per-channel mean and spread of the gray pixels."""

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        gray = images.to(torch.float32).mean(1).flatten(1) / 255
        return torch.stack([gray.mean(1), gray.std(1)], dim=1)


def _build_toy_extractor(*, weights_path=None, device="cpu", offline=False) -> FeatureExtractor:
    return ToyExtractor("toy-pixels", nn.Identity(), 2, "0" * 64, None, device)


@pytest.fixture
def toys() -> Iterator[None]:
    registered = [
        (SAMPLERS, "toy_euler", SamplerSpec(
            "toy_euler", sample_toy_euler, False, lambda steps: steps, "Euler, scaled steps (a test's toy)",
            options={"step_scale": SamplerOption(float, 1.0, low=0.0, low_open=True, search=(0.9, 1.0))})),
        (METRICS, "toy-mean", MetricSpec("distance of the mean features (a test's toy)",
                                         f"{__name__}:toy_mean_distance")),
        (SPACES, ToySpace.name, ToySpace),
        (EXTRACTORS, "toy-pixels", _build_toy_extractor),
    ]
    try:
        for registry, name, value in registered:
            registry.register(name, value)
        yield
    finally:
        for registry, name, _ in registered:
            registry.unregister(name)


def test_a_new_sampler_metric_space_and_extractor_are_one_registration_each(toys, tiny_edm) -> None:
    check_sampler_spec(SAMPLERS["toy_euler"])
    check_sampler_runs(SAMPLERS["toy_euler"], tiny_edm)
    check_metric("toy-mean")
    check_extractor("toy-pixels")
    for name in space_variants([ToySpace.name]):
        check_space(name)
    # The toy sampler takes part in '+sampler' spaces with its searched option, like the bundled ones.
    space = get_space("toy-bottom+sampler", CTX)
    assert "toy_euler" in space.ctx.samplers
    trial = optuna.trial.FixedTrial({**space.baseline(0.8), "sampler": "toy_euler", "toy_euler_step_scale": 0.95})
    schedule = space.suggest(trial)
    assert schedule.sampler == "toy_euler" and schedule.sampler_options == {"step_scale": 0.95}


def test_toys_are_gone_after_unregistering() -> None:
    assert "toy_euler" not in SAMPLERS and "toy-mean" not in METRICS and ToySpace.name not in SPACES
    assert "toy-pixels" not in EXTRACTORS
