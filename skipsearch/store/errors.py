"""Errors of the store (each a :class:`skipsearch.errors.SkipsearchError`: one line for the user)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class StoreError(SkipsearchError, RuntimeError):
    """One-line, actionable storage error; any URL in it is redacted."""


class StoreLockedError(StoreError):
    """Another process held the SQLite database's lock past the lock deadline (``Settings.lock_timeout``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(f"database {path} is locked by another process; gave up after {timeout:g}s "
                         f"(SKIPSEARCH_LOCK_TIMEOUT): try again when that process is done, or raise "
                         f"SKIPSEARCH_LOCK_TIMEOUT")
        self.path, self.timeout = path, timeout
