"""Overhead of scaling skips at the concatenation (generic adapter) vs the bare network, best-of-k interleaved.

    python benchmarks/cat_interception.py [--model models/catemb-mnist.toml] [--batch 64] [--reps 7]
"""

from __future__ import annotations

import argparse
import time

import torch

from skipsearch.models import load_model
from skipsearch.schedule import SkipSchedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/catemb-mnist.toml")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    adapter = load_model(args.model)
    k = len(adapter.skip_points)
    x = torch.randn(args.batch, *adapter.img_shape, generator=torch.Generator().manual_seed(0))
    sigma = adapter.round_sigma(torch.full((args.batch,), 1.0, dtype=torch.float64)).float()
    tuned = SkipSchedule.constant(0.98, k).with_metadata(model=adapter.identity)
    best = {"bare": float("inf"), "tuned": float("inf")}
    for _ in range(args.reps):  # interleaved: the machine's load swings affect both alike
        for name in ("bare", "tuned"):
            handle = adapter.apply(tuned) if name == "tuned" else None
            start = time.perf_counter()
            for _ in range(args.calls):
                adapter.denoise(x, sigma)
            best[name] = min(best[name], (time.perf_counter() - start) / args.calls)
            if handle is not None:
                handle.remove()
    ratio = best["tuned"] / best["bare"]
    print(f"{args.model}: batch {args.batch}, best of {args.reps}: bare {1e3 * best['bare']:.2f} ms/call, "
          f"with cat interception {1e3 * best['tuned']:.2f} ms/call, ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
