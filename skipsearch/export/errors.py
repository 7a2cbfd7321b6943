"""Errors of the export stage (each a :class:`skipsearch.errors.SkipsearchError`: one line for the user)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class FigureError(SkipsearchError, ValueError):
    """Inputs a figure cannot show (the message names the argument)."""


class ExportError(SkipsearchError, LookupError):
    """No stored best matches the request; the message lists what exists."""


class AllRejectedError(ExportError):
    """Every validated schedule of the key was rejected by a reviewer."""


class ScheduleWeightsError(SkipsearchError, ValueError):
    """The weights a schedule names are not where they may be loaded from, are missing, or have another sha256."""
