"""Adapter for any torch UNet whose decoder concatenates encoder skips along channels.

Skips are found by one probe forward under a ``TorchFunctionMode`` that stamps every tensor with the order it was
produced in and records every ``torch.cat`` of 4-D tensors along channels (functional cats inside ``forward``
included). In such a concatenation the part produced last is the decoder's main path; an older part is an encoder
skip when it was produced during the forward and at least ``MIN_SKIP_AGE`` tensors before the main part (an encoder
tensor waits while the decoder block before the cat runs; parts made side by side, or inputs of the forward, are
not skips). ``detection_report`` says, for every concatenation, what was taken and why.

Scaling intercepts the concatenation itself: at each recorded (concatenation, part) the skip tensor is multiplied
by rho as it enters ``torch.cat`` (:func:`skipsearch.models.hooks.scale_skip_tensor`), so ``cat(rho*d, h) + emb``,
a norm or attention after the cat, skip first or last and several skips per cat are all exact.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from skipsearch.models.adapter import SkipAdapter, check_points
from skipsearch.models.errors import ModelError
from skipsearch.models.hooks import SkipPoint, rho_lookup, scale_skip_tensor
from skipsearch.models.parametrization import DataParametrization, EpsilonParametrization
from skipsearch.schedule import SkipSchedule

# call(model, x_in, t_or_sigma, labels) -> raw model output
ModelCall = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None"], Any]

_CATS = {torch.cat, torch.concat, torch.concatenate}
MIN_SKIP_AGE = 2  # tensors produced between a skip part and the main part, at least
# Cheap one-input operations a skip may pass through on its way to the cat (resizing it, scaling it, dropout): the
# result keeps the age of its input. Anything with weights (conv, linear, norm) makes a new tensor.
_PASS_THROUGH = {
    torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__truediv__, torch.mul, torch.Tensor.mul,
    torch.Tensor.contiguous, torch.Tensor.clone, torch.Tensor.to, torch.Tensor.float, torch.Tensor.detach,
    torch.nn.functional.interpolate, torch.nn.functional.dropout, torch.Tensor.__getitem__,
}


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
    raise ModelError(f"the model returned {type(out).__name__}; make the factory return a module whose forward "
                     "gives the prediction tensor")


def _channel_cat_parts(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor] | None:
    """The parts of a concatenation of 4-D tensors along channels, else None."""
    if func not in _CATS:
        return None
    parts = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if (isinstance(parts, (list, tuple)) and len(parts) >= 2 and dim in (1, -3)
            and all(isinstance(p, torch.Tensor) and p.ndim == 4 for p in parts)):
        return list(parts)
    return None


@dataclass
class _Cat:
    index: int
    ref: weakref.ref
    stamp: int
    resolution: int
    widths: list[int]
    stamps: list[int]  # when each part was made (through pass-through ops); -1 = an input of the forward
    sources: list[str | None]
    consumer: str | None = None  # first module called after the concatenation
    takes_cat: list[str] = field(default_factory=list)  # modules whose first input is the concatenation itself


class _Recorder(TorchFunctionMode):
    """Stamps every tensor a torch function produces with a counter and records channel concatenations."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0
        self.stamps: dict[int, tuple[weakref.ref, int]] = {}
        self.origins: dict[int, tuple[weakref.ref, int]] = {}  # stamp of the tensor a pass-through chain began at
        self.module_of: dict[int, tuple[weakref.ref, str]] = {}
        self.cats: list[_Cat] = []

    @staticmethod
    def _lookup(table: dict[int, tuple[weakref.ref, Any]], tensor: torch.Tensor) -> Any:
        # Keyed by id with a weak reference: a dead tensor's id may be reused, so check it is the same object.
        entry = table.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def stamp(self, tensor: torch.Tensor) -> int:
        found = self._lookup(self.stamps, tensor)
        return -1 if found is None else found

    def origin(self, tensor: torch.Tensor) -> int:
        found = self._lookup(self.origins, tensor)
        return self.stamp(tensor) if found is None else found

    def cat_of(self, tensor: Any) -> _Cat | None:
        if not isinstance(tensor, torch.Tensor):
            return None
        for cat in reversed(self.cats):
            if cat.ref() is tensor:
                return cat
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        parts = _channel_cat_parts(func, args, kwargs)
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)
                  and not isinstance(a, nn.Parameter)]
        inherit = self.origin(inputs[0]) if func in _PASS_THROUGH and len(inputs) == 1 else None
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and self._lookup(self.stamps, tensor) is None:
                self.clock += 1
                self.stamps[id(tensor)] = (weakref.ref(tensor), self.clock)
                if inherit is not None:
                    self.origins[id(tensor)] = (weakref.ref(tensor), inherit)
        if parts is not None and isinstance(out, torch.Tensor):
            self.cats.append(_Cat(len(self.cats), weakref.ref(out), self.stamp(out), int(out.shape[-2]),
                                  [int(p.shape[1]) for p in parts], [self.origin(p) for p in parts],
                                  [self._lookup(self.module_of, p) for p in parts]))
        return out


