"""Feature statistics (mean, covariance) for FID: streaming accumulation, EDM ``.npz`` files, cached references."""

from __future__ import annotations

import inspect
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np
import torch

from skipsearch.proxy.errors import NonFiniteFeaturesError, ReferenceStatsError
from skipsearch.registry import Registry

if TYPE_CHECKING:
    from skipsearch.proxy.extractors import FeatureExtractor
    from skipsearch.settings import Settings

log = logging.getLogger("skipsearch.proxy")

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_REFSTATS = {("mnist", "train", "mnist-features"): ASSETS / "mnist_train_refstats.npz"}


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean ``mu`` [d] and unbiased (n-1) covariance ``sigma`` [d,d], both float64, of ``n`` feature vectors.

    ``n`` is None for statistics read from files that do not record it (EDM's reference ``.npz``). ``meta`` holds
    provenance (extractor, weights sha256, dataset, split) and travels with :func:`save_npz`.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mu", np.asarray(self.mu, dtype=np.float64))
        object.__setattr__(self, "sigma", np.asarray(self.sigma, dtype=np.float64))
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.shape[0], self.mu.shape[0]):
            raise ReferenceStatsError(f"inconsistent statistics: mu {self.mu.shape}, sigma {self.sigma.shape}")
        if not (np.isfinite(self.mu).all() and np.isfinite(self.sigma).all()):
            raise NonFiniteFeaturesError("feature statistics contain NaN or inf")

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray, meta: dict[str, str] | None = None) -> FeatureStats:
        acc = StatsAccumulator()
        acc.update(features)
        return acc.stats(meta)


