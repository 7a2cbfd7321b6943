"""The Optuna side: samplers and pruners (small registries), the study per (model, sampler, NFE, space), baselines,
warm start, the trial budget, and the winner's-curse validation of the top trials.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skipsearch.device import resolve_device
from skipsearch.models import SkipAdapter, load_model
from skipsearch.proxy.fid_proxy import FidProxy
from skipsearch.sampling.samplers import get_sampler, steps_for_nfe
from skipsearch.schedule.core import SkipSchedule
from skipsearch.search.definition import SearchConfig, StudyDefinition
from skipsearch.search.objective import TRIAL_FAILURES, Objective
from skipsearch.search.spaces import SearchSpace, SpaceContext, baselines, check_space_name, get_space
from skipsearch.store.best import BestKey, BestStore, StoreError, Validation, default_storage_url, redact_url

optuna.logging.set_verbosity(optuna.logging.WARNING)
HEARTBEAT_SECONDS = int(os.environ.get("SKIPSEARCH_HEARTBEAT_SECONDS", "10"))
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

# --------------------------------------------------------------------------------------------------------------------
# Registries (Optuna's own classes; we only choose their settings).


def make_sampler(config: SearchConfig, num_params_hint: int = 2) -> optuna.samplers.BaseSampler:
    startup = max(4, min(10, 2 * num_params_hint))
    factories: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=config.seed, multivariate=True, n_startup_trials=startup,
                                                  constant_liar=True),
        "gp": lambda: optuna.samplers.GPSampler(seed=config.seed, n_startup_trials=startup),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=config.seed, n_startup_trials=startup,
                                                      warn_independent_sampling=False),
        "random": lambda: optuna.samplers.RandomSampler(seed=config.seed),
    }
    return factories[config.sampler]()


def make_pruner(config: SearchConfig, rungs: tuple[int, ...]) -> optuna.pruners.BasePruner:
    """Pruners act on the proxy rungs; steps are image counts. Not stored with the study: built per process."""
    factories: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "successive-halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=rungs[0], reduction_factor=config.reduction_factor),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=rungs[0], max_resource=rungs[-1], reduction_factor=config.reduction_factor),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        # For tests and tiny budgets: anything worse than the best trial so far at a rung stops.
        "aggressive": lambda: optuna.pruners.PercentilePruner(1.0, n_startup_trials=1, n_warmup_steps=0),
        "none": optuna.pruners.NopPruner,
    }
    return factories[config.pruner]()


# --------------------------------------------------------------------------------------------------------------------
# Storage.


def artifact_dir(storage_url: str) -> Path:
    """Trial artifacts (sample grids) beside a SQLite file, else ``$SKIPSEARCH_ARTIFACTS`` / ``~/.skipsearch``."""
    if os.environ.get("SKIPSEARCH_ARTIFACTS"):
        return Path(os.environ["SKIPSEARCH_ARTIFACTS"])
    if storage_url.startswith("sqlite:///"):
        return Path(storage_url.removeprefix("sqlite:///")).expanduser().resolve().parent / "artifacts"
    return Path(os.environ.get("SKIPSEARCH_HOME", "~/.skipsearch")).expanduser() / "artifacts"


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeat: a dead worker's RUNNING trial is failed and its parameters retried once."""
    try:
        with warnings.catch_warnings():  # heartbeat and its retry callback are flagged experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=3 * HEARTBEAT_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
    except Exception as exc:  # sqlalchemy/driver errors vary; the store has already checked connectivity
        raise StoreError(f"cannot open Optuna storage {redact_url(url)}: {str(exc).splitlines()[0]}") from None


def study_name_for(definition: StudyDefinition, adapter: SkipAdapter) -> str:
    return definition.name or (f"{adapter.name}-{adapter.identity.sha256[:8]}-{definition.sampler}-"
                               f"nfe{definition.nfe}-{definition.space}")


def count_finished(study: optuna.Study) -> int:
    """Trials that used the budget: complete, pruned, and failed ones that were not re-run by the retry callback."""
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False)}
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


