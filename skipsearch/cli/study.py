"""``skipsearch optimize``: a study definition from the flags, run by :func:`skipsearch.optimization.run_definition`
with a progress line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from skipsearch.cli.app import app, console, out, settings_of
from skipsearch.cli.options import (
    CheckpointOpt,
    DeviceOpt,
    ExtractorWeightsOpt,
    ModelOpt,
    StorageOpt,
    TrustOpt,
    check_max_nfe,
    check_positive,
    check_weights_file,
    parse_nfes,
    parse_rungs,
    resolve_storage,
    use_device,
)
from skipsearch.errors import UsageError
from skipsearch.settings import Settings


@app.command()
def optimize(ctx: typer.Context, model: str = ModelOpt, nfe: Optional[int] = typer.Option(None, "--nfe"),
             nfes: Optional[str] = typer.Option(None, "--nfes",
                                                help="one schedule for several NFEs, e.g. 5,9,17 (mean ratio to "
                                                     "rho = 1)"),
             sampler: Optional[str] = typer.Option(None),
             space: Optional[str] = typer.Option(None,
                                                 help="search space: a rho family with parts +grid, +free-grid, "
                                                      "+sampler, +eps; 'joint' searches sampler, grid and rho "
                                                      "(s2dm*: S²-DM fine-tuning trials)"),
             trials: Optional[int] = typer.Option(None, "--trials", help="trial budget of the study"),
             study: Optional[Path] = typer.Option(None, "--study", help="study definition (TOML)"),
             storage: Optional[str] = StorageOpt, study_name: Optional[str] = None,
             optuna_sampler: Optional[str] = typer.Option(None),
             pruner: Optional[str] = typer.Option(None),
             rho_min: Optional[float] = None, rho_max: Optional[float] = None,
             rungs: Optional[str] = typer.Option(None, help="comma-separated image counts, e.g. 250,500,1000"),
             final_n: Optional[int] = typer.Option(None, help="images for the validation of the top trials"),
             top_k: Optional[int] = typer.Option(None, help="trials re-evaluated at final n"),
             metric: Optional[str] = typer.Option(None),
             dataset: Optional[str] = typer.Option(None, help="reference data set: mnist, folder:DIR, zip:FILE, "
                                                                "npz:FILE, torchvision:NAME:ROOT, stats:FILE, self"),
             extractor: Optional[str] = typer.Option(None, help="feature extractor of the proxy (default: the "
                                                                  "study file's, else by data set)"),
             fid_weights: Optional[Path] = ExtractorWeightsOpt,
             seed: Optional[int] = None,
             export: Optional[Path] = typer.Option(None, help="where to write the best schedule JSON"),
             checkpoint: Optional[Path] = CheckpointOpt, trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
             workers: Optional[int] = typer.Option(None, help="Ray workers (one per GPU, else per CPU slot)"),
             ray_address: Optional[str] = typer.Option(None, help="auto | ray://host:port (default: local)"),
             trials_per_batch: Optional[int] = typer.Option(
                 None, help="trials scored together in shared forwards (a GPU a small model leaves idle)"),
             check: bool = typer.Option(True, "--check/--no-check",
                                        help="check the model spec first (skipsearch check-model; a few s)")) -> None:
    """Search Skip-Tuning schedules with Optuna: proxy rungs + pruning, SQL store, validated export."""
    from skipsearch.search.definition import StudyDefinition
    settings = settings_of(ctx)
    check_positive(workers, "--workers")
    check_positive(trials, "--trials")
    check_positive(trials_per_batch, "--trials-per-batch")
    check_max_nfe(nfe, "--nfe")
    check_weights_file(fid_weights)
    if export is not None and export.is_dir():
        raise UsageError(f"--export {export} is a folder; give a .json file name")
    # --model's default is 'edm': with --study it replaces the file's model only when given otherwise.
    definition = StudyDefinition.from_options(
        study=study, model=model if (study is None or model != "edm") else None, nfe=nfe,
        nfes=parse_nfes(nfes), sampler=sampler, settings=settings,
        space=space, trials=trials, name=study_name,
        checkpoint=str(checkpoint) if checkpoint else None, trust_pickle=trust_pickle or None,
        search__sampler=optuna_sampler, search__pruner=pruner, search__final_n=final_n,
        search__validate_top_k=top_k, search__seed=seed, search__trials_per_batch=trials_per_batch,
        space_bounds__rho_min=rho_min,
        space_bounds__rho_max=rho_max, proxy__metric=metric, proxy__rungs=parse_rungs(rungs),
        proxy__dataset=dataset,
        proxy__extractor=extractor, proxy__weights_path=str(fid_weights) if fid_weights else None,
        # a range given on the command line is the range searched
        space_bounds__calibrate=False if rho_min is not None or rho_max is not None else None,
        check=None if check else False)
    storage_url = resolve_storage(storage, settings)
    _optimize_with_progress(definition, storage_url=storage_url, device=device, export=export, workers=workers,
                            ray_address=ray_address, settings=settings)


def _optimize_with_progress(definition, *, storage_url: str, device: str, export: Optional[Path],
                            workers: Optional[int], ray_address: Optional[str], settings: Settings) -> None:
    """One rich progress line for the study; the first Ctrl-C stops after the current trial."""

    import optuna
    from optuna.trial import TrialState

    from skipsearch.optimization import run_definition, trial_counts
    from skipsearch.store import redact_url
    from skipsearch.store.records import count_finished
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress line says what Optuna logs per trial
    dev = use_device(device)
    progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
    state: dict[str, Any] = {}

    from skipsearch.proxy.config import metric_display_name
    display = metric_display_name(definition.proxy.metric, definition.proxy.extractor)

    def on_session(session) -> None:
        state["t0"], state["done0"] = time.perf_counter(), count_finished(session.study)
        out.print(f"study [bold]{escape(session.study.study_name)}[/bold] in {escape(redact_url(storage_url))} "
                  f"({count_finished(session.study)}/{definition.trials} trials done, space {definition.space}, "
                  f"{definition.sampler} NFE {definition.nfe}, proxy {display} on "
                  f"{definition.proxy.extractor}, rungs {list(definition.proxy.rungs)})")
        if session.calibration is not None:
            out.print(escape(session.calibration.describe()))
        state["task"] = progress.add_task("trials", total=definition.trials, info="",
                                          completed=count_finished(session.study))
        progress.start()

    def on_trial(study: optuna.Study, _trial) -> None:
        counts = trial_counts(study)
        values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        best = f"best {min(values):.4f}" if values else "best -"
        rate = (counts["finished"] - state["done0"]) / max(1e-9, (time.perf_counter() - state["t0"]) / 60)
        progress.update(state["task"], completed=counts["finished"],
                        info=f"{best}  pruned {counts['pruned']}  failed {counts['failed']}  running "
                             f"{counts['running']}  {rate:.1f}/min")

    def on_stop() -> None:
        console.print("[yellow]stopping after the current trial or validation (Ctrl-C again to abort "
                      "now)[/yellow]")

    try:  # interrupts: skipsearch.execution.interrupts, installed by run_definition (Python gets them too)
        result = run_definition(definition, storage_url=storage_url, device=str(dev), export=export,
                                workers=workers, ray_address=ray_address, on_trial=on_trial,
                                on_session=on_session, settings=settings, on_stop=on_stop,
                                on_validated=lambda t, v: console.print(f"validated trial {t.number}: {v:.4f}"),
                                on_check=_print_check)
    finally:
        progress.stop()
    _print_result(definition, result, storage_url)


def _print_check(report) -> None:
    """check-model's warnings, before the study (skipsearch.models.check)."""
    for line in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)} ('skipsearch check-model' shows the table; "
                      "--no-check skips the check)", soft_wrap=True)


