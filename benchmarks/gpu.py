"""GPU readiness: sampling images/s by precision, memory format and torch.compile; Inception features; a 12-trial
study; two Ray workers sharing one GPU (prints a table, asserts nothing).

    python benchmarks/gpu.py [--device cuda|cpu] [--quick] [--models imagenet64,cifar10]
        [--parts sampling,compile,features,study,workers] [--sampler heun] [--nfe 9] [--n N] [--batch B] [--k K]
        [--trials 12] [--rungs 256,512] [--workers 2] [--workers-on cifar10] [--budget-s 420]
        [--study-extractor auto|inception|mnist] [--threads N] [--json PATH]

Models are the EDM presets with random weights (no download): ADM ImageNet-64 (DhariwalUNet) and DDPM++ CIFAR-10
(SongUNet). Their images are noise, which costs the same to sample as real ones. ``--quick`` is a smoke run: smaller
networks (fewer channels, one block per level), CIFAR-10 only unless --models says otherwise, one round, tiny n,
rungs 64,128, and no torch.compile unless --parts names it (inductor takes minutes on a small CPU).

Sampling rows run interleaved as in throughput.py: a warm-up call, then k rounds that each time every row once, so
a noisy moment hits all rows alike; rates use the min time. "fp32/bf16/fp16" is generate()'s autocast precision
with the network's own fp16 switch off; the ADM preset ships with ``use_fp16=True`` (its UNet runs fp16 on CUDA even
at fp32), which the "as shipped" row shows. Without data sets or Inception weights, the study scores against a
synthetic reference .npz (the extractor's dimension) with torch-fidelity's Inception architecture at random weights;
both, the network files and the study database live in a temporary folder removed at the end. Calibration of the
rho range and the final validation are left out (the 12 trials are what is timed).

On CPU the study scores with the shipped mnist-features network (Inception at 299 px runs at ~10 images/s on a
small CPU; --study-extractor inception times it anyway), the Ray part prints "skipped: no GPU", and --quick uses one
torch thread (on a shared CPU, OpenMP threads that wait for each other run many times slower).

Budget on one H200 with the defaults, estimated from FLOP counts (not measured yet): sampling ~30 s per model,
compile 1-2 min per model, features seconds, a 12-trial study ~1 min per model, Ray workers ~1.5 min (CIFAR-10
only, --workers-on). A part starts only while its estimate (RESERVE_S) fits in --budget-s (420 s on CUDA), else it
is reported as skipped; ``--parts`` picks what to run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

MODELS = {"imagenet64": "edm-imagenet64", "cifar10": "edm-cifar10"}
TITLES = {"imagenet64": "ADM ImageNet-64", "cifar10": "DDPM++ CIFAR-10"}
PARTS = ("sampling", "compile", "features", "study", "workers")
# --quick: the same architectures, shrunk so a 2-core CPU samples a study in seconds.
QUICK_KWARGS = {"imagenet64": dict(model_channels=32, num_blocks=1, attn_resolutions=[8]),
                "cifar10": dict(model_channels=16, num_blocks=1)}
# One full batch per timed call on CUDA; chosen so each model's sampling rows take about half a minute.
CUDA_BATCH = {"imagenet64": 64, "cifar10": 256}
CUDA_STUDY_BATCH = 256  # the study samples its rungs (256, 512) in one or two batches
# Seconds a part may take on an H200 (estimates): a part starts only while the run has that much --budget-s left.
RESERVE_S = {"sampling": 60, "compile": 180, "features": 10, "study": 90, "workers": 90}
EXTRACTORS = {"inception": "inception-v3-compat", "mnist": "mnist-features"}


def _throughput():
    """throughput.py's Measurement (a script beside this one, not a package module)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import throughput
    return throughput


def _fail(message: str) -> None:
    raise SystemExit(f"gpu.py: {message}")


