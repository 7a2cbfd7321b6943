"""Skip-Tuning schedules: which coefficient rho multiplies each UNet skip tensor, per noise-level interval.

Skip-Tuning (arXiv 2402.15170) feeds a decoder block ``concat(rho_i * d_i, u_i)`` instead of ``concat(d_i, u_i)``.
A :class:`SkipSchedule` holds one row of ``rho`` per sigma interval and one column per skip point; column 0 is the
bottom skip point (lowest resolution, consumed first by the decoder). Schedules are immutable, compare by content
and travel as versioned JSON (``skipsearch.schedule/v1``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

SCHEMA = "skipsearch.schedule/v1"
RHO_RANGE = (0.0, 2.0)
EPS_SCALE_RANGE = (0.5, 2.0)
# One interval covering every sigma: the schedule is layer-wise only.
LAYER_WISE_BOUNDS: tuple[float, ...] = (math.inf, 0.0)
_DOC_FIELDS = ("schema", "family", "params", "rho", "sigma_bounds", "churn", "eps_scale", "model", "sampler", "nfe",
               "provenance")
_METADATA_FIELDS = ("model", "sampler", "nfe", "provenance")
_INF_STRINGS = {"inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf,
                "-inf": -math.inf, "-infinity": -math.inf, "nan": math.nan}


class ScheduleError(ValueError):
    """One-line, actionable message naming the offending field, e.g. 'schedule.rho[1][3]: 2.5 is outside [0, 2]'."""


# --------------------------------------------------------------------------------------------------------------------
# Small validation helpers


def _fmt(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True as a sigma or rho is always a mistake.
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _to_float(value: Any, where: str) -> float:
    """A float from a number or an 'inf'/'Infinity'/'nan' string (JSON has no non-finite literals)."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _INF_STRINGS:
        return _INF_STRINGS[value.strip().lower()]
    raise ScheduleError(f"{where}: {_fmt(value)} is not a number")


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value > 0:
        return int(value)
    raise ScheduleError(f"{where}: {_fmt(value)} must be a positive integer")


def _float_for_json(value: float) -> float | str:
    # JSON has no Infinity literal; the document spells it "inf".
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def _jsonable(value: Any, where: str) -> Any:
    """A plain-Python, JSON-ready deep copy of free-form params/provenance (numpy scalars and tuples converted)."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ScheduleError(f"{where}: key {_fmt(key)} is not a string (JSON object keys must be strings)")
            out[key] = _jsonable(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    raise ScheduleError(f"{where}: {type(value).__name__} value {_fmt(value)} cannot be stored in JSON")


def _encode_floats(value: Any) -> Any:
    """Replace non-finite floats inside params/provenance by strings so that the JSON stays standard."""
    if isinstance(value, dict):
        return {key: _encode_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encode_floats(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else _float_for_json(value)
    return value


# --------------------------------------------------------------------------------------------------------------------
# Value objects


@dataclass(frozen=True)
class Churn:
    """EDM stochastic sampling strength (Karras et al. 2022, Alg. 2); the defaults mean deterministic sampling."""

    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        for name in ("s_churn", "s_min", "s_max", "s_noise"):
            value = _to_float(getattr(self, name), f"churn.{name}")
            if math.isnan(value) or (math.isinf(value) and name != "s_max"):
                raise ScheduleError(f"churn.{name}: {value} must be finite")
            object.__setattr__(self, name, value)
        if self.s_churn < 0:
            raise ScheduleError(f"churn.s_churn: {self.s_churn} must be >= 0")
        if self.s_min < 0:
            raise ScheduleError(f"churn.s_min: {self.s_min} must be >= 0")
        if self.s_max < self.s_min:
            raise ScheduleError(f"churn.s_max: {self.s_max} must be >= s_min ({self.s_min})")
        if self.s_noise <= 0:
            raise ScheduleError(f"churn.s_noise: {self.s_noise} must be > 0")

    @property
    def is_deterministic(self) -> bool:
        """True when no noise is injected (s_churn == 0)."""
        return self.s_churn == 0.0

    def to_dict(self) -> dict[str, float | str]:
        return {name: _float_for_json(getattr(self, name)) for name in ("s_churn", "s_min", "s_max", "s_noise")}

    @classmethod
    def from_dict(cls, d: Any, where: str = "churn") -> Churn:
        """Parse a ``churn`` block; unknown or non-numeric fields raise ScheduleError naming ``where``."""
        if not isinstance(d, Mapping):
            raise ScheduleError(f"{where}: must be an object with s_churn, s_min, s_max, s_noise, got {_fmt(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ScheduleError(f"{where}: unknown field {_fmt(key)} (known: {', '.join(sorted(known))})")
        values = {key: _to_float(value, f"{where}.{key}") for key, value in d.items()}
        try:
            return cls(**values)
        except ScheduleError as exc:
            # Re-root 'churn.x' under the caller's path, e.g. 'schedule.churn.x'.
            raise ScheduleError(f"{where}{str(exc)[len('churn'):]}") from None


@dataclass(frozen=True)
class ModelIdentity:
    """Which pretrained network a schedule was searched for: a readable name, the weights' sha256, skip count."""

    name: str
    sha256: str
    num_skip_points: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ScheduleError(f"model.name: {_fmt(self.name)} must be a non-empty string")
        if not isinstance(self.sha256, str):
            raise ScheduleError(f"model.sha256: {_fmt(self.sha256)} must be a string (hex digest, or '' if unknown)")
        object.__setattr__(self, "num_skip_points", _positive_int(self.num_skip_points, "model.num_skip_points"))

    def describe(self) -> str:
        return f"'{self.name}' ({self.num_skip_points} skip points)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "num_skip_points": self.num_skip_points}

    @classmethod
    def from_dict(cls, d: Any, where: str = "model") -> ModelIdentity:
        if not isinstance(d, Mapping):
            raise ScheduleError(f"{where}: must be an object with name, sha256, num_skip_points, got {_fmt(d)}")
        for key in d:
            if key not in ("name", "sha256", "num_skip_points"):
                raise ScheduleError(f"{where}: unknown field {_fmt(key)} (known: name, num_skip_points, sha256)")
        for key in ("name", "sha256", "num_skip_points"):
            if key not in d:
                raise ScheduleError(f"{where}.{key}: missing")
        try:
            return cls(name=d["name"], sha256=d["sha256"], num_skip_points=d["num_skip_points"])
        except ScheduleError as exc:
            raise ScheduleError(f"{where}{str(exc)[len('model'):]}") from None


