"""Errors of training (each a :class:`skipsearch.errors.SkipsearchError`: one line for the user)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class TrainingError(SkipsearchError, ValueError):
    """A training setting no run can use (a non-finite or non-positive learning rate, no steps, ...)."""


class TrainingDivergedError(SkipsearchError, ArithmeticError):
    """The loss became NaN or inf: the weights are lost to the run (usually too high a learning rate)."""
