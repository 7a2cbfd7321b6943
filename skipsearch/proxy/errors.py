"""Errors of the proxy stage (each a :class:`skipsearch.errors.SkipsearchError`)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class NonFiniteFeaturesError(SkipsearchError, ValueError):
    """Features or statistics contain NaN or inf (a diverged sampler, a broken extractor)."""


class ReferenceStatsError(SkipsearchError, ValueError):
    """Reference statistics cannot be read or do not fit (shape, dtype, keys, unknown data set)."""


class ExtractorWeightsError(SkipsearchError, RuntimeError):
    """Feature-extractor weights are missing, unreadable or do not match their card."""


class ProxyConfigError(SkipsearchError, ValueError):
    """An impossible proxy setting (metric, rungs, reference, extractor)."""
