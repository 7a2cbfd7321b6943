"""Device choice and speed settings shared by sampling, proxies and workers (one code path for CPU and GPU)."""

from __future__ import annotations

import contextlib
import os

import torch

from skipsearch.errors import SkipsearchError


class DeviceError(SkipsearchError, ValueError):
    """An unusable --device / --precision choice."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


def configure_cpu_threads(threads: int | None = None) -> int:
    """Torch intra-op threads: the argument, else ``$OMP_NUM_THREADS``, else the cores this process may use."""
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def check_precision(device_type: str, precision: str) -> None:
    """A one-line DeviceError unless ``precision`` can run on this kind of device."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise DeviceError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    if precision != "fp32" and device_type != "cuda":
        raise DeviceError(f"--precision {precision} needs a CUDA device; on CPU use fp32")


def autocast(device: torch.device, precision: str = "fp32"):
    """bf16/fp16 autocast under CUDA; fp32 (no-op) otherwise. Samplers keep their state in float64 regardless."""
    check_precision(device.type, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def default_batch_size(device: torch.device, img_shape: tuple[int, int, int]) -> int:
    """A batch that fills memory without tuning: scaled by free GPU memory, modest on CPU."""
    pixels = img_shape[0] * img_shape[1] * img_shape[2]
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # ~64 KiB of activations per input pixel-channel per image is a conservative bound for EDM UNets.
        return int(max(1, min(1024, free // (pixels * 65536))))
    return int(max(1, min(256, 200_000 // pixels)))


def prepare_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to ``device``; under CUDA use channels_last, which speeds up the UNets' convolutions on tensor cores."""
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    return module
