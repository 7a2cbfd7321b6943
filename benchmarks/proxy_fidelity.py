"""Proxy fidelity: does the quick proxy rank schedules like a large-n reference FID? (prints figures; not a test)

On the bundled model at NFE 9 (Heun), for >= 10 schedules spanning the space, compute a reference FID at
``--n-ref`` images on its own seeds, and each proxy (FID, KID) at n in ``--ns`` with and without common random
numbers over ``--seed-sets`` seed sets. Prints Spearman rank correlation to the reference (mean +- std over seed
sets) and the cost ratio n / n_ref. Target: Spearman >= 0.95 at <= 10 % of the reference cost.

Without CRN, schedule i on seed set s uses seed block (i + s) mod B of B = max(seed sets, 3) blocks, so neighbouring
schedules never share noise (schedules B apart do: stated, not hidden). Features are cached per (schedule, block).

    python benchmarks/proxy_fidelity.py [--n-ref 2000] [--ns 200,500,1000] [--seed-sets 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from skipsearch.models import load_model
from skipsearch.proxy.extractors import get_extractor
from skipsearch.proxy.fid_proxy import reference_features
from skipsearch.proxy.metrics import fid_result, kid
from skipsearch.proxy.stats import FeatureStats, compute_reference_stats
from skipsearch.sampling.generate import generate
from skipsearch.schedule import SkipSchedule

REF_SEED_OFFSET = 5_000_000


def schedules(k: int, sigma_min: float, sigma_max: float) -> dict[str, SkipSchedule]:
    mid = [math.inf, 2.0, 0.2, 0.0]
    return {
        **{f"constant {r:.1f}": SkipSchedule.constant(r, k) for r in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)},
        "linear 0.6->1.0": SkipSchedule.linear(0.6, 1.0, k),
        "linear 0.8->1.0": SkipSchedule.linear(0.8, 1.0, k),
        "window high-sigma 0.6": SkipSchedule.intervals([[0.6] * k, [1.0] * k, [1.0] * k], mid),
        "window mid-sigma 0.6": SkipSchedule.intervals([[1.0] * k, [0.6] * k, [1.0] * k], mid),
        "window low-sigma 0.6": SkipSchedule.intervals([[1.0] * k, [1.0] * k, [0.6] * k], mid),
        "decreasing in time 0.6": SkipSchedule.linear_in_time(0.6, k, direction="decreasing", sigma_min=sigma_min,
                                                              sigma_max=sigma_max),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-ref", type=int, default=2000)
    parser.add_argument("--ns", default="200,500,1000")
    parser.add_argument("--seed-sets", type=int, default=3)
    parser.add_argument("--nfe", type=int, default=9)
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--cache", default="runs/proxy_fidelity")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ns = [int(n) for n in args.ns.split(",")]
    block = max(ns)
    blocks = max(args.seed_sets, 3)
    model = load_model("edm")
    extractor = get_extractor("mnist-features")
    ref_stats = compute_reference_stats("mnist", "train", extractor).stats
    real = reference_features(extractor, "mnist", "train")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    cost = {"images": 0, "seconds": 0.0}

    def features(name: str, schedule: SkipSchedule, offset: int, n: int) -> np.ndarray:
        path = cache / f"{name.replace(' ', '_').replace('>', '')}-{args.sampler}{args.nfe}-{offset}-{n}.npy"
        if path.exists():
            return np.load(path)
        start = time.perf_counter()
        images = generate(model, sampler=args.sampler, nfe=args.nfe, seeds=range(offset, offset + n),
                          schedule=schedule, batch_size=args.batch).images
        out = extractor(images).double().numpy()
        cost["images"] += n
        cost["seconds"] += time.perf_counter() - start
        np.save(path, out)
        return out

    def fid_of(feats: np.ndarray) -> float:
        return fid_result(FeatureStats.from_features(feats), ref_stats).fid

    table = schedules(len(model.skip_points), model.sigma_min, model.sigma_max)
    names = list(table)
    reference = {}
    for name in names:
        reference[name] = fid_of(features(name, table[name], REF_SEED_OFFSET, args.n_ref))
    print(f"bundled model, {args.sampler} NFE {args.nfe}, {len(names)} schedules, reference FID at n={args.n_ref} "
          f"(seeds {REF_SEED_OFFSET}+), mnist-features, {torch.get_num_threads()} threads")
    for name in names:
        print(f"  {name:24s} reference FID {reference[name]:8.3f}")
    ref_values = [reference[n] for n in names]

    print(f"\n{'metric':6s} {'CRN':4s} {'n':>5s} {'Spearman mean':>14s} {'std':>6s} {'cost':>6s}")
    for metric in ("fid", "kid"):
        for crn in (True, False):
            for n in ns:
                rhos = []
                for s in range(args.seed_sets):
                    values = []
                    for i, name in enumerate(names):
                        b = s if crn else (i + s) % blocks
                        feats = features(name, table[name], b * block, block)[:n]
                        if metric == "fid":
                            values.append(fid_of(feats))
                        else:
                            values.append(kid(feats, real, subsets=50, subset_size=min(n, 250))[0])
                    rhos.append(spearmanr(values, ref_values).statistic)
                print(f"{metric:6s} {'yes' if crn else 'no':4s} {n:5d} {np.mean(rhos):14.3f} {np.std(rhos):6.3f} "
                      f"{n / args.n_ref:6.1%}")
    print(f"\ngenerated {cost['images']} images in {cost['seconds']:.0f}s this run "
          f"({cost['images'] / max(cost['seconds'], 1e-9):.1f} images/s incl. features)")


if __name__ == "__main__":
    main()
