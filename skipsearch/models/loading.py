"""From a model spec to a skip-tunable adapter: registered names, model files, factories and diffusers folders.

One way in for every command and for Python (``load_model``). See :mod:`skipsearch.models.spec` for the forms and
the model-file schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipsearch.data import DataRange
from skipsearch.inputs import read_user_text
from skipsearch.models.adapter import BatchCalibration, SkipAdapter
from skipsearch.models.edm import EDMAdapter
from skipsearch.models.edm2 import EDM2Adapter, is_edm2
from skipsearch.models.errors import ModelError
from skipsearch.models.parametrization import (
    DataParametrization,
    EpsilonParametrization,
    PreconditionedParametrization,
    alphas_cumprod_for,
)
from skipsearch.models.sources import diffusers_weights_sha, import_callable, on_sys_path
from skipsearch.models.spec import ModelFile, model_key, parse_model_file, spec_kind
from skipsearch.registry import Registry
from skipsearch.settings import Settings

# The repository's models/ folder (next to studies/), shipped inside the package as skipsearch/models/files.
MODEL_FILES_DIR = Path(__file__).resolve().parent / "files"
BUNDLED_LDM = Path(__file__).resolve().parents[1] / "assets" / "ldm_mnist"  # a latent diffusers pipeline folder


@dataclass(frozen=True)
class LoadRequest:
    checkpoint: Path | None
    trust_pickle: bool
    download: bool
    settings: Settings


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: what ``skipsearch models`` lists and how to load it."""

    name: str
    description: str
    num_skip_points: int | None
    source: str
    load: Callable[[LoadRequest], SkipAdapter]


MODELS: Registry[ModelEntry] = Registry("model", ModelError)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    num_skip_points: int | None
    source: str


# --------------------------------------------------------------------------------------------------------------------
# Weights.


def load_network_file(path: str | os.PathLike, *, trust_pickle: bool = False):
    """An EDM network from a ``.safetensors`` file (ours) or an official ``.pkl`` (needs ``trust_pickle``)."""
    from skipsearch.models.checkpoints import CheckpointError, load_checkpoint
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    if path.suffix not in (".pkl", ".safetensors"):
        raise ModelError(f"unsupported checkpoint type {path.suffix!r} ({path}); use an EDM .pkl or a skipsearch "
                         ".safetensors file")
    try:
        return load_checkpoint(path, trust_pickle=trust_pickle)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None


def edm_adapter(path: Path, name: str, *, trust_pickle: bool, dataset: str | None = None) -> EDMAdapter:
    """An EDM or EDM2 network file (.safetensors, or a trusted .pkl) as an adapter named ``name``."""
    from skipsearch.models.checkpoints import file_sha256
    net = load_network_file(path, trust_pickle=trust_pickle)
    family = EDM2Adapter if is_edm2(net) else EDMAdapter
    adapter = family(net, name, weights_sha256=file_sha256(path))
    adapter.dataset = dataset
    return adapter


