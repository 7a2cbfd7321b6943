"""Checkpoints: official EDM ``.pkl`` snapshots (read without the NVlabs code), safetensors, presets, download.

The EDM snapshots pickle every network module through ``torch_utils.persistence``, which stores the module's
source text next to its state and ``exec``s that source when unpickling. We never run it: a restricted unpickler
turns each persistent object into a :class:`ModuleRecord` (class name + instance ``__dict__``), then our own
state-dict compatible networks (:mod:`skipsearch.models.edm_networks`) are built from the recorded constructor
arguments and filled from the recorded tensors. Unpickling still calls whitelisted callables, so loading a pickle
needs an explicit trust flag.
"""

from __future__ import annotations

import builtins
import collections
import copy
import hashlib
import http.client
import inspect
import io
import json
import os
import pickle
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from skipsearch.models.edm_networks import PRECONDS, _Precond, build_network, iDDPMPrecond

__all__ = [
    "CheckpointError", "UntrustedPickleError", "ModuleRecord", "EasyDict", "Preset", "PRESETS",
    "create_network", "network_config", "read_edm_pickle", "network_from_record", "load_edm_pickle",
    "save_network", "load_network", "load_checkpoint", "file_sha256", "default_cache_dir", "cached_checkpoint_path",
    "download_file", "resolve_checkpoint",
]

CONFIG_ATTR = "skipsearch_config"
METADATA_NETWORK = "skipsearch.network"
METADATA_FORMAT = "skipsearch.format"
METADATA_DTYPE = "skipsearch.dtype"
_FORMAT_VERSION = "1"
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found, downloaded, read or matched to our networks."""


class UntrustedPickleError(CheckpointError):
    """Loading a pickle was requested without declaring its source trusted."""


# ----------------------------------------------------------------------------------------------------------------
# Building networks that remember their constructor arguments.


def _jsonable(value: Any) -> Any:
    """Constructor arguments as JSON-friendly values (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def create_network(precond: str, **kwargs: Any) -> _Precond:
    """``build_network`` that also stores ``{"precond", "kwargs"}`` on the instance (see :func:`network_config`)."""
    kwargs = _jsonable(copy.deepcopy(kwargs))
    net = build_network(precond, **kwargs)
    setattr(net, CONFIG_ATTR, {"precond": precond, "kwargs": kwargs})
    return net


def network_config(net: nn.Module) -> dict[str, Any]:
    """The ``{"precond": ..., "kwargs": ...}`` a network was built from (networks from :func:`create_network`)."""
    config = getattr(net, CONFIG_ATTR, None)
    if config is None:
        raise ValueError(f"{type(net).__name__} has no recorded constructor arguments; build it with "
                         "skipsearch.models.checkpoints.create_network, or load it with load_network/load_edm_pickle")
    return copy.deepcopy(config)


_READS_TENSORS_IN_INIT = frozenset({"VPPrecond", "iDDPMPrecond"})  # float(tensor) for sigma_min/max


def _create_unfilled_network(precond: str, kwargs: dict[str, Any]) -> _Precond:
    """A network whose tensors are about to be replaced: skip the (slow) random init when the class allows it."""
    if precond in _READS_TENSORS_IN_INIT:
        return create_network(precond, **kwargs)
    try:
        # Meta tensors cost nothing. A class that reads tensor values in __init__ fails here and takes the normal
        # path (the set above only saves that futile attempt).
        with torch.device("meta"):
            net = create_network(precond, **kwargs)
    except (RuntimeError, NotImplementedError):
        return create_network(precond, **kwargs)
    if any(t.is_meta for t in _unsaved_tensors(net)):
        return create_network(precond, **kwargs)
    return net


def _unsaved_tensors(net: nn.Module) -> Iterator[torch.Tensor]:
    # Non-persistent buffers would keep their meta placeholder after load_state_dict(assign=True).
    for module in net.modules():
        for name in module._non_persistent_buffers_set:
            buf = module._buffers.get(name)
            if buf is not None:
                yield buf


def _fill_network(net: _Precond, tensors: dict[str, torch.Tensor], source: str) -> _Precond:
    """Strictly load ``tensors`` into ``net`` (same keys and shapes, cast to the network's dtypes), freeze, eval."""
    reference = net.state_dict(keep_vars=True)
    missing = sorted(set(reference) - set(tensors))
    unexpected = sorted(set(tensors) - set(reference))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match the {type(net).__name__} it describes: "
                              f"missing {_first(missing)}, unexpected {_first(unexpected)}")
    wrong = [f"{k} {tuple(t.shape)} vs {tuple(reference[k].shape)}" for k, t in tensors.items()
             if t.shape != reference[k].shape]
    if wrong:
        raise CheckpointError(f"{source}: tensor shapes differ from the network: {_first(wrong)}")
    cast = {k: t.detach().to(reference[k].dtype, copy=False).contiguous() for k, t in tensors.items()}
    # assign=True adopts the loaded tensors (no second copy of a 1.2 GB model, and meta placeholders get replaced).
    net.load_state_dict(cast, strict=True, assign=True)
    if isinstance(net, iDDPMPrecond):
        # sigma_min/max were derived from the u grid computed at build time; follow the loaded grid instead.
        net.sigma_min, net.sigma_max = float(net.u[net.M - 1]), float(net.u[0])
    return net.eval().requires_grad_(False)


