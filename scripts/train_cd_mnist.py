"""Consistency-distil the bundled EDM model (teacher) into a one-step MNIST model, with skipsearch's training loop.

    OMP_NUM_THREADS=1 python scripts/train_cd_mnist.py --steps 3000 --budget-minutes 40

Writes ``skipsearch/assets/cd_edm_mnist.safetensors`` (the EMA of the student, saved every ``--save-every`` steps
and at the end; the wall budget stops the run and saves) and ``cd_edm_mnist.json`` (the card). ``--time N`` only
times N steps and writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--scales", type=int, default=18, help="N, the Karras levels of the distillation grid")
    parser.add_argument("--target-ema", type=float, default=0.95)
    parser.add_argument("--distance", default="l2", choices=("l2", "pseudo-huber"))
    parser.add_argument("--budget-minutes", type=float, default=40.0)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--time", type=int, default=0, help="time this many steps and exit")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from skipsearch.data import load_mnist, to_model_range
    from skipsearch.models import load_model
    from skipsearch.models.bundled import BUNDLED_CONFIG
    from skipsearch.models.consistency import CD_WEIGHTS, save_consistency_network
    from skipsearch.models.parametrization import ConsistencyNetwork
    from skipsearch.settings import Settings
    from skipsearch.training.consistency import ConsistencyDistillationLoss
    from skipsearch.training.loop import TrainConfig, train

    torch.manual_seed(0)
    teacher = load_model("edm", settings=Settings.from_env()).net
    student = ConsistencyNetwork(copy.deepcopy(teacher.model), img_resolution=28, img_channels=1)
    loss_fn = ConsistencyDistillationLoss(teacher, num_scales=args.scales, target_ema=args.target_ema,
                                          distance=args.distance)
    images = to_model_range(load_mnist("train")[0])
    steps = args.time or args.steps
    config = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=min(100, steps),
                         log_every=min(args.save_every, steps) if not args.time else steps,
                         ema_halflife_images=50_000)
    output = args.output or CD_WEIGHTS
    start = time.perf_counter()
    deadline = start + args.budget_minutes * 60

    def card(step: int, loss: float) -> dict:
        return {"model": "cd-edm", "architecture": BUNDLED_CONFIG, "num_skip_points": 9,
                "teacher": "the bundled 'edm' model (skipsearch/assets/edm_mnist.safetensors)",
                "data": "MNIST train (60000 images, 28x28, [-1,1]), unconditional",
                "loss": f"consistency distillation: Heun teacher step on a Karras grid of N = {args.scales} "
                        f"(sigma 0.002..80, rho 7), {args.distance} distance, target EMA mu = {args.target_ema}",
                "init": "student = the teacher's SongUNet under consistency scalings",
                "optimizer": f"Adam lr {args.lr} (warm-up 100 steps), batch {args.batch_size}",
                "ema": "shipped weights: EMA half-life 50k images, ramp-up ratio 0.05",
                "steps": step, "final_loss": loss, "wall_seconds": round(time.perf_counter() - start, 1),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
                "trained_with": "scripts/train_cd_mnist.py"}

    def on_log(step: int, loss: float, ema: torch.nn.Module) -> None:
        print(f"step {step} loss {loss:.5f} {time.perf_counter() - start:.0f}s", flush=True)
        if not args.time:
            save_consistency_network(ema, output, BUNDLED_CONFIG, card(step, loss))

    ema, result = train(student, images, config=config, loss_fn=loss_fn, on_log=on_log,
                        should_stop=lambda: time.perf_counter() > deadline)
    print(f"{result.steps} steps in {result.wall_seconds:.1f}s ({result.wall_seconds / result.steps:.2f} s/step)")
    if not args.time:
        save_consistency_network(ema, output, BUNDLED_CONFIG, card(result.steps, result.final_loss))


if __name__ == "__main__":
    main()
