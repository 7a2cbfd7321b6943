"""Train the small U-ViT (``skipsearch.models.uvit_networks:UViT``) on MNIST in [-1, 1] with skipsearch's loop.

    OMP_NUM_THREADS=1 python scripts/train_uvit_mnist.py --budget-seconds 1800

An epsilon-prediction DDPM (linear beta 1e-4..0.02, T = 1000). Stops at ``--steps`` or at the wall-clock budget,
whichever comes first, and writes ``models/uvit_mnist.safetensors`` (EMA weights) and ``models/uvit_mnist.json``
(the card) every ``--save-every`` steps and at the end, and the model file ``uvit-mnist.toml`` beside them (what
``--model models/uvit-mnist.toml`` and ``benchmarks/families.py`` load).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARCH = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=96, depth=7, num_heads=4, mlp_ratio=2.0)
MODEL_FILE = """# A small U-ViT trained by scripts/train_uvit_mnist.py (long skips: skip_linear(cat([x, skip], -1))).
[model]
name = "uvit-mnist"
description = "U-ViT (patch 4, dim 96, depth 7), epsilon DDPM on MNIST in [-1, 1]"
dataset = "mnist"
factory = "skipsearch.models.uvit_networks:UViT"
weights = "{weights}"

[model.kwargs]
{kwargs}

[parametrization]
type = "epsilon"
beta_schedule = "linear"

[data]
range = [-1, 1]
shape = [1, 28, 28]

[call]
time = "timestep"

[skips]
detect = "auto"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--budget-seconds", type=float, default=1800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "uvit_mnist.safetensors")
    args = parser.parse_args()

    from safetensors.torch import save_file

    from skipsearch.data import load_mnist, to_model_range
    from skipsearch.models.checkpoints import file_sha256
    from skipsearch.models.parametrization import alphas_cumprod_for
    from skipsearch.models.uvit_networks import UViT
    from skipsearch.training.ddpm import DDPMLoss
    from skipsearch.training.loop import TrainConfig, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UViT(**ARCH)
    images = to_model_range(load_mnist("train")[0])
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=500,
                         log_every=100, grad_clip=1.0)
    start = time.perf_counter()

    def card(steps: int, loss: float) -> dict:
        return {"model": "uvit-mnist", "architecture": f"skipsearch.models.uvit_networks:UViT({ARCH})",
                "data": "MNIST train (60000 images, 28x28), unconditional, data range [-1, 1]",
                "parametrization": "epsilon, linear beta 1e-4..0.02, T = 1000",
                "loss": "MSE(eps_hat, eps), t uniform in [0, 999] (skipsearch.training.ddpm.DDPMLoss)",
                "optimizer": f"Adam lr {args.lr} (warm-up 500 steps), batch {args.batch_size}, grad clip 1.0",
                "ema": "EDM-style EMA: half-life 500k images, ramp-up ratio 0.05",
                "steps": steps, "final_loss": loss, "wall_seconds": round(time.perf_counter() - start, 1),
                "budget_seconds": args.budget_seconds, "threads": args.threads, "torch": torch.__version__,
                "num_params": sum(p.numel() for p in net.parameters())}

    def save(ema: torch.nn.Module, steps: int, loss: float) -> None:
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(args.out))
        info = {**card(steps, loss), "sha256": file_sha256(args.out)}
        args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
        kwargs = "\n".join(f"{key} = {value}" for key, value in ARCH.items())
        (args.out.parent / "uvit-mnist.toml").write_text(MODEL_FILE.format(weights=args.out.name, kwargs=kwargs))

    def on_log(step: int, loss: float, ema: torch.nn.Module) -> None:
        print(f"step {step} loss {loss:.4f} {time.perf_counter() - start:.0f}s", flush=True)
        if step % args.save_every == 0:
            save(ema, step, loss)

    ema, result = train(net, images, config=config, loss_fn=DDPMLoss(alphas_cumprod_for("linear")),
                        on_log=on_log, should_stop=lambda: time.perf_counter() - start > args.budget_seconds)
    save(ema, result.steps, result.final_loss)
    print(args.out.with_suffix(".json").read_text())


if __name__ == "__main__":
    main()
