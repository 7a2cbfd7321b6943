"""Trials per hour against K, the trials scored together in shared forwards (``--trials-per-batch``).

One process, the bundled model (or ``--model``), a fixed proxy (one rung, no pruning, random sampler) so every
trial costs the same; each K runs a fresh study of ``--trials`` trials, and the Ks are interleaved over ``--k``
rounds (best time kept). The batch is the measured one (``skipsearch.sampling.batching``) unless ``--batch``.
Small rungs against a large batch are where K helps: one trial cannot fill the batch. Prints figures only.

    python benchmarks/trials_per_batch.py [--ks 1,2,4] [--trials 8] [--nfe 5] [--rung 64] [--k 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edm")
    parser.add_argument("--ks", default="1,2,4", help="comma-separated trials per batch")
    parser.add_argument("--trials", type=int, default=8, help="trials per study (a multiple of every K is fairest)")
    parser.add_argument("--nfe", type=int, default=5)
    parser.add_argument("--rung", type=int, default=64, help="images per trial")
    parser.add_argument("--batch", type=int, default=None, help="images per forward (default: measured)")
    parser.add_argument("--k", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import optuna

    from skipsearch.device import configure_cpu_threads, resolve_device
    from skipsearch.execution.session import open_session
    from skipsearch.models import load_model
    from skipsearch.sampling.batching import batch_size_for
    from skipsearch.search.definition import default_study
    from skipsearch.settings import Settings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(args.device)
    threads = configure_cpu_threads() if device.type == "cpu" else 0
    settings = Settings.from_env()
    adapter = load_model(args.model, device=str(device), settings=settings)
    batch = args.batch or batch_size_for(adapter)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as home:
        storage = f"sqlite:///{home}/bench.sqlite"
        run = 0
        for round_ in range(args.k):
            for k in (ks if round_ % 2 == 0 else ks[::-1]):  # alternate the order: drift hits every K alike
                run += 1
                definition = default_study(args.model).override(
                    nfe=args.nfe, trials=args.trials, name=f"k{k}-run{run}", proxy__rungs=(args.rung,),
                    proxy__batch_size=batch, space_bounds__calibrate=False, search__sampler="random",
                    search__pruner="none", search__warm_start=False, search__trials_per_batch=k)
                session = open_session(definition, storage_url=storage, adapter=adapter,
                                       settings=settings.replace(home=Path(home)))
                start = time.perf_counter()
                session.run(trials_per_batch=k)
                seconds = time.perf_counter() - start
                session.store.close()
                best[k] = min(best.get(k, float("inf")), seconds)
    print(f"model {args.model} on {device} ({threads or 'GPU'} threads), NFE {args.nfe}, {args.rung} images per "
          f"trial, {args.trials} trials per study, batch {batch} images per forward, best of {args.k}")
    print(f"{'K':>3s} {'seconds':>8s} {'trials/hour':>12s} {'vs K=1':>7s}")
    base = best.get(1)
    for k in ks:
        rate = args.trials / best[k] * 3600
        ratio = f"{base / best[k]:7.2f}" if base else ""
        print(f"{k:3d} {best[k]:8.2f} {rate:12.0f} {ratio}")


if __name__ == "__main__":
    main()
