"""Search spaces: Optuna parameters (define-by-run) -> ``SkipSchedule``.

Each space is a small class with ``suggest(trial) -> SkipSchedule`` and ``baseline(rho_bottom, rho_top)`` giving
the parameters that reproduce a linear bottom->top schedule, so baselines (rho = 1, the paper's recipe) can be
enqueued in any space. A ``+eps`` suffix adds epsilon scaling (Ning et al. 2023) to any space; churn parameters are
added when the sampler is stochastic and churn search is on.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any

from skipsearch.errors import SkipsearchError
from skipsearch.registry import Registry
from skipsearch.sampling.grids import karras_interval_bounds
from skipsearch.schedule import Churn, SkipSchedule
from skipsearch.schedule.families import linear_rho
from skipsearch.search.definition import SpaceBounds


class UnknownSpaceError(SkipsearchError, ValueError):
    """A search-space name that does not exist."""


@dataclass(frozen=True)
class SpaceContext:
    """What a space needs to know about the model and the sampler."""

    num_skip_points: int
    level_of_point: list[int]
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    num_steps: int = 5  # sampler steps at the study's NFE (for sigma-interval bounds)
    stochastic: bool = False  # sampler supports EDM churn


def paper_rho_bottom(nfe: int) -> float:
    """The paper's best linear rho_bottom, interpolated in log NFE: 0.68 at NFE 9, ~0.78 at 19, ~0.85 at 39."""
    value = 0.68 + 0.17 * math.log(max(nfe, 1) / 9) / math.log(39 / 9)
    return float(min(0.95, max(0.5, value)))


class SearchSpace(abc.ABC):
    """Base: subclasses implement ``_rho(trial)`` returning the schedule's rho part."""

    name = ""
    description = ""
    searches_rho = True  # False for spaces that keep rho = 1 (no calibration of rho bounds needed)
    finetune: str | None = None  # a trial kind that also changes the weights ("s2dm": skipsearch.search.finetune)

    def __init__(self, ctx: SpaceContext, bounds: SpaceBounds = SpaceBounds(), eps: bool = False):
        self.ctx, self.bounds, self.eps = ctx, bounds, eps

    def _rho_param(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.bounds.rho_min, self.bounds.rho_max)

    @abc.abstractmethod
    def _rho(self, trial: Any) -> SkipSchedule:
        """The trial's schedule without churn and eps scaling (``suggest`` adds those)."""

    @abc.abstractmethod
    def _linear_params(self, rho_bottom: float, rho_top: float) -> dict[str, float]:
        """This space's parameters that reproduce the linear bottom->top schedule (before clipping)."""

    def suggest(self, trial: Any) -> SkipSchedule:
        schedule = self._rho(trial)
        eps_scale = trial.suggest_float("eps_scale", self.bounds.eps_min, self.bounds.eps_max) if self.eps else 1.0
        churn = Churn()
        if self.ctx.stochastic and self.bounds.search_churn:
            churn = Churn(s_churn=trial.suggest_float("s_churn", 0.0, self.bounds.churn_max),
                          s_min=trial.suggest_float("s_min", 0.0, 1.0),
                          s_max=trial.suggest_float("s_max", 1.0, self.ctx.sigma_max, log=True),
                          s_noise=trial.suggest_float("s_noise", 1.0, 1.010))
        return SkipSchedule(rho=schedule.rho, sigma_bounds=schedule.sigma_bounds, churn=churn, eps_scale=eps_scale,
                            family=schedule.family, params=schedule.params)

    def baseline(self, rho_bottom: float, rho_top: float = 1.0, eps_scale: float = 1.0) -> dict[str, float]:
        """Parameters of this space closest to a linear schedule (clipped to the bounds), for enqueue_trial."""
        params = {k: min(self.bounds.rho_max, max(self.bounds.rho_min, v)) if isinstance(v, float) else v
                  for k, v in self._linear_params(rho_bottom, rho_top).items()}
        if self.eps:
            params["eps_scale"] = min(self.bounds.eps_max, max(self.bounds.eps_min, eps_scale))
        if self.ctx.stochastic and self.bounds.search_churn:
            params.update(s_churn=0.0, s_min=0.0, s_max=self.ctx.sigma_max, s_noise=1.0)
        return params


class ConstantSpace(SearchSpace):
    name, description = "constant", "one rho for every skip point"

    def _rho(self, trial):
        return SkipSchedule.constant(self._rho_param(trial, "rho"), self.ctx.num_skip_points)

    def _linear_params(self, rho_bottom, rho_top):
        return {"rho": (rho_bottom + rho_top) / 2}