# --------------------------------------------------------------------------------------------------------------------
# The study session: everything one process needs to run and validate trials.


@dataclass
class StudySession:
    definition: StudyDefinition
    adapter: SkipAdapter
    proxy: FidProxy
    space: SearchSpace
    study: optuna.Study
    store: BestStore
    storage_url: str
    objective: Objective = field(init=False)

    def __post_init__(self) -> None:
        from optuna.artifacts import FileSystemArtifactStore
        folder = artifact_dir(self.storage_url)
        folder.mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(str(folder))
        if self.space.finetune:  # S²-DM spaces: each trial fine-tunes a copy of the model (imported lazily)
            from skipsearch.search.finetune import FinetuneObjective
            self.objective = FinetuneObjective(self.adapter, self.proxy, self.space, space_name=self.definition.space,
                                               artifact_store=store, study=self.study, search=self.definition.search,
                                               weights_dir=folder / "s2dm" / self.study.study_name)
            return
        self.objective = Objective(self.adapter, self.proxy, self.space, space_name=self.definition.space,
                                   artifact_store=store)

    @property
    def key(self) -> BestKey:
        return BestKey(self.adapter.name, self.adapter.identity.sha256, self.definition.sampler, self.definition.nfe)

    def remaining(self) -> int:
        return max(0, self.definition.trials - count_finished(self.study))

    def run(self, n_trials: int, callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None) -> None:
        """Run up to ``n_trials`` (the study-wide budget caps it), failures recorded and skipped."""
        budget = optuna.study.MaxTrialsCallback(self.definition.trials, states=FINISHED)
        self.study.optimize(self.objective, n_trials=n_trials, catch=TRIAL_FAILURES,
                            callbacks=[budget, *(callbacks or [])])

    # --- validation -------------------------------------------------------------------------------------------------
    def candidates(self, top_k: int) -> list[FrozenTrial]:
        complete = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None and math.isfinite(t.value)]
        ranked = sorted(complete, key=lambda t: t.value)
        chosen = ranked[:top_k]
        for trial in complete:  # the baselines are always validated: the lift is reported against them
            if trial.user_attrs.get("baseline") and trial not in chosen:
                chosen.append(trial)
        return chosen

    def validate(self, top_k: int | None = None,
                 on_done: Callable[[FrozenTrial, float], None] | None = None) -> list[dict[str, Any]]:
        """Re-evaluate the top trials at ``final_n`` on a fresh seed set; store each; the best row follows."""
        config = self.definition.search
        validated = dict(self.study.user_attrs.get("validated", {}))
        results = []
        for trial in self.candidates(config.validate_top_k if top_k is None else top_k):
            schedule = SkipSchedule.from_dict(trial.user_attrs["schedule"])
            entry = validated.get(str(trial.number))
            if entry is None or entry["n"] != config.final_n:
                proxy = self.objective.proxy_for_validation(trial)
                try:
                    result = proxy.evaluate(schedule, rungs=[config.final_n],
                                            seed_offset=config.validation_seed_offset, preview=0)
                except TRIAL_FAILURES as exc:
                    validated[str(trial.number)] = {"error": f"{type(exc).__name__}: {exc}", "n": config.final_n}
                    continue
                entry = {"value": result.value, "n": result.n, "proxy": trial.value,
                         "seeds": f"{result.seeds[0]}-{result.seeds[1] - 1}",
                         "baseline": trial.user_attrs.get("baseline")}
                validated[str(trial.number)] = entry
                self.study.set_user_attr("validated", validated)
                provenance = {**schedule.provenance, "study": self.study.study_name, "trial": trial.number,
                              "validated": {"metric": self.proxy.config.metric, "value": result.value,
                                            "n": result.n, "seeds": entry["seeds"], "extractor": result.extractor}}
                schedule = schedule.with_metadata(provenance=provenance)
                self.store.record(Validation(
                    model_name=self.adapter.name, weights_sha256=self.adapter.identity.sha256,
                    sampler=self.definition.sampler, nfe=self.definition.nfe, metric=self.proxy.config.metric,
                    value=result.value, n=result.n, seeds=entry["seeds"], extractor=result.extractor,
                    extractor_sha256=result.extractor_sha256, schedule_json=schedule.to_json(),
                    space=self.definition.space, study_name=self.study.study_name, trial_number=trial.number,
                    proxy_value=trial.value))
            if on_done is not None and "value" in entry:
                on_done(trial, entry["value"])
            results.append({"trial": trial.number, **entry})
        return results

    # --- baselines and warm start -----------------------------------------------------------------------------------
    def enqueue_starts(self) -> list[str]:
        """Baselines (rho = 1, the paper's recipe) once per study, then neighbouring-NFE winners (warm start)."""
        if self.study.user_attrs.get("baselines_enqueued"):
            return []
        labels = []
        for baseline in baselines(self.space, self.definition.nfe):
            self.study.enqueue_trial(baseline.params, user_attrs={"baseline": baseline.label},
                                     skip_if_exists=True)
            labels.append(baseline.label)
        if self.definition.search.warm_start:
            for row in self._neighbours():
                params = json.loads(row.schedule_json).get("provenance", {}).get("params")
                if params:
                    self.study.enqueue_trial(params, user_attrs={"warm_start": f"best of NFE {row.nfe}"},
                                             skip_if_exists=True)
                    labels.append(f"warm start from NFE {row.nfe}")
        self.study.set_user_attr("baselines_enqueued", True)
        return labels

    def _neighbours(self, count: int = 2):
        rows = [r for r in self.store.best(self.adapter.name, self.definition.sampler)
                if r.weights_sha256 == self.adapter.identity.sha256 and r.nfe != self.definition.nfe
                and r.space == self.definition.space]
        return sorted(rows, key=lambda r: abs(math.log(r.nfe / self.definition.nfe)))[:count]


