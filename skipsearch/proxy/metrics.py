"""FID, KID and FID-infinity on extracted features; the mathematics is torch-fidelity's."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from skipsearch.proxy.errors import NonFiniteFeaturesError
from skipsearch.proxy.stats import FeatureStats, StatsAccumulator, as_float64

if TYPE_CHECKING:
    from skipsearch.proxy.config import ProxyConfig


class RankDeficientWarning(UserWarning):
    """FID from fewer samples than feature dimensions: the covariance is singular and the value strongly biased."""


@dataclass(frozen=True)
class FIDResult:
    """An FID value with the sample sizes behind it; ``rank_deficient`` when a side has n <= dim."""

    fid: float
    n: int | None
    n_ref: int | None
    dim: int
    rank_deficient: bool


@dataclass(frozen=True)
class FIDInfinityResult:
    """Chong & Forsyth's FID-infinity: intercept of the linear fit of FID(N) against 1/N."""

    fid_inf: float
    slope: float
    ns: tuple[int, ...]
    fids: tuple[float, ...]
    rank_deficient: bool


def _rank_deficient(stats: FeatureStats) -> bool:
    # n samples give a covariance of rank at most n-1, so n <= dim is singular.
    return stats.n is not None and stats.n <= stats.dim


def fid_result(stats_a: FeatureStats, stats_b: FeatureStats) -> FIDResult:
    """FID between two sets of statistics, flagged when either covariance is rank deficient."""
    if stats_a.dim != stats_b.dim:
        raise ValueError(f"feature dims differ: {stats_a.dim} vs {stats_b.dim}")
    value = fid_statistics_to_metric({"mu": stats_a.mu, "sigma": stats_a.sigma},
                                     {"mu": stats_b.mu, "sigma": stats_b.sigma}, verbose=False)[KEY_METRIC_FID]
    if not np.isfinite(value):
        raise NonFiniteFeaturesError(f"FID evaluated to {value}")
    deficient = _rank_deficient(stats_a) or _rank_deficient(stats_b)
    if deficient:
        warnings.warn(f"FID with n={stats_a.n}/{stats_b.n} samples for {stats_a.dim}-d features: rank-deficient "
                      "covariance, values are biased upwards", RankDeficientWarning, stacklevel=3)
    return FIDResult(float(value), stats_a.n, stats_b.n, stats_a.dim, deficient)


def fid(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
    """Frechet distance ``||mu_a-mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)`` via torch-fidelity."""
    return fid_result(stats_a, stats_b).fid


def fid_features(features: torch.Tensor | np.ndarray, ref_stats: FeatureStats) -> FIDResult:
    """FID of a feature set ``[N, dim]`` against reference statistics."""
    return fid_result(FeatureStats.from_features(features), ref_stats)


def kid(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray, subsets: int = 100,
        subset_size: int = 1000, degree: int = 3, gamma: float | None = None, coef0: float = 1,
        seed: int = 2020) -> tuple[float, float]:
    """Unbiased polynomial-kernel MMD^2 (KID) averaged over random subsets: (mean, std), via torch-fidelity.

    ``gamma`` defaults to 1/dim. ``subset_size`` larger than either set raises ValueError.
    """
    a = torch.from_numpy(as_float64(features_a, "features_a"))
    b = torch.from_numpy(as_float64(features_b, "features_b"))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    if subset_size > min(len(a), len(b)):
        raise ValueError(f"KID subset_size {subset_size} exceeds the sample sizes ({len(a)}, {len(b)})")
    out = kid_features_to_metric(a, b, kid_subsets=subsets, kid_subset_size=subset_size, kid_kernel="poly",
                                 kid_kernel_poly_degree=degree, kid_kernel_poly_gamma=gamma,
                                 kid_kernel_poly_coef0=coef0, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def default_ns(n: int, dim: int, points: int = 10) -> list[int]:
    """Subset sizes for FID-infinity: ``points`` sizes up to n, from n/5 but above dim when n allows it."""
    lo = max(2, n // 5, min(dim + 1, n // 2))
    return sorted({int(round(v)) for v in np.linspace(lo, n, points)})


def fid_infinity(features: torch.Tensor | np.ndarray, ref_stats: FeatureStats, ns: Sequence[int] | None = None,
                 reps: int = 1, seed: int = 0) -> FIDInfinityResult:
    """FID extrapolated to infinitely many samples (Chong & Forsyth 2020).

    For each N in ``ns`` (``reps`` random subsets of the features, drawn without replacement), FID against
    ``ref_stats``; a least-squares line FID = a + b/N gives FID-infinity = a, free of FID's 1/N bias.
    """
    x = as_float64(features)
    n = x.shape[0]
    ns = list(default_ns(n, x.shape[1]) if ns is None else ns)
    if len(set(ns)) < 2 or min(ns) < 2 or max(ns) > n:
        raise ValueError(f"fid_infinity needs >= 2 distinct subset sizes in [2, {n}], got {ns}")
    rng = np.random.default_rng(seed)
    sizes, values = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)  # small subsets are part of the method; flagged below
        for size in ns:
            for _ in range(reps):
                acc = StatsAccumulator()
                acc.update(x[rng.choice(n, size, replace=False)])
                sizes.append(size)
                values.append(fid_result(acc.stats(), ref_stats).fid)
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, dtype=np.float64), np.asarray(values), 1)
    deficient = min(ns) <= x.shape[1] or _rank_deficient(ref_stats)
    return FIDInfinityResult(float(intercept), float(slope), tuple(sizes), tuple(values), deficient)


