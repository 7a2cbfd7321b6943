"""Stage 2, the model adapter: a model spec -> a ``SkipAdapter`` (denoiser, ``skip_points``, the schedule hooks).

``load_model(spec)`` takes a registered name, a model file ``PATH.toml``, ``package.module:factory`` or
``diffusers:DIR``; ``apply(model, schedule)`` puts a schedule on an adapter or a bare network.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skipsearch.models.adapter import AppliedSchedule, SkipAdapter
from skipsearch.models.edm import EDMAdapter
from skipsearch.models.edm2 import EDM2Adapter, is_edm2
from skipsearch.models.errors import ModelError
from skipsearch.models.loading import ModelInfo, list_models, load_model, load_network_file, model_names
from skipsearch.models.spec import model_key
from skipsearch.registry import Registry


def apply(model, schedule, *, check_identity: bool = True) -> AppliedSchedule:
    """Put ``schedule`` on ``model`` (an adapter, an EDM network, a diffusers UNet, or a model spec string, which
    is loaded); returns a removable handle.

    ``with apply(model, s): ...`` removes it on exit; otherwise it stays until ``handle.remove()``.
    """
    if isinstance(model, str):
        model = load_model(model)
    return adapt(model).apply(schedule, check_identity=check_identity)


@dataclass(frozen=True)
class AdapterKind:
    """A family of bare networks that ``adapt()`` recognises: ``recognises(net)`` tells one (cheaply, without a
    forward), ``build(net, name)`` makes its adapter."""

    description: str
    recognises: Callable[[Any], bool]
    build: Callable[[Any, str], SkipAdapter]


def _is_edm(net: Any) -> bool:
    inner = getattr(net, "model", None)
    return inner is not None and hasattr(inner, "dec") and hasattr(inner, "enc")


def _build_diffusers(net: Any, name: str) -> SkipAdapter:
    from skipsearch.models.diffusers_adapter import DiffusersAdapter
    return DiffusersAdapter(net, name=name)


# Tried in registration order; the first that recognises a network builds its adapter. A network none recognises
# (any other UNet) needs a model file (PATH.toml) or skipsearch.models.generic.GenericAdapter: its parametrisation
# and image shape cannot be read off the module.
ADAPTER_KINDS: Registry[AdapterKind] = Registry("model adapter", ModelError)
ADAPTER_KINDS.register("edm", AdapterKind("an EDM preconditioned network (net.model.enc / net.model.dec)", _is_edm,
                                          lambda net, name: EDMAdapter(net, name)))
ADAPTER_KINDS.register("diffusers", AdapterKind("a diffusers UNet (up_blocks), DDPM linear schedule by default",
                                                lambda net: hasattr(net, "up_blocks"), _build_diffusers))
ADAPTER_KINDS.register("edm2", AdapterKind("an EDM2 preconditioned network (net.unet.enc / net.unet.dec)", is_edm2,
                                           lambda net, name: EDM2Adapter(net, name)))

# network -> weak reference to its adapter: a network nobody holds is collected with its adapter, and an adapter
# lives while its caller holds it or a schedule is applied (the net then pins it, SkipAdapter.pinned_by_net).
_ADAPTED: weakref.WeakKeyDictionary[Any, weakref.ref[SkipAdapter]] = weakref.WeakKeyDictionary()


def recognise(model: Any) -> str:
    """The name of the first adapter kind (``ADAPTER_KINDS``) that recognises ``model``, else ModelError."""
    for name, kind in ADAPTER_KINDS.items():
        if kind.recognises(model):
            return name
    raise ModelError(f"cannot tell the parametrisation and skips of {type(model).__name__}; describe it in a "
                     "model file (PATH.toml) or wrap it with skipsearch.models.generic.GenericAdapter")


def adapt(model, name: str | None = None) -> SkipAdapter:
    """The adapter for ``model``; a bare network gets one, shared by repeated ``apply`` calls while it lives."""
    if isinstance(model, SkipAdapter):
        return model
    try:
        ref = _ADAPTED.get(model)
    except TypeError:  # not weakly referable or not hashable: no cache
        ref = None
    adapter = ref() if ref is not None else None
    if adapter is not None and adapter.net is model:
        return adapter
    adapter = ADAPTER_KINDS[recognise(model)].build(model, name or type(model).__name__)
    adapter.pinned_by_net = True
    try:
        _ADAPTED[model] = weakref.ref(adapter)
    except TypeError:
        pass
    return adapter


__all__ = ["ADAPTER_KINDS", "AdapterKind", "AppliedSchedule", "ModelError", "ModelInfo", "SkipAdapter", "adapt",
           "apply", "list_models", "load_model", "load_network_file", "model_key", "model_names", "recognise"]
