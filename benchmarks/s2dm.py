"""S²-DM fine-tuning vs the fair baseline on the bundled model: a small tau x skip grid at NFE 9 (prints figures).

Every run fine-tunes a copy of the model for the same steps, batch, lr and training seed; tau = 1 is the plain EDM
loss (the same data stream and sigma/noise draws), so any gain of tau < 1 is the skip-step term's, not the extra
training's. Each model is scored by the FID proxy (mnist-features) on the same seeds (common random numbers); the
untouched model is scored too. The baseline is repeated with other training seeds to show the noise floor; "vs tau=1"
is the difference to the baseline of training seed 0. "active" is the share of EDM's training sigmas for which the
skip term applies at all (sigma_s above sigma_min on the sampler's Karras grid).

    python benchmarks/s2dm.py                      # ~10 min on 2 CPU cores
    python benchmarks/s2dm.py --steps 1000 --n 2000 --taus 0.99,0.95,0.9 --skips 1,2,3 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from skipsearch.models import load_model
from skipsearch.models.edm import EDMAdapter
from skipsearch.proxy.config import ProxyConfig
from skipsearch.proxy.fid_proxy import FidProxy
from skipsearch.sampling.samplers import steps_for_nfe
from skipsearch.search.finetune import FinetuneBudget, finetune_network, training_images
from skipsearch.training.s2dm import karras_skip_sigma


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def active_fraction(skip: int, num_steps: int, draws: int = 200_000) -> float:
    """Share of EDM's log-normal sigma draws for which the skip term applies (sigma_s > sigma_min)."""
    sigma = (torch.randn(draws, generator=torch.Generator().manual_seed(0)) * 1.2 - 1.2).exp()
    return float(karras_skip_sigma(sigma, skip, num_steps)[1].double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nfe", type=int, default=9)
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--steps", type=int, default=120, help="fine-tune steps per run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n", type=int, default=400, help="images per proxy evaluation")
    parser.add_argument("--taus", default="0.99,0.95,0.9")
    parser.add_argument("--skips", default="1,2")
    parser.add_argument("--baseline-seeds", default="0,1", help="training seeds of the tau = 1 runs (noise floor)")
    parser.add_argument("--grid-seeds", default="0", help="training seeds of the tau x skip runs")
    parser.add_argument("--checkpoint", default=None, help="a skipsearch .safetensors (default: the bundled model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model("edm", checkpoint=args.checkpoint, device=args.device)
    num_steps = steps_for_nfe(args.sampler, args.nfe)
    proxy = FidProxy(model, sampler=args.sampler, nfe=args.nfe, config=ProxyConfig(rungs=(args.n,)))
    images = training_images("mnist")
    print(f"model edm sha256 {model.identity.sha256[:12]}, {args.sampler} NFE {args.nfe} ({num_steps} steps: the "
          f"Karras grid of sigma_s), fine-tune {args.steps} steps x batch {args.batch}, lr {args.lr:g}, proxy FID "
          f"on n={args.n} (same seeds for every model), {torch.get_num_threads()} threads, {args.device}")

    def score(adapter) -> tuple[float, float]:
        t0 = time.perf_counter()
        value = proxy.with_adapter(adapter).evaluate(None, preview=0).value
        return value, time.perf_counter() - t0

    base_value, base_eval = score(model)
    print(f"{'run':36s} {'train s':>8s} {'FID proxy':>10s} {'vs tau=1':>9s}")
    print(f"{'no fine-tune':36s} {0.0:8.1f} {base_value:10.2f} {'':>9s}   (eval {base_eval:.0f}s)")

    def run(tau: float, skip: int, seed: int) -> tuple[float, float]:
        budget = FinetuneBudget(steps=args.steps, segments=1, batch_size=args.batch, seed=seed)
        ema, result = finetune_network(model.net, images, tau=tau, skip=skip, lr=args.lr, num_steps=num_steps,
                                       budget=budget, sigma_min=model.sigma_min, sigma_max=model.sigma_max,
                                       device=args.device)
        value, _ = score(EDMAdapter(ema, "edm"))
        return value, result.wall_seconds

    baselines = []
    for seed in [int(s) for s in floats(args.baseline_seeds)]:
        value, seconds = run(1.0, 1, seed)
        baselines.append(value)
        print(f"{f'tau=1 (EDM loss) seed {seed}':36s} {seconds:8.1f} {value:10.2f} {value - baselines[0]:+9.2f}")
    if len(baselines) > 1:
        spread = max(baselines) - min(baselines)
        print(f"{'':36s} {'':8s} training-seed spread of the baseline: {spread:.2f}")
    for skip in [int(s) for s in floats(args.skips)]:
        share = active_fraction(skip, num_steps)
        for tau in floats(args.taus):
            for seed in [int(s) for s in floats(args.grid_seeds)]:
                value, seconds = run(tau, skip, seed)
                label = f"tau={tau:g} skip={skip} (active {share:.0%})" + (f" seed {seed}" if seed else "")
                print(f"{label:36s} {seconds:8.1f} {value:10.2f} {value - baselines[0]:+9.2f}")


if __name__ == "__main__":
    main()
