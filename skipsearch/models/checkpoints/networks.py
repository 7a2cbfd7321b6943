"""Networks that remember their constructor arguments, and strict filling from a checkpoint's tensors."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from skipsearch.models import edm2_networks
from skipsearch.models.checkpoints.errors import CheckpointError
from skipsearch.models.edm_networks import _Precond, build_network, iDDPMPrecond

CONFIG_ATTR = "skipsearch_config"

def _jsonable(value: Any) -> Any:
    """Constructor arguments as JSON-friendly values (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _build(precond: str, **kwargs: Any) -> nn.Module:
    """EDM's preconditioners by class name (``build_network``), or EDM2's under ``EDM2Precond``."""
    if precond == edm2_networks.PRECOND_NAME:
        return edm2_networks.Precond(**kwargs)
    return build_network(precond, **kwargs)


def create_network(precond: str, **kwargs: Any) -> _Precond:
    """A network of EDM (``EDMPrecond``, ...) or EDM2 (``EDM2Precond``) built from its constructor arguments, which it
    keeps as ``{"precond", "kwargs"}`` (see :func:`network_config`)."""
    kwargs = _jsonable(copy.deepcopy(kwargs))
    net = _build(precond, **kwargs)
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
