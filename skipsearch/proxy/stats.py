"""Feature statistics (mean, covariance) for FID: streaming accumulation, EDM ``.npz`` files, cached references."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from skipsearch.proxy.datasets import DATASETS, load_dataset
from skipsearch.proxy.errors import NonFiniteFeaturesError, ReferenceStatsError

if TYPE_CHECKING:
    from skipsearch.models.adapter import SkipAdapter
    from skipsearch.proxy.datasets import DatasetSpec
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

@dataclass(frozen=True)
class RefStats:
    """Reference statistics and where they came from: ``'shipped'`` package data, cache ``'hit'`` or ``'miss'``."""

    stats: FeatureStats
    status: Literal["shipped", "hit", "miss", "file"]  # 'file': a ``stats:`` spec, read as it is
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
                            refresh: bool = False, settings: Settings | None = None,
                            adapter: SkipAdapter | None = None, shape: tuple[int, int, int] | None = None,
                            resize: str | None = None) -> RefStats:
    """Statistics of a whole data set split under ``extractor``; ``dataset`` is any data-set spec
    (:mod:`skipsearch.proxy.datasets`: a registered name, ``folder:``, ``zip:``, ``npz:``, ``torchvision:``,
    ``stats:``, ``self``).

    The shipped file is used when it matches (same extractor weights); otherwise the cache (``cache``, by default
    ``settings.cache``) is consulted and, on a miss, the data set is loaded (with ``settings``), featurised and the
    result written to the cache. The stages pass their ``settings``; without them (a script's call) the
    environment is read now (``Settings.from_env()``). ``adapter`` (the model: ``self`` samples it, and its image
    shape is the default ``shape``), ``shape`` and ``resize`` apply to the spec forms other than registered names.
    """
    from skipsearch.proxy.datasets import DatasetSpec
    spec = DatasetSpec.parse(dataset)
    if spec.registered:
        DATASETS.get(spec.text)  # an unknown data set fails first
    if settings is None:
        from skipsearch.settings import Settings
        settings = Settings.from_env()
    if cache is None:
        cache = settings.cache
    if not spec.registered:
        return _source_reference_stats(spec, split, extractor, cache=cache, refresh=refresh, settings=settings,
                                       adapter=adapter, shape=shape, resize=resize)
    dataset = spec.text
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


def source_cache_key(spec: DatasetSpec, split: str, extractor: FeatureExtractor, *, cache: Path,
                     adapter: SkipAdapter | None = None, shape: tuple[int, int, int] | None = None,
                     resize: str | None = None) -> tuple[Path, str]:
    """(cache file, source key) of a non-registered spec: the key hashes the source's content fingerprint
    (:meth:`DatasetSpec.fingerprint`), the split (torchvision), the target shape and the resize mode; the file name
    adds the extractor and its weights, so each of them is a key part."""
    import hashlib
    if shape is None and adapter is not None:
        shape = tuple(adapter.pixel_shape)
    fingerprint = spec.fingerprint(split, adapter)
    split_part = split if spec.kind == "torchvision" else ""
    shape_part = "x".join(map(str, shape)) if shape is not None else "any"
    key = hashlib.sha256(f"{spec.kind}:{fingerprint}:{split_part}:{shape_part}:{resize}".encode()).hexdigest()
    name = f"{spec.kind}-{key[:16]}-{extractor.name}-{extractor.weights_sha256[:16]}.npz"
    return Path(cache) / "refstats" / name, key


def _source_reference_stats(spec: DatasetSpec, split: str, extractor: FeatureExtractor, *, cache: Path,
                            refresh: bool, settings: Settings, adapter: SkipAdapter | None,
                            shape: tuple[int, int, int] | None, resize: str | None) -> RefStats:
    """:func:`compute_reference_stats` of a ``folder:``/``zip:``/``npz:``/``torchvision:``/``stats:``/``self``
    spec, cached by content (:func:`source_cache_key`): a changed source is a new key, never a stale hit."""
    from skipsearch.proxy.datasets import load_images
    from skipsearch.proxy.errors import ProxyConfigError
    if spec.kind == "stats":
        stats = load_stats_spec(spec, extractor)
        return RefStats(stats, "file", spec.path)
    if shape is None and adapter is not None:
        shape = tuple(adapter.pixel_shape)
    if resize is not None and shape is None:
        raise ProxyConfigError(f"data set {spec.text}: resize needs the model's shape (pass --model)")
    path, key = source_cache_key(spec, split, extractor, cache=cache, adapter=adapter, shape=shape, resize=resize)
    if not refresh and path.is_file():
        try:
            stats = load_npz(path)
        except ReferenceStatsError as exc:
            log.warning("reference stats cache %s is unusable (%s); computing again", path, exc)
        else:
            if (stats.meta.get("source_sha256") == key
                    and stats.meta.get("weights_sha256") == extractor.weights_sha256):
                log.info("reference stats %s/%s: cache hit %s", spec.text, extractor.name, path)
                return RefStats(stats, "hit", path)
    log.info("reference stats %s/%s: cache miss, computing into %s", spec.text, extractor.name, path)
    images = load_images(spec, split, settings=settings, adapter=adapter, shape=shape, resize=resize)
    meta = {"dataset": spec.text, "split": split, "extractor": extractor.name,
            "weights_sha256": extractor.weights_sha256, "source_sha256": key,
            "shape": "x".join(map(str, images.shape[1:]))}
    if images.shape[0] < 2:
        raise ReferenceStatsError(f"data set {spec.text}: {images.shape[0]} image; a covariance needs at least 2")
    stats = features_of_images(extractor, images).stats(meta)
    save_npz(path, stats)
    return RefStats(stats, "miss", path)


def load_stats_spec(spec: DatasetSpec | str, extractor: FeatureExtractor) -> FeatureStats:
    """The (mu, sigma) of a ``stats:FILE.npz`` spec, checked against ``extractor``: the feature dim must be its
    dim, and an extractor named in the file's meta must be this one."""
    from skipsearch.proxy.datasets import DatasetSpec, DatasetSpecError
    from skipsearch.proxy.errors import ProxyConfigError
    spec = DatasetSpec.parse(spec)
    if spec.path is None or not spec.path.is_file():
        raise DatasetSpecError(f"data set {spec.text}: statistics file {spec.path} does not exist")
    stats = load_npz(spec.path)
    if stats.dim != extractor.dim:
        raise ProxyConfigError(f"data set {spec.text}: {stats.dim}-d statistics, but extractor {extractor.name} "
                               f"gives {extractor.dim}-d features (EDM's references are 2048-d: "
                               "--extractor inception-v3-compat)")
    named = stats.meta.get("extractor")
    if named and named != extractor.name:
        raise ProxyConfigError(f"data set {spec.text}: statistics of extractor {named}, not {extractor.name}")
    return stats