def _first(items: list[str], n: int = 5) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# ----------------------------------------------------------------------------------------------------------------
# Restricted unpickling of EDM snapshots.


class ModuleRecord:
    """An object from an EDM pickle kept as data: its class name and instance ``__dict__``; no class code runs."""

    class_name: str = "?"
    state: dict[str, Any]

    def __init__(self, class_name: str, state: dict[str, Any]):
        self.class_name, self.state = class_name, state

    def __setstate__(self, state: Any) -> None:
        # BUILD of torch.nn containers, which arrive as ordinary (non-persistent) classes.
        if not isinstance(state, dict):
            raise CheckpointError(f"unexpected pickled state for {self.class_name}: {type(state).__name__}")
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"ModuleRecord({self.class_name!r}, {len(self.state)} fields)"

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat state dict named like ``named_parameters``/persistent ``named_buffers`` (None entries skipped)."""
        out: dict[str, torch.Tensor] = {}
        self._collect(prefix, out)
        return out

    def _collect(self, prefix: str, out: dict[str, torch.Tensor]) -> None:
        state = getattr(self, "state", {})
        skip = set(state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if value is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{prefix}{name} is a {type(value).__name__}, not a tensor")
                out[prefix + name] = value
        for name, child in (state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, ModuleRecord):
                raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}, not a module")
            child._collect(f"{prefix}{name}.", out)


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_PERSISTENCE_VERSION = 6


def _reconstruct_persistent_obj(meta: Any) -> ModuleRecord:
    """Our replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: record, never exec."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise CheckpointError("unsupported torch_utils.persistence object (expected type='class')")
    if meta.get("version") != _PERSISTENCE_VERSION:
        raise CheckpointError(f"unsupported torch_utils.persistence version {meta.get('version')!r} "
                              f"(expected {_PERSISTENCE_VERSION})")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise CheckpointError(f"persistent {meta.get('class_name')} has non-dict state")
    return ModuleRecord(str(meta.get("class_name")), dict(state))


_container_records: dict[str, type[ModuleRecord]] = {}


def _container_record(name: str) -> type[ModuleRecord]:
    """A record class standing in for a torch.nn class (ModuleDict, ...): same name, no torch code runs."""
    if name not in _container_records:
        _container_records[name] = type(name, (ModuleRecord,), {"class_name": name, "__module__": __name__})
    return _container_records[name]