# --------------------------------------------------------------------------------------------------------------------
# Sigma interval helpers


def _validate_bounds(bounds: Any, num_intervals: int | None,
                     where: str = "schedule.sigma_bounds") -> tuple[float, ...]:
    """Strictly descending, non-negative sigma bounds; bounds[0] may be inf. Returns them as a float tuple."""
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, (Sequence, np.ndarray)):
        raise ScheduleError(f"{where}: must be a list of numbers, got {_fmt(bounds)}")
    values = tuple(_to_float(b, f"{where}[{i}]") for i, b in enumerate(bounds))
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


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """EDM's sampling sigmas t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, descending, no 0."""
    num_steps = _positive_int(num_steps, "num_steps")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ScheduleError(f"sigma_min/sigma_max: need 0 < sigma_min < sigma_max < inf, "
                            f"got {sigma_min}, {sigma_max}")
    if not rho > 0:
        raise ScheduleError(f"rho: {rho} must be > 0")
    if num_steps == 1:
        return np.array([float(sigma_max)])
    ramp = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def karras_interval_bounds(sigma_min: float, sigma_max: float, num_steps: int, steps_per_interval: int,
                           rho: float = 7.0) -> tuple[float, ...]:
    """Sigma bounds grouping the Karras sampling sigmas into windows of ``steps_per_interval`` consecutive steps.

    Each inner bound sits at the geometric midpoint between the last sigma of one window and the first of the next;
    outer bounds are inf and 0 so every sigma is covered. The last window may hold fewer steps. The paper's window
    search (13 windows of 4 steps over [0.002, 80]) is ``karras_interval_bounds(0.002, 80, 52, 4)``.
    """
    steps_per_interval = _positive_int(steps_per_interval, "steps_per_interval")
    sigmas = karras_sigmas(sigma_min, sigma_max, num_steps, rho)
    inner = [math.sqrt(sigmas[k - 1] * sigmas[k]) for k in range(steps_per_interval, len(sigmas), steps_per_interval)]
    return (math.inf, *(float(b) for b in inner), 0.0)


