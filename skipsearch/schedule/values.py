"""The schedule's value objects: EDM churn settings and the identity of the model a schedule was searched for."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from skipsearch.schedule.validation import ScheduleError, float_for_json, fmt, positive_int, to_float


@dataclass(frozen=True)
class Churn:
    """EDM stochastic sampling strength (Karras et al. 2022, Alg. 2); the defaults mean deterministic sampling."""

    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self) -> None:
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
        return {name: float_for_json(getattr(self, name)) for name in ("s_churn", "s_min", "s_max", "s_noise")}

    @classmethod
    def from_dict(cls, d: Any, where: str = "churn") -> Churn:
        """Parse a ``churn`` block; unknown or non-numeric fields raise ScheduleError naming ``where``."""
        if not isinstance(d, Mapping):
            raise ScheduleError(f"{where}: must be an object with s_churn, s_min, s_max, s_noise, got {fmt(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ScheduleError(f"{where}: unknown field {fmt(key)} (known: {', '.join(sorted(known))})")
        values = {key: to_float(value, f"{where}.{key}") for key, value in d.items()}
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
