"""Commands on what the store holds: ``best``, ``export``, ``studies``, ``report``, ``dashboard``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from skipsearch.cli.app import app, console, out, settings_of
from skipsearch.cli.frontier import _print_frontiers
from skipsearch.cli.options import (
    FormatOpt,
    ModelOpt,
    StorageOpt,
    WideOpt,
    check_output_folder,
    check_positive,
    print_rows,
    resolve_storage,
)
from skipsearch.errors import UsageError


@app.command()
def best(ctx: typer.Context, model: Optional[str] = typer.Option(None, "--model", "-m"),
         sampler: Optional[str] = typer.Option(None),
         nfe: Optional[int] = typer.Option(None, "--nfe"), storage: Optional[str] = StorageOpt,
         fmt: str = FormatOpt, wide: bool = WideOpt,
         frontier: bool = typer.Option(False, "--frontier",
                                       help="the stored NFE frontiers and limits instead ('skipsearch frontier'); "
                                            "runs nothing")) -> None:
    """The validated best schedule per model, sampler and NFE."""
    if frontier:
        _print_frontiers(ctx, model, sampler, storage, fmt, wide)
        return
    from skipsearch.export.review import honour_verdicts
    from skipsearch.models import model_key
    from skipsearch.store import BestStore, redact_url
    check_positive(nfe, "--nfe")
    url = resolve_storage(storage, settings_of(ctx))
    with BestStore(url, lock_timeout=settings_of(ctx).lock_timeout) as store:
        rows = store.best(model_key(model) if model else None, sampler, nfe)
        rows, skipped = honour_verdicts(store, rows)  # a rejected winner: the next best validated candidate
    for line in skipped:  # scripts read stdout: with --format json/csv the reason goes to stderr
        (out if fmt == "table" else console).print(escape(line), soft_wrap=True)
    from skipsearch.export.tables import Column, terminal_width
    fields = ["model_name", "weights_sha256", "sampler", "nfe", "space", "metric", "value", "n", "proxy_value",
              "extractor", "extractor_sha256", "study_name", "trial_number", "untuned", "created_at", "updated_at"]
    if not rows and fmt == "table":
        out.print("no validated best schedules yet; run 'skipsearch optimize'")
        return
    # Essential columns first (always shown); the rest by priority as the terminal's width allows.
    columns = [Column("model", key="model_name", wrap=True), Column("sampler"), Column("NFE", key="nfe", right=True),
               Column("metric"), Column("validated", key="value", right=True),
               Column("study/trial", 1, key=lambda r: f"{r['study_name']}#{r['trial_number']}"),
               Column("n", 2, right=True), Column("proxy", 3, key="proxy_value", right=True), Column("space", 4),
               Column("sha256", 5, key="weights_sha256", short=lambda sha: sha[:10]),
               Column("updated", 6, key="updated_at")]
    print_rows(f"best schedules in {redact_url(url)}", columns,
                [{**{k: getattr(r, k) for k in fields if k != "untuned"}, "untuned": r.is_untuned()} for r in rows],
                fmt, wide, fields=fields)
    note = out if fmt == "table" else console  # scripts read stdout: keep it to the data
    for r in rows:
        if r.is_untuned():
            note.print(f"{escape(r.model_name)} {r.sampler} NFE {r.nfe}: no searched schedule beat rho = 1 after "
                       "validation; the best is the untuned model", width=terminal_width(note.width))


@app.command("export")
def export_cmd(ctx: typer.Context, output: Path = typer.Option(Path("schedule.json"), "-o", "--output"),
               model: str = ModelOpt, sampler: Optional[str] = typer.Option(None),
               nfe: Optional[int] = typer.Option(None, "--nfe"), storage: Optional[str] = StorageOpt) -> None:
    """Write the validated best schedule as JSON (for 'sample --schedule' and skipsearch.apply)."""
    from skipsearch.export.schedule import export_best
    from skipsearch.models import model_key
    from skipsearch.store import BestStore
    check_positive(nfe, "--nfe")
    if output.is_dir():
        raise UsageError(f"-o {output} is a folder; give a .json file name")
    with BestStore(resolve_storage(storage, settings_of(ctx)), lock_timeout=settings_of(ctx).lock_timeout) as store:
        path, row = export_best(store, output, model=model_key(model), sampler=sampler, nfe=nfe,
                                on_skip=lambda line: out.print(escape(line), soft_wrap=True))  # rejected winners
    out.print(f"wrote {escape(str(path))}: {escape(row.model_name)} {row.sampler} NFE {row.nfe}, {row.metric} "
              f"{row.value:.4f} (n={row.n}, study {escape(row.study_name)} trial {row.trial_number})")
    if row.is_untuned():
        out.print("note: no searched schedule beat rho = 1 after validation; this schedule is the untuned model")


@app.command()
def studies(ctx: typer.Context, storage: Optional[str] = StorageOpt, fmt: str = FormatOpt,
            wide: bool = WideOpt) -> None:
    """Studies in the storage with trial counts and best values."""
    from skipsearch.store import BestStore
    from skipsearch.store.studies import study_summaries
    settings = settings_of(ctx)
    url = resolve_storage(storage, settings)
    BestStore(url, lock_timeout=settings_of(ctx).lock_timeout).close()  # checks connectivity with a one-line error
    rows = study_summaries(url, settings.heartbeat_seconds)
    from skipsearch.export.tables import Column
    columns = [Column("study", key="study_name", wrap=True), Column("trials", 1, right=True),
               Column("complete", 3, right=True), Column("pruned", 4, right=True), Column("failed", 5, right=True),
               Column("proxy", 2, key="best_proxy", right=True),
               Column("validated", key="best_validated", right=True), Column("started", 6)]
    print_rows("studies", columns, rows, fmt, wide, fields=["study_name", "trials", "complete", "pruned", "failed",
                                                             "running", "best_proxy", "best_validated", "started"])


@app.command()
def report(ctx: typer.Context, study_name: str = typer.Argument(..., help="study name (see 'skipsearch studies')"),
           output: Path = typer.Option(Path("report"), "-o", "--output"),
           no_images: bool = typer.Option(False, "--no-images",
                                          help="leave out the image grids (best, rho = 1, paper recipe), which "
                                               "sample with the study's model"),
           storage: Optional[str] = StorageOpt,
           model: Optional[str] = typer.Option(None, "--model", "-m",
                                               help="the model to draw the image grids with (default: the one the "
                                                    "study was run with: a registered name or a model file)")
           ) -> None:
    """index.html (header, validated table, rho heatmap, plots, image grids), trials CSV/Markdown and plots."""
    import optuna

    from skipsearch.export.report import write_report
    from skipsearch.store import BestStore
    from skipsearch.store.studies import optuna_storage
    settings = settings_of(ctx)
    url = resolve_storage(storage, settings)
    check_output_folder(output, "-o")
    if model is not None and not no_images:  # a missing or bad model file is refused before the study is read
        from skipsearch.models.spec import parse_model_file, spec_kind
        if spec_kind(model) == "file":
            parse_model_file(model)
    with BestStore(url, lock_timeout=settings_of(ctx).lock_timeout) as store:
        try:
            study = optuna.load_study(study_name=study_name, storage=optuna_storage(url, settings.heartbeat_seconds))
        except KeyError:
            raise UsageError(f"no study named {study_name!r}; run 'skipsearch studies' to list them") from None
        written = write_report(study, store, output, images=not no_images, settings=settings, model=model,
                               on_note=lambda line: out.print(f"note: {escape(line)}", soft_wrap=True))
    out.print(f"wrote {escape(str(written[-1]))} and {len(written) - 1} more files in {escape(str(output))}",
              soft_wrap=True)


@app.command()
def dashboard(ctx: typer.Context, storage: Optional[str] = StorageOpt, host: str = "127.0.0.1",
              port: int = typer.Option(8080, min=1, max=65535),
              allow_writes: bool = typer.Option(False, "--allow-writes",
                                                help="let the dashboard delete/rename studies and change trials "
                                                     "(off: read-only except notes and review forms)"),
              public: bool = typer.Option(False, "--public",
                                          help="allow a --host that is not a loopback address: the dashboard is "
                                               "then reachable from the network and has no login")) -> None:
    """Start optuna-dashboard on the same storage (trial sample grids included)."""
    from skipsearch.export.dashboard import check_address, serve
    from skipsearch.store import BestStore, redact_url
    settings = settings_of(ctx)
    url = resolve_storage(storage, settings)
    exposed = check_address(host, port, public=public)  # one line for a bad or exposed address, before any work
    BestStore(url, lock_timeout=settings_of(ctx).lock_timeout).close()
    mode = "writes allowed" if allow_writes else "read-only except notes and review forms; --allow-writes for more"
    address = escape(f"[{host}]" if ":" in host else host)
    out.print(f"optuna-dashboard for {escape(redact_url(url))} at http://{address}:{port}/ ({mode}; Ctrl-C to stop)")
    if exposed:
        console.print(f"[yellow]warning:[/yellow] {escape(exposed)} (--public)", soft_wrap=True)
    serve(url, host=host, port=port, settings=settings, allow_writes=allow_writes)
