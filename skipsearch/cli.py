"""The ``skipsearch`` command line (typer + rich). User errors end as one line and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Find the best Skip-Tuning schedule for a pretrained diffusion UNet.")
console = Console(stderr=True)
out = Console()


class UsageError(ValueError):
    """A bad combination of flags."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from skipsearch.data import DatasetError
    from skipsearch.device import DeviceError
    from skipsearch.execution.ray import WorkersError
    from skipsearch.export.schedule import ExportError
    from skipsearch.models import ModelError
    from skipsearch.models.checkpoints import CheckpointError
    from skipsearch.proxy.extractors import ExtractorWeightsError
    from skipsearch.proxy.fid_proxy import ProxyConfigError
    from skipsearch.proxy.stats import NonFiniteError, ReferenceStatsError
    from skipsearch.sampling.generate import NonFiniteOutputError
    from skipsearch.sampling.samplers import NFEError, UnknownSamplerError
    from skipsearch.schedule.core import ScheduleError
    from skipsearch.search.definition import StudyDefinitionError
    from skipsearch.search.spaces import UnknownSpaceError
    from skipsearch.store.best import StoreError
    return (UsageError, ScheduleError, ModelError, CheckpointError, NFEError, UnknownSamplerError, DeviceError,
            DatasetError, NonFiniteOutputError, NonFiniteError, FileNotFoundError, PermissionError, ExportError,
            ExtractorWeightsError, ProxyConfigError, ReferenceStatsError, UnknownSpaceError, StoreError,
            StudyDefinitionError, WorkersError)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as exc:  # only the known user-error types are caught; anything else is a bug: re-raise
        if isinstance(exc, _user_errors()):
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)
        raise


# --------------------------------------------------------------------------------------------------------------------
# Shared options and helpers.

ModelOpt = typer.Option("edm", "--model", "-m", help="model name (see 'skipsearch models')")
CheckpointOpt = typer.Option(None, "--checkpoint", help="local checkpoint (.pkl from EDM or .safetensors)")
TrustOpt = typer.Option(False, "--trust-pickle", help="allow loading a .pkl (pickles can run code: trusted files only)")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]")


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def _load(model: str, checkpoint: Optional[Path], trust_pickle: bool, device: str):
    from skipsearch.device import configure_cpu_threads, resolve_device
    from skipsearch.models import load_model
    dev = resolve_device(device)
    if dev.type == "cpu":
        configure_cpu_threads()
    return load_model(model, checkpoint=checkpoint, trust_pickle=trust_pickle, device=str(dev))


def parse_rho(text: str, num_skip_points: int):
    """``0.7`` -> constant; ``0.68:1.0`` -> linear bottom->top (the paper's notation 0.68 -> 1.0)."""
    from skipsearch.schedule.core import SkipSchedule
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise UsageError(f"--rho {text!r}: give a number (0.7) or bottom:top (0.68:1.0)") from None
    if len(parts) == 1:
        return SkipSchedule.constant(parts[0], num_skip_points)
    if len(parts) == 2:
        return SkipSchedule.linear(parts[0], parts[1], num_skip_points)
    raise UsageError(f"--rho {text!r}: give a number (0.7) or bottom:top (0.68:1.0)")


def _weights_of(schedule: Path) -> Optional[Path]:
    """Fine-tuned weights a schedule names (S²-DM exports), when that file is present."""
    import json
    try:
        path = json.loads(schedule.read_text()).get("provenance", {}).get("weights_path")
    except (OSError, ValueError, AttributeError):
        return None  # SkipSchedule.load reports the real problem with the file
    return Path(path) if path and Path(path).is_file() else None


def resolve_schedule(adapter, schedule: Optional[Path], rho: Optional[str]):
    from skipsearch.schedule.core import SkipSchedule
    if schedule is not None and rho is not None:
        raise UsageError("give either --schedule or --rho, not both")
    if schedule is not None:
        return SkipSchedule.load(schedule, expect_model=adapter.identity)
    if rho is not None:
        return parse_rho(rho, len(adapter.skip_points)).with_metadata(model=adapter.identity)
    return None


# --------------------------------------------------------------------------------------------------------------------
# Commands of the core stage.


