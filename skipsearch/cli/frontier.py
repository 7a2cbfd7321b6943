"""``skipsearch frontier`` and ``best --frontier``: FID against NFE (:mod:`skipsearch.frontier`)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from skipsearch.cli.app import app, console, out, settings_of
from skipsearch.cli.options import (
    CheckpointOpt,
    DeviceOpt,
    ModelOpt,
    StorageOpt,
    TrustOpt,
    check_output_folder,
    parse_nfes,
    parse_rungs,
    resolve_storage,
    use_device,
)


@app.command()
def frontier(ctx: typer.Context, model: str = ModelOpt,
             nfes: str = typer.Option("3,5,7,9,13,19,35", "--nfes", help="comma-separated NFEs, one study each"),
             space: Optional[str] = typer.Option(None, "--space",
                                                 help="comma-separated searched spaces, one arm each (default: the "
                                                      "study file's space, rho only, and joint)"),
             shared: bool = typer.Option(False, "--shared",
                                         help="also one schedule searched for every NFE at once (as --nfes in "
                                              "'optimize')"),
             sampler: Optional[str] = typer.Option(None, help="reference sampler for rho = 1, the paper recipe and "
                                                               "the limit (default: the study file's)"),
             n: Optional[int] = typer.Option(None, "--n", help="images per validated point, the same seeds for all "
                                                                "(default: the study file's final_n)"),
             study_n: Optional[int] = typer.Option(None, "--study-n", help="images of each study's own validation, "
                                                                           "which picks its winner (default: --n)"),
             trials: Optional[int] = typer.Option(None, "--trials", help="trial budget of each study"),
             rungs: Optional[str] = typer.Option(None, help="comma-separated image counts, e.g. 100,200"),
             rho_min: Optional[float] = None, rho_max: Optional[float] = None,
             budget: Optional[int] = typer.Option(None, "--budget",
                                                  help="denoiser calls this run may spend (work found stored is "
                                                       "free); it stops before a trial or point that would pass it"),
             bootstrap: int = typer.Option(200, "--bootstrap", help="paired-bootstrap resamples per CI"),
             limit_nfe: int = typer.Option(79, "--limit-nfe", help="the limit's first NFE (rho = 1, doubled until "
                                                                   "two doublings change FID < 1%)"),
             limit_max_nfe: int = typer.Option(639, "--limit-max-nfe", help="the limit stops here if not converged"),
             output: Path = typer.Option(Path("frontier"), "-o", "--output",
                                         help="folder for frontier.png, .csv, .json and index.html"),
             storage: Optional[str] = StorageOpt, checkpoint: Optional[Path] = CheckpointOpt,
             trust_pickle: bool = TrustOpt, device: str = DeviceOpt) -> None:
    """FID against NFE: rho = 1, the paper recipe and searched schedules per NFE, and the model's own limit."""
    from skipsearch.frontier import FrontierControl, FrontierPlan, LimitPlan, run_frontier
    settings = settings_of(ctx)
    check_output_folder(output, "-o")
    spaces = tuple(v.strip() for v in space.split(",") if v.strip()) if space else ()
    plan = FrontierPlan(model=model, nfes=parse_nfes(nfes) or (), spaces=spaces, shared=shared, sampler=sampler,
                        n=n, study_n=study_n, trials=trials, rungs=parse_rungs(rungs), rho_min=rho_min,
                        rho_max=rho_max, budget=budget,
                        resamples=bootstrap, limit=LimitPlan(start_nfe=limit_nfe, max_nfe=limit_max_nfe),
                        checkpoint=str(checkpoint) if checkpoint else None, trust_pickle=trust_pickle)
    plan.check()  # a bad value costs no model load
    url = resolve_storage(storage, settings)
    control = FrontierControl()
    dev = use_device(device)

    def on_sigint(_signum, _frame) -> None:
        if control.stopped:
            raise KeyboardInterrupt
        control.request_stop("interrupted")
        console.print("[yellow]stopping after the current trial or point (Ctrl-C again to abort now)[/yellow]")

    from skipsearch.execution.interrupts import interrupts_from_finalizers_redelivered
    previous = signal.signal(signal.SIGINT, on_sigint)
    events, progress = _frontier_events()
    try:
        with interrupts_from_finalizers_redelivered():
            result = run_frontier(plan, storage_url=url, device=str(dev), settings=settings, events=events,
                                  control=control)
    finally:
        signal.signal(signal.SIGINT, previous)
        if progress.live.is_started:
            progress.stop()
    _print_frontier_result(result, url, output)


