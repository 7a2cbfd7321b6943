"""Where reference images come from: one spec string for ``--dataset``, ``[proxy] dataset`` and Python.

A spec is parsed once into a :class:`DatasetSpec`; its kind (the prefix before the first ``:``) picks a source from
:data:`SOURCE_KINDS`, which turns it into uint8 images ``[N, C, H, W]`` and a content fingerprint for the cache.

=========================  =====================================================================================
``mnist`` (any name of     a registered data set (:data:`DATASETS`); ``mnist`` is the
``DATASETS``)              bundled default. Split: ``train`` / ``test``.
``folder:DIR``             every PNG/JPEG/WebP under DIR, recursively, in sorted relative-path order.
``zip:FILE.zip``           EDM ``dataset_tool`` layout: the images in the archive (sorted by name) plus an
                           optional ``dataset.json`` (``{"labels": [[name, label], ...] | null}``), checked and
                           otherwise unused (the proxy is unconditional).
``npz:FILE.npz``           a uint8 image array, NHWC or NCHW (or NHW for gray); the key used is the first of
                           ``arr_0``, ``images``, ``x`` present, else the only array in the file.
``torchvision:NAME:ROOT``  a torchvision data set already on disk (MNIST, FashionMNIST, CIFAR10, CIFAR100, STL10),
                           never downloaded; split ``train`` / ``test`` (STL10 also ``unlabeled``).
``stats:FILE.npz``         precomputed (mu, sigma), e.g. EDM's published Inception references; the feature dim
                           must equal the extractor's (and the extractor named in its meta, if any).
``self``                   the model's own rho = 1 samples at a high NFE (``self:n=2000,sampler=heun,nfe=35``
                           are the defaults): the distance to the converged model (the "ODE limit"), not to data.
=========================  =====================================================================================

Fingerprints (the cache key's content part): the sha256 of the file's bytes for ``zip``, ``npz`` and ``stats``;
for ``folder`` and ``torchvision`` the sha256 of the sorted list of (relative path, size, mtime_ns) of the files
read (so an edited, added or removed file is a new key and the statistics are recomputed, never served stale);
for ``self`` the model identity (weights and spec sha256), sampler, NFE and n.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skipsearch.proxy.errors import ProxyConfigError, ReferenceStatsError
from skipsearch.registry import Registry

if TYPE_CHECKING:
    import torch

    from skipsearch.models.adapter import SkipAdapter
    from skipsearch.settings import Settings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
NPZ_KEYS = ("arr_0", "images", "x")
TORCHVISION_SETS = {  # class name -> what must be under ROOT
    "MNIST": "MNIST/raw/ (the four idx files, e.g. train-images-idx3-ubyte)",
    "FashionMNIST": "FashionMNIST/raw/ (the four idx files)",
    "CIFAR10": "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)",
    "CIFAR100": "cifar-100-python/ (the extracted cifar-100-python.tar.gz)",
    "STL10": "stl10_binary/ (the extracted stl10_binary.tar.gz)",
}
TORCHVISION_FOLDER = {"MNIST": "MNIST", "FashionMNIST": "FashionMNIST", "CIFAR10": "cifar-10-batches-py",
                      "CIFAR100": "cifar-100-python", "STL10": "stl10_binary"}
SELF_DEFAULTS = {"n": 2000, "sampler": "heun", "nfe": 35}
SELF_SEED_OFFSET = 1_000_000_000  # far from the proxy's seeds (0..) and validation's (1e6..)
RESIZE_MODES = ("center-crop",)


class DatasetSpecError(ReferenceStatsError):
    """A data-set spec that cannot be read: unknown prefix, missing file, empty folder, bad image or array."""


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed data-set spec: ``kind`` (the prefix, or ``name`` for a registered data set), ``text`` as given,
    ``path`` (folder/zip/npz/stats/torchvision root), ``name`` (registered name or torchvision class) and
    ``options`` (``self``)."""

    kind: str
    text: str
    path: Path | None = None
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def parse(cls, text: str | DatasetSpec) -> DatasetSpec:
        if isinstance(text, DatasetSpec):
            return text
        if not isinstance(text, str) or not text.strip():
            raise DatasetSpecError(f"data set spec {text!r} is empty; use mnist, folder:DIR, zip:FILE.zip, "
                                   "npz:FILE, torchvision:NAME:ROOT, stats:FILE.npz or self")
        text = text.strip()
        prefix, sep, rest = text.partition(":")
        if prefix == "self":
            return cls("self", text, options=_self_options(rest, text))
        if not sep:
            return cls("name", text, name=text)
        if prefix not in SOURCE_KINDS:
            kinds = ", ".join(k + ":" for k in SOURCE_KINDS if k not in ("self", "name"))
            raise DatasetSpecError(f"data set spec {text!r}: unknown kind {prefix!r}; use {kinds}, self or a "
                                   "registered name (mnist)")
        if prefix == "torchvision":
            name, sep2, root = rest.partition(":")
            if name not in TORCHVISION_SETS or not sep2 or not root:
                raise DatasetSpecError(f"data set spec {text!r}: use torchvision:NAME:ROOT with NAME one of "
                                       f"{', '.join(TORCHVISION_SETS)}")
            return cls("torchvision", text, path=Path(root).expanduser(), name=name)
        if not rest:
            raise DatasetSpecError(f"data set spec {text!r}: give a path after {prefix}:")
        return cls(prefix, text, path=Path(rest).expanduser())

    @property
    def registered(self) -> bool:
        return self.kind == "name"

    def fingerprint(self, split: str, adapter: SkipAdapter | None = None) -> str:
        """The sha256 of what the images are (see the module docstring); a missing source raises here."""
        return SOURCE_KINDS.get(self.kind).fingerprint(self, split, adapter)


