"""Checkpoints as they come: the state dict inside a training checkpoint, and the prefix wrappers put on its keys.

Training scripts save ``{'model_state_dict': ..., 'optimizer': ..., 'epoch': ...}``, ``{'ema': ...}``, Lightning's
``{'state_dict': ...}``, and keys under ``module.`` (DataParallel / DDP) or ``_orig_mod.`` (``torch.compile``).
:func:`find_state_dict` picks the state dict (a mapping of str -> tensor) out of such a file; :func:`fit_state_dict`
strips a wrapper prefix when (and only when) that makes the keys fit the network. No torch import at module level
is needed beyond the tensor check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from skipsearch.models.checkpoints.errors import CheckpointError

# Where training scripts put the weights; found automatically when exactly one of them holds a state dict.
COMMON_KEYS = ("state_dict", "model_state_dict", "ema", "ema_model", "model_ema", "ema_state_dict", "model", "net",
               "network", "module", "params_ema", "params", "generator", "unet", "weights")
# Wrapper prefixes stripped automatically when every key carries one and stripping makes the keys fit.
AUTO_PREFIXES = ("module.", "_orig_mod.", "network.", "model.", "net.")


def is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:8]]
        return f"a mapping with keys {', '.join(keys)}{' ...' if len(obj) > 8 else ''}"
    return f"a {type(obj).__name__}"


def _at(obj: Any, key: str) -> tuple[bool, Any]:
    """``obj[key]``, where a dotted key walks nested mappings (``ema.model``); an exact key wins over a walk."""
    if isinstance(obj, Mapping) and key in obj:
        return True, obj[key]
    head, dot, rest = key.partition(".")
    while dot:
        if isinstance(obj, Mapping) and head in obj:
            found, value = _at(obj[head], rest)
            if found:
                return True, value
        more, dot, rest = rest.partition(".")
        head = f"{head}.{more}"
    return False, None


def _candidates(obj: Mapping, depth: int = 2, prefix: str = "") -> list[str]:
    """Dotted paths of the common keys that hold a state dict (one level of nesting: ``{'model': {'ema': ...}}``)."""
    found = []
    for key in COMMON_KEYS:
        value = obj.get(key)
        if is_state_dict(value):
            found.append(prefix + key)
        elif isinstance(value, Mapping) and depth > 1:
            found += _candidates(value, depth - 1, f"{prefix}{key}.")
    return found


def find_state_dict(obj: Any, where: str, key: str | None = None, field: str = "weights_key"
                    ) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint ``obj``; ``where`` names it in errors, ``key`` is a (dotted) key."""
    if key:
        found, value = _at(obj, key)
        if not found:
            raise CheckpointError(f"{where} has no key {key!r} ({field}); it holds {_describe(obj)}")
        if not is_state_dict(value):
            raise CheckpointError(f"{where}: {key!r} ({field}) is not a state dict (a mapping of names to tensors) "
                                  f"but {_describe(value)}")
        return dict(value)
    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        found = _candidates(obj) or [k for k, v in obj.items() if isinstance(k, str) and is_state_dict(v)]
        if len(found) == 1:
            return dict(_at(obj, found[0])[1])
        if len(found) > 1:
            raise CheckpointError(f"{where} holds several state dicts ({', '.join(found)}); set {field} to one "
                                  "of them")
    raise CheckpointError(f"{where} does not hold a state dict (a mapping of names to tensors): it holds "
                          f"{_describe(obj)}; set {field} to the key that holds the weights")


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _fits(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> bool:
    return set(state) == set(reference) and all(state[k].shape == reference[k].shape for k in reference)


def fit_state_dict(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                   prefix: str | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with a wrapper prefix stripped, and the prefixes stripped.

    With ``prefix``, only the keys under it are kept (stripped of it); a missing trailing dot is added. Without it,
    ``module.``, ``_orig_mod.``, ``network.``, ``model.`` and ``net.`` are stripped (repeatedly:
    ``_orig_mod.module.``) only while every key carries one, and the result is used only if it fits
    ``reference``; otherwise ``state`` comes back unchanged for the caller's mismatch report.
    """
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
        stripped = _strip(state, prefix)
        if not stripped:
            raise CheckpointError(f"no key starts with {prefix!r} (weights_prefix); keys look like "
                                  f"{', '.join(list(state)[:3])}")
        return stripped, [prefix]
    current, taken = dict(state), []
    for _ in range(4):
        if _fits(current, reference):
            return current, taken
        head = next((p for p in AUTO_PREFIXES if all(k.startswith(p) for k in current)), None)
        if head is None:
            break
        current, taken = _strip(current, head), taken + [head]
    return dict(state), []
