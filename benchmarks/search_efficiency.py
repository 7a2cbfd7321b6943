"""Search efficiency: exhaustive grid (the paper's way) vs TPE with and without pruning (prints figures).

On the bundled model at NFE 9 the grid evaluates rho_bottom in 0.50..1.00 step 0.02 (linear to rho_top = 1.0) at
the proxy's final n; TPE searches the same one-parameter space with the same proxy (common random numbers: the same
schedule gets the same value in every method), with and without successive-halving pruning on the rungs. Prints the
best value each reaches and the denoiser calls spent (images x NFE). Target: within 1 % of the grid's best at
<= 25 % of its calls.

    python benchmarks/search_efficiency.py [--rungs 200,400,800] [--trials 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import optuna
import torch

from skipsearch.execution.session import make_pruner
from skipsearch.models import load_model
from skipsearch.proxy.config import ProxyConfig
from skipsearch.proxy.fid_proxy import FidProxy
from skipsearch.schedule import SkipSchedule
from skipsearch.search.definition import SearchConfig
from skipsearch.search.objective import Objective
from skipsearch.search.spaces import SearchSpace, SpaceContext

optuna.logging.set_verbosity(optuna.logging.WARNING)


class BottomOnly(SearchSpace):
    """The grid's space: rho_bottom in [0.5, 1.0], linear to 1.0 at the top."""

    name = "linear-bottom"

    def _rho(self, trial):
        return SkipSchedule.linear(trial.suggest_float("rho_bottom", 0.5, 1.0), 1.0, self.ctx.num_skip_points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rungs", default="200,400,800")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--nfe", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3, help="TPE repetitions (sampler seeds)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rungs = tuple(int(r) for r in args.rungs.split(","))
    model = load_model("edm")
    calls = {"n": 0}
    raw = model.denoise

    def counting(x, sigma, labels=None):
        calls["n"] += x.shape[0]
        return raw(x, sigma, labels)

    model.denoise = counting  # counts image-level denoiser calls for every method alike
    proxy = FidProxy(model, sampler="heun", nfe=args.nfe, config=ProxyConfig(rungs=rungs))
    k = len(model.skip_points)

    start = time.perf_counter()
    grid = {}
    for rho in np.round(np.arange(0.50, 1.0001, 0.02), 2):
        grid[float(rho)] = proxy.evaluate(SkipSchedule.linear(float(rho), 1.0, k), rungs=[rungs[-1]], preview=0).value
    grid_calls, grid_seconds = calls["n"], time.perf_counter() - start
    best_rho = min(grid, key=grid.get)
    print(f"bundled model, heun NFE {args.nfe}, proxy FID (mnist-features) at n={rungs[-1]}, CRN seeds 0..")
    print(f"grid: {len(grid)} points, best rho_bottom {best_rho:.2f} FID {grid[best_rho]:.3f} "
          f"(rho=1: {grid[1.0]:.3f}),"
          f" {grid_calls} denoiser calls, {grid_seconds:.0f}s")

    ctx = SpaceContext(num_skip_points=k, level_of_point=model.level_of_points(), num_steps=(args.nfe + 1) // 2)
    for pruner in ("none", "successive-halving"):
        bests, spent = [], []
        for seed in range(args.seeds):
            calls["n"] = 0
            config = SearchConfig(pruner=pruner, seed=seed)
            study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
                                        pruner=make_pruner(config, rungs))
            study.optimize(Objective(model, proxy, BottomOnly(ctx), space_name="linear-bottom"), n_trials=args.trials)
            complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            bests.append(min(t.value for t in complete))
            spent.append(calls["n"])
        gap = (np.mean(bests) - grid[best_rho]) / grid[best_rho]
        print(f"TPE {args.trials} trials, pruner {pruner:18s}: best FID {np.mean(bests):.3f} +- {np.std(bests):.3f} "
              f"({gap:+.1%} vs grid best), calls {np.mean(spent):.0f} ({np.mean(spent) / grid_calls:.0%} of grid)")


if __name__ == "__main__":
    main()