def _load_storage_from_bytes(data: bytes) -> Any:
    # torch's own _load_from_bytes runs torch.load(weights_only=False); the weights-only unpickler keeps the
    # whitelist intact for the nested stream too.
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types for malformed or disallowed streams
        # torch's message opens by advising weights_only=False, exactly what must not happen here: keep the cause.
        lines = [line.strip() for line in str(exc).splitlines()
                 if line.strip() and not line.startswith(("Weights only load failed", "Check the documentation"))]
        detail = lines[0] if lines else type(exc).__name__
        raise CheckpointError(f"cannot read a tensor storage from the pickle: {detail}") from exc


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: tuple, stride: tuple, requires_grad: bool,
                       backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise CheckpointError(f"tensor built from a {type(storage).__name__}, not a storage")
    # Hooks and metadata are dropped: weights need neither, and hooks would be callables.
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any, state: Any = None) -> nn.Parameter:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter built from a {type(data).__name__}, not a tensor")
    return nn.Parameter(data, requires_grad=False)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> torch.Tensor:
    if func not in (_rebuild_tensor_v2, _rebuild_parameter):
        raise CheckpointError("unsupported tensor reconstruction in the pickle")
    result = func(*args)
    return nn.Parameter(result, requires_grad=False) if new_type is nn.Parameter else result


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); nothing else is needed.
    if encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # Protocol 0/1 spelling of object creation; only our record classes may be created this way.
    if not (isinstance(cls, type) and issubclass(cls, ModuleRecord)) or base is not object or state is not None:
        raise CheckpointError("refusing copyreg._reconstructor for a non-module class")
    return object.__new__(cls)


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise CheckpointError("refusing a numpy array subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(module, "_reconstruct")] = _numpy_reconstruct
        out[(module, "scalar")] = scalar
    # dtype classes are how numpy >= 1.25 may spell dtypes (e.g. numpy.dtypes.Float64DType).
    for name in dir(getattr(np, "dtypes", None) or object()):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            out[("numpy.dtypes", name)] = cls
    return out


_SAFE_BUILTINS = ("set", "frozenset", "dict", "list", "tuple", "int", "float", "complex", "bool", "str", "bytes",
                  "bytearray", "slice", "range")
_TORCH_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential", "ParameterDict", "ParameterList")


def _safe_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        # Classes that only serve as type tags in _rebuild_from_type_v2, and inert value types.
        ("torch", "Tensor"): torch.Tensor,
        ("torch._tensor", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): nn.Parameter,
        ("torch", "device"): torch.device,
        ("torch", "Size"): torch.Size,
        ("_codecs", "encode"): _codecs_encode,
        ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    }
    for name in _SAFE_BUILTINS:
        table[("builtins", name)] = table[("__builtin__", name)] = getattr(builtins, name)
    for name in _TORCH_CONTAINERS:
        table[("torch.nn.modules.container", name)] = _container_record(name)
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            table[("torch", name)] = getattr(torch, name)
    table.update(_numpy_globals())
    return table


