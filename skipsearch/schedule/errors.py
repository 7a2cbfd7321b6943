"""Errors of the schedule stage (each a :class:`skipsearch.errors.SkipsearchError`: one line for the user)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class ScheduleError(SkipsearchError, ValueError):
    """One-line, actionable message naming the offending field, e.g. 'schedule.rho[1][3]: 2.5 is outside [0, 2]'."""
