"""Stage 1, the schedule: which rho multiplies each skip point, per sigma interval (``SkipSchedule``)."""

from skipsearch.schedule.core import (
    EPS_SCALE_RANGE,
    LAYER_WISE_BOUNDS,
    RHO_RANGE,
    SCHEMA,
    Churn,
    ModelIdentity,
    ScheduleError,
    SkipSchedule,
)

__all__ = ["EPS_SCALE_RANGE", "LAYER_WISE_BOUNDS", "RHO_RANGE", "SCHEMA", "Churn", "ModelIdentity", "ScheduleError",
           "SkipSchedule"]
