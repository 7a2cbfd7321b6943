"""The quick FID proxy of a schedule: generate on fixed seeds, featurise, FID/KID after each progressive rung.

Common random numbers (default): image k of every evaluation is drawn from seed ``seed_offset + k``, so two
schedules are compared on the same noise and the difference of their proxies has far lower variance than either
value; rankings, which are all a search needs, stabilise at a much smaller n. Rungs grow n (e.g. 250 -> 500 -> 1000);
features accumulate and are never recomputed, and after each rung a callback sees the value (an Optuna pruner hook).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from skipsearch.errors import ControlSignal
from skipsearch.models.adapter import SkipAdapter
from skipsearch.proxy.config import METRICS, ProxyConfig
from skipsearch.proxy.datasets import DatasetSpec, load_images
from skipsearch.proxy.errors import NonFiniteFeaturesError, ProxyConfigError
from skipsearch.proxy.extractors import FeatureExtractor, get_extractor
from skipsearch.proxy.metrics import MetricInputs
from skipsearch.proxy.stats import (
    FeatureStats,
    StatsAccumulator,
    cache_path,
    compute_reference_stats,
    load_dataset,
    load_npz,
    source_cache_key,
)
from skipsearch.sampling.generate import generate_many, recipe_of
from skipsearch.schedule import SkipSchedule
from skipsearch.settings import Settings

log = logging.getLogger(__name__)


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
    quality: dict[str, float] | None = None  # evaluate(quality=True): precision, recall (and isc) at the last rung

    @property
    def value(self) -> float:
        return self.rungs[-1].value

    @property
    def n(self) -> int:
        return self.rungs[-1].n


def reference_features(extractor: FeatureExtractor, dataset: str, split: str, cache: Path,
                       n: int = 5000, settings: Settings | None = None, *, adapter: SkipAdapter | None = None,
                       resize: str | None = None) -> np.ndarray:
    """Features of a fixed random subset of the data set (for KID), cached next to the reference statistics; the
    data set is loaded with ``settings`` (:func:`~skipsearch.proxy.stats.load_dataset`). ``dataset`` is any spec
    but ``stats:`` (:mod:`skipsearch.proxy.datasets`); ``adapter`` is the model (``self``, the images' shape)."""
    spec = DatasetSpec.parse(dataset)
    if spec.registered:
        path = cache_path(cache, spec.text, split, extractor.name, extractor.weights_sha256)
    else:
        if spec.kind == "stats":
            raise ProxyConfigError(f"data set {spec.text} holds mu/sigma only: KID and FID-infinity need reference "
                                   "features; use --metric fid")
        path = source_cache_key(spec, split, extractor, cache=cache, adapter=adapter, resize=resize)[0]
    path = path.with_suffix(f".feat{n}.npy")
    if path.is_file():
        cached = _cached_features(path, n, extractor.dim)
        if cached is not None:
            return cached
    if spec.registered:
        images = load_dataset(spec.text, split, settings)
    else:
        images = load_images(spec, split, settings=settings, adapter=adapter,
                             shape=None if adapter is None else tuple(adapter.pixel_shape), resize=resize)
    index = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    features = extractor(images[index]).double().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a reader never sees half a file
    with open(tmp, "wb") as handle:
        np.save(handle, features)
    os.replace(tmp, path)
    return features


def _cached_features(path: Path, n: int, dim: int) -> np.ndarray | None:
    """A cache entry of reference features, or None (a miss, with a warning) if it is not what this code writes: at
    most ``n`` rows of ``dim`` finite float64 features, no pickled objects."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # an object array, a truncated or foreign file
        reason = " ".join(str(exc).split())
    else:
        ok = (isinstance(features, np.ndarray) and features.dtype == np.float64 and features.ndim == 2
              and features.shape[1] == dim and 2 <= features.shape[0] <= n and bool(np.isfinite(features).all()))
        if ok:
            return features
        found = f"{getattr(features, 'dtype', type(features).__name__)} {getattr(features, 'shape', '')}"
        reason = f"expected at most {n} x {dim} finite float64 features, found {found}"
    log.warning("feature cache %s is unusable (%s); computing the features again", path, reason)
    return None


class FidProxy:
    """Scores schedules of one model with one extractor and one reference, by default with one sampler and NFE
    (a schedule that names its own sampler, options or NFE is sampled with those: :meth:`recipe`).

    ``settings`` (where the reference statistics, caches and data sets live) are the caller's: the stages pass
    theirs; a Python user who passes none gets the environment's, read here (``Settings.from_env()``).
    """

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
        self._quality = False  # evaluate(quality=True) in progress

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
        # Any data-set spec; images other than a registered data set must have the model's shape (or be resized).
        return compute_reference_stats(self.config.dataset, self.config.split, self.extractor,
                                       cache=self.settings.cache, settings=self.settings, adapter=self.adapter,
                                       resize=self.config.resize).stats

    def recipe(self, schedule: SkipSchedule | None) -> tuple[str, int, dict]:
        """(sampler, NFE, sampler options) that score ``schedule``: its own where it names them (a searched
        sampler, one NFE of a multi-NFE study), else this proxy's. Its time grid travels in the schedule."""
        return recipe_of(schedule, self.sampler, self.nfe, self.sampler_options)

    def _sampling_key(self, schedule: SkipSchedule | None) -> tuple:
        """Schedules with equal keys share one sampler pass (same sampler, NFE, options, churn and grid)."""
        sampler, nfe, options = self.recipe(schedule)
        return (sampler, nfe, tuple(sorted(options.items())), None if schedule is None else schedule.churn,
                None if schedule is None else schedule.grid)

    def _first_seed(self, evaluation: int) -> int:
        # Without CRN every evaluation gets fresh noise: a new block of seeds per call.
        return self.config.seed_offset + (0 if self.config.common_random_numbers else 1_000_003 * evaluation)

    def seeds_for(self, n: int, seed_offset: int | None = None) -> range:
        if seed_offset is None:
            seed_offset = self._first_seed(self._evaluations)
        return range(seed_offset, seed_offset + n)

    def first_seeds(self, count: int = 1) -> list[int]:
        """The first seed of each of the next ``count`` evaluations (all alike with common random numbers)."""
        return [self._first_seed(self._evaluations + j) for j in range(count)]

    def evaluate(self, schedule: SkipSchedule | None, *, rungs: Sequence[int] | None = None,
                 seed_offset: int | None = None, on_rung: Callable[[int, RungResult], None] | None = None,
                 preview: int = 16, progress: Callable[[int], None] | None = None,
                 quality: bool = False) -> ProxyResult:
        """Proxy value after each rung; ``on_rung(index, result)`` may raise (e.g. optuna.TrialPruned) to stop.
        ``quality``: also precision, recall and (Inception) IS of the last rung's features (validation)."""
        hook = None if on_rung is None else (lambda _j, index, rung: on_rung(index, rung))
        self._quality = quality
        try:
            result = self.evaluate_many([schedule], rungs=rungs, seed_offset=seed_offset, on_rung=hook,
                                        preview=preview, progress=progress)[0]
        finally:
            self._quality = False
        if isinstance(result, BaseException):
            raise result
        return result

    def evaluate_many(self, schedules: Sequence[SkipSchedule | None], *, rungs: Sequence[int] | None = None,
                      seed_offset: int | None = None, on_rung: Callable[[int, int, RungResult], None] | None = None,
                      preview: int = 16, progress: Callable[[int], None] | None = None,
                      keep: Callable[[int], bool] | None = None) -> list[ProxyResult | Exception]:
        """Several schedules scored together: each rung samples all the live ones in shared forwards.

        Entry j is schedule j's result, exactly what :meth:`evaluate` gives for it, or the exception that ended it:
        ``on_rung(j, index, result)`` may raise (optuna.TrialPruned) to stop schedule j alone, and a schedule whose
        images are non-finite or degenerate stops alone too; ``keep(j)`` False before a rung stops schedule j with
        :class:`EvaluationStopped`. Schedules that cannot share a sampler pass (another sampler, NFE, churn or grid)
        run in separate passes, rung by rung in step, so every rung is reported for all before the next one.
        Without common random numbers every evaluation has its own seeds: the schedules run one after another.
        """
        if not self.config.common_random_numbers or len(schedules) == 1:
            return [_finish(self._group_rungs([s], rungs, seed_offset, [j], on_rung, preview, progress, keep))[0]
                    for j, s in enumerate(schedules)]
        results: list[ProxyResult | Exception | None] = [None] * len(schedules)
        by_pass: dict[object, list[int]] = {}  # one sampler pass: one sampler, NFE, churn and grid
        for j, schedule in enumerate(schedules):
            by_pass.setdefault(self._sampling_key(schedule), []).append(j)
        running = [(members, self._group_rungs([schedules[j] for j in members], rungs, seed_offset, members,
                                               on_rung, preview, progress, keep))
                   for members in by_pass.values()]
        while running:  # lockstep: rung i of every pass before rung i + 1 of any
            for item in list(running):
                members, group = item
                try:
                    next(group)
                except StopIteration as done:
                    for j, result in zip(members, done.value):
                        results[j] = result
                    running.remove(item)
        return results  # type: ignore[return-value]

    def _group_rungs(self, schedules: Sequence[SkipSchedule | None], rungs: Sequence[int] | None,
                     seed_offset: int | None, numbers: Sequence[int],
                     on_rung: Callable[[int, int, RungResult], None] | None, preview: int,
                     progress: Callable[[int], None] | None, keep: Callable[[int], bool] | None,
                     ) -> Generator[None, None, list[ProxyResult | Exception]]:
        """Schedules of one sampling key on one seed block, one rung per step of the generator (its return value
        is the results); ``numbers`` are their indices in the caller's list (for ``on_rung`` and ``keep``)."""
        rungs = list(rungs or self.config.rungs)
        seeds = self.seeds_for(rungs[-1], seed_offset)
        self._evaluations += 1
        count = len(schedules)
        accumulators = [StatsAccumulator() for _ in schedules]
        all_features: list[list[np.ndarray]] = [[] for _ in schedules]
        quality = getattr(self, "_quality", False)
        keep_features = quality or METRICS.get(self.config.metric).needs_features
        all_logits: list[list[torch.Tensor]] = [[] for _ in schedules]
        results: list[list[RungResult]] = [[] for _ in schedules]
        calls, sampling_s, feature_s = [0] * count, [0.0] * count, [0.0] * count
        previews: list[torch.Tensor | None] = [None] * count
        ended: dict[int, Exception] = {}
        done = 0
        start = time.perf_counter()
        sampler, nfe, options = self.recipe(schedules[0])
        for index, n in enumerate(rungs):
            for k in range(count):
                if k not in ended and keep is not None and not keep(numbers[k]):
                    ended[k] = EvaluationStopped(f"stopped by the caller before rung {index} (n={n})")
            live = [k for k in range(count) if k not in ended]
            if not live:
                break
            generated = generate_many(self.adapter, [schedules[k] for k in live], sampler=sampler, nfe=nfe,
                                      seeds=seeds[done:n], batch_size=self.config.batch_size, progress=progress,
                                      **options)
            for k, images in zip(live, generated):
                if isinstance(images, Exception):
                    ended[k] = images
                    continue
                calls[k] += images.denoiser_calls
                sampling_s[k] += images.seconds
                if previews[k] is None and preview:
                    previews[k] = images.images[:preview]
                t0 = time.perf_counter()
                if quality and self.extractor.has_logits:
                    features, logits = self.extractor.features_and_logits(images.images)
                    all_logits[k].append(logits)
                else:
                    features = self.extractor(images.images)
                if not torch.isfinite(features).all():
                    ended[k] = NonFiniteFeaturesError(f"non-finite features at rung {index} (n={n})")
                    continue
                accumulators[k].update(features)
                if keep_features:
                    all_features[k].append(features.double().cpu().numpy())
                feature_s[k] += time.perf_counter() - t0
                value, deficient = self._value(accumulators[k], all_features[k])
                results[k].append(RungResult(n, value, time.perf_counter() - start, deficient))
            done = n
            for k in live:
                if k not in ended and on_rung is not None:
                    try:
                        on_rung(numbers[k], index, results[k][-1])
                    except Exception as exc:  # e.g. optuna.TrialPruned: this schedule stops, the others go on
                        ended[k] = exc
            yield
        return [ended[k] if k in ended else
                ProxyResult(self.config.metric, results[k], (seeds.start, seeds.stop), calls[k], sampling_s[k],
                            feature_s[k], self.extractor.name, self.extractor.weights_sha256, previews[k],
                            self._quality_of(all_features[k], all_logits[k]) if quality else None)
                for k in range(count)]

    def _quality_of(self, features: list[np.ndarray], logits: list[torch.Tensor]) -> dict[str, float]:
        """Precision, recall (against the reference features; none with a mu/sigma ``.npz``) and IS (logits)."""
        from skipsearch.errors import SkipsearchError
        from skipsearch.proxy.metrics import quality_metrics
        reference = None
        if self.config.ref_path is None:
            try:
                reference = self._reference_features()
            except (SkipsearchError, OSError) as exc:  # the data set is not here: the metric stands without them
                log.warning("no precision/recall: reference features of %s/%s unavailable (%s)",
                            self.config.dataset, self.config.split, exc)
        return quality_metrics(np.concatenate(features), reference, torch.cat(logits) if logits else None)

    def _value(self, accumulator: StatsAccumulator, all_features: list[np.ndarray]) -> tuple[float, bool]:
        """The configured metric at this rung (its spec in ``METRICS`` says how)."""
        spec = METRICS.get(self.config.metric)
        features = np.concatenate(all_features) if spec.needs_features else None
        return spec.function()(MetricInputs(accumulator, features, self.ref_stats, self._reference_features,
                                            self.config))

    def _reference_features(self) -> np.ndarray:
        if self._ref_features is None:
            if self.config.ref_path is not None:
                raise ProxyConfigError(f"--metric {self.config.metric} needs reference features; an .npz of "
                                       "mu/sigma only supports --metric fid")
            self._ref_features = reference_features(self.extractor, self.config.dataset, self.config.split,
                                                     self.settings.cache, settings=self.settings,
                                                     adapter=self.adapter, resize=self.config.resize)
        return self._ref_features


def _finish(group: Generator[None, None, list]) -> list:
    """Runs a :meth:`FidProxy._group_rungs` generator to its end and returns its results."""
    while True:
        try:
            next(group)
        except StopIteration as done:
            return done.value


class EvaluationStopped(ControlSignal):
    """A schedule the caller stopped (``keep``) before its next rung, e.g. another NFE of a pruned trial."""
