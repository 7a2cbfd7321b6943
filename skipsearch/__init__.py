"""skipsearch: Bayesian optimisation of Skip-Tuning schedules for pretrained diffusion UNets."""

from __future__ import annotations

__version__ = "0.1.0"

from skipsearch.models import adapt, apply, load_model
from skipsearch.schedule import SkipSchedule

__all__ = ["SkipSchedule", "adapt", "apply", "load_model", "__version__"]
