"""Search spaces: Optuna parameters (define-by-run) -> ``SkipSchedule``.

Each space is a small class with ``suggest(trial) -> SkipSchedule`` and ``baseline(rho_bottom, rho_top)`` giving
the parameters that reproduce a linear bottom->top schedule, so baselines (rho = 1, the paper's recipe) can be
enqueued in any space. A space name is a rho family (``per-level``, ``rho-sigma``, ``identity`` for rho = 1 ...)
with optional parts joined by ``+``: ``eps`` (epsilon scaling, Ning et al. 2023), ``grid`` (the Karras time grid:
exponent and both sigma ends), ``free-grid`` (a free monotone grid, one log-sigma increment per step), ``sampler``
(the sampler itself and its options, conditional through define-by-run). Churn parameters are added when the
(chosen) sampler is stochastic and churn search is on. ``joint`` is ``per-level-sigma+grid+sampler``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from skipsearch.registry import Registry
from skipsearch.sampling.grids import karras_interval_bounds, karras_sigmas
from skipsearch.sampling.samplers import DIFFUSION, SAMPLERS, get_sampler, steps_for_nfe
from skipsearch.schedule import Churn, SkipSchedule, TimeGrid
from skipsearch.schedule.families import linear_rho
from skipsearch.search.definition import SpaceBounds
from skipsearch.search.errors import UnknownSpaceError


@dataclass(frozen=True)
class SpaceContext:
    """What a space needs to know about the model and the sampler."""

    num_skip_points: int
    level_of_point: list[int]
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    num_steps: int = 5  # sampler steps at the study's NFE (for sigma-interval bounds)
    stochastic: bool = False  # sampler supports EDM churn
    sampler: str = "heun"  # the study's sampler (the choice's baseline)
    nfes: tuple[int, ...] = ()  # a multi-NFE study's NFEs (empty: one NFE)
    samplers: tuple[str, ...] = ()  # samplers a '+sampler' space chooses from (those that spend every NFE exactly)
    default_spacing: str = "karras"  # the model's own grid (discrete DDPMs: trailing timesteps), a grid part's option
    models: str = DIFFUSION  # the model's kind (SamplerSpec.models): a '+sampler' space offers its samplers only


def samplers_for(nfes: tuple[int, ...] | list[int], models: str = DIFFUSION) -> tuple[str, ...]:
    """The registered samplers for ``models`` (diffusion or consistency models) that spend each of ``nfes`` exactly
    (heun only odd NFEs): NFE is the contract."""
    def exact(name: str, nfe: int) -> bool:
        try:
            steps_for_nfe(name, nfe)
        except ValueError:
            return False
        return True
    return tuple(name for name, spec in SAMPLERS.items()
                 if spec.models == models and all(exact(name, nfe) for nfe in nfes))


GRID_RHO = (2.0, 14.0)  # Karras exponent of the '+grid' part (EDM's default 7)
GRID_SIGMA_MIN_SPAN = 50.0  # sigma_min searched in [model min, 50 x model min] (log)
GRID_SIGMA_MAX_SPAN = 8.0  # sigma_max searched in [model max / 8, model max] (log)
FREE_GRID_WEIGHT = (0.02, 1.0)  # relative log-sigma increment of each step of a '+free-grid' part
# Align-Your-Steps' published 10-step sigmas for Stable Video Diffusion, an EDM-preconditioned model (Sabour et al.
# 2024; also diffusers' AysSchedules): a free grid's baseline, its shape moved onto the model's sigma range.
AYS_EDM_SIGMAS = (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034)
SIGMA_PROFILE_INTERVALS = 12  # sigma intervals (log-spaced over the model's range) of the rho(level, sigma) families
RHO_SIGMA_TILT = (0.05, 20.0)  # f(level) = tilt^(level/(L-1)): < 1 bottom-heavy (the paper's rule), > 1 top-heavy
RHO_SIGMA_SHARPNESS = (0.0, 2.0)  # 1/width (in ln sigma) of the bump g(sigma): 0 is flat, 2 a width of 0.5


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

    def __init__(self, ctx: SpaceContext, bounds: SpaceBounds = SpaceBounds(), eps: bool = False,
                 grid: str | None = None, sampler: bool = False):
        self.ctx, self.bounds, self.eps = ctx, bounds, eps
        self.grid, self.choose_sampler = grid, sampler  # grid: None, "karras" ('+grid') or "knots" ('+free-grid')
        if sampler and not ctx.samplers:
            raise UnknownSpaceError(f"no sampler spends NFE {', '.join(map(str, ctx.nfes))} exactly; a '+sampler' "
                                    "space needs at least one")

    def _rho_param(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.bounds.rho_min, self.bounds.rho_max)

    @abc.abstractmethod
    def _rho(self, trial: Any) -> SkipSchedule:
        """The trial's schedule without churn and eps scaling (``suggest`` adds those)."""

    @abc.abstractmethod
    def _linear_params(self, rho_bottom: float, rho_top: float) -> dict[str, float]:
        """This space's parameters that reproduce the linear bottom->top schedule (before clipping)."""

    def suggest(self, trial: Any) -> SkipSchedule:
        sampler, options = self._suggest_sampler(trial) if self.choose_sampler else (None, {})
        schedule = self._rho(trial)
        grid = self._suggest_grid(trial) if self.grid else None
        eps_scale = trial.suggest_float("eps_scale", self.bounds.eps_min, self.bounds.eps_max) if self.eps else 1.0
        churn = Churn()
        stochastic = get_sampler(sampler).stochastic if sampler else self.ctx.stochastic
        if stochastic and self.bounds.search_churn:
            churn = Churn(s_churn=trial.suggest_float("s_churn", 0.0, self.bounds.churn_max),
                          s_min=trial.suggest_float("s_min", 0.0, 1.0),
                          s_max=trial.suggest_float("s_max", 1.0, self.ctx.sigma_max, log=True),
                          s_noise=trial.suggest_float("s_noise", 1.0, 1.010))
        return SkipSchedule(rho=schedule.rho, sigma_bounds=schedule.sigma_bounds, churn=churn, eps_scale=eps_scale,
                            family=schedule.family, params=schedule.params, grid=grid, sampler=sampler,
                            sampler_options=options)

    # -- the sampler part ('+sampler'): which sampler, then its own options (conditional parameters)

    def _suggest_sampler(self, trial: Any) -> tuple[str, dict[str, Any]]:
        name = trial.suggest_categorical("sampler", list(self.ctx.samplers))
        options: dict[str, Any] = {}
        # The searched options and their ranges are the sampler's spec (SamplerSpec.options, SamplerOption.search).
        for option, spec in get_sampler(name).searched_options().items():
            param = f"{name}_{option}"
            if spec.type is int:
                options[option] = trial.suggest_int(param, *spec.search)
            elif spec.type is float:
                options[option] = trial.suggest_float(param, *spec.search)
            else:
                options[option] = trial.suggest_categorical(param, list(spec.search))
        return name, options

    def _sampler_baseline(self, name: str) -> dict[str, Any]:
        return {"sampler": name, **{f"{name}_{option}": spec.default
                                    for option, spec in get_sampler(name).searched_options().items()}}

    def _ays_baseline(self) -> dict[str, float]:
        """A free grid of Align-Your-Steps' shape (AYS_EDM_SIGMAS, log-linearly interpolated to this grid's knots
        as AYS does) on [sigma_max, sigma_max x 0.034/700] of this model."""
        from skipsearch.sampling.grids import knots_sigmas
        shape = knots_sigmas(AYS_EDM_SIGMAS, self._grid_steps()).log().tolist()
        steps = [a - b for a, b in zip(shape, shape[1:])]
        low = max(self.ctx.sigma_min, self.ctx.sigma_max * AYS_EDM_SIGMAS[-1] / AYS_EDM_SIGMAS[0])
        top = max(steps)
        return {"grid_sigma_min": min(low, self.ctx.sigma_min * GRID_SIGMA_MIN_SPAN),
                **{f"grid_w{i}": min(1.0, max(FREE_GRID_WEIGHT[0], d / top)) for i, d in enumerate(steps)}}

    # -- the time-grid part ('+grid': Karras exponent and ends; '+free-grid': one increment per step)

    def _grid_steps(self) -> int:
        return max(2, self.ctx.num_steps)  # knots of a free grid: the study sampler's steps (others interpolate)

    def _suggest_grid(self, trial: Any) -> TimeGrid | None:
        if self.ctx.default_spacing != "karras":  # a DDPM's own timestep grid stays a choice (and the baseline)
            if trial.suggest_categorical("grid_law", ["default", self.grid]) == "default":
                return None
        lo, hi = self.ctx.sigma_min, self.ctx.sigma_max
        sigma_min = trial.suggest_float("grid_sigma_min", lo, min(hi / 2, lo * GRID_SIGMA_MIN_SPAN), log=True)
        if self.grid == "karras":
            return TimeGrid("karras", rho=trial.suggest_float("grid_rho", *GRID_RHO),
                            sigma_min=sigma_min,
                            sigma_max=trial.suggest_float("grid_sigma_max", hi / GRID_SIGMA_MAX_SPAN, hi, log=True))
        weights = [trial.suggest_float(f"grid_w{i}", *FREE_GRID_WEIGHT) for i in range(self._grid_steps() - 1)]
        total, span = sum(weights), math.log(hi / sigma_min)
        knots, acc = [hi], 0.0
        for w in weights:
            acc += w
            knots.append(hi * math.exp(-span * min(acc / total, 1.0)))
        knots[-1] = sigma_min  # exactly the searched end, not a rounding of it
        return TimeGrid("knots", knots=tuple(knots))

    def _grid_baseline(self) -> dict[str, Any]:
        """The default grid: the model's own for a discrete one, else EDM's Karras grid (rho 7) over the model's
        range (for a free grid: its increments)."""
        params: dict[str, Any] = {"grid_sigma_min": self.ctx.sigma_min}
        if self.ctx.default_spacing != "karras":
            return {"grid_law": "default"}
        if self.grid == "karras":
            return {**params, "grid_rho": 7.0, "grid_sigma_max": self.ctx.sigma_max}
        sigmas = karras_sigmas(self._grid_steps(), self.ctx.sigma_min, self.ctx.sigma_max)[:-1].log().tolist()
        steps = [a - b for a, b in zip(sigmas, sigmas[1:])]
        top = max(steps)
        return {**params, **{f"grid_w{i}": min(1.0, max(FREE_GRID_WEIGHT[0], d / top)) for i, d in enumerate(steps)}}

    def baseline(self, rho_bottom: float, rho_top: float = 1.0, eps_scale: float = 1.0) -> dict[str, float]:
        """Parameters of this space closest to a linear schedule (clipped to the bounds), for enqueue_trial."""
        params = {k: min(self.bounds.rho_max, max(self.bounds.rho_min, v)) if isinstance(v, float) else v
                  for k, v in self._linear_params(rho_bottom, rho_top).items()}
        if self.eps:
            params["eps_scale"] = min(self.bounds.eps_max, max(self.bounds.eps_min, eps_scale))
        if (self.ctx.stochastic or self.choose_sampler) and self.bounds.search_churn:
            params.update(s_churn=0.0, s_min=0.0, s_max=self.ctx.sigma_max, s_noise=1.0)
        if self.grid:
            params.update(self._grid_baseline())
        if self.choose_sampler:
            default = self.ctx.sampler if self.ctx.sampler in self.ctx.samplers else self.ctx.samplers[0]
            params.update(self._sampler_baseline(default))
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