class LinearSpace(SearchSpace):
    name, description = "linear", "the paper's linear bottom->top rule (rho_bottom, rho_top)"

    def _rho(self, trial):
        return SkipSchedule.linear(self._rho_param(trial, "rho_bottom"), self._rho_param(trial, "rho_top"),
                                   self.ctx.num_skip_points)

    def _linear_params(self, rho_bottom, rho_top):
        return {"rho_bottom": rho_bottom, "rho_top": rho_top}


class PerLevelSpace(SearchSpace):
    name, description = "per-level", "one rho per resolution level"

    def _levels(self) -> int:
        return max(self.ctx.level_of_point) + 1

    def _rho(self, trial):
        values = [self._rho_param(trial, f"rho_level{i}") for i in range(self._levels())]
        return SkipSchedule.per_level(values, self.ctx.level_of_point)

    def _linear_params(self, rho_bottom, rho_top):
        return {f"rho_level{i}": v for i, v in enumerate(linear_rho(rho_bottom, rho_top, self._levels()))}


class PerLayerSpace(SearchSpace):
    name, description = "per-layer", "a free rho per skip point"

    def _rho(self, trial):
        return SkipSchedule.per_layer([self._rho_param(trial, f"rho{i}") for i in range(self.ctx.num_skip_points)])

    def _linear_params(self, rho_bottom, rho_top):
        return {f"rho{i}": v for i, v in enumerate(linear_rho(rho_bottom, rho_top, self.ctx.num_skip_points))}


class IntervalLinearSpace(SearchSpace):
    name, description = "intervals", "K sigma-intervals, each with its own linear bottom->top rule"

    def bounds_for_sigma(self) -> tuple[float, ...]:
        k = max(1, min(self.bounds.num_intervals, self.ctx.num_steps))
        per = math.ceil(self.ctx.num_steps / k)
        return karras_interval_bounds(self.ctx.sigma_min, self.ctx.sigma_max, self.ctx.num_steps, per)

    def _rho(self, trial):
        bounds = self.bounds_for_sigma()
        rows = []
        for i in range(len(bounds) - 1):
            bottom, top = self._rho_param(trial, f"rho_bottom_i{i}"), self._rho_param(trial, f"rho_top_i{i}")
            rows.append(SkipSchedule.linear(bottom, top, self.ctx.num_skip_points).rho[0].tolist())
        return SkipSchedule.intervals(rows, bounds)

    def _linear_params(self, rho_bottom, rho_top):
        n = len(self.bounds_for_sigma()) - 1
        return {f"{kind}_i{i}": v for i in range(n)
                for kind, v in (("rho_bottom", rho_bottom), ("rho_top", rho_top))}


class LinearInTimeSpace(SearchSpace):
    name, description = "linear-in-time", "rho linear in log-sigma from rho_0 to 1.0 (paper §5.2), either direction"

    def _rho(self, trial):
        direction = trial.suggest_categorical("direction", ["decreasing", "increasing"])
        return SkipSchedule.linear_in_time(self._rho_param(trial, "rho_0"), self.ctx.num_skip_points,
                                           direction=direction, sigma_min=self.ctx.sigma_min,
                                           sigma_max=self.ctx.sigma_max)

    def _linear_params(self, rho_bottom, rho_top):
        return {"direction": "decreasing", "rho_0": float(rho_bottom)}



class EpsScaleSpace(SearchSpace):
    name, description = "eps-scale", "epsilon scaling alone (rho = 1): the exposure-bias baseline"
    searches_rho = False

    def __init__(self, ctx, bounds=SpaceBounds(), eps=True):
        super().__init__(ctx, bounds, eps=True)

    def _rho(self, trial):
        return SkipSchedule.identity(self.ctx.num_skip_points)

    def _linear_params(self, rho_bottom, rho_top):
        return {}


# --- S²-DM fine-tuning spaces: each trial fine-tunes a copy of the model (skipsearch.finetune.FinetuneObjective) ---
# Ranges of the fine-tuning parameters; the baseline (tau = 1: the plain EDM loss for the same steps) is the fair one.
S2DM_TAU = (0.97, 1.0)  # benchmarks/s2dm.py: tau <= 0.95 wrecked the bundled model; 0.99-0.995 helped
S2DM_SKIP = (1, 3)  # in Karras steps of the study's sampler (N = its step count at the NFE)
S2DM_LR = (1e-5, 1e-3)  # log-uniform
S2DM_BASELINE = {"tau": 1.0, "skip": 1, "lr": 1e-4}


