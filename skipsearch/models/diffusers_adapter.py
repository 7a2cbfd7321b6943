"""Adapter for diffusers ``UNet2DModel`` and ``UNet2DConditionModel`` (discrete-time VP models).

Inside every diffusers up block, resnet j receives ``torch.cat([hidden_states, res_hidden_states], dim=1)`` as its
first argument, so each ``up_blocks.{b}.resnets.{j}`` is a skip consumer (main first, skip second). The widths are
read off the module structure, replaying how ``forward`` fills and pops ``down_block_res_samples``; no forward runs.

Without a scheduler the adapter assumes DDPM's linear 1000-step beta schedule (``beta_start=1e-4, beta_end=0.02``,
epsilon prediction). That is what ``skipsearch.models.apply(unet, schedule)`` gets; for a model trained on another
schedule (Stable Diffusion's ``scaled_linear``, ...) build
``DiffusersAdapter(unet, name=..., scheduler=pipe.scheduler)`` and apply the schedule to that adapter, otherwise the
sigma intervals are looked up at the wrong noise levels.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from skipsearch.models.adapter import SkipAdapter, check_points
from skipsearch.models.hooks import SkipPoint
from skipsearch.models.parametrization import EpsilonParametrization
from skipsearch.models.sources import require_diffusers as _require_diffusers


def _spatial(sample_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(sample_size, int):
        return sample_size, sample_size
    height, width = sample_size
    return int(height), int(width)


def diffusers_skip_points(unet: nn.Module) -> list[SkipPoint]:
    """Skip points of a diffusers UNet, in decoder order (up blocks in order, resnets in order; 0 = bottom).

    ``resolution`` is the height of the tensor at that point for ``unet.config.sample_size``.
    """
    if getattr(unet.config, "sample_size", None) is None:
        raise ValueError(f"{type(unet).__name__}.config.sample_size is not set: cannot tell the skip resolutions")
    res = _spatial(unet.config.sample_size)[0]
    # (width, resolution, source) of every entry of down_block_res_samples, in the order forward() appends them.
    stack: list[tuple[int, int, str]] = [(unet.conv_in.out_channels, res, "conv_in")]
    for b, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            # An attention after the resnet keeps the width; its output is what forward() stores.
            source = f"down_blocks.{b}.attentions.{j}" if attentions else f"down_blocks.{b}.resnets.{j}"
            stack.append((resnet.out_channels, res, source))
        for k, down in enumerate(getattr(block, "downsamplers", None) or []):
            res //= 2
            stack.append((down.out_channels, res, f"down_blocks.{b}.downsamplers.{k}"))
    width = stack[-1][0]
    mid = getattr(unet, "mid_block", None)
    if mid is not None and getattr(mid, "resnets", None):
        width = mid.resnets[-1].out_channels
    points: list[SkipPoint] = []
    for b, block in enumerate(unet.up_blocks):
        for j, resnet in enumerate(block.resnets):
            if not stack:
                raise ValueError(f"up_blocks.{b}.resnets.{j}: no encoder output left to consume")
            skip, skip_res, source = stack.pop()
            name = f"up_blocks.{b}.resnets.{j}"
            if resnet.in_channels != width + skip or skip_res != res:
                raise ValueError(f"{name}: expected cat(main {width} ch, skip {skip} ch) at {res}px but it takes "
                                 f"{resnet.in_channels} ch; this block type is not supported, use GenericAdapter")
            points.append(SkipPoint(index=len(points), consumer=name, resolution=res, main_channels=width,
                                    skip_channels=skip, source=source))
            width = resnet.out_channels
        for up in getattr(block, "upsamplers", None) or []:
            width = getattr(up, "out_channels", width)
            res *= 2
    if stack:
        raise ValueError(f"{len(stack)} encoder outputs were never consumed by an up block; use GenericAdapter")
    check_points(points)
    return points


class DiffusersAdapter(SkipAdapter):
    """A diffusers UNet as a skip-tunable denoiser D(x, sigma, labels) in EDM units.

    ``scheduler`` (or ``alphas_cumprod``) gives the training noise schedule and prediction type; neither means the
    linear 1000-step DDPM schedule. ``encoder_hidden_states`` ([S, D], [1, S, D] or [B, S, D]) is the text
    conditioning that ``denoise`` passes to a ``UNet2DConditionModel``. The UNet is not modified (no eval(), no
    requires_grad change) so that an adapter made for a user's own pipeline leaves it as it was.
    """

    def __init__(self, unet: nn.Module, *, name: str, scheduler: Any = None,
                 alphas_cumprod: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                 weights_sha256: str | None = None, prediction_type: str | None = None):
        _require_diffusers()
        super().__init__()
        if scheduler is not None and alphas_cumprod is not None:
            raise ValueError("give either scheduler or alphas_cumprod, not both")
        if scheduler is not None:
            self.parametrization = EpsilonParametrization.from_scheduler(scheduler, prediction_type)
        elif alphas_cumprod is not None:
            self.parametrization = EpsilonParametrization(alphas_cumprod, prediction_type or "epsilon")
        else:
            self.parametrization = EpsilonParametrization.linear(prediction_type=prediction_type or "epsilon")
        self.net, self.name, self.weights_sha256 = unet, name, weights_sha256
        self.skip_points = diffusers_skip_points(unet)
        self.img_shape = (unet.config.in_channels, *_spatial(unet.config.sample_size))
        self.label_dim = int(getattr(unet.config, "num_class_embeds", None) or 0)
        self.sigma_min, self.sigma_max = self.parametrization.sigma_min, self.parametrization.sigma_max
        self.encoder_hidden_states = encoder_hidden_states
        self._takes_text = "encoder_hidden_states" in inspect.signature(unet.forward).parameters

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.parametrization.round_sigma(sigma)

    def _denoise_raw(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        batch = x.shape[0]
        kwargs: dict[str, Any] = {}
        if class_labels is not None:
            # The skipsearch convention is one-hot [B, label_dim] (EDM); diffusers embeds class indices.
            kwargs["class_labels"] = class_labels.argmax(dim=1) if class_labels.ndim == 2 else class_labels.long()
        if self._takes_text:
            if self.encoder_hidden_states is None:
                raise ValueError(f"{self.name}: a UNet2DConditionModel needs conditioning; build the adapter with "
                                 "encoder_hidden_states=...")
            states = self.encoder_hidden_states.to(device=x.device, dtype=self.net.dtype)
            states = states[None] if states.ndim == 2 else states
            kwargs["encoder_hidden_states"] = states.expand(batch, *states.shape[1:]) if len(states) == 1 else states

        def model_fn(x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = self.net(x_vp.to(self.net.dtype), t, return_dict=False, **kwargs)[0]
            # Models with a learned variance (2x output channels) put the prediction in the first half.
            return out[:, : x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out

        return self.parametrization.denoise(model_fn, x, sigma)

    def sigma_of_call(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """Bare ``unet(sample, timestep, ...)`` calls (a user's own pipeline): sigma from the timestep."""
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        return None if timestep is None else self.parametrization.sigma_for_timestep(timestep)
