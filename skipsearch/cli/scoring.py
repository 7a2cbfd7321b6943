"""Commands that score: ``evaluate``, ``refstats``, ``proxy-check``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from skipsearch.cli.app import app, out, settings_of
from skipsearch.cli.options import (
    CheckpointOpt,
    DeviceOpt,
    ExtractorWeightsOpt,
    ModelOpt,
    TrustOpt,
    check_image_output,
    check_max_nfe,
    check_positive,
    load_adapter,
    progress_bar,
)
from skipsearch.cli.recipe import recipe, resolve_schedule, weights_of
from skipsearch.errors import UsageError

DATASET_HELP = ("reference data set: mnist, folder:DIR, zip:FILE.zip, npz:FILE, torchvision:NAME:ROOT, "
                "stats:FILE.npz or self (the model's own high-NFE samples)")


@app.command()
def evaluate(ctx: typer.Context, model: str = ModelOpt,
             nfe: Optional[int] = typer.Option(None, "--nfe", help="default: the schedule's, else 9"),
             sampler: Optional[str] = typer.Option(None, help=(
                 "default: the schedule's, else the model's (heun; ddim for DDPMs, multistep for consistency "
                 "models)")),
             schedule: Optional[Path] = typer.Option(None, help="schedule JSON"),
             rho: Optional[str] = typer.Option(None, help="constant rho or bottom:top"),
             n: int = typer.Option(2000, "--n", help="images"),
             metric: str = typer.Option("fid", help="comma-separated: fid, kid, fid-inf"),
             seed: int = typer.Option(0, help="seed offset (image k uses seed offset+k)"),
             extractor: Optional[str] = typer.Option(None),
             fid_weights: Optional[Path] = ExtractorWeightsOpt,
             ref: Optional[Path] = typer.Option(None, help="EDM-style reference .npz (mu, sigma)"),
             checkpoint: Optional[Path] = CheckpointOpt, trust_pickle: bool = TrustOpt, device: str = DeviceOpt,
             batch_size: Optional[int] = None,
             dataset: Optional[str] = typer.Option(None, help=DATASET_HELP),
             resize: Optional[str] = typer.Option(None, help="center-crop: fit reference images of another size")
             ) -> None:
    """Proxy metric(s) of one schedule at n images, with the seeds and extractor used."""
    import dataclasses
    import math

    from skipsearch.proxy.config import METRICS, default_proxy_config, metric_display_name
    from skipsearch.proxy.fid_proxy import FidProxy
    from skipsearch.sampling.samplers import steps_for_nfe
    settings = settings_of(ctx)
    check_positive(batch_size, "--batch-size")
    if n < 2:
        raise UsageError(f"--n must be at least 2, got {n}")
    check_max_nfe(nfe, "--nfe")
    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if not metrics or unknown:
        raise UsageError(f"--metric {metric!r}: use a comma-separated list of {', '.join(METRICS)}")
    if schedule is not None and schedule.is_dir():
        raise UsageError(f"--schedule {schedule} is a folder; give a schedule JSON file")
    sampler, nfe, options = recipe(schedule, sampler, nfe, default_nfe=9, model=model)
    steps_for_nfe(sampler, nfe)
    from skipsearch.export.weights import describe_weights
    if checkpoint is None and schedule is not None:
        checkpoint = weights_of(schedule, settings)
    adapter = load_adapter(model, checkpoint, trust_pickle, device, settings)
    from skipsearch.inputs import check_memory
    check_memory(n * (math.prod(adapter.pixel_shape) + 36), f"sampling {n} images", "give a smaller --n")
    tuned = resolve_schedule(adapter, schedule, rho, sampler=sampler, nfe=nfe)
    if tuned is not None:  # the flags (or the schedule's own recipe) decide how it is sampled
        tuned = tuned.with_metadata(sampler=sampler, nfe=nfe, sampler_options=options,
                                    nfe_set=tuned.nfe_set if nfe in tuned.nfe_set else ())
    out.print(escape(describe_weights(checkpoint, model, adapter.identity.sha256)), soft_wrap=True)
    for name in metrics:
        given = dict(extractor=extractor, weights_path=str(fid_weights) if fid_weights else None,
                     ref_path=str(ref) if ref else None, resize=resize)
        overrides = {k: v for k, v in given.items() if v is not None}
        config = default_proxy_config(adapter.dataset, fid_ref=settings.fid_ref, metric=name, rungs=(n,),
                                      seed_offset=seed, batch_size=batch_size, **overrides)
        if dataset is not None:  # --dataset is the reference (not SKIPSEARCH_FID_REF); the extractor stays
            config = dataclasses.replace(config, dataset=dataset, ref_path=str(ref) if ref else None)
        proxy = FidProxy(adapter, sampler=sampler, nfe=nfe, config=config, settings=settings, sampler_options=options)
        with progress_bar() as progress:
            task = progress.add_task(f"{name}: sampling + features", total=n)
            result = proxy.evaluate(tuned, preview=0, progress=lambda k: progress.advance(task, k))
        flag = " (n <= feature dim: biased)" if result.rungs[-1].rank_deficient else ""
        shown = metric_display_name(name, config.extractor).upper()
        out.print(f"{shown} {result.value:.4f}{flag}  n={result.n}  seeds {result.seeds[0]}.."
                  f"{result.seeds[1] - 1}  extractor {result.extractor} ({result.extractor_sha256[:12]})  "
                  f"{sampler} NFE {nfe}  {'untuned' if tuned is None else tuned.family}")


@app.command()
def refstats(ctx: typer.Context,
             dataset: str = typer.Option("mnist"),
             split: str = typer.Option("train"),
             extractor: str = typer.Option("mnist-features"),
             fid_weights: Optional[Path] = ExtractorWeightsOpt, refresh: bool = False,
             output: Optional[Path] = typer.Option(None, "-o",
                                                   help="also write an EDM-style .npz (mu, sigma)"),
             model: Optional[str] = typer.Option(None, "--model", "-m",
                                                 help="check the images against this model's shape (needed by self)"),
             resize: Optional[str] = typer.Option(None, help="center-crop: fit images to --model's shape")) -> None:
    """Compute (or load from cache) reference statistics of a data set split under an extractor; --dataset takes
    every data-set spec (mnist, folder:DIR, zip:FILE, npz:FILE, torchvision:NAME:ROOT, stats:FILE.npz, self)."""
    from skipsearch.proxy.extractors import get_extractor
    from skipsearch.proxy.stats import compute_reference_stats, save_npz
    settings = settings_of(ctx)
    if output is not None:
        check_image_output(output, (".npz",))
    weights = fid_weights or (settings.fid_weights if extractor == "inception-v3-compat" else None)
    from skipsearch.proxy.datasets import RESIZE_MODES
    if resize is not None and resize not in RESIZE_MODES:
        raise UsageError(f"--resize {resize!r}: use {' or '.join(RESIZE_MODES)} or leave it out")
    adapter = load_adapter(model, None, False, "cpu", settings) if model else None
    ref = compute_reference_stats(dataset, split, get_extractor(extractor, weights_path=weights,
                                                                offline=settings.offline),
                                  cache=settings.cache, refresh=refresh, settings=settings, adapter=adapter,
                                  resize=resize)
    out.print(f"{dataset}/{split} under {extractor}: n={ref.stats.n}, dim={ref.stats.dim}, {ref.status} "
              f"({escape(str(ref.path))})")
    if output is not None:
        save_npz(output, ref.stats)
        out.print(f"wrote {escape(str(output))}")


@app.command("proxy-check")
def proxy_check_cmd(ctx: typer.Context, extractor: str = typer.Option("mnist-features"),
                    n: int = 500, fid_weights: Optional[Path] = ExtractorWeightsOpt) -> None:
    """Disturbance table: each disturbance must raise the proxy monotonically with its strength."""
    from skipsearch.proxy.disturb import format_table, is_monotone, proxy_check
    if not 2 <= n <= 10000:
        raise UsageError(f"--n must be in [2, 10000] (MNIST test images), got {n}")
    table = proxy_check(extractor, n=n, weights_path=str(fid_weights) if fid_weights else None,
                        settings=settings_of(ctx))
    out.print(format_table(table))
    ok = is_monotone(table)
    out.print("monotone: yes" if ok else "[red]monotone: NO[/red] (this extractor can be gamed)")
    raise typer.Exit(0 if ok else 1)
