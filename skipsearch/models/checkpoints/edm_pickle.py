"""Official EDM and EDM2 ``.pkl`` snapshots, read without the NVlabs code and without executing it.

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
import inspect
import io
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from skipsearch.models import edm2_networks
from skipsearch.models.checkpoints.edm2_latents import encoder_standardisation
from skipsearch.models.checkpoints.errors import CheckpointError, UntrustedPickleError
from skipsearch.models.checkpoints.networks import _create_unfilled_network, _fill_network
from skipsearch.models.edm_networks import PRECONDS, _Precond


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
    classes = {**dict(PRECONDS.items()), edm2_networks.PICKLED_CLASS: edm2_networks.Precond}
    if record.class_name not in classes:
        raise CheckpointError(f"{source}: network class {record.class_name!r} is not supported "
                              f"(supported: {', '.join(classes)})")
    kwargs = _constructor_kwargs(classes[record.class_name], record.state.get("_init_args"),
                                 record.state.get("_init_kwargs"), source)
    # EDM2's class is "Precond" in its pickles; our network files call it EDM2Precond.
    precond = edm2_networks.PRECOND_NAME if record.class_name == edm2_networks.PICKLED_CLASS else record.class_name
    try:
        net = _create_unfilled_network(precond, kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise CheckpointError(f"{source}: cannot build {record.class_name} from the recorded arguments "
                              f"{sorted(kwargs)}: {exc}") from exc
    return _fill_network(net, record.tensors(), source)


def load_edm_pickle(path: str | os.PathLike, *, trust: bool) -> _Precond:
    """Load the ``ema`` network of an official EDM or EDM2 ``.pkl`` into our networks (eval mode, no grad); an EDM2
    latent model's ``encoder`` record leaves its latent standardisation on the network (``net.edm2_latents``).

    No NVlabs code is needed or executed; ``trust=True`` must still be given because unpickling calls functions.
    """
    data = read_edm_pickle(path, trust=trust)
    record = data.get("ema") if isinstance(data, dict) else data
    if record is None:
        raise CheckpointError(f"{path}: no 'ema' network in the snapshot (keys: {', '.join(map(str, data))})")
    net = network_from_record(record, str(path))
    latents = encoder_standardisation(data.get("encoder"), str(path)) if isinstance(data, dict) else None
    if latents is not None:  # an EDM2 latent model: how its latents were standardised travels with the network
        net.edm2_latents = latents
    return net
