"""How a schedule is scored (``ProxyConfig``): torch-free, so study files load without importing torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from skipsearch.proxy.errors import ProxyConfigError
from skipsearch.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    """A proxy metric: what it is, which way is better, and its maths (``module:function`` taking
    :class:`skipsearch.proxy.metrics.MetricInputs` and giving ``(value, rank_deficient)``), imported on first use
    so that study files load without torch."""

    description: str
    compute: str
    direction: Literal["minimize", "maximize"] = "minimize"
    needs_features: bool = False  # the features themselves, not only their running moments

    def function(self) -> Callable[[Any], tuple[float, bool]]:
        module, name = self.compute.split(":")
        return getattr(importlib.import_module(module), name)

    def better(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b``."""
        return a < b if self.direction == "minimize" else a > b

    def best(self, values: Iterable[float]) -> float:
        return (min if self.direction == "minimize" else max)(values)

    def sort_key(self, value: float) -> float:
        """Sorts best first."""
        return value if self.direction == "minimize" else -value


METRICS: Registry[MetricSpec] = Registry("proxy metric", ProxyConfigError)
METRICS.register("fid", MetricSpec("Fréchet distance of the features (torch-fidelity's formula)",
                                   "skipsearch.proxy.metrics:fid_metric"))
METRICS.register("kid", MetricSpec("kernel inception distance (polynomial-kernel MMD, unbiased)",
                                   "skipsearch.proxy.metrics:kid_metric", needs_features=True))
METRICS.register("fid-inf", MetricSpec("FID extrapolated to n -> infinity (Chong & Forsyth)",
                                       "skipsearch.proxy.metrics:fid_infinity_metric", needs_features=True))


def metric_spec(name: str | None) -> MetricSpec:
    """The spec of a metric name; rows stored before a metric was known read as FID (lower is better)."""
    return METRICS.get(name) if name in METRICS else METRICS.get("fid")


@dataclass(frozen=True)
class ProxyConfig:
    """How a schedule is scored. ``dataset`` is a data-set spec (:mod:`skipsearch.proxy.datasets`: ``mnist``,
    ``folder:DIR``, ``zip:FILE``, ``npz:FILE``, ``torchvision:NAME:ROOT``, ``stats:FILE.npz``, ``self``).
    ``ref_path`` (an EDM-style ``.npz`` with mu/sigma, the same as ``stats:``) overrides dataset/split."""

    extractor: str = "mnist-features"
    dataset: str = "mnist"
    split: str = "train"
    ref_path: str | None = None
    rungs: tuple[int, ...] = (250, 500, 1000)
    metric: str = "fid"
    seed_offset: int = 0
    common_random_numbers: bool = True
    weights_path: str | None = None
    batch_size: int | None = None
    kid_subset_size: int = 250
    # Reference images of another size or channel count: None refuses them (one line), "center-crop" crops to the
    # model's aspect, resizes and converts gray <-> RGB (skipsearch.proxy.datasets.fit_shape).
    resize: str | None = None

    def __post_init__(self) -> None:
        from skipsearch.proxy.datasets import RESIZE_MODES, DatasetSpec
        DatasetSpec.parse(self.dataset)  # a bad spec fails where the config is made (flags, study file, Python)
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise ProxyConfigError(f"proxy resize {self.resize!r}: use {' or '.join(RESIZE_MODES)} or leave it out")
        if self.metric not in METRICS:
            raise ProxyConfigError(f"unknown proxy metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if not self.rungs or any(n <= 1 for n in self.rungs) or list(self.rungs) != sorted(set(self.rungs)):
            raise ProxyConfigError(f"proxy rungs must be increasing image counts > 1, got {list(self.rungs)}")


def default_proxy_config(dataset: str | None, *, fid_ref: str | None = None, **overrides) -> ProxyConfig:
    """MNIST models are scored with mnist-features on MNIST; other data sets with Inception (``fid_ref``: an
    EDM-style reference ``.npz``, ``Settings.fid_ref``)."""
    if dataset in (None, "mnist"):
        return ProxyConfig(**overrides)
    defaults = {"extractor": "inception-v3-compat", "dataset": dataset}
    if fid_ref:
        defaults["ref_path"] = str(fid_ref)
    return ProxyConfig(**{**defaults, **overrides})


# Our own extractors keep the metric's name (FID is FID under Inception, and this project's mnist-features proxy
# has always been reported as fid); torch-fidelity's others name the family: fd-dinov2, fd-clip, kd-vgg16 ...
_PLAIN_EXTRACTORS = ("inception-v3-compat", "mnist-features")
_DISTANCE_PREFIX = {"fid": "fd", "kid": "kd", "fid-inf": "fd-inf"}


def metric_display_name(metric: str | None, extractor: str | None) -> str:
    """How a run's metric is reported: ``fid`` under Inception, a Fréchet distance ``fd-<family>`` (``fd-dinov2``,
    ``fd-clip``) under another torch-fidelity extractor. The stored ``metric`` field keeps its value (``fid``)."""
    metric = metric or "fid"
    if not extractor or extractor in _PLAIN_EXTRACTORS or metric not in _DISTANCE_PREFIX:
        return metric
    family = extractor.split("-")[0]
    return f"{_DISTANCE_PREFIX[metric]}-{family}"


QUALITY_FIELDS = (("precision", "precision"), ("recall", "recall"), ("isc", "IS"))  # Validated field, label
