"""Train the second bundled model: a small diffusers ``UNet2DModel`` epsilon-prediction DDPM on MNIST (CPU).

Linear beta schedule, T = 1000 (diffusers' ``DDPMScheduler`` defaults); data in [-1, 1]. Writes a diffusers
pipeline folder (``unet/``, ``scheduler/``, ``model_index.json``) plus ``card.json`` (steps, time, loss, sha256).

    python scripts/train_ddpm_mnist.py --steps 6000 -o skipsearch/assets/ddpm_mnist
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("-o", "--output", type=Path, default=Path("skipsearch/assets/ddpm_mnist"))
    args = parser.parse_args()

    from diffusers import DDPMScheduler

    from skipsearch.data import load_mnist, to_model_range
    from skipsearch.training.ddpm import DDPMLoss, bundled_ddpm_unet, save_ddpm_folder
    from skipsearch.training.loop import TrainConfig, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, _ = load_mnist("train")
    unet = bundled_ddpm_unet()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              prediction_type="epsilon", clip_sample=False)
    loss_fn = DDPMLoss(scheduler.alphas_cumprod)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=200,
                         log_every=100, grad_clip=1.0, ema_halflife_images=500_000)
    start = time.perf_counter()

    def card(step: int, loss: float) -> dict:
        return {"model": "ddpm-mnist", "format": "diffusers UNet2DModel + DDPMScheduler",
                "data": "MNIST train (60000 images, 28x28), unconditional, data range [-1, 1]",
                "parametrization": "epsilon prediction, linear beta 1e-4..0.02, T = 1000",
                "loss": "MSE(eps_hat, eps), t uniform in [0, 999]",
                "optimizer": f"Adam lr {args.lr} (warm-up 200 steps), batch {args.batch_size}, grad clip 1.0",
                "ema": "EDM-style EMA: half-life 500k images, ramp-up ratio 0.05",
                "steps": step, "final_loss": loss, "wall_seconds": round(time.perf_counter() - start, 1),
                "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
                "num_params": sum(p.numel() for p in unet.parameters())}

    def on_log(step: int, loss: float, ema: torch.nn.Module) -> None:
        print(f"step {step} loss {loss:.4f} {time.perf_counter() - start:.0f}s", flush=True)
        if step % args.checkpoint_every == 0 or step == args.steps:
            save_ddpm_folder(ema, scheduler, args.output, card(step, loss))

    train(unet, to_model_range(images), config=config, loss_fn=loss_fn, on_log=on_log)
    print(json.dumps(json.loads((args.output / "card.json").read_text()), indent=1))


if __name__ == "__main__":
    main()
