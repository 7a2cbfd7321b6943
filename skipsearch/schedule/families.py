"""Named schedule families: the constructors behind ``SkipSchedule.constant``, ``.linear``, ``.window`` ...

Each returns a :class:`SkipSchedule` whose ``family`` and ``params`` record how it was built, so a stored schedule
says which rule produced it. :func:`linear_rho` is the paper's bottom->top rule, shared with the search spaces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np

from skipsearch.schedule.limits import LAYER_WISE_BOUNDS
from skipsearch.schedule.validation import ScheduleError, fmt, positive_int, to_float, validate_bounds
from skipsearch.schedule.values import Churn

S = TypeVar("S", bound=Any)  # SkipSchedule: the class is passed in, so this module never imports it

__all__ = ["constant", "identity", "intervals", "linear", "linear_in_time", "linear_rho", "per_layer", "per_level",
           "window"]


def linear_rho(rho_bottom: float, rho_top: float, num_skip_points: int) -> list[float]:
    """The paper's layer-wise rule rho_i = rho_bottom + (rho_top - rho_bottom) i/(K-1), bottom point first.

    K = 1 gives [rho_bottom]. Values are not range-checked: a search space clips them, a schedule validates them.
    """
    bottom, top = to_float(rho_bottom, "rho_bottom"), to_float(rho_top, "rho_top")
    k = positive_int(num_skip_points, "num_skip_points")
    return [bottom] if k == 1 else [bottom + (top - bottom) * i / (k - 1) for i in range(k)]


def _layer_wise(cls: type[S], row: Sequence[float], family: str, params: dict, sigma_bounds: Sequence[float] | None,
                churn: Churn | None, eps_scale: float) -> S:
    """One row repeated over every interval of ``sigma_bounds`` (default: a single interval)."""
    bounds = validate_bounds(LAYER_WISE_BOUNDS if sigma_bounds is None else sigma_bounds, None)
    matrix = np.tile(np.asarray(row, dtype=np.float64), (len(bounds) - 1, 1))
    return cls(rho=matrix, sigma_bounds=bounds, churn=churn or Churn(), eps_scale=eps_scale, family=family,
                        params=params)


def constant(cls: type[S], rho: float, num_skip_points: int, *, sigma_bounds: Sequence[float] | None = None,
             churn: Churn | None = None, eps_scale: float = 1.0) -> S:
    """The same rho at every skip point and sigma (the paper's single-rho setting, e.g. rho = 0.78)."""
    rho = to_float(rho, "rho")
    k = positive_int(num_skip_points, "num_skip_points")
    return _layer_wise(cls, [rho] * k, "constant", {"rho": rho}, sigma_bounds, churn, eps_scale)


def identity(cls: type[S], num_skip_points: int, *, sigma_bounds: Sequence[float] | None = None) -> S:
    """rho = 1 everywhere: the unmodified network."""
    k = positive_int(num_skip_points, "num_skip_points")
    return _layer_wise(cls, [1.0] * k, "identity", {}, sigma_bounds, None, 1.0)


def linear(cls: type[S], rho_bottom: float, rho_top: float, num_skip_points: int, *,
           sigma_bounds: Sequence[float] | None = None,
           churn: Churn | None = None, eps_scale: float = 1.0) -> S:
    """:func:`linear_rho` at every sigma."""
    bottom, top = to_float(rho_bottom, "rho_bottom"), to_float(rho_top, "rho_top")
    row = linear_rho(bottom, top, num_skip_points)
    return _layer_wise(cls, row, "linear", {"rho_bottom": bottom, "rho_top": top}, sigma_bounds, churn, eps_scale)


def _is_list(value: object) -> bool:
    return not isinstance(value, (str, bytes)) and isinstance(value, (Sequence, np.ndarray))


def per_layer(cls: type[S], values: Sequence[float], *, sigma_bounds: Sequence[float] | None = None,
              churn: Churn | None = None,
              eps_scale: float = 1.0) -> S:
    """One free value per skip point, bottom first."""
    if not _is_list(values) or len(values) == 0:
        raise ScheduleError(f"values: must be a non-empty list of numbers, got {fmt(values)}")
    row = [to_float(v, f"values[{i}]") for i, v in enumerate(values)]
    return _layer_wise(cls, row, "per_layer", {"values": row}, sigma_bounds, churn, eps_scale)


def per_level(cls: type[S], level_values: Sequence[float], level_of_point: Sequence[int], *,
              sigma_bounds: Sequence[float] | None = None, churn: Churn | None = None,
              eps_scale: float = 1.0) -> S:
    """One value per resolution level, expanded to skip points by ``level_of_point[i]`` (the level of point i)."""
    if not _is_list(level_values) or len(level_values) == 0:
        raise ScheduleError(f"level_values: must be a non-empty list of numbers, got {fmt(level_values)}")
    if not _is_list(level_of_point) or len(level_of_point) == 0:
        raise ScheduleError(f"level_of_point: must be a non-empty list of level indices, got {fmt(level_of_point)}")
    levels = [to_float(v, f"level_values[{i}]") for i, v in enumerate(level_values)]
    mapping = []
    for i, level in enumerate(level_of_point):
        if not isinstance(level, (int, np.integer)) or isinstance(level, (bool, np.bool_)) \
                or not 0 <= level < len(levels):
            raise ScheduleError(f"level_of_point[{i}]: {fmt(level)} is not a level index in "
                                f"[0, {len(levels) - 1}] ({len(levels)} level values given)")
        mapping.append(int(level))
    row = [levels[level] for level in mapping]
    params = {"level_values": levels, "level_of_point": mapping}
    return _layer_wise(cls, row, "per_level", params, sigma_bounds, churn,
                       eps_scale)


def intervals(cls: type[S], matrix: Sequence[Sequence[float]], sigma_bounds: Sequence[float], *,
              churn: Churn | None = None,
              eps_scale: float = 1.0) -> S:
    """Dense free form: one row per interval of ``sigma_bounds``."""
    return cls(rho=matrix, sigma_bounds=sigma_bounds, churn=churn or Churn(), eps_scale=eps_scale,
                        family="intervals", params={})


def window(cls: type[S], sigma_bounds: Sequence[float], window: int, rho: float | Sequence[float],
           num_skip_points: int | None = None, *, churn: Churn | None = None, eps_scale: float = 1.0) -> S:
    """The paper's window search: ``rho`` only in interval ``window``; 1 elsewhere.

    ``rho`` is one value for every skip point or a per-point sequence (then ``num_skip_points`` may be left out).
    """
    bounds = validate_bounds(sigma_bounds, None, "sigma_bounds")
    n = len(bounds) - 1
    if not isinstance(window, (int, np.integer)) or isinstance(window, (bool, np.bool_)) or not 0 <= window < n:
        raise ScheduleError(f"window: {fmt(window)} is not an interval index in [0, {n - 1}]")
    if not _is_list(rho):
        value = to_float(rho, "rho")
        k = positive_int(num_skip_points, "num_skip_points")
        row, param = [value] * k, value
    else:
        row = [to_float(v, f"rho[{i}]") for i, v in enumerate(rho)]
        if num_skip_points is not None and positive_int(num_skip_points, "num_skip_points") != len(row):
            raise ScheduleError(f"rho: has {len(row)} values but num_skip_points is {num_skip_points}")
        k, param = len(row), row
    matrix = np.ones((n, k))
    matrix[window] = row
    return cls(rho=matrix, sigma_bounds=bounds, churn=churn or Churn(), eps_scale=eps_scale,
                        family="window", params={"window": int(window), "rho": param})


def linear_in_time(cls: type[S], rho_0: float, num_skip_points: int, *,
                   direction: Literal["decreasing", "increasing"],
                   sigma_min: float, sigma_max: float, num_intervals: int = 8, churn: Churn | None = None,
                   eps_scale: float = 1.0) -> S:
    """Paper §5.2: rho moves linearly between 1.0 and ``rho_0`` over [sigma_min, sigma_max], same at every point.

    "decreasing": 1.0 at time 0 (sigma_min) falling to rho_0 at time T (sigma_max), preferred by EDM;
    "increasing": rho_0 at sigma_min rising to 1.0 at sigma_max. "Linear" is in log-sigma: the intervals are equal
    in log-sigma and each takes the value at its log-sigma midpoint; outer bounds become inf and 0.
    """
    value = to_float(rho_0, "rho_0")
    k = positive_int(num_skip_points, "num_skip_points")
    n = positive_int(num_intervals, "num_intervals")
    if direction not in ("decreasing", "increasing"):
        raise ScheduleError(f"direction: {fmt(direction)} must be 'decreasing' or 'increasing'")
    lo, hi = to_float(sigma_min, "sigma_min"), to_float(sigma_max, "sigma_max")
    if not (0 < lo < hi < math.inf):
        raise ScheduleError(f"sigma_min/sigma_max: need 0 < sigma_min < sigma_max < inf, got {lo}, {hi}")
    log_edges = np.linspace(math.log(hi), math.log(lo), n + 1)  # descending, like the bounds
    bounds = (math.inf, *(float(math.exp(e)) for e in log_edges[1:-1]), 0.0)
    # Fraction of the way from sigma_min (0) to sigma_max (1) of each interval's log-sigma midpoint.
    frac = ((log_edges[:-1] + log_edges[1:]) / 2 - math.log(lo)) / (math.log(hi) - math.log(lo))
    column = 1.0 + (value - 1.0) * frac if direction == "decreasing" else value + (1.0 - value) * frac
    matrix = np.repeat(column[:, None], k, axis=1)
    params = {"rho_0": value, "direction": direction, "sigma_min": lo, "sigma_max": hi, "num_intervals": n}
    return cls(rho=matrix, sigma_bounds=bounds, churn=churn or Churn(), eps_scale=eps_scale,
                        family="linear_in_time", params=params)
