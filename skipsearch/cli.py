"""The ``skipsearch`` command line (typer + rich): where a flag becomes a setting.

Environment variables are read once, here (``Settings.from_env()``), and handed to the stages. Every user error
(:class:`skipsearch.errors.SkipsearchError`, a file-system error, a bad flag value) ends as one line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from skipsearch.errors import SkipsearchError, UsageError
from skipsearch.settings import Settings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help="Find the best Skip-Tuning schedule for a pretrained diffusion UNet.")
console = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def _error_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main() -> None:
    """Console entry point."""
    try:
        code = _click_command().main(prog_name="skipsearch", standalone_mode=False)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except typer.Abort:
        console.print("[yellow]aborted[/yellow]")
        sys.exit(130)
    except typer.TyperException as exc:  # bad flag values, missing arguments: the parser's message, one line
        command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "skipsearch"
        console.print(f"[red]error:[/red] {escape(_error_line(exc.format_message()))} "
                      f"(see '{escape(command)} --help')", soft_wrap=True)
        sys.exit(2)
    except (SkipsearchError, OSError) as exc:  # user errors and file-system problems: one line, no traceback
        console.print(f"[red]error:[/red] {escape(_error_line(exc))}", soft_wrap=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Find the best Skip-Tuning schedule for a pretrained diffusion UNet."""
    ctx.obj = Settings.from_env()


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj if isinstance(ctx.obj, Settings) else Settings.from_env()


# --------------------------------------------------------------------------------------------------------------------
# Choices come from the stages' registries, loaded only when a command needs them (``--help`` of one command).


class RegistryChoice:
    """A flag whose value must be one of a registry's names, read on first use (help, validation)."""

    def __init__(self, names: Callable[[], list[str]]) -> None:
        self._names = names
        self._cached: list[str] | None = None

    @property
    def choices(self) -> list[str]:
        if self._cached is None:
            self._cached = list(self._names())
        return self._cached

    def metavar(self, ctx: Any = None) -> str:
        return "[" + "|".join(self.choices) + "]"

    def __call__(self, _ctx: Any, param: Any, value: Any) -> Any:
        """typer's option callback: None (not given) passes; anything else must be a choice."""
        if value is not None and value not in self.choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(self.choices)}", param=param)
        return value


def _sampler_names() -> list[str]:
    from skipsearch.sampling.samplers import SAMPLERS
    return SAMPLERS.names()


def _space_names() -> list[str]:
    from skipsearch.search.spaces import space_names
    return space_names()


def _extractor_names() -> list[str]:
    from skipsearch.proxy.extractors import EXTRACTORS
    return EXTRACTORS.names()


def _dataset_names() -> list[str]:
    from skipsearch.proxy.stats import DATASETS
    return DATASETS.names()


def _optuna_sampler_names() -> list[str]:
    from skipsearch.search.strategies import OPTUNA_SAMPLERS
    return OPTUNA_SAMPLERS.names()


def _pruner_names() -> list[str]:
    from skipsearch.search.strategies import PRUNERS
    return PRUNERS.names()


def _metric_names() -> list[str]:
    from skipsearch.proxy.config import METRICS
    return METRICS.names()


# (command, parameter) -> its choices; put on the click command in main(), so that help lists them and a bad value is
# click's one-line "invalid choice" error.
CHOICES: dict[tuple[str, str], Callable[[], list[str]]] = {
    **{(command, "sampler"): _sampler_names for command in ("sample", "evaluate", "optimize", "best", "export")},
    ("optimize", "space"): _space_names, ("optimize", "optuna_sampler"): _optuna_sampler_names,
    ("optimize", "pruner"): _pruner_names, ("optimize", "metric"): _metric_names,
    ("evaluate", "extractor"): _extractor_names, ("refstats", "extractor"): _extractor_names,
    ("proxy-check", "extractor"): _extractor_names, ("refstats", "dataset"): _dataset_names,
    ("refstats", "split"): lambda: ["train", "test"], ("train", "kind"): lambda: ["edm", "ddpm"],
    **{(command, "fmt"): lambda: ["table", "json", "csv"] for command in ("best", "studies", "models")},
}


def _click_command() -> Any:
    """The app as a click-style command group, with the registry choices checked and shown in help."""
    group = typer.main.get_command(app)
    for name, command in getattr(group, "commands", {}).items():
        for param in command.params:
            names = CHOICES.get((name, param.name or ""))
            if names is not None:
                choice = RegistryChoice(names)
                param.callback = choice
                param.display_type_rich = choice.metavar  # help lists the names (read when help is shown)
    return group