class _S2DMParams:
    """Mixin: the fine-tuning parameters (tau, skip, lr) that FinetuneObjective asks for besides the rho part."""

    finetune = "s2dm"

    def suggest_finetune(self, trial: Any) -> dict[str, Any]:
        return {"tau": trial.suggest_float("tau", *S2DM_TAU), "skip": trial.suggest_int("skip", *S2DM_SKIP),
                "lr": trial.suggest_float("lr", *S2DM_LR, log=True)}

    def baseline(self, rho_bottom: float, rho_top: float = 1.0, eps_scale: float = 1.0) -> dict[str, Any]:
        # Added after the base class's clipping of float parameters to the rho range, which must not touch lr/tau.
        return {**super().baseline(rho_bottom, rho_top, eps_scale), **S2DM_BASELINE}  # type: ignore[misc]


class S2DMSpace(_S2DMParams, SearchSpace):
    name, description = "s2dm", "S²-DM fine-tuning (tau, skip, lr) of the weights at rho = 1"
    searches_rho = False

    def _rho(self, trial):
        return SkipSchedule.identity(self.ctx.num_skip_points)

    def _linear_params(self, rho_bottom, rho_top):
        return {}


class S2DMLinearSpace(_S2DMParams, LinearSpace):
    name, description = "s2dm+linear", "S²-DM fine-tuning (tau, skip, lr) together with the linear rho pair"


SPACES = Registry[type[SearchSpace]]("search space", UnknownSpaceError)
for _cls in (ConstantSpace, LinearSpace, PerLevelSpace, PerLayerSpace, IntervalLinearSpace, LinearInTimeSpace,
             EpsScaleSpace, S2DMSpace, S2DMLinearSpace):
    SPACES.register(_cls.name, _cls)
del _cls


def space_names() -> list[str]:
    # Fine-tuning spaces take no +eps variant ('s2dm+linear' is a full name, not base + suffix).
    return [*SPACES, *(f"{name}+eps" for name, cls in SPACES.items() if name != "eps-scale" and not cls.finetune)]


def check_space_name(name: str) -> tuple[str, bool]:
    """(base space, with eps) for a valid name, else UnknownSpaceError listing the known ones."""
    if name in SPACES:  # full names first: 's2dm+linear' contains a '+' but is no '+eps' variant
        return name, False
    base, _, suffix = name.partition("+")
    if base not in SPACES or suffix not in ("", "eps") or SPACES[base].finetune:
        raise UnknownSpaceError(f"unknown search space {name!r}; known: {', '.join(space_names())}")
    return base, suffix == "eps"


def get_space(name: str, ctx: SpaceContext, bounds: SpaceBounds = SpaceBounds()) -> SearchSpace:
    """``linear``, ``per-layer+eps`` ... (see ``space_names()``)."""
    base, eps = check_space_name(name)
    return SPACES[base](ctx, bounds, eps=eps) if base != "eps-scale" else EpsScaleSpace(ctx, bounds)


@dataclass
class Baseline:
    label: str
    params: dict[str, Any] = field(default_factory=dict)


def baselines(space: SearchSpace, nfe: int) -> list[Baseline]:
    """rho = 1 (untuned) and the paper's recipe (linear rho_bottom(nfe) -> 1.0), deduplicated."""
    # Fine-tuning spaces: the baselines fine-tune with tau = 1 (plain EDM loss), so the label says so.
    tuned = "tau=1 fine-tune, " if space.finetune else ""
    out = [Baseline("tau=1 fine-tune, rho=1" if space.finetune else "untuned (rho=1)", space.baseline(1.0, 1.0))]
    bottom = paper_rho_bottom(nfe)
    lo, hi = space.bounds.rho_min, space.bounds.rho_max
    label = f"{tuned}paper recipe (linear {bottom:.2f}->1.0)"
    if not (lo <= bottom <= hi and lo <= 1.0 <= hi):
        clipped = (min(hi, max(lo, bottom)), min(hi, max(lo, 1.0)))
        label = (f"{tuned}paper recipe (linear {bottom:.2f}->1.0, clipped to the bounds [{lo:g}, {hi:g}]: "
                 f"{clipped[0]:g}->{clipped[1]:g})")
    paper = Baseline(label, space.baseline(bottom))
    if paper.params != out[0].params:
        out.append(paper)
    return out