def _frontier_events():
    """Progress of a frontier run: a line per stage (the NFE worked on), a trial bar per study."""
    import optuna

    from skipsearch.frontier import FrontierEvents
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar says what Optuna logs per trial
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    tasks: dict[str, Any] = {}

    def stage(line: str) -> None:
        if progress.live.is_started:
            progress.stop()  # a stage line ends the study bar above it
        out.print(escape(line), soft_wrap=True)

    def session(session, arm: str, nfe: Optional[int]) -> None:
        from skipsearch.store.records import count_finished
        where = f"NFE {nfe} " if nfe is not None else "all NFEs "
        tasks[session.study.study_name] = progress.add_task(f"{where}{arm}", total=session.definition.trials,
                                                            completed=count_finished(session.study))
        progress.start()

    def trial(study, _trial) -> None:
        from skipsearch.store.records import count_finished
        if study.study_name in tasks:
            progress.update(tasks[study.study_name], completed=count_finished(study))

    return FrontierEvents(stage=stage, session=session, trial=trial), progress


def _print_frontier_result(result, url: str, output: Path) -> None:
    from skipsearch.export.frontier import load_view, terminal_table, write_outputs
    from skipsearch.export.tables import terminal_width
    from skipsearch.store import FrontierStore, redact_url
    with FrontierStore(url) as store:
        view = load_view(store, result.key)
    out.file.write("\n" + terminal_table(view, width=terminal_width(out.width)))
    out.file.flush()
    if view.points:
        written = write_outputs(view, output)
        out.print(f"wrote {', '.join(p.name for p in written)} in {escape(str(output))}", soft_wrap=True)
    out.print(f"this run: {result.spent_calls:,} denoiser calls, {result.seconds:.0f}s; studies run "
              f"{len(result.studies_run)}, reused {len(result.studies_reused)}; points measured "
              f"{result.points_measured}, reused {result.points_reused}; limit "
              f"{'reused' if result.limit_reused else 'measured' if result.limit else 'not measured'}; results in "
              f"{escape(redact_url(url))}", soft_wrap=True)
    if result.stopped == "interrupted":
        out.print("[yellow]interrupted[/yellow]; everything measured is stored. Resume with the same command.")
        raise typer.Exit(130)
    if result.stopped == "budget":
        out.print(f"[yellow]budget reached[/yellow] ({result.spent_calls:,} denoiser calls spent); the frontier is "
                  "incomplete. Run again (a larger --budget, or none) to go on where it stopped.", soft_wrap=True)


def _print_frontiers(ctx: typer.Context, model: Optional[str], sampler: Optional[str], storage: Optional[str],
                     fmt: str, wide: bool) -> None:
    """``best --frontier``: every stored frontier (of a model, a reference sampler), read from the store."""
    from skipsearch.export.frontier import load_view, render_rows, terminal_table
    from skipsearch.export.tables import terminal_width
    from skipsearch.models import model_key
    from skipsearch.store import FrontierStore, redact_url
    url = resolve_storage(storage, settings_of(ctx))
    with FrontierStore(url, lock_timeout=settings_of(ctx).lock_timeout) as store:
        views = [load_view(store, key) for key in store.keys(model_key(model) if model else None, sampler)]
    if not views:
        if fmt == "table":
            out.print(f"no NFE frontier in {escape(redact_url(url))} yet; run 'skipsearch frontier'", soft_wrap=True)
        elif fmt == "json":
            out.file.write("[]\n")
        return
    if fmt == "table":
        out.file.write("\n".join(terminal_table(v, width=terminal_width(out.width), wide=wide) for v in views))
    elif fmt == "json":
        out.file.write("[" + ",\n".join(render_rows(v, "json").rstrip() for v in views) + "]\n")
    else:
        out.file.write(render_rows(views[0], "csv") + "".join(render_rows(v, "csv").split("\n", 1)[1]
                                                               for v in views[1:]))
    out.file.flush()