MODEL_HELP = ("model: a name (see 'skipsearch models'), a model file PATH.toml, package.module:factory, "
              "or diffusers:DIR")
ModelOpt = typer.Option("edm", "--model", "-m", help=MODEL_HELP)
CheckpointOpt = typer.Option(None, "--checkpoint", help="local weights (.pkl from EDM, .safetensors, .pt)")
TrustOpt = typer.Option(False, "--trust-pickle",
                        help="allow loading a .pkl (pickles can run code: trusted files only)")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]")
StorageOpt = typer.Option(None, "--storage", help="database URL (default: $SKIPSEARCH_STORAGE or ~/.skipsearch)")


def _positive(value: Optional[int], flag: str) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"{flag} must be a positive integer, got {value}")


def _print_rows(title: str, columns: list, rows: list[dict[str, Any]], fmt: str = "table", wide: bool = False,
                fields: Optional[list[str]] = None) -> None:
    """``rows`` to stdout: a table chosen to fit the terminal's width now, or exact JSON / CSV for scripts."""
    from skipsearch.export.tables import render, terminal_width
    text = render(rows, fmt, fields=fields, columns=columns, title=title, width=terminal_width(out.width), wide=wide)
    out.file.write(text)  # plain text: no markup, colour or rich wrapping (each format is laid out already)
    out.file.flush()


FormatOpt = typer.Option("table", "--format", help="table (fits the terminal), or json / csv with full values")
WideOpt = typer.Option(False, "--wide", help="every column and the full sha256 (the terminal wraps long lines)")


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def _device(device: str):
    from skipsearch.device import configure_cpu_threads, resolve_device
    dev = resolve_device(device)
    if dev.type == "cpu":
        configure_cpu_threads()
    return dev


def _load(model: str, checkpoint: Optional[Path], trust_pickle: bool, device: str, settings: Settings):
    from skipsearch.models import load_model
    dev = _device(device)
    return load_model(model, checkpoint=checkpoint, trust_pickle=trust_pickle, device=str(dev), settings=settings)


def parse_rho(text: str, num_skip_points: int):
    """``0.7`` -> constant; ``0.68:1.0`` -> linear bottom->top (the paper's notation 0.68 -> 1.0)."""
    import math

    from skipsearch.schedule import SkipSchedule
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise UsageError(f"--rho {text!r}: give a number (0.7) or bottom:top (0.68:1.0)") from None
    if not all(math.isfinite(p) for p in parts):
        raise UsageError(f"--rho {text!r}: rho must be a finite number")
    if len(parts) == 1:
        return SkipSchedule.constant(parts[0], num_skip_points)
    if len(parts) == 2:
        return SkipSchedule.linear(parts[0], parts[1], num_skip_points)
    raise UsageError(f"--rho {text!r}: give a number (0.7) or bottom:top (0.68:1.0)")


def _weights_of(schedule: Path, settings: Settings) -> Optional[Path]:
    """Fine-tuned weights a schedule names (S²-DM exports), only from beside the JSON or the study artifacts and
    only with the sha256 the schedule records (a schedule is data from anyone; ``--checkpoint`` chooses others)."""
    import json

    from skipsearch.export.weights import schedule_weights
    from skipsearch.search.session import artifact_dir
    from skipsearch.store import default_storage_url
    try:
        doc = json.loads(schedule.read_text())
    except (OSError, ValueError, RecursionError):
        return None  # SkipSchedule.load reports the real problem with the file
    if not isinstance(doc, dict) or not isinstance(doc.get("provenance"), dict):
        return None
    if not doc["provenance"].get("weights_path"):
        return None
    return schedule_weights(schedule, doc, artifact_dir(default_storage_url(settings), settings))


def resolve_schedule(adapter, schedule: Optional[Path], rho: Optional[str], *, sampler: Optional[str] = None,
                     nfe: Optional[int] = None):
    """The schedule to sample with; a warning on stderr when it was tuned for another sampler or NFE."""
    from skipsearch.schedule import SkipSchedule
    if schedule is not None and rho is not None:
        raise UsageError("give either --schedule or --rho, not both")
    if schedule is not None:
        tuned = SkipSchedule.load(schedule, expect_model=adapter.identity)
        other = (tuned.sampler is not None and sampler is not None and tuned.sampler != sampler) or (
            tuned.nfe is not None and nfe is not None and tuned.nfe != nfe and nfe not in tuned.nfe_set)
        if other:  # allowed (a schedule may transfer), but rarely what was meant
            tuned_for = " ".join(p for p in (tuned.sampler, f"NFE {tuned.nfe}" if tuned.nfe else None) if p)
            console.print(f"[yellow]warning:[/yellow] {escape(schedule.name)} was tuned for {escape(tuned_for)}; "
                          f"sampling {escape(sampler or '')} NFE {nfe}", soft_wrap=True)
        return tuned
    if rho is not None:
        return parse_rho(rho, len(adapter.skip_points)).with_metadata(model=adapter.identity)
    return None