# --------------------------------------------------------------------------------------------------------------------
# The registered metrics (skipsearch.proxy.config.METRICS): one signature, so the proxy dispatches on the spec.


@dataclass
class MetricInputs:
    """What a metric may read at a rung: the running moments, the features (metrics with ``needs_features``),
    the reference statistics, and the reference features (loaded on first call)."""

    stats: StatsAccumulator
    features: np.ndarray | None
    reference: FeatureStats
    reference_features: Callable[[], np.ndarray]
    config: ProxyConfig


def fid_metric(inputs: MetricInputs) -> tuple[float, bool]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank deficiency is returned as a flag, not printed every rung
        result = fid_result(inputs.stats.stats(), inputs.reference)
    return result.fid, result.rank_deficient


def fid_infinity_metric(inputs: MetricInputs) -> tuple[float, bool]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fid_infinity(inputs.features, inputs.reference)
    return result.fid_inf, result.rank_deficient


def kid_metric(inputs: MetricInputs) -> tuple[float, bool]:
    reference = inputs.reference_features()
    size = min(inputs.config.kid_subset_size, inputs.features.shape[0], reference.shape[0])
    mean, _std = kid(inputs.features, reference, subsets=50, subset_size=size)
    return float(mean), False


# --------------------------------------------------------------------------------------------------------------------
# Validation's extra numbers on the features it extracted anyway: torch-fidelity's precision/recall and IS.


def quality_metrics(features: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor | None,
                    logits: torch.Tensor | None = None, neighborhood: int = 3, seed: int = 0) -> dict[str, float]:
    """``precision`` and ``recall`` (Kynkäänniemi et al., torch-fidelity's ``metric_prc``, k = ``neighborhood``)
    of generated ``features`` against ``reference`` features (drawn to the same count, fixed ``seed``), and the
    Inception Score (``isc``, torch-fidelity's ``metric_isc``) where ``logits`` are given. Missing inputs give
    missing keys."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    out: dict[str, float] = {}
    generated = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if reference is not None and generated.shape[0] > neighborhood:
        ref = np.asarray(reference, dtype=np.float32)
        if ref.shape[0] > generated.shape[0]:
            ref = ref[np.random.default_rng(seed).choice(ref.shape[0], generated.shape[0], replace=False)]
        if ref.shape[0] > neighborhood and ref.shape[1] == generated.shape[1]:
            precision, recall = calculate_precision_recall_full(generated, torch.from_numpy(ref), neighborhood)
            out["precision"], out["recall"] = float(precision), float(recall)
    if logits is not None and logits.shape[0] >= 10:
        out["isc"] = float(isc_features_to_metric(logits, splits=10)[KEY_METRIC_ISC_MEAN])
    return out