def open_session(definition: StudyDefinition, *, storage_url: str | None = None, device: str = "cpu",
                 adapter: SkipAdapter | None = None) -> StudySession:
    """Load the model, proxy and space, and create or resume the study (``load_if_exists``)."""
    # Cheap checks first: a typo must not cost a model load.
    sampler_spec = get_sampler(definition.sampler)
    steps = steps_for_nfe(definition.sampler, definition.nfe)
    check_space_name(definition.space)
    storage_url = storage_url or default_storage_url()
    store = BestStore(storage_url)
    if adapter is None:
        adapter = load_model(definition.model, checkpoint=definition.checkpoint, device=str(resolve_device(device)))
    proxy = FidProxy(adapter, sampler=definition.sampler, nfe=definition.nfe, config=definition.proxy,
                     sampler_options=definition.sampler_options)
    ctx = SpaceContext(num_skip_points=len(adapter.skip_points), level_of_point=adapter.level_of_points(),
                       sigma_min=adapter.sigma_min, sigma_max=adapter.sigma_max, num_steps=steps,
                       stochastic=sampler_spec.stochastic)
    space = get_space(definition.space, ctx, definition.space_bounds)
    name = study_name_for(definition, adapter)
    study = optuna.create_study(storage=optuna_storage(storage_url), study_name=name, direction="minimize",
                                load_if_exists=True, sampler=make_sampler(definition.search),
                                pruner=make_pruner(definition.search, definition.proxy.rungs))
    if "definition" not in study.user_attrs:
        study.set_user_attr("definition", {
            "model": adapter.name, "weights_sha256": adapter.identity.sha256, "sampler": definition.sampler,
            "nfe": definition.nfe, "space": definition.space, "metric": definition.proxy.metric,
            "extractor": definition.proxy.extractor, "rungs": list(definition.proxy.rungs),
            "final_n": definition.search.final_n, "source": definition.source})
    return StudySession(definition, adapter, proxy, space, study, store, storage_url)
