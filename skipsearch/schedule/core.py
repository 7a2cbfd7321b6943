"""Skip-Tuning schedules: which coefficient rho multiplies each UNet skip tensor, per noise-level interval.

Skip-Tuning (arXiv 2402.15170) feeds a decoder block ``concat(rho_i * d_i, u_i)`` instead of ``concat(d_i, u_i)``.
A :class:`SkipSchedule` holds one row of ``rho`` per sigma interval and one column per skip point; column 0 is the
bottom skip point (lowest resolution, consumed first by the decoder). Since schema v2 a schedule also says how it
is sampled (time grid, sampler options, NFE set). Schedules are immutable, compare by content and travel as
versioned JSON (``skipsearch.schedule/v2``, which also reads v1; see :mod:`skipsearch.schedule.codec`); the named
constructors live in :mod:`skipsearch.schedule.families`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from skipsearch.schedule import codec, families
from skipsearch.schedule.limits import EPS_SCALE_RANGE, LAYER_WISE_BOUNDS, MAX_NFE, RHO_RANGE
from skipsearch.schedule.validation import (
    ScheduleError,
    fmt,
    jsonable,
    positive_int,
    to_float,
    validate_bounds,
)
from skipsearch.schedule.values import Churn, ModelIdentity, TimeGrid

__all__ = ["Churn", "ModelIdentity", "ScheduleError", "SkipSchedule", "TimeGrid"]

_METADATA_FIELDS = ("model", "sampler", "nfe", "provenance", "sampler_options", "nfe_set")


def _nfe(value: Any, where: str) -> int:
    nfe = positive_int(value, where)
    if nfe > MAX_NFE:
        raise ScheduleError(f"{where}: {nfe} is more than {MAX_NFE}, the most denoiser calls per image skipsearch "
                            "samples with")
    return nfe


@dataclass(frozen=True, eq=False)
class SkipSchedule:
    """Skip coefficients per sigma interval (rows) and skip point (columns), plus sampling knobs and provenance.

    Row i applies to sigma in (sigma_bounds[i+1], sigma_bounds[i]]; column 0 is the bottom (lowest-resolution) skip
    point. ``eps_scale`` rescales the model output against exposure bias (D' = x - (x - D)/eps_scale; 1 = off).
    """

    rho: np.ndarray
    sigma_bounds: tuple[float, ...] = LAYER_WISE_BOUNDS
    churn: Churn = field(default_factory=Churn)
    eps_scale: float = 1.0
    family: str = "free"
    params: dict = field(default_factory=dict)
    model: ModelIdentity | None = None
    sampler: str | None = None
    nfe: int | None = None
    provenance: dict = field(default_factory=dict)
    # How to sample it (schema v2): the time grid (None: the sampler's default), the sampler's options, and the
    # NFEs the schedule was searched for together (empty: only ``nfe``).
    grid: TimeGrid | None = None
    sampler_options: dict = field(default_factory=dict)
    nfe_set: tuple[int, ...] = ()

    __hash__ = None  # type: ignore[assignment]  # content equality over a numpy array: not hashable

    def __post_init__(self) -> None:
        rho = self._validated_rho(self.rho)
        rho.flags.writeable = False
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "sigma_bounds", validate_bounds(self.sigma_bounds, rho.shape[0]))
        if not isinstance(self.churn, Churn):
            raise ScheduleError(f"schedule.churn: must be a Churn, got {fmt(self.churn)}")
        eps_scale = to_float(self.eps_scale, "schedule.eps_scale")
        if not EPS_SCALE_RANGE[0] <= eps_scale <= EPS_SCALE_RANGE[1]:
            raise ScheduleError(f"schedule.eps_scale: {eps_scale} is outside "
                                f"[{EPS_SCALE_RANGE[0]:g}, {EPS_SCALE_RANGE[1]:g}] (1 = off)")
        object.__setattr__(self, "eps_scale", eps_scale)
        if not isinstance(self.family, str) or not self.family:
            raise ScheduleError(f"schedule.family: {fmt(self.family)} must be a non-empty string")
        if self.grid is not None and not isinstance(self.grid, TimeGrid):
            raise ScheduleError(f"schedule.grid: must be a TimeGrid or None, got {fmt(self.grid)}")
        if isinstance(self.nfe_set, (str, bytes)) or not isinstance(self.nfe_set, (list, tuple)):
            raise ScheduleError(f"schedule.nfe_set: must be a list of NFEs, got {fmt(self.nfe_set)}")
        nfes = tuple(_nfe(v, f"schedule.nfe_set[{i}]") for i, v in enumerate(self.nfe_set))
        if len(set(nfes)) != len(nfes):
            raise ScheduleError(f"schedule.nfe_set: {list(nfes)} repeats an NFE")
        object.__setattr__(self, "nfe_set", tuple(sorted(nfes)))
        for name in ("params", "provenance", "sampler_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ScheduleError(f"schedule.{name}: must be an object (dict), got {fmt(value)}")
            # A private JSON-ready copy: the caller's dict cannot change a frozen schedule, and save() cannot fail
            # late (after a long study) on a value JSON cannot hold.
            object.__setattr__(self, name, jsonable(value, f"schedule.{name}"))
        if self.model is not None:
            if not isinstance(self.model, ModelIdentity):
                raise ScheduleError(f"schedule.model: must be a ModelIdentity or None, got {fmt(self.model)}")
            if self.model.num_skip_points != rho.shape[1]:
                raise ScheduleError(f"schedule.model.num_skip_points: model {self.model.describe()} does not match "
                                    f"rho's {rho.shape[1]} columns")
        if self.sampler is not None and (not isinstance(self.sampler, str) or not self.sampler):
            raise ScheduleError(f"schedule.sampler: {fmt(self.sampler)} must be a non-empty string or null")
        if self.nfe is not None:
            object.__setattr__(self, "nfe", _nfe(self.nfe, "schedule.nfe"))
            if self.nfe_set and self.nfe not in self.nfe_set:
                raise ScheduleError(f"schedule.nfe: {self.nfe} is not in its nfe_set {list(self.nfe_set)}")
        object.__setattr__(self, "_torch_cache", {})

    @staticmethod
    def _validated_rho(value: Any) -> np.ndarray:
        where = "schedule.rho"
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().to(torch.float64).numpy()
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "iuf":
                raise ScheduleError(f"{where}: array of dtype {value.dtype} is not numeric")
            rows = value
        else:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
                raise ScheduleError(f"{where}: must be a non-empty 2-D list of numbers, got {fmt(value)}")
            width = None
            for i, row in enumerate(value):
                if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
                    raise ScheduleError(f"{where}[{i}]: must be a list of numbers (one per skip point), "
                                        f"got {fmt(row)}")
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    raise ScheduleError(f"{where}[{i}]: has {len(row)} values but row 0 has {width} "
                                        "(every interval needs one value per skip point)")
                for j, item in enumerate(row):
                    to_float(item, f"{where}[{i}][{j}]")
            rows = [[to_float(item, "") for item in row] for row in value]
        rho = np.array(rows, dtype=np.float64)  # always a private copy
        if rho.ndim != 2 or rho.shape[0] == 0 or rho.shape[1] == 0:
            raise ScheduleError(f"{where}: must be a non-empty 2-D [intervals, skip points] array, got shape "
                                f"{tuple(rho.shape)}")
        bad = np.argwhere(~np.isfinite(rho))
        if len(bad):
            i, j = bad[0]
            raise ScheduleError(f"{where}[{i}][{j}]: {float(rho[i, j])} is not finite")
        bad = np.argwhere((rho < RHO_RANGE[0]) | (rho > RHO_RANGE[1]))
        if len(bad):
            i, j = bad[0]
            raise ScheduleError(f"{where}[{i}][{j}]: {float(rho[i, j])} is outside "
                                f"[{RHO_RANGE[0]:g}, {RHO_RANGE[1]:g}]")
        return rho

    # -- shape and identity

    @property
    def num_intervals(self) -> int:
        return int(self.rho.shape[0])

    @property
    def num_skip_points(self) -> int:
        return int(self.rho.shape[1])

    @property
    def is_identity(self) -> bool:
        """True when the schedule leaves the network untouched (all rho == 1, eps_scale == 1); churn is ignored."""
        return bool(np.all(self.rho == 1.0)) and self.eps_scale == 1.0

    @property
    def is_layer_wise(self) -> bool:
        """True when every interval has the same row, i.e. the schedule does not depend on sigma."""
        return bool(np.all(self.rho == self.rho[0]))

    # -- hot path

    def interval_index(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The interval (row of ``rho``) of each sigma, as a LongTensor of sigma's shape, on sigma's device.

        Interval i covers (bounds[i+1], bounds[i]]: a sigma exactly on an inner bound belongs to the interval below
        it. Sigmas above bounds[0] clamp to interval 0, sigmas at or below bounds[-1] to the last interval.
        """
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if not sigma.is_floating_point():
            sigma = sigma.to(torch.float64)
        if self.num_intervals == 1:
            return torch.zeros(sigma.shape, dtype=torch.long, device=sigma.device)
        # Bounds in sigma's dtype, so a sigma written with the same literal as a bound counts as "on" it (and MPS,
        # which has no float64, works).
        key = ("bounds", sigma.device, sigma.dtype)
        inner = self._torch_cache.get(key)  # type: ignore[attr-defined]
        if inner is None:
            # Negated inner bounds ascend; bucketize(right=True) returns i with inner[i-1] <= -sigma < inner[i],
            # i.e. bounds[i+1] < sigma <= bounds[i]. Outer bounds are left out, which is what clamps.
            inner = torch.tensor([-b for b in self.sigma_bounds[1:-1]], dtype=sigma.dtype, device=sigma.device)
            self._torch_cache[key] = inner  # type: ignore[attr-defined]
        return torch.bucketize(-sigma, inner, right=True)

    def rho_for_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """float32 [B, num_skip_points] coefficients for each of the B = sigma.numel() sigmas (0-dim -> B = 1)."""
        index = self.interval_index(sigma).reshape(-1)
        key = ("rho", index.device)
        table = self._torch_cache.get(key)  # type: ignore[attr-defined]
        if table is None:
            table = torch.tensor(self.rho, dtype=torch.float32, device=index.device)
            self._torch_cache[key] = table  # type: ignore[attr-defined]
        return table[index]

    def rho_at(self, sigma: float) -> np.ndarray:
        """float64 row for one Python sigma (for reports and plots; the sampler uses :meth:`rho_for_sigma`)."""
        return self.rho[int(self.interval_index(torch.tensor(float(sigma), dtype=torch.float64)))]

    # -- equality, copies, pickling

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SkipSchedule):
            return NotImplemented
        return (self.rho.shape == other.rho.shape and bool(np.array_equal(self.rho, other.rho))
                and self.sigma_bounds == other.sigma_bounds and self.churn == other.churn
                and self.eps_scale == other.eps_scale and self.family == other.family and self.params == other.params
                and self.model == other.model and self.sampler == other.sampler and self.nfe == other.nfe
                and self.provenance == other.provenance and self.grid == other.grid
                and self.sampler_options == other.sampler_options and self.nfe_set == other.nfe_set)

    def __getstate__(self) -> dict[str, Any]:
        # The device tensors are a cache: never ship them (e.g. CUDA tensors to a CPU-only Ray worker).
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        rho = np.array(self.rho, dtype=np.float64)
        rho.flags.writeable = False
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "_torch_cache", {})

    def __deepcopy__(self, memo: dict) -> SkipSchedule:
        return dataclasses.replace(self, params=copy.deepcopy(self.params), provenance=copy.deepcopy(self.provenance))

    def with_metadata(self, **changes: Any) -> SkipSchedule:
        """A copy with new ``model``, ``sampler``, ``nfe`` and/or ``provenance``; the coefficients are kept."""
        for key in changes:
            if key not in _METADATA_FIELDS:
                raise ScheduleError(f"with_metadata: {key!r} is not a metadata field "
                                    f"({', '.join(_METADATA_FIELDS)}); "
                                    "build a new schedule with a constructor instead")
        return dataclasses.replace(self, **changes)

    def check_model(self, expected: ModelIdentity) -> None:
        """Raise ScheduleError unless this schedule fits ``expected`` (skip-point count, then name, then sha256).

        A schedule without a model block must still have ``expected.num_skip_points`` columns. An empty sha256 on
        either side means "unknown" and is not compared.
        """
        if not isinstance(expected, ModelIdentity):
            raise ScheduleError(f"expect_model: must be a ModelIdentity, got {fmt(expected)}")
        if self.model is None:
            if self.num_skip_points != expected.num_skip_points:
                raise ScheduleError(f"schedule has {self.num_skip_points} skip points per interval but the loaded "
                                    f"model is {expected.describe()}")
            return
        if self.model.num_skip_points != expected.num_skip_points or self.model.name != expected.name:
            raise ScheduleError(f"schedule is for model {self.model.describe()} but the loaded model is "
                                f"{expected.describe()}")
        if self.model.sha256 and expected.sha256 and self.model.sha256 != expected.sha256:
            raise ScheduleError(f"schedule is for model '{self.model.name}' with weights sha256 "
                                f"{self.model.sha256[:12]}... but the loaded weights have sha256 "
                                f"{expected.sha256[:12]}...; search a schedule for these weights")

    # -- constructors: the rules live in skipsearch.schedule.families

    @classmethod
    def constant(cls, rho: float, num_skip_points: int, *, sigma_bounds: Sequence[float] | None = None,
                 churn: Churn | None = None, eps_scale: float = 1.0) -> SkipSchedule:
        """The same rho at every skip point and sigma (the paper's single-rho setting, e.g. rho = 0.78)."""
        return families.constant(cls, rho, num_skip_points, sigma_bounds=sigma_bounds, churn=churn,
                                 eps_scale=eps_scale)

    @classmethod
    def identity(cls, num_skip_points: int, *, sigma_bounds: Sequence[float] | None = None) -> SkipSchedule:
        """rho = 1 everywhere: the unmodified network."""
        return families.identity(cls, num_skip_points, sigma_bounds=sigma_bounds)

    @classmethod
    def linear(cls, rho_bottom: float, rho_top: float, num_skip_points: int, *,
               sigma_bounds: Sequence[float] | None = None, churn: Churn | None = None,
               eps_scale: float = 1.0) -> SkipSchedule:
        """The paper's layer-wise rule rho_i = rho_bottom + (rho_top - rho_bottom) i/(K-1); K = 1 gives rho_bottom."""
        return families.linear(cls, rho_bottom, rho_top, num_skip_points, sigma_bounds=sigma_bounds, churn=churn,
                               eps_scale=eps_scale)

    @classmethod
    def per_layer(cls, values: Sequence[float], *, sigma_bounds: Sequence[float] | None = None,
                  churn: Churn | None = None, eps_scale: float = 1.0) -> SkipSchedule:
        """One free value per skip point, bottom first."""
        return families.per_layer(cls, values, sigma_bounds=sigma_bounds, churn=churn, eps_scale=eps_scale)

    @classmethod
    def per_level(cls, level_values: Sequence[float], level_of_point: Sequence[int], *,
                  sigma_bounds: Sequence[float] | None = None, churn: Churn | None = None,
                  eps_scale: float = 1.0) -> SkipSchedule:
        """One value per resolution level, expanded to skip points by ``level_of_point[i]`` (the level of point i)."""
        return families.per_level(cls, level_values, level_of_point, sigma_bounds=sigma_bounds, churn=churn,
                                  eps_scale=eps_scale)

    @classmethod
    def intervals(cls, matrix: Sequence[Sequence[float]], sigma_bounds: Sequence[float], *,
                  churn: Churn | None = None, eps_scale: float = 1.0) -> SkipSchedule:
        """Dense free form: one row per interval of ``sigma_bounds``."""
        return families.intervals(cls, matrix, sigma_bounds, churn=churn, eps_scale=eps_scale)

    @classmethod
    def window(cls, sigma_bounds: Sequence[float], window: int, rho: float | Sequence[float],
               num_skip_points: int | None = None, *, churn: Churn | None = None,
               eps_scale: float = 1.0) -> SkipSchedule:
        """The paper's window search: ``rho`` only in interval ``window``; 1 elsewhere."""
        return families.window(cls, sigma_bounds, window, rho, num_skip_points, churn=churn, eps_scale=eps_scale)

    @classmethod
    def linear_in_time(cls, rho_0: float, num_skip_points: int, *,
                       direction: Literal["decreasing", "increasing"], sigma_min: float, sigma_max: float,
                       num_intervals: int = 8, churn: Churn | None = None, eps_scale: float = 1.0) -> SkipSchedule:
        """Paper §5.2: rho moves linearly (in log-sigma) between 1.0 and ``rho_0`` over [sigma_min, sigma_max]."""
        return families.linear_in_time(cls, rho_0, num_skip_points, direction=direction, sigma_min=sigma_min,
                                       sigma_max=sigma_max, num_intervals=num_intervals, churn=churn,
                                       eps_scale=eps_scale)

    # -- JSON: the skipsearch.schedule/v2 codec (which also reads v1) lives in skipsearch.schedule.codec

    def to_dict(self) -> dict[str, Any]:
        """The ``skipsearch.schedule/v2`` document as plain JSON-ready Python (inf written as "inf")."""
        return codec.to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return codec.to_json(self, indent=indent)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON document (creating parent folders) and return the path."""
        return codec.save(self, path)

    @classmethod
    def from_dict(cls, d: Any, *, expect_model: ModelIdentity | None = None) -> SkipSchedule:
        """Parse and strictly validate a ``skipsearch.schedule/v2`` (or v1) document; optionally check the model."""
        return codec.from_dict(cls, d, expect_model=expect_model)

    @classmethod
    def from_json(cls, text: str, *, expect_model: ModelIdentity | None = None,
                  source: str = "<string>") -> SkipSchedule:
        """Parse a JSON document; ``source`` (a path) is named in the message if the text is not valid JSON."""
        return codec.from_json(cls, text, expect_model=expect_model, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_model: ModelIdentity | None = None) -> SkipSchedule:
        """Read a schedule file; every error message starts with the path."""
        return codec.load(cls, path, expect_model=expect_model)
