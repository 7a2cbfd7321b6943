"""The one root of every error skipsearch raises for a user to fix: the CLI prints it as one line and exits 2.

Each stage keeps its own classes (``ScheduleError``, ``ModelError``, ``StoreError`` ...), defined beside the code
that raises them, and each also keeps the builtin base it had (``ValueError``, ``RuntimeError`` ...), so callers that
catch those still do. Anything that is not a ``SkipsearchError`` is a bug and keeps its traceback.
"""

from __future__ import annotations


class SkipsearchError(Exception):
    """Root of skipsearch's user-facing errors: the message is one actionable line."""


class UsageError(SkipsearchError, ValueError):
    """A bad flag value or combination of flags."""
