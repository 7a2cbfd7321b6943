"""Forward time of the bundled model with and without skip hooks (prints the ratio; not a test).

    python benchmarks/hooks.py [--batch 64] [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from skipsearch.models import load_model
from skipsearch.schedule import SkipSchedule


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model("edm")
    k = len(model.skip_points)
    x = torch.randn(args.batch, *model.img_shape)
    sigma = torch.logspace(-2, 1.5, args.batch)
    cases = {
        "no hooks": None,
        "layer-wise (linear 0.68->1.0)": SkipSchedule.linear(0.68, 1.0, k),
        "4 sigma intervals x per-layer": SkipSchedule.intervals(
            [[0.7 + 0.03 * i] * k for i in range(4)], sigma_bounds=[math.inf, 5.0, 1.0, 0.2, 0.0]),
    }
    base = None
    print(f"bundled model, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, schedule in cases.items():
        handle = model.apply(schedule, check_identity=False) if schedule is not None else None
        with torch.inference_mode():
            seconds = timed(lambda: model.denoise(x, sigma), args.repeats)
        if handle is not None:
            handle.remove()
        base = base or seconds
        print(f"{name:32s} {seconds * 1e3:8.2f} ms   ratio {seconds / base:.3f}")


if __name__ == "__main__":
    main()
