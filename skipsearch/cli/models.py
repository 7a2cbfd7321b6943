"""Commands on a model: ``models``, ``skip-points``, ``sample``, ``train``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from skipsearch.cli.app import app, console, out, settings_of
from skipsearch.cli.options import (
    CheckpointOpt,
    DeviceOpt,
    FormatOpt,
    ModelOpt,
    TrustOpt,
    WideOpt,
    check_image_output,
    check_max_nfe,
    check_output_folder,
    check_positive,
    device_type,
    load_adapter,
    print_rows,
    progress_bar,
)
from skipsearch.cli.recipe import check_sample_size, recipe, resolve_schedule, weights_of
from skipsearch.errors import UsageError


@app.command()
def models(ctx: typer.Context, fmt: str = FormatOpt, wide: bool = WideOpt) -> None:
    """List the registered models and the model files found (skip points, source)."""
    from skipsearch.export.tables import Column
    from skipsearch.models import list_models
    rows = [{"name": info.name, "skip_points": info.num_skip_points or None, "description": info.description,
             "source": info.source} for info in list_models(settings_of(ctx))]
    columns = [Column("name", key="name", wrap=True), Column("skip points", key="skip_points", right=True),
               Column("description", wrap=True), Column("weights", 1, key="source", wrap=True)]
    print_rows("skipsearch models", columns, rows, fmt, wide, fields=list(rows[0]) if rows else None)


MAX_PROBE_BATCH = 1024  # skip-points --n: plenty for a mean norm ratio; one forward of it fits a GPU or a laptop


@app.command("skip-points")
def skip_points(ctx: typer.Context, model: str = ModelOpt, checkpoint: Optional[Path] = CheckpointOpt,
                trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
                sigma: float = typer.Option(1.0, help="noise level of the probe batch"),
                n: int = typer.Option(16, help="probe batch size"), seed: int = 0) -> None:
    """Print the skip points (decoder order, 0 = bottom): source, consumer, widths, norm ratio ||d_i||/||u_i||."""
    import math


    check_positive(n, "--n")
    if n > MAX_PROBE_BATCH:  # one forward pass of the whole batch: its activations must fit at once
        raise UsageError(f"--n must be at most {MAX_PROBE_BATCH} (the probe batch is one forward pass), got {n}")
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32 - 1], got {seed}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise UsageError(f"--sigma must be a positive number, got {sigma}")
    settings = settings_of(ctx)
    adapter = load_adapter(model, checkpoint, trust_pickle, device, settings)
    if sigma > adapter.sigma_max:  # noise the model never saw (and beyond float32 from ~1e38): no skip to measure
        raise UsageError(f"--sigma {sigma:g} is above the largest noise level of {adapter.name} "
                         f"({adapter.sigma_max:g}); give 0 < sigma <= {adapter.sigma_max:g}")
    ratios = adapter.probe_norm_ratios(n, sigma, seed, settings)
    table = Table(title=f"skip points of {escape(adapter.name)} (sha256 {adapter.identity.sha256[:12]}), "
                        f"sigma={sigma}")
    table.box, table.padding, table.pad_edge = box.SIMPLE, (0, 1), False  # module names fit 80 columns whole
    for column in ("#", "source", "consumer", "res", "main", "skip", "|d|/|u|"):
        names = column in ("source", "consumer")
        table.add_column(column, justify="left" if names else "right", no_wrap=True, overflow="fold")
    for point, ratio in zip(adapter.skip_points, ratios):
        table.add_row(str(point.index), escape(point.source or "?"), escape(point.consumer),
                      f"{point.resolution} tok" if point.tokens else str(point.resolution),
                      str(point.main_channels), str(point.skip_channels), f"{ratio:.3f}")
    out.print(table)
    out.print(f"mean norm ratio {sum(ratios) / len(ratios):.3f} over {len(ratios)} skip points")
    for line in getattr(adapter, "detection_report", []) or []:
        out.print(escape(line))


@app.command()
def sample(ctx: typer.Context, model: str = ModelOpt,
           nfe: Optional[int] = typer.Option(None, "--nfe", help="denoiser calls per image (exact; default: the "
                                             "schedule's, else 35)"),
           sampler: Optional[str] = typer.Option(None, help=(
               "sampler (default: the schedule's, else the model's: heun; ddim for DDPMs, multistep for "
               "consistency models)")),
           schedule: Optional[Path] = typer.Option(None, help="schedule JSON (from 'skipsearch export')"),
           rho: Optional[str] = typer.Option(None, help="constant rho (0.7) or linear bottom:top (0.68:1.0)"),
           n: int = typer.Option(64, "--n", help="number of images"), seed: int = typer.Option(0, help="first seed"),
           output: Path = typer.Option(Path("grid.png"), "-o", "--output", help="PNG grid to write"),
           npz: Optional[Path] = typer.Option(None, help="also write the uint8 images as .npz"),
           checkpoint: Optional[Path] = CheckpointOpt, trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
           precision: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (CUDA only)"),
           batch_size: Optional[int] = typer.Option(None, help="images per batch (default: fill memory)"),
           scale: int = typer.Option(1, help="upscale the PNG by this factor (nearest)")) -> None:
    """Sample images with an exact NFE, optionally with a Skip-Tuning schedule."""
    from skipsearch.device import check_precision
    from skipsearch.export.images import save_grid, save_npz
    from skipsearch.sampling.generate import generate
    from skipsearch.sampling.samplers import steps_for_nfe
    check_positive(n, "--n")
    check_positive(batch_size, "--batch-size")
    check_positive(scale, "--scale")
    check_max_nfe(nfe, "--nfe")
    if schedule is not None and schedule.is_dir():
        raise UsageError(f"--schedule {schedule} is a folder; give a schedule JSON file")
    sampler, nfe, options = recipe(schedule, sampler, nfe, default_nfe=35, model=model)
    steps_for_nfe(sampler, nfe)  # fail on a bad NFE before loading anything
    check_image_output(output, (".png",))
    check_precision(device_type(device), precision)
    if npz is not None:
        check_image_output(npz, (".npz",))
    from skipsearch.export.weights import describe_weights
    settings = settings_of(ctx)
    if checkpoint is None and schedule is not None:
        checkpoint = weights_of(schedule, settings)
    adapter = load_adapter(model, checkpoint, trust_pickle, device, settings)
    tuned = resolve_schedule(adapter, schedule, rho, sampler=sampler, nfe=nfe)
    check_sample_size(n, tuple(adapter.pixel_shape), scale)
    out.print(escape(describe_weights(checkpoint, model, adapter.identity.sha256)), soft_wrap=True)
    with progress_bar() as progress:
        task = progress.add_task(f"sampling {sampler} NFE {nfe}", total=n)
        result = generate(adapter, sampler=sampler, nfe=nfe, seeds=range(seed, seed + n), schedule=tuned,
                          batch_size=batch_size, precision=precision,
                          progress=lambda k: progress.advance(task, k), **options)
    save_grid(result.images, output, scale=scale)
    grid = "" if tuned is None or tuned.grid is None else f", grid {tuned.grid.describe()}"
    out.print(f"wrote {escape(str(output))} ({n} images, {escape(adapter.name)}, {sampler}, NFE {nfe}{grid}, "
              f"{'untuned' if tuned is None else tuned.family + ' schedule'}, {result.seconds:.1f}s)")
    if npz is not None:
        save_npz(result.images, npz, seeds=result.seeds)
        out.print(f"wrote {escape(str(npz))}")


@app.command()
def train(ctx: typer.Context,
          output: Path = typer.Option(Path("runs/edm-mnist"), "-o", "--output", help="folder for weights + card"),
          kind: str = typer.Option("edm", help="edm: the bundled EDM SongUNet; ddpm: the bundled diffusers DDPM"),
          steps: int = typer.Option(8000, help="optimizer steps"), batch_size: int = 64,
          lr: Optional[float] = typer.Option(None, help="learning rate (default 2e-3 edm, 1e-3 ddpm)"),
          seed: int = 0, device: str = DeviceOpt, threads: Optional[int] = None,
          data: Optional[Path] = typer.Option(None, help="folder containing MNIST/raw (default: auto)")) -> None:
    """Train a bundled-model architecture on MNIST (EDM or DDPM loss, EMA) and write its weights + model card."""
    import math

    from skipsearch.device import configure_cpu_threads, resolve_device
    for value, flag in ((steps, "--steps"), (batch_size, "--batch-size"), (threads, "--threads")):
        check_positive(value, flag)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be a finite positive number, got {lr}")
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32 - 1], got {seed}")
    check_output_folder(output, "-o")
    if data is not None and not (data / "MNIST" / "raw").is_dir():
        raise UsageError(f"--data {data}: no MNIST/raw folder there")
    dev = resolve_device(device)
    if dev.type == "cpu":
        configure_cpu_threads(threads)
    if kind == "edm":
        from skipsearch.training.edm import train_bundled_model as run
    else:
        from skipsearch.models.sources import require_diffusers
        from skipsearch.training.ddpm import train_bundled_ddpm as run
        require_diffusers()  # a missing extra is one line, not one under a progress bar
    with progress_bar() as progress:
        task = progress.add_task("training", total=steps)
        card = run(output, steps=steps, batch_size=batch_size, lr=lr or (2e-3 if kind == "edm" else 1e-3),
                   seed=seed, device=dev, data_root=data, settings=settings_of(ctx),
                   on_step=lambda step, loss: progress.update(task, completed=step,
                                                              description=f"training loss {loss:.4f}"))
    out.print(f"wrote {escape(str(output))}: {card['steps']} steps, final loss {card['final_loss']:.4f}, "
              f"{card['wall_seconds']:.0f}s")


@app.command("check-model")
def check_model_command(ctx: typer.Context, model: str = ModelOpt, checkpoint: Optional[Path] = CheckpointOpt,
                        trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
                        n: int = typer.Option(64, help="reference images"), seed: int = 0) -> None:
    """Check that the spec reads the network right: denoising error under the spec and each alternative (data
    range, timesteps, beta schedule, prediction type, time convention), and rho = 1 images. Exit 1 on a warning."""
    from skipsearch.models.check import check_spec
    from skipsearch.sampling.generate import untuned_images
    check_positive(n, "--n")
    settings = settings_of(ctx)
    adapter = load_adapter(model, checkpoint, trust_pickle, device, settings)
    report = check_spec(adapter, model, n=n, seed=seed, settings=settings, images=untuned_images)
    for line in report.lines():
        out.print(escape(line), soft_wrap=True)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True)
    out.print(f"{'spec looks right' if report.ok else 'spec looks wrong'} ({report.seconds:.1f} s)")
    raise typer.Exit(0 if report.ok else 1)