def read_state_dict(path: Path, key: str | None = None, *, where: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file loaded with ``weights_only=True`` (no code runs).

    ``key`` names the state dict inside a training checkpoint (see ``[model] weights_key``); ``where`` names the
    file in errors (the model file and field).
    """
    where = where or str(path)
    if not path.is_file():
        raise ModelError(f"{where}: weights not found: {path}")
    if path.suffix == ".pkl":
        raise ModelError(f"{where}: .pkl weights go with [model] edm = '...' (EDM networks) and --trust-pickle; "
                         "a factory's weights must be .safetensors or a torch state dict (.pt/.pth/.bin)")
    if path.suffix == ".safetensors":
        if key:
            raise ModelError(f"{where}: a .safetensors file is flat and has no weights_key {key!r}; use "
                             "weights_prefix to keep the keys under a prefix")
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{where}: cannot read {path}: {exc}") from None
    from skipsearch.models.checkpoints import CheckpointError, load_torch_state_dict
    try:
        return load_torch_state_dict(path, key, where=where, field="[model] weights_key")
    except CheckpointError as exc:
        message = str(exc)
        raise ModelError(message if message.startswith(where) else f"{where}: {message}") from None


def _fill(net: nn.Module, state: dict[str, torch.Tensor], source: Path | str, prefix: str | None = None) -> None:
    """Load ``state`` into ``net`` strictly, after stripping a wrapper prefix (``module.``, ``_orig_mod.``, ...)
    when that makes the keys fit, or the keys under ``prefix`` (``[model] weights_prefix``)."""
    from skipsearch.models.checkpoints import CheckpointError
    from skipsearch.models.checkpoints.state_dicts import fit_state_dict
    reference = net.state_dict()
    try:
        state, _ = fit_state_dict(state, reference, prefix)
    except CheckpointError as exc:
        raise ModelError(f"{source}: {exc}") from None
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    shapes = [k for k in state if k in reference and state[k].shape != reference[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys)
        heads = {k.split(".", 1)[0] for k in state}
        hint = f" (every key starts with '{heads.pop()}.': set [model] weights_prefix?)" if len(heads) == 1 and \
            all("." in k for k in state) else ""
        raise ModelError(f"{source}: the weights do not fit the network: {detail}{hint}")
    net.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------------------------
# The routes.


def _call_for(file: ModelFile) -> Callable:
    """``call(model, x_in, t, labels)`` from the file's [call] section."""
    form = file.call.time or ("timestep" if file.parametrization.discrete else
                              "sigma" if file.parametrization.type == "denoiser" else "c_noise")
    num_timesteps = file.parametrization.num_timesteps

    def call(model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> Any:
        if form == "timestep_float":
            t = t.to(x.dtype)
        elif form == "scaled":
            t = t.to(x.dtype) / num_timesteps
        elif form in ("sigma", "c_noise"):
            t = t.to(x.dtype)
        if file.call.time_shape == "N1":
            t = t.reshape(-1, 1)
        if labels is None or file.call.labels == "none":
            return model(x, t)
        return model(x, t, labels.argmax(dim=1) if file.call.labels == "index" else labels)

    return call


def _parametrization_for(file: ModelFile, scheduler: Any = None):
    p = file.parametrization
    if not p.discrete:
        if p.type == "denoiser":
            return DataParametrization(p.sigma_min, p.sigma_max)
        return PreconditionedParametrization(p.type, p.sigma_min, p.sigma_max, p.sigma_data, p.c_noise)
    if scheduler is not None and "parametrization.beta_schedule" not in file.given:
        kind = p.type if "parametrization.type" in file.given else None
        return EpsilonParametrization.from_scheduler(scheduler, kind)
    if p.beta_schedule == "given":
        abar = p.alphas_cumprod
        if isinstance(abar, str):
            import numpy as np
            path = file.path(abar)
            try:
                abar = np.load(path)
            except (OSError, ValueError) as exc:
                raise ModelError(f"{file.source}: cannot read alphas_cumprod {path}: {exc}") from None
        alphas = torch.as_tensor(abar, dtype=torch.float64)
    else:
        alphas = alphas_cumprod_for(p.beta_schedule, beta_start=p.beta_start, beta_end=p.beta_end,
                                    num_timesteps=p.num_timesteps)
    try:
        return EpsilonParametrization(alphas, p.type)
    except ValueError as exc:
        raise ModelError(f"{file.source}: [parametrization] {exc}") from None


def _weights_for(file: ModelFile, request: LoadRequest) -> tuple[Path | None, str]:
    """The weights file of a factory model file (or --checkpoint) and how errors name it; checked to exist."""
    if request.checkpoint is not None:
        where = f"{file.source}: --checkpoint {str(request.checkpoint)!r}"
        if not request.checkpoint.is_file():
            raise ModelError(f"{where}: weights not found: no such file")
        return request.checkpoint, where
    if not file.weights:
        return None, f"{file.source}: [model]"
    where = f"{file.source}: [model] weights = {file.weights!r}"
    path = file.path(file.weights)
    if not path.is_file():
        raise ModelError(f"{where}: no such file (relative to the model file's folder, {file.folder}); weights not "
                         "found")
    return path, where


def _import_folders(file: ModelFile) -> list[Path]:
    """The model file's folder and its [model] path folders, for the factory's own imports."""
    folders = []
    for entry in file.import_paths:
        folder = file.path(entry)
        if not folder.is_dir():
            raise ModelError(f"{file.source}: [model] path = {entry!r}: no such folder (relative to the model "
                             "file's folder)")
        folders.append(folder.resolve())
    return [file.folder, *folders]


def _load_file(file: ModelFile, request: LoadRequest) -> SkipAdapter:
    from skipsearch.models.checkpoints import file_sha256
    if file.edm is not None:
        if request.checkpoint is None and not file.path(file.edm).is_file():
            raise ModelError(f"{file.source}: [model] edm = {file.edm!r}: no such file (relative to the model file's "
                             "folder); checkpoint not found")
        adapter: SkipAdapter = edm_adapter(request.checkpoint or file.path(file.edm), file.name,
                                           trust_pickle=request.trust_pickle)
    elif file.diffusers is not None:
        adapter = load_diffusers(str(file.path(file.diffusers)), name=file.name, file=file,
                                 offline=request.settings.offline)
    else:
        # Files first: a missing or unreadable checkpoint is reported before the network is built.
        weights, where = _weights_for(file, request)
        state = read_state_dict(weights, file.weights_key, where=where) if weights is not None else None
        with on_sys_path(_import_folders(file)):
            built = import_callable(file.factory, file.folder)(**file.kwargs)
        if isinstance(built, SkipAdapter):
            adapter = built
            adapter.name = file.name
        elif isinstance(built, nn.Module):
            sha = None
            if weights is not None:
                _fill(built, state, where, file.weights_prefix)
                sha = file_sha256(weights)
            shape = file.data.shape or (file.latent.shape if file.latent is not None else None)
            if shape is None:
                raise ModelError(f"{file.source}: [data] shape = [channels, height, width] is needed to probe the "
                                 "network's skips")
            from skipsearch.models.generic import GenericAdapter
            built.eval().requires_grad_(False)
            adapter = GenericAdapter(built, name=file.name, parametrization=_parametrization_for(file),
                                     img_shape=shape,
                                     consumers=file.skips.consumers if file.skips.detect == "declared" else None,
                                     exclude=file.skips.exclude, label_dim=file.data.label_dim,
                                     call=_call_for(file), weights_sha256=sha)
        else:
            raise ModelError(f"{file.source}: factory {file.factory!r} returned {type(built).__name__}, not an "
                             "nn.Module or a SkipAdapter")
    if file.data.mean is not None:
        adapter.data_range = DataRange(mean=file.data.mean, std=file.data.std)
    elif file.data.range is not None and "data.range" in file.given:
        adapter.data_range = DataRange(*file.data.range)
    if file.latent is not None:
        _attach_file_decoder(adapter, file, offline=request.settings.offline)
    adapter.dataset = file.dataset or adapter.dataset
    adapter.spec_digest = file.digest()
    return adapter


def _attach_file_decoder(adapter: SkipAdapter, file: ModelFile, *, offline: bool) -> None:
    """The model file's [latent] decoder on ``adapter`` (its latent shape first, when the file gives one)."""
    from skipsearch.models.latent import attach_decoder, load_latent_decoder
    latent = file.latent
    if latent.shape is not None:
        adapter.img_shape = latent.shape
    try:
        decoder = load_latent_decoder(latent.decoder, scaling_factor=latent.scaling_factor, shift=latent.shift,
                                      pixel_shape=latent.pixel_shape, latent_shape=tuple(adapter.img_shape),
                                      offline=offline, folder=file.folder)
    except ModelError as exc:
        raise ModelError(f"{file.source}: [latent] decoder = {latent.decoder!r}: {exc}") from None
    attach_decoder(adapter, decoder)
    if adapter.dataset is None and adapter.pixel_shape == (1, 28, 28):
        adapter.dataset = "mnist"


def latent_pipeline_part(folder: Path) -> Path | None:
    """The autoencoder folder of a local latent pipeline (``vae/`` or LDM's ``vqvae/``, as model_index.json names
    it or as the subfolders show); None for a plain UNet folder."""
    named: list[str] = []
    index = folder / "model_index.json"
    if index.is_file():
        try:
            entries = json.loads(read_user_text(index, "diffusers model_index.json"))
        except json.JSONDecodeError:
            raise ModelError(f"{index}: not valid JSON") from None
        named = [key for key in ("vae", "vqvae") if isinstance(entries, dict) and key in entries]
    for key in named or ["vae", "vqvae"]:
        if (folder / key / "config.json").is_file():
            return folder / key
    if named:
        raise ModelError(f"{folder}: model_index.json names a {named[0]!r} but {folder / named[0]} has no "
                         "config.json")
    return None


def load_diffusers(target: str, *, name: str | None = None, file: ModelFile | None = None,
                   offline: bool = False) -> SkipAdapter:
    """A diffusers ``UNet2DModel``/``UNet2DConditionModel`` with its scheduler: a pipeline folder (``unet/``,
    ``scheduler/``; with ``vae/`` or ``vqvae/`` a latent model whose samples are decoded), a model folder
    (``config.json`` [+ ``scheduler_config.json``]), or a hub id (online)."""
    from skipsearch.models.diffusers_adapter import DiffusersAdapter, _require_diffusers
    diffusers = _require_diffusers()
    folder = Path(target).expanduser()
    local = folder.is_dir()
    unet_dir, subfolder = (folder, None)
    if local and (folder / "unet").is_dir():
        subfolder = "unet"
    elif not local and (target.count("/") != 1 or target.startswith(("/", ".", "~"))):
        raise ModelError(f"diffusers model {target!r}: no such folder (a hub id looks like 'org/name')")
    elif not local and offline:
        raise ModelError(f"diffusers model {target!r}: not a local folder and skipsearch is offline; download it "
                         "once online or give a local folder")
    try:
        config_path = (folder / (subfolder or "") / "config.json") if local else None
        class_name = json.loads(read_user_text(config_path, "diffusers config")).get("_class_name") \
            if config_path and config_path.is_file() else "UNet2DModel"
        if local and (config_path is None or not config_path.is_file()):
            raise ModelError(f"{folder}: no diffusers config.json (expected DIR/config.json or DIR/unet/config.json)")
        cls = getattr(diffusers, class_name, None)
        if cls is None or class_name not in ("UNet2DModel", "UNet2DConditionModel"):
            raise ModelError(f"{folder}: {class_name} is not a UNet2DModel or UNet2DConditionModel")
        unet = cls.from_pretrained(str(unet_dir) if local else target, subfolder=subfolder, low_cpu_mem_usage=False)
        scheduler = _diffusers_scheduler(diffusers, folder if local else None, target, subfolder)
    except ModelError:
        raise
    except Exception as exc:  # OSError (missing files, offline hub), ValueError (bad config), EnvironmentError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load diffusers model {target}: {first}") from None
    unet.eval().requires_grad_(False)
    sha = diffusers_weights_sha(folder / (subfolder or "")) if local else None
    parametrization = _parametrization_for(file, scheduler) if file is not None else None
    adapter = DiffusersAdapter(unet, name=name or model_key(f"diffusers:{target}"), scheduler=scheduler
                               if parametrization is None else None, weights_sha256=sha)
    if parametrization is not None:
        adapter.parametrization = parametrization
        adapter.sigma_min, adapter.sigma_max = parametrization.sigma_min, parametrization.sigma_max
    autoencoder = latent_pipeline_part(folder) if local and subfolder else None
    if autoencoder is not None and (file is None or file.latent is None):
        from skipsearch.models.latent import attach_decoder, load_latent_decoder
        decoder = load_latent_decoder(f"diffusers:{autoencoder}", latent_shape=tuple(adapter.img_shape))
        attach_decoder(adapter, decoder)
    if adapter.pixel_shape == (1, 28, 28):
        adapter.dataset = "mnist"
    return adapter


def _diffusers_scheduler(diffusers: Any, folder: Path | None, target: str, subfolder: str | None) -> Any:
    """The training noise schedule: the scheduler config beside the UNet (DDPMScheduler reads any beta schedule)."""
    candidates = []
    if folder is not None:
        candidates = [folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"]
        for path in candidates:
            if path.is_file():
                return diffusers.DDPMScheduler.from_config(json.loads(read_user_text(path, "scheduler config")))
        return None  # DiffusersAdapter's default: DDPM linear, 1000 steps
    try:
        return diffusers.DDPMScheduler.from_pretrained(target, subfolder="scheduler")
    except Exception:  # a hub model without a scheduler config: the DDPM default
        return None


def _load_factory(spec: str, request: LoadRequest) -> SkipAdapter:
    built = import_callable(spec)()
    if isinstance(built, SkipAdapter):
        return built
    if isinstance(built, nn.Module):
        from skipsearch.models import adapt
        try:
            return adapt(built, name=spec)
        except ModelError:
            raise ModelError(f"factory {spec!r} returned a {type(built).__name__}, whose parametrisation and skips "
                             "skipsearch cannot tell; return a SkipAdapter, or write a model file (PATH.toml) that "
                             "names the factory and states them") from None
    raise ModelError(f"factory {spec!r} returned {type(built).__name__}, not an nn.Module or a SkipAdapter")


# --------------------------------------------------------------------------------------------------------------------
# Registered models.


def _bundled_edm(request: LoadRequest) -> SkipAdapter:
    from skipsearch.models.bundled import BUNDLED_WEIGHTS
    return edm_adapter(request.checkpoint or BUNDLED_WEIGHTS, "edm", trust_pickle=request.trust_pickle,
                       dataset="mnist")


def _bundled_ddpm(request: LoadRequest) -> SkipAdapter:
    from skipsearch.models.bundled import BUNDLED_DDPM
    if request.checkpoint is not None:
        raise ModelError("ddpm-mnist is a diffusers folder; use --model diffusers:DIR for other weights")
    if not (BUNDLED_DDPM / "unet").is_dir():
        raise ModelError(f"the bundled DDPM is missing ({BUNDLED_DDPM}); run 'skipsearch train --kind ddpm -o "
                         f"{BUNDLED_DDPM}'")
    return load_diffusers(str(BUNDLED_DDPM), name="ddpm-mnist")


def _bundled_cd(request: LoadRequest) -> SkipAdapter:
    from skipsearch.models.checkpoints import file_sha256
    from skipsearch.models.consistency import CD_WEIGHTS, load_consistency_network
    path = request.checkpoint or CD_WEIGHTS
    if not path.is_file():
        raise ModelError(f"the consistency-distilled model is missing ({path}); run 'python "
                         "scripts/train_cd_mnist.py'")
    adapter = EDMAdapter(load_consistency_network(path), "cd-edm", weights_sha256=file_sha256(path))
    adapter.dataset = "mnist"
    return adapter


def _bundled_ldm(request: LoadRequest) -> SkipAdapter:
    if request.checkpoint is not None:
        raise ModelError("ldm-mnist is a diffusers folder; use --model diffusers:DIR for other weights")
    if not (BUNDLED_LDM / "unet").is_dir():
        raise ModelError(f"the bundled latent model is missing ({BUNDLED_LDM}); run 'python "
                         "scripts/train_ldm_mnist.py'")
    return load_diffusers(str(BUNDLED_LDM), name="ldm-mnist")


def _preset_loader(preset: Any) -> Callable[[LoadRequest], SkipAdapter]:
    def load(request: LoadRequest) -> SkipAdapter:
        from skipsearch.models.checkpoints import CheckpointError, resolve_checkpoint
        try:
            path = resolve_checkpoint(preset, str(request.checkpoint) if request.checkpoint else None,
                                      cache_dir=request.settings.cache,
                                      download=request.download and not request.settings.offline)
        except CheckpointError as exc:
            raise ModelError(str(exc)) from None
        return edm_adapter(path, preset.name, trust_pickle=request.trust_pickle, dataset=preset.dataset)
    return load


def _edm2_preset_loader(preset: Any) -> Callable[[LoadRequest], SkipAdapter]:
    def load(request: LoadRequest) -> SkipAdapter:
        from skipsearch.models.checkpoints import CheckpointError
        from skipsearch.models.checkpoints.edm2_presets import check_preset_network, edm2_checkpoint
        from skipsearch.models.edm2 import attach_sd_vae, sd_vae_source
        try:
            path = edm2_checkpoint(preset, request.checkpoint, request.settings.cache)
            adapter = edm_adapter(path, preset.name, trust_pickle=request.trust_pickle, dataset=preset.dataset)
            check_preset_network(preset, adapter.net, str(path))
        except CheckpointError as exc:
            raise ModelError(str(exc)) from None
        if preset.vae is None:
            return adapter
        return attach_sd_vae(adapter, sd_vae_source(preset, request.settings), offline=request.settings.offline)
    return load


def _register_builtin() -> None:
    from skipsearch.models.checkpoints import PRESETS
    MODELS.register("edm", ModelEntry("edm", "bundled EDM (SongUNet) trained by skipsearch on MNIST 28x28, "
                                             "unconditional", 9, "package data (offline)", _bundled_edm))
    MODELS.register("ddpm-mnist", ModelEntry("ddpm-mnist", "bundled diffusers UNet2DModel DDPM (epsilon, linear "
                                                           "beta, T=1000) trained by skipsearch on MNIST", 6,
                                             "package data (offline)", _bundled_ddpm))
    MODELS.register("ldm-mnist", ModelEntry("ldm-mnist", "bundled latent diffusion: diffusers AutoencoderKL "
                                                         "(28x28x1 -> 7x7x4) + latent UNet2DModel DDPM, trained by "
                                                         "skipsearch on MNIST", 3, "package data (offline)",
                                            _bundled_ldm))
    MODELS.register("cd-edm", ModelEntry("cd-edm", "bundled consistency model: the edm model distilled by "
                                                   "consistency distillation (1-2 NFE; onestep / multistep)", 9,
                                         "package data (offline)", _bundled_cd))
    for preset in PRESETS.values():
        MODELS.register(preset.name, ModelEntry(preset.name, preset.description, preset.num_skip_points,
                                                preset.url or "local file", _preset_loader(preset)))
    from skipsearch.models.checkpoints.edm2_presets import EDM2_PRESETS
    for preset in EDM2_PRESETS.values():
        MODELS.register(preset.name, ModelEntry(preset.name, preset.description, preset.num_skip_points,
                                                "your file (--checkpoint PATH)", _edm2_preset_loader(preset)))


def _registry() -> Registry[ModelEntry]:
    if not len(MODELS):
        _register_builtin()
    return MODELS


# --------------------------------------------------------------------------------------------------------------------
# The entry points.


def model_file_folders(settings: Settings) -> list[Path]:
    return [f for f in (settings.models, MODEL_FILES_DIR) if f is not None and f.is_dir()]


def list_models(settings: Settings | None = None) -> list[ModelInfo]:
    """Registered models, then the model files in ``settings.models`` and the shipped ``models/`` folder (without
    ``settings``, the environment is read here: ``Settings.from_env()``)."""
    settings = settings or Settings.from_env()
    infos = [ModelInfo(e.name, e.description, e.num_skip_points, e.source) for e in _registry().values()]
    for folder in model_file_folders(settings):
        for path in sorted(folder.glob("*.toml")):
            try:
                file = parse_model_file(path)
                infos.append(ModelInfo(str(path), f"{file.name}: {file.description}", None, "model file"))
            except ModelError as exc:
                infos.append(ModelInfo(str(path), f"invalid model file: {exc}", None, "model file"))
    return infos


def model_names() -> list[str]:
    return _registry().names()


def load_model(spec: str = "edm", *, checkpoint: str | os.PathLike | None = None, trust_pickle: bool = False,
               device: str = "cpu", download: bool = True, settings: Settings | None = None) -> SkipAdapter:
    """The adapter for a model spec: a registered name, ``PATH.toml``, ``module:callable``, ``diffusers:DIR``.

    ``checkpoint`` replaces the weights of a registered model or model file. ``settings`` (checkpoint cache, model
    files, offline, batch calibration): the caller's; without them the environment is read here
    (``Settings.from_env()``).
    """
    settings = settings or Settings.from_env()
    request = LoadRequest(Path(checkpoint) if checkpoint else None, trust_pickle, download, settings)
    kind = spec_kind(spec)
    if kind == "name":
        registry = _registry()
        if spec not in registry:
            raise ModelError(f"unknown model {spec!r}; known: {', '.join(registry.names())}, or give a model file "
                             "PATH.toml, package.module:factory or diffusers:DIR (run 'skipsearch models')")
        adapter = registry.get(spec).load(request)
    elif kind == "file":
        adapter = _load_file(parse_model_file(spec), request)
    elif kind == "diffusers":
        if checkpoint is not None:
            raise ModelError("--checkpoint does not apply to diffusers:DIR (the folder holds the weights)")
        adapter = load_diffusers(spec.removeprefix("diffusers:"), offline=settings.offline)
    else:
        if checkpoint is not None:
            raise ModelError("--checkpoint does not apply to a factory spec; write a model file with weights = ...")
        adapter = _load_factory(spec, request)
    from skipsearch.device import prepare_module
    prepare_module(adapter.net, torch.device(device))
    if adapter.latent_decoder is not None:
        adapter.latent_decoder.to(device)
    if settings.batch_calibration:
        adapter.batch_calibration = BatchCalibration(settings.cache)
    return adapter
