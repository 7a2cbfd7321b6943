"""Adapter for any torch UNet whose decoder concatenates encoder skips along channels.

The skip consumers are either declared (qualified module names) or found by one probe forward: every
``torch.cat`` of exactly two 4-D tensors along dim 1 is recorded (through a ``TorchFunctionMode``), and the first
module that receives such a concatenation as its first argument is its consumer. Of the two parts, the one produced
earlier in the forward is the encoder skip (the main path was computed just before the cat).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from skipsearch.models.adapter import SkipAdapter, check_points
from skipsearch.models.hooks import SkipPoint
from skipsearch.models.parametrization import DataParametrization, EpsilonParametrization

# call(model, x_in, t_or_sigma, labels) -> raw model output
ModelCall = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None"], Any]

_CATS = {torch.cat, torch.concat, torch.concatenate}


def default_call(model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> Any:
    return model(x, t) if labels is None else model(x, t, labels)


def _output_tensor(out: Any) -> torch.Tensor:
    """The prediction from a plain tensor, a (tensor, ...) tuple or a diffusers-style output with ``.sample``."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; pass call=... returning the prediction tensor")


@dataclass
class _Cat:
    ref: weakref.ref
    resolution: int
    widths: tuple[int, int]
    order: tuple[int, int]  # production stamps of the two parts; -1 = not produced during the forward (an input)
    sources: tuple[str | None, str | None]
    consumers: list[str] = field(default_factory=list)
    first_use: int = -1


