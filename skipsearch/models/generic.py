"""Adapter for any torch UNet (or U-ViT) whose decoder concatenates encoder skips with its main path.

Skips are found by one probe forward under a ``TorchFunctionMode`` that stamps every tensor with the order it was
produced in and records every ``torch.cat`` of 4-D tensors along channels and of 3-D token tensors ``[N, L, D]``
(functional cats inside ``forward`` included). In a concatenation along channels, or along the token *features*
(U-ViT's ``skip_linear(cat([x, skip], dim=-1))``), the part produced last is the decoder's main path; an older part
is an encoder skip when it was produced during the forward and at least ``MIN_SKIP_AGE`` tensors before the main part
(an encoder tensor waits while the decoder block before the cat runs; parts made side by side are not skips). Never
skips: concatenations along the *token* axis (``cat((time_token, x), dim=1)`` adds tokens), and parts that derive
from the network input by parameter-free operations (EDM2's ``cat([x, ones_like(x[:, :1])])``: the recorder tracks
that lineage, counting what the parametrisation computes from x and sigma as input). ``detection_report`` says, for
every concatenation, what was taken and why.

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


# (rank, non-negative dim) of a recorded concatenation -> its axis. Only "channels" and "features" can hold skips.
_AXES = {(4, 1): "channels", (3, 2): "features", (3, 1): "tokens"}
SKIP_AXES = ("channels", "features")


@dataclass
class _CatCall:
    """One recorded ``torch.cat`` call: its parts, the dim they are joined along and what that axis is."""

    parts: list[torch.Tensor]
    dim: int
    axis: str

    def width(self, part: torch.Tensor) -> int:
        return int(part.shape[self.dim])


def _cat_call(func: Any, args: tuple, kwargs: dict) -> _CatCall | None:
    """A concatenation of 4-D tensors along channels or of 3-D token tensors along either axis, else None."""
    if func not in _CATS:
        return None
    parts = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if (not isinstance(parts, (list, tuple)) or len(parts) < 2 or isinstance(dim, bool) or not isinstance(dim, int)
            or not all(isinstance(p, torch.Tensor) for p in parts) or len({p.ndim for p in parts}) != 1):
        return None
    ndim = parts[0].ndim
    axis = _AXES.get((ndim, dim % ndim)) if -ndim <= dim < ndim else None
    return None if axis is None else _CatCall(list(parts), dim, axis)


def _tensor_args(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Every tensor argument, including those inside a list or tuple argument (the parts of a cat)."""
    found = []
    for arg in (*args, *kwargs.values()):
        for item in arg if isinstance(arg, (list, tuple)) else (arg,):
            if isinstance(item, torch.Tensor):
                found.append(item)
    return found


@dataclass
class _Cat:
    index: int
    ref: weakref.ref
    stamp: int
    axis: str  # "channels" (4-D), "features" or "tokens" (3-D [N, L, D])
    resolution: int  # height of a 4-D cat; the token count L of a 3-D one
    widths: list[int]
    stamps: list[int]  # when each part was made (through pass-through ops); -1 = an input of the forward
    from_input: list[bool]  # the part derives from the forward's inputs by parameter-free operations
    sources: list[str | None]
    consumer: str | None = None  # first module called after the concatenation
    takes_cat: list[str] = field(default_factory=list)  # modules whose first input is the concatenation itself


