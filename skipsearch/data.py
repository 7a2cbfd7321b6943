"""Datasets: MNIST from the standard idx files (torchvision's ``MNIST/raw`` layout), downloaded when online."""

from __future__ import annotations

import gzip
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import torch

MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# Where the project's checkout finds the data set shipped beside it (../shared/data), relative to this file's repo.
_SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


class DatasetError(RuntimeError):
    """A data set cannot be found or read; the message says how to provide it."""


def mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``MNIST/raw``: the argument, ``$SKIPSEARCH_MNIST``, ../shared/data/mnist, or the cache."""
    candidates = [root, os.environ.get("SKIPSEARCH_MNIST"), _SHARED_MNIST,
                  Path(os.environ.get("SKIPSEARCH_CACHE", Path.home() / ".cache" / "skipsearch")) / "mnist"]
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


def load_mnist(split: str = "train", root: str | os.PathLike | None = None,
               download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as (uint8 images [N,1,28,28], int64 labels [N])."""
    if split not in ("train", "test"):
        raise DatasetError(f"unknown MNIST split {split!r}; use 'train' or 'test'")
    base = mnist_root(root)
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
    return images.to(torch.float32) / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1,1] -> uint8 [0,255], EDM's rounding ``(x*127.5+128).clip(0,255)``."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8)