# --------------------------------------------------------------------------------------------------------------------
# The schedule


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

    __hash__ = None  # type: ignore[assignment]  # content equality over a numpy array: not hashable

    def __post_init__(self) -> None:
        rho = self._validated_rho(self.rho)
        rho.flags.writeable = False
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "sigma_bounds", _validate_bounds(self.sigma_bounds, rho.shape[0]))
        if not isinstance(self.churn, Churn):
            raise ScheduleError(f"schedule.churn: must be a Churn, got {_fmt(self.churn)}")
        eps_scale = _to_float(self.eps_scale, "schedule.eps_scale")
        if not EPS_SCALE_RANGE[0] <= eps_scale <= EPS_SCALE_RANGE[1]:
            raise ScheduleError(f"schedule.eps_scale: {eps_scale} is outside [0.5, 2] (1 = off)")
        object.__setattr__(self, "eps_scale", eps_scale)
        if not isinstance(self.family, str) or not self.family:
            raise ScheduleError(f"schedule.family: {_fmt(self.family)} must be a non-empty string")
        for name in ("params", "provenance"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ScheduleError(f"schedule.{name}: must be an object (dict), got {_fmt(value)}")
            # A private JSON-ready copy: the caller's dict cannot change a frozen schedule, and save() cannot fail
            # late (after a long study) on a value JSON cannot hold.
            object.__setattr__(self, name, _jsonable(value, f"schedule.{name}"))
        if self.model is not None:
            if not isinstance(self.model, ModelIdentity):
                raise ScheduleError(f"schedule.model: must be a ModelIdentity or None, got {_fmt(self.model)}")
            if self.model.num_skip_points != rho.shape[1]:
                raise ScheduleError(f"schedule.model.num_skip_points: model {self.model.describe()} does not match "
                                    f"rho's {rho.shape[1]} columns")
        if self.sampler is not None and (not isinstance(self.sampler, str) or not self.sampler):
            raise ScheduleError(f"schedule.sampler: {_fmt(self.sampler)} must be a non-empty string or null")
        if self.nfe is not None:
            object.__setattr__(self, "nfe", _positive_int(self.nfe, "schedule.nfe"))
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
                raise ScheduleError(f"{where}: must be a non-empty 2-D list of numbers, got {_fmt(value)}")
            width = None
            for i, row in enumerate(value):
                if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
                    raise ScheduleError(f"{where}[{i}]: must be a list of numbers (one per skip point), "
                                        f"got {_fmt(row)}")
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    raise ScheduleError(f"{where}[{i}]: has {len(row)} values but row 0 has {width} "
                                        "(every interval needs one value per skip point)")
                for j, item in enumerate(row):
                    _to_float(item, f"{where}[{i}][{j}]")
            rows = [[_to_float(item, "") for item in row] for row in value]
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
            raise ScheduleError(f"{where}[{i}][{j}]: {float(rho[i, j])} is outside [0, 2]")
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
                and self.provenance == other.provenance)

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
            raise ScheduleError(f"expect_model: must be a ModelIdentity, got {_fmt(expected)}")
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

    # -- constructors

    @classmethod
    def _layer_wise(cls, row: Sequence[float], family: str, params: dict, sigma_bounds: Sequence[float] | None,
                    churn: Churn | None, eps_scale: float) -> SkipSchedule:
        """One row repeated over every interval of ``sigma_bounds`` (default: a single interval)."""
        bounds = _validate_bounds(LAYER_WISE_BOUNDS if sigma_bounds is None else sigma_bounds, None)
        matrix = np.tile(np.asarray(row, dtype=np.float64), (len(bounds) - 1, 1))
        return cls(rho=matrix, sigma_bounds=bounds, churn=churn or Churn(), eps_scale=eps_scale, family=family,
                   params=params)

    @classmethod
    def constant(cls, rho: float, num_skip_points: int, *, sigma_bounds: Sequence[float] | None = None,
                 churn: Churn | None = None, eps_scale: float = 1.0) -> SkipSchedule:
        """The same rho at every skip point and sigma (the paper's single-rho setting, e.g. rho = 0.78)."""
        rho = _to_float(rho, "rho")
        k = _positive_int(num_skip_points, "num_skip_points")
        return cls._layer_wise([rho] * k, "constant", {"rho": rho}, sigma_bounds, churn, eps_scale)

    @classmethod
    def identity(cls, num_skip_points: int, *, sigma_bounds: Sequence[float] | None = None) -> SkipSchedule:
        """rho = 1 everywhere: the unmodified network."""
        k = _positive_int(num_skip_points, "num_skip_points")
        return cls._layer_wise([1.0] * k, "identity", {}, sigma_bounds, None, 1.0)

    @classmethod
    def linear(cls, rho_bottom: float, rho_top: float, num_skip_points: int, *,
               sigma_bounds: Sequence[float] | None = None, churn: Churn | None = None,
               eps_scale: float = 1.0) -> SkipSchedule:
        """The paper's layer-wise rule rho_i = rho_bottom + (rho_top - rho_bottom) i/(K-1); K = 1 gives rho_bottom."""
        bottom, top = _to_float(rho_bottom, "rho_bottom"), _to_float(rho_top, "rho_top")
        k = _positive_int(num_skip_points, "num_skip_points")
        row = [bottom] if k == 1 else [bottom + (top - bottom) * i / (k - 1) for i in range(k)]
        return cls._layer_wise(row, "linear", {"rho_bottom": bottom, "rho_top": top}, sigma_bounds, churn, eps_scale)

    @classmethod
    def per_layer(cls, values: Sequence[float], *, sigma_bounds: Sequence[float] | None = None,
                  churn: Churn | None = None, eps_scale: float = 1.0) -> SkipSchedule:
        """One free value per skip point, bottom first."""
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)) or len(values) == 0:
            raise ScheduleError(f"values: must be a non-empty list of numbers, got {_fmt(values)}")
        row = [_to_float(v, f"values[{i}]") for i, v in enumerate(values)]
        return cls._layer_wise(row, "per_layer", {"values": row}, sigma_bounds, churn, eps_scale)

    @classmethod
    def per_level(cls, level_values: Sequence[float], level_of_point: Sequence[int], *,
                  sigma_bounds: Sequence[float] | None = None, churn: Churn | None = None,
                  eps_scale: float = 1.0) -> SkipSchedule:
        """One value per resolution level, expanded to skip points by ``level_of_point[i]`` (the level of point i)."""
        if isinstance(level_values, (str, bytes)) or not isinstance(level_values, (Sequence, np.ndarray)) \
                or len(level_values) == 0:
            raise ScheduleError(f"level_values: must be a non-empty list of numbers, got {_fmt(level_values)}")
        if isinstance(level_of_point, (str, bytes)) or not isinstance(level_of_point, (Sequence, np.ndarray)) \
                or len(level_of_point) == 0:
            raise ScheduleError(f"level_of_point: must be a non-empty list of level indices, "
                                f"got {_fmt(level_of_point)}")
        levels = [_to_float(v, f"level_values[{i}]") for i, v in enumerate(level_values)]
        mapping = []
        for i, level in enumerate(level_of_point):
            if not isinstance(level, (int, np.integer)) or isinstance(level, (bool, np.bool_)) \
                    or not 0 <= level < len(levels):
                raise ScheduleError(f"level_of_point[{i}]: {_fmt(level)} is not a level index in "
                                    f"[0, {len(levels) - 1}] ({len(levels)} level values given)")
            mapping.append(int(level))
        row = [levels[level] for level in mapping]
        return cls._layer_wise(row, "per_level", {"level_values": levels, "level_of_point": mapping}, sigma_bounds,
                               churn, eps_scale)

    @classmethod
    def intervals(cls, matrix: Sequence[Sequence[float]], sigma_bounds: Sequence[float], *,
                  churn: Churn | None = None, eps_scale: float = 1.0) -> SkipSchedule:
        """Dense free form: one row per interval of ``sigma_bounds``."""
        return cls(rho=matrix, sigma_bounds=sigma_bounds, churn=churn or Churn(), eps_scale=eps_scale,
                   family="intervals", params={})

    @classmethod
    def window(cls, sigma_bounds: Sequence[float], window: int, rho: float | Sequence[float],
               num_skip_points: int | None = None, *, churn: Churn | None = None,
               eps_scale: float = 1.0) -> SkipSchedule:
        """The paper's window search: ``rho`` only in interval ``window``; 1 elsewhere.

        ``rho`` is one value for every skip point or a per-point sequence (then ``num_skip_points`` may be left out).
        """
        bounds = _validate_bounds(sigma_bounds, None, "sigma_bounds")
        n = len(bounds) - 1
        if not isinstance(window, (int, np.integer)) or isinstance(window, (bool, np.bool_)) or not 0 <= window < n:
            raise ScheduleError(f"window: {_fmt(window)} is not an interval index in [0, {n - 1}]")
        if isinstance(rho, (str, bytes)) or not isinstance(rho, (Sequence, np.ndarray)):
            value = _to_float(rho, "rho")
            k = _positive_int(num_skip_points, "num_skip_points")
            row, param = [value] * k, value
        else:
            row = [_to_float(v, f"rho[{i}]") for i, v in enumerate(rho)]
            if num_skip_points is not None and _positive_int(num_skip_points, "num_skip_points") != len(row):
                raise ScheduleError(f"rho: has {len(row)} values but num_skip_points is {num_skip_points}")
            k, param = len(row), row
        matrix = np.ones((n, k))
        matrix[window] = row
        return cls(rho=matrix, sigma_bounds=bounds, churn=churn or Churn(), eps_scale=eps_scale, family="window",
                   params={"window": int(window), "rho": param})

    @classmethod
    def linear_in_time(cls, rho_0: float, num_skip_points: int, *,
                       direction: Literal["decreasing", "increasing"], sigma_min: float, sigma_max: float,
                       num_intervals: int = 8, churn: Churn | None = None, eps_scale: float = 1.0) -> SkipSchedule:
        """Paper §5.2: rho moves linearly between 1.0 and ``rho_0`` over [sigma_min, sigma_max], same at every point.

        "decreasing": 1.0 at time 0 (sigma_min) falling to rho_0 at time T (sigma_max), preferred by EDM;
        "increasing": rho_0 at sigma_min rising to 1.0 at sigma_max. "Linear" is in log-sigma: the intervals are equal
        in log-sigma and each takes the value at its log-sigma midpoint; outer bounds become inf and 0.
        """
        value = _to_float(rho_0, "rho_0")
        k = _positive_int(num_skip_points, "num_skip_points")
        n = _positive_int(num_intervals, "num_intervals")
        if direction not in ("decreasing", "increasing"):
            raise ScheduleError(f"direction: {_fmt(direction)} must be 'decreasing' or 'increasing'")
        lo, hi = _to_float(sigma_min, "sigma_min"), _to_float(sigma_max, "sigma_max")
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

    # -- JSON

    def to_dict(self) -> dict[str, Any]:
        """The ``skipsearch.schedule/v1`` document as plain JSON-ready Python (inf written as "inf")."""
        return {
            "schema": SCHEMA,
            "family": self.family,
            "params": _encode_floats(copy.deepcopy(self.params)),
            "rho": self.rho.tolist(),
            "sigma_bounds": [_float_for_json(b) for b in self.sigma_bounds],
            "churn": self.churn.to_dict(),
            "eps_scale": self.eps_scale,
            "model": None if self.model is None else self.model.to_dict(),
            "sampler": self.sampler,
            "nfe": self.nfe,
            "provenance": _encode_floats(copy.deepcopy(self.provenance)),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON document (creating parent folders) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so a reader (dashboard, another worker) never sees half a file.
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: Any, *, expect_model: ModelIdentity | None = None) -> SkipSchedule:
        """Parse and strictly validate a ``skipsearch.schedule/v1`` document; optionally check it fits a model."""
        if not isinstance(d, Mapping):
            raise ScheduleError(f"schedule document must be a JSON object, got {type(d).__name__}")
        if "schema" not in d:
            raise ScheduleError(f"schedule.schema: missing; this skipsearch reads {SCHEMA}")
        if d["schema"] != SCHEMA:
            raise ScheduleError(f"unsupported schedule schema {_fmt(d['schema'])}; this skipsearch reads {SCHEMA}")
        for key in d:
            if key not in _DOC_FIELDS:
                raise ScheduleError(f"schedule: unknown field {_fmt(key)} (known: {', '.join(_DOC_FIELDS)})")
        for key in ("rho", "sigma_bounds"):
            if key not in d:
                raise ScheduleError(f"schedule.{key}: missing")
        churn = Churn() if d.get("churn") is None else Churn.from_dict(d["churn"], "schedule.churn")
        model = None if d.get("model") is None else ModelIdentity.from_dict(d["model"], "schedule.model")
        params = {} if d.get("params") is None else d["params"]
        provenance = {} if d.get("provenance") is None else d["provenance"]
        schedule = cls(rho=d["rho"], sigma_bounds=d["sigma_bounds"], churn=churn,
                       eps_scale=d.get("eps_scale", 1.0), family=d.get("family", "free"), params=params,
                       model=model, sampler=d.get("sampler"), nfe=d.get("nfe"), provenance=provenance)
        if expect_model is not None:
            schedule.check_model(expect_model)
        return schedule

    @classmethod
    def from_json(cls, text: str, *, expect_model: ModelIdentity | None = None,
                  source: str = "<string>") -> SkipSchedule:
        """Parse a JSON document; ``source`` (a path) is named in the message if the text is not valid JSON."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScheduleError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                                f"{exc.msg}") from None
        if not isinstance(d, dict):
            raise ScheduleError(f"{source}: schedule document must be a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, expect_model=expect_model)

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_model: ModelIdentity | None = None) -> SkipSchedule:
        """Read a schedule file; every error message starts with the path."""
        path = Path(path)
        if not path.is_file():
            raise ScheduleError(f"schedule file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScheduleError(f"{path}: cannot read schedule file: {exc}") from None
        try:
            return cls.from_json(text, expect_model=expect_model, source=str(path))
        except ScheduleError as exc:
            message = str(exc)
            raise ScheduleError(message if message.startswith(str(path)) else f"{path}: {message}") from None
