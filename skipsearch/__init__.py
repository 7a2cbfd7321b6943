"""skipsearch: Bayesian optimisation of Skip-Tuning schedules for pretrained diffusion UNets.

The API (``load_model``, ``apply``, ``SkipSchedule``, ``optimize``) loads on first use, so importing a torch-free
part of the package (study definitions) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skipsearch.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from skipsearch.models import adapt, apply, load_model
    from skipsearch.optimization import optimize
    from skipsearch.sampling.generate import schedule_sigmas
    from skipsearch.schedule import SkipSchedule

__all__ = ["SkipSchedule", "adapt", "apply", "load_model", "optimize", "schedule_sigmas", "__version__"]
__getattr__ = lazy_exports(__name__, {"adapt": "skipsearch.models", "apply": "skipsearch.models",
                                      "load_model": "skipsearch.models", "SkipSchedule": "skipsearch.schedule.core",
                                      "optimize": "skipsearch.optimization",
                                      "schedule_sigmas": "skipsearch.sampling.generate"})
