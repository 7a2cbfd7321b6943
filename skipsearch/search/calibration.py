"""Search bounds that fit the model: a quick sensitivity sweep of the proxy over a constant rho.

Models differ a lot in how far rho may move: the bundled EDM model likes rho well below 1, a DDPM may break
outside 1 +- 0.1. Before a study's first trial, the proxy is measured at a small n (common random numbers, so the
values are comparable) for constant rho on a grid around 1. The bounds are the contiguous run of grid values
around rho = 1 whose proxy stays within ``tolerance`` times the untuned value (degenerate or non-finite images
end the run); a run that reaches the end of the grid is followed further, down to rho = 0 or up to the largest
rho a schedule allows. When the run is rho = 1 alone (a sensitive model), a grid four times finer around 1 decides,
and its run is widened by one fine step on each side where the images are still usable: the edge of a narrow good
region is worth searching. The result is stored with the study and shown; it is deterministic, so a resumed study
gets the same bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from skipsearch.schedule import SkipSchedule
from skipsearch.schedule.limits import RHO_RANGE
from skipsearch.search.objective import TRIAL_FAILURES
from skipsearch.store.records import Calibration

DEFAULT_GRID = tuple(round(0.4 + 0.1 * i, 2) for i in range(13))  # 0.4 ... 1.6
DEFAULT_TOLERANCE = 1.5


def choose_bounds(rho: Sequence[float], proxy: Sequence[float | None], untuned: float,
                  tolerance: float = DEFAULT_TOLERANCE, widen: bool = False) -> tuple[float, float]:
    """The run of grid points around rho = 1 within ``tolerance`` x untuned (``widen``: plus one usable step)."""
    values = list(rho)
    centre = min(range(len(values)), key=lambda i: abs(values[i] - 1.0))

    def good(i: int) -> bool:
        return proxy[i] is not None and math.isfinite(proxy[i]) and proxy[i] <= tolerance * untuned

    lo = hi = centre
    while lo > 0 and good(lo - 1):
        lo -= 1
    while hi < len(values) - 1 and good(hi + 1):
        hi += 1
    if widen and lo > 0 and proxy[lo - 1] is not None:
        lo -= 1
    if widen and hi < len(values) - 1 and proxy[hi + 1] is not None:
        hi += 1
    step = min((b - a for a, b in zip(values, values[1:])), default=0.1)
    rho_min, rho_max = values[lo], values[hi]
    if rho_max - rho_min < 1e-9:  # only rho = 1 itself: a narrow window around it
        rho_min, rho_max = values[centre] - step, values[centre] + step
    return round(max(RHO_RANGE[0], rho_min), 6), round(min(RHO_RANGE[1], rho_max), 6)


def calibrate(evaluate: Callable[[SkipSchedule | None], float], num_skip_points: int, *, n: int,
              grid: Sequence[float] = DEFAULT_GRID, tolerance: float = DEFAULT_TOLERANCE,
              evaluate_many: Callable[[list[SkipSchedule | None]], list[float | None]] | None = None
              ) -> Calibration:
    """Run the sweep; ``evaluate(schedule)`` is the proxy at ``n`` images (None: untuned).

    ``evaluate_many(schedules)`` scores a list at once (None where one fails; e.g. spread over Ray workers); the
    untuned value and the grid then go out together, and a failure of the untuned model is raised by ``evaluate``.
    """

    def one_by_one(schedules: list[SkipSchedule | None]) -> list[float | None]:
        values: list[float | None] = []
        for schedule in schedules:
            try:
                values.append(evaluate(schedule))
            except TRIAL_FAILURES:
                values.append(None)
        return values

    score = evaluate_many or one_by_one
    grid = list(grid)
    off_centre = [rho for rho in grid if abs(rho - 1.0) >= 1e-12]
    if evaluate_many is None:
        untuned, first = evaluate(None), None
    else:
        untuned, *first = score([None, *(SkipSchedule.constant(rho, num_skip_points) for rho in off_centre)])
        if untuned is None:
            untuned = evaluate(None)  # raises the model's own failure (e.g. degenerate images at rho = 1)

    def sweep(points: Sequence[float], known: list[float | None] | None = None) -> list[float | None]:
        if known is None:
            known = score([SkipSchedule.constant(rho, num_skip_points) for rho in points
                           if abs(rho - 1.0) >= 1e-12])
        scored = iter(known)
        return [untuned if abs(rho - 1.0) < 1e-12 else next(scored) for rho in points]

    points, values = grid, sweep(grid, first)
    step = min(b - a for a, b in zip(points, points[1:]))

    def good(value: float | None) -> bool:
        return value is not None and value <= tolerance * untuned

    rho_min, rho_max = choose_bounds(points, values, untuned, tolerance)
    # Follow a good run past the end of the grid (the bundled EDM model is still better than untuned at 0.4).
    while rho_min == points[0] and points[0] - step >= RHO_RANGE[0] - 1e-9 and good(values[0]):
        points, values = [round(points[0] - step, 6), *points], [*sweep([round(points[0] - step, 6)]), *values]
        rho_min, rho_max = choose_bounds(points, values, untuned, tolerance)
    while rho_max == points[-1] and points[-1] + step <= RHO_RANGE[1] + 1e-9 and good(values[-1]):
        points, values = [*points, round(points[-1] + step, 6)], [*values, *sweep([round(points[-1] + step, 6)])]
        rho_min, rho_max = choose_bounds(points, values, untuned, tolerance)
    if rho_max - rho_min <= 2 * step + 1e-9:  # only rho = 1 was good: look closer, at a quarter of the step
        fine = [round(1.0 + i * step / 4, 6) for i in range(-4, 5)]
        fine_values = sweep(fine)
        rho_min, rho_max = choose_bounds(fine, fine_values, untuned, tolerance, widen=True)
        merged = dict(zip(points, values)) | dict(zip(fine, fine_values))
        points, values = sorted(merged), [merged[r] for r in sorted(merged)]
    return Calibration(points, values, untuned, n, tolerance, rho_min, rho_max)
