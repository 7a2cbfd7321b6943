"""Train the bundled latent model ``ldm-mnist``: a KL autoencoder (28x28x1 -> 7x7x4), then a latent ε-DDPM.

    OMP_NUM_THREADS=1 python scripts/train_ldm_mnist.py --ae-seconds 660 --unet-seconds 1260

Both stages use skipsearch's training loop and stop at their wall-clock budget (or step count). The latents are the
autoencoder's posterior means times ``scaling_factor = 1 / std`` (stored in ``vae/config.json``, as diffusers does).
Writes ``skipsearch/assets/ldm_mnist/`` (diffusers folder: ``unet/``, ``vae/``, ``scheduler/``, ``model_index.json``)
and its ``card.json``; the UNet is saved every ``--save-every`` steps.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae-seconds", type=float, default=660)
    parser.add_argument("--unet-seconds", type=float, default=1260)
    parser.add_argument("--ae-steps", type=int, default=100_000)
    parser.add_argument("--unet-steps", type=int, default=100_000)
    parser.add_argument("--ae-batch", type=int, default=64)
    parser.add_argument("--unet-batch", type=int, default=128)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "skipsearch" / "assets" / "ldm_mnist")
    args = parser.parse_args()

    import diffusers

    from skipsearch.data import load_mnist, to_model_range
    from skipsearch.training.autoencoder import (
        AUTOENCODER_CONFIG,
        LATENT_UNET_CONFIG,
        AutoencoderLoss,
        autoencoder_kl,
        deadline,
        encode_all,
        latent_unet,
        reconstruction_mse,
        save_latent_pipeline,
    )
    from skipsearch.training.ddpm import DDPMLoss
    from skipsearch.training.loop import TrainConfig, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = to_model_range(load_mnist("train")[0])
    test_images = to_model_range(load_mnist("test")[0][:2000])

    start = time.perf_counter()
    ae_config = TrainConfig(steps=args.ae_steps, batch_size=args.ae_batch, lr=1e-3, lr_warmup_steps=200,
                            log_every=100, grad_clip=1.0, ema_halflife_images=50_000)
    vae, ae_result = train(autoencoder_kl(), images, config=ae_config, loss_fn=AutoencoderLoss(args.kl_weight),
                           on_log=lambda step, loss, _: print(f"ae step {step} loss {loss:.5f}", flush=True),
                           should_stop=deadline(args.ae_seconds))
    recon = reconstruction_mse(vae, test_images)
    latents = encode_all(vae, images)
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    print(f"ae done: {ae_result.steps} steps {ae_result.wall_seconds:.0f}s test mse {recon:.5f} "
          f"latent std {latents.std():.4f} mean {latents.mean():.4f}", flush=True)
    latents = latents * scaling_factor

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                        beta_end=0.02, prediction_type="epsilon", clip_sample=False)
    unet = latent_unet()
    unet_config = TrainConfig(steps=args.unet_steps, batch_size=args.unet_batch, lr=1e-3, lr_warmup_steps=200,
                              log_every=100, grad_clip=1.0, ema_halflife_images=500_000)
    unet_start = time.perf_counter()

    def card(steps: int, loss: float) -> dict:
        return {"model": "ldm-mnist", "format": "diffusers UNet2DModel + AutoencoderKL + DDPMScheduler",
                "data": "MNIST train (60000 images, 28x28), unconditional, data range [-1, 1]",
                "autoencoder": {"architecture": AUTOENCODER_CONFIG, "latent_shape": [4, 7, 7],
                                "loss": f"MSE(decode(z), x) + {args.kl_weight:g} * KL, z ~ q(z|x)",
                                "optimizer": f"Adam lr 1e-3 (warm-up 200), batch {args.ae_batch}, grad clip 1.0",
                                "ema": "half-life 50k images, ramp-up 0.05", "steps": ae_result.steps,
                                "final_loss": ae_result.final_loss,
                                "wall_seconds": round(ae_result.wall_seconds, 1),
                                "reconstruction_mse_test2000": recon,
                                "num_params": sum(p.numel() for p in vae.parameters())},
                "scaling_factor": scaling_factor,
                "latents": "posterior mean * scaling_factor (1 / std over the training set)",
                "unet": {"architecture": LATENT_UNET_CONFIG,
                         "parametrization": "epsilon prediction, linear beta 1e-4..0.02, T = 1000",
                         "loss": "MSE(eps_hat, eps), t uniform in [0, 999] (skipsearch.training.ddpm.DDPMLoss)",
                         "optimizer": f"Adam lr 1e-3 (warm-up 200), batch {args.unet_batch}, grad clip 1.0",
                         "ema": "half-life 500k images, ramp-up 0.05", "steps": steps, "final_loss": loss,
                         "wall_seconds": round(time.perf_counter() - unet_start, 1),
                         "num_params": sum(p.numel() for p in unet.parameters())},
                "wall_seconds": round(time.perf_counter() - start, 1), "threads": args.threads,
                "torch": torch.__version__, "diffusers": diffusers.__version__, "machine": platform.machine(),
                "trained_by": "scripts/train_ldm_mnist.py (skipsearch.training.autoencoder + training.loop)"}

    def on_log(step: int, loss: float, ema: torch.nn.Module) -> None:
        print(f"unet step {step} loss {loss:.5f}", flush=True)
        if step % args.save_every == 0:
            save_latent_pipeline(args.out, unet=ema, vae=vae, scheduler=scheduler, card=card(step, loss))

    ema, result = train(unet, latents, config=unet_config, loss_fn=DDPMLoss(scheduler.alphas_cumprod),
                        on_log=on_log, should_stop=deadline(args.unet_seconds))
    save_latent_pipeline(args.out, unet=ema, vae=vae, scheduler=scheduler, card=card(result.steps, result.final_loss))
    print(f"done: {result.steps} unet steps, {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
