"""Throughput against the roofline: GEMM, bare denoiser, generate(), features, proxy (prints figures, not a test).

    python benchmarks/throughput.py [--model edm] [--device cpu|cuda] [--batches 32,64,128,256]
        [--samplers heun,euler,dpmpp_2m] [--nfe 9] [--n N] [--batch B] [--k 3] [--threads N] [--json PATH]

All measurements run in one process, interleaved: k rounds, each round times every measurement once, so a noisy
moment on a shared machine hits all of them alike. Rates and ratios use the best (min) time; medians are shown too.
Forwards are image forwards (a batch of B counts B). ``generate()`` and the proxy run at the batch skipsearch
chooses by measurement (``skipsearch.sampling.batching``, cached per model and device) unless ``--batch`` is given;
n defaults to that batch. The old formula's batch (``default_batch_size``) is timed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

GEMM_SIZE = 2048
GEMM_REPS = 4  # per timed call: ~0.4 s at the 190 GFLOP/s measured on this CPU


@dataclass
class Measurement:
    name: str
    batch: int | None
    unit: str  # what `work` counts: "forwards", "images", "GFLOP"
    run: Callable[[], float]  # does the work once, returns how many units it did
    flops_per_unit: float | None = None  # to derive GFLOP/s
    times: list[float] = field(default_factory=list)
    work: float = 0.0

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def rate(self, seconds: float) -> float:
        return self.work / seconds

    @property
    def gflops(self) -> float | None:
        return None if self.flops_per_unit is None else self.rate(self.best) * self.flops_per_unit / 1e9


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edm")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--batches", default="32,64,128,256", help="bare denoiser batch sizes")
    parser.add_argument("--samplers", default="heun,euler,dpmpp_2m")
    parser.add_argument("--nfe", type=int, default=9)
    parser.add_argument("--n", type=int, default=None, help="images per generate/feature/proxy call (default: batch)")
    parser.add_argument("--batch", type=int, default=None, help="generate/proxy batch (default: the project default)")
    parser.add_argument("--k", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
    parser.add_argument("--profile", action="store_true", help="torch.profiler of one proxy call: where time goes")
    args = parser.parse_args()

    # Heavy imports here, so --help is instant.
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from skipsearch.device import configure_cpu_threads, default_batch_size, resolve_device
    from skipsearch.models import load_model
    from skipsearch.proxy.config import default_proxy_config
    from skipsearch.proxy.fid_proxy import FidProxy
    from skipsearch.sampling.batching import calibrated_batch_size
    from skipsearch.sampling.generate import generate
    from skipsearch.settings import Settings

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = configure_cpu_threads(args.threads or cores)
    device = resolve_device(args.device)
    samplers = _names(args.samplers)
    settings = Settings.from_env()
    adapter = load_model(args.model, device=str(device), settings=settings)
    formula = default_batch_size(device, adapter.img_shape)  # the batch before it was measured
    choice = calibrated_batch_size(adapter, cache=settings.cache)  # what generate() uses without --batch-size
    batch = args.batch or choice.batch_size
    n = args.n or batch
    batches = sorted(set(_ints(args.batches)) | {batch, formula})  # the chosen and the old batch too

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def inputs(size: int) -> tuple:
        generator = torch.Generator().manual_seed(size)
        x = (torch.randn(size, *adapter.img_shape, generator=generator) * 2.0).to(device)
        sigma = torch.full((size,), 2.0, device=device)
        labels = None
        if adapter.label_dim:
            labels = F.one_hot(torch.arange(size) % adapter.label_dim, adapter.label_dim).float().to(device)
        return x, sigma, labels

    # FLOPs of one image forward, counted once (convolutions and matmuls; elementwise ops are not counted).
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        adapter.denoise(*inputs(1))
    flops_per_forward = float(counter.get_total_flops())

    measurements: list[Measurement] = []

    a = torch.randn(GEMM_SIZE, GEMM_SIZE, device=device)
    b = torch.randn(GEMM_SIZE, GEMM_SIZE, device=device)

    def gemm() -> float:
        for _ in range(GEMM_REPS):
            torch.mm(a, b)
        sync()
        return GEMM_REPS * 2 * GEMM_SIZE ** 3 / 1e9

    measurements.append(Measurement("fp32 GEMM 2048²", None, "GFLOP", gemm, 1e9))

    def bare(size: int) -> Callable[[], float]:
        x, sigma, labels = inputs(size)
        reps = max(1, -(-n // size))  # about n images per timed call at every batch

        def run() -> float:
            with torch.inference_mode():
                for _ in range(reps):
                    adapter.denoise(x, sigma, labels)
            sync()
            return reps * size

        return run

    for size in batches:
        measurements.append(Measurement("bare denoise", size, "forwards", bare(size), flops_per_forward))

    def sampling(name: str) -> Callable[[], float]:
        def run() -> float:
            result = generate(adapter, sampler=name, nfe=args.nfe, seeds=range(n), batch_size=batch)
            sync()
            return n * result.nfe

        return run

    for name in samplers:
        measurements.append(Measurement(f"generate {name}", batch, "forwards", sampling(name), flops_per_forward))

    config = default_proxy_config(adapter.dataset, fid_ref=settings.fid_ref, rungs=(n,), batch_size=batch)
    proxy = FidProxy(adapter, sampler=samplers[0], nfe=args.nfe, config=config, settings=settings)
    images = generate(adapter, sampler=samplers[0], nfe=args.nfe, seeds=range(n), batch_size=batch).images

    def features() -> float:
        proxy.extractor(images)
        sync()
        return n

    def full_proxy() -> float:
        proxy.evaluate(None, rungs=[n], preview=0)
        sync()
        return n

    measurements.append(Measurement(f"features {proxy.extractor.name}", proxy.extractor.batch_size, "images",
                                    features))
    measurements.append(Measurement(f"proxy {samplers[0]} + features", batch, "images", full_proxy))

    for m in measurements:  # warm-up (allocator, kernels, caches); not timed
        if not m.name.startswith(("generate", "proxy")):  # generate ran above, the proxy is generate + features
            m.run()
    for _ in range(args.k):
        for m in measurements:
            start = time.perf_counter()
            m.work = m.run()
            m.times.append(time.perf_counter() - start)

    gemm_m = measurements[0]
    gemm_rate = gemm_m.rate(gemm_m.best)
    by_batch = {m.batch: m for m in measurements if m.name == "bare denoise"}
    ratios: dict[str, float] = {}
    for size, m in by_batch.items():
        ratios[f"bare denoise GFLOP/s / GEMM (batch {size})"] = m.gflops / gemm_rate
    bare_default = by_batch[batch]
    for name in samplers:
        m = next(x for x in measurements if x.name == f"generate {name}")
        ratios[f"generate {name} / bare (batch {batch})"] = m.rate(m.best) / bare_default.rate(bare_default.best)
    gen_first = next(x for x in measurements if x.name == f"generate {samplers[0]}")
    proxy_m = measurements[-1]
    images_per_s = gen_first.rate(gen_first.best) / (gen_first.work / n)  # forwards/s over forwards per image
    ratios[f"proxy / generate {samplers[0]} (images/s)"] = proxy_m.rate(proxy_m.best) / images_per_s
    gen_ratio = gen_first.rate(gen_first.best) / bare_default.rate(bare_default.best)
    targets = [(f"bare denoise at batch {batch} >= 0.70 x GEMM", by_batch[batch].gflops / gemm_rate, 0.70),
               (f"generate {samplers[0]} >= 0.95 x bare", gen_ratio, 0.95),
               ("proxy >= 0.85 x generate", ratios[f"proxy / generate {samplers[0]} (images/s)"], 0.85)]

    info = {"model": args.model, "device": str(device), "torch": torch.__version__, "threads": threads,
            "cores": cores, "gflop_per_forward": flops_per_forward / 1e9, "batch": batch, "formula_batch": formula,
            "calibration_rates": choice.rates, "n": n,
            "nfe": args.nfe, "k": args.k, "batches": batches}
    print(f"model {args.model} on {device}, torch {torch.__version__}, {threads} threads of {cores} cores; "
          f"{flops_per_forward / 1e9:.3f} GFLOP per image forward")
    print(f"bare batches {','.join(map(str, batches))}; generate/proxy batch {batch} "
          f"({'given' if args.batch else 'measured' if choice.measured else 'measured earlier, cached'}; the formula "
          f"gives {formula}), n {n}, NFE {args.nfe}; {args.k} interleaved rounds; rates at the min time")
    header = f"{'measurement':34s} {'batch':>6s} {'min s':>8s} {'median s':>9s} {'rate (min)':>12s} " \
             f"{'rate (med)':>12s} {'unit':>10s} {'GFLOP/s':>8s}"
    print(header)
    print("-" * len(header))
    rows = []
    for m in measurements:
        unit = f"{m.unit}/s" if m.unit != "GFLOP" else "GFLOP/s"
        gflops = "" if m.gflops is None else f"{m.gflops:8.1f}"
        batch_text = "" if m.batch is None else str(m.batch)
        print(f"{m.name:34s} {batch_text:>6s} {m.best:8.3f} {m.median:9.3f} {m.rate(m.best):12.1f} "
              f"{m.rate(m.median):12.1f} {unit:>10s} {gflops:>8s}")
        rows.append({"name": m.name, "batch": m.batch, "unit": unit, "work_per_call": m.work, "times_s": m.times,
                     "min_s": m.best, "median_s": m.median, "rate_min": m.rate(m.best),
                     "rate_median": m.rate(m.median), "gflops": m.gflops})
    print("-" * len(header))
    for label, value in ratios.items():
        print(f"{label:58s} {value:6.2f}")
    print("-" * len(header))
    for label, value, goal in targets:
        print(f"target: {label:50s} {value:6.2f}  {'met' if value >= goal else 'MISSED'}")
    if args.profile:
        _profile(lambda: proxy.evaluate(None, rungs=[n], preview=0), f"proxy {samplers[0]} + features, n {n}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"info": info, "measurements": rows, "ratios": ratios,
                       "targets": [{"target": t, "value": v, "goal": g} for t, v, g in targets]}, handle, indent=2)
        print(f"wrote {args.json}")


def _profile(run: Callable[[], object], label: str, rows: int = 15) -> None:
    """The operators that take the time of one ``run()`` (self CPU time; CUDA time too on a GPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        run()
    print(f"profile of {label}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


if __name__ == "__main__":
    main()
