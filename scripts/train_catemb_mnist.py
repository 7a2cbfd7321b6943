"""Train the plain-PyTorch example DDPM (``models/catemb_unet.py``) on MNIST in [0, 1] with skipsearch's loop.

    python scripts/train_catemb_mnist.py --steps 2500

Writes ``models/catemb_mnist.safetensors`` (EMA weights) and ``models/catemb_mnist.json`` (steps, time, loss, sha256).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from safetensors.torch import save_file

    from skipsearch.data import load_mnist
    from skipsearch.models.checkpoints import file_sha256
    from skipsearch.models.loading import import_callable
    from skipsearch.models.parametrization import alphas_cumprod_for
    from skipsearch.training.ddpm import DDPMLoss
    from skipsearch.training.loop import TrainConfig, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = import_callable("catemb_unet.py:build", ROOT / "models")(channels=16, emb_dim=64)
    images = load_mnist("train")[0].float() / 255  # this model's data range is [0, 1]
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=200,
                         log_every=100, grad_clip=1.0)
    start = time.perf_counter()
    ema, result = train(net, images, config=config, loss_fn=DDPMLoss(alphas_cumprod_for("linear")),
                        on_log=lambda step, loss, _: print(f"step {step} loss {loss:.4f}", flush=True))
    weights = ROOT / "models" / "catemb_mnist.safetensors"
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(weights))
    card = {"model": "catemb-mnist", "architecture": "models/catemb_unet.py CatEmbUNet(channels=16, emb_dim=64)",
            "data": "MNIST train, [0, 1]", "parametrization": "epsilon, linear beta 1e-4..0.02, T = 1000",
            "loss": "MSE(eps_hat, eps), t uniform", "optimizer": f"Adam lr {args.lr}, batch {args.batch_size}",
            "steps": result.steps, "final_loss": result.final_loss,
            "wall_seconds": round(time.perf_counter() - start, 1), "threads": args.threads,
            "num_params": sum(p.numel() for p in net.parameters()), "sha256": file_sha256(weights)}
    weights.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