class _Recorder(TorchFunctionMode):
    """Stamps every tensor a torch function produces with a counter, tracks which tensors derive from the inputs
    without parameters, and records concatenations."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0
        self.stamps: dict[int, tuple[weakref.ref, int]] = {}
        self.origins: dict[int, tuple[weakref.ref, int]] = {}  # stamp of the tensor a pass-through chain began at
        self.derived: dict[int, tuple[weakref.ref, bool]] = {}  # produced from inputs with no nn.Parameter
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

    def from_input(self, tensor: torch.Tensor) -> bool:
        """An input of the forward (made before the probe: x, sigma, labels, constants) or derived from inputs by
        parameter-free operations. Parameters and what they touch are not."""
        if isinstance(tensor, nn.Parameter):
            return False
        found = self._lookup(self.derived, tensor)
        return self.stamp(tensor) < 0 if found is None else found

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
        call = _cat_call(func, args, kwargs)
        tensors = _tensor_args(args, kwargs)
        derived = all(self.from_input(a) for a in tensors)  # computed before the outputs are stamped
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)
                  and not isinstance(a, nn.Parameter)]
        inherit = self.origin(inputs[0]) if func in _PASS_THROUGH and len(inputs) == 1 else None
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(tensor, torch.Tensor):
                continue
            # Always rewritten: an in-place op with a parameter returns its (already stamped) input.
            self.derived[id(tensor)] = (weakref.ref(tensor), derived)
            if self._lookup(self.stamps, tensor) is None:
                self.clock += 1
                self.stamps[id(tensor)] = (weakref.ref(tensor), self.clock)
                if inherit is not None:
                    self.origins[id(tensor)] = (weakref.ref(tensor), inherit)
        if call is not None and isinstance(out, torch.Tensor):
            resolution = int(out.shape[-2] if call.axis == "channels" else out.shape[1])
            self.cats.append(_Cat(len(self.cats), weakref.ref(out), self.stamp(out), call.axis, resolution,
                                  [call.width(p) for p in call.parts], [self.origin(p) for p in call.parts],
                                  [self.from_input(p) for p in call.parts],
                                  [self._lookup(self.module_of, p) for p in call.parts]))
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
        call = _cat_call(func, args, kwargs)
        if call is None:
            return func(*args, **kwargs)
        index, self.count = self.count, self.count + 1  # counts every recorded cat, as the recorder numbers them
        points = self.by_cat.get(index)
        if points:
            parts = call.parts
            for point in points:
                if point.part >= len(parts) or call.width(parts[point.part]) != point.skip_channels:
                    raise ModelError(f"concatenation #{index} of this forward differs from the probe forward "
                                     f"(skip point {point.index}); the network's forward is not static")
                if self.observe is not None:
                    main = torch.cat([p for j, p in enumerate(parts) if j != point.part], dim=call.dim)
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
    """Any torch UNet (channels) or U-ViT (token features) that concatenates encoder skips, in modules or
    functionally.

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
            return self._declared_points(recorder, consumers, received, exclude)
        return self._detected_points(recorder, exclude)

    def _skip_parts(self, cat: _Cat, min_age: int) -> tuple[list[int], str]:
        """Indices of the skip parts of ``cat`` and the reason for the verdict."""
        if cat.axis == "tokens":
            return [], ("not a skip: a concatenation along the token axis (it adds tokens, such as a time or label "
                        "token; a long skip joins token features, dim -1)")
        if all(cat.from_input):
            return [], ("not a skip: its parts derive from the network input (inputs of the forward, or computed "
                        "from them without any parameter, like cat([x, ones_like(x[:, :1])]); rho would scale "
                        "the input)")
        main = max(range(len(cat.stamps)), key=lambda j: cat.stamps[j])
        if cat.stamps[main] < 0:
            return [], "no part was produced in the forward (a concatenation of inputs and parameters)"
        older = [j for j in range(len(cat.stamps)) if j != main and cat.stamps[j] >= 0 and not cat.from_input[j]]
        skips = [j for j in older if cat.stamps[main] - cat.stamps[j] >= min_age]
        if not skips:
            why = (f"its other parts were made just before it ({min(cat.stamps[main] - cat.stamps[j] for j in older)}"
                   " tensors)" if older else "its other parts are the network input or derive from it")
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
                                        skip_first=j < main, source=cat.sources[j], cat_index=cat.index, part=j,
                                        tokens=cat.axis == "features"))
        check_points(points)
        return points

    def _auto_choice(self, recorder: _Recorder,
                     exclude: tuple[int, ...]) -> tuple[list[tuple[_Cat, list[int]]], list[str]]:
        """The concatenations automatic detection takes (with their skip parts) and the report of every one."""
        counts = {axis: sum(cat.axis == axis for cat in recorder.cats) for axis in _AXIS_WORDS}
        seen = ", ".join(f"{n} {_AXIS_WORDS[axis]}" for axis, n in counts.items() if n) or "none"
        report = [f"{len(recorder.cats)} concatenation(s) in the probe forward ({seen})"]
        if counts["features"]:
            report.append("token skips ([N, L, D] joined along features): 'res' is the token count L, extra "
                          "(time, label) tokens included")
        chosen: list[tuple[_Cat, list[int]]] = []
        for cat in recorder.cats:
            parts, why = self._skip_parts(cat, MIN_SKIP_AGE)
            if cat.index in exclude:
                parts, why = [], "excluded by [skips] exclude"
            report.append(f"{_where(cat)}: {'skip' if parts else 'ignored'} ({why})")
            if parts:
                chosen.append((cat, parts))
        return chosen, report

    def _declarable(self, recorder: _Recorder) -> list[str]:
        """Modules whose first input is a concatenation with a skip part: what [skips] consumers can name."""
        return [cat.takes_cat[0] for cat in recorder.cats if cat.takes_cat and self._skip_parts(cat, 1)[0]]

    def _no_route(self) -> str:
        return ("no concatenation in this forward has an encoder part to scale, so neither [skips] route applies; "
                "wrap the network in your own SkipAdapter (README 'Bring your own model')")

    def _detected_points(self, recorder: _Recorder, exclude: tuple[int, ...]) -> list[SkipPoint]:
        chosen, report = self._auto_choice(recorder, exclude)
        self.detection_report = report
        if not chosen:
            declarable = self._declarable(recorder)
            route = (f"if those are the skips, declare them: [skips] detect = 'declared', consumers = {declarable}"
                     if declarable else self._no_route())
            raise ModelError(f"{self.name}: no skip connection found ({'; '.join(report[:4])}); {route}")
        return self._points_from(chosen)

    def _declared_route(self, recorder: _Recorder, exclude: tuple[int, ...]) -> str:
        """The route that works on this model, for an error in the declared one."""
        chosen, _ = self._auto_choice(recorder, exclude)
        if chosen:
            count = sum(len(parts) for _, parts in chosen)
            return (f"[skips] detect = 'auto' finds {count} skip point(s) here (it scales the skip as it enters "
                    "the cat, whatever follows it; see 'skipsearch skip-points'): use it")
        declarable = self._declarable(recorder)
        return f"modules whose input is a concatenation with a skip: {declarable}" if declarable else self._no_route()

    def _not_a_cat(self, recorder: _Recorder, name: str) -> str:
        """What the declared consumer ``name`` received instead of a concatenation."""
        before = [cat for cat in recorder.cats if cat.consumer == name]
        if before:
            return (f"the input of {name!r} is not a concatenation itself but computed from concatenation "
                    f"#{before[0].index} (an operation runs in between, e.g. '+ emb' or a norm), so scaling it "
                    "would scale more than the skip")
        return (f"the input of {name!r} is not a concatenation (no torch.cat of 4-D tensors along channels or of "
                "[N, L, D] tokens feeds it)")

    def _declared_points(self, recorder: _Recorder, consumers: Sequence[str], received: dict[str, Any],
                         exclude: tuple[int, ...]) -> list[SkipPoint]:
        chosen: list[tuple[_Cat, list[int]]] = []
        for name in consumers:
            if name not in received:
                problem = f"{name!r} was not called with a tensor in the probe forward"
            elif not isinstance(received[name], _Cat):
                problem = self._not_a_cat(recorder, name)
            else:
                parts, why = self._skip_parts(received[name], 1)
                if parts:
                    chosen.append((received[name], parts))
                    continue
                problem = f"the concatenation {name!r} receives has no skip part ({why})"
            raise ModelError(f"{self.name}: {problem}; {self._declared_route(recorder, exclude)}")
        chosen.sort(key=lambda item: item[0].index)
        self.detection_report = [f"declared consumers: {', '.join(consumers)}"]
        return self._points_from(chosen)


_AXIS_WORDS = {"channels": "of 4-D tensors along channels", "features": "of [N, L, D] tokens along features",
               "tokens": "along the token axis"}


def _where(cat: _Cat) -> str:
    """Where a concatenation is, for the detection report."""
    if cat.axis == "channels":
        return f"cat #{cat.index} at {cat.resolution}x{cat.resolution}, widths {cat.widths}"
    if cat.axis == "features":
        return f"cat #{cat.index} of {cat.resolution} tokens along features, widths {cat.widths}"
    return f"cat #{cat.index} along the token axis, token counts {cat.widths}"
