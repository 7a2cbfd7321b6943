"""Stage 1, the schedule: which rho multiplies each skip point, per sigma interval (``SkipSchedule``).

The public names are loaded on first use (PEP 562), so ``import skipsearch.schedule.limits`` stays free of numpy
and torch for code that only needs the ranges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skipsearch.lazy import lazy_exports

if TYPE_CHECKING:
    from skipsearch.schedule.codec import SCHEMA
    from skipsearch.schedule.core import SkipSchedule
    from skipsearch.schedule.limits import EPS_SCALE_RANGE, LAYER_WISE_BOUNDS, RHO_RANGE
    from skipsearch.schedule.validation import ScheduleError
    from skipsearch.schedule.values import Churn, ModelIdentity, TimeGrid

_HOMES = {
    "EPS_SCALE_RANGE": "limits",
    "LAYER_WISE_BOUNDS": "limits",
    "RHO_RANGE": "limits",
    "SCHEMA": "codec",
    "Churn": "values",
    "ModelIdentity": "values",
    "TimeGrid": "values",
    "ScheduleError": "validation",
    "SkipSchedule": "core",
}

__all__ = ["EPS_SCALE_RANGE", "LAYER_WISE_BOUNDS", "RHO_RANGE", "SCHEMA", "Churn", "ModelIdentity", "ScheduleError",
           "SkipSchedule", "TimeGrid"]


__getattr__ = lazy_exports(__name__, _HOMES)