class _Recorder(TorchFunctionMode):
    """Stamps every tensor a torch function produces with a counter and records two-part channel cats."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0
        self.stamps: dict[int, tuple[weakref.ref, int]] = {}
        self.module_of: dict[int, tuple[weakref.ref, str]] = {}
        self.cats: dict[int, _Cat] = {}  # by id of the live output, for lookup
        self.all_cats: list[_Cat] = []  # every cat, even once its output is freed and its id reused

    @staticmethod
    def _lookup(table: dict[int, tuple[weakref.ref, Any]], tensor: torch.Tensor) -> Any:
        # Keyed by id with a weak reference: a dead tensor's id may be reused, so check it is the same object.
        entry = table.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def stamp(self, tensor: torch.Tensor) -> int:
        found = self._lookup(self.stamps, tensor)
        return -1 if found is None else found

    def cat_of(self, tensor: Any) -> _Cat | None:
        if not isinstance(tensor, torch.Tensor):
            return None
        cat = self.cats.get(id(tensor))
        return cat if cat is not None and cat.ref() is tensor else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CATS:
            parts = args[0] if args else kwargs.get("tensors")
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if (isinstance(out, torch.Tensor) and isinstance(parts, (list, tuple)) and len(parts) == 2
                    and all(isinstance(p, torch.Tensor) and p.ndim == 4 for p in parts) and dim in (1, -3)):
                cat = _Cat(weakref.ref(out), int(out.shape[-2]), (parts[0].shape[1], parts[1].shape[1]),
                           (self.stamp(parts[0]), self.stamp(parts[1])),
                           (self._lookup(self.module_of, parts[0]), self._lookup(self.module_of, parts[1])))
                self.cats[id(out)] = cat
                self.all_cats.append(cat)
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and self._lookup(self.stamps, tensor) is None:
                self.clock += 1
                self.stamps[id(tensor)] = (weakref.ref(tensor), self.clock)
        return out


class GenericAdapter(SkipAdapter):
    """Any torch UNet whose decoder consumes ``cat([main, skip])`` (or ``cat([skip, main])``) in a module.

    ``consumers``: qualified names of the modules whose first input is the concatenation, or None to detect them.
    ``skip_channels`` (with declared consumers): width of each skip; ``skip_first`` says the cat puts it first.
    Without ``skip_channels`` both are detected. Points are numbered in order of consumption (0 = bottom).
    ``call(model, x_in, t_or_sigma, labels)`` adapts the forward signature (default ``model(x, t[, labels])``);
    it receives the timestep for an :class:`EpsilonParametrization` and sigma for a :class:`DataParametrization`.
    """

    def __init__(self, model: nn.Module, *, name: str, parametrization: EpsilonParametrization | DataParametrization,
                 img_shape: tuple[int, int, int], consumers: Sequence[str] | None = None,
                 skip_channels: Sequence[int] | None = None, skip_first: bool = False, label_dim: int = 0,
                 call: ModelCall | None = None, weights_sha256: str | None = None):
        super().__init__()
        if skip_channels is not None and (consumers is None or len(skip_channels) != len(consumers)):
            raise ValueError("skip_channels needs declared consumers, one width per consumer")
        self.net, self.name, self.weights_sha256 = model, name, weights_sha256
        self.parametrization, self.call = parametrization, call or default_call
        self.img_shape, self.label_dim = tuple(img_shape), int(label_dim)
        self.sigma_min, self.sigma_max = parametrization.sigma_min, parametrization.sigma_max
        self.skip_points = self._find_points(consumers, skip_channels, skip_first)

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.parametrization.round_sigma(sigma)

    def _denoise_raw(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype

        def model_fn(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return _output_tensor(self.call(self.net, x_in.to(dtype), t, class_labels))

        return self.parametrization.denoise(model_fn, x, sigma)

    @torch.no_grad()
    def _find_points(self, consumers: Sequence[str] | None, skip_channels: Sequence[int] | None,
                     skip_first: bool) -> list[SkipPoint]:
        modules = dict(self.net.named_modules())
        unknown = [n for n in consumers or () if n not in modules]
        if unknown:
            raise ValueError(f"{self.name}: no module named {', '.join(map(repr, unknown))}")
        recorder = _Recorder()
        # declared consumer -> (first use, input shape, cat it received)
        uses: dict[str, tuple[int, torch.Size, _Cat | None]] = {}
        clock = [0]

        def pre_hook(module_name: str, _module: nn.Module, args: tuple) -> None:
            clock[0] += 1
            cat = recorder.cat_of(args[0]) if args else None
            if consumers is not None:
                if module_name in consumers and module_name not in uses and args:
                    uses[module_name] = (clock[0], args[0].shape, cat)
            elif cat is not None:
                if cat.first_use < 0:
                    cat.first_use = clock[0]
                cat.consumers.append(module_name)

        def post_hook(module_name: str, _module: nn.Module, _args: tuple, out: Any) -> None:
            # Overwritten by each enclosing module, so the source is the outermost module returning the tensor.
            if isinstance(out, torch.Tensor):
                recorder.module_of[id(out)] = (weakref.ref(out), module_name)

        handles = []
        for module_name, module in modules.items():
            if module_name:  # not the root: its forward contains the cats
                handles.append(module.register_forward_pre_hook(
                    lambda m, a, n=module_name: pre_hook(n, m, a)))
                handles.append(module.register_forward_hook(
                    lambda m, a, o, n=module_name: post_hook(n, m, a, o)))
        try:
            param = next(self.net.parameters())
            x = torch.randn(1, *self.img_shape, generator=torch.Generator().manual_seed(0)).to(param.device)
            sigma = self.round_sigma(torch.tensor([(self.sigma_min * self.sigma_max) ** 0.5], device=param.device))
            labels = None
            if self.label_dim:
                labels = torch.zeros(1, self.label_dim, device=param.device)
                labels[:, 0] = 1
            with recorder:
                self._denoise_raw(x, sigma, labels)
        finally:
            for handle in handles:
                handle.remove()
        if consumers is None:
            return self._detected_points(recorder)
        return self._declared_points(consumers, skip_channels, skip_first, uses)

    def _detected_points(self, recorder: _Recorder) -> list[SkipPoint]:
        points: list[SkipPoint] = []
        used = sorted((c for c in recorder.all_cats if c.consumers), key=lambda c: c.first_use)
        for cat in used:
            # A submodule that receives the same tensor (a block passing its input to its first conv) is not a
            # second consumer; two unrelated modules are, and one hook could not scale both.
            outer = [n for i, n in enumerate(cat.consumers)
                     if not any(n.startswith(m + ".") or n == m for m in cat.consumers[:i])]
            if len(outer) > 1:
                raise ValueError(f"{self.name}: one concatenation feeds {', '.join(outer)}; declare consumers= "
                                 "with a module that receives it whole")
            first_is_skip = cat.order[0] < cat.order[1]
            skip = cat.widths[0] if first_is_skip else cat.widths[1]
            main = cat.widths[1] if first_is_skip else cat.widths[0]
            points.append(SkipPoint(index=len(points), consumer=outer[0], resolution=cat.resolution,
                                    main_channels=main, skip_channels=skip, skip_first=first_is_skip,
                                    source=cat.sources[0] if first_is_skip else cat.sources[1]))
        check_points(points)
        return points

    def _declared_points(self, consumers: Sequence[str], skip_channels: Sequence[int] | None, skip_first: bool,
                         uses: dict[str, tuple[int, torch.Size, _Cat | None]]) -> list[SkipPoint]:
        unused = [n for n in consumers if n not in uses]
        if unused:
            raise ValueError(f"{self.name}: {', '.join(map(repr, unused))} not called with a tensor in the probe "
                             "forward")
        width_of = dict(zip(consumers, skip_channels, strict=True)) if skip_channels is not None else {}
        points: list[SkipPoint] = []
        for consumer in sorted(consumers, key=lambda n: uses[n][0]):
            _, shape, cat = uses[consumer]
            if consumer in width_of:
                skip, first, source = int(width_of[consumer]), skip_first, None
                if cat is not None:
                    source = cat.sources[0] if first else cat.sources[1]
            elif cat is not None:
                first = cat.order[0] < cat.order[1]
                skip = cat.widths[0] if first else cat.widths[1]
                source = cat.sources[0] if first else cat.sources[1]
            else:
                raise ValueError(f"{self.name}: the input of {consumer!r} is not a torch.cat of two 4-D tensors; "
                                 "give skip_channels=")
            if not 0 < skip < shape[1]:
                raise ValueError(f"{self.name}: skip width {skip} does not fit the {shape[1]} input channels of "
                                 f"{consumer!r}")
            points.append(SkipPoint(index=len(points), consumer=consumer, resolution=int(shape[-2]),
                                    main_channels=int(shape[1]) - skip, skip_channels=skip, skip_first=first,
                                    source=source))
        check_points(points)
        return points
