"""The embedded default model: a small EDM (SongUNet + EDMPrecond) trained by skipsearch on MNIST 28x28."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

BUNDLED_CONFIG: dict = dict(
    precond="EDMPrecond", img_resolution=28, img_channels=1, label_dim=0, model_type="SongUNet",
    model_channels=16, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[7], dropout=0.0,
)
ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_WEIGHTS = ASSETS / "edm_mnist.safetensors"
BUNDLED_CARD = ASSETS / "edm_mnist.json"


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


def train_bundled_model(output: Path, *, steps: int = 8000, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                        device: torch.device | str = "cpu", data_root: Path | None = None, checkpoint_every: int = 500,
                        on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the bundled architecture with the EDM loss; writes ``edm_mnist.safetensors`` + ``edm_mnist.json``."""
    from skipsearch.data import load_mnist, to_model_range
    from skipsearch.models.checkpoints import create_network
    from skipsearch.training.edm import EDMLoss
    from skipsearch.training.loop import TrainConfig, train

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    images, _ = load_mnist("train", data_root)
    config = dict(BUNDLED_CONFIG)
    net = create_network(config.pop("precond"), **config)
    train_config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_warmup_steps=200, log_every=100,
                               seed=seed)
    start = time.perf_counter()

    def card(step: int, loss: float) -> dict:
        return {"model": "edm", "architecture": BUNDLED_CONFIG,
                "num_skip_points": len(config["channel_mult"]) * (config["num_blocks"] + 1),
                "data": "MNIST train (60000 images, 28x28, [-1,1]), unconditional", "loss": "EDM (P_mean -1.2, "
                "P_std 1.2, sigma_data 0.5)", "optimizer": f"Adam lr {lr} (warm-up 200 steps), batch {batch_size}",
                "ema": "EDM EMA: half-life 500k images, ramp-up ratio 0.05", "steps": step, "final_loss": loss,
                "wall_seconds": round(time.perf_counter() - start, 1), "device": str(device),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}

    def on_log(step: int, loss: float, ema: torch.nn.Module) -> None:
        if on_step is not None:
            on_step(step, loss)
        if step % checkpoint_every == 0 or step == steps:
            save_bundled_checkpoint(ema, output / BUNDLED_WEIGHTS.name, card(step, loss))

    _, result = train(net, to_model_range(images), config=train_config, loss_fn=EDMLoss(), device=device,
                      on_log=on_log)
    return card(result.steps, result.final_loss)