@app.command()
def models() -> None:
    """List the model presets and their skip-point counts."""
    from skipsearch.models import list_models
    table = Table(title="skipsearch models")
    for column in ("name", "skip points", "description", "weights"):
        table.add_column(column)
    for info in list_models():
        table.add_row(info.name, str(info.num_skip_points), info.description, info.source)
    out.print(table)


@app.command("skip-points")
def skip_points(model: str = ModelOpt, checkpoint: Optional[Path] = CheckpointOpt, trust_pickle: bool = TrustOpt,
                device: str = DeviceOpt, sigma: float = typer.Option(1.0, help="noise level of the probe batch"),
                n: int = typer.Option(16, help="probe batch size"), seed: int = 0) -> None:
    """Print the skip points (decoder order, 0 = bottom) with widths and the norm ratio ||d_i||/||u_i||."""
    import torch

    from skipsearch.data import load_mnist, to_model_range
    adapter = _load(model, checkpoint, trust_pickle, device)
    generator = torch.Generator().manual_seed(seed)
    if model == "edm" and checkpoint is None:
        # The bundled model's own data: the ratio is measured where the model is used, on noisy real digits.
        images = to_model_range(load_mnist("test")[0][:n])
    else:
        images = torch.randn(n, *adapter.img_shape, generator=generator) * 0.5
    x = (images + sigma * torch.randn(images.shape, generator=generator)).to(adapter.device)
    labels = None
    if adapter.label_dim:
        labels = torch.nn.functional.one_hot(torch.arange(n) % adapter.label_dim, adapter.label_dim).float()
        labels = labels.to(adapter.device)
    ratios = adapter.norm_ratios(x, torch.full((n,), sigma, device=adapter.device), labels)
    table = Table(title=f"skip points of {adapter.name} (sha256 {adapter.identity.sha256[:12]}), sigma={sigma}")
    for column in ("index", "consumer", "resolution", "main ch", "skip ch", "||d||/||u||"):
        table.add_column(column, justify="right" if column != "consumer" else "left")
    for point, ratio in zip(adapter.skip_points, ratios):
        table.add_row(str(point.index), point.consumer, f"{point.resolution}x{point.resolution}",
                      str(point.main_channels), str(point.skip_channels), f"{ratio:.3f}")
    out.print(table)
    out.print(f"mean norm ratio {sum(ratios) / len(ratios):.3f} over {len(ratios)} skip points")


