"""Quick FID proxy: feature extractors, reference statistics, FID/KID/FID-infinity and a disturbance check."""

from __future__ import annotations

from skipsearch.proxy.disturb import (
    DISTURBANCES,
    STRENGTHS,
    DisturbanceRow,
    disturb,
    disturbance_table,
    format_table,
    is_monotone,
    proxy_check,
)
from skipsearch.proxy.extractors import (
    EXTRACTORS,
    ExtractorWeightsError,
    FeatureExtractor,
    as_uint8,
    get_extractor,
    inception_hub_path,
    register_extractor,
)
from skipsearch.proxy.metrics import (
    FIDInfinityResult,
    FIDResult,
    RankDeficientWarning,
    fid,
    fid_features,
    fid_infinity,
    fid_result,
    kid,
)
from skipsearch.proxy.stats import (
    FeatureStats,
    NonFiniteError,
    ReferenceStatsError,
    RefStats,
    StatsAccumulator,
    compute_reference_stats,
    load_npz,
    save_npz,
)

__all__ = [
    "DISTURBANCES", "EXTRACTORS", "STRENGTHS", "DisturbanceRow", "ExtractorWeightsError", "FIDInfinityResult",
    "FIDResult", "FeatureExtractor", "FeatureStats", "NonFiniteError", "RankDeficientWarning", "RefStats",
    "ReferenceStatsError", "StatsAccumulator", "as_uint8", "compute_reference_stats", "disturb", "disturbance_table",
    "fid", "fid_features", "fid_infinity", "fid_result", "format_table", "get_extractor", "inception_hub_path",
    "is_monotone", "kid", "load_npz", "proxy_check", "register_extractor", "save_npz",
]
