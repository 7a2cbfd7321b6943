"""Factories for the ``package.module:callable`` model spec (importable as ``helpers.factories:...`` in tests)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_edm_network() -> nn.Module:
    """A small random EDM network: an nn.Module skipsearch recognises by its layout."""
    from skipsearch.models.checkpoints import create_network
    torch.manual_seed(0)
    return create_network("EDMPrecond", img_resolution=16, img_channels=1, model_type="SongUNet", model_channels=16,
                          channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


def tiny_adapter():
    """A factory may return a ready SkipAdapter."""
    from skipsearch.models.edm import EDMAdapter
    return EDMAdapter(tiny_edm_network(), "tiny-adapter")


def plain_module() -> nn.Module:
    """An nn.Module whose parametrisation nobody can guess: needs a model file."""
    return nn.Sequential(nn.Conv2d(1, 1, 3, padding=1))


def not_a_model() -> str:
    return "a string"