def _list(text: str, known: tuple[str, ...] | dict, what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        _fail(f"unknown {what} {', '.join(unknown) or repr(text)}; use a comma-separated subset of {','.join(known)}")
    return names


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda[:N] or cpu (default: cuda when a GPU is visible)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small networks, tiny n, one round")
    parser.add_argument("--models", default=None, help="imagenet64,cifar10 (default: both; --quick: cifar10)")
    parser.add_argument("--parts", default=None, help=f"{','.join(PARTS)} (default: all; --quick: no compile)")
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--nfe", type=int, default=9)
    parser.add_argument("--n", type=int, default=None, help="images per timed sampling call (default: the batch)")
    parser.add_argument("--batch", type=int, default=None, help="sampling and proxy batch")
    parser.add_argument("--k", type=int, default=None, help="interleaved rounds (default 2; --quick 1)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rungs", default=None, help="study rungs (default 256,512 on CUDA, else 64,128)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers sharing the GPU")
    parser.add_argument("--workers-on", default=None, help="models the workers part runs for (default: cifar10, "
                        "where one process leaves the GPU idlest, else the first model)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip a part that would end past this many seconds (default: 420 on CUDA, none on CPU)")
    parser.add_argument("--study-extractor", default="auto", choices=("auto", *EXTRACTORS),
                        help="auto: Inception on CUDA, mnist-features on CPU (Inception at 299 px is slow there)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: all cores; --quick on CPU: 1)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args()
    args.models = _list(args.models or ("cifar10" if args.quick else "imagenet64,cifar10"), MODELS, "model(s)")
    args.workers_on = _list(args.workers_on, MODELS, "model(s)") if args.workers_on else \
        (["cifar10"] if "cifar10" in args.models else args.models[:1])
    explicit_parts = args.parts is not None
    args.parts = _list(args.parts or ",".join(PARTS), PARTS, "part(s)")
    if args.quick and not explicit_parts:
        args.parts = [p for p in args.parts if p != "compile"]
    try:
        args.rungs = tuple(int(x) for x in args.rungs.split(",")) if args.rungs else None
    except ValueError:
        _fail(f"--rungs must be increasing integers like 256,512, got {args.rungs!r}")
    rungs = args.rungs
    if rungs is not None and (not rungs or min(rungs) < 2 or list(rungs) != sorted(set(rungs))):
        _fail(f"--rungs must be increasing image counts above 1, like 256,512; got {','.join(map(str, args.rungs))}")
    for name in ("nfe", "n", "batch", "k", "trials", "workers", "threads", "budget_s"):
        value = getattr(args, name)
        if value is not None and value < 1:
            _fail(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        _fail(f"--json {args.json}: its folder does not exist")
    return args


class Bench:
    """Shared state of one run: device, settings, the temporary folder, the collected numbers and notes."""

    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        import torch

        from skipsearch.device import configure_cpu_threads, resolve_device
        from skipsearch.errors import SkipsearchError
        from skipsearch.settings import Settings

        self.args, self.folder, self.torch = args, folder, torch
        try:
            self.device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except SkipsearchError as exc:
            _fail(str(exc))
        self.cuda = self.device.type == "cuda"
        # A smoke run on a CPU that others share: with all cores, OpenMP threads that wait for each other run
        # 10-50x slower once another process takes a core; one thread is slower only on an idle machine.
        quick_cpu = args.quick and not self.cuda and args.threads is None and "OMP_NUM_THREADS" not in os.environ
        self.threads = configure_cpu_threads(1 if quick_cpu else args.threads)
        self.k = args.k or (1 if args.quick else 2)
        self.rungs = args.rungs or ((64, 128) if args.quick or not self.cuda else (256, 512))
        # Everything the study writes (database, artifacts, reference caches) stays in the temporary folder.
        self.settings = dataclasses.replace(Settings.from_env(), home=folder / "home", cache=folder / "cache",
                                            artifacts=folder / "artifacts", storage=None, offline=True,
                                            fid_weights=None, fid_ref=None)
        self.storage_url = f"sqlite:///{folder / 'studies.db'}"
        self.started = time.perf_counter()
        self.budget = args.budget_s or (420.0 if self.cuda and not args.quick else None)
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}
        self._inception: Path | None = None
        self._refs: dict[int, Path] = {}

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def over_budget(self, part: str) -> str | None:
        """Why ``part`` is skipped (the run would pass --budget-s), or None."""
        elapsed = time.perf_counter() - self.started
        if self.budget is None or elapsed + RESERVE_S[part] <= self.budget:
            return None
        return f"skipped: {elapsed:.0f} s of the {self.budget:.0f} s budget spent, {part} needs ~{RESERVE_S[part]} s"

    def study_batch(self, key: str) -> int:
        return self.args.batch or (CUDA_STUDY_BATCH if self.cuda and not self.args.quick else self.batch_for(key))

    def batch_for(self, key: str) -> int:
        if self.args.batch:
            return self.args.batch
        return 8 if self.args.quick else CUDA_BATCH[key] if self.cuda else 16

    # --- random weights -----------------------------------------------------------------------------------------
    def network(self, key: str):
        """The preset's architecture with seeded random weights (shrunk under --quick), fp32, eval, on the device."""
        from skipsearch.models.checkpoints import PRESETS, create_network
        preset = PRESETS.get(MODELS[key])
        self.torch.manual_seed(0)
        kwargs = {**preset.kwargs, **(QUICK_KWARGS[key] if self.args.quick else {})}
        return create_network(preset.precond, **kwargs).eval().requires_grad_(False).to(self.device)

    def inception_weights(self) -> Path:
        """torch-fidelity's Inception-v3 architecture with random weights, saved as a state dict (no download)."""
        if self._inception is not None:
            return self._inception
        import torch.nn as nn
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        class RandomInception(FeatureExtractorInceptionV3):
            def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
                return None

        empty = self.folder / "empty.pth"
        self.torch.save({}, empty)  # a weights path, so that the constructor does not download
        self.torch.manual_seed(0)
        net = RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
        for module in net.modules():
            if isinstance(module, nn.Conv2d):  # the default init shrinks activations ~10x per layer: keep O(1)
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        self._inception = self.folder / "inception-random.pth"
        self.torch.save(net.state_dict(), self._inception)
        self.note("features: torch-fidelity's Inception-v3 architecture with random weights (the real weights "
                  "are not available offline); the cost is the same")
        return self._inception

    def reference(self, dim: int) -> Path:
        """A synthetic reference .npz (mu, dense SPD sigma) of dimension ``dim``: FID costs what a real one does."""
        if dim not in self._refs:
            import numpy as np

            from skipsearch.proxy.stats import FeatureStats, save_npz
            rng = np.random.default_rng(0)
            a = rng.standard_normal((dim, dim)) / np.sqrt(dim)
            stats = FeatureStats(np.zeros(dim), a @ a.T + 0.1 * np.eye(dim), None, {"synthetic": "benchmarks/gpu.py"})
            self._refs[dim] = save_npz(self.folder / f"reference-{dim}.npz", stats)
            self.note(f"study: synthetic {dim}-d reference statistics written to a temporary folder (no cifar10 / "
                      "imagenet data here); FID values are meaningless, their cost is real")
        return self._refs[dim]


def _rows_table(rows: list[dict[str, Any]], cuda: bool) -> None:
    header = f"  {'variant':34s} {'min s':>8s} {'median s':>9s} {'images/s':>10s} {'TFLOP/s':>8s}" + \
             (f" {'peak GiB':>8s}" if cuda else "") + "  note"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for row in rows:
        if row.get("error"):
            print(f"  {row['name']:34s} {'failed: ' + row['error']}")
            continue
        tflops = "" if row.get("tflops") is None else f"{row['tflops']:8.2f}"
        peak = f" {row['peak_gib']:8.2f}" if cuda else ""
        print(f"  {row['name']:34s} {row['min_s']:8.3f} {row['median_s']:9.3f} {row['rate_min']:10.1f} "
              f"{tflops:>8s}{peak}  {row.get('note', '')}")


def _interleave(bench: Bench, measurements: list, warm: bool = True) -> list[dict[str, Any]]:
    """Warm-up call, then k rounds of one timed call per measurement; a failing one is reported and dropped."""
    torch = bench.torch
    errors: dict[str, str] = {}
    peaks: dict[str, float] = {}

    def call(m) -> float | None:
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats(bench.device)
        try:
            work = m.run()
        except Exception as exc:  # OOM, fp16 overflow, a compile error: one line, the other rows go on
            errors[m.name] = _first_line(exc)
            return None
        if bench.cuda:
            peaks[m.name] = max(peaks.get(m.name, 0.0), torch.cuda.max_memory_allocated(bench.device) / 2**30)
        return work

    if warm:
        for m in measurements:
            if not getattr(m, "warmed", False):
                call(m)
    for _ in range(bench.k):
        for m in measurements:
            if m.name in errors:
                continue
            start = time.perf_counter()
            work = call(m)
            if work is not None:
                m.work = work
                m.times.append(time.perf_counter() - start)
    rows = []
    for m in measurements:
        if m.name in errors or not m.times:
            rows.append({"name": m.name, "error": errors.get(m.name, "no timed call")})
            continue
        rows.append({"name": m.name, "batch": m.batch, "times_s": m.times, "min_s": m.best, "median_s": m.median,
                     "rate_min": m.rate(m.best), "rate_median": m.rate(m.median),
                     "tflops": None if m.gflops is None else m.gflops / 1e3, "peak_gib": peaks.get(m.name),
                     "note": getattr(m, "note", "")})
    return rows


def _sampling(bench: Bench, key: str, net, flops_per_image: float, with_compile: bool) -> list[dict[str, Any]]:
    """images/s of generate() per precision x memory format, the as-shipped fp16 network, and torch.compile."""
    torch = bench.torch
    from skipsearch.models.edm import EDMAdapter
    from skipsearch.sampling.generate import generate
    Measurement = _throughput().Measurement
    args = bench.args
    batch = bench.batch_for(key)
    n = args.n or batch
    shipped_fp16 = bool(net.use_fp16)
    net.use_fp16 = False  # the precision rows mean what they say
    contiguous = net
    channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    adapters = {"contiguous": EDMAdapter(contiguous, MODELS[key]), "channels_last": EDMAdapter(channels_last,
                                                                                               MODELS[key])}

    def sampling(adapter, precision: str, before: Callable[[], None] | None = None,
                 after: Callable[[], None] | None = None) -> Callable[[], float]:
        def run() -> float:
            if before:
                before()
            try:
                generate(adapter, sampler=args.sampler, nfe=args.nfe, seeds=range(n), batch_size=batch,
                         precision=precision)
            finally:
                if after:
                    after()
            bench.sync()
            return n
        return run

    precisions = ["fp32", "bf16", "fp16"] if bench.cuda else ["fp32"]
    if not bench.cuda:
        bench.note("sampling: bf16/fp16 autocast needs CUDA: skipped on CPU")
    measurements = []
    for precision in precisions:
        for layout, adapter in adapters.items():
            measurements.append(Measurement(f"{precision} {layout}", batch, "images", sampling(adapter, precision),
                                            flops_per_image))
    if shipped_fp16 and bench.cuda:
        def on() -> None:
            channels_last.use_fp16 = True

        def off() -> None:
            channels_last.use_fp16 = False

        m = Measurement("as shipped (net fp16) channels_last", batch, "images",
                        sampling(adapters["channels_last"], "fp32", on, off), flops_per_image)
        m.note = "use_fp16=True, fp32 autocast: what a study runs"
        measurements.append(m)
    if with_compile:
        precision = "bf16" if bench.cuda else "fp32"
        compiled_net = copy.deepcopy(channels_last)
        compiled_net.compile()  # mode "default"; in place, so the adapter still finds net.model's blocks
        m = Measurement(f"compile {precision} channels_last", batch, "images",
                        sampling(EDMAdapter(compiled_net, MODELS[key]), precision), flops_per_image)
        print(f"  compiling ({precision}, channels_last): the first call includes inductor's compile ...", flush=True)
        start = time.perf_counter()
        try:
            m.run()
            m.note = f"first call {time.perf_counter() - start:.1f} s (compile)"
            m.warmed = True
            measurements.append(m)
        except Exception as exc:
            bench.note(f"{TITLES[key]}: torch.compile failed after {time.perf_counter() - start:.1f} s: "
                       f"{_first_line(exc)}")
            measurements.append(m)  # shown as failed
            m.run = _raiser(exc)
    return _interleave(bench, measurements)


def _raiser(exc: BaseException) -> Callable[[], float]:
    def run() -> float:
        raise exc
    return run


def _features(bench: Bench, key: str, img_shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    """Inception-feature images/s (uint8 CPU images in, as the proxy hands them) at its default and a larger batch."""
    torch = bench.torch
    from skipsearch.proxy.extractors import get_extractor
    Measurement = _throughput().Measurement
    extractor = get_extractor("inception-v3-compat", weights_path=bench.inception_weights(), device=bench.device,
                              offline=True)
    n = bench.args.n or (16 if bench.args.quick else 1024 if bench.cuda else 64)
    images = torch.randint(0, 256, (n, *img_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = sorted({extractor.batch_size, *((256,) if bench.cuda else ())})

    def features(size: int) -> Callable[[], float]:
        def run() -> float:
            extractor(images, batch_size=size)
            bench.sync()
            return n
        return run

    measurements = []
    for size in batches:
        m = Measurement(f"inception features batch {size}", size, "images", features(size))
        m.note = "default batch" if size == extractor.batch_size else ""
        measurements.append(m)
    return _interleave(bench, measurements)


@dataclasses.dataclass
class StudyInputs:
    weights: Path
    adapter: Any
    definition: Any


def _study_inputs(bench: Bench, key: str, net) -> StudyInputs:
    """The random network as a file (so Ray workers load the same weights), the adapter loaded from it as the CLI
    would, and the definition: the model's default study, 12 trials, small rungs, a synthetic reference."""
    from skipsearch.models import load_model
    from skipsearch.models.checkpoints import PRESETS, save_network
    from skipsearch.proxy.config import ProxyConfig
    from skipsearch.search.definition import default_study
    preset = PRESETS.get(MODELS[key])
    weights = save_network(net, bench.folder / f"{key}-random.safetensors")
    adapter = load_model(preset.name, checkpoint=weights, device=str(bench.device), settings=bench.settings)
    choice = bench.args.study_extractor
    extractor = EXTRACTORS[choice] if choice != "auto" else EXTRACTORS["inception" if bench.cuda else "mnist"]
    if extractor == "mnist-features":
        dim, weights_path = 232, None
        bench.note("study: mnist-features extractor (the shipped 232-d network; Inception at 299 px runs at ~10 "
                   "images/s on a small CPU); --study-extractor inception to time it")
    else:
        dim, weights_path = 2048, str(bench.inception_weights())
    proxy = ProxyConfig(extractor=extractor, dataset=preset.dataset or "cifar10", ref_path=str(bench.reference(dim)),
                        rungs=tuple(bench.rungs), batch_size=bench.study_batch(key),
                        weights_path=weights_path)
    definition = default_study(preset.name, bench.args.sampler, bench.args.nfe, settings=bench.settings).override(
        sampler=bench.args.sampler, nfe=bench.args.nfe, trials=bench.args.trials, checkpoint=str(weights),
        proxy=proxy, space_bounds__calibrate=False, source="benchmarks/gpu.py")
    bench.note("study: the rho range is not calibrated and the top trials are not validated: only the trials "
               "are timed")
    return StudyInputs(weights, adapter, definition)


def _trial_figures(study) -> dict[str, Any]:
    """Counts, images sampled, and the trials' own span (first start to last completion)."""
    from skipsearch.optimization import trial_counts
    done = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None and t.datetime_start]
    images = sum(max(t.intermediate_values) for t in done if t.intermediate_values)  # failed ones cost too
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds() \
        if done else 0.0
    return {"counts": trial_counts(study), "images": int(images), "trial_span_s": span,
            "images_per_s": images / span if span > 0 else None}


def _study(bench: Bench, key: str, inputs: StudyInputs) -> dict[str, Any]:
    import optuna

    from skipsearch.execution.session import open_session
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    definition = inputs.definition.override(name=f"gpubench-{key}-1proc")
    start = time.perf_counter()
    session = open_session(definition, storage_url=bench.storage_url, device=str(bench.device),
                           adapter=inputs.adapter, settings=bench.settings)
    session.enqueue_starts()
    opened = time.perf_counter() - start
    session.run()
    wall = time.perf_counter() - start - opened
    result = {"open_s": opened, "trials_wall_s": wall, **_trial_figures(session.study)}
    session.store.close()
    return result


def _workers(bench: Bench, key: str, inputs: StudyInputs) -> dict[str, Any]:
    """The same study on ``--workers`` Ray actors that share the GPU (fractional num_gpus), timed from the driver."""
    import optuna

    from skipsearch.execution.session import open_session
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"skipped": "ray is not installed (pip install 'skipsearch[ray]')"}
    from skipsearch.execution.ray import run_on_ray
    workers = bench.args.workers
    definition = inputs.definition.override(name=f"gpubench-{key}-ray{workers}")
    session = open_session(definition, storage_url=bench.storage_url, device=str(bench.device),
                           adapter=inputs.adapter, settings=bench.settings)
    session.enqueue_starts()
    finished: list[float] = []
    start = time.perf_counter()
    try:
        run_on_ray(session, workers=workers, on_trial=lambda _s, _t: finished.append(time.perf_counter()))
    except Exception as exc:  # WorkersError and what Ray raises: one line
        return {"error": _first_line(exc), "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    result = {"workers": workers, "wall_s": wall, "first_trial_done_s": finished[0] - start if finished else None,
              **_trial_figures(session.study)}
    session.store.close()
    return result


def _study_line(label: str, r: dict[str, Any]) -> str:
    c = r["counts"]
    rate = "" if r.get("images_per_s") is None else f"{r['images_per_s']:.1f} images/s over the trials' span"
    return (f"  {label:22s} {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed; "
            f"{r['images']} images; trials {r['trial_span_s']:.1f} s; {rate}")


def _model(bench: Bench, key: str) -> dict[str, Any]:
    torch = bench.torch
    from torch.utils.flop_counter import FlopCounterMode

    from skipsearch.models.edm import EDMAdapter
    parts = bench.args.parts
    out: dict[str, Any] = {"preset": MODELS[key], "quick_variant": bench.args.quick}
    net = bench.network(key)
    params = sum(p.numel() for p in net.parameters())
    probe = EDMAdapter(net, MODELS[key])
    x = torch.randn(1, *probe.img_shape, device=bench.device)
    labels = torch.nn.functional.one_hot(torch.zeros(1, dtype=torch.long), probe.label_dim).float().to(bench.device) \
        if probe.label_dim else None
    use_fp16, net.use_fp16 = net.use_fp16, False
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:  # convolutions and matmuls
        probe.denoise(x, torch.full((1,), 2.0, device=bench.device), labels)
    net.use_fp16 = use_fp16
    gflop = counter.get_total_flops() / 1e9
    batch = bench.batch_for(key)
    variant = f" (--quick variant: {', '.join(f'{k}={v}' for k, v in QUICK_KWARGS[key].items())})" \
        if bench.args.quick else ""
    print(f"\n== {TITLES[key]} ({MODELS[key]}, random weights){variant}: {params / 1e6:.1f}M params, "
          f"{gflop:.2f} GFLOP per image forward; batch {batch}, n {bench.args.n or batch}, "
          f"{bench.args.sampler} NFE {bench.args.nfe} ==")
    out.update(params=params, gflop_per_forward=gflop, batch=batch, img_shape=list(probe.img_shape))
    flops_per_image = gflop * 1e9 * bench.args.nfe
    timings: dict[str, float] = {}

    def part(name: str, run: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = run()
        timings[name] = time.perf_counter() - start
        return value

    def skipped(part: str, label: str) -> bool:
        reason = bench.over_budget(part)
        if reason:
            print(f"  {label:22s} {reason}")
            out[part] = {"skipped": reason}
        return bool(reason)

    with_compile = "compile" in parts and not skipped("compile", "compile")
    if ("sampling" in parts or with_compile) and not skipped("sampling", "sampling"):
        if "sampling" not in parts:
            bench.note("compile without sampling: the eager rows run too, to compare against")
        print(f"-- sampling images/s ({bench.k} round(s), rates at the min time)")
        rows = part("sampling", lambda: _sampling(bench, key, copy.deepcopy(net), flops_per_image, with_compile))
        _rows_table(rows, bench.cuda)
        out["sampling"] = rows
    if "features" in parts and not skipped("features", "features"):
        print("-- Inception features")
        rows = part("features", lambda: _features(bench, key, probe.img_shape))
        _rows_table(rows, bench.cuda)
        out["features"] = rows
    run_workers = "workers" in parts and key in bench.args.workers_on
    if "study" in parts or run_workers:
        inputs = part("study setup", lambda: _study_inputs(bench, key, net))
        print(f"-- study: {bench.args.trials} trials, {inputs.definition.space} space, rungs "
              f"{','.join(map(str, bench.rungs))}, extractor {inputs.definition.proxy.extractor}, batch "
              f"{bench.study_batch(key)}")
        if "study" in parts and not skipped("study", "1 process"):
            r = part("study", lambda: _study(bench, key, inputs))
            print(_study_line("1 process", r) + f"; open {r['open_s']:.1f} s, wall {r['trials_wall_s']:.1f} s")
            out["study"] = r
        label = f"{bench.args.workers} Ray workers"
        if run_workers and not bench.cuda:
            print(f"  {label:22s} skipped: no GPU")
            out["workers"] = {"skipped": "no GPU"}
        elif run_workers and not skipped("workers", label):
            r = part("workers", lambda: _workers(bench, key, inputs))
            out["workers"] = r
            if "skipped" in r or "error" in r:
                print(f"  {label:22s} {r.get('skipped') or 'failed: ' + r['error']}")
            else:
                first = r["first_trial_done_s"]
                print(_study_line(label, r) + f"; wall {r['wall_s']:.1f} s with Ray's start and the workers' "
                      f"model loads" + ("" if first is None else f" (first trial done at {first:.1f} s)"))
                single = out.get("study", {}).get("images_per_s")
                if single and r.get("images_per_s"):
                    print(f"  {'':22s} {r['images_per_s'] / single:.2f}x the images/s of 1 process")
    if "workers" in parts and not run_workers:
        print(f"  {f'{bench.args.workers} Ray workers':22s} not run for this model (--workers-on "
              f"{','.join(bench.args.workers_on)})")
    out["part_seconds"] = timings
    print("  time per part: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    if bench.cuda:
        torch.cuda.empty_cache()  # the caller drops this model's networks before the next
    return out


def main() -> None:
    args = _parse()
    with tempfile.TemporaryDirectory(prefix="skipsearch-gpubench-") as folder:
        bench = Bench(args, Path(folder))
        torch = bench.torch
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        where = torch.cuda.get_device_name(bench.device) if bench.cuda else "CPU"
        tf32 = (f"; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}"
                if bench.cuda else "")
        print(f"gpu.py on {bench.device} ({where}), torch {torch.__version__}, {bench.threads} thread(s) of {cores} "
              f"cores{tf32}; parts {','.join(args.parts)}{'; --quick' if args.quick else ''}")
        info = {"device": str(bench.device), "device_name": where, "torch": torch.__version__,
                "threads": bench.threads, "cores": cores, "k": bench.k, "quick": args.quick, "parts": args.parts,
                "sampler": args.sampler, "nfe": args.nfe, "trials": args.trials, "rungs": list(bench.rungs)}
        models = {}
        for key in args.models:
            try:
                models[key] = _model(bench, key)
            except SystemExit:
                raise
            except Exception as exc:  # e.g. out of memory outside a timed row: the next model still runs
                print(f"  {TITLES[key]}: stopped: {_first_line(exc)}")
                models[key] = {"error": _first_line(exc)}
        total = time.perf_counter() - bench.started
        print(f"\ntotal {total:.1f} s")
        for text in bench.notes:
            print(f"note: {text}")
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"info": info, "models": models, "notes": bench.notes, "total_s": total}, handle,
                          indent=2, default=str)
            print(f"wrote {args.json}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
