"""Several schedules on one batch: rows ``[j*m, (j+1)*m)`` follow ``schedules[j]`` (many trials per forward).

A small UNet leaves a GPU idle at one trial's batch; K trials' schedules can share a forward because rho is
already applied per sample. ``ScheduleBatch`` offers what the hooks read from a ``SkipSchedule`` (``rho`` to know
which points are ever scaled, ``rho_for_sigma``, ``eps_scale``, ``num_intervals``), each row from its own schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from skipsearch.schedule.core import SkipSchedule
from skipsearch.schedule.validation import ScheduleError
from skipsearch.schedule.values import Churn, ModelIdentity


class ScheduleBatch:
    """``schedules[j]`` on ``per_schedule`` consecutive rows each; they must share the churn (one sampler pass)."""

    def __init__(self, schedules: Sequence[SkipSchedule], per_schedule: int) -> None:
        if not schedules:
            raise ScheduleError("a schedule batch needs at least one schedule")
        points = {s.num_skip_points for s in schedules}
        if len(points) != 1:
            raise ScheduleError(f"schedules of one batch have different skip point counts {sorted(points)}")
        if any(s.churn != schedules[0].churn for s in schedules):
            raise ScheduleError("schedules of one batch must share their churn (the sampler's noise is per batch)")
        self.schedules, self.per_schedule = list(schedules), int(per_schedule)
        self.rho = np.concatenate([s.rho for s in self.schedules])  # every row of every schedule
        self.churn: Churn = schedules[0].churn
        scales = [s.eps_scale for s in self.schedules]
        # float64 like the Python float a single schedule divides by (the sampler's state is float64)
        self._eps_scale: float | torch.Tensor = 1.0 if all(scale == 1.0 for scale in scales) else torch.tensor(
            scales, dtype=torch.float64).repeat_interleave(self.per_schedule).reshape(-1, 1, 1, 1)
        self._constant: dict[torch.device, torch.Tensor] = {}
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (sigma, rows) of the call in progress

    @property
    def num_skip_points(self) -> int:
        return self.schedules[0].num_skip_points

    @property
    def num_intervals(self) -> int:
        return max(s.num_intervals for s in self.schedules)

    @property
    def rows(self) -> int:
        return len(self.schedules) * self.per_schedule

    @property
    def eps_scale(self) -> float | torch.Tensor:
        """1.0 when no schedule rescales the output, else a [rows, 1, 1, 1] tensor."""
        return self._eps_scale

    def check_model(self, expected: ModelIdentity) -> None:
        for schedule in self.schedules:
            schedule.check_model(expected)

    def rho_for_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """float32 [rows, num_skip_points]: row r from the schedule owning it, at sigma[r] (or the one sigma)."""
        if self._last is not None and self._last[0] is sigma:
            return self._last[1]  # every skip point of one forward asks with the same sigma tensor
        key, sigma = sigma, torch.as_tensor(sigma).reshape(-1)
        if self.num_intervals == 1:
            table = self._constant.get(sigma.device)
            if table is None:
                table = torch.tensor(np.stack([s.rho[0] for s in self.schedules]), dtype=torch.float32,
                                     device=sigma.device).repeat_interleave(self.per_schedule, dim=0)
                self._constant[sigma.device] = table
            return table
        if sigma.numel() == 1:
            sigma = sigma.expand(self.rows)
        m = self.per_schedule
        rows = torch.cat([s.rho_for_sigma(sigma[j * m:(j + 1) * m]) for j, s in enumerate(self.schedules)])
        self._last = (key, rows)
        return rows