class _LinearInOneDirection(LinearInTimeSpace):
    """``linear-in-time`` with its direction fixed: one study per order of rho over time, so the two orders the
    paper's Table 10 compares (EDM decreasing, LDM and U-ViT increasing) each get the whole trial budget."""

    direction = ""

    def _rho(self, trial):
        return SkipSchedule.linear_in_time(self._rho_param(trial, "rho_0"), self.ctx.num_skip_points,
                                           direction=self.direction, sigma_min=self.ctx.sigma_min,
                                           sigma_max=self.ctx.sigma_max)

    def _linear_params(self, rho_bottom, rho_top):
        return {"rho_0": float(rho_bottom)}


class LinearInTimeDecreasingSpace(_LinearInOneDirection):
    name, direction = "linear-in-time-decreasing", "decreasing"
    description = "rho 1.0 at sigma_min falling linearly in log-sigma to rho_0 at sigma_max (EDM's order)"


class LinearInTimeIncreasingSpace(_LinearInOneDirection):
    name, direction = "linear-in-time-increasing", "increasing"
    description = "rho_0 at sigma_min rising linearly in log-sigma to 1.0 at sigma_max (LDM's and U-ViT's order)"


def sigma_profile_bounds(sigma_min: float, sigma_max: float,
                         intervals: int = SIGMA_PROFILE_INTERVALS) -> tuple[tuple[float, ...], list[float]]:
    """Interval bounds (inf, log-spaced inner bounds, 0) over [sigma_min, sigma_max] and each interval's sigma
    (geometric centre; the ends for the outer ones), for rho laws in sigma. Fixed by the model, not by the grid,
    so a searched grid samples the same law."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    edges = [math.exp(hi + (lo - hi) * i / intervals) for i in range(intervals + 1)]
    centres = [math.sqrt(a * b) for a, b in zip(edges, edges[1:])]
    centres[0], centres[-1] = sigma_max, sigma_min
    return (math.inf, *edges[1:-1], 0.0), centres


class _SigmaProfile:
    """Mixin: a smooth bump in log-sigma, g(sigma) = exp(-(k (ln sigma - ln centre))^2 / 2) in (0, 1]; sharpness
    k = 0 is flat (rho independent of sigma), so the layer-wise schedules are inside the family."""

    ctx: SpaceContext

    def _profile(self, trial: Any) -> tuple[tuple[float, ...], list[float], dict[str, float]]:
        centre = trial.suggest_float("rho_sigma_centre", self.ctx.sigma_min, self.ctx.sigma_max, log=True)
        sharpness = trial.suggest_float("rho_sigma_sharpness", *RHO_SIGMA_SHARPNESS)
        bounds, sigmas = sigma_profile_bounds(self.ctx.sigma_min, self.ctx.sigma_max)
        g = [math.exp(-((sharpness * (math.log(s) - math.log(centre))) ** 2) / 2) for s in sigmas]
        return bounds, g, {"rho_sigma_centre": centre, "rho_sigma_sharpness": sharpness}

    def _flat_profile(self) -> dict[str, float]:
        return {"rho_sigma_centre": math.sqrt(self.ctx.sigma_min * self.ctx.sigma_max), "rho_sigma_sharpness": 0.0}

    def _levels(self) -> int:
        return max(self.ctx.level_of_point) + 1


class RhoSigmaSpace(_SigmaProfile, SearchSpace):
    name = "rho-sigma"
    description = "rho(level, sigma) = 1 - a f(level) g(sigma): 4 shape parameters for any number of skip points"

    def _rho(self, trial):
        a = trial.suggest_float("rho_a", 1.0 - self.bounds.rho_max, 1.0 - self.bounds.rho_min)
        tilt = trial.suggest_float("rho_tilt", *RHO_SIGMA_TILT, log=True)
        bounds, g, profile = self._profile(trial)
        levels = self._levels()
        f = [tilt ** (level / max(levels - 1, 1)) for level in range(levels)]
        f = [v / max(f) for v in f]
        rows = [[1.0 - a * f[self.ctx.level_of_point[i]] * gs for i in range(self.ctx.num_skip_points)] for gs in g]
        schedule = SkipSchedule.intervals(rows, bounds)
        return dataclasses.replace(schedule, family="rho-sigma", params={"a": a, "tilt": tilt, **profile})

    def _linear_params(self, rho_bottom, rho_top):
        # Bottom-heavy as the paper's rule: f(bottom) = 1, f(top) = (1 - rho_top) / (1 - rho_bottom); flat in sigma.
        a = 1.0 - rho_bottom
        tilt = (1.0 - rho_top) / a if a > 0 else 1.0
        return {"rho_a": a, "rho_tilt": min(RHO_SIGMA_TILT[1], max(RHO_SIGMA_TILT[0], tilt)), **self._flat_profile()}

    def baseline(self, rho_bottom: float, rho_top: float = 1.0, eps_scale: float = 1.0) -> dict[str, Any]:
        params = super().baseline(rho_bottom, rho_top, eps_scale)
        # rho_a is a deviation from 1, not a rho: clip it to its own range (the base class clipped it as a rho)
        params["rho_a"] = min(1.0 - self.bounds.rho_min, max(1.0 - self.bounds.rho_max, 1.0 - rho_bottom))
        for key in ("rho_tilt", "rho_sigma_centre", "rho_sigma_sharpness"):
            params[key] = self._linear_params(rho_bottom, rho_top)[key]
        return params


class PerLevelSigmaSpace(_SigmaProfile, SearchSpace):
    name = "per-level-sigma"
    description = "one rho per level with a smooth sigma profile: rho = 1 - (1 - rho_level) g(sigma)"

    def _rho(self, trial):
        values = [self._rho_param(trial, f"rho_level{i}") for i in range(self._levels())]
        bounds, g, profile = self._profile(trial)
        rows = [[1.0 - (1.0 - values[self.ctx.level_of_point[i]]) * gs for i in range(self.ctx.num_skip_points)]
                for gs in g]
        schedule = SkipSchedule.intervals(rows, bounds)
        return dataclasses.replace(schedule, family="per-level-sigma",
                                   params={"levels": values, **profile})

    def _linear_params(self, rho_bottom, rho_top):
        return {**{f"rho_level{i}": v for i, v in enumerate(linear_rho(rho_bottom, rho_top, self._levels()))},
                **self._flat_profile()}

    def baseline(self, rho_bottom: float, rho_top: float = 1.0, eps_scale: float = 1.0) -> dict[str, Any]:
        return {**super().baseline(rho_bottom, rho_top, eps_scale), **self._flat_profile()}


class IdentitySpace(SearchSpace):
    name, description = "identity", "rho = 1 (the skips untouched): the base of grid-only and sampler-only spaces"
    searches_rho = False

    def _rho(self, trial):
        return SkipSchedule.identity(self.ctx.num_skip_points)

    def _linear_params(self, rho_bottom, rho_top):
        return {}


class EpsScaleSpace(SearchSpace):
    name, description = "eps-scale", "epsilon scaling alone (rho = 1): the exposure-bias baseline"
    searches_rho = False

    def __init__(self, ctx, bounds=SpaceBounds(), eps=True, grid=None, sampler=False):
        super().__init__(ctx, bounds, eps=True, grid=grid, sampler=sampler)

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
             LinearInTimeDecreasingSpace, LinearInTimeIncreasingSpace,
             RhoSigmaSpace, PerLevelSigmaSpace, IdentitySpace, EpsScaleSpace, S2DMSpace, S2DMLinearSpace):
    SPACES.register(_cls.name, _cls)
del _cls


# Parts a space name may add to its rho family ('per-level+grid+sampler'), and the names that stand for a whole one.
SPACE_PARTS = ("eps", "grid", "free-grid", "sampler")
SPACE_ALIASES = {"grid": "identity+grid", "free-grid": "identity+free-grid", "sampler": "identity+sampler",
                 "joint": "per-level-sigma+grid+sampler", "joint-free": "per-level-sigma+free-grid+sampler"}


@dataclass(frozen=True)
class SpaceName:
    """A parsed space name: the rho family and the parts added to it."""

    base: str
    eps: bool = False
    grid: str | None = None  # "karras" ('+grid') or "knots" ('+free-grid')
    sampler: bool = False


def space_names() -> list[str]:
    # Fine-tuning spaces take no parts ('s2dm+linear' is a full name, not base + suffix).
    return [*SPACES, *(f"{name}+eps" for name, cls in SPACES.items() if name not in ("eps-scale", "identity")
                       and not cls.finetune), *SPACE_ALIASES]


def parse_space_name(name: str) -> SpaceName:
    """The rho family and parts of a space name, else UnknownSpaceError listing the known ones."""
    if name in SPACES:  # full names first: 's2dm+linear' contains a '+' but is no base + part
        return SpaceName(name)
    base, *parts = SPACE_ALIASES.get(name, name).split("+")
    bad = [p for p in parts if p not in SPACE_PARTS]
    if (base not in SPACES or bad or len(set(parts)) != len(parts) or ("grid" in parts and "free-grid" in parts)
            or (parts and SPACES[base].finetune)):
        raise UnknownSpaceError(f"unknown search space {name!r}; known: {', '.join(space_names())}, or a rho family "
                                f"with parts {', '.join('+' + p for p in SPACE_PARTS)} (e.g. per-level+grid+sampler)")
    grid = "karras" if "grid" in parts else "knots" if "free-grid" in parts else None
    return SpaceName(base, "eps" in parts, grid, "sampler" in parts)


def check_space_name(name: str) -> tuple[str, bool]:
    """(base space, with eps) for a valid name, else UnknownSpaceError listing the known ones."""
    parsed = parse_space_name(name)
    return parsed.base, parsed.eps


def get_space(name: str, ctx: SpaceContext, bounds: SpaceBounds = SpaceBounds()) -> SearchSpace:
    """``linear``, ``per-layer+eps``, ``joint`` ... (see ``space_names()`` and :data:`SPACE_PARTS`)."""
    parsed = parse_space_name(name)
    cls = SPACES[parsed.base]
    if cls.finetune:
        return cls(ctx, bounds)
    if parsed.sampler and not ctx.samplers:
        ctx = dataclasses.replace(ctx, samplers=samplers_for(ctx.nfes or (_nfe_of(ctx),), ctx.models))
    return cls(ctx, bounds, eps=parsed.eps, grid=parsed.grid, sampler=parsed.sampler)


def _nfe_of(ctx: SpaceContext) -> int:
    """The study sampler's NFE at ``ctx.num_steps`` (for a context made without ``nfes``)."""
    return get_sampler(ctx.sampler).nfe_of_steps(ctx.num_steps)


@dataclass
class Baseline:
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    kind: str = "untuned"  # skipsearch.store.records.BASELINE_KINDS


def baselines(space: SearchSpace, nfe: int) -> list[Baseline]:
    """rho = 1 (untuned) and the paper's recipe (linear rho_bottom(nfe) -> 1.0), deduplicated; a space that
    chooses the sampler adds every other sampler at rho = 1 on its default grid."""
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
    if space.searches_rho:
        paper = Baseline(label, space.baseline(bottom), kind="paper")
        if paper.params != out[0].params:
            out.append(paper)
    if space.grid == "knots" and space.ctx.default_spacing == "karras":
        out.append(Baseline("untuned (rho=1), Align-Your-Steps grid shape",
                            {**out[0].params, **space._ays_baseline()}, kind="grid"))
    if space.choose_sampler:
        untuned = out[0].params
        out += [Baseline(f"untuned (rho=1), {name}", {**untuned, **space._sampler_baseline(name)}, kind="sampler")
                for name in space.ctx.samplers if name != untuned["sampler"]]
    return out
