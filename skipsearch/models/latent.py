"""Latent diffusion: the autoencoder that turns a latent model's samples into images.

A latent model's sampler draws in the autoencoder's latent space (the adapter's ``img_shape``); the proxy, the
data-set checks and the probe images need pixels (``LatentDecoder.pixel_shape``). ``generate()`` decodes each batch
after sampling. ρ applies to the latent UNet only; the decoder's weights are part of the model identity.

Units follow diffusers: the diffusion model works on ``z = (encode(x) - shift) * scaling_factor``, so decoding is
``decode(z / scaling_factor + shift)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skipsearch.models.errors import ModelError
from skipsearch.models.sources import diffusers_weights_sha, import_callable, require_diffusers, state_dict_sha256

# The autoencoder classes a ``diffusers:`` decoder may be, and what their decode returns.
DECODER_CLASSES = ("AutoencoderKL", "VQModel")


@dataclass(frozen=True)
class LatentDecoder:
    """Latents (diffusion-model units) -> images in the adapter's data units ([-1, 1] by default).

    ``encode`` (images -> latents, for probe images) is None where the autoencoder has no encoder.
    ``module`` is the autoencoder (moved with the adapter's device); ``batch`` is the largest decode batch.
    """

    decode: Callable[[torch.Tensor], torch.Tensor]
    pixel_shape: tuple[int, int, int]
    sha256: str
    batch: int = 64
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None
    module: nn.Module | None = None
    scaling_factor: float = 1.0
    shift: float = 0.0
    source: str = ""

    @torch.no_grad()
    def decode_batched(self, latents: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Decode in chunks of ``batch`` on the latents' device. With ``check``, a non-finite or constant result is
        a :class:`ModelError` (not a score); ``generate()`` checks its images itself (a failed schedule)."""
        self.to(latents.device)
        parts = [self.decode(chunk) for chunk in latents.split(max(1, self.batch))]
        images = torch.cat(parts) if parts else latents.new_zeros(0, *self.pixel_shape)
        if tuple(images.shape[1:]) != tuple(self.pixel_shape) or check:
            check_decoded(images, self.pixel_shape, self.source)
        return images

    @torch.no_grad()
    def encode_batched(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the data range -> latents in the diffusion model's units (needs ``encode``)."""
        if self.encode is None:
            raise ModelError(f"latent decoder {self.source}: has no encoder")
        self.to(images.device)
        return torch.cat([self.encode(chunk) for chunk in images.split(max(1, self.batch))])

    def to(self, device: torch.device | str) -> LatentDecoder:
        """Move the autoencoder (if any) to ``device``; a no-op where it already is."""
        if self.module is not None:
            parameter = next(self.module.parameters(), None)
            if parameter is not None and parameter.device != torch.device(device):
                self.module.to(device)
        return self

    def identity_sha256(self, model_sha256: str) -> str:
        """The weights hash of a latent model: the diffusion network's and this decoder's, with the units."""
        text = f"{model_sha256}:latent:{self.sha256}:{self.scaling_factor!r}:{self.shift!r}:{self.pixel_shape}"
        return hashlib.sha256(text.encode()).hexdigest()


def attach_decoder(adapter: Any, decoder: LatentDecoder) -> None:
    """Make ``adapter`` a latent model: samples decode through ``decoder``, whose weights join its identity."""
    base = adapter.weights_sha256 or _module_sha256(adapter.net)
    adapter.latent_decoder = decoder
    adapter.weights_sha256 = decoder.identity_sha256(base)
    adapter._identity = None  # computed again from the new hash
    decoder.to(adapter.device)


def check_decoded(images: torch.Tensor, pixel_shape: tuple[int, int, int], source: str = "") -> None:
    """One-line errors for decoded images of the wrong shape, with NaN/inf, or all one value."""
    where = f"latent decoder {source}: " if source else "latent decoder: "
    if tuple(images.shape[1:]) != tuple(pixel_shape):
        raise ModelError(f"{where}decodes to {list(images.shape[1:])}, not the pixel shape {list(pixel_shape)}; fix "
                         "[latent] pixel_shape or shape")
    if not torch.isfinite(images).all():
        raise ModelError(f"{where}decoded images are not finite (NaN/inf); check [latent] scaling_factor and shift "
                         "and the decoder's weights")
    if len(images) > 1 and float(images.float().std()) == 0.0:
        raise ModelError(f"{where}decoded images are constant; check [latent] scaling_factor and the decoder's "
                         "weights")


def _module_sha256(module: nn.Module) -> str:
    return state_dict_sha256(module)


def decoder_class_name(folder: Path) -> str | None:
    """The ``_class_name`` of a local diffusers model folder (None without a config)."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    from skipsearch.inputs import read_user_text
    try:
        return json.loads(read_user_text(config, "diffusers config")).get("_class_name")
    except (json.JSONDecodeError, AttributeError):
        raise ModelError(f"{config}: not a JSON object; a diffusers autoencoder config is expected") from None


def _load_diffusers_autoencoder(target: str, offline: bool) -> tuple[nn.Module, str, str | None]:
    """(module, class name, weights sha or None) of a local folder (or a hub id when online)."""
    diffusers = require_diffusers()
    folder = Path(target).expanduser()
    local = folder.is_dir()
    if not local:
        if target.count("/") != 1 or target.startswith(("/", ".", "~")):
            raise ModelError(f"latent decoder diffusers:{target}: no such folder (a hub id looks like 'org/name')")
        if offline:
            raise ModelError(f"latent decoder diffusers:{target}: not a local folder and skipsearch is offline; "
                             "download it once online or give a local folder")
    class_name = decoder_class_name(folder) if local else None
    if local and class_name is None:
        raise ModelError(f"latent decoder {folder}: no diffusers config.json")
    if class_name is not None and class_name not in DECODER_CLASSES:
        raise ModelError(f"latent decoder {folder}: {class_name} is not one of {', '.join(DECODER_CLASSES)}")
    try:
        classes = [getattr(diffusers, class_name or name) for name in ((class_name,) if class_name else
                                                                       DECODER_CLASSES)]
        module = _first_loadable(classes, str(folder) if local else target)
    except ModelError:
        raise
    except Exception as exc:  # OSError (missing files, hub offline), ValueError (bad config)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load latent decoder diffusers:{target}: {first}") from None
    module.eval().requires_grad_(False)
    return module, type(module).__name__, diffusers_weights_sha(folder) if local else None


def _first_loadable(classes: list[Any], where: str) -> nn.Module:
    error: Exception | None = None
    for cls in classes:
        try:
            return cls.from_pretrained(where, low_cpu_mem_usage=False)
        except Exception as exc:  # noqa: PERF203 - try the next class
            error = exc
    raise error  # type: ignore[misc]


def _config_pixel_shape(module: nn.Module, latent_hw: tuple[int, int] | None) -> tuple[int, int, int] | None:
    """The image shape a diffusers autoencoder decodes latents of ``latent_hw`` to (None if unknown)."""
    config = getattr(module, "config", None)
    if config is None or latent_hw is None:
        return None
    factor = 2 ** (len(getattr(config, "block_out_channels", [0])) - 1)
    return int(config.out_channels), latent_hw[0] * factor, latent_hw[1] * factor


def autoencoder_decoder(module: nn.Module, *, scaling_factor: float | None = None, shift: float | None = None,
                        pixel_shape: tuple[int, int, int] | None = None,
                        latent_shape: tuple[int, int, int] | None = None, batch: int = 64,
                        sha256: str | None = None, source: str = "") -> LatentDecoder:
    """A :class:`LatentDecoder` around a diffusers ``AutoencoderKL`` or ``VQModel`` (scaling factor and shift from
    its config unless given). Encoding uses the posterior mean (KL) or the pre-quantisation latents (VQ)."""
    config = getattr(module, "config", None)
    scale = float(scaling_factor if scaling_factor is not None else getattr(config, "scaling_factor", 1.0) or 1.0)
    offset = float(shift if shift is not None else getattr(config, "shift_factor", None) or 0.0)
    if not (scale > 0 and scale == scale and abs(scale) != float("inf")):
        raise ModelError(f"latent decoder {source}: scaling_factor must be a positive number, not {scale}")
    shape = pixel_shape or _config_pixel_shape(module, latent_shape[1:] if latent_shape else None)
    if shape is None:
        raise ModelError(f"latent decoder {source}: give [latent] pixel_shape = [channels, height, width]")
    is_vq = type(module).__name__ == "VQModel"

    def decode(latents: torch.Tensor) -> torch.Tensor:
        z = (latents / scale + offset).to(module.dtype)
        return module.decode(z, return_dict=False)[0].float()

    def encode(images: torch.Tensor) -> torch.Tensor:
        out = module.encode(images.to(module.dtype), return_dict=False)[0]
        z = out if is_vq else out.mode()
        return ((z.float() - offset) * scale)

    return LatentDecoder(decode=decode, pixel_shape=tuple(int(v) for v in shape), sha256=sha256 or
                         _module_sha256(module), batch=batch, encode=encode if hasattr(module, "encode") else None,
                         module=module, scaling_factor=scale, shift=offset, source=source)


def load_latent_decoder(spec: str, *, scaling_factor: float | None = None, shift: float | None = None,
                        pixel_shape: tuple[int, int, int] | None = None,
                        latent_shape: tuple[int, int, int] | None = None, batch: int = 64, offline: bool = True,
                        folder: Path | None = None) -> LatentDecoder:
    """A decoder from ``diffusers:DIR_OR_ID`` (``AutoencoderKL``/``VQModel``) or a factory ``module:callable``
    (``file.py:callable`` relative to ``folder``) returning a LatentDecoder, an autoencoder module, or a callable.

    ``latent_shape`` lets the pixel shape be worked out from a diffusers config when ``pixel_shape`` is not given.
    A hub id needs ``offline=False``.
    """
    if spec.startswith("diffusers:"):
        target = spec.removeprefix("diffusers:")
        path = Path(target).expanduser()
        if folder is not None and not path.is_absolute():
            if (folder / path).exists():
                target = str(folder / path)
            elif offline:
                raise ModelError(f"no such folder {folder / path} (relative to the model file's folder); a hub id "
                                 "needs skipsearch online")
        module, _, sha = _load_diffusers_autoencoder(target, offline)
        return autoencoder_decoder(module, scaling_factor=scaling_factor, shift=shift, pixel_shape=pixel_shape,
                                   latent_shape=latent_shape, batch=batch, sha256=sha, source=spec)
    return _factory_decoder(spec, scaling_factor=scaling_factor, shift=shift, pixel_shape=pixel_shape,
                            latent_shape=latent_shape, batch=batch, folder=folder)


def _factory_decoder(spec: str, *, scaling_factor: float | None, shift: float | None,
                     pixel_shape: tuple[int, int, int] | None, latent_shape: tuple[int, int, int] | None,
                     batch: int, folder: Path | None) -> LatentDecoder:
    if ":" not in spec:
        raise ModelError(f"latent decoder {spec!r}: give 'diffusers:DIR' or a factory 'module:callable'")
    built = import_callable(spec, folder)()
    if isinstance(built, LatentDecoder):
        return built
    if isinstance(built, nn.Module) and hasattr(built, "decode"):
        return autoencoder_decoder(built, scaling_factor=scaling_factor, shift=shift, pixel_shape=pixel_shape,
                                   latent_shape=latent_shape, batch=batch, source=spec)
    if callable(built):
        if pixel_shape is None:
            raise ModelError(f"latent decoder {spec!r}: a plain callable needs [latent] pixel_shape")
        scale, offset = float(scaling_factor or 1.0), float(shift or 0.0)
        sha = _module_sha256(built) if isinstance(built, nn.Module) else hashlib.sha256(spec.encode()).hexdigest()
        return LatentDecoder(decode=lambda z: built(z / scale + offset), pixel_shape=pixel_shape, sha256=sha,
                             batch=batch, scaling_factor=scale, shift=offset, source=spec)
    raise ModelError(f"latent decoder factory {spec!r} returned {type(built).__name__}, not a LatentDecoder, an "
                     "autoencoder module or a callable")