class _EdmUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted globals; EDM persistent classes become ModuleRecords."""

    _table: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _EdmUnpickler._table is None:
            _EdmUnpickler._table = _safe_globals()
        try:
            return _EdmUnpickler._table[(module, name)]
        except KeyError:
            raise CheckpointError(f"refusing to load global {module}.{name} from the pickle: not needed by an EDM "
                                  "network snapshot and potentially unsafe") from None

    def persistent_load(self, pid: Any) -> Any:
        # Plain pickle of torch tensors never emits persistent ids (those belong to torch.save archives).
        raise CheckpointError("the pickle contains persistent ids (a torch.save archive?); expected a plain "
                              "pickle of an EDM snapshot")


def _require_trust(path: str | os.PathLike, trust: bool) -> None:
    if not trust:
        raise UntrustedPickleError(
            f"{os.fspath(path)} is a pickle: unpickling can run code even with skipsearch's restricted loader. "
            "Pass --trust-pickle (CLI) / trust=True (API) only for files from a source you trust")


def _unpickle(stream: BinaryIO, source: str) -> Any:
    try:
        return _EdmUnpickler(stream).load()
    except CheckpointError:
        raise
    except Exception as exc:  # pickle reports corrupt data with many exception types
        raise CheckpointError(f"cannot unpickle {source}: {type(exc).__name__}: {exc}") from exc


def read_edm_pickle(path: str | os.PathLike, *, trust: bool) -> Any:
    """Unpickle an EDM snapshot into plain data: persistent modules become :class:`ModuleRecord` objects."""
    _require_trust(path, trust)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        return _unpickle(f, str(path))


def _constructor_kwargs(cls: type, args: Any, kwargs: Any, source: str) -> dict[str, Any]:
    """Positional + keyword constructor arguments as one keyword dict (``**model_kwargs`` flattened)."""
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    if not args:
        return kwargs
    try:
        bound = inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as exc:
        raise CheckpointError(f"{source}: constructor arguments do not fit {cls.__name__}: {exc}") from exc
    params = inspect.signature(cls).parameters
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if params[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def network_from_record(record: ModuleRecord, source: str = "pickle") -> _Precond:
    """Build our network for a recorded EDM preconditioner and load its tensors (strict)."""
    if not isinstance(record, ModuleRecord):
        raise CheckpointError(f"{source}: expected a network module, got {type(record).__name__}")
    if record.class_name not in PRECONDS:
        raise CheckpointError(f"{source}: network class {record.class_name!r} is not supported "
                              f"(supported: {', '.join(PRECONDS)})")
    kwargs = _constructor_kwargs(PRECONDS[record.class_name], record.state.get("_init_args"),
                                 record.state.get("_init_kwargs"), source)
    try:
        net = _create_unfilled_network(record.class_name, kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise CheckpointError(f"{source}: cannot build {record.class_name} from the recorded arguments "
                              f"{sorted(kwargs)}: {exc}") from exc
    return _fill_network(net, record.tensors(), source)


def load_edm_pickle(path: str | os.PathLike, *, trust: bool) -> _Precond:
    """Load the ``ema`` network of an official EDM ``.pkl`` into our networks (eval mode, no grad).

    No NVlabs code is needed or executed; ``trust=True`` must still be given because unpickling calls functions.
    """
    data = read_edm_pickle(path, trust=trust)
    record = data.get("ema") if isinstance(data, dict) else data
    if record is None:
        raise CheckpointError(f"{path}: no 'ema' network in the snapshot (keys: {', '.join(map(str, data))})")
    return network_from_record(record, str(path))


# ----------------------------------------------------------------------------------------------------------------
# safetensors.


def save_network(net: _Precond, path: str | os.PathLike, *, extra_metadata: dict[str, str] | None = None,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Save the state dict as safetensors with the constructor config in the metadata.

    ``dtype`` applies to floating-point parameters only; buffers (resample filters, Fourier frequencies, the
    iDDPM sigma grid) stay fp32 because they are exact constants and fp16 would shift them.
    """
    from safetensors.torch import save_file

    config = network_config(net)
    metadata = {METADATA_FORMAT: _FORMAT_VERSION, METADATA_DTYPE: str(dtype).removeprefix("torch."),
                METADATA_NETWORK: json.dumps(config, sort_keys=True)}
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("extra_metadata must map str to str")
        if key in metadata:
            raise ValueError(f"extra_metadata may not override {key!r}")
        metadata[key] = value
    params = {name for name, _ in net.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in net.state_dict().items():
        tensor = tensor.detach()
        if name in params and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.to("cpu").contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_network(path: str | os.PathLike) -> tuple[_Precond, dict[str, str]]:
    """Load a :func:`save_network` file: the network (fp32, eval, no grad) and the file's metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            if METADATA_NETWORK not in metadata:
                raise CheckpointError(f"{path} has no {METADATA_NETWORK!r} metadata; not a skipsearch network file")
            config = json.loads(metadata[METADATA_NETWORK])
            net = _create_unfilled_network(config["precond"], config["kwargs"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        # TypeError/ValueError: the recorded config does not fit our networks (unknown argument or class).
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    return _fill_network(net, tensors, str(path)), metadata


def load_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> _Precond:
    """Load a network from a ``.safetensors`` file (ours) or an official EDM ``.pkl`` (needs ``trust_pickle``)."""
    if Path(path).suffix == ".safetensors":
        return load_network(path)[0]
    return load_edm_pickle(path, trust=trust_pickle)


# ----------------------------------------------------------------------------------------------------------------
# Hashing, presets, cache and download.


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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

    def create(self) -> _Precond:
        """The architecture with random weights (no download)."""
        return create_network(self.precond, **self.kwargs)


_EDM_CDN = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained"

PRESETS: dict[str, Preset] = {
    "edm-cifar10": Preset(
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
    ),
    "edm-imagenet64": Preset(
        name="edm-imagenet64",
        description="EDM class-conditional ImageNet 64x64, ADM (DhariwalUNet) with EDM preconditioning",
        precond="EDMPrecond",
        kwargs=dict(img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True, model_type="DhariwalUNet",
                    model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8],
                    dropout=0.10),
        url=f"{_EDM_CDN}/edm-imagenet-64x64-cond-adm.pkl",
        filename="edm-imagenet-64x64-cond-adm.pkl",
        num_skip_points=16,
    ),
}


def default_cache_dir() -> Path:
    """``$SKIPSEARCH_CACHE`` or ``~/.cache/skipsearch``."""
    return Path(os.environ.get("SKIPSEARCH_CACHE") or "~/.cache/skipsearch").expanduser()


def cached_checkpoint_path(preset: Preset, cache_dir: Path | None = None) -> Path:
    """Where the preset's file lives in the cache: ``<cache_dir>/checkpoints/<filename>``."""
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