@app.command()
def sample(model: str = ModelOpt, nfe: int = typer.Option(35, "--nfe", help="denoiser calls per image (exact)"),
           sampler: str = typer.Option("heun", help="heun | euler | dpmpp_2m | unipc | ddim"),
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
    from skipsearch.export.images import save_grid, save_npz
    from skipsearch.sampling.generate import generate
    from skipsearch.sampling.samplers import steps_for_nfe
    if n <= 0:
        raise UsageError(f"--n must be positive, got {n}")
    steps_for_nfe(sampler, nfe)  # fail on a bad NFE before loading anything
    if checkpoint is None and schedule is not None:
        checkpoint = _weights_of(schedule)
    adapter = _load(model, checkpoint, trust_pickle, device)
    tuned = resolve_schedule(adapter, schedule, rho)
    with _progress() as progress:
        task = progress.add_task(f"sampling {sampler} NFE {nfe}", total=n)
        result = generate(adapter, sampler=sampler, nfe=nfe, seeds=range(seed, seed + n), schedule=tuned,
                          batch_size=batch_size, precision=precision,
                          progress=lambda k: progress.advance(task, k))
    save_grid(result.images, output, scale=scale)
    out.print(f"wrote {output} ({n} images, {adapter.name}, {sampler}, NFE {nfe}, "
              f"{'untuned' if tuned is None else tuned.family + ' schedule'}, {result.seconds:.1f}s)")
    if npz is not None:
        save_npz(result.images, npz, seeds=result.seeds)
        out.print(f"wrote {npz}")


@app.command()
def train(output: Path = typer.Option(Path("runs/edm-mnist"), "-o", "--output", help="folder for weights + card"),
          steps: int = typer.Option(8000, help="optimizer steps"), batch_size: int = 64, lr: float = 2e-3,
          seed: int = 0, device: str = DeviceOpt, threads: Optional[int] = None,
          data: Optional[Path] = typer.Option(None, help="folder containing MNIST/raw (default: auto)")) -> None:
    """Train the bundled-model architecture on MNIST (EDM loss, EMA) and write safetensors + model card."""
    from skipsearch.device import configure_cpu_threads, resolve_device
    from skipsearch.models.bundled import train_bundled_model
    dev = resolve_device(device)
    if dev.type == "cpu":
        configure_cpu_threads(threads)
    with _progress() as progress:
        task = progress.add_task("training", total=steps)
        card = train_bundled_model(output, steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=dev,
                                   data_root=data, on_step=lambda step, loss: progress.update(
                                       task, completed=step, description=f"training loss {loss:.4f}"))
    out.print(f"wrote {output}/edm_mnist.safetensors: {card['steps']} steps, final loss {card['final_loss']:.4f}, "
              f"{card['wall_seconds']:.0f}s")



# --------------------------------------------------------------------------------------------------------------------
# Proxy commands.


@app.command()
def evaluate(model: str = ModelOpt, nfe: int = typer.Option(9, "--nfe"), sampler: str = "heun",
             schedule: Optional[Path] = typer.Option(None, help="schedule JSON"),
             rho: Optional[str] = typer.Option(None, help="constant rho or bottom:top"),
             n: int = typer.Option(2000, "--n", help="images"),
             metric: str = typer.Option("fid", help="comma-separated: fid, kid, fid-inf"),
             seed: int = typer.Option(0, help="seed offset (image k uses seed offset+k)"),
             extractor: Optional[str] = None, fid_weights: Optional[Path] = None,
             ref: Optional[Path] = typer.Option(None, help="EDM-style reference .npz (mu, sigma)"),
             checkpoint: Optional[Path] = CheckpointOpt, trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
             batch_size: Optional[int] = None) -> None:
    """Proxy metric(s) of one schedule at n images, with the seeds and extractor used."""
    from skipsearch.proxy.fid_proxy import FidProxy, default_proxy_config
    from skipsearch.sampling.samplers import steps_for_nfe
    steps_for_nfe(sampler, nfe)
    adapter = _load(model, checkpoint, trust_pickle, device)
    tuned = resolve_schedule(adapter, schedule, rho)
    for name in [m.strip() for m in metric.split(",") if m.strip()]:
        overrides = {k: v for k, v in dict(extractor=extractor, weights_path=str(fid_weights) if fid_weights else None,
                                           ref_path=str(ref) if ref else None).items() if v is not None}
        config = default_proxy_config(adapter.name, metric=name, rungs=(n,), seed_offset=seed,
                                      batch_size=batch_size, **overrides)
        proxy = FidProxy(adapter, sampler=sampler, nfe=nfe, config=config)
        with _progress() as progress:
            task = progress.add_task(f"{name}: sampling + features", total=n)
            result = proxy.evaluate(tuned, preview=0, progress=lambda k: progress.advance(task, k))
        flag = " (n <= feature dim: biased)" if result.rungs[-1].rank_deficient else ""
        out.print(f"{name.upper()} {result.value:.4f}{flag}  n={result.n}  seeds {result.seeds[0]}..{result.seeds[1] - 1}"
                  f"  extractor {result.extractor} ({result.extractor_sha256[:12]})  {sampler} NFE {nfe}  "
                  f"{'untuned' if tuned is None else tuned.family}")


@app.command()
def refstats(dataset: str = "mnist", split: str = "train", extractor: str = "mnist-features",
             fid_weights: Optional[Path] = None, refresh: bool = False,
             output: Optional[Path] = typer.Option(None, "-o", help="also write an EDM-style .npz (mu, sigma)")) -> None:
    """Compute (or load from cache) reference statistics of a data set split under an extractor."""
    from skipsearch.proxy.extractors import get_extractor
    from skipsearch.proxy.stats import compute_reference_stats, save_npz
    ref = compute_reference_stats(dataset, split, get_extractor(extractor, weights_path=fid_weights), refresh=refresh)
    out.print(f"{dataset}/{split} under {extractor}: n={ref.stats.n}, dim={ref.stats.dim}, {ref.status} ({ref.path})")
    if output is not None:
        save_npz(output, ref.stats)
        out.print(f"wrote {output}")


@app.command("proxy-check")
def proxy_check_cmd(extractor: str = "mnist-features", n: int = 500, fid_weights: Optional[Path] = None) -> None:
    """Disturbance table: each disturbance must raise the proxy monotonically with its strength."""
    from skipsearch.proxy.disturb import format_table, is_monotone, proxy_check
    table = proxy_check(extractor, n=n, weights_path=str(fid_weights) if fid_weights else None)
    out.print(format_table(table))
    ok = is_monotone(table)
    out.print("monotone: yes" if ok else "[red]monotone: NO[/red] (this extractor can be gamed)")
    raise typer.Exit(0 if ok else 1)


# --------------------------------------------------------------------------------------------------------------------
# Search commands.

StorageOpt = typer.Option(None, "--storage", help="database URL (default: $SKIPSEARCH_STORAGE or ~/.skipsearch)")


def _storage(url: Optional[str]) -> str:
    from skipsearch.store.best import default_storage_url
    return url or default_storage_url()


@app.command()
def optimize(model: str = ModelOpt, nfe: Optional[int] = typer.Option(None, "--nfe"),
             sampler: Optional[str] = typer.Option(None, help="heun | euler | dpmpp_2m | unipc | ddim"),
             space: Optional[str] = typer.Option(None, help="constant | linear | per-level | per-layer | intervals | "
                                                           "linear-in-time | eps-scale, optionally +eps; s2dm | "
                                                           "s2dm+linear (S²-DM fine-tuning trials)"),
             trials: Optional[int] = typer.Option(None, "--trials", help="trial budget of the study"),
             study: Optional[Path] = typer.Option(None, "--study", help="study definition (TOML)"),
             storage: Optional[str] = StorageOpt, study_name: Optional[str] = None,
             optuna_sampler: Optional[str] = typer.Option(None, help="tpe | gp | cmaes | random"),
             pruner: Optional[str] = typer.Option(None, help="successive-halving | hyperband | median | aggressive | none"),
             rho_min: Optional[float] = None, rho_max: Optional[float] = None,
             rungs: Optional[str] = typer.Option(None, help="comma-separated image counts, e.g. 250,500,1000"),
             final_n: Optional[int] = typer.Option(None, help="images for the validation of the top trials"),
             top_k: Optional[int] = typer.Option(None, help="trials re-evaluated at final n"),
             metric: Optional[str] = None, seed: Optional[int] = None,
             export: Optional[Path] = typer.Option(None, help="where to write the best schedule JSON"),
             checkpoint: Optional[Path] = CheckpointOpt, device: str = DeviceOpt,
             workers: Optional[int] = typer.Option(None, help="Ray workers (one per GPU, else per CPU slot)"),
             ray_address: Optional[str] = typer.Option(None, help="auto | ray://host:port (default: local)")) -> None:
    """Search Skip-Tuning schedules with Optuna: proxy rungs + pruning, SQL store, validated export."""
    from skipsearch.execution.local import optimize_with_progress
    from skipsearch.search.definition import default_study, load_study_file
    base = load_study_file(study) if study else default_study(model, sampler, nfe)
    overrides = dict(model=model if (study is None or model != "edm") else None, nfe=nfe, sampler=sampler,
                     space=space, trials=trials, name=study_name,
                     checkpoint=str(checkpoint) if checkpoint else None,
                     search__sampler=optuna_sampler, search__pruner=pruner, search__final_n=final_n,
                     search__validate_top_k=top_k, search__seed=seed, space_bounds__rho_min=rho_min,
                     space_bounds__rho_max=rho_max, proxy__metric=metric,
                     proxy__rungs=tuple(int(r) for r in rungs.split(",")) if rungs else None)
    definition = base.override(**overrides)
    from skipsearch.search.definition import validate
    validate(definition)
    optimize_with_progress(definition, storage_url=_storage(storage), device=device, export=export,
                           workers=workers, ray_address=ray_address, console=console, out=out)


@app.command()
def best(model: Optional[str] = typer.Option(None, "--model", "-m"), sampler: Optional[str] = None,
         nfe: Optional[int] = typer.Option(None, "--nfe"), storage: Optional[str] = StorageOpt) -> None:
    """The validated best schedule per model, sampler and NFE."""
    from skipsearch.store.best import BestStore, redact_url
    url = _storage(storage)
    with BestStore(url) as store:
        rows = store.best(model, sampler, nfe)
    table = Table(title=f"best schedules in {redact_url(url)}")
    for column in ("model", "sha256", "sampler", "NFE", "space", "metric", "validated", "n", "proxy", "study/trial",
                   "updated"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.model_name, r.weights_sha256[:10], r.sampler, str(r.nfe), r.space, r.metric,
                      f"{r.value:.4f}", str(r.n), "" if r.proxy_value is None else f"{r.proxy_value:.4f}",
                      f"{r.study_name}#{r.trial_number}", r.updated_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table if rows else "no validated best schedules yet; run 'skipsearch optimize'")


@app.command("export")
def export_cmd(output: Path = typer.Option(Path("schedule.json"), "-o", "--output"), model: str = ModelOpt,
               sampler: Optional[str] = None, nfe: Optional[int] = typer.Option(None, "--nfe"),
               storage: Optional[str] = StorageOpt) -> None:
    """Write the validated best schedule as JSON (for 'sample --schedule' and skipsearch.apply)."""
    from skipsearch.export.schedule import export_best
    from skipsearch.store.best import BestStore
    with BestStore(_storage(storage)) as store:
        path, row = export_best(store, output, model=model, sampler=sampler, nfe=nfe)
    out.print(f"wrote {path}: {row.model_name} {row.sampler} NFE {row.nfe}, {row.metric} {row.value:.4f} "
              f"(n={row.n}, study {row.study_name} trial {row.trial_number})")


@app.command()
def studies(storage: Optional[str] = StorageOpt) -> None:
    """Studies in the storage with trial counts and best values."""
    import optuna

    from skipsearch.search.session import optuna_storage
    from skipsearch.store.best import BestStore
    url = _storage(storage)
    BestStore(url).close()  # checks connectivity with a one-line error
    table = Table(title="studies")
    for column in ("study", "trials", "complete", "pruned", "failed", "best proxy", "best validated"):
        table.add_column(column)
    for summary in optuna.get_all_study_summaries(optuna_storage(url), include_best_trial=False):
        s = optuna.load_study(study_name=summary.study_name, storage=optuna_storage(url))
        states = [t.state.name for t in s.get_trials(deepcopy=False)]
        values = [t.value for t in s.get_trials(deepcopy=False) if t.value is not None]
        validated = [v["value"] for v in s.user_attrs.get("validated", {}).values() if "value" in v]
        table.add_row(summary.study_name, str(len(states)), str(states.count("COMPLETE")),
                      str(states.count("PRUNED")), str(states.count("FAIL")),
                      f"{min(values):.4f}" if values else "-", f"{min(validated):.4f}" if validated else "-")
    out.print(table)


@app.command()
def report(study_name: str = typer.Argument(..., help="study name (see 'skipsearch studies')"),
           output: Path = typer.Option(Path("report"), "-o", "--output"), storage: Optional[str] = StorageOpt) -> None:
    """Trials table (CSV, Markdown) and FID-vs-rho / FID-vs-NFE plots."""
    import optuna

    from skipsearch.export.report import write_report
    from skipsearch.search.session import optuna_storage
    from skipsearch.store.best import BestStore
    url = _storage(storage)
    with BestStore(url) as store:
        try:
            study = optuna.load_study(study_name=study_name, storage=optuna_storage(url))
        except KeyError:
            raise UsageError(f"no study named {study_name!r}; run 'skipsearch studies' to list them") from None
        for path in write_report(study, store, output):
            out.print(f"wrote {path}")


@app.command()
def dashboard(storage: Optional[str] = StorageOpt, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Start optuna-dashboard on the same storage (trial sample grids included)."""
    from skipsearch.export.dashboard import serve
    from skipsearch.store.best import BestStore, redact_url
    url = _storage(storage)
    BestStore(url).close()
    out.print(f"optuna-dashboard for {redact_url(url)} at http://{host}:{port}/ (Ctrl-C to stop)")
    serve(url, host=host, port=port)


if __name__ == "__main__":
    main()
