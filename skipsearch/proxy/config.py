"""How a schedule is scored (``ProxyConfig``): torch-free, so study files load without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from skipsearch.proxy.errors import ProxyConfigError
from skipsearch.registry import Registry

# name -> what it is; the maths live in skipsearch.proxy.metrics.
METRICS: Registry[str] = Registry("proxy metric", ProxyConfigError)
METRICS.register("fid", "Fréchet distance of the features (torch-fidelity's formula)")
METRICS.register("kid", "kernel inception distance (polynomial-kernel MMD, unbiased)")
METRICS.register("fid-inf", "FID extrapolated to n -> infinity (Chong & Forsyth)")


@dataclass(frozen=True)
class ProxyConfig:
    """How a schedule is scored. ``ref_path`` (an EDM-style ``.npz`` with mu/sigma) overrides dataset/split."""

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

    def __post_init__(self) -> None:
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
