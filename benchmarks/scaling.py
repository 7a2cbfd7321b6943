"""Trial throughput of one study on 1 and 2 Ray workers (1 torch thread each), bundled model, CPU.

A tiny fixed proxy (rungs 64,128, no pruning) so every trial costs the same. Throughput is taken from the trials'
own timestamps (first start to last completion), so Ray's start and each worker's model load are not counted; the
wall time with them is printed beside it. Target: K workers give at least 0.9 * K times one worker's trials/min,
which needs K free cores (a busy machine shows less). Prints figures, asserts nothing.

    python benchmarks/scaling.py [--trials 8 (per worker)] [--nfe 5] [--workers 1,2] [--storage URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import optuna
import ray
import torch

from skipsearch.execution.ray import run_on_ray
from skipsearch.search.definition import default_study
from skipsearch.search.session import FINISHED, open_session
from skipsearch.store import redact_url


def measure(workers: int, trials: int, nfe: int, storage: str) -> tuple[float, float, float, float]:
    """Trials per minute from the trial timestamps, wall seconds including the workers' start, mean seconds per
    trial, and how busy the workers were (trial time / (workers * window): below 1 is the executor's overhead)."""
    definition = default_study("edm").override(nfe=nfe, trials=trials, proxy__rungs=(64, 128),
                                               space_bounds__calibrate=False,
                                               search__pruner="none", search__sampler="random",
                                               search__warm_start=False,
                                               name=f"scaling-k{workers}-{int(time.time())}")
    session = open_session(definition, storage_url=storage, device="cpu")
    start = time.perf_counter()
    run_on_ray(session, workers=workers)
    wall = time.perf_counter() - start
    done = session.study.get_trials(states=FINISHED)
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    window = (last - first).total_seconds()
    busy = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    session.store.close()
    return len(done) / (window / 60), wall, busy / len(done), busy / (workers * window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="trials per worker")
    parser.add_argument("--nfe", type=int, default=5)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--storage", default=None, help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    counts = [int(k) for k in args.workers.split(",")]
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # One runtime for all counts (run_on_ray joins it), so its start is paid once and not measured.
    ray.init(num_cpus=max(counts), num_gpus=0, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"bundled model, heun NFE {args.nfe}, rungs 64,128, no pruning, {args.trials} trials per worker, "
          f"1 torch thread per worker, {cores} cores, load average {os.getloadavg()[0]:.1f}, storage "
          f"{redact_url(args.storage) if args.storage else 'SQLite (temporary file)'}")
    rates: dict[int, float] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for k in counts:
                storage = args.storage or f"sqlite:///{folder}/k{k}.db"
                rates[k], wall, per_trial, busy = measure(k, args.trials * k, args.nfe, storage)
                print(f"K={k}: {rates[k]:6.2f} trials/min ({args.trials * k} trials, {per_trial:.2f}s per trial, "
                      f"workers busy {busy:.0%}, {wall:.0f}s wall with start)")
    finally:
        ray.shutdown()
    base = rates.get(1)
    if base:
        for k, rate in rates.items():
            if k > 1:
                print(f"K={k} / K=1: {rate / base:.2f}x (target >= {0.9 * k:.1f}x)")


if __name__ == "__main__":
    main()
