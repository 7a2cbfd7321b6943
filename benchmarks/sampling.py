"""Images per second per sampler at NFE 9 on the bundled model, CPU (prints figures; not a test).

    python benchmarks/sampling.py [--n 64] [--nfe 9] [--threads N]
"""

from __future__ import annotations

import argparse

import torch

from skipsearch.models import load_model
from skipsearch.sampling.generate import generate
from skipsearch.sampling.samplers import DIFFUSION, samplers_for_models, steps_for_nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--nfe", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model("edm")
    print(f"bundled model, {args.n} images, NFE {args.nfe}, {torch.get_num_threads()} threads, batch {args.n}")
    generate(model, sampler="euler", nfe=1, seeds=range(4), batch_size=4)  # warm-up
    for name in samplers_for_models(DIFFUSION):  # the bundled model is a diffusion model
        steps = steps_for_nfe(name, args.nfe)
        result = generate(model, sampler=name, nfe=args.nfe, seeds=range(args.n), batch_size=args.n)
        print(f"{name:10s} steps {steps:3d}  calls/image {result.nfe:3d}  {args.n / result.seconds:7.1f} images/s")


if __name__ == "__main__":
    main()
