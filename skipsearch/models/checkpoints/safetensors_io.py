"""skipsearch's own network files: safetensors with the constructor config in the metadata; hashing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from skipsearch.models.checkpoints.edm_pickle import load_edm_pickle
from skipsearch.models.checkpoints.errors import CheckpointError
from skipsearch.models.checkpoints.networks import _create_unfilled_network, _fill_network, network_config
from skipsearch.models.edm_networks import _Precond

METADATA_NETWORK = "skipsearch.network"
METADATA_FORMAT = "skipsearch.format"
METADATA_DTYPE = "skipsearch.dtype"
_FORMAT_VERSION = "1"
_CHUNK = 1 << 20

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


def load_torch_state_dict(path: str | os.PathLike, key: str | None = None, *, where: str | None = None,
                          field: str = "weights_key") -> dict[str, torch.Tensor]:
    """A state dict from a torch file, read with ``weights_only=True`` (a pickle that would run code is refused).

    Training checkpoints (``{"model_state_dict": ...}``, ``{"ema": ...}``, ``{"state_dict": ...}``) are unwrapped
    when exactly one common key holds a state dict; ``key`` (dotted: ``ema.model``) names it otherwise
    (:func:`~skipsearch.models.checkpoints.state_dicts.find_state_dict`). ``where`` names the file in errors,
    ``field`` the setting that names the key.
    """
    from skipsearch.models.checkpoints.state_dicts import find_state_dict
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but plain tensors/containers, or a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"cannot read {path} as a state dict with weights_only=True "
                              f"({type(exc).__name__}: {first[:160]})") from None
    return find_state_dict(state, where or str(path), key, field)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
