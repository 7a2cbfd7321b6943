"""The NFE frontier of both bundled models: FID against NFE for rho = 1, the paper recipe, a rho-only search and a
joint search, the model's own limit, and the smallest NFE where tuned sampling reaches (and breaks) it.

Runs ``skipsearch frontier`` (:func:`skipsearch.frontier.run_frontier`) per model on one resumable database in
``--out`` (re-running the same command continues where it stopped and reuses every stored study and point), writes
each model's ``frontier.png``/``.csv``/``.json``/``index.html`` under ``--out/<model>/`` and prints the terminal
table and a markdown summary line per model. The reference sampler is Heun for EDM and DDIM for the DDPM; the rho-only
space is ``per-level`` for EDM and ``rho-sigma`` for the DDPM (the README's rho-family measurement).

    python benchmarks/frontier.py [--models edm,ddpm] [--nfes 3,5,7,9,13,19,35] [--trials 12] [--rungs 100,200]
        [--n 500] [--study-n N] [--rho-min 0.5 --rho-max 1.1] [--limit-nfe 79] [--limit-max-nfe 639]
        [--bootstrap 200] [--budget CALLS] [--shared] [--out frontier-bench]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DDPM = Path(__file__).resolve().parents[1] / "skipsearch" / "assets" / "ddpm_mnist"  # from any working folder
MODELS = {"edm": ("edm", "heun", ("per-level", "joint")),
          "ddpm": (f"diffusers:{DDPM}", "ddim", ("rho-sigma", "joint"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="edm,ddpm", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--nfes", default="3,5,7,9,13,19,35")
    parser.add_argument("--trials", type=int, default=12, help="trials per study (baselines included)")
    parser.add_argument("--rungs", default="100,200")
    parser.add_argument("--n", type=int, default=500, help="validation images per point (the same seeds for all)")
    parser.add_argument("--study-n", type=int, default=None, help="images of each study's own validation")
    parser.add_argument("--rho-min", type=float, default=None, help="with --rho-max: no calibration sweep")
    parser.add_argument("--rho-max", type=float, default=None)
    parser.add_argument("--limit-nfe", type=int, default=79)
    parser.add_argument("--limit-max-nfe", type=int, default=639)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--budget", type=int, default=None, help="denoiser calls per model for this run")
    parser.add_argument("--shared", action="store_true", help="also one joint schedule for every NFE")
    parser.add_argument("--out", type=Path, default=Path("frontier-bench"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import optuna

    from skipsearch.device import configure_cpu_threads, resolve_device
    from skipsearch.export.frontier import breaks_limit, load_view, reach_nfe, terminal_table, write_outputs
    from skipsearch.frontier import FrontierEvents, FrontierPlan, LimitPlan, run_frontier
    from skipsearch.store import FrontierStore

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(args.device)
    threads = configure_cpu_threads() if device.type == "cpu" else 0
    args.out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{args.out.resolve()}/frontier.db"
    summaries = []
    for name in [m for m in args.models.split(",") if m]:
        model, sampler, spaces = MODELS[name]
        plan = FrontierPlan(model=model, nfes=tuple(int(v) for v in args.nfes.split(",")), spaces=spaces,
                            shared=args.shared, sampler=sampler, n=args.n, study_n=args.study_n, trials=args.trials,
                            rho_min=args.rho_min, rho_max=args.rho_max,
                            rungs=tuple(int(v) for v in args.rungs.split(",")), budget=args.budget,
                            resamples=args.bootstrap,
                            limit=LimitPlan(start_nfe=args.limit_nfe, max_nfe=args.limit_max_nfe))
        start = time.perf_counter()
        events = FrontierEvents(stage=lambda line, name=name: print(f"# {name} {time.perf_counter() - start:6.0f}s "
                                                                    f"{line}", flush=True))
        result = run_frontier(plan, storage_url=url, device=str(device), events=events)
        with FrontierStore(url) as store:
            view = load_view(store, result.key)
        if view.points:
            write_outputs(view, args.out / name)
        print(terminal_table(view, width=118), flush=True)
        hit = breaks_limit(view.points)
        reached = reach_nfe(view.points, view.limit)
        total = sum(p.denoiser_calls for p in view.points + view.probes) + sum(s.calls for s in view.studies)
        seconds = sum(p.seconds for p in view.points + view.probes) + sum(s.seconds for s in view.studies)
        limit = view.limit
        summaries.append(
            f"| {name} | {sampler} | "
            + (f"{limit.value:.2f} [{limit.value_low:.2f}, {limit.value_high:.2f}] at NFE {limit.nfe}"
               f"{'' if limit.converged else ' (not converged)'}" if limit else "not measured")
            + f" | {hit[0] if hit else 'no'}{f' ({hit[1]})' if hit else ''} | "
            + ", ".join(f"{arm} {reached[arm] or '-'}" for arm in view.arms)
            + f" | {total / 1e6:.2f}M | {seconds / 60:.0f} min | {result.stopped or 'complete'} |")
    print()
    print(f"device {device} ({threads or 'GPU'} threads); NFEs {args.nfes}; {args.trials} trials per study, rungs "
          f"{args.rungs}, n={args.n} validation images, limit from NFE {args.limit_nfe} (max {args.limit_max_nfe}), "
          f"paired bootstrap {args.bootstrap}x, 95% CI")
    print("| model | reference | limit FID [95% CI] | breaks the limit at NFE | first NFE within 5% of the limit |"
          " denoiser calls | wall time | run |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(summaries))


if __name__ == "__main__":
    main()
