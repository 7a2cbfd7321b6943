"""The one root of every error skipsearch raises for a user to fix: the CLI prints it as one line and exits 2.

Each stage keeps its own classes in its ``errors.py`` (``schedule/errors.py``: ``ScheduleError``;
``models/errors.py``: ``ModelError``; ``store/errors.py``: ``StoreError`` ...), and each also keeps the builtin
base it had (``ValueError``, ``RuntimeError`` ...), so callers that catch those still do. Anything that is not a
``SkipsearchError`` is a bug and keeps its traceback. Signals between stages (a trial skipped, an evaluation
stopped) are :class:`ControlSignal`, not errors: nothing a user fixes, never printed as one.
"""

from __future__ import annotations


class SkipsearchError(Exception):
    """Root of skipsearch's user-facing errors: the message is one actionable line."""


class UsageError(SkipsearchError, ValueError):
    """A bad flag value or combination of flags."""


class ControlSignal(Exception):
    """A stage telling its caller to stop something, not a failure (``TrialSkipped``, ``EvaluationStopped``)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI: it unwinds like a Ctrl-C that aborts at once (a running trial
    is failed and queued again, database sessions roll back; a service manager waits only so long for more) and
    the command exits 143 (128 + SIGTERM). Not a user error: a KeyboardInterrupt, so every Ctrl-C path handles it."""


class MissingExtraError(SkipsearchError, ImportError):
    """An optional extra (``pip install 'skipsearch[NAME]'``) that a model or command needs is not installed."""
