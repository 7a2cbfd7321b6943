"""Adapter for EDM-family networks (our ``edm_networks``, or any object with EDM's ``model.enc``/``model.dec``
layout)."""

from __future__ import annotations

import math

import torch
from torch import nn

from skipsearch.models.adapter import SkipAdapter, check_points
from skipsearch.models.hooks import SkipPoint

EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0


def _resolution(name: str) -> int:
    return int(name.split("x", 1)[0])


def edm_skip_points(unet: nn.Module, prefix: str = "model.") -> list[SkipPoint]:
    """Skip points of an EDM/EDM2 UNet, read off its structure.

    Every non-aux encoder output is pushed on a stack; a decoder block whose ``in_channels`` differs from the
    running width pops one (EDM's rule), so its input is ``cat([main, skip])``.
    """
    stack = [(name, block.out_channels) for name, block in unet.enc.items() if "aux" not in name]
    points: list[SkipPoint] = []
    width = stack[-1][1]
    for name, block in unet.dec.items():
        if "aux" in name:
            continue
        if block.in_channels != width:
            source, skip_channels = stack.pop()
            if block.in_channels != width + skip_channels:
                raise ValueError(f"decoder block {name}: {block.in_channels} input channels do not match main "
                                 f"{width} + skip {skip_channels}")
            points.append(SkipPoint(index=len(points), consumer=f"{prefix}dec.{name}", resolution=_resolution(name),
                                    main_channels=width, skip_channels=skip_channels, source=f"{prefix}enc.{source}"))
        width = block.out_channels
    check_points(points)
    return points


class EDMAdapter(SkipAdapter):
    """An EDM preconditioned network ``net(x, sigma, class_labels)`` whose UNet is ``net.model``."""

    def __init__(self, net: nn.Module, name: str, *, weights_sha256: str | None = None):
        super().__init__()
        self.net, self.name, self.weights_sha256 = net.eval().requires_grad_(False), name, weights_sha256
        self.skip_points = edm_skip_points(net.model)
        self.img_shape = (net.img_channels, net.img_resolution, net.img_resolution)
        self.label_dim = net.label_dim
        self.sigma_min = max(EDM_SIGMA_MIN, float(getattr(net, "sigma_min", 0.0)))
        self.sigma_max = min(EDM_SIGMA_MAX, float(getattr(net, "sigma_max", math.inf)))

    def _denoise_raw(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        return self.net(x, sigma, class_labels).to(x.dtype)

    def sigma_of_call(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        return args[1] if len(args) > 1 else kwargs.get("sigma")

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.net.round_sigma(sigma) if hasattr(self.net, "round_sigma") else sigma
