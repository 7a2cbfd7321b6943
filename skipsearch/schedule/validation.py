"""Checks and conversions shared by the schedule modules, and ``ScheduleError``, the one error they raise."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skipsearch.schedule.errors import ScheduleError

__all__ = ["ScheduleError", "encode_floats", "float_for_json", "fmt", "is_number", "jsonable", "positive_int",
           "to_float", "validate_bounds"]

_INF_STRINGS = {"inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf,
                "-inf": -math.inf, "-infinity": -math.inf, "nan": math.nan}


def fmt(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_number(value: Any) -> bool:
    """True for ints and floats, numpy's included, but not bools."""
    # bool is an int subclass, but True as a sigma or rho is always a mistake.
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def to_float(value: Any, where: str) -> float:
    """A float from a number or an 'inf'/'Infinity'/'nan' string (JSON has no non-finite literals)."""
    if is_number(value):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _INF_STRINGS:
        return _INF_STRINGS[value.strip().lower()]
    raise ScheduleError(f"{where}: {fmt(value)} is not a number")


def positive_int(value: Any, where: str) -> int:
    """``value`` as an int if it is a positive integer (not a bool), else ScheduleError naming ``where``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value > 0:
        return int(value)
    raise ScheduleError(f"{where}: {fmt(value)} must be a positive integer")


def float_for_json(value: float) -> float | str:
    """``value`` as a float, or "inf"/"-inf": JSON has no Infinity literal."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def jsonable(value: Any, where: str) -> Any:
    """A plain-Python, JSON-ready deep copy of free-form params/provenance (numpy scalars and tuples converted)."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ScheduleError(f"{where}: key {fmt(key)} is not a string (JSON object keys must be strings)")
            out[key] = jsonable(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), where)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    raise ScheduleError(f"{where}: {type(value).__name__} value {fmt(value)} cannot be stored in JSON")


def encode_floats(value: Any) -> Any:
    """Replace non-finite floats inside params/provenance by strings so that the JSON stays standard."""
    if isinstance(value, dict):
        return {key: encode_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [encode_floats(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else float_for_json(value)
    return value


def validate_bounds(bounds: Any, num_intervals: int | None,
                    where: str = "schedule.sigma_bounds") -> tuple[float, ...]:
    """Strictly descending, non-negative sigma bounds; bounds[0] may be inf. Returns them as a float tuple."""
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, (Sequence, np.ndarray)):
        raise ScheduleError(f"{where}: must be a list of numbers, got {fmt(bounds)}")
    values = tuple(to_float(b, f"{where}[{i}]") for i, b in enumerate(bounds))
    if len(values) < 2:
        raise ScheduleError(f"{where}: needs at least 2 values (one interval), got {len(values)}")
    if num_intervals is not None and len(values) != num_intervals + 1:
        raise ScheduleError(f"{where}: has {len(values)} values but rho has {num_intervals} rows "
                            f"(needs {num_intervals + 1}: one more than the number of intervals)")
    for i, value in enumerate(values):
        if math.isnan(value):
            raise ScheduleError(f"{where}[{i}]: nan is not a valid sigma")
        if value < 0:
            raise ScheduleError(f"{where}[{i}]: {value} is negative")
        if i > 0 and not value < values[i - 1]:
            raise ScheduleError(f"{where}[{i}]: {value} is not below the previous bound {values[i - 1]} "
                                "(bounds must be strictly descending)")
    return values
