"""The quick FID proxy of a schedule: generate on fixed seeds, featurise, FID/KID after each progressive rung.

Common random numbers (default): image k of every evaluation is drawn from seed ``seed_offset + k``, so two
schedules are compared on the same noise and the difference of their proxies has far lower variance than either
value; rankings, which are all a search needs, stabilise at a much smaller n. Rungs grow n (e.g. 250 -> 500 -> 1000);
features accumulate and are never recomputed, and after each rung a callback sees the value (an Optuna pruner hook).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from skipsearch.models.adapter import SkipAdapter
from skipsearch.proxy.config import ProxyConfig
from skipsearch.proxy.errors import NonFiniteError, ProxyConfigError
from skipsearch.proxy.extractors import FeatureExtractor, get_extractor
from skipsearch.proxy.metrics import fid_infinity, fid_result, kid
from skipsearch.proxy.stats import (
    DATASETS,
    FeatureStats,
    StatsAccumulator,
    cache_path,
    compute_reference_stats,
    load_npz,
)
from skipsearch.sampling.generate import generate
from skipsearch.schedule import SkipSchedule
from skipsearch.settings import Settings


@dataclass(frozen=True)
class RungResult:
    n: int
    value: float
    seconds: float
    rank_deficient: bool = False


@dataclass
class ProxyResult:
    metric: str
    rungs: list[RungResult]
    seeds: tuple[int, int]  # [start, stop)
    denoiser_calls: int
    sampling_seconds: float
    feature_seconds: float
    extractor: str
    extractor_sha256: str
    preview: torch.Tensor | None = field(default=None, repr=False)  # first images (uint8) for artifacts

    @property
    def value(self) -> float:
        return self.rungs[-1].value

    @property
    def n(self) -> int:
        return self.rungs[-1].n


def reference_features(extractor: FeatureExtractor, dataset: str, split: str, cache: Path,
                       n: int = 5000) -> np.ndarray:
    """Features of a fixed random subset of the data set (for KID), cached next to the reference statistics."""
    path = cache_path(cache, dataset, split, extractor.name, extractor.weights_sha256).with_suffix(f".feat{n}.npy")
    if path.is_file():
        return np.load(path)
    images = DATASETS.get(dataset)(split)
    index = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    features = extractor(images[index]).double().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, features)
    return features


class FidProxy:
    """Scores schedules for one (model, sampler, NFE) with one extractor and one reference."""

    def __init__(self, adapter: SkipAdapter, *, sampler: str, nfe: int, config: ProxyConfig = ProxyConfig(),
                 sampler_options: dict | None = None, settings: Settings | None = None):
        self.adapter, self.sampler, self.nfe, self.config = adapter, sampler, nfe, config
        self.settings = settings or Settings.from_env()
        self.sampler_options = sampler_options or {}
        weights = config.weights_path
        if weights is None and config.extractor == "inception-v3-compat":
            weights = self.settings.fid_weights
        self.extractor = get_extractor(config.extractor, weights_path=weights, device=adapter.device,
                                       offline=self.settings.offline)
        self.ref_stats = self._reference_stats()
        self._ref_features: np.ndarray | None = None
        self._evaluations = 0

    def with_adapter(self, adapter: SkipAdapter) -> FidProxy:
        """The same proxy (extractor, reference, seeds) scoring another model, e.g. a fine-tuned copy."""
        clone = copy.copy(self)
        clone.adapter = adapter
        return clone

    def _reference_stats(self) -> FeatureStats:
        if self.config.ref_path is not None:
            stats = load_npz(self.config.ref_path)
            if stats.dim != self.extractor.dim:
                raise ProxyConfigError(f"reference {self.config.ref_path} has {stats.dim}-d statistics but extractor "
                                 f"{self.extractor.name} gives {self.extractor.dim}-d features")
            return stats
        return compute_reference_stats(self.config.dataset, self.config.split, self.extractor,
                                       cache=self.settings.cache).stats

    def seeds_for(self, n: int, seed_offset: int | None = None) -> range:
        if seed_offset is None:
            # Without CRN every evaluation gets fresh noise: a new block of seeds per call.
            seed_offset = self.config.seed_offset + (0 if self.config.common_random_numbers
                                                     else 1_000_003 * self._evaluations)
        return range(seed_offset, seed_offset + n)

    def evaluate(self, schedule: SkipSchedule | None, *, rungs: Sequence[int] | None = None,
                 seed_offset: int | None = None, on_rung: Callable[[int, RungResult], None] | None = None,
                 preview: int = 16, progress: Callable[[int], None] | None = None) -> ProxyResult:
        """Proxy value after each rung; ``on_rung(index, result)`` may raise (e.g. optuna.TrialPruned) to stop."""
        rungs = list(rungs or self.config.rungs)
        seeds = self.seeds_for(rungs[-1], seed_offset)
        self._evaluations += 1
        accumulator = StatsAccumulator()
        all_features: list[np.ndarray] = []
        results: list[RungResult] = []
        calls, sampling_s, feature_s, done = 0, 0.0, 0.0, 0
        preview_images = None
        start = time.perf_counter()
        for index, n in enumerate(rungs):
            generated = generate(self.adapter, sampler=self.sampler, nfe=self.nfe, seeds=seeds[done:n],
                                 schedule=schedule, batch_size=self.config.batch_size, progress=progress,
                                 **self.sampler_options)
            calls += generated.denoiser_calls
            sampling_s += generated.seconds
            if preview_images is None and preview:
                preview_images = generated.images[:preview]
            t0 = time.perf_counter()
            features = self.extractor(generated.images)
            if not torch.isfinite(features).all():
                raise NonFiniteError(f"non-finite features at rung {index} (n={n})")
            accumulator.update(features)
            if self.config.metric != "fid":  # KID and FID-infinity need the features, not only their moments
                all_features.append(features.double().cpu().numpy())
            feature_s += time.perf_counter() - t0
            done = n
            value, deficient = self._value(accumulator, all_features)
            results.append(RungResult(n, value, time.perf_counter() - start, deficient))
            if on_rung is not None:
                on_rung(index, results[-1])
        return ProxyResult(self.config.metric, results, (seeds.start, seeds.stop), calls, sampling_s, feature_s,
                           self.extractor.name, self.extractor.weights_sha256, preview_images)

    def _value(self, accumulator: StatsAccumulator, all_features: list[np.ndarray]) -> tuple[float, bool]:
        if self.config.metric == "fid":
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # rank deficiency is returned as a flag, not printed every rung
                result = fid_result(accumulator.stats(), self.ref_stats)
            return result.fid, result.rank_deficient
        if self.config.metric == "fid-inf":
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = fid_infinity(np.concatenate(all_features), self.ref_stats)
            return result.fid_inf, result.rank_deficient
        if self._ref_features is None:
            if self.config.ref_path is not None:
                raise ProxyConfigError("KID needs reference features; an .npz of mu/sigma only supports --metric fid")
            self._ref_features = reference_features(self.extractor, self.config.dataset, self.config.split,
                                                     self.settings.cache)
        features = np.concatenate(all_features)
        size = min(self.config.kid_subset_size, features.shape[0], self._ref_features.shape[0])
        mean, _std = kid(features, self._ref_features, subsets=50, subset_size=size)
        return float(mean), False
