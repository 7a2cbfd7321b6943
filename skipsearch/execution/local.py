"""``skipsearch optimize`` end to end: study session -> trials (local, or Ray workers) -> validation -> export."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skipsearch.search.definition import StudyDefinition, default_study, load_study_file, validate
from skipsearch.search.session import StudySession, artifact_dir, count_finished, open_session
from skipsearch.store.best import BestRow, default_storage_url, redact_url


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


def default_export_path(storage_url: str, study_name: str) -> Path:
    return artifact_dir(storage_url).parent / "schedules" / f"{study_name}.json"


def trial_counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL), "running": states.count(TrialState.RUNNING),
            "finished": count_finished(study)}


def run_definition(definition: StudyDefinition, *, storage_url: str | None = None, device: str = "cpu",
                   export: str | Path | None = None, workers: int | None = None, ray_address: str | None = None,
                   on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                   on_session: Callable[[StudySession], None] | None = None,
                   on_validated: Callable[[FrozenTrial, float], None] | None = None) -> OptimizeResult:
    """Run a study to its budget, validate the top trials and export the best schedule."""
    start = time.perf_counter()
    storage_url = storage_url or default_storage_url()
    session = open_session(definition, storage_url=storage_url, device=device)
    session.enqueue_starts()
    if on_session is not None:
        on_session(session)
    interrupted = False
    if workers:
        from skipsearch.execution.ray import run_on_ray
        interrupted = run_on_ray(session, workers=workers, address=ray_address, on_trial=on_trial)
    else:
        session.run(session.remaining(), callbacks=[on_trial] if on_trial else None)
        interrupted = bool(getattr(session, "interrupted", False))
    result = OptimizeResult(session.study.study_name, storage_url, trial_counts(session.study),
                            interrupted=interrupted)
    if not interrupted and session.remaining() == 0:
        result.validations = session.validate(on_done=on_validated)
        result.best = session.store.get(session.key)
        if result.best is not None:
            from skipsearch.export.schedule import export_best
            path = Path(export) if export else default_export_path(storage_url, session.study.study_name)
            result.export_path, _ = export_best(session.store, path, model=result.best.model_name,
                                                sampler=result.best.sampler, nfe=result.best.nfe)
    result.seconds = time.perf_counter() - start
    session.store.close()
    return result


def optimize(model: str = "edm", nfe: int | None = None, sampler: str | None = None, *,
             study: str | Path | StudyDefinition | None = None, storage: str | None = None,
             device: str = "cpu", export: str | Path | None = None, workers: int | None = None,
             ray_address: str | None = None, **overrides: Any) -> OptimizeResult:
    """Python mirror of ``skipsearch optimize``; ``overrides`` as ``trials=8``, ``space='per-layer'``,
    ``proxy__rungs=(100, 200)``, ``search__pruner='median'``.
    """
    if isinstance(study, StudyDefinition):
        base = study
    elif study is not None:
        base = load_study_file(study)
    else:
        base = default_study(model, sampler, nfe)
    definition = base.override(model=model, nfe=nfe, sampler=sampler, **overrides)
    validate(definition)
    return run_definition(definition, storage_url=storage, device=device, export=export, workers=workers,
                          ray_address=ray_address)


def optimize_with_progress(definition: StudyDefinition, *, storage_url: str, device: str, export: Path | None,
                           workers: int | None, ray_address: str | None, console, out) -> None:
    """The CLI front end: one rich progress line for the study, Ctrl-C stops after the current trial."""
    import typer
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from skipsearch.device import configure_cpu_threads, resolve_device
    dev = resolve_device(device)
    if dev.type == "cpu":
        configure_cpu_threads()
    progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), console=console)
    state: dict[str, Any] = {"session": None, "stops": 0}

    def on_session(session: StudySession) -> None:
        state["session"] = session
        state["t0"], state["done0"] = time.perf_counter(), count_finished(session.study)
        out.print(f"study [bold]{session.study.study_name}[/bold] in {redact_url(storage_url)} "
                  f"({count_finished(session.study)}/{definition.trials} trials done, space {definition.space}, "
                  f"{definition.sampler} NFE {definition.nfe}, proxy {definition.proxy.metric} on "
                  f"{definition.proxy.extractor}, rungs {list(definition.proxy.rungs)})")
        state["task"] = progress.add_task("trials", total=definition.trials, info="",
                                          completed=count_finished(session.study))
        progress.start()

    def on_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        counts = trial_counts(study)
        values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        best = f"best {min(values):.4f}" if values else "best -"
        rate = (counts["finished"] - state["done0"]) / max(1e-9, (time.perf_counter() - state["t0"]) / 60)
        progress.update(state["task"], completed=counts["finished"],
                        info=f"{best}  pruned {counts['pruned']}  failed {counts['failed']}  running "
                             f"{counts['running']}  {rate:.1f}/min")

    def on_sigint(_signum, _frame) -> None:
        state["stops"] += 1
        session = state.get("session")
        if state["stops"] > 1 or session is None:
            raise KeyboardInterrupt
        session.interrupted = True
        try:
            session.study.stop()
        except RuntimeError:
            pass
        console.print("[yellow]stopping after the current trial (Ctrl-C again to abort now)[/yellow]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = run_definition(definition, storage_url=storage_url, device=str(dev), export=export,
                                workers=workers, ray_address=ray_address, on_trial=on_trial, on_session=on_session,
                                on_validated=lambda t, v: console.print(f"validated trial {t.number}: {v:.4f}"))
    finally:
        signal.signal(signal.SIGINT, previous)
        progress.stop()
    counts = result.counts
    out.print(f"{counts['finished']} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
              f"{counts['failed']} failed ({result.seconds:.0f}s)")
    if result.interrupted:
        out.print(f"[yellow]interrupted[/yellow]; the study is saved. Resume with the same command (study "
                  f"{result.study_name}, storage {redact_url(storage_url)}).")
        raise typer.Exit(130)
    for v in result.validations:
        label = f" ({v['baseline']})" if v.get("baseline") else ""
        if "value" in v:
            out.print(f"  trial {v['trial']}{label}: validated {v['value']:.4f} at n={v['n']} (proxy {v['proxy']:.4f})")
        else:
            out.print(f"  trial {v['trial']}{label}: validation failed: {v['error']}")
    if result.best is not None:
        out.print(f"best {result.best.metric} {result.best.value:.4f} (trial {result.best.trial_number}, "
                  f"n={result.best.n}); results in {redact_url(storage_url)}")
        out.print(f"exported schedule: {result.export_path}")
        weights = json.loads(result.best.schedule_json).get("provenance", {}).get("weights_path")
        out.print(f"use it: skipsearch sample --model {definition.model} --nfe {definition.nfe} --sampler "
                  f"{definition.sampler} --schedule {result.export_path}"
                  + (f" --checkpoint {weights}" if weights else ""))
