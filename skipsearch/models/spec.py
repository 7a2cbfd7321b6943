"""Model specs: how a user names a model, and the model file (``PATH.toml``) that describes one.

A spec is one of: a registered name (``edm``), ``PATH.toml`` (a model file), ``package.module:callable`` or
``file.py:callable`` (a factory returning an ``nn.Module`` or a ``SkipAdapter``), ``diffusers:DIR_OR_ID``. Parsing
is torch-free; :mod:`skipsearch.models.loading` builds the adapter.

Model file schema (every field but ``model.name`` and one way to build the network is optional)::

    [model]
    name = "my-ddpm"                 # how studies, the best table and schedule JSON name it
    description = "..."
    dataset = "mnist"                # the proxy's reference data set
    factory = "unet.py:build"        # or package.module:callable; or diffusers = "DIR"; or edm = "net.pkl"
    weights = "weights.safetensors"  # for a factory: safetensors, or a torch state dict (.pt/.pth/.bin)
    weights_key = "ema"              # where a training checkpoint keeps the state dict (dotted: "ema.model");
                                     # found automatically when one common key (state_dict, ema, ...) holds one
    weights_prefix = "module."       # keep the keys under this prefix, stripped; module. / _orig_mod. / network. /
                                     # model. / net. are stripped automatically when that makes the keys fit
    path = "src"                     # folder(s) (or a list) put on sys.path, besides this file's folder, while the
                                     # factory is imported and called (for 'from net.base import ...')
    [model.kwargs]                   # keyword arguments of the factory
    [parametrization]
    type = "epsilon"                 # epsilon | v_prediction | sample (discrete VP); denoiser | edm | vp | ve |
                                     # consistency (f(x, sigma_min) = x; sampled by onestep / multistep)
    beta_schedule = "linear"         # linear | scaled_linear | squaredcos_cap_v2 (cosine) | given
    beta_start = 1e-4
    beta_end = 0.02
    num_timesteps = 1000
    alphas_cumprod = [...]           # with beta_schedule = "given": a list, or a .npy file
    sigma_min = 0.002                # continuous types
    sigma_max = 80.0
    sigma_data = 0.5                 # edm, consistency
    c_noise = "edm"                  # consistency: how the network sees sigma, edm (ln sigma / 4) or cm
                                     # (1000 * 0.25 * ln(sigma + 1e-44), the consistency-models repository)
    [data]
    range = [-1, 1]                  # or mean = [...] and std = [...] per channel
    shape = [1, 28, 28]
    label_dim = 0
    [call]
    time = "timestep"                # timestep (int) | timestep_float | scaled (t / T); continuous: sigma or c_noise
    time_shape = "N"                 # N: [N]; N1: [N, 1]
    labels = "none"                  # none | one_hot | index
    [skips]
    detect = "auto"                  # auto: every concatenation of an encoder tensor; declared: consumers below
                                     # (4-D maps along channels, or [N, L, D] tokens along features as in U-ViT)
    consumers = []                   # declared: modules whose input is exactly the concatenation
    exclude = []                     # auto: concatenation indices (see 'skipsearch skip-points') to leave alone
    [latent]                         # a latent model: the sampler draws latents, the proxy sees decoded images
    decoder = "diffusers:vae"        # diffusers AutoencoderKL/VQModel folder (relative to this file) or
                                     # module:callable (a LatentDecoder, an autoencoder module or a callable)
    scaling_factor = 0.18215         # latents = (encode(x) - shift) * scaling_factor; default: the VAE config's
    shift = 0.0                      # default: the VAE config's shift_factor, else 0
    shape = [4, 32, 32]              # the latent shape (the sampler's state); default: the UNet's
    pixel_shape = [3, 256, 256]      # what the proxy sees; default: from the VAE config
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skipsearch.models.errors import ModelError

DISCRETE_TYPES = ("epsilon", "v_prediction", "sample")
CONTINUOUS_TYPES = ("denoiser", "edm", "vp", "ve", "consistency")
CONSISTENCY_NOISE = ("edm", "cm")  # as skipsearch.models.parametrization (which needs torch)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "given")
TIME_FORMS = ("timestep", "timestep_float", "scaled", "sigma", "c_noise")
TIME_SHAPES = ("N", "N1")
LABEL_FORMS = ("none", "one_hot", "index")
_SECTIONS = {
    "model": {"name", "description", "dataset", "factory", "diffusers", "edm", "weights", "weights_key",
              "weights_prefix", "path", "kwargs"},
    "parametrization": {"type", "beta_schedule", "beta_start", "beta_end", "num_timesteps", "alphas_cumprod",
                        "sigma_min", "sigma_max", "sigma_data", "c_noise"},
    "data": {"range", "mean", "std", "shape", "label_dim"},
    "call": {"time", "time_shape", "labels"},
    "skips": {"detect", "consumers", "exclude"},
    "latent": {"decoder", "scaling_factor", "shift", "shape", "pixel_shape"},
}


@dataclass(frozen=True)
class Parametrization:
    type: str = "epsilon"
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000
    alphas_cumprod: list[float] | str | None = None
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    c_noise: str = "edm"

    @property
    def discrete(self) -> bool:
        return self.type in DISCRETE_TYPES


@dataclass(frozen=True)
class DataSpec:
    range: tuple[float, float] | None = (-1.0, 1.0)
    mean: list[float] | None = None
    std: list[float] | None = None
    shape: tuple[int, int, int] | None = None
    label_dim: int = 0


@dataclass(frozen=True)
class CallSpec:
    time: str | None = None  # default: timestep for discrete types, sigma / c_noise for continuous ones
    time_shape: str = "N"
    labels: str = "none"


@dataclass(frozen=True)
class SkipsSpec:
    detect: str = "auto"
    consumers: tuple[str, ...] = ()
    exclude: tuple[int, ...] = ()


@dataclass(frozen=True)
class LatentSpec:
    """The ``[latent]`` section: the autoencoder that decodes a latent model's samples."""

    decoder: str
    scaling_factor: float | None = None
    shift: float | None = None
    shape: tuple[int, int, int] | None = None
    pixel_shape: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ModelFile:
    """A parsed model file; ``folder`` resolves its relative paths."""

    name: str
    folder: Path
    source: str
    description: str = ""
    dataset: str | None = None
    factory: str | None = None
    diffusers: str | None = None
    edm: str | None = None
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights_key: str | None = None
    weights_prefix: str | None = None
    import_paths: tuple[str, ...] = ()  # [model] path
    parametrization: Parametrization = Parametrization()
    data: DataSpec = DataSpec()
    call: CallSpec = CallSpec()
    skips: SkipsSpec = SkipsSpec()
    latent: LatentSpec | None = None
    given: frozenset[str] = frozenset()  # "section.field" names present in the file

    def path(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.folder / path

    def digest(self) -> str:
        """Everything in the file that changes outputs except the weights themselves (their sha256 is separate)."""
        parametrization = asdict(self.parametrization)
        if self.parametrization.type != "consistency":
            parametrization.pop("c_noise")  # only consistency models read it (older digests hold)
        parts = {"parametrization": parametrization, "data": asdict(self.data),
                 "call": asdict(self.call), "skips": asdict(self.skips), "kwargs": self.kwargs}
        for key in ("weights_key", "weights_prefix", "latent"):  # only when set (older digests hold)
            if getattr(self, key):
                parts[key] = asdict(self.latent) if key == "latent" else getattr(self, key)
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fail(source: str, message: str) -> ModelError:
    return ModelError(f"{source}: {message}")


def _typed(source: str, where: str, value: Any, kinds: tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        raise _fail(source, f"{where} must be {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise _fail(source, f"{where} must be {what}, got {value!r}")
    return value


def _choice(source: str, where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(source, f"{where} = {value!r} is not one of {', '.join(choices)}")
    return value


def parse_model_file(path: str | Path) -> ModelFile:
    """Read and validate a model file; every problem is one line naming the file and the field."""
    from skipsearch.inputs import read_user_toml
    path = Path(path)
    source = str(path)
    try:
        data = read_user_toml(path, "model file", error=ModelError)  # a regular file of sensible size only
    except IsADirectoryError:
        raise ModelError(f"model file {path} is a folder; give a PATH.toml file") from None
    for section, values in data.items():
        if section not in _SECTIONS:
            raise _fail(source, f"unknown section [{section}]; expected {', '.join(f'[{s}]' for s in _SECTIONS)}")
        if not isinstance(values, dict):
            raise _fail(source, f"[{section}] must be a table")
        unknown = set(values) - _SECTIONS[section]
        if unknown:
            raise _fail(source, f"[{section}] has no field {sorted(unknown)[0]!r}; known: "
                                f"{', '.join(sorted(_SECTIONS[section]))}")
    given = frozenset(f"{s}.{k}" for s, values in data.items() for k in values)
    model = data.get("model", {})
    if "name" not in model:
        raise _fail(source, "[model] name is missing")
    name = _typed(source, "[model] name", model["name"], (str,), "a non-empty string")
    if not name.strip() or any(c in name for c in "/\\\n"):
        raise _fail(source, f"[model] name {name!r} must be a non-empty string without slashes")
    routes = [key for key in ("factory", "diffusers", "edm") if key in model]
    if len(routes) != 1:
        raise _fail(source, "[model] needs exactly one of factory = 'module:callable', diffusers = 'DIR' or "
                            f"edm = 'FILE' (found {', '.join(routes) or 'none'})")
    for key in ("description", "dataset", "factory", "diffusers", "edm", "weights", "weights_key",
                "weights_prefix"):
        if key in model:
            _typed(source, f"[model] {key}", model[key], (str,), "a string")
    for key in ("weights_key", "weights_prefix"):
        if key in model and "factory" not in model:
            raise _fail(source, f"[model] {key} goes with factory = '...' and weights = '...'")
    paths = model.get("path", [])
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.strip() for p in paths):
        raise _fail(source, f"[model] path must be a folder or a list of folders, got {model['path']!r}")
    kwargs = _typed(source, "[model] kwargs", model.get("kwargs", {}), (dict,), "a table")
    if "factory" in model and ":" not in model["factory"]:
        raise _fail(source, f"[model] factory {model['factory']!r} must be 'package.module:callable' or "
                            "'file.py:callable'")
    parametrization = _parametrization(source, data.get("parametrization", {}))
    call = _call(source, data.get("call", {}))
    allowed = ("timestep", "timestep_float", "scaled") if parametrization.discrete else \
        (("sigma",) if parametrization.type == "denoiser" else ("c_noise",))
    if call.time is not None and call.time not in allowed:
        raise _fail(source, f"[call] time = {call.time!r} does not go with [parametrization] type = "
                            f"{parametrization.type!r}; use {' or '.join(allowed)}")
    return ModelFile(name=name, folder=path.resolve().parent, source=source,
                     description=model.get("description", ""), dataset=model.get("dataset"),
                     factory=model.get("factory"), diffusers=model.get("diffusers"), edm=model.get("edm"),
                     weights=model.get("weights"), kwargs=kwargs, weights_key=model.get("weights_key") or None,
                     weights_prefix=model.get("weights_prefix") or None, import_paths=tuple(paths),
                     parametrization=parametrization, data=_data(source, data.get("data", {})), call=call,
                     skips=_skips(source, data.get("skips", {})), latent=_latent(source, data.get("latent")),
                     given=given)


def _number(source: str, where: str, value: Any, positive: bool = True) -> float:
    _typed(source, where, value, (int, float), "a number")
    if positive and not value > 0:
        raise _fail(source, f"{where} must be positive, got {value}")
    return float(value)


def _parametrization(source: str, p: dict[str, Any]) -> Parametrization:
    kind = _choice(source, "[parametrization] type", p.get("type", "epsilon"), DISCRETE_TYPES + CONTINUOUS_TYPES)
    schedule = _choice(source, "[parametrization] beta_schedule", p.get("beta_schedule", "linear"), BETA_SCHEDULES)
    values: dict[str, Any] = {"type": kind, "beta_schedule": schedule}
    if "c_noise" in p:
        values["c_noise"] = _choice(source, "[parametrization] c_noise", p["c_noise"], CONSISTENCY_NOISE)
    for key in ("beta_start", "beta_end", "sigma_min", "sigma_max", "sigma_data"):
        if key in p:
            values[key] = _number(source, f"[parametrization] {key}", p[key])
    if "num_timesteps" in p:
        steps = _typed(source, "[parametrization] num_timesteps", p["num_timesteps"], (int,), "an integer")
        if steps < 2:
            raise _fail(source, f"[parametrization] num_timesteps must be at least 2, got {steps}")
        values["num_timesteps"] = steps
    if schedule == "given":
        abar = p.get("alphas_cumprod")
        if abar is None:
            raise _fail(source, "[parametrization] beta_schedule = 'given' needs alphas_cumprod "
                                "(a list or .npy file)")
        if not isinstance(abar, (str, list)):
            raise _fail(source, "[parametrization] alphas_cumprod must be a list of numbers or a .npy file name")
        values["alphas_cumprod"] = abar
    out = Parametrization(**values)
    if out.beta_start >= out.beta_end and out.discrete and schedule != "given":
        raise _fail(source, f"[parametrization] beta_start {out.beta_start} must be below beta_end {out.beta_end}")
    if out.sigma_min >= out.sigma_max:
        raise _fail(source, f"[parametrization] sigma_min {out.sigma_min} must be below sigma_max {out.sigma_max}")
    return out


def _data(source: str, d: dict[str, Any]) -> DataSpec:
    values: dict[str, Any] = {}
    if "range" in d and ("mean" in d or "std" in d):
        raise _fail(source, "[data] give either range = [lo, hi] or mean/std, not both")
    if "range" in d:
        rng = d["range"]
        if (not isinstance(rng, list) or len(rng) != 2 or not all(isinstance(v, (int, float))
                                                                  and not isinstance(v, bool) for v in rng)
                or not rng[0] < rng[1]):
            raise _fail(source, f"[data] range must be [lo, hi] with lo < hi, e.g. [-1, 1] or [0, 1]; got {rng!r}")
        values["range"] = (float(rng[0]), float(rng[1]))
    if "mean" in d or "std" in d:
        mean, std = d.get("mean"), d.get("std")
        ok = all(isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in (mean, std))
        if not ok or len(mean) != len(std) or any(not s > 0 for s in std):
            raise _fail(source, "[data] mean and std must be lists of numbers, one per channel, std > 0")
        values.update(range=None, mean=[float(v) for v in mean], std=[float(v) for v in std])
    if "shape" in d:
        shape = d["shape"]
        if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise _fail(source, f"[data] shape must be [channels, height, width], got {shape!r}")
        values["shape"] = tuple(shape)
    if "label_dim" in d:
        label_dim = _typed(source, "[data] label_dim", d["label_dim"], (int,), "an integer")
        if label_dim < 0:
            raise _fail(source, f"[data] label_dim must be >= 0, got {label_dim}")
        values["label_dim"] = label_dim
    out = DataSpec(**values)
    if out.mean is not None and out.shape is not None and len(out.mean) != out.shape[0]:
        raise _fail(source, f"[data] mean has {len(out.mean)} values but shape has {out.shape[0]} channels")
    return out


def _call(source: str, c: dict[str, Any]) -> CallSpec:
    time = c.get("time")
    if time is not None:
        _choice(source, "[call] time", time, TIME_FORMS)
    shape = _choice(source, "[call] time_shape", c.get("time_shape", "N"), TIME_SHAPES)
    return CallSpec(time=time, time_shape=shape,
                    labels=_choice(source, "[call] labels", c.get("labels", "none"), LABEL_FORMS))


def _skips(source: str, s: dict[str, Any]) -> SkipsSpec:
    detect = _choice(source, "[skips] detect", s.get("detect", "auto"), ("auto", "declared"))
    consumers = s.get("consumers", [])
    if not isinstance(consumers, list) or not all(isinstance(c, str) for c in consumers):
        raise _fail(source, "[skips] consumers must be a list of module names")
    exclude = s.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(i, int) and i >= 0 for i in exclude):
        raise _fail(source, "[skips] exclude must be a list of concatenation indices")
    if detect == "declared" and not consumers:
        raise _fail(source, "[skips] detect = 'declared' needs consumers = [...] (module names)")
    return SkipsSpec(detect=detect, consumers=tuple(consumers), exclude=tuple(exclude))


def _shape(source: str, where: str, shape: Any) -> tuple[int, int, int]:
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 and v > 0 for v in shape):
        raise _fail(source, f"{where} must be [channels, height, width], got {shape!r}")
    return tuple(shape)  # type: ignore[return-value]


def _latent(source: str, section: dict[str, Any] | None) -> LatentSpec | None:
    if section is None:
        return None
    decoder = section.get("decoder")
    if not isinstance(decoder, str) or not (decoder.startswith("diffusers:") or ":" in decoder):
        raise _fail(source, f"[latent] decoder must be 'diffusers:DIR' or a factory 'module:callable', got "
                            f"{decoder!r}")
    values: dict[str, Any] = {"decoder": decoder}
    if "scaling_factor" in section:
        values["scaling_factor"] = _number(source, "[latent] scaling_factor", section["scaling_factor"])
    if "shift" in section:
        values["shift"] = _number(source, "[latent] shift", section["shift"], positive=False)
    for key in ("scaling_factor", "shift"):
        if key in values and not -1e30 < values[key] < 1e30:  # inf and nan: TOML can spell them
            raise _fail(source, f"[latent] {key} must be a finite number, got {values[key]}")
    for key in ("shape", "pixel_shape"):
        if key in section:
            values[key] = _shape(source, f"[latent] {key}", section[key])
    return LatentSpec(**values)


# --------------------------------------------------------------------------------------------------------------------
# The four spec forms.


def spec_kind(spec: str) -> str:
    """'file' (PATH.toml), 'diffusers', 'factory' (module:callable) or 'name'."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"--model {spec!r}: give a model name, a model file PATH.toml, package.module:factory or "
                         "diffusers:DIR")
    if spec.endswith(".toml"):
        return "file"
    if spec.startswith("diffusers:"):
        return "diffusers"
    if ":" in spec:
        return "factory"
    return "name"


def model_key(spec: str) -> str:
    """The model name a spec loads under (what studies, the best table and schedule JSON carry); no torch."""
    kind = spec_kind(spec)
    if kind == "file":
        return parse_model_file(spec).name
    if kind == "diffusers":
        target = spec.removeprefix("diffusers:").rstrip("/\\")
        return "diffusers:" + (Path(target).name if Path(target).expanduser().exists() else target)
    return spec
