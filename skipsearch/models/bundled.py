"""The bundled models: a small EDM (SongUNet + EDMPrecond) and a diffusers DDPM, both trained by skipsearch on MNIST.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

BUNDLED_CONFIG: dict = dict(
    precond="EDMPrecond", img_resolution=28, img_channels=1, label_dim=0, model_type="SongUNet",
    model_channels=16, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[7], dropout=0.0,
)
ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_WEIGHTS = ASSETS / "edm_mnist.safetensors"
BUNDLED_CARD = ASSETS / "edm_mnist.json"
BUNDLED_DDPM = ASSETS / "ddpm_mnist"  # a diffusers pipeline folder (unet/, scheduler/, card.json)


def save_bundled_checkpoint(net: torch.nn.Module, path: Path, card: dict) -> None:
    """Write EMA weights (network config in the safetensors metadata) and the card beside them (atomic)."""
    from skipsearch.models.checkpoints import create_network, file_sha256, save_network
    config = dict(BUNDLED_CONFIG)
    shipped = create_network(config.pop("precond"), **config)
    shipped.load_state_dict(net.state_dict())
    tmp = Path(path).with_suffix(".tmp.safetensors")
    save_network(shipped, tmp, extra_metadata={"skipsearch.card": json.dumps(card)})
    tmp.replace(path)
    card = {**card, "sha256": file_sha256(path), "file": Path(path).name}
    Path(path).with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