def as_float64(features: torch.Tensor | np.ndarray, what: str = "features") -> np.ndarray:
    """A 2-D float64 numpy copy of ``features``; NaN/inf raise :class:`NonFiniteFeaturesError`."""
    array = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    array = array.astype(np.float64)
    if array.ndim != 2:
        raise ValueError(f"{what} must be 2-D [N, dim], got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise NonFiniteFeaturesError(f"{bad} of {array.shape[0]} {what} vectors contain NaN or inf")
    return array


class StatsAccumulator:
    """Streaming float64 sums for mean and covariance; batches may come from any number of extractor calls."""

    def __init__(self) -> None:
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        x = as_float64(features)
        if x.shape[0] == 0:
            return
        if self._shift is None:
            # Summing around the first batch's mean avoids cancellation in sum(x x^T) - n mu mu^T.
            self._shift = x.mean(axis=0)
            self._sum = np.zeros(x.shape[1])
            self._outer = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature dim changed from {self._shift.shape[0]} to {x.shape[1]}")
        centred = x - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.n += x.shape[0]

    def stats(self, meta: dict[str, str] | None = None) -> FeatureStats:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mean_c = self._sum / self.n
        sigma = (self._outer - self.n * np.outer(mean_c, mean_c)) / (self.n - 1)
        sigma = (sigma + sigma.T) / 2  # exact symmetry; the sums are symmetric only up to rounding
        return FeatureStats(self._shift + mean_c, sigma, self.n, dict(meta or {}))


def save_npz(path: str | os.PathLike, stats: FeatureStats) -> Path:
    """Write EDM-compatible reference statistics (``mu``, ``sigma``) plus ``n`` and ``meta`` (JSON); atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, mu=stats.mu, sigma=stats.sigma, n=np.int64(-1 if stats.n is None else stats.n),
                 meta=np.array(json.dumps(stats.meta, sort_keys=True)))
    os.replace(tmp, path)
    return path


def load_npz(path: str | os.PathLike) -> FeatureStats:
    """Read reference statistics with keys ``mu`` [d] and ``sigma`` [d,d] (EDM's format; ``n``, ``meta`` optional)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"mu", "sigma"} - set(data.files)
            if missing:
                raise ReferenceStatsError(f"{path}: missing key(s) {sorted(missing)}; expected 'mu' and 'sigma'")
            mu, sigma = data["mu"], data["sigma"]
            n = int(data["n"]) if "n" in data.files else -1
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ReferenceStatsError):
            raise
        raise ReferenceStatsError(f"{path}: not a readable .npz of reference statistics ({exc})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ReferenceStatsError(f"{path}: mu must be [d] and sigma [d,d], got {mu.shape} and {sigma.shape}")
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise ReferenceStatsError(f"{path}: mu and sigma must be floating point, got {mu.dtype} and {sigma.dtype}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ReferenceStatsError(f"{path}: mu or sigma contains NaN or inf")
    return FeatureStats(mu, sigma, None if n < 0 else n, meta)


# ---------------------------------------------------------------------------------------------------------------
# Reference statistics of data sets, cached per (dataset, split, extractor, weights sha256)
# ---------------------------------------------------------------------------------------------------------------

def _mnist_images(split: str, *, settings: Settings | None = None) -> torch.Tensor:
    from skipsearch.data import load_mnist
    return load_mnist(split, settings=settings)[0]


# Data sets a reference can be computed from: name -> split -> uint8 images [N, C, H, W]. A loader that also takes
# a ``settings`` keyword is given the caller's Settings (where its files live): see load_dataset.
DATASETS: Registry[Callable[..., torch.Tensor]] = Registry("dataset", ReferenceStatsError)
DATASETS.register("mnist", _mnist_images)


def load_dataset(name: str, split: str, settings: Settings | None = None) -> torch.Tensor:
    """uint8 images [N, C, H, W] of a registered data set; ``settings`` go to a loader with a ``settings`` keyword
    (a loader of ``split`` alone is called as it is)."""
    loader = DATASETS.get(name)
    try:
        takes_settings = "settings" in inspect.signature(loader).parameters
    except (TypeError, ValueError):  # a callable without a signature (a builtin)
        takes_settings = False
    return loader(split, settings=settings) if takes_settings else loader(split)


@dataclass(frozen=True)
class RefStats:
    """Reference statistics and where they came from: ``'shipped'`` package data, cache ``'hit'`` or ``'miss'``."""

    stats: FeatureStats
    status: Literal["shipped", "hit", "miss"]
    path: Path


def cache_path(cache: Path, dataset: str, split: str, extractor_name: str, weights_sha256: str) -> Path:
    """``<cache>/refstats/<dataset>-<split>-<extractor>-<sha16>.npz`` (``cache`` is ``Settings.cache``)."""
    return Path(cache) / "refstats" / f"{dataset}-{split}-{extractor_name}-{weights_sha256[:16]}.npz"


def features_of_images(extractor: FeatureExtractor, images: torch.Tensor, chunk: int = 5000) -> StatsAccumulator:
    """Stream ``images`` through ``extractor`` in chunks into a :class:`StatsAccumulator`."""
    acc = StatsAccumulator()
    for start in range(0, images.shape[0], chunk):
        acc.update(extractor(images[start:start + chunk]))
    return acc


def compute_reference_stats(dataset: str, split: str, extractor: FeatureExtractor, *, cache: Path | None = None,
                            refresh: bool = False, settings: Settings | None = None) -> RefStats:
    """Statistics of a whole data set split under ``extractor``.

    The shipped file is used when it matches (same extractor weights); otherwise the cache (``cache``, by default
    ``settings.cache``) is consulted and, on a miss, the data set is loaded (with ``settings``), featurised and the
    result written to the cache. The stages pass their ``settings``; without them (a script's call) the
    environment is read now (``Settings.from_env()``).
    """
    DATASETS.get(dataset)  # an unknown data set fails first
    if settings is None:
        from skipsearch.settings import Settings
        settings = Settings.from_env()
    if cache is None:
        cache = settings.cache
    if split not in ("train", "test"):
        raise ReferenceStatsError(f"unknown split {split!r} of {dataset}; use train or test")
    meta = {"dataset": dataset, "split": split, "extractor": extractor.name,
            "weights_sha256": extractor.weights_sha256}
    shipped = SHIPPED_REFSTATS.get((dataset, split, extractor.name))
    if not refresh and shipped is not None and shipped.is_file():
        stats = load_npz(shipped)
        if stats.meta.get("weights_sha256") == extractor.weights_sha256:
            log.info("reference stats %s/%s/%s: shipped %s", dataset, split, extractor.name, shipped)
            return RefStats(stats, "shipped", shipped)
    path = cache_path(cache, dataset, split, extractor.name, extractor.weights_sha256)
    if not refresh and path.is_file():
        stats = load_npz(path)
        if stats.meta.get("weights_sha256") == extractor.weights_sha256:
            log.info("reference stats %s/%s/%s: cache hit %s", dataset, split, extractor.name, path)
            return RefStats(stats, "hit", path)
    log.info("reference stats %s/%s/%s: cache miss, computing into %s", dataset, split, extractor.name, path)
    stats = features_of_images(extractor, load_dataset(dataset, split, settings)).stats(meta)
    save_npz(path, stats)
    return RefStats(stats, "miss", path)
