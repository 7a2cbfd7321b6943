"""Errors of the sampling stage (each a :class:`skipsearch.errors.SkipsearchError`: one line for the user)."""

from __future__ import annotations

from skipsearch.errors import SkipsearchError


class GridError(SkipsearchError, ValueError):
    """A schedule's time grid that gives no usable noise levels on this model (a trial failure, not a crash)."""


class NFEError(SkipsearchError, ValueError):
    """An NFE budget that a sampler cannot spend exactly.

    ``samplers``: the registered samplers that can spend it; ``hint`` says so in words (the CLI prints it after the
    message, which stays as it was for callers that match it).
    """

    def __init__(self, message: str, samplers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.samplers = tuple(samplers)

    @property
    def hint(self) -> str:
        return f", or a sampler that can: --sampler {' | '.join(self.samplers)}" if self.samplers else ""


class SamplerOptionError(SkipsearchError, ValueError):
    """A sampler option the sampler does not take, or a value of the wrong type or range."""


class UnknownSamplerError(SkipsearchError, ValueError):
    """A sampler name that is not in SAMPLERS."""


class DegenerateOutputError(SkipsearchError, RuntimeError):
    """The images are constant, all black/white or saturated: a broken schedule, not a score."""


class NonFiniteOutputError(SkipsearchError, RuntimeError):
    """The sampler produced NaN/inf images (e.g. an extreme schedule); the trial must fail, not score."""