def _self_options(rest: str, text: str) -> dict[str, Any]:
    options = dict(SELF_DEFAULTS)
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in SELF_DEFAULTS:
            raise DatasetSpecError(f"data set spec {text!r}: options are n=, sampler= and nfe= "
                                   f"(e.g. self:n=2000,sampler=heun,nfe=35)")
        if key in ("n", "nfe"):
            if not value.isdigit() or int(value) < (2 if key == "n" else 1):
                raise DatasetSpecError(f"data set spec {text!r}: {key} must be a positive integer"
                                       f"{' >= 2' if key == 'n' else ''}, got {value!r}")
            options[key] = int(value)
        else:
            options[key] = value
    return options


@dataclass(frozen=True)
class SourceKind:
    """A source of reference images: ``load(spec, split, settings, adapter) -> uint8 [N,C,H,W]`` and
    ``fingerprint(spec, split, adapter) -> sha256 hex`` (``stats`` loads statistics instead: ``load`` is None)."""

    describe: str
    fingerprint: Callable[[DatasetSpec, str, Any], str]
    load: Callable[..., torch.Tensor] | None


SOURCE_KINDS: Registry[SourceKind] = Registry("data set source kind", DatasetSpecError)


# --------------------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------------------

def _file(spec: DatasetSpec, what: str) -> Path:
    path = spec.path
    if path is None or not path.exists():
        raise DatasetSpecError(f"data set {spec.text}: {what} {path} does not exist")
    if not path.is_file():
        raise DatasetSpecError(f"data set {spec.text}: {path} is not a file; give a {what}")
    return path


