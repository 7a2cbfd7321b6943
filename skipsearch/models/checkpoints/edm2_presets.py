"""EDM2's pretrained networks (Karras et al. 2024): the architecture of each, and where the user's weights are.

The official pickles are licensed CC BY-NC-SA 4.0 and are not downloaded by skipsearch: a preset loads the file the
user names (``--checkpoint PATH --trust-pickle``) or one placed in the cache. ``edm2-img64-*`` are pixel-space
ImageNet 64x64 models; ``edm2-img512-*`` run on 64x64x4 latents of the Stable Diffusion VAE
``stabilityai/sd-vae-ft-mse``, standardised per channel as EDM2's encoder does (:mod:`.edm2_latents`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skipsearch.models.checkpoints.errors import CheckpointError
from skipsearch.models.checkpoints.networks import create_network
from skipsearch.models.checkpoints.presets import cached_checkpoint_path
from skipsearch.models.edm2_networks import PRECOND_NAME
from skipsearch.registry import Registry

EDM2_CDN = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions"
SD_VAE = "stabilityai/sd-vae-ft-mse"


@dataclass(frozen=True)
class EDM2Preset:
    """A pretrained EDM2 network: its constructor arguments, the official file name, its latent space if any."""

    name: str
    description: str
    kwargs: dict
    filename: str
    num_skip_points: int = 16
    dataset: str | None = None
    vae: str | None = None  # the diffusers autoencoder of a latent model

    @property
    def url(self) -> str:
        return f"{EDM2_CDN}/{self.filename}"

    @property
    def precond(self) -> str:
        return PRECOND_NAME

    def create(self) -> Any:
        """The architecture with random weights (no download); ``with torch.device('meta'):`` to skip the init."""
        return create_network(PRECOND_NAME, **self.kwargs)


EDM2_PRESETS: Registry[EDM2Preset] = Registry("EDM2 preset", CheckpointError)

_IMG64 = {"xs": (128, "0134217-0.110"), "s": (192, "1073741-0.075"), "m": (256, "2147483-0.060"),
          "l": (320, "1073741-0.040"), "xl": (384, "0671088-0.040")}
_IMG512 = {"xs": (128, "2147483-0.135"), "s": (192, "2147483-0.130"), "m": (256, "2147483-0.100"),
           "l": (320, "1879048-0.085"), "xl": (384, "1342177-0.085"), "xxl": (448, "0939524-0.070")}
_LARGE = ("m", "l", "xl", "xxl")  # trained with dropout 0.1 (no effect when sampling)


def _kwargs(size: str, channels: int, img_channels: int) -> dict:
    return dict(img_resolution=64, img_channels=img_channels, label_dim=1000, use_fp16=True, model_channels=channels,
                channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[16, 8],
                dropout=0.1 if size in _LARGE else 0.0)


for _size, (_channels, _tag) in _IMG64.items():
    EDM2_PRESETS.register(f"edm2-img64-{_size}", EDM2Preset(
        name=f"edm2-img64-{_size}",
        description=f"EDM2-{_size.upper()} class-conditional ImageNet 64x64 (pixel space, {_channels} channels); "
                    "your weights: --checkpoint PATH",
        kwargs=_kwargs(_size, _channels, 3), filename=f"edm2-img64-{_size}-{_tag}.pkl", dataset="imagenet64"))
for _size, (_channels, _tag) in _IMG512.items():
    EDM2_PRESETS.register(f"edm2-img512-{_size}", EDM2Preset(
        name=f"edm2-img512-{_size}",
        description=f"EDM2-{_size.upper()} class-conditional ImageNet 512x512 on 64x64x4 SD-VAE latents "
                    f"({_channels} channels); your weights: --checkpoint PATH",
        kwargs=_kwargs(_size, _channels, 4), filename=f"edm2-img512-{_size}-{_tag}.pkl", vae=SD_VAE))


def edm2_checkpoint(preset: EDM2Preset, path: str | os.PathLike | None, cache_dir: Path) -> Path:
    """The user's weights for ``preset``: ``path`` (``--checkpoint``), else ``<cache>/checkpoints/<official name>``;
    a one-line error saying where to get them otherwise (they are never downloaded here)."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path
    cached = cached_checkpoint_path(preset, cache_dir)  # type: ignore[arg-type]  # reads .filename only
    if cached.is_file():
        return cached
    raise CheckpointError(f"{preset.name} needs the official EDM2 weights (CC BY-NC-SA 4.0, not downloaded by "
                          f"skipsearch): download {preset.url} and pass --checkpoint PATH --trust-pickle, or place "
                          f"it at {cached}")


def check_preset_network(preset: EDM2Preset, net: Any, source: str) -> None:
    """A one-line error when the loaded network is not the preset's architecture (another size or data shape)."""
    config = {"img_resolution": net.img_resolution, "img_channels": net.img_channels, "label_dim": net.label_dim,
              "model_channels": net.unet.enc[next(iter(net.unet.enc))].out_channels}
    wrong = [f"{k} {v} (expected {preset.kwargs[k]})" for k, v in config.items() if v != preset.kwargs[k]]
    if wrong:
        raise CheckpointError(f"{source} is not {preset.name}: {', '.join(wrong)}")
