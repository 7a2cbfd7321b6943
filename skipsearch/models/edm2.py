"""Adapter for EDM2 networks (our :mod:`skipsearch.models.edm2_networks`, or any object with EDM2's
``unet.enc``/``unet.dec`` layout).

Where rho acts: an EDM2 decoder block receives ``mp_cat(x, skip) = cat([wa * x, wb * skip])``. Because wa and wb are
constants (they depend only on the channel counts and ``concat_balance``), scaling the trailing skip channels of that
concatenation equals ``cat([wa * x, wb * (rho * skip)])``; rho therefore multiplies the skip *before* its
magnitude-preserving weight. The consumer pre-hooks of :mod:`skipsearch.models.hooks` do exactly that on the input
of each decoder ``..._block{i}``. The encoder's input ``cat([x, ones])`` is never a skip point.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from skipsearch.data import DataRange
from skipsearch.models.adapter import SkipAdapter
from skipsearch.models.edm import EDM_SIGMA_MAX, EDM_SIGMA_MIN, EDMAdapter, edm_skip_points
from skipsearch.models.errors import ModelError
from skipsearch.models.latent import LatentDecoder, attach_decoder, load_latent_decoder

if TYPE_CHECKING:
    from skipsearch.models.checkpoints.edm2_latents import LatentStandardisation
    from skipsearch.settings import Settings


def is_edm2(net: Any) -> bool:
    """An EDM2 preconditioned network: its UNet at ``net.unet`` with ``enc``/``dec`` module dicts."""
    inner = getattr(net, "unet", None)
    return inner is not None and hasattr(inner, "enc") and hasattr(inner, "dec")


class EDM2Adapter(EDMAdapter):
    """An EDM2 preconditioned network ``net(x, sigma, class_labels)`` whose UNet is ``net.unet``.

    One skip point per decoder block that concatenates (16 for the img64/img512 configurations, like EDM's ADM
    table); EDM2 has no sigma bounds of its own, so EDM's sampling range applies.
    """

    def __init__(self, net: nn.Module, name: str, *, weights_sha256: str | None = None):
        SkipAdapter.__init__(self)  # EDMAdapter's body reads net.model; the rest of its behaviour is shared
        self.net, self.name, self.weights_sha256 = net.eval().requires_grad_(False), name, weights_sha256
        self.skip_points = edm_skip_points(net.unet, prefix="unet.")
        # EDM's rule (a decoder block wider than the running width takes a skip) must find EDM2's own: every
        # decoder block named ..._block{i} concatenates.
        if [p.consumer for p in self.skip_points] != [f"unet.dec.{n}" for n in net.unet.dec if "block" in n]:
            raise ModelError(f"{name}: the EDM2 decoder's concatenations do not match its block names")
        self.img_shape = (net.img_channels, net.img_resolution, net.img_resolution)
        self.label_dim = net.label_dim
        self.sigma_min, self.sigma_max = EDM_SIGMA_MIN, EDM_SIGMA_MAX


def sd_vae_decoder(vae: str, standardisation: LatentStandardisation, latent_shape: tuple[int, int, int], *,
                   offline: bool) -> LatentDecoder:
    """EDM2's latent decoder: its per-channel standardised latents back to the VAE's raw latents
    (``(z - bias) / scale``), decoded by ``vae`` (``diffusers:DIR_OR_ID``) to images in [0, 1] (64x64x4 latents:
    512x512x3 with the SD VAE)."""
    base = load_latent_decoder(vae, offline=offline, latent_shape=latent_shape, batch=8)
    module = base.module
    scale = torch.tensor(standardisation.scale).reshape(1, -1, 1, 1)
    bias = torch.tensor(standardisation.bias).reshape(1, -1, 1, 1)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        raw = (latents.float() - bias.to(latents.device)) / scale.to(latents.device)
        return module.decode(raw.to(module.dtype), return_dict=False)[0].float()

    def encode(images: torch.Tensor) -> torch.Tensor:  # images in [0, 1], as EDM2 encodes them
        raw = module.encode(images.to(module.dtype), return_dict=False)[0].mode().float()
        return raw * scale.to(raw.device) + bias.to(raw.device)

    # The standardisation changes what the latents mean: it is part of the decoder's identity.
    sha = hashlib.sha256(f"{base.sha256}:edm2:{standardisation.scale}:{standardisation.bias}".encode()).hexdigest()
    return dataclasses.replace(base, decode=decode, encode=encode, sha256=sha, scaling_factor=1.0, shift=0.0,
                               source=f"{vae} (EDM2 latent standardisation)")


def attach_sd_vae(adapter: SkipAdapter, vae: str, *, offline: bool) -> SkipAdapter:
    """Make an EDM2 latent adapter decode its samples with ``vae``; its images are then in [0, 1]."""
    from skipsearch.models.checkpoints.edm2_latents import SD_VAE_LATENTS
    # A pickle's own encoder record wins over EDM2's published defaults.
    decoder = sd_vae_decoder(vae, getattr(adapter.net, "edm2_latents", SD_VAE_LATENTS), adapter.img_shape,
                             offline=offline)
    attach_decoder(adapter, decoder)
    adapter.data_range = DataRange(0.0, 1.0)
    return adapter


def sd_vae_source(preset: Any, settings: Settings) -> str:
    """Where an EDM2 latent preset's VAE comes from: a local copy at ``<cache>/<vae name>`` (a diffusers folder),
    else the hub id when online; a one-line error offline without a local copy."""
    local = settings.cache / preset.vae.rsplit("/", 1)[-1]
    if local.is_dir():
        return f"diffusers:{local}"
    if settings.offline:
        raise ModelError(f"{preset.name} decodes its latents with the VAE {preset.vae}, which is not at {local} and "
                         "skipsearch is offline; download it once online or save that diffusers folder there")
    return f"diffusers:{preset.vae}"
