"""Errors of the search stage (each a :class:`skipsearch.errors.SkipsearchError`: one line for the user)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class StudyDefinitionError(SkipsearchError, ValueError):
    """A malformed study file or an impossible combination; the message names the file and field."""


class UnknownSpaceError(SkipsearchError, ValueError):
    """A search-space name that does not exist."""


class UnknownStrategyError(SkipsearchError, ValueError):
    """An Optuna sampler or pruner name that is not registered."""
