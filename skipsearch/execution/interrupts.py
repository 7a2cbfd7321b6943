"""Ctrl-C and SIGTERM while a study runs, the same for the CLI and for Python's ``optimize``.

The first Ctrl-C stops handing out trials: the running one (or the validation candidate being scored) finishes
and is stored, and the run returns as interrupted. A second Ctrl-C aborts at once (``KeyboardInterrupt``: the
running trials are failed and queued again). SIGTERM aborts at once as :class:`skipsearch.errors.Terminated`. A
Ctrl-C that Python would drop because it landed in a finalizer is raised again in the main code.

Handlers are installed only in the main thread (signals cannot be handled elsewhere); in another thread a run
keeps whatever the process does with signals.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from skipsearch.errors import Terminated

__all__ = ["graceful_interrupts", "interrupts_from_finalizers_redelivered"]


@contextlib.contextmanager
def graceful_interrupts(stop: Callable[[], bool]) -> Iterator[None]:
    """Within the block, the first Ctrl-C calls ``stop()`` (False: nothing to stop yet, so it aborts), the next
    raises KeyboardInterrupt; SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = [0]

    def on_sigint(_signum: int, _frame: Any) -> None:
        stops[0] += 1
        if stops[0] > 1 or not stop():
            raise KeyboardInterrupt

    def on_sigterm(signum: int, frame: Any) -> None:
        if callable(previous[1]):  # the caller's own (the CLI notes it to exit 143); it may raise itself
            previous[1](signum, frame)
        raise Terminated

    previous = signal.signal(signal.SIGINT, on_sigint), signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with interrupts_from_finalizers_redelivered():
            yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


@contextlib.contextmanager
def interrupts_from_finalizers_redelivered(delay_s: float = 0.01) -> Iterator[None]:
    """Re-raise in the main code a KeyboardInterrupt that Python would drop because it hit a finalizer."""
    # A Ctrl-C whose handler runs inside a finalizer (SQLAlchemy's weakref callbacks, a __del__) is printed as
    # "Exception ignored ... Traceback" and lost. Raising it again from the unraisable hook itself fails the same
    # way (any handler triggered before the hook returns runs inside the hook), so a one-shot SIGALRM raises it
    # once the hook has returned; if that lands in a finalizer too, the hook re-arms it.
    armed = [False]
    caught: list[type[BaseException]] = [KeyboardInterrupt]  # the lost one's type: a SIGTERM stays Terminated

    def on_alarm(_signum: int, _frame: Any) -> None:
        armed[0] = False
        raise caught[0]

    def on_unraisable(info: Any) -> None:
        if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            armed[0] = True
            caught[0] = info.exc_type
            signal.setitimer(signal.ITIMER_REAL, delay_s)
            return
        default_unraisable(info)

    default_unraisable, sys.unraisablehook = sys.unraisablehook, on_unraisable
    previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
    finally:
        if armed[0]:
            signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        sys.unraisablehook = default_unraisable
