"""The schedule's value objects: EDM churn settings, the time grid, and the identity of the model it is for."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from skipsearch.schedule.validation import ScheduleError, float_for_json, fmt, positive_int, to_float

CHURN_NOISE = ("active", "every-step")


def _check_block(cls: type, d: Any, where: str, expected: str) -> None:
    """ScheduleError naming ``where`` unless ``d`` is an object whose keys are all fields of dataclass ``cls``."""
    if not isinstance(d, Mapping):
        raise ScheduleError(f"{where}: must be an object with {expected}, got {fmt(d)}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in known:
            raise ScheduleError(f"{where}: unknown field {fmt(key)} (known: {', '.join(sorted(known))})")


@dataclass(frozen=True)
class Churn:
    """EDM stochastic sampling strength (Karras et al. 2022, Alg. 2); the defaults mean deterministic sampling."""

    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0
    # "active": noise is drawn only at steps that churn (gamma > 0); "every-step": drawn at every step as EDM's
    # sampler does (zero-scaled where gamma = 0), so EDM's per-image seeds reproduce EDM's images bit for bit.
    noise: str = "active"

    def __post_init__(self) -> None:
        if self.noise not in CHURN_NOISE:
            raise ScheduleError(f"churn.noise: {fmt(self.noise)} must be one of {', '.join(CHURN_NOISE)}")
        for name in ("s_churn", "s_min", "s_max", "s_noise"):
            value = to_float(getattr(self, name), f"churn.{name}")
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
        out: dict[str, float | str] = {name: float_for_json(getattr(self, name))
                                       for name in ("s_churn", "s_min", "s_max", "s_noise")}
        if self.noise != "active":  # the default is left out: such a block is also a valid v1 one
            out["noise"] = self.noise
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "churn") -> Churn:
        """Parse a ``churn`` block; unknown or non-numeric fields raise ScheduleError naming ``where``."""
        _check_block(cls, d, where, "s_churn, s_min, s_max, s_noise")
        values: dict[str, Any] = {key: value if key == "noise" else to_float(value, f"{where}.{key}")
                                  for key, value in d.items()}
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
            raise ScheduleError(f"model.name: {fmt(self.name)} must be a non-empty string")
        if not isinstance(self.sha256, str):
            raise ScheduleError(f"model.sha256: {fmt(self.sha256)} must be a string (hex digest, or '' if unknown)")
        object.__setattr__(self, "num_skip_points", positive_int(self.num_skip_points, "model.num_skip_points"))

    def describe(self) -> str:
        return f"'{self.name}' ({self.num_skip_points} skip points)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "num_skip_points": self.num_skip_points}

    @classmethod
    def from_dict(cls, d: Any, where: str = "model") -> ModelIdentity:
        if not isinstance(d, Mapping):
            raise ScheduleError(f"{where}: must be an object with name, sha256, num_skip_points, got {fmt(d)}")
        for key in d:
            if key not in ("name", "sha256", "num_skip_points"):
                raise ScheduleError(f"{where}: unknown field {fmt(key)} (known: name, num_skip_points, sha256)")
        for key in ("name", "sha256", "num_skip_points"):
            if key not in d:
                raise ScheduleError(f"{where}.{key}: missing")
        try:
            return cls(name=d["name"], sha256=d["sha256"], num_skip_points=d["num_skip_points"])
        except ScheduleError as exc:
            raise ScheduleError(f"{where}{str(exc)[len('model'):]}") from None


GRID_KINDS = ("karras", "knots")


@dataclass(frozen=True)
class TimeGrid:
    """The sampler's noise levels as a law valid for any step count N (the grid is part of a schedule).

    ``karras``: EDM's grid (sigma_max^(1/rho) -> sigma_min^(1/rho), to the power rho); ``sigma_min``/``sigma_max``
    None mean the model's. ``knots``: a free monotone grid given by its K+1 sigmas (descending); N steps take them
    exactly when N = K+1, else interpolate log-sigma linearly along the step index (as Align-Your-Steps does).
    Every grid ends with a final step to sigma = 0. Evaluated by :func:`skipsearch.sampling.grids.grid_sigmas`.
    """

    kind: str = "karras"
    rho: float = 7.0
    sigma_min: float | None = None
    sigma_max: float | None = None
    knots: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in GRID_KINDS:
            raise ScheduleError(f"grid.kind: {fmt(self.kind)} must be one of {', '.join(GRID_KINDS)}")
        if self.kind == "karras":
            rho = to_float(self.rho, "grid.rho")
            if not 0 < rho < math.inf:
                raise ScheduleError(f"grid.rho: {rho} must be a positive number")
            object.__setattr__(self, "rho", rho)
            ends = []
            for name in ("sigma_min", "sigma_max"):
                value = getattr(self, name)
                if value is not None:
                    value = to_float(value, f"grid.{name}")
                    if not 0 < value < math.inf:
                        raise ScheduleError(f"grid.{name}: {value} must be a positive finite number")
                    object.__setattr__(self, name, value)
                ends.append(value)
            if None not in ends and not ends[0] < ends[1]:
                raise ScheduleError(f"grid: sigma_min {ends[0]} must be below sigma_max {ends[1]}")
            if self.knots:
                raise ScheduleError("grid.knots: only a 'knots' grid has knots")
            return
        if isinstance(self.knots, (str, bytes)) or not isinstance(self.knots, (list, tuple)) or len(self.knots) < 2:
            raise ScheduleError(f"grid.knots: a 'knots' grid needs at least 2 sigmas, got {fmt(self.knots)}")
        knots = tuple(to_float(v, f"grid.knots[{i}]") for i, v in enumerate(self.knots))
        for i, value in enumerate(knots):
            if not 0 < value < math.inf:
                raise ScheduleError(f"grid.knots[{i}]: {value} must be a positive finite sigma")
            if i and not value < knots[i - 1]:
                raise ScheduleError(f"grid.knots[{i}]: {value} must be below the one before ({knots[i - 1]}): the "
                                    "sigmas descend")
        object.__setattr__(self, "knots", knots)

    def describe(self) -> str:
        if self.kind == "knots":
            return f"free grid of {len(self.knots)} knots ({self.knots[0]:.3g} -> {self.knots[-1]:.3g})"
        ends = "" if self.sigma_min is None and self.sigma_max is None else (
            f", sigma {self.sigma_max if self.sigma_max is not None else 'model'} -> "
            f"{self.sigma_min if self.sigma_min is not None else 'model'}")
        return f"karras rho={self.rho:g}{ends}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "knots":
            return {"kind": "knots", "knots": list(self.knots)}
        return {"kind": "karras", "rho": self.rho, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    @classmethod
    def from_dict(cls, d: Any, where: str = "grid") -> TimeGrid:
        _check_block(cls, d, where, "kind and its parameters")
        values = dict(d)
        if isinstance(values.get("knots"), list):
            values["knots"] = tuple(values["knots"])
        try:
            return cls(**values)
        except ScheduleError as exc:
            raise ScheduleError(f"{where}{str(exc)[len('grid'):]}") from None
