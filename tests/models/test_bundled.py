"""The embedded default: the bundled MNIST EDM model loads, matches its card, samples at NFE 9 on CPU."""

from __future__ import annotations

import json

import torch

from skipsearch.models.bundled import BUNDLED_CARD, BUNDLED_WEIGHTS
from skipsearch.models.checkpoints import file_sha256
from skipsearch.sampling.generate import generate


def test_card_matches_weights(bundled):
    card = json.loads(BUNDLED_CARD.read_text())
    assert card["sha256"] == file_sha256(BUNDLED_WEIGHTS) == bundled.identity.sha256
    assert card["num_skip_points"] == len(bundled.skip_points) == 9
    assert card["steps"] > 0 and card["wall_seconds"] > 0 and "final_loss" in card
    assert BUNDLED_WEIGHTS.stat().st_size < 8 * 2**20  # package data stays small


def test_sixteen_samples_at_nfe9(bundled):
    result = generate(bundled, sampler="heun", nfe=9, seeds=range(16), batch_size=16)
    assert result.images.shape == (16, 1, 28, 28) and result.images.dtype == torch.uint8
    assert result.nfe == 9 and result.denoiser_calls == 9
    # Digits: a dark background with bright strokes, not noise.
    fraction_bright = (result.images > 128).float().mean().item()
    assert 0.03 < fraction_bright < 0.4
    again = generate(bundled, sampler="heun", nfe=9, seeds=[3], batch_size=1)
    assert torch.equal(again.images[0], result.images[3])  # image k depends only on its seed


def test_train_command_writes_weights_and_card(tmp_path, capsys):
    """The bundled model's own training code, for a few steps: EMA weights + a card the loader accepts."""
    from helpers.cli import run_cli

    from skipsearch.models import load_model
    result = run_cli(capsys, "train", "-o", tmp_path, "--steps", "3", "--batch-size", "8", "--device", "cpu")
    assert result.code == 0, result.err
    card = json.loads((tmp_path / "edm_mnist.json").read_text())
    assert card["steps"] == 3 and card["sha256"] == file_sha256(tmp_path / "edm_mnist.safetensors")
    model = load_model("edm", checkpoint=tmp_path / "edm_mnist.safetensors")
    assert model.identity.sha256 == card["sha256"] and len(model.skip_points) == 9
