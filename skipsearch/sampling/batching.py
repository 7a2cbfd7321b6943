"""The sampling batch, chosen by measurement: a few timed forwards over candidate batches, cached per model.

A small UNet on a CPU is cache-bound, so its fastest batch is not the biggest that fits (the bundled model runs
~1.3x faster at 128 than at 255); on a GPU the fastest batch is the largest one before the throughput flattens.
Neither follows from a formula, so the first ``generate()`` of a model without ``batch_size`` times one forward
per candidate in interleaved rounds and keeps the largest batch within 3 % of the fastest. The choice is cached in
memory and in ``<cache>/batch-sizes.json`` under a key naming the weights, the input shape, the device, the
precision, the thread count and the torch version, so the next process does not measure again (a choice measured
while the machine was busy is kept for this process only). ``--batch-size`` overrides it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from skipsearch.device import autocast, default_batch_size
from skipsearch.models.adapter import SkipAdapter

log = logging.getLogger(__name__)

CACHE_FILE = "batch-sizes.json"
ROUNDS = 2  # interleaved timing rounds; the best (min) time of each candidate counts
NEAR_BEST = 0.97  # among candidates this close to the fastest, the largest wins (fewer calls, same speed)
CALIBRATION_SIGMA = 1.0  # the noise level of the timed forwards (the network's cost does not depend on it)
# On a CPU no candidate costs more than this per forward (FLOPs counted once, not timed: a probe's time is noise on
# a busy machine): about half a second at the ~150 GFLOP/s a core pair gives, so calibrating a big network stays a
# few seconds, and bigger batches of it are no faster per image. When even the smallest costs more, it is taken.
CPU_GFLOP_PER_FORWARD = 80.0

_chosen: dict[str, BatchChoice] = {}  # this process's choices by key (a second model load does not re-measure)


@dataclass(frozen=True)
class BatchChoice:
    batch_size: int
    rates: dict[int, float]  # candidate -> image forwards per second at its best time
    key: str
    measured: bool  # decided in this process (timed; or the smallest when none could be timed), not read from a file


def candidates(device: torch.device, img_shape: tuple[int, int, int]) -> list[int]:
    """Powers of two from 16 up to the formula's memory bound (CPU: 256 at most, where small UNets are slower
    already; measuring 512 too would double the calibration's cost)."""
    limit = default_batch_size(device, img_shape) if device.type == "cuda" else 256
    sizes, size = [], 16
    while size <= max(16, limit):
        sizes.append(size)
        size *= 2
    return sizes


@functools.cache  # generate() asks for the key on every call: read /proc/cpuinfo once per device
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}/{props.total_memory >> 20}MiB"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}/{cores}cores"


def calibration_key(adapter: SkipAdapter, precision: str = "fp32") -> str:
    """What the fastest batch depends on: weights and shape, device, precision, threads, torch."""
    device = adapter.device
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    shape = "x".join(map(str, adapter.img_shape))
    return (f"{adapter.identity.sha256[:16]}|{shape}|{_device_name(device)}|{precision}|threads{threads}|"
            f"torch{torch.__version__}")


def measure_rates(adapter: SkipAdapter, sizes: Sequence[int], *, precision: str = "fp32",
                  rounds: int = ROUNDS) -> dict[int, float]:
    """Image forwards per second of the bare denoiser at each batch size (best of ``rounds`` interleaved).

    On a CPU, sizes whose forward costs more than ``CPU_GFLOP_PER_FORWARD`` are left out, and everywhere every size
    from the first that does not fit in memory; an empty result means none was measured."""
    device = adapter.device
    generator = torch.Generator().manual_seed(0)
    inputs: dict[int, tuple] = {}
    best: dict[int, float] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def batch(size: int) -> tuple:
        x = (torch.randn(size, *adapter.img_shape, generator=generator) * CALIBRATION_SIGMA).to(device)
        sigma = torch.full((size,), CALIBRATION_SIGMA, device=device)
        labels = (F.one_hot(torch.arange(size) % adapter.label_dim, adapter.label_dim).float().to(device)
                  if adapter.label_dim else None)
        return x, sigma, labels

    with torch.inference_mode(), autocast(device, precision):
        if device.type == "cpu":
            gflop = gflop_per_image(adapter, batch(1))
            sizes = [s for s in sizes if s * gflop <= CPU_GFLOP_PER_FORWARD]
        for size in sorted(sizes):
            args = batch(size)
            try:  # allocate and warm each size once (kernels, allocator)
                adapter.denoise(*args)
                sync()
            except (torch.OutOfMemoryError, MemoryError):
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                break
            inputs[size] = args
        for _ in range(rounds):
            for size, args in inputs.items():
                start = time.perf_counter()
                adapter.denoise(*args)
                sync()
                seconds = time.perf_counter() - start
                best[size] = min(best.get(size, float("inf")), seconds)
    return {size: size / seconds for size, seconds in best.items()}