class _CatScaler(TorchFunctionMode):
    """During a forward: multiplies the skip parts of the recorded concatenations by rho (or observes them)."""

    def __init__(self, points: Sequence[SkipPoint], rho: Callable[[int], torch.Tensor] | None,
                 observe: Callable[[SkipPoint, torch.Tensor, torch.Tensor], None] | None = None) -> None:
        super().__init__()
        self.by_cat: dict[int, list[SkipPoint]] = {}
        for point in points:
            self.by_cat.setdefault(int(point.cat_index), []).append(point)
        self.rho, self.observe, self.count = rho, observe, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parts = _channel_cat_parts(func, args, kwargs)
        if parts is None:
            return func(*args, **kwargs)
        index, self.count = self.count, self.count + 1
        points = self.by_cat.get(index)
        if points:
            for point in points:
                if point.part >= len(parts) or parts[point.part].shape[1] != point.skip_channels:
                    raise ModelError(f"concatenation #{index} of this forward differs from the probe forward "
                                     f"(skip point {point.index}); the network's forward is not static")
                if self.observe is not None:
                    main = torch.cat([p for j, p in enumerate(parts) if j != point.part], dim=1)
                    self.observe(point, main, parts[point.part])
                if self.rho is not None:
                    parts[point.part] = scale_skip_tensor(parts[point.part], self.rho(point.index))
            if args:
                args = (parts, *args[1:])
            else:
                kwargs = {**kwargs, "tensors": parts}
        return func(*args, **kwargs)


