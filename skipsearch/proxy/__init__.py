"""Stage 4, the proxy metric: feature extractors, reference statistics, FID/KID/FID-infinity, a disturbance check.

Names are exported lazily, so ``skipsearch.proxy.config`` (read by study files) loads without torch.
"""

from __future__ import annotations

from skipsearch.lazy import lazy_exports

_EXPORTS = {
    "disturb": ("DISTURBANCES", "STRENGTHS", "DisturbanceRow", "disturb", "disturbance_table", "format_table",
                "is_monotone", "proxy_check"),
    "extractors": ("EXTRACTORS", "FeatureExtractor", "as_uint8", "get_extractor", "inception_hub_path",
                   "register_extractor"),
    "errors": ("ExtractorWeightsError", "NonFiniteFeaturesError", "ProxyConfigError", "ReferenceStatsError"),
    "metrics": ("FIDInfinityResult", "FIDResult", "RankDeficientWarning", "fid", "fid_features", "fid_infinity",
                "fid_result", "kid"),
    "stats": ("DATASETS", "FeatureStats", "RefStats", "StatsAccumulator", "compute_reference_stats", "load_npz",
              "save_npz"),
    "config": ("METRICS", "ProxyConfig", "default_proxy_config"),
    "fid_proxy": ("FidProxy", "ProxyResult", "RungResult"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


__getattr__ = lazy_exports(__name__, _MODULE_OF)
