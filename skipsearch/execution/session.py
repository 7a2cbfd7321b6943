"""The study session: everything one process needs to run trials of a study and validate them.

``open_session`` builds the chain once per process: model adapter -> proxy -> search space -> objective ->
Optuna study (created or resumed in the shared storage), with a sampler and a pruner from
:mod:`skipsearch.search.strategies`. Trials are scored in :mod:`skipsearch.search.objective`; validated results
are written by :mod:`skipsearch.search.validation`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from skipsearch.device import resolve_device
from skipsearch.execution.batched import run_trial_batch
from skipsearch.execution.budget import (
    TrialGate,
    TrialSkipped,
    process_tag,
    recover_orphans,
    requeue_interrupted,
    running,
    trial_storage,
    used,
)
from skipsearch.export.artifacts import TrialArtifacts
from skipsearch.models import SkipAdapter, load_model
from skipsearch.models.parametrization import is_consistency_model
from skipsearch.proxy.config import METRICS, ProxyConfig, default_proxy_config
from skipsearch.proxy.fid_proxy import FidProxy
from skipsearch.sampling.samplers import (
    CONSISTENCY,
    DIFFUSION,
    check_sampler_for_model,
    check_sampler_options,
    get_sampler,
    steps_for_nfe,
)
from skipsearch.schedule import SkipSchedule
from skipsearch.search import validation
from skipsearch.search.calibration import calibrate as sweep_rho_bounds
from skipsearch.search.definition import StudyDefinition, StudyDefinitionError
from skipsearch.search.definition import validate as validate_definition
from skipsearch.search.objective import TRIAL_FAILURES, Objective
from skipsearch.search.spaces import (
    SearchSpace,
    SpaceContext,
    baselines,
    check_space_name,
    get_space,
    samplers_for,
)
from skipsearch.search.strategies import make_pruner, make_sampler
from skipsearch.settings import Settings
from skipsearch.store import BestKey, BestStore, default_storage_url
from skipsearch.store.locks import study_lock
from skipsearch.store.records import Calibration, StudyRecord, TrialRecord, count_finished
from skipsearch.store.studies import artifact_dir

__all__ = ["StudySession", "open_session", "study_name_for"]

log = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 1.0  # how often a process whose budget is all claimed looks whether a claim came free


def study_name_for(definition: StudyDefinition, adapter: SkipAdapter) -> str:
    """``{model}-{weights sha8}-{sampler}-nfe{N}-{space}-{objective digest}``: a change of bounds, proxy or sampler
    options makes another study (never a silent resume of the old one)."""
    safe_model = "".join(c if c.isalnum() or c in "-_." else "-" for c in adapter.name)
    nfe = "+".join(map(str, definition.nfes)) if definition.nfes else definition.nfe
    return definition.name or (f"{safe_model}-{adapter.identity.sha256[:8]}-{definition.sampler}-"
                               f"nfe{nfe}-{definition.space}-{definition.objective_digest()}")


# --------------------------------------------------------------------------------------------------------------------
# The session.


@dataclass
class StudySession:
    definition: StudyDefinition
    adapter: SkipAdapter
    proxy: FidProxy
    space: SearchSpace
    study: optuna.Study
    store: BestStore
    storage_url: str
    settings: Settings = field(default_factory=Settings)
    calibration: Calibration | None = None  # how the rho bounds were set, when they were calibrated
    # The definition the study was named from, before calibration replaced its rho bounds: what another process
    # opens to join this study (with ``study_name``), so every process runs on the one study.
    requested: StudyDefinition | None = None
    objective: Objective = field(init=False)
    interrupted: bool = False
    tag: str = field(default_factory=process_tag)  # names this process on the trials it runs

    def __post_init__(self) -> None:
        from optuna.artifacts import FileSystemArtifactStore
        folder = artifact_dir(self.storage_url, self.settings)
        folder.mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(str(folder))
        if self.space.finetune:  # S²-DM spaces: each trial fine-tunes a copy of the model
            from skipsearch.search.finetune import FinetuneBudget, FinetuneObjective
            self.objective = FinetuneObjective(self.adapter, self.proxy, self.space, space_name=self.definition.space,
                                               artifacts=TrialArtifacts(store), study=self.study,
                                               search=self.definition.search,
                                               weights_dir=folder / "s2dm" / self.study.study_name,
                                               budget=FinetuneBudget.from_settings(self.settings))
        else:
            self.objective = Objective(self.adapter, self.proxy, self.space, space_name=self.definition.space,
                                       artifacts=TrialArtifacts(store))
        # The objective says which steps it reports (image counts, or training steps for fine-tuning trials).
        self.study.pruner = make_pruner(self.definition.search, self.objective.pruning_steps())
        if self.requested is None:
            self.requested = self.definition

    # --- calibration of the rho bounds --------------------------------------------------------------------------
    @property
    def calibration_pending(self) -> bool:
        """The space searches rho with calibrated bounds, and this process has not applied them yet."""
        return (self.space.searches_rho and self.definition.space_bounds.calibrate
                and self.calibration is None)

    def calibrate(self, evaluate_many: Callable[[list[SkipSchedule | None]], list[float | None]] | None = None
                  ) -> Calibration | None:
        """Set the rho bounds from the study's stored sweep, running the sweep first when none is stored.

        ``evaluate_many`` scores a list of schedules at the calibration n (None where a schedule fails); the Ray
        executor passes one that spreads them over its workers. No lock is held meanwhile (on SQLite every study
        lock is the database's one lock file, and the workers take it to join): the sweep is deterministic, so two
        processes that calibrate at once store the same bounds.
        """
        if not self.calibration_pending:
            return self.calibration
        n = self.definition.space_bounds.calibrate_n
        calibration = StudyRecord(self.study).calibration()
        if calibration is None:
            calibration = sweep_rho_bounds(lambda s: self.proxy.evaluate(s, rungs=[n], preview=0).value,
                                           len(self.adapter.skip_points), n=n, evaluate_many=evaluate_many)
            StudyRecord(self.study).set_calibration(calibration)
        self._apply_calibration(calibration)
        return calibration

    def refresh_calibration(self) -> bool:
        """Apply the stored calibration if another process has written it since; True when the bounds are set."""
        if self.calibration_pending and (calibration := StudyRecord(self.study).calibration()) is not None:
            self._apply_calibration(calibration)
        return not self.calibration_pending

    def _apply_calibration(self, calibration: Calibration) -> None:
        bounds = dataclasses.replace(self.definition.space_bounds, rho_min=calibration.rho_min,
                                     rho_max=calibration.rho_max)
        self.definition = dataclasses.replace(self.definition, space_bounds=bounds)
        self.space = get_space(self.definition.space, self.space.ctx, bounds)
        self.objective.space = self.space
        self.calibration = calibration

    @property
    def key(self) -> BestKey:
        return BestKey(self.adapter.name, self.adapter.identity.sha256, self.definition.sampler, self.definition.nfe)

    def best_row(self):
        """The stored best for this study's model and NFE: of its sampler, or of every sampler it may choose."""
        samplers = self.space.ctx.samplers if self.space.choose_sampler else (self.definition.sampler,)
        rows = [row for name in samplers
                if (row := self.store.get(dataclasses.replace(self.key, sampler=name))) is not None]
        return min(rows, key=lambda row: METRICS.get(row.metric).sort_key(row.value)) if rows else None

    def remaining(self) -> int:
        """Budget not yet used by finished trials (running ones may still use it, or fail and be queued again)."""
        return max(0, self.definition.trials - count_finished(self.study))

    def lock(self, purpose: str = "claim"):
        """The study's lock across every process on this database (budget claims; validation)."""
        return study_lock(self.store.engine, f"{self.study.study_name}:{purpose}")

    def run(self, n_trials: int | None = None,
            callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None, *,
            wait_for_others: bool = True, trials_per_batch: int = 1) -> int:
        """Run trials until the study-wide budget is used (or ``n_trials`` ran here); the number run here.

        Each trial first claims a budget slot (:class:`skipsearch.execution.budget.TrialGate`); orphans of dead
        processes are failed and queued again first. With ``wait_for_others``, a process whose slots are all
        claimed by running trials elsewhere waits for them: they may die and be queued again. With
        ``trials_per_batch`` K > 1, K trials are asked at once and scored in shared forwards
        (:func:`skipsearch.execution.batched.run_trial_batch`); fine-tuning spaces run one at a time.
        """
        gate = TrialGate(self.objective, self.definition.trials, self.lock, self.tag)
        catch = (*TRIAL_FAILURES, TrialSkipped)
        batched = trials_per_batch > 1 and not self.space.finetune
        ran = 0
        with _one_line_trial_failures(catch):
            while not self.interrupted and (n_trials is None or ran < n_trials):
                recover_orphans(self.study, self.settings.heartbeat_seconds)
                if used(self.study) >= self.definition.trials:
                    if not wait_for_others or self.remaining() == 0 and not running(self.study):
                        break
                    time.sleep(WAIT_POLL_SECONDS)
                    continue
                try:
                    if batched:
                        limit = trials_per_batch if n_trials is None else min(trials_per_batch, n_trials - ran)
                        ran += run_trial_batch(self.study, gate, limit, callbacks)
                        continue
                    self.study.optimize(gate, n_trials=1, catch=catch, callbacks=callbacks)
                except ValueError as exc:
                    if not str(exc).startswith("Cannot tell a"):
                        raise
                    # Another process found this trial's heartbeat stale (a starved process beats late), failed it
                    # and queued it again while it ran here: its result has nowhere to go, the study goes on.
                    log.warning("a trial of this process was failed meanwhile by another (its heartbeat looked "
                                "stale) and queued again there; its result here is dropped")
                except KeyboardInterrupt:
                    requeue_interrupted(self.study, gate.interrupted)
                    raise
                ran += 1
        return ran

    def validate(self, top_k: int | None = None,
                 on_done: Callable[[FrozenTrial, float], None] | None = None) -> list[dict[str, Any]]:
        """See :func:`skipsearch.search.validation.validate`; one process at a time (the others then find the
        trials validated and only read the results)."""
        with self.lock("validate"):
            return validation.validate(self, top_k, on_done)

    # --- baselines and warm start -----------------------------------------------------------------------------------
    def enqueue_starts(self) -> list[str]:
        """Baselines (rho = 1, the paper's recipe) once per study, then neighbouring-NFE winners (warm start)."""
        record = StudyRecord(self.study)
        if record.baselines_enqueued:
            return []
        labels = []
        for baseline in baselines(self.space, self.definition.nfe):
            self.study.enqueue_trial(baseline.params, skip_if_exists=True, user_attrs=TrialRecord(
                baseline=baseline.label, baseline_kind=baseline.kind).attrs())
            labels.append(baseline.label)
        if self.definition.search.warm_start:
            for row in self._neighbours():
                params = json.loads(row.schedule_json).get("provenance", {}).get("params")
                if params:
                    self.study.enqueue_trial(params, user_attrs={"warm_start": f"best of NFE {row.nfe}"},
                                             skip_if_exists=True)
                    labels.append(f"warm start from NFE {row.nfe}")
        record.mark_baselines_enqueued()
        return labels

    def _neighbours(self, count: int = 2):
        if self.definition.nfes:  # a multi-NFE study covers its neighbours itself
            return []
        # A space that chooses the sampler finds a neighbour's winner under the sampler it chose (one valid here).
        samplers = self.space.ctx.samplers if self.space.choose_sampler else (self.definition.sampler,)
        rows = [r for name in samplers for r in self.store.best(self.adapter.name, name)
                if r.weights_sha256 == self.adapter.identity.sha256 and r.nfe != self.definition.nfe
                and r.space == self.definition.space]
        best = {}  # one row per neighbouring NFE: its best over the samplers
        for row in sorted(rows, key=lambda r: r.value):
            best.setdefault(row.nfe, row)
        return sorted(best.values(), key=lambda r: abs(math.log(r.nfe / self.definition.nfe)))[:count]


class _OneLineFailures(logging.Filter):
    """Optuna logs a caught trial failure with its traceback; an expected one (bad images, OOM) gets one line,
    a skipped trial none (it used nothing)."""

    def __init__(self, expected: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if isinstance(error, (TrialSkipped, KeyboardInterrupt)) or " failed with value " in message:
            return False  # skipped: nothing used; Ctrl-C: the CLI says so; "with value None": said already
        if isinstance(error, self.expected):
            number = message.split(" ", 2)[1] if message.startswith("Trial ") else "?"
            record.msg, record.args, record.exc_info, record.exc_text = (
                f"trial {number} failed: {type(error).__name__}: {' '.join(str(error).split())}", (), None, None)
        return True


@contextmanager
def _one_line_trial_failures(expected: tuple[type[BaseException], ...]) -> Iterator[None]:
    logger, quiet = logging.getLogger("optuna.study._optimize"), _OneLineFailures(expected)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def check_definition(definition: StudyDefinition) -> None:
    """What needs no model: types and ranges (also of a definition made in Python), sampler, NFEs, space, options."""
    validate_definition(definition)
    steps_for_nfe(definition.sampler, definition.nfe)
    for nfe in definition.nfes:  # every NFE of a multi-NFE study must be exact for the study's sampler too
        steps_for_nfe(definition.sampler, nfe)
    check_space_name(definition.space)
    check_sampler_options(definition.sampler, definition.sampler_options,
                          where=f"{definition.source}: [sampler_options]")


def open_session(definition: StudyDefinition, *, storage_url: str | None = None, device: str = "cpu",
                 adapter: SkipAdapter | None = None, settings: Settings | None = None,
                 study_name: str | None = None, calibrate: bool = True) -> StudySession:
    """Load the model, proxy and space, and create or resume the study (``load_if_exists``).

    ``study_name`` joins that study (a worker of another process's run) instead of naming one from the
    definition. ``calibrate=False`` leaves the rho bounds to :meth:`StudySession.calibrate` (the Ray executor
    sweeps on its workers) unless the study already stores them. ``settings`` go to every stage (store, model,
    proxy, artifacts); without them the environment is read here (``Settings.from_env()``).
    """
    settings = settings or Settings.from_env()
    # Cheap checks first: a typo must not cost a model load.
    check_definition(definition)
    sampler_spec = get_sampler(definition.sampler)
    steps = steps_for_nfe(definition.sampler, definition.nfe)
    storage_url = storage_url or default_storage_url(settings)
    store = BestStore(storage_url, lock_timeout=settings.lock_timeout)
    if adapter is None:
        adapter = load_model(definition.model, checkpoint=definition.checkpoint, trust_pickle=definition.trust_pickle,
                             device=str(resolve_device(device)), settings=settings)
    models = CONSISTENCY if is_consistency_model(adapter) else DIFFUSION  # which samplers '+sampler' may pick
    check_sampler_for_model(definition.sampler, models, adapter.name)
    if definition.proxy == ProxyConfig() and adapter.dataset not in (None, "mnist"):
        # No [proxy] section: score with Inception on the model's own data set, not the MNIST default.
        definition = dataclasses.replace(definition, proxy=default_proxy_config(adapter.dataset,
                                                                                fid_ref=settings.fid_ref))
    elif (adapter.dataset not in (None, "mnist") and definition.proxy.dataset != "mnist"
          and dataclasses.replace(definition.proxy, dataset="mnist", resize=None) == ProxyConfig()):
        # Only the reference data set given (--dataset): the extractor still follows the model's data set.
        proxy = dataclasses.replace(default_proxy_config(adapter.dataset), dataset=definition.proxy.dataset,
                                    resize=definition.proxy.resize)
        definition = dataclasses.replace(definition, proxy=proxy)
    proxy = FidProxy(adapter, sampler=definition.sampler, nfe=definition.nfe, config=definition.proxy,
                     sampler_options=definition.sampler_options, settings=settings)
    ctx = SpaceContext(num_skip_points=len(adapter.skip_points), level_of_point=adapter.level_of_points(),
                       sigma_min=adapter.sigma_min, sigma_max=adapter.sigma_max, num_steps=steps,
                       stochastic=sampler_spec.stochastic, sampler=definition.sampler,
                       nfes=tuple(sorted(definition.nfes)),
                       samplers=samplers_for(definition.nfes or (definition.nfe,), models),
                       default_spacing=adapter.default_spacing, models=models)
    space = get_space(definition.space, ctx, definition.space_bounds)
    name = study_name or study_name_for(definition, adapter)
    # Processes starting together on a fresh database would race to create Optuna's tables.
    with study_lock(store.engine, "optuna-schema"):
        study = optuna.create_study(storage=trial_storage(storage_url, settings.heartbeat_seconds),
                                    study_name=name, direction=METRICS.get(definition.proxy.metric).direction,
                                    load_if_exists=True,
                                    sampler=make_sampler(definition.search))
    record = StudyRecord(study)
    _check_identity(record, definition, adapter, name)
    if study.metric_names != [definition.proxy.metric]:  # optuna-dashboard shows "fid", not "Objective 0"
        with warnings.catch_warnings():  # flagged experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([definition.proxy.metric])
    with study_lock(store.engine, f"{name}:claim"):
        process_index = record.join()
    study.sampler = make_sampler(definition.search, process_index=process_index)
    session = StudySession(definition, adapter, proxy, space, study, store, storage_url, settings)
    if calibrate:
        session.calibrate()
    else:
        session.refresh_calibration()
    return session


def _spec_to_store(spec: str) -> str:
    """The model spec as a report finds it again from another folder (a model file by its absolute path)."""
    from pathlib import Path
    return str(Path(spec).expanduser().resolve()) if spec.endswith(".toml") else spec


def _check_identity(record: StudyRecord, definition: StudyDefinition, adapter: SkipAdapter, name: str) -> None:
    """Record what the study searches; refuse to resume a study (by --study-name) whose objective differs."""
    current = {"model": adapter.name, "weights_sha256": adapter.identity.sha256, "sampler": definition.sampler,
               "nfe": definition.nfe, "nfes": list(definition.nfes),
               "space": definition.space, "objective_digest": definition.objective_digest(),
               "space_bounds": dataclasses.asdict(definition.space_bounds),
               "proxy": {**dataclasses.asdict(definition.proxy), "rungs": list(definition.proxy.rungs)},
               "sampler_options": dict(definition.sampler_options), "metric": definition.proxy.metric,
               "extractor": definition.proxy.extractor, "rungs": list(definition.proxy.rungs),
               "final_n": definition.search.final_n, "trials": definition.trials, "source": definition.source,
               "model_spec": _spec_to_store(definition.model)}
    stored = record.definition
    if not stored:
        record.set_definition(current)
        return
    keys = ("model", "weights_sha256", "sampler", "nfe", "space", "objective_digest")
    changed = [k for k in keys if k in stored and stored[k] != current[k]]
    if changed:
        detail = ", ".join(f"{k} {stored[k]!r} -> {current[k]!r}" for k in changed if k != "objective_digest")
        if "objective_digest" in changed:
            parts = [k for k in ("space_bounds", "proxy", "sampler_options") if stored.get(k) != current[k]]
            detail = ", ".join(filter(None, [detail, f"{'/'.join(parts) or 'objective'} changed"]))
        raise StudyDefinitionError(f"study {name!r} exists with a different objective ({detail}); resuming it would "
                                   "mix incomparable trials: choose another --study-name or leave it out")
