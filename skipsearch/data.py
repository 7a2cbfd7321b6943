"""Datasets: MNIST from the standard idx files (torchvision's ``MNIST/raw`` layout), downloaded when online."""

from __future__ import annotations

import gzip
import os
import shutil
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from skipsearch.errors import SkipsearchError

if TYPE_CHECKING:
    from skipsearch.settings import Settings

MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# Where the project's checkout finds the data set shipped beside it (../shared/data), relative to this file's repo.
_SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


class DatasetError(SkipsearchError, RuntimeError):
    """A data set cannot be found or read; the message says how to provide it."""


def mnist_root(root: str | os.PathLike | None = None, settings: Settings | None = None) -> Path:
    """The folder holding ``MNIST/raw``: the argument, ``settings.mnist`` (``$SKIPSEARCH_MNIST``: when set, that
    folder or a one-line error, never another copy), ../shared/data/mnist, or ``<settings.cache>/mnist``.

    The stages pass their ``settings``; without them (a script's call) the environment is read now
    (``Settings.from_env()``).
    """
    if settings is None:
        from skipsearch.settings import Settings
        settings = Settings.from_env()
    if root is None and settings.mnist is not None:  # chosen: never another copy in its place
        if not settings.mnist.is_dir():
            what = "is not a folder" if settings.mnist.exists() else "does not exist"
            raise DatasetError(f"SKIPSEARCH_MNIST={settings.mnist} {what}; point it at the folder that contains "
                               "MNIST/raw (an empty folder is filled when online), or unset it")
        return settings.mnist  # load_mnist downloads into it when online, else says the files are missing
    candidates = [root] if root is not None else [_SHARED_MNIST, settings.cache / "mnist"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "MNIST" / "raw" / MNIST_FILES["train", "images"]).exists():
            return Path(candidate)
    if root is not None:
        raise DatasetError(f"no MNIST idx files under {root}/MNIST/raw; pass the folder that contains MNIST/raw")
    return Path(candidates[-1])


def _read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte idx file")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def download_mnist(root: Path) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES.values():
        if (raw / name).exists():
            continue
        url = f"{MNIST_MIRROR}{name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, gzip.open(response) as src, \
                    open(raw / f"{name}.part", "wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            raise DatasetError(f"cannot download MNIST ({url}: {exc}); put the four idx files in {raw} "
                               "or set SKIPSEARCH_MNIST to the folder containing MNIST/raw") from None
        (raw / f"{name}.part").rename(raw / name)


def load_mnist(split: str = "train", root: str | os.PathLike | None = None, download: bool = True, *,
               settings: Settings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as (uint8 images [N,1,28,28], int64 labels [N]), from :func:`mnist_root` (``settings``: where to look;
    None reads the environment)."""
    if split not in ("train", "test"):
        raise DatasetError(f"unknown MNIST split {split!r}; use 'train' or 'test'")
    base = mnist_root(root, settings)
    raw = base / "MNIST" / "raw"
    if not (raw / MNIST_FILES[split, "images"]).exists():
        if not download:
            raise DatasetError(f"MNIST not found in {raw}; set SKIPSEARCH_MNIST or allow the download")
        download_mnist(base)
    images = _read_idx(raw / MNIST_FILES[split, "images"])
    labels = _read_idx(raw / MNIST_FILES[split, "labels"])
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [-1,1] (the convention of EDM models)."""
    return SYMMETRIC.from_uint8(images)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1,1] -> uint8 [0,255], EDM's rounding ``(x*127.5+128).clip(0,255)``."""
    return SYMMETRIC.to_uint8(images)


class DataRange:
    """How a model's data space maps to images: ``lo..hi`` (e.g. [-1, 1], [0, 1]) or per-channel mean/std.

    Samplers and denoisers work in the model's own units; only the final samples (to uint8), training images and
    probe batches (from uint8) are converted, so sigmas keep the meaning the model was trained with.
    """

    def __init__(self, lo: float = -1.0, hi: float = 1.0, *, mean: list[float] | None = None,
                 std: list[float] | None = None) -> None:
        if mean is not None or std is not None:
            if mean is None or std is None or len(mean) != len(std) or not mean:
                raise ValueError("data range: give mean and std with one value per channel")
            if any(not s > 0 for s in std):
                raise ValueError(f"data range: std must be positive, got {std}")
            self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
            self.lo, self.hi = None, None
        else:
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
                raise ValueError(f"data range [{lo}, {hi}] must have lo < hi")
            self.lo, self.hi, self.mean, self.std = float(lo), float(hi), None, None

    def describe(self) -> str:
        if self.mean is not None:
            return f"mean {self.mean} std {self.std}"
        return f"[{self.lo:g}, {self.hi:g}]"

    def _pixels(self, x: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(scale, offset) with pixel value = x * scale + offset, [B, C, H, W]-broadcast for mean/std ranges.

        For [-1, 1] this is EDM's own conversion, 127.5 and 128 (the +0.5 makes the uint8 cast round).
        """
        if self.mean is not None:
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
            return 255 * std, 255 * mean + 0.5
        scale = 255 / (self.hi - self.lo)
        return scale, 0.5 - self.lo * scale

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> [0, 1] (not clipped)."""
        scale, offset = self._pixels(x)
        return (x * scale + (offset - 0.5)) / 255

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> uint8, rounded to the nearest value (``x * 127.5 + 128`` for [-1, 1], as EDM)."""
        scale, offset = self._pixels(x)
        return (x * scale + offset).clip(0, 255).to(torch.uint8)

    def from_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 model units (``images / 127.5 - 1`` for [-1, 1])."""
        x = images.to(torch.float32)
        scale, offset = self._pixels(x)
        return x / scale - (offset - 0.5) / scale


SYMMETRIC = DataRange(-1.0, 1.0)