# --------------------------------------------------------------------------------------------------------------------
# Models and sampling.


@app.command()
def models(ctx: typer.Context, fmt: str = FormatOpt, wide: bool = WideOpt) -> None:
    """List the registered models and the model files found (skip points, source)."""
    from skipsearch.export.tables import Column
    from skipsearch.models import list_models
    rows = [{"name": info.name, "skip_points": info.num_skip_points or None, "description": info.description,
             "source": info.source} for info in list_models(_settings(ctx))]
    columns = [Column("name", key="name", wrap=True), Column("skip points", key="skip_points", right=True),
               Column("description", wrap=True), Column("weights", 1, key="source", wrap=True)]
    _print_rows("skipsearch models", columns, rows, fmt, wide, fields=list(rows[0]) if rows else None)


@app.command("skip-points")
def skip_points(ctx: typer.Context, model: str = ModelOpt, checkpoint: Optional[Path] = CheckpointOpt,
                trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
                sigma: float = typer.Option(1.0, help="noise level of the probe batch"),
                n: int = typer.Option(16, help="probe batch size"), seed: int = 0) -> None:
    """Print the skip points (decoder order, 0 = bottom): source, consumer, widths, norm ratio ||d_i||/||u_i||."""
    import math

    import torch

    _positive(n, "--n")
    if not math.isfinite(sigma) or sigma <= 0:
        raise UsageError(f"--sigma must be a positive number, got {sigma}")
    adapter = _load(model, checkpoint, trust_pickle, device, _settings(ctx))
    images = adapter.probe_images(n, seed)
    generator = torch.Generator().manual_seed(seed)
    x = (images + sigma * torch.randn(images.shape, generator=generator)).to(adapter.device)
    labels = None
    if adapter.label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(n) % adapter.label_dim, adapter.label_dim).float()
        labels = labels.to(adapter.device)
    ratios = adapter.norm_ratios(x, torch.full((n,), sigma, device=adapter.device), labels)
    table = Table(title=f"skip points of {escape(adapter.name)} (sha256 {adapter.identity.sha256[:12]}), "
                        f"sigma={sigma}")
    table.box, table.padding, table.pad_edge = box.SIMPLE, (0, 1), False  # module names fit 80 columns whole
    for column in ("#", "source", "consumer", "res", "main", "skip", "|d|/|u|"):
        names = column in ("source", "consumer")
        table.add_column(column, justify="left" if names else "right", no_wrap=True, overflow="fold")
    for point, ratio in zip(adapter.skip_points, ratios):
        table.add_row(str(point.index), escape(point.source or "?"), escape(point.consumer), str(point.resolution),
                      str(point.main_channels), str(point.skip_channels), f"{ratio:.3f}")
    out.print(table)
    out.print(f"mean norm ratio {sum(ratios) / len(ratios):.3f} over {len(ratios)} skip points")
    for line in getattr(adapter, "detection_report", []) or []:
        out.print(escape(line))