class _ModeDuringForward:
    """Enters a fresh TorchFunctionMode for each forward of ``module``; ``remove()`` takes the hooks away."""

    def __init__(self, module: nn.Module, make_mode: Callable[[], TorchFunctionMode]) -> None:
        self._active: list[TorchFunctionMode] = []

        def before(_module, _args):
            mode = make_mode()
            mode.__enter__()
            self._active.append(mode)

        def after(_module, _args, _output):  # always_call: a failing forward must not leave the mode on
            if self._active:
                self._active.pop().__exit__(None, None, None)

        self._handles: list[RemovableHandle] = [module.register_forward_pre_hook(before),
                                                module.register_forward_hook(after, always_call=True)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class GenericAdapter(SkipAdapter):
    """Any torch UNet that concatenates encoder skips along channels, in modules or functionally.

    ``consumers``: None to detect the skips, or qualified names of modules whose first input is exactly the
    concatenation (the declared route; its older parts are the skips). ``exclude``: concatenation indices to
    leave alone. ``call(model, x_in, t_or_sigma, labels)`` adapts the forward signature (default
    ``model(x, t[, labels])``); it receives what the parametrization gives (timestep, sigma or c_noise).
    """

    def __init__(self, model: nn.Module, *, name: str, parametrization: EpsilonParametrization | DataParametrization,
                 img_shape: tuple[int, int, int], consumers: Sequence[str] | None = None,
                 exclude: Sequence[int] = (), label_dim: int = 0, call: ModelCall | None = None,
                 weights_sha256: str | None = None):
        super().__init__()
        self.net, self.name, self.weights_sha256 = model, name, weights_sha256
        self.parametrization, self.call = parametrization, call or default_call
        self.img_shape, self.label_dim = tuple(img_shape), int(label_dim)
        self.sigma_min, self.sigma_max = parametrization.sigma_min, parametrization.sigma_max
        self.detection_report: list[str] = []
        self.skip_points = self._find_points(consumers, tuple(exclude))

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.parametrization.round_sigma(sigma)

    def _denoise_raw(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype

        def model_fn(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return _output_tensor(self.call(self.net, x_in.to(dtype), t, class_labels))

        return self.parametrization.denoise(model_fn, x, sigma)

    # --- scaling: intercept the concatenations --------------------------------------------------------------------
    def _install_scaling(self, schedule: SkipSchedule) -> list[Any]:
        points = [p for p in self.skip_points if not bool((schedule.rho[:, p.index] == 1.0).all())]
        if not points:
            return []
        rho = rho_lookup(schedule, self.probe)
        return [_ModeDuringForward(self.net, lambda: _CatScaler(points, rho))]

    def _install_observers(self, observe: Callable[[SkipPoint, torch.Tensor, torch.Tensor], None]) -> list[Any]:
        return [_ModeDuringForward(self.net, lambda: _CatScaler(self.skip_points, None, observe))]

    # --- detection --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _find_points(self, consumers: Sequence[str] | None, exclude: tuple[int, ...]) -> list[SkipPoint]:
        modules = dict(self.net.named_modules())
        unknown = [n for n in consumers or () if n not in modules]
        if unknown:
            raise ModelError(f"{self.name}: no module named {', '.join(map(repr, unknown))}")
        recorder = _Recorder()
        received: dict[str, Any] = {}  # declared consumer -> what its first input was

        def pre_hook(module_name: str, _module: nn.Module, args: tuple) -> None:
            first = args[0] if args else None
            stamp = recorder.stamp(first) if isinstance(first, torch.Tensor) else -1
            for cat in recorder.cats:  # the first module fed from the concatenation (or what follows it)
                if cat.consumer is None and stamp >= cat.stamp:
                    cat.consumer = module_name
            cat = recorder.cat_of(first)
            if cat is not None:
                cat.takes_cat.append(module_name)
            if consumers is not None and module_name in consumers and module_name not in received:
                received[module_name] = cat if cat is not None else first

        def post_hook(module_name: str, _module: nn.Module, _args: tuple, out: Any) -> None:
            # Overwritten by each enclosing module, so the source is the outermost module returning the tensor.
            if isinstance(out, torch.Tensor):
                recorder.module_of[id(out)] = (weakref.ref(out), module_name)

        handles = []
        for module_name, module in modules.items():
            if module_name:  # not the root: its forward contains the cats
                handles.append(module.register_forward_pre_hook(lambda m, a, n=module_name: pre_hook(n, m, a)))
                handles.append(module.register_forward_hook(lambda m, a, o, n=module_name: post_hook(n, m, a, o)))
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
        except ModelError:
            raise
        except Exception as exc:  # the user's network did not run with the declared shape/call
            raise ModelError(f"{self.name}: the probe forward failed ({type(exc).__name__}: {exc}); check the "
                             "image shape, label_dim and [call] settings") from None
        finally:
            for handle in handles:
                handle.remove()
        if consumers is not None:
            return self._declared_points(recorder, consumers, received)
        return self._detected_points(recorder, exclude)

    def _skip_parts(self, cat: _Cat, min_age: int) -> tuple[list[int], str]:
        """Indices of the skip parts of ``cat`` and the reason for the verdict."""
        main = max(range(len(cat.stamps)), key=lambda j: cat.stamps[j])
        if cat.stamps[main] < 0:
            return [], "no part was produced in the forward (a concatenation of inputs)"
        skips = [j for j, s in enumerate(cat.stamps) if j != main and s >= 0 and cat.stamps[main] - s >= min_age]
        if not skips:
            youngest = [cat.stamps[main] - s for j, s in enumerate(cat.stamps) if j != main and s >= 0]
            why = (f"its other parts were made just before it ({min(youngest)} tensors)" if youngest
                   else "its other parts are inputs of the forward")
            return [], f"not a skip: {why}"
        ages = [cat.stamps[main] - cat.stamps[j] for j in skips]
        return skips, f"main part {main}, skip part(s) {skips} made {ages} tensors before it"

    def _points_from(self, cats: list[tuple[_Cat, list[int]]]) -> list[SkipPoint]:
        points: list[SkipPoint] = []
        for cat, parts in cats:
            main = max(range(len(cat.stamps)), key=lambda j: cat.stamps[j])
            for j in parts:
                consumer = cat.takes_cat[0] if cat.takes_cat else f"cat #{cat.index} -> {cat.consumer or '?'}"
                points.append(SkipPoint(index=len(points), consumer=consumer, resolution=cat.resolution,
                                        main_channels=sum(cat.widths) - cat.widths[j], skip_channels=cat.widths[j],
                                        skip_first=j < main, source=cat.sources[j], cat_index=cat.index, part=j))
        check_points(points)
        return points

    def _detected_points(self, recorder: _Recorder, exclude: tuple[int, ...]) -> list[SkipPoint]:
        chosen: list[tuple[_Cat, list[int]]] = []
        report = [f"{len(recorder.cats)} channel concatenation(s) of 4-D tensors in the probe forward"]
        for cat in recorder.cats:
            parts, why = self._skip_parts(cat, MIN_SKIP_AGE)
            if cat.index in exclude:
                parts, why = [], "excluded by [skips] exclude"
            where = f"cat #{cat.index} at {cat.resolution}x{cat.resolution}, widths {cat.widths}"
            report.append(f"{where}: {'skip' if parts else 'ignored'} ({why})")
            if parts:
                chosen.append((cat, parts))
        self.detection_report = report
        if not chosen:
            raise ModelError(f"{self.name}: no skip connection found ({report[0]}; "
                             + "; ".join(report[1:4]) + "); declare [skips] consumers or check the model")
        return self._points_from(chosen)

    def _declared_points(self, recorder: _Recorder, consumers: Sequence[str],
                         received: dict[str, Any]) -> list[SkipPoint]:
        chosen: list[tuple[_Cat, list[int]]] = []
        for name in consumers:
            if name not in received:
                raise ModelError(f"{self.name}: {name!r} was not called with a tensor in the probe forward")
            cat = received[name]
            if not isinstance(cat, _Cat):
                raise ModelError(f"{self.name}: the input of {name!r} is not a concatenation itself (something is "
                                 "applied after the cat, e.g. '+ emb'); scaling it would scale more than the skip: "
                                 "use [skips] detect = 'auto'")
            parts, why = self._skip_parts(cat, 1)
            if not parts:
                raise ModelError(f"{self.name}: the concatenation {name!r} receives has no skip part ({why})")
            chosen.append((cat, parts))
        chosen.sort(key=lambda item: item[0].index)
        self.detection_report = [f"declared consumers: {', '.join(consumers)}"]
        return self._points_from(chosen)
