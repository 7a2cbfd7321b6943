"""Known pretrained networks (the official EDM checkpoints), their cache and a verified download."""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from skipsearch.models.checkpoints.errors import CheckpointError
from skipsearch.models.checkpoints.networks import create_network
from skipsearch.models.checkpoints.safetensors_io import _CHUNK, file_sha256
from skipsearch.models.edm_networks import _Precond
from skipsearch.registry import Registry


@dataclass(frozen=True)
class Preset:
    """A pretrained network we know how to build and where to fetch; ``kwargs`` go to :func:`create_network`."""

    name: str
    description: str
    precond: str
    kwargs: dict
    url: str | None
    filename: str
    num_skip_points: int
    dataset: str | None = None  # the proxy's reference data set

    def create(self) -> _Precond:
        """The architecture with random weights (no download)."""
        return create_network(self.precond, **self.kwargs)


_EDM_CDN = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained"

PRESETS: Registry[Preset] = Registry("model preset", CheckpointError)
PRESETS.register("edm-cifar10", Preset(
    name="edm-cifar10",
    description="EDM class-conditional CIFAR-10 32x32, DDPM++ (SongUNet) with EDM preconditioning",
    precond="EDMPrecond",
    kwargs=dict(img_resolution=32, img_channels=3, label_dim=10, use_fp16=False, model_type="SongUNet",
                model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], augment_dim=9,
                dropout=0.13, embedding_type="positional", encoder_type="standard", decoder_type="standard",
                resample_filter=[1, 1], channel_mult_noise=1),
    url=f"{_EDM_CDN}/edm-cifar10-32x32-cond-vp.pkl",
    filename="edm-cifar10-32x32-cond-vp.pkl",
    num_skip_points=15,
    dataset="cifar10",
))
PRESETS.register("edm-imagenet64", Preset(
    name="edm-imagenet64",
    description="EDM class-conditional ImageNet 64x64, ADM (DhariwalUNet) with EDM preconditioning",
    precond="EDMPrecond",
    kwargs=dict(img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True, model_type="DhariwalUNet",
                model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8],
                dropout=0.10),
    url=f"{_EDM_CDN}/edm-imagenet-64x64-cond-adm.pkl",
    filename="edm-imagenet-64x64-cond-adm.pkl",
    num_skip_points=16,
    dataset="imagenet64",
))


def default_cache_dir() -> Path:
    """``Settings.cache`` of the environment (``$SKIPSEARCH_CACHE`` or ``~/.cache/skipsearch``), read now: for Python
    callers of :func:`cached_checkpoint_path` and :func:`resolve_checkpoint` that pass no ``cache_dir``; the stages
    pass ``settings.cache`` (:func:`skipsearch.models.load_model`)."""
    from skipsearch.settings import Settings
    return Settings.from_env().cache


def cached_checkpoint_path(preset: Preset, cache_dir: Path | None = None) -> Path:
    """Where the preset's file lives in the cache: ``<cache_dir>/checkpoints/<filename>`` (``cache_dir`` None:
    :func:`default_cache_dir`, the environment's)."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "checkpoints" / preset.filename


class _DownloadError(Exception):
    """Network-level failure; the message is the short reason."""


def _progress(total: int | None, label: str,
              enabled: bool | None) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(advance, close) callbacks of a rich progress bar, or no-ops when rich is missing or output is not a tty."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    try:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
    except ImportError:  # rich is optional here
        enabled = False
    if not enabled:
        return (lambda n: None), (lambda: None)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return (lambda n: bar.advance(task, n)), bar.stop


def _fetch(url: str, dest: Path, expected_sha256: str | None, timeout: float, progress: bool | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                advance, close = _progress(total, dest.name, progress)
                received = 0
                try:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        advance(len(chunk))
                finally:
                    close()
            if total is not None and received != total:
                raise _DownloadError(f"truncated: got {received} of {total} bytes")
        except urllib.error.HTTPError as exc:
            raise _DownloadError(f"HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise _DownloadError(str(exc.reason)) from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _DownloadError(f"{type(exc).__name__}: {exc}") from exc
        got = digest.hexdigest()
        if expected_sha256 is not None and got != expected_sha256.lower():
            raise CheckpointError(f"downloaded {url} has sha256 {got}, expected {expected_sha256}; discarded it")
        os.replace(tmp, dest)  # atomic: the cache never holds a partial file
    finally:
        tmp.unlink(missing_ok=True)


def download_file(url: str, dest: str | os.PathLike, *, expected_sha256: str | None = None, timeout: float = 60.0,
                  progress: bool | None = None) -> Path:
    """Download ``url`` to ``dest`` via a temporary file and an atomic rename; optionally check its sha256."""
    dest = Path(dest)
    try:
        _fetch(url, dest, expected_sha256, timeout, progress)
    except _DownloadError as exc:
        raise CheckpointError(f"cannot download {url} ({exc})") from exc
    return dest


def resolve_checkpoint(preset: Preset, path: str | os.PathLike | None = None, *, cache_dir: Path | None = None,
                       download: bool = True, expected_sha256: str | None = None, timeout: float = 60.0,
                       progress: bool | None = None) -> Path:
    """The checkpoint file for ``preset``: an explicit ``path``, else the cache, else a fresh download into it.

    ``expected_sha256`` is checked for cached and downloaded files (an explicit ``path`` is taken as is).
    ``cache_dir``: the caller's ``settings.cache`` (None: :func:`default_cache_dir`, the environment's).
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path
    cached = cached_checkpoint_path(preset, cache_dir)
    if cached.is_file():
        if expected_sha256 is not None and (got := file_sha256(cached)) != expected_sha256.lower():
            raise CheckpointError(f"cached {cached} has sha256 {got}, expected {expected_sha256}; delete it to "
                                  "download again")
        return cached
    hint = f"download it elsewhere and pass --checkpoint PATH, or place it at {cached}"
    if preset.url is None:
        raise CheckpointError(f"{preset.name} has no download URL; {hint}")
    if not download:
        raise CheckpointError(f"{preset.name} is not in the cache and downloading is disabled; {hint}")
    try:
        _fetch(preset.url, cached, expected_sha256, timeout, progress)
    except _DownloadError as exc:
        raise CheckpointError(f"cannot download {preset.name} from {preset.url} ({exc}); {hint}") from exc
    return cached