def gflop_per_image(adapter: SkipAdapter, inputs: tuple) -> float:
    """GFLOP of one image forward (convolutions and matrix products, as ``torch.utils.flop_counter`` counts)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        adapter.denoise(*inputs)
    return counter.get_total_flops() / 1e9


def pick(rates: dict[int, float]) -> int:
    """The largest batch within ``NEAR_BEST`` of the fastest rate."""
    top = max(rates.values())
    return max(size for size, rate in rates.items() if rate >= NEAR_BEST * top)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again (and rewrite it)
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, choice: BatchChoice) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = {"batch_size": choice.batch_size, "rates": {str(k): round(v, 1) for k, v in choice.rates.items()},
                     "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as exc:  # a read-only cache costs a re-measurement next time, nothing else
        log.warning("could not cache the batch size in %s: %s", path, exc)


def _quiet() -> bool:
    """Whether the machine was quiet enough for a measurement worth keeping: the 1-minute load average (this
    process's own threads included) at most the cores it may use. A busy moment's choice serves this process
    only; the next one measures again."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        return os.getloadavg()[0] <= cores + 0.5
    except OSError:  # no load average on this platform
        return True


def calibrated_batch_size(adapter: SkipAdapter, *, precision: str = "fp32", cache: Path | None = None,
                          sizes: Sequence[int] | None = None) -> BatchChoice:
    """The fastest batch for ``adapter`` on its device: from this process, from ``cache``, else measured."""
    key = calibration_key(adapter, precision)
    if key in _chosen:
        return _chosen[key]
    path = cache / CACHE_FILE if cache is not None else None
    stored = _read_cache(path).get(key) if path is not None else None
    if isinstance(stored, dict) and isinstance(stored.get("batch_size"), int) and stored["batch_size"] >= 1:
        rates = {int(k): float(v) for k, v in (stored.get("rates") or {}).items()}
        choice = BatchChoice(stored["batch_size"], rates, key, measured=False)
    else:
        rates = measure_rates(adapter, sizes or candidates(adapter.device, adapter.img_shape), precision=precision)
        # None measured (too slow, or out of memory): the smallest candidate (generate() reports an OOM itself).
        choice = BatchChoice(pick(rates) if rates else min(sizes or candidates(adapter.device, adapter.img_shape)),
                             rates, key, measured=True)
        log.info("batch size %d chosen by measurement (%s)", choice.batch_size,
                 ", ".join(f"{k}: {v:.0f}/s" for k, v in sorted(rates.items())))
        if path is not None and _quiet():
            _write_cache(path, key, choice)
    _chosen[key] = choice
    return choice


def batch_size_for(adapter: SkipAdapter, precision: str = "fp32") -> int:
    """The batch ``generate()`` uses when none is given: measured when the adapter allows it (see
    :attr:`SkipAdapter.batch_calibration`), else the formula of :func:`skipsearch.device.default_batch_size`."""
    policy = adapter.batch_calibration
    if policy is None:
        return default_batch_size(adapter.device, adapter.img_shape)
    return calibrated_batch_size(adapter, precision=precision, cache=policy.cache).batch_size
