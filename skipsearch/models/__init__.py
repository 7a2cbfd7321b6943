"""Stage 2, the model adapter: a model spec -> a ``SkipAdapter`` (denoiser, ``skip_points``, the schedule hooks).

``load_model(spec)`` takes a registered name, a model file ``PATH.toml``, ``package.module:factory`` or
``diffusers:DIR``; ``apply(model, schedule)`` puts a schedule on an adapter or a bare network.
"""

from __future__ import annotations

from skipsearch.models.adapter import AppliedSchedule, SkipAdapter
from skipsearch.models.edm import EDMAdapter
from skipsearch.models.errors import ModelError
from skipsearch.models.loading import ModelInfo, list_models, load_model, load_network_file, model_names
from skipsearch.models.spec import model_key


def apply(model, schedule, *, check_identity: bool = True) -> AppliedSchedule:
    """Put ``schedule`` on ``model`` (an adapter, an EDM network, a diffusers UNet, or a model spec string, which
    is loaded); returns a removable handle.

    ``with apply(model, s): ...`` removes it on exit; otherwise it stays until ``handle.remove()``.
    """
    if isinstance(model, str):
        model = load_model(model)
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
        raise ModelError(f"cannot tell the parametrisation and skips of {type(model).__name__}; describe it in a "
                         "model file (PATH.toml) or wrap it with skipsearch.models.generic.GenericAdapter")
    _ADAPTED[id(model)] = adapter
    return adapter


__all__ = ["AppliedSchedule", "ModelError", "ModelInfo", "SkipAdapter", "adapt", "apply", "list_models", "load_model",
           "load_network_file", "model_key", "model_names"]
