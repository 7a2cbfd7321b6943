"""Consistency-model network files: an EDM network file whose metadata says the UNet is a consistency function.

The weights are those of an ``EDMPrecond`` of the same architecture (keys ``model.*``), so the file is in the format
of every skipsearch network; ``skipsearch.parametrization`` in its metadata holds the consistency scalings, and
:func:`load_consistency_network` wraps the UNet in :class:`ConsistencyNetwork` instead of EDM's preconditioning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from skipsearch.models.errors import ModelError
from skipsearch.models.parametrization import ConsistencyNetwork

METADATA_PARAMETRIZATION = "skipsearch.parametrization"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
CD_WEIGHTS = ASSETS / "cd_edm_mnist.safetensors"


def save_consistency_network(net: ConsistencyNetwork, path: str | os.PathLike, architecture: dict,
                             card: dict) -> Path:
    """Write ``net``'s weights as an EDM network file of ``architecture`` (``create_network`` arguments) with the
    consistency scalings in the metadata, atomically, and the card (with the file's sha256) beside it as JSON."""
    from skipsearch.models.checkpoints import create_network, file_sha256, save_network
    config = dict(architecture)
    shell = create_network(config.pop("precond"), **config)
    shell.load_state_dict(net.state_dict())
    scalings = {"type": "consistency", "sigma_min": net.sigma_min, "sigma_max": net.sigma_max,
                "sigma_data": net.sigma_data, "c_noise": net.parametrization.c_noise}
    path = Path(path)
    tmp = path.with_suffix(".tmp.safetensors")
    save_network(shell, tmp, extra_metadata={METADATA_PARAMETRIZATION: json.dumps(scalings),
                                             "skipsearch.card": json.dumps(card)})
    tmp.replace(path)
    card = {**card, "parametrization": scalings, "sha256": file_sha256(path), "file": path.name}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def load_consistency_network(path: str | os.PathLike) -> ConsistencyNetwork:
    """The consistency network of a file written by :func:`save_consistency_network` (eval, no grad)."""
    from skipsearch.models.checkpoints import CheckpointError, load_network
    try:
        shell, metadata = load_network(path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    if METADATA_PARAMETRIZATION not in metadata:
        raise ModelError(f"{path} is an EDM network file without consistency scalings "
                         f"({METADATA_PARAMETRIZATION!r} metadata); load it as an EDM model")
    scalings = json.loads(metadata[METADATA_PARAMETRIZATION])
    net = ConsistencyNetwork(shell.model, img_resolution=shell.img_resolution, img_channels=shell.img_channels,
                             label_dim=shell.label_dim, sigma_min=scalings["sigma_min"],
                             sigma_max=scalings["sigma_max"], sigma_data=scalings["sigma_data"],
                             c_noise=scalings.get("c_noise", "edm"))
    return net.eval().requires_grad_(False).to(torch.float32)