def _check_image_output(path: Path, suffixes: tuple[str, ...]) -> None:
    """Fail before minutes of work, not after: the folder must exist and the suffix be one we write."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; use {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: the folder {path.parent} does not exist")


def _check_output_folder(path: Path, flag: str) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a folder")


def _device_type(device: str) -> str:
    from skipsearch.device import resolve_device
    return resolve_device(device).type


def _recipe(schedule: Optional[Path], sampler: Optional[str], nfe: Optional[int], *, default_nfe: int,
            ) -> tuple[str, int, dict]:
    """(sampler, NFE, sampler options) to sample with: the flags, else what the schedule names (schema v2 keeps
    its searched sampler and options), else heun at ``default_nfe``. Options travel only with their sampler."""
    named = None
    if schedule is not None and schedule.is_file():
        from skipsearch.schedule import SkipSchedule
        named = SkipSchedule.load(schedule)  # the model is checked once it is loaded
    chosen = sampler if sampler is not None else (named.sampler if named is not None and named.sampler else "heun")
    steps = nfe if nfe is not None else (named.nfe if named is not None and named.nfe else default_nfe)
    options = dict(named.sampler_options) if named is not None and named.sampler == chosen else {}
    if named is not None and named.sampler_options and named.sampler != chosen:
        console.print(f"[yellow]warning:[/yellow] {escape(schedule.name)} was searched with {named.sampler} "
                      f"options {named.sampler_options}; sampling {chosen} without them", soft_wrap=True)
    return chosen, steps, options


@app.command()
def sample(ctx: typer.Context, model: str = ModelOpt,
           nfe: Optional[int] = typer.Option(None, "--nfe", help="denoiser calls per image (exact; default: the "
                                             "schedule's, else 35)"),
           sampler: Optional[str] = typer.Option(None, help="sampler (default: the schedule's, else heun)"),
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
    _positive(n, "--n")
    _positive(batch_size, "--batch-size")
    _positive(scale, "--scale")
    if schedule is not None and schedule.is_dir():
        raise UsageError(f"--schedule {schedule} is a folder; give a schedule JSON file")
    sampler, nfe, options = _recipe(schedule, sampler, nfe, default_nfe=35)
    steps_for_nfe(sampler, nfe)  # fail on a bad NFE before loading anything
    _check_image_output(output, (".png",))
    check_precision(_device_type(device), precision)
    if npz is not None:
        _check_image_output(npz, (".npz",))
    if schedule is not None and schedule.is_dir():
        raise UsageError(f"--schedule {schedule} is a folder; give a schedule JSON file")
    from skipsearch.export.weights import describe_weights
    settings = _settings(ctx)
    if checkpoint is None and schedule is not None:
        checkpoint = _weights_of(schedule, settings)
    adapter = _load(model, checkpoint, trust_pickle, device, settings)
    tuned = resolve_schedule(adapter, schedule, rho, sampler=sampler, nfe=nfe)
    out.print(escape(describe_weights(checkpoint, model, adapter.identity.sha256)), soft_wrap=True)
    with _progress() as progress:
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
def train(output: Path = typer.Option(Path("runs/edm-mnist"), "-o", "--output", help="folder for weights + card"),
          kind: str = typer.Option("edm", help="edm: the bundled EDM SongUNet; ddpm: the bundled diffusers DDPM"),
          steps: int = typer.Option(8000, help="optimizer steps"), batch_size: int = 64,
          lr: Optional[float] = typer.Option(None, help="learning rate (default 2e-3 edm, 1e-3 ddpm)"),
          seed: int = 0, device: str = DeviceOpt, threads: Optional[int] = None,
          data: Optional[Path] = typer.Option(None, help="folder containing MNIST/raw (default: auto)")) -> None:
    """Train a bundled-model architecture on MNIST (EDM or DDPM loss, EMA) and write its weights + model card."""
    from skipsearch.device import configure_cpu_threads, resolve_device
    for value, flag in ((steps, "--steps"), (batch_size, "--batch-size"), (threads, "--threads")):
        _positive(value, flag)
    if lr is not None and not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    _check_output_folder(output, "-o")
    if data is not None and not (data / "MNIST" / "raw").is_dir():
        raise UsageError(f"--data {data}: no MNIST/raw folder there")
    dev = resolve_device(device)
    if dev.type == "cpu":
        configure_cpu_threads(threads)
    if kind == "edm":
        from skipsearch.training.edm import train_bundled_model as run
    else:
        from skipsearch.training.ddpm import train_bundled_ddpm as run
    with _progress() as progress:
        task = progress.add_task("training", total=steps)
        card = run(output, steps=steps, batch_size=batch_size, lr=lr or (2e-3 if kind == "edm" else 1e-3),
                   seed=seed, device=dev, data_root=data, on_step=lambda step, loss: progress.update(
                       task, completed=step, description=f"training loss {loss:.4f}"))
    out.print(f"wrote {escape(str(output))}: {card['steps']} steps, final loss {card['final_loss']:.4f}, "
              f"{card['wall_seconds']:.0f}s")


# --------------------------------------------------------------------------------------------------------------------
# Proxy commands.


@app.command()
def evaluate(ctx: typer.Context, model: str = ModelOpt,
             nfe: Optional[int] = typer.Option(None, "--nfe", help="default: the schedule's, else 9"),
             sampler: Optional[str] = typer.Option(None, help="default: the schedule's, else heun"),
             schedule: Optional[Path] = typer.Option(None, help="schedule JSON"),
             rho: Optional[str] = typer.Option(None, help="constant rho or bottom:top"),
             n: int = typer.Option(2000, "--n", help="images"),
             metric: str = typer.Option("fid", help="comma-separated: fid, kid, fid-inf"),
             seed: int = typer.Option(0, help="seed offset (image k uses seed offset+k)"),
             extractor: Optional[str] = typer.Option(None),
             fid_weights: Optional[Path] = None,
             ref: Optional[Path] = typer.Option(None, help="EDM-style reference .npz (mu, sigma)"),
             checkpoint: Optional[Path] = CheckpointOpt, trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
             batch_size: Optional[int] = None) -> None:
    """Proxy metric(s) of one schedule at n images, with the seeds and extractor used."""
    from skipsearch.proxy.config import METRICS, default_proxy_config
    from skipsearch.proxy.fid_proxy import FidProxy
    from skipsearch.sampling.samplers import steps_for_nfe
    settings = _settings(ctx)
    _positive(batch_size, "--batch-size")
    if n < 2:
        raise UsageError(f"--n must be at least 2, got {n}")
    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if not metrics or unknown:
        raise UsageError(f"--metric {metric!r}: use a comma-separated list of {', '.join(METRICS)}")
    if schedule is not None and schedule.is_dir():
        raise UsageError(f"--schedule {schedule} is a folder; give a schedule JSON file")
    sampler, nfe, options = _recipe(schedule, sampler, nfe, default_nfe=9)
    steps_for_nfe(sampler, nfe)
    from skipsearch.export.weights import describe_weights
    if schedule is not None and schedule.is_dir():
        raise UsageError(f"--schedule {schedule} is a folder; give a schedule JSON file")
    if checkpoint is None and schedule is not None:
        checkpoint = _weights_of(schedule, settings)
    adapter = _load(model, checkpoint, trust_pickle, device, settings)
    tuned = resolve_schedule(adapter, schedule, rho, sampler=sampler, nfe=nfe)
    if tuned is not None:  # the flags (or the schedule's own recipe) decide how it is sampled
        tuned = tuned.with_metadata(sampler=sampler, nfe=nfe, sampler_options=options,
                                    nfe_set=tuned.nfe_set if nfe in tuned.nfe_set else ())
    out.print(escape(describe_weights(checkpoint, model, adapter.identity.sha256)), soft_wrap=True)
    for name in metrics:
        given = dict(extractor=extractor, weights_path=str(fid_weights) if fid_weights else None,
                     ref_path=str(ref) if ref else None)
        overrides = {k: v for k, v in given.items() if v is not None}
        config = default_proxy_config(adapter.dataset, fid_ref=settings.fid_ref, metric=name, rungs=(n,),
                                      seed_offset=seed, batch_size=batch_size, **overrides)
        proxy = FidProxy(adapter, sampler=sampler, nfe=nfe, config=config, settings=settings, sampler_options=options)
        with _progress() as progress:
            task = progress.add_task(f"{name}: sampling + features", total=n)
            result = proxy.evaluate(tuned, preview=0, progress=lambda k: progress.advance(task, k))
        flag = " (n <= feature dim: biased)" if result.rungs[-1].rank_deficient else ""
        out.print(f"{name.upper()} {result.value:.4f}{flag}  n={result.n}  seeds {result.seeds[0]}.."
                  f"{result.seeds[1] - 1}  extractor {result.extractor} ({result.extractor_sha256[:12]})  "
                  f"{sampler} NFE {nfe}  {'untuned' if tuned is None else tuned.family}")


@app.command()
def refstats(ctx: typer.Context,
             dataset: str = typer.Option("mnist"),
             split: str = typer.Option("train"),
             extractor: str = typer.Option("mnist-features"),
             fid_weights: Optional[Path] = None, refresh: bool = False,
             output: Optional[Path] = typer.Option(None, "-o",
                                                   help="also write an EDM-style .npz (mu, sigma)")) -> None:
    """Compute (or load from cache) reference statistics of a data set split under an extractor."""
    from skipsearch.proxy.extractors import get_extractor
    from skipsearch.proxy.stats import compute_reference_stats, save_npz
    settings = _settings(ctx)
    if output is not None:
        _check_image_output(output, (".npz",))
    weights = fid_weights or (settings.fid_weights if extractor == "inception-v3-compat" else None)
    ref = compute_reference_stats(dataset, split, get_extractor(extractor, weights_path=weights,
                                                                offline=settings.offline),
                                  cache=settings.cache, refresh=refresh)
    out.print(f"{dataset}/{split} under {extractor}: n={ref.stats.n}, dim={ref.stats.dim}, {ref.status} "
              f"({escape(str(ref.path))})")
    if output is not None:
        save_npz(output, ref.stats)
        out.print(f"wrote {escape(str(output))}")


@app.command("proxy-check")
def proxy_check_cmd(extractor: str = typer.Option("mnist-features"),
                    n: int = 500, fid_weights: Optional[Path] = None) -> None:
    """Disturbance table: each disturbance must raise the proxy monotonically with its strength."""
    from skipsearch.proxy.disturb import format_table, is_monotone, proxy_check
    if n < 2:
        raise UsageError(f"--n must be at least 2, got {n}")
    table = proxy_check(extractor, n=n, weights_path=str(fid_weights) if fid_weights else None)
    out.print(format_table(table))
    ok = is_monotone(table)
    out.print("monotone: yes" if ok else "[red]monotone: NO[/red] (this extractor can be gamed)")
    raise typer.Exit(0 if ok else 1)


# --------------------------------------------------------------------------------------------------------------------
# Search commands.


def _storage(url: Optional[str], settings: Settings) -> str:
    from skipsearch.store import default_storage_url
    return url or default_storage_url(settings)


def _rungs(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(r) for r in text.split(","))
    except ValueError:
        raise UsageError(f"--rungs {text!r}: give comma-separated image counts, e.g. 250,500,1000") from None


def _nfe_list(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--nfes {text!r}: give comma-separated NFEs, e.g. 5,9,17") from None
    return values


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
             seed: Optional[int] = None,
             export: Optional[Path] = typer.Option(None, help="where to write the best schedule JSON"),
             checkpoint: Optional[Path] = CheckpointOpt, trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
             workers: Optional[int] = typer.Option(None, help="Ray workers (one per GPU, else per CPU slot)"),
             ray_address: Optional[str] = typer.Option(None, help="auto | ray://host:port (default: local)"),
             trials_per_batch: Optional[int] = typer.Option(
                 None, help="trials scored together in shared forwards (a GPU a small model leaves idle)")) -> None:
    """Search Skip-Tuning schedules with Optuna: proxy rungs + pruning, SQL store, validated export."""
    from skipsearch.search.definition import default_study, load_study_file, validate
    settings = _settings(ctx)
    _positive(workers, "--workers")
    _positive(trials, "--trials")
    _positive(trials_per_batch, "--trials-per-batch")
    if export is not None and export.is_dir():
        raise UsageError(f"--export {export} is a folder; give a .json file name")
    base = load_study_file(study) if study else default_study(model, sampler, nfe, settings=settings)
    nfe_set = _nfe_list(nfes)
    if nfe_set and nfe is None and base.nfe not in nfe_set:
        nfe = sorted(nfe_set)[len(nfe_set) // 2]  # the middle NFE is the one whose grids a reviewer sees
    overrides = dict(model=model if (study is None or model != "edm") else None, nfe=nfe, nfes=nfe_set,
                     sampler=sampler,
                     space=space, trials=trials, name=study_name,
                     checkpoint=str(checkpoint) if checkpoint else None, trust_pickle=trust_pickle or None,
                     search__sampler=optuna_sampler, search__pruner=pruner, search__final_n=final_n,
                     search__validate_top_k=top_k, search__seed=seed, search__trials_per_batch=trials_per_batch,
                     space_bounds__rho_min=rho_min,
                     space_bounds__rho_max=rho_max, proxy__metric=metric, proxy__rungs=_rungs(rungs),
                     # a range given on the command line is the range searched
                     space_bounds__calibrate=False if rho_min is not None or rho_max is not None else None)
    definition = base.override(**overrides)
    validate(definition)
    storage_url = _storage(storage, settings)
    _optimize_with_progress(definition, storage_url=storage_url, device=device, export=export, workers=workers,
                            ray_address=ray_address, settings=settings)


def _optimize_with_progress(definition, *, storage_url: str, device: str, export: Optional[Path],
                            workers: Optional[int], ray_address: Optional[str], settings: Settings) -> None:
    """One rich progress line for the study; the first Ctrl-C stops after the current trial."""

    import optuna
    from optuna.trial import TrialState

    from skipsearch.execution.local import run_definition, trial_counts
    from skipsearch.search.budget import count_finished
    from skipsearch.store import redact_url
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress line says what Optuna logs per trial
    dev = _device(device)
    progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
    state: dict[str, Any] = {"session": None, "stops": 0}

    def on_session(session) -> None:
        state["session"] = session
        state["t0"], state["done0"] = time.perf_counter(), count_finished(session.study)
        out.print(f"study [bold]{escape(session.study.study_name)}[/bold] in {escape(redact_url(storage_url))} "
                  f"({count_finished(session.study)}/{definition.trials} trials done, space {definition.space}, "
                  f"{definition.sampler} NFE {definition.nfe}, proxy {definition.proxy.metric} on "
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
        with interrupts_from_finalizers_redelivered():
            result = run_definition(definition, storage_url=storage_url, device=str(dev), export=export,
                                    workers=workers, ray_address=ray_address, on_trial=on_trial,
                                    on_session=on_session, settings=settings,
                                    on_validated=lambda t, v: console.print(f"validated trial {t.number}: {v:.4f}"))
    finally:
        signal.signal(signal.SIGINT, previous)
        progress.stop()
    _print_result(definition, result, storage_url)


@contextlib.contextmanager
def interrupts_from_finalizers_redelivered(delay_s: float = 0.01):
    """Re-raise in the main code a KeyboardInterrupt that Python would drop because it hit a finalizer."""
    # A Ctrl-C whose handler runs inside a finalizer (SQLAlchemy's weakref callbacks, a __del__) is printed as
    # "Exception ignored ... Traceback" and lost. Raising it again from the unraisable hook itself fails the same
    # way (any handler triggered before the hook returns runs inside the hook), so a one-shot SIGALRM raises it
    # once the hook has returned; if that lands in a finalizer too, the hook re-arms it.
    armed = [False]

    def on_alarm(_signum, _frame) -> None:
        armed[0] = False
        raise KeyboardInterrupt

    def on_unraisable(info) -> None:
        if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            armed[0] = True
            signal.setitimer(signal.ITIMER_REAL, delay_s)
            return
        default_unraisable(info)

    default_unraisable, sys.unraisablehook = sys.unraisablehook, on_unraisable
    previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
    finally:
        if armed[0]:
            signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        sys.unraisablehook = default_unraisable


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
        raise typer.Exit(130)
    for v in result.validations:
        label = f" ({escape(v['baseline'])})" if v.get("baseline") else ""
        if "value" in v:
            proxy = f" (proxy {v['proxy']:.4f})" if v.get("proxy") is not None else " (pruned in the search)"
            out.print(f"  trial {v['trial']}{label}: validated {v['value']:.4f} at n={v['n']}{proxy}")
        else:
            out.print(f"  trial {v['trial']}{label}: validation failed: {escape(v['error'])}")
    for line in result.verdict_lines():
        out.print(escape(line))
    if not any("value" in v for v in result.validations):
        raise typer.Exit(1)  # a study without a validated result failed, whatever its trials did
    if result.best is not None:
        out.print(f"best {result.best.metric} {result.best.value:.4f} (trial {result.best.trial_number}, "
                  f"n={result.best.n}); results in {escape(redact_url(storage_url))}")
        out.print(f"exported schedule: {escape(str(result.export_path))}")
        # Fine-tuned weights were exported beside the JSON and load from there; a --checkpoint would override them.
        finetuned = json.loads(result.best.schedule_json).get("provenance", {}).get("weights_path")
        words = ["skipsearch", "sample", "--model", definition.model, "--nfe", str(definition.nfe), "--sampler",
                 result.best.sampler, "--schedule", str(result.export_path)]
        if definition.checkpoint and not finetuned:
            words += ["--checkpoint", str(definition.checkpoint)]
        out.print(escape("use it: " + shlex.join(words)), soft_wrap=True)  # one line, to copy whole


@app.command()
def best(ctx: typer.Context, model: Optional[str] = typer.Option(None, "--model", "-m"),
         sampler: Optional[str] = typer.Option(None),
         nfe: Optional[int] = typer.Option(None, "--nfe"), storage: Optional[str] = StorageOpt,
         fmt: str = FormatOpt, wide: bool = WideOpt) -> None:
    """The validated best schedule per model, sampler and NFE."""
    from skipsearch.export.review import honour_verdicts
    from skipsearch.models import model_key
    from skipsearch.store import BestStore, redact_url
    _positive(nfe, "--nfe")
    url = _storage(storage, _settings(ctx))
    with BestStore(url) as store:
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
    _print_rows(f"best schedules in {redact_url(url)}", columns,
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
    _positive(nfe, "--nfe")
    if output.is_dir():
        raise UsageError(f"-o {output} is a folder; give a .json file name")
    with BestStore(_storage(storage, _settings(ctx))) as store:
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
    import optuna

    from skipsearch.search.records import StudyRecord
    from skipsearch.search.session import optuna_storage
    from skipsearch.store import BestStore
    settings = _settings(ctx)
    url = _storage(storage, settings)
    BestStore(url).close()  # checks connectivity with a one-line error
    rows = []
    rdb = optuna_storage(url, settings.heartbeat_seconds)
    for summary in optuna.get_all_study_summaries(rdb, include_best_trial=False):
        s = optuna.load_study(study_name=summary.study_name, storage=rdb)
        states = [t.state.name for t in s.get_trials(deepcopy=False)]
        values = [t.value for t in s.get_trials(deepcopy=False) if t.value is not None]
        validated = [v.value for v in StudyRecord(s).validated().values() if v.value is not None]
        rows.append({"study_name": summary.study_name, "trials": len(states), "complete": states.count("COMPLETE"),
                     "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
                     "running": states.count("RUNNING"), "best_proxy": min(values) if values else None,
                     "best_validated": min(validated) if validated else None, "started": summary.datetime_start})
    from skipsearch.export.tables import Column
    columns = [Column("study", key="study_name", wrap=True), Column("trials", 1, right=True),
               Column("complete", 3, right=True), Column("pruned", 4, right=True), Column("failed", 5, right=True),
               Column("proxy", 2, key="best_proxy", right=True),
               Column("validated", key="best_validated", right=True), Column("started", 6)]
    _print_rows("studies", columns, rows, fmt, wide, fields=["study_name", "trials", "complete", "pruned", "failed",
                                                             "running", "best_proxy", "best_validated", "started"])


@app.command()
def report(ctx: typer.Context, study_name: str = typer.Argument(..., help="study name (see 'skipsearch studies')"),
           output: Path = typer.Option(Path("report"), "-o", "--output"),
           no_images: bool = typer.Option(False, "--no-images",
                                          help="leave out the image grids (best, rho = 1, paper recipe), which "
                                               "sample with the study's model"),
           storage: Optional[str] = StorageOpt) -> None:
    """index.html (header, validated table, rho heatmap, plots, image grids), trials CSV/Markdown and plots."""
    import optuna

    from skipsearch.export.report import write_report
    from skipsearch.search.session import optuna_storage
    from skipsearch.store import BestStore
    settings = _settings(ctx)
    url = _storage(storage, settings)
    _check_output_folder(output, "-o")
    with BestStore(url) as store:
        try:
            study = optuna.load_study(study_name=study_name, storage=optuna_storage(url, settings.heartbeat_seconds))
        except KeyError:
            raise UsageError(f"no study named {study_name!r}; run 'skipsearch studies' to list them") from None
        written = write_report(study, store, output, images=not no_images, settings=settings,
                               on_note=lambda line: out.print(f"note: {escape(line)}", soft_wrap=True))
    out.print(f"wrote {escape(str(written[-1]))} and {len(written) - 1} more files in {escape(str(output))}",
              soft_wrap=True)


@app.command()
def dashboard(ctx: typer.Context, storage: Optional[str] = StorageOpt, host: str = "127.0.0.1",
              port: int = typer.Option(8080, min=1, max=65535),
              allow_writes: bool = typer.Option(False, "--allow-writes",
                                                help="let the dashboard delete/rename studies and change trials "
                                                     "(off: read-only except notes and review forms)")) -> None:
    """Start optuna-dashboard on the same storage (trial sample grids included)."""
    import ipaddress
    import socket

    from skipsearch.export.dashboard import serve
    from skipsearch.store import BestStore, redact_url
    settings = _settings(ctx)
    url = _storage(storage, settings)
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"--host {host!r} is not an IP address (use 127.0.0.1)") from None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    BestStore(url).close()
    mode = "writes allowed" if allow_writes else "read-only except notes and review forms; --allow-writes for more"
    address = escape(f"[{host}]" if ":" in host else host)
    out.print(f"optuna-dashboard for {escape(redact_url(url))} at http://{address}:{port}/ ({mode}; Ctrl-C to stop)")
    serve(url, host=host, port=port, settings=settings, allow_writes=allow_writes)


if __name__ == "__main__":
    main()