def _quality_text(v: dict) -> str:
    """``  precision 0.71  recall 0.64  IS 2.1``: torch-fidelity's numbers beside the validated value, if measured."""
    from skipsearch.proxy.config import QUALITY_FIELDS
    return "".join(f"  {label} {v[key]:.4f}" for key, label in QUALITY_FIELDS if v.get(key) is not None)


def _print_result(definition, result, storage_url: str) -> None:
    import json
    import shlex

    from skipsearch.store import redact_url
    counts = result.counts
    skipped = f", {counts['skipped']} skipped or queued again" if counts.get("skipped") else ""
    out.print(f"{counts['finished']} trials: {counts['complete']} complete, {counts['pruned']} pruned, "
              f"{counts['failed']} failed{skipped} ({result.seconds:.0f}s)")
    if result.interrupted:
        out.print(f"[yellow]interrupted[/yellow]; the study is saved. Resume with the same command (study "
                  f"{escape(result.study_name)}, storage {escape(redact_url(storage_url))}).")
        raise typer.Exit(130)  # 143 after a SIGTERM (main)
    for v in result.validations:
        label = f" ({escape(v['baseline'])})" if v.get("baseline") else ""
        if "value" in v:
            proxy = f" (proxy {v['proxy']:.4f})" if v.get("proxy") is not None else " (pruned in the search)"
            out.print(f"  trial {v['trial']}{label}: validated {v['value']:.4f} at n={v['n']}{proxy}"
                      + _quality_text(v))
        else:
            out.print(f"  trial {v['trial']}{label}: validation failed: {escape(v['error'])}")
    for line in result.verdict_lines():
        out.print(escape(line))
    if not any("value" in v for v in result.validations):
        raise typer.Exit(1)  # a study without a validated result failed, whatever its trials did
    if result.best is not None:
        from skipsearch.proxy.config import metric_display_name
        shown = metric_display_name(result.best.metric,
                                    getattr(result.best, "extractor", None) or definition.proxy.extractor)
        out.print(f"best {shown} {result.best.value:.4f} (trial {result.best.trial_number}, "
                  f"n={result.best.n}); results in {escape(redact_url(storage_url))}")
        out.print(f"exported schedule: {escape(str(result.export_path))}")
        # Fine-tuned weights were exported beside the JSON and load from there; a --checkpoint would override them.
        finetuned = json.loads(result.best.schedule_json).get("provenance", {}).get("weights_path")
        words = ["skipsearch", "sample", "--model", definition.model, "--nfe", str(definition.nfe), "--sampler",
                 result.best.sampler, "--schedule", str(result.export_path)]
        if definition.checkpoint and not finetuned:
            words += ["--checkpoint", str(definition.checkpoint)]
        out.print(escape("use it: " + shlex.join(words)), soft_wrap=True)  # one line, to copy whole
