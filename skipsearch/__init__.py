"""skipsearch: Bayesian optimisation of Skip-Tuning schedules for pretrained diffusion UNets."""

from __future__ import annotations

__version__ = "0.1.0"

from skipsearch.models import adapt, apply, load_model
from skipsearch.schedule.core import SkipSchedule


def optimize(*args, **kwargs):
    """Run a study like ``skipsearch optimize`` (see :func:`skipsearch.service.optimize`)."""
    from skipsearch.execution.local import optimize as run
    return run(*args, **kwargs)


__all__ = ["SkipSchedule", "adapt", "apply", "load_model", "optimize", "__version__"]