def file_digest(spec: DatasetSpec, _split: str = "", _adapter: Any = None) -> str:
    """sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(_file(spec, "file"), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listing_digest(root: Path, files: list[Path]) -> str:
    """sha256 of the sorted (relative path, size, mtime_ns) of ``files`` under ``root``."""
    rows = []
    for path in files:
        info = path.stat()
        rows.append((path.relative_to(root).as_posix(), info.st_size, info.st_mtime_ns))
    return hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()


def _folder_files(spec: DatasetSpec) -> tuple[Path, list[Path]]:
    root = spec.path
    if root is None or not root.exists():
        raise DatasetSpecError(f"data set {spec.text}: folder {root} does not exist")
    if not root.is_dir():
        raise DatasetSpecError(f"data set {spec.text}: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetSpecError(f"data set {spec.text}: no PNG/JPEG/WebP images under {root}")
    return root, files


def _folder_digest(spec: DatasetSpec, _split: str, _adapter: Any) -> str:
    return listing_digest(*_folder_files(spec))


def _torchvision_digest(spec: DatasetSpec, split: str, _adapter: Any) -> str:
    root = _torchvision_root(spec)
    folder = root / TORCHVISION_FOLDER[spec.name]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(f"{spec.name}:{split}:{listing_digest(root, files)}".encode()).hexdigest()


def _self_digest(spec: DatasetSpec, _split: str, adapter: SkipAdapter | None) -> str:
    if adapter is None:
        raise DatasetSpecError(f"data set {spec.text}: the model's own samples need a model (pass --model)")
    o = spec.options
    key = f"self:{adapter.identity.sha256}:{o['sampler']}:{o['nfe']}:{o['n']}:{SELF_SEED_OFFSET}"
    return hashlib.sha256(key.encode()).hexdigest()


def _registered_digest(spec: DatasetSpec, split: str, _adapter: Any) -> str:
    return hashlib.sha256(f"registered:{spec.name}:{split}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Loaders: uint8 [N, C, H, W]
# --------------------------------------------------------------------------------------------------------------

def _decode(data: bytes | Path, where: str, spec: DatasetSpec):
    """uint8 [C,H,W] numpy of one image (gray stays 1 channel, palette/alpha become RGB)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("L" if image.mode in ("1", "I;16", "I", "F") else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DatasetSpecError(f"data set {spec.text}: cannot read image {where} ({reason})") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _stack(arrays: list, names: list[str], spec: DatasetSpec) -> torch.Tensor:
    import numpy as np
    import torch
    first = arrays[0].shape
    for array, name in zip(arrays, names):
        if array.shape != first:
            raise DatasetSpecError(f"data set {spec.text}: image {name} is {_shape(array.shape)} but {names[0]} "
                                   f"is {_shape(first)}; all images must have one size")
    return torch.from_numpy(np.stack(arrays))


def _shape(shape) -> str:
    c, h, w = shape
    return f"{c}x{h}x{w}"


def _load_folder(spec: DatasetSpec, _split: str, settings: Settings | None, adapter: Any) -> torch.Tensor:
    root, files = _folder_files(spec)
    names = [p.relative_to(root).as_posix() for p in files]
    return _stack([_decode(p, n, spec) for p, n in zip(files, names)], names, spec)


def _load_zip(spec: DatasetSpec, _split: str, settings: Settings | None, adapter: Any) -> torch.Tensor:
    path = _file(spec, "zip file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
            if not names:
                raise DatasetSpecError(f"data set {spec.text}: no PNG/JPEG/WebP images in {path}")
            if "dataset.json" in archive.namelist():
                _check_labels(archive.read("dataset.json"), set(names), spec)
            arrays = [_decode(archive.read(n), n, spec) for n in names]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetSpecError(f"data set {spec.text}: {path} is not a readable zip ({exc})") from None
    return _stack(arrays, names, spec)


def _check_labels(data: bytes, names: set[str], spec: DatasetSpec) -> None:
    """EDM's ``dataset.json``: ``{"labels": null}`` or ``[[file name, int label], ...]`` naming files of the zip."""
    try:
        labels = json.loads(data).get("labels")
    except (ValueError, AttributeError):
        raise DatasetSpecError(f"data set {spec.text}: dataset.json is not a JSON object with 'labels'") from None
    if labels is None:
        return
    if not isinstance(labels, list) or not all(isinstance(r, list) and len(r) == 2 for r in labels):
        raise DatasetSpecError(f"data set {spec.text}: dataset.json 'labels' must be null or [[file, label], ...]")
    unknown = [r[0] for r in labels if r[0] not in names]
    if unknown:
        raise DatasetSpecError(f"data set {spec.text}: dataset.json labels {unknown[0]!r}, which the zip lacks")


def npz_key(files: list[str], spec: DatasetSpec) -> str:
    """The array an ``npz:`` spec reads: the first of ``arr_0``, ``images``, ``x`` present, else the only one."""
    for key in NPZ_KEYS:
        if key in files:
            return key
    if len(files) == 1:
        return files[0]
    raise DatasetSpecError(f"data set {spec.text}: no array named {', '.join(NPZ_KEYS)} and {len(files)} arrays "
                           f"({', '.join(files[:6])}); keep one array or name it 'images'")


def _load_npz(spec: DatasetSpec, _split: str, settings: Settings | None, adapter: Any) -> torch.Tensor:
    import numpy as np
    import torch
    path = _file(spec, "npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            key = npz_key(list(data.files), spec)
            array = data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DatasetSpecError(f"data set {spec.text}: {path} is not a readable .npz ({reason})") from None
    if array.dtype != np.uint8:
        raise DatasetSpecError(f"data set {spec.text}: array {key!r} has dtype {array.dtype}; images must be "
                               "uint8 in [0, 255]")
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise DatasetSpecError(f"data set {spec.text}: array {key!r} has shape {array.shape}; expected N images "
                               "as NHWC, NCHW or NHW")
    nchw, nhwc = array.shape[1] in (1, 3), array.shape[3] in (1, 3)
    if nhwc and not nchw:
        array = array.transpose(0, 3, 1, 2)
    elif not nchw:
        raise DatasetSpecError(f"data set {spec.text}: array {key!r} has shape {array.shape}; neither NCHW nor "
                               "NHWC with 1 or 3 channels")
    return torch.from_numpy(np.ascontiguousarray(array))


def _torchvision_root(spec: DatasetSpec) -> Path:
    root = spec.path
    assert root is not None and spec.name is not None
    if not (root / TORCHVISION_FOLDER[spec.name]).is_dir():
        raise DatasetSpecError(f"data set {spec.text}: {spec.name} not found (never downloaded); put "
                               f"{TORCHVISION_SETS[spec.name]} under {root}")
    return root


def _load_torchvision(spec: DatasetSpec, split: str, settings: Settings | None, adapter: Any) -> torch.Tensor:
    import numpy as np
    import torch
    import torchvision.datasets as tvd
    root = _torchvision_root(spec)
    splits = ("train", "test", "unlabeled") if spec.name == "STL10" else ("train", "test")
    if split not in splits:
        raise DatasetSpecError(f"data set {spec.text}: unknown split {split!r}; use {' or '.join(splits)}")
    try:
        if spec.name == "STL10":
            data = tvd.STL10(str(root), split=split, download=False).data  # uint8 [N,3,96,96]
        else:
            data = getattr(tvd, spec.name)(str(root), train=split == "train", download=False).data
    except (RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DatasetSpecError(f"data set {spec.text}: {spec.name} {split} cannot be read ({reason}); put "
                               f"{TORCHVISION_SETS[spec.name]} under {root}") from None
    array = data.numpy() if torch.is_tensor(data) else np.asarray(data)
    if array.ndim == 3:  # MNIST, FashionMNIST: [N,28,28]
        array = array[:, None]
    elif spec.name in ("CIFAR10", "CIFAR100"):  # [N,32,32,3]
        array = array.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def _load_self(spec: DatasetSpec, _split: str, settings: Settings | None, adapter: SkipAdapter | None
               ) -> torch.Tensor:
    from skipsearch.sampling.generate import generate
    if adapter is None:
        raise DatasetSpecError(f"data set {spec.text}: the model's own samples need a model (pass --model)")
    o = spec.options
    seeds = range(SELF_SEED_OFFSET, SELF_SEED_OFFSET + o["n"])
    return generate(adapter, sampler=o["sampler"], nfe=o["nfe"], seeds=seeds).images


def _load_registered(spec: DatasetSpec, split: str, settings: Settings | None, adapter: Any) -> torch.Tensor:
    return load_dataset(spec.name, split, settings)


# ------------------------------------------------------------------------------------------------------------------
# Registered data sets by name.

def _mnist_images(split: str, *, settings: Settings | None = None) -> torch.Tensor:
    from skipsearch.data import load_mnist
    return load_mnist(split, settings=settings)[0]


# Data sets a reference can be computed from: name -> split -> uint8 images [N, C, H, W]. A loader that also takes
# a ``settings`` keyword is given the caller's Settings (where its files live): see load_dataset.
DATASETS: Registry[Callable[..., torch.Tensor]] = Registry("dataset", ReferenceStatsError)
DATASETS.register("mnist", _mnist_images)


def load_dataset(name: str, split: str, settings: Settings | None = None) -> torch.Tensor:
    """uint8 images [N, C, H, W] of a registered data set; ``settings`` go to a loader with a ``settings`` keyword
    (a loader of ``split`` alone is called as it is)."""
    loader = DATASETS.get(name)
    try:
        takes_settings = "settings" in inspect.signature(loader).parameters
    except (TypeError, ValueError):  # a callable without a signature (a builtin)
        takes_settings = False
    return loader(split, settings=settings) if takes_settings else loader(split)



SOURCE_KINDS.register("name", SourceKind("a registered data set (mnist)", _registered_digest, _load_registered))
SOURCE_KINDS.register("folder", SourceKind("PNG/JPEG/WebP files under a folder, recursive", _folder_digest,
                                           _load_folder))
SOURCE_KINDS.register("zip", SourceKind("an EDM dataset_tool zip (images + optional dataset.json)", file_digest,
                                        _load_zip))
SOURCE_KINDS.register("npz", SourceKind("a uint8 image array (arr_0, images, x or the only array)", file_digest,
                                        _load_npz))
SOURCE_KINDS.register("torchvision", SourceKind("a torchvision data set on disk (never downloaded)",
                                                _torchvision_digest, _load_torchvision))
SOURCE_KINDS.register("stats", SourceKind("precomputed (mu, sigma) .npz", file_digest, None))
SOURCE_KINDS.register("self", SourceKind("the model's own rho = 1 samples at a high NFE", _self_digest, _load_self))


def load_images(spec: str | DatasetSpec, split: str = "train", *, settings: Settings | None = None,
                adapter: SkipAdapter | None = None, shape: tuple[int, int, int] | None = None,
                resize: str | None = None) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` of ``spec``, checked against ``shape`` (the model's C, H, W) unless the spec
    is a registered name (whose extractor adapts them, as before); ``resize='center-crop'`` crops to the model's
    aspect, resizes (antialiased bilinear) and converts gray <-> RGB instead of refusing a mismatch."""
    spec = DatasetSpec.parse(spec)
    kind = SOURCE_KINDS.get(spec.kind)
    if kind.load is None:
        raise ProxyConfigError(f"data set {spec.text} holds statistics only, not images: it supports --metric fid "
                               "alone (KID and FID-infinity need reference features)")
    images = kind.load(spec, split, settings, adapter)
    if images.dtype.is_floating_point or images.dim() != 4 or images.shape[0] < 1:
        raise DatasetSpecError(f"data set {spec.text}: expected uint8 images [N,C,H,W], got {images.dtype} "
                               f"{tuple(images.shape)}")
    if shape is not None and not spec.registered:
        images = fit_shape(images, tuple(shape), resize, spec.text)
    return images


def fit_shape(images: torch.Tensor, shape: tuple[int, int, int], resize: str | None, what: str) -> torch.Tensor:
    """``images`` if they are ``shape``; else center-cropped, resized and channel-converted when ``resize`` is
    'center-crop', else a one-line error."""
    import torch
    import torch.nn.functional as F
    have = tuple(images.shape[1:])
    if have == shape:
        return images
    if resize is None:
        raise DatasetSpecError(f"data set {what}: images are {_shape(have)} but the model makes {_shape(shape)} "
                               "(channels x height x width); give matching images or set [proxy] resize = "
                               "\"center-crop\"")
    if resize not in RESIZE_MODES:
        raise ProxyConfigError(f"[proxy] resize {resize!r}: use {' or '.join(RESIZE_MODES)} or leave it out")
    c, h, w = shape
    if images.shape[1] != c:
        if c == 1 and images.shape[1] == 3:
            images = images.to(torch.float32).mean(1, keepdim=True).round().to(torch.uint8)
        elif c == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        else:
            raise DatasetSpecError(f"data set {what}: {images.shape[1]}-channel images cannot become {c} channels")
    ih, iw = images.shape[-2:]
    if ih * w > iw * h:  # too tall for the model's aspect: crop the height
        ch, cw = max(1, round(iw * h / w)), iw
    else:
        ch, cw = ih, max(1, round(ih * w / h))
    top, left = (ih - ch) // 2, (iw - cw) // 2
    images = images[..., top:top + ch, left:left + cw]
    if (ch, cw) != (h, w):
        out = F.interpolate(images.to(torch.float32), size=(h, w), mode="bilinear", antialias=True,
                            align_corners=False)
        images = out.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def spec_text(path: str | os.PathLike) -> str:
    """The ``stats:`` spec of an EDM-style reference ``.npz`` (``--ref`` / ``ProxyConfig.ref_path``)."""
    return f"stats:{os.fspath(path)}"
