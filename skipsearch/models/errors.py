"""Errors of the model stage."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class ModelError(SkipsearchError, ValueError):
    """An unknown model, an unusable model spec or checkpoint; the message says what to do."""


class UnknownPrecondError(SkipsearchError, ValueError):
    """A preconditioner name that is not one of ours."""
