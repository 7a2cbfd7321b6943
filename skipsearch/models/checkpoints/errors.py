"""Checkpoint errors (one root for the CLI: :class:`skipsearch.errors.SkipsearchError`)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class CheckpointError(SkipsearchError, RuntimeError):
    """A checkpoint cannot be found, downloaded, read or matched to our networks."""


class UntrustedPickleError(CheckpointError):
    """Loading a pickle was requested without declaring its source trusted."""
