"""How much each part of a schedule buys: rho-only, grid-only, sampler-only and joint search at an equal budget.

For each model and NFE, one study per arm runs the real search (Optuna TPE, successive halving on the proxy rungs,
its baselines enqueued) for ``--trials`` trials; ``random`` runs the joint space with Optuna's RandomSampler at
``--random-factor`` times the trials (the sanity floor for BO). Each arm's best trial is then validated on
``--final-n`` fresh seeds (offset 10^6) together with rho = 1 (the study's sampler on its default grid); every
validation uses the same seeds, so differences are paired: the CI is a paired bootstrap over images
(``--bootstrap`` resamples) of FID(arm) - FID(rho = 1) and FID(joint) - FID(best single-factor arm). ``multi``
runs one joint study over all NFEs at once (objective: mean proxy ratio to rho = 1) and validates it at each NFE,
against the per-NFE joint winners. Denoiser calls count every image each trial sampled (pruned trials up to their
last rung). Prints a markdown table and writes ``--json``.

    python benchmarks/joint_search.py [--models edm,ddpm] [--nfes 5,9,17] [--trials 8] [--rungs 100,200]
        [--final-n 2000] [--arms rho,grid,sampler,joint,random] [--multi] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

MODELS = {"edm": ("edm", "heun"), "ddpm": ("diffusers:skipsearch/assets/ddpm_mnist", "ddim")}
ARMS = {"rho": "per-level", "rho-sigma": "rho-sigma", "per-level-sigma": "per-level-sigma", "grid": "grid",
        "sampler": "sampler", "joint": "joint", "joint-rho-sigma": "rho-sigma+grid+sampler",
        "joint-per-level": "per-level+grid+sampler", "random": "joint"}
JOINT = ("joint", "joint-rho-sigma", "joint-per-level", "random")
SINGLE = ("rho", "grid", "sampler")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="edm,ddpm", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--nfes", default="5,9,17")
    parser.add_argument("--arms", default="rho,grid,sampler,joint,random",
                        help=f"comma-separated: {', '.join(ARMS)}")
    parser.add_argument("--trials", type=int, default=8, help="trials per BO study (baselines included)")
    parser.add_argument("--random-factor", type=int, default=4)
    parser.add_argument("--rungs", default="100,200")
    parser.add_argument("--final-n", type=int, default=2000)
    parser.add_argument("--bootstrap", type=int, default=300)
    parser.add_argument("--rho-min", type=float, default=0.5)
    parser.add_argument("--rho-max", type=float, default=1.1)
    parser.add_argument("--multi", action="store_true", help="also one joint study over all NFEs (first model)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import optuna

    from skipsearch.device import configure_cpu_threads, resolve_device
    from skipsearch.execution.session import open_session
    from skipsearch.models import load_model
    from skipsearch.proxy.config import ProxyConfig
    from skipsearch.proxy.paired import describe_schedule as describe
    from skipsearch.proxy.paired import fid_of, paired_bootstrap, recipe_key, schedule_features
    from skipsearch.schedule import SkipSchedule
    from skipsearch.search.definition import SearchConfig, SpaceBounds, StudyDefinition
    from skipsearch.settings import Settings
    from skipsearch.store.records import TrialRecord

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(args.device)
    threads = configure_cpu_threads() if device.type == "cpu" else 0
    nfes = [int(v) for v in args.nfes.split(",")]
    rungs = tuple(int(v) for v in args.rungs.split(","))
    arms = [a for a in args.arms.split(",") if a]
    settings = Settings.from_env()
    rows: list[dict] = []
    rng = np.random.default_rng(0)

    def run_study(adapter, model: str, sampler: str, arm: str, nfe: int, storage: str, nfe_set=()) -> dict:
        definition = StudyDefinition(
            model=model, sampler=sampler, nfe=nfe, nfes=tuple(nfe_set), space=ARMS[arm],
            trials=args.trials * (args.random_factor if arm == "random" else 1),
            # churn is searched by the joint arms only: a single-factor arm changes its factor alone
            space_bounds=SpaceBounds(rho_min=args.rho_min, rho_max=args.rho_max, calibrate=False,
                                     search_churn=arm in JOINT),
            proxy=ProxyConfig(rungs=rungs),
            search=SearchConfig(sampler="random" if arm == "random" else "tpe", seed=0, validate_top_k=0,
                                warm_start=False),
            name=f"{arm}-{model.replace(':', '_').replace('/', '_')}-{'_'.join(map(str, nfe_set)) or nfe}")
        start = time.perf_counter()
        session = open_session(definition, storage_url=storage, adapter=adapter, settings=settings)
        session.enqueue_starts()
        session.run()
        seconds = time.perf_counter() - start
        trials = [t for t in session.study.trials if t.intermediate_values]
        per_image = sum(nfe_set) if nfe_set else nfe
        calls = sum(max(t.intermediate_values) * per_image for t in trials)
        complete = [t for t in trials if t.value is not None and t.state.name == "COMPLETE"]
        best = min(complete, key=lambda t: t.value)
        schedule = SkipSchedule.from_dict(TrialRecord.read(best).schedule)
        session.store.close()
        return {"schedule": schedule, "seconds": seconds, "calls": calls, "proxy": best.value,
                "trial": best.number, "label": best.user_attrs.get("baseline"), "proxy_obj": session.proxy}

    cache: dict[str, np.ndarray] = {}

    def features(adapter, proxy, schedule, nfe: int) -> np.ndarray:
        """Features of the validation images; arms that picked the same schedule share them (often a baseline)."""
        key = recipe_key(proxy, schedule, nfe)  # None: rho = 1, the study's sampler on the model's default grid
        if key not in cache:
            cache[key] = schedule_features(proxy, schedule, nfe, range(1_000_000, 1_000_000 + args.final_n))
        return cache[key]

    def paired_ci(a: np.ndarray, b: np.ndarray, ref) -> tuple[float, float, float]:
        return paired_bootstrap(a, b, ref, args.bootstrap, rng)

    model_names = [m for m in args.models.split(",") if m]
    with tempfile.TemporaryDirectory() as home:
        settings = settings.replace(home=Path(home))
        storage = f"sqlite:///{home}/joint.sqlite"
        for index, key in enumerate(model_names):
            model, sampler = MODELS[key]
            adapter = load_model(model, device=str(device), settings=settings)
            multi = None
            if args.multi and index == 0:
                multi = run_study(adapter, model, sampler, "joint", nfes[len(nfes) // 2], storage, nfe_set=nfes)
                print(f"# {key}: multi-NFE joint study {multi['seconds']:.0f}s, {multi['calls']} calls, picked "
                      f"{describe(multi['schedule'])}", flush=True)
            for nfe in nfes:
                found = {arm: run_study(adapter, model, sampler, arm, nfe, storage) for arm in arms}
                proxy = next(iter(found.values()))["proxy_obj"]
                ref = proxy.ref_stats
                t0 = time.perf_counter()
                base = features(adapter, proxy, None, nfe)
                valid = {arm: features(adapter, proxy, result["schedule"], nfe) for arm, result in found.items()}
                if multi is not None:
                    valid["multi"] = features(adapter, proxy, multi["schedule"], nfe)
                validation_s = time.perf_counter() - t0
                base_fid = fid_of(base, ref)
                singles = [a for a in SINGLE if a in valid]
                best_single = min(singles, key=lambda a: fid_of(valid[a], ref)) if singles else None
                rows.append({"model": key, "nfe": nfe, "arm": "rho=1", "fid": base_fid, "sampler": sampler,
                             "what": f"{sampler}, default grid, rho=1"})
                print(f"# {key} NFE {nfe}: rho=1 {base_fid:.2f}; validation {validation_s:.0f}s", flush=True)
                for arm, feats in valid.items():
                    result = found.get(arm) or multi
                    diff, low, high = paired_ci(feats, base, ref)
                    row = {"model": key, "nfe": nfe, "arm": arm, "fid": fid_of(feats, ref), "vs_untuned": diff,
                           "vs_untuned_ci": [low, high], "calls": result["calls"], "seconds": result["seconds"],
                           "proxy": result["proxy"], "what": describe(result["schedule"]),
                           "trials": args.trials * (args.random_factor if arm == "random" else 1)}
                    if (arm in JOINT or arm == "multi") and best_single is not None:
                        d, lo, hi = paired_ci(feats, valid[best_single], ref)
                        row.update(vs_best_single=d, vs_best_single_ci=[lo, hi], best_single=best_single)
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "what"}), "|", row["what"], flush=True)
    print()
    print(f"device {device} ({threads or 'GPU'} threads); {args.trials} trials per BO arm (random: "
          f"{args.random_factor}x), rungs {list(rungs)}, validated n={args.final_n} fresh seeds, paired bootstrap "
          f"{args.bootstrap}x, 95% CI")
    print("| model | NFE | search | FID (n={}) | vs rho=1 [95% CI] | vs best single [95% CI] | denoiser calls | "
          "search s | picked |".format(args.final_n))
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        def ci(name):
            if name not in row:
                return ""
            lo, hi = row[name + "_ci"]
            return f"{row[name]:+.2f} [{lo:+.2f}, {hi:+.2f}]" + (f" ({row['best_single']})"
                                                                  if name == "vs_best_single" else "")
        calls = f"{row['calls'] / 1e3:.0f}k" if "calls" in row else ""
        seconds = f"{row['seconds']:.0f}" if "seconds" in row else ""
        print(f"| {row['model']} | {row['nfe']} | {row['arm']} | {row['fid']:.2f} | {ci('vs_untuned')} | "
              f"{ci('vs_best_single')} | {calls} | {seconds} | {row['what']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1, default=lambda v: None if isinstance(v, float) and
                                        math.isnan(v) else str(v)))


if __name__ == "__main__":
    main()
