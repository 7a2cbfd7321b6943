"""``optimize`` end to end: study session -> trials (here, or on Ray workers) -> validation -> export."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skipsearch.errors import UsageError
from skipsearch.execution.interrupts import graceful_interrupts
from skipsearch.execution.session import StudySession, open_session
from skipsearch.proxy.config import metric_spec
from skipsearch.search.definition import StudyDefinition
from skipsearch.settings import Settings
from skipsearch.store import BestRow, default_storage_url, redact_url
from skipsearch.store.records import count_finished, uncounted_failures
from skipsearch.store.studies import artifact_dir

log = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    study_name: str
    storage_url: str
    counts: dict[str, int]
    validations: list[dict[str, Any]] = field(default_factory=list)
    best: BestRow | None = None
    export_path: Path | None = None
    interrupted: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the export said: rejected winners skipped
    metric: str = "fid"  # which way is better comes from its spec

    def verdict_lines(self) -> list[str]:
        """Plain words on what validation found: nothing validated, or nothing beat rho = 1."""
        if self.interrupted:
            return []
        return self._validation_lines() + self.notes

    def _validation_lines(self) -> list[str]:
        values = [v for v in self.validations if "value" in v]
        if not values:
            return ["nothing was validated: every candidate trial failed or was pruned; see the trials' fail_reason"
                    " ('skipsearch report')"]
        spec = metric_spec(self.metric)
        untuned = [v for v in values if v.get("baseline_kind") == "untuned"]
        searched = [v for v in values if not v.get("baseline")]
        if untuned and (not searched or not spec.better(spec.best(v["value"] for v in searched),
                                                        untuned[0]["value"])):
            return [f"no searched schedule beat rho = 1 after validation (untuned {untuned[0]['value']:.4f}); the "
                    "best stored schedule is the untuned model unless another baseline won"]
        if untuned:
            best = spec.best(v["value"] for v in searched)
            change = 100 * abs(untuned[0]["value"] - best) / abs(untuned[0]["value"])
            way = "lower" if spec.direction == "minimize" else "higher"
            return [f"best searched schedule {best:.4f} vs untuned {untuned[0]['value']:.4f} ({change:.1f}% {way})"]
        return []


def default_export_path(storage_url: str, study_name: str, settings: Settings) -> Path:
    """``schedules/<study>.json`` beside a SQLite file; for a server database, in a folder named after it, so the
    exports of two databases never overwrite each other."""
    folder = artifact_dir(storage_url, settings).parent / "schedules"
    if not storage_url.startswith("sqlite"):
        folder = folder / hashlib.sha256(redact_url(storage_url).encode()).hexdigest()[:12]
    return folder / f"{study_name}.json"


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; ``failed`` counts failures that used the budget, ``skipped`` the others (a repeat, no slot
    left, interrupted or orphaned and queued again)."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    skipped = uncounted_failures(study)
    return {"complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL) - skipped, "skipped": skipped,
            "running": states.count(TrialState.RUNNING), "finished": count_finished(study)}


def run_definition(definition: StudyDefinition, *, storage_url: str | None = None, device: str = "cpu",
                   export: str | Path | None = None, workers: int | None = None, ray_address: str | None = None,
                   settings: Settings | None = None,
                   on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                   on_session: Callable[[StudySession], None] | None = None,
                   on_validated: Callable[[FrozenTrial, float], None] | None = None,
                   on_stop: Callable[[], None] | None = None,
                   on_check: Callable[[Any], None] | None = None) -> OptimizeResult:
    """Run a study to its budget, validate the top trials and export the best schedule.

    Interrupts (:mod:`skipsearch.execution.interrupts`): the first Ctrl-C lets the running trial or validation
    finish, stores it and returns an interrupted result (``on_stop`` says so; by default a log warning); a second
    aborts. Python's ``optimize`` gets this as the CLI does. ``settings``: the caller's (the CLI's), handed to every
    stage; without them the environment is read here, once (``Settings.from_env()``).

    With ``definition.check`` (the default) the model is checked before the study opens
    (:func:`skipsearch.models.check.check_model`, a few seconds); ``on_check`` gets the report (by default its
    warnings are logged). The check warns; it never stops the study.
    """
    settings = settings if settings is not None else Settings.from_env()
    sessions: list[StudySession] = []

    def stop() -> bool:
        if not sessions:  # still loading the model: nothing to finish, abort
            return False
        sessions[0].interrupted = True
        with contextlib.suppress(RuntimeError):  # no optimize loop running right now
            sessions[0].study.stop()
        (on_stop or _say_stopping)()
        return True

    with graceful_interrupts(stop):
        return _run_definition(definition, storage_url=storage_url, device=device, export=export, workers=workers,
                               ray_address=ray_address, settings=settings, on_trial=on_trial,
                               on_session=on_session, on_validated=on_validated, sessions=sessions,
                               on_check=on_check)


def _say_stopping() -> None:
    log.warning("stopping after the current trial or validation (Ctrl-C again to abort now)")


def _run_definition(definition: StudyDefinition, *, storage_url: str | None, device: str,
                    export: str | Path | None, workers: int | None, ray_address: str | None,
                    settings: Settings, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None,
                    on_session: Callable[[StudySession], None] | None,
                    on_validated: Callable[[FrozenTrial, float], None] | None,
                    sessions: list[StudySession], on_check: Callable[[Any], None] | None = None) -> OptimizeResult:
    start = time.perf_counter()
    storage_url = storage_url or default_storage_url(settings)
    if workers is not None:  # checked before the model loads or the study is created
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UsageError(f"workers must be a positive integer (or None: run here), got {workers!r}")
        if definition.search.trials_per_batch > 1:
            raise UsageError(f"trials_per_batch = {definition.search.trials_per_batch} batches trials in this "
                             "process; Ray workers run one trial each: use one of --workers, --trials-per-batch")
        from skipsearch.execution.ray import check_address
        check_address(ray_address)
    checked = definition.check and settings.check_model  # the study's choice, then the machine's
    adapter = _checked_model(definition, device, settings, on_check) if checked else None
    # With workers the rho bounds are calibrated once they are up, the sweep spread over them (prepare).
    session = open_session(definition, storage_url=storage_url, device=device, settings=settings,
                           calibrate=not workers, adapter=adapter)
    sessions.append(session)

    def prepare(evaluate_many: Callable[[list[Any]], list[float | None]] | None = None) -> None:
        session.calibrate(evaluate_many)
        session.enqueue_starts()  # after calibration: the baselines are points of the calibrated space
        if on_session is not None:
            on_session(session)

    interrupted = False
    if workers:
        from skipsearch.execution.ray import run_on_ray
        interrupted = run_on_ray(session, workers=workers, address=ray_address, on_trial=on_trial, prepare=prepare)
    else:
        prepare()
        session.run(callbacks=[on_trial] if on_trial else None,
                    trials_per_batch=definition.search.trials_per_batch)
        interrupted = session.interrupted
    result = OptimizeResult(session.study.study_name, storage_url, trial_counts(session.study),
                            interrupted=interrupted, metric=definition.proxy.metric)
    if not interrupted and session.remaining() == 0:
        result.validations = session.validate(on_done=on_validated)
        # A Ctrl-C during validation stops after the candidate being scored: those done are stored, the same
        # command validates the rest and exports; nothing is exported from a partial validation.
        result.interrupted = session.interrupted
        result.best = None if result.interrupted else session.best_row()
        if result.best is not None:
            from skipsearch.export.schedule import AllRejectedError, export_best
            path = Path(export) if export else default_export_path(storage_url, session.study.study_name, settings)
            try:  # a reviewer's rejection (an earlier run's verdicts) moves the export to the next candidate
                result.export_path, result.best = export_best(
                    session.store, path, model=result.best.model_name, sampler=result.best.sampler,
                    nfe=result.best.nfe, on_skip=result.notes.append)
            except AllRejectedError as exc:
                result.best = None
                result.notes.append(str(exc))
        from skipsearch.export.review import open_review  # a verdict form per validated candidate (dashboard)
        open_review(session.study, storage_url, session.objective.artifacts.store, settings)
    from skipsearch.export.note import save_study_note
    save_study_note(session, result)  # optuna-dashboard's study note: what was searched, what won, where it went
    result.seconds = time.perf_counter() - start
    session.store.close()
    return result


def _checked_model(definition: StudyDefinition, device: str, settings: Settings,
                   on_check: Callable[[Any], None] | None) -> Any:
    """The study's model, loaded once (the session reuses it) and checked (:mod:`skipsearch.models.check`)."""
    from skipsearch.device import resolve_device
    from skipsearch.execution.session import check_definition
    from skipsearch.models import load_model
    from skipsearch.models.check import check_spec
    check_definition(definition)  # a typo must not cost a model load
    adapter = load_model(definition.model, checkpoint=definition.checkpoint, trust_pickle=definition.trust_pickle,
                         device=str(resolve_device(device)), settings=settings)
    try:
        from skipsearch.sampling.generate import untuned_images
        report = check_spec(adapter, definition.model, settings=settings, images=untuned_images)
    except Exception as exc:  # noqa: BLE001 - the check warns, it never stops a study
        log.warning("check-model could not run on %s: %s: %s", definition.model, type(exc).__name__, exc)
        return adapter
    if on_check is not None:
        on_check(report)
    else:
        for line in report.warnings:
            log.warning("check-model: %s", line)
    return adapter


def optimize(model: str | None = None, nfe: int | None = None, sampler: str | None = None, *,
             study: str | Path | StudyDefinition | None = None, storage: str | None = None,
             device: str = "cpu", export: str | Path | None = None, workers: int | None = None,
             ray_address: str | None = None, settings: Settings | None = None, check: bool | None = None,
             **overrides: Any) -> OptimizeResult:
    """Python mirror of ``skipsearch optimize``; ``overrides`` as ``trials=8``, ``space='per-layer'``,
    ``proxy__rungs=(100, 200)``, ``search__pruner='median'``. ``model`` overrides a study's own model only when
    given; without a study it defaults to the bundled ``edm``. ``settings``: as :func:`run_definition` (without
    them the environment is read here, once: study files in ``SKIPSEARCH_STUDIES`` are found too). ``check``:
    check the model before the study (default: the study's ``check``, True); False skips it.
    """
    settings = settings if settings is not None else Settings.from_env()
    definition = StudyDefinition.from_options(study=study, model=model, nfe=nfe, sampler=sampler, settings=settings,
                                              check=check, **overrides)
    return run_definition(definition, storage_url=storage, device=device, export=export, workers=workers,
                          ray_address=ray_address, settings=settings)
