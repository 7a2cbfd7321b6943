"""Ctrl-C and SIGTERM during a run, the same for Python's ``optimize`` as for the CLI (real signals)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from skipsearch.errors import Terminated
from skipsearch.execution.interrupts import graceful_interrupts


def _signal(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs at the next bytecode boundary


def test_first_ctrl_c_stops_gracefully_the_second_aborts() -> None:
    stops: list[int] = []
    with pytest.raises(KeyboardInterrupt), graceful_interrupts(lambda: stops.append(1) or True):
        _signal(signal.SIGINT)
        assert stops == [1]  # asked to stop after the current trial; the run goes on
        _signal(signal.SIGINT)
    assert stops == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_ctrl_c_before_anything_can_stop_aborts() -> None:
    with pytest.raises(KeyboardInterrupt), graceful_interrupts(lambda: False):
        _signal(signal.SIGINT)


def test_sigterm_aborts_as_terminated_and_the_callers_handler_still_hears_it() -> None:
    heard: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: heard.append(signum))
    try:
        with pytest.raises(Terminated), graceful_interrupts(lambda: True):
            _signal(signal.SIGTERM)
        assert heard == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
