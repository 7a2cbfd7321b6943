"""Errors of the execution stage (each a :class:`skipsearch.errors.SkipsearchError`: one line for the user)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class WorkersError(SkipsearchError, RuntimeError):
    """The Ray workers cannot run the study (cluster unreachable, every worker dead); one line, no URL secrets."""
