"""Optuna's samplers and pruners as small registries (their classes; we only choose the settings).

Torch-free. A pruner's steps are whatever the objective reports (image counts for rho trials, training steps for
fine-tuning trials), so the pruner is built from the objective's ``pruning_steps``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from skipsearch.registry import Registry
from skipsearch.search.errors import UnknownStrategyError

if TYPE_CHECKING:
    import optuna


class SearchConfig(Protocol):
    """The fields of :class:`skipsearch.search.definition.SearchConfig` that strategies read."""

    sampler: str
    pruner: str
    seed: int
    reduction_factor: int


# name -> factory(config, n_startup_trials) -> sampler
OPTUNA_SAMPLERS: Registry[Callable[[SearchConfig, int], optuna.samplers.BaseSampler]] = Registry(
    "Optuna sampler", UnknownStrategyError)
# name -> factory(config, steps) -> pruner
PRUNERS: Registry[Callable[[SearchConfig, Sequence[int]], optuna.pruners.BasePruner]] = Registry(
    "pruner", UnknownStrategyError)


def _tpe(config: SearchConfig, startup: int):
    import optuna
    return optuna.samplers.TPESampler(seed=config.seed, multivariate=True, n_startup_trials=startup,
                                      constant_liar=True)


def _gp(config: SearchConfig, startup: int):
    import optuna
    return optuna.samplers.GPSampler(seed=config.seed, n_startup_trials=startup)


def _cmaes(config: SearchConfig, startup: int):
    import optuna
    return optuna.samplers.CmaEsSampler(seed=config.seed, n_startup_trials=startup, warn_independent_sampling=False)


def _random(config: SearchConfig, startup: int):
    import optuna
    return optuna.samplers.RandomSampler(seed=config.seed)


def _successive_halving(config: SearchConfig, steps: Sequence[int]):
    import optuna
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=steps[0], reduction_factor=config.reduction_factor)


def _hyperband(config: SearchConfig, steps: Sequence[int]):
    import optuna
    return optuna.pruners.HyperbandPruner(min_resource=steps[0], max_resource=steps[-1],
                                          reduction_factor=config.reduction_factor)


def _median(config: SearchConfig, steps: Sequence[int]):
    import optuna
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def _aggressive(config: SearchConfig, steps: Sequence[int]):
    # For tests and tiny budgets: anything worse than the best trial so far at a rung stops.
    import optuna
    return optuna.pruners.PercentilePruner(1.0, n_startup_trials=1, n_warmup_steps=0)


def _none(config: SearchConfig, steps: Sequence[int]):
    import optuna
    return optuna.pruners.NopPruner()


for _name, _factory in (("tpe", _tpe), ("gp", _gp), ("cmaes", _cmaes), ("random", _random)):
    OPTUNA_SAMPLERS.register(_name, _factory)
for _name, _factory in (("successive-halving", _successive_halving), ("hyperband", _hyperband),
                        ("median", _median), ("aggressive", _aggressive), ("none", _none)):
    PRUNERS.register(_name, _factory)


def process_seed(seed: int, process_index: int) -> int:
    """The sampler seed of the ``process_index``-th process to join a study: the study seed for the first (a
    one-process study is reproducible), another seed derived from it for each later one, so that concurrent
    processes, Ray workers and resumed runs do not propose the same points."""
    if process_index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{process_index}".encode()).digest()[:4], "big")


def make_sampler(config: SearchConfig, num_params_hint: int = 2,
                 process_index: int = 0) -> optuna.samplers.BaseSampler:
    startup = max(4, min(10, 2 * num_params_hint))
    seeded = dataclasses.replace(config, seed=process_seed(config.seed, process_index)) if process_index else config
    return OPTUNA_SAMPLERS.get(config.sampler)(seeded, startup)


def make_pruner(config: SearchConfig, steps: Sequence[int]) -> optuna.pruners.BasePruner:
    """Pruners act on the objective's reported steps. Not stored with the study: built per process."""
    return PRUNERS.get(config.pruner)(config, tuple(steps))
