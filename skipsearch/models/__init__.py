"""Model registry: names a user types (``--model edm``) -> a skip-tunable adapter."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from skipsearch.models.adapter import AppliedSchedule, SkipAdapter
from skipsearch.models.edm import EDMAdapter


class ModelError(ValueError):
    """Unknown model name or unusable checkpoint; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    num_skip_points: int
    source: str


def _presets():
    from skipsearch.models.checkpoints import PRESETS
    return PRESETS


def list_models() -> list[ModelInfo]:
    from skipsearch.models.bundled import BUNDLED_CARD
    card = json.loads(BUNDLED_CARD.read_text()) if BUNDLED_CARD.exists() else {}
    infos = [ModelInfo("edm", "bundled EDM (SongUNet) trained by skipsearch on MNIST 28x28, unconditional",
                       int(card.get("num_skip_points", 9)), "package data (offline)")]
    for preset in _presets().values():
        infos.append(ModelInfo(preset.name, preset.description, preset.num_skip_points, preset.url or "local file"))
    return infos


def model_names() -> list[str]:
    return [info.name for info in list_models()]


def load_network_file(path: str | os.PathLike, *, trust_pickle: bool = False):
    """An EDM network from a ``.safetensors`` file (ours) or an official ``.pkl`` (needs ``trust_pickle``)."""
    from skipsearch.models.checkpoints import CheckpointError, load_checkpoint
    path = Path(path)
    if not path.exists():
        raise ModelError(f"checkpoint not found: {path}")
    if path.suffix not in (".pkl", ".safetensors"):
        raise ModelError(f"unsupported checkpoint type {path.suffix!r} ({path}); use an EDM .pkl or a skipsearch "
                         ".safetensors file")
    try:
        return load_checkpoint(path, trust_pickle=trust_pickle)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None


def load_model(name: str = "edm", *, checkpoint: str | os.PathLike | None = None, trust_pickle: bool = False,
               device: str = "cpu", download: bool = True) -> SkipAdapter:
    """Load a model by name. ``edm`` is the bundled MNIST model unless ``checkpoint`` is given."""
    from skipsearch.models.checkpoints import CheckpointError, file_sha256, resolve_checkpoint
    if name == "edm":
        from skipsearch.models.bundled import BUNDLED_WEIGHTS
        path = Path(checkpoint) if checkpoint else BUNDLED_WEIGHTS
    elif name in _presets():
        try:
            path = resolve_checkpoint(_presets()[name], str(checkpoint) if checkpoint else None, download=download)
        except CheckpointError as exc:
            raise ModelError(str(exc)) from None
    else:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(model_names())} "
                         "(run 'skipsearch models' to list them)")
    net = load_network_file(path, trust_pickle=trust_pickle)
    adapter = EDMAdapter(net, name, weights_sha256=file_sha256(path))
    from skipsearch.device import prepare_module
    prepare_module(adapter.net, torch.device(device))
    return adapter


def apply(model, schedule, *, check_identity: bool = True) -> AppliedSchedule:
    """Put ``schedule`` on ``model`` (an adapter, an EDM network or a diffusers UNet); returns a removable handle.

    ``with apply(model, s): ...`` removes it on exit; otherwise it stays until ``handle.remove()``.
    """
    return adapt(model).apply(schedule, check_identity=check_identity)


_ADAPTED: dict[int, SkipAdapter] = {}


def adapt(model, name: str | None = None) -> SkipAdapter:
    """The adapter for ``model``; a bare network gets one (kept, so repeated ``apply`` calls share it)."""
    if isinstance(model, SkipAdapter):
        return model
    if id(model) in _ADAPTED and _ADAPTED[id(model)].net is model:
        return _ADAPTED[id(model)]
    if hasattr(model, "model") and hasattr(model.model, "dec") and hasattr(model.model, "enc"):
        adapter: SkipAdapter = EDMAdapter(model, name or type(model).__name__)
    elif hasattr(model, "up_blocks"):
        from skipsearch.models.diffusers_adapter import DiffusersAdapter
        adapter = DiffusersAdapter(model, name=name or type(model).__name__)
    else:
        raise ModelError(f"cannot find skip connections in {type(model).__name__}; wrap it with "
                         "skipsearch.models.generic.GenericAdapter and name its skip-consuming modules")
    _ADAPTED[id(model)] = adapter
    return adapter


__all__ = ["ModelError", "ModelInfo", "SkipAdapter", "apply", "adapt", "list_models", "load_model",
           "load_network_file"]
