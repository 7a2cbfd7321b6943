"""Options and small checks shared by the commands: where a flag becomes a value a stage takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from skipsearch.cli.app import console, out
from skipsearch.errors import UsageError
from skipsearch.settings import Settings

MODEL_HELP = ("model: a name (see 'skipsearch models'), a model file PATH.toml, package.module:factory, "
              "or diffusers:DIR")


ModelOpt = typer.Option("edm", "--model", "-m", help=MODEL_HELP)


CheckpointOpt = typer.Option(None, "--checkpoint", help="local weights (.pkl from EDM, .safetensors, .pt)")


ExtractorWeightsOpt = typer.Option(
    None, "--extractor-weights", "--fid-weights",
    help="local weights of the extractor (a state dict read with weights_only=True, or .safetensors), loaded into "
         "torch-fidelity's own network; --fid-weights is the older name")


def check_weights_file(path: Optional[Path]) -> None:
    if path is not None and not path.is_file():
        raise UsageError(f"--extractor-weights {path}: no such file")


TrustOpt = typer.Option(False, "--trust-pickle",
                        help="allow loading a .pkl (pickles can run code: trusted files only)")


DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]")


StorageOpt = typer.Option(None, "--storage", help="database URL (default: $SKIPSEARCH_STORAGE or ~/.skipsearch)")


FormatOpt = typer.Option("table", "--format", help="table (fits the terminal), or json / csv with full values")


WideOpt = typer.Option(False, "--wide", help="every column and the full sha256 (the terminal wraps long lines)")


def check_positive(value: Optional[int], flag: str) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"{flag} must be a positive integer, got {value}")


def check_max_nfe(value: Optional[int], flag: str) -> None:
    """An NFE flag above the sampling limit, named before anything is loaded (its grid is allocated whole)."""
    from skipsearch.schedule.limits import MAX_NFE
    if value is not None and value > MAX_NFE:
        raise UsageError(f"{flag} must be at most {MAX_NFE} denoiser calls per image, got {value}")


def print_rows(title: str, columns: list, rows: list[dict[str, Any]], fmt: str = "table", wide: bool = False,
                fields: Optional[list[str]] = None) -> None:
    """``rows`` to stdout: a table chosen to fit the terminal's width now, or exact JSON / CSV for scripts."""
    from skipsearch.export.tables import render, terminal_width
    text = render(rows, fmt, fields=fields, columns=columns, title=title, width=terminal_width(out.width), wide=wide)
    out.file.write(text)  # plain text: no markup, colour or rich wrapping (each format is laid out already)
    out.file.flush()


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def use_device(device: str):
    from skipsearch.device import configure_cpu_threads, resolve_device
    dev = resolve_device(device)
    if dev.type == "cpu":
        configure_cpu_threads()
    return dev


def load_adapter(model: str, checkpoint: Optional[Path], trust_pickle: bool, device: str, settings: Settings):
    from skipsearch.models import load_model
    dev = use_device(device)
    return load_model(model, checkpoint=checkpoint, trust_pickle=trust_pickle, device=str(dev), settings=settings)


def resolve_storage(url: Optional[str], settings: Settings) -> str:
    from skipsearch.store import default_storage_url
    return url or default_storage_url(settings)


def parse_rungs(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(r) for r in text.split(","))
    except ValueError:
        raise UsageError(f"--rungs {text!r}: give comma-separated image counts, e.g. 250,500,1000") from None


def parse_nfes(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--nfes {text!r}: give comma-separated NFEs, e.g. 5,9,17") from None
    for value in values:
        check_max_nfe(value, "--nfes")
    return values


def check_image_output(path: Path, suffixes: tuple[str, ...]) -> None:
    """Fail before minutes of work, not after: the folder must exist and the suffix be one we write."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; use {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: the folder {path.parent} does not exist")


def check_output_folder(path: Path, flag: str) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a folder")


def device_type(device: str) -> str:
    from skipsearch.device import resolve_device
    return resolve_device(device).type
