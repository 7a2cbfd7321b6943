"""Skip-Tuning across model families (issue 23; the paper's Tables 1-4 and 10 at our scale).

For each family's small model trained here, three real studies run at the family's usual few-step setting:
``linear-in-time-decreasing`` and ``linear-in-time-increasing`` (the two orders of rho over time the paper's
Table 10 compares: EDM prefers decreasing, LDM and U-ViT increasing) and ``per-level`` (the general
per-resolution search). The rho range is each model's calibrated one (the sweep ``optimize`` runs first;
``--no-calibrate``: [--rho-min, 1]); churn is off. Each study validates its best trial on ``--final-n`` fresh seeds
with rho = 1 on the same seeds (the validation seeds are the same for every study, so the numbers are paired).
Prints one row per model: rho = 1, the best validated schedule, the lift, and which order over time won.

    python benchmarks/families.py [--families edm,ddpm,uvit,ldm,cd] [--trials 8] [--rungs 100,200]
        [--final-n 1000] [--json out.json]

A family whose model is not there (not trained or not shipped) is reported as skipped, not guessed. EDM2 has no
model trained here (its smallest ImageNet preset is far beyond this CPU); it is tested on random weights only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORDERS = ("linear-in-time-decreasing", "linear-in-time-increasing")


@dataclass(frozen=True)
class Family:
    label: str
    model: str  # a registered name or a model file
    sampler: str
    nfe: int
    paper_order: str = ""  # the order over time the paper's Table 10 found for this family
    needs: str | None = None  # a file that must exist for the model to be there ...
    missing: str = ""  # ... and what to say when it is not


FAMILIES = {
    "edm": Family("EDM, pixel, data prediction (SongUNet)", "edm", "heun", 9, "decreasing"),
    "ddpm": Family("DDPM, pixel, epsilon (diffusers UNet2DModel)", "ddpm-mnist", "ddim", 10),
    "uvit": Family("U-ViT, pixel, epsilon (token long skips)", str(REPO / "models" / "uvit-mnist.toml"), "ddim", 10,
                   "increasing",
                   needs=str(REPO / "models" / "uvit_mnist.safetensors"),
                   missing="no U-ViT trained to digits on this CPU (two 30-minute runs: blocky, not digits); train "
                           "one with scripts/train_uvit_mnist.py"),
    "ldm": Family("latent diffusion, epsilon (UNet on 7x7x4 + VAE)", "ldm-mnist", "ddim", 10, "increasing"),
    "cd": Family("consistency distillation of the EDM (one step)", "cd-edm", "onestep", 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated: {', '.join(FAMILIES)}")
    parser.add_argument("--spaces", default=",".join((*ORDERS, "per-level")))
    parser.add_argument("--trials", type=int, default=8, help="trials per study (baselines included)")
    parser.add_argument("--rungs", default="100,200")
    parser.add_argument("--final-n", type=int, default=1000)
    parser.add_argument("--rho-min", type=float, default=0.5, help="with --no-calibrate: rho in [rho-min, 1]")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="skip the calibration sweep that sets each model's rho range (as optimize does)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import optuna

    from skipsearch.device import configure_cpu_threads, resolve_device
    from skipsearch.models import ModelError, load_model
    from skipsearch.optimization import run_definition
    from skipsearch.proxy.config import ProxyConfig
    from skipsearch.search.definition import SearchConfig, SpaceBounds, StudyDefinition
    from skipsearch.settings import Settings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(args.device)
    threads = configure_cpu_threads() if device.type == "cpu" else 0
    rungs = tuple(int(v) for v in args.rungs.split(","))
    spaces = [s for s in args.spaces.split(",") if s]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as home:
        settings = Settings.from_env().replace(home=Path(home))
        storage = f"sqlite:///{home}/families.sqlite"
        for key in [k for k in args.families.split(",") if k]:
            family = FAMILIES[key]
            try:
                if family.needs and not Path(family.needs).is_file():
                    raise ModelError(family.missing or f"{family.needs} is not there")
                adapter = load_model(family.model, device=str(device), settings=settings)
            except ModelError as exc:
                print(f"# {key}: skipped ({exc})", flush=True)
                rows.append({"family": key, "label": family.label, "skipped": str(exc)})
                continue
            found: dict[str, dict] = {}
            for space in spaces:
                definition = StudyDefinition(
                    model=family.model, sampler=family.sampler, nfe=family.nfe, space=space, trials=args.trials,
                    space_bounds=SpaceBounds(search_churn=False) if args.calibrate else
                    SpaceBounds(rho_min=args.rho_min, rho_max=1.0, calibrate=False, search_churn=False),
                    proxy=ProxyConfig(rungs=rungs),
                    search=SearchConfig(seed=0, validate_top_k=1, final_n=args.final_n, warm_start=False),
                    check=False, name=f"families-{key}-{space}")
                start = time.perf_counter()
                result = run_definition(definition, storage_url=storage, device=str(device), settings=settings,
                                        export=Path(home) / f"{key}-{space}.json")
                values = [v for v in result.validations if "value" in v]
                untuned = next((v["value"] for v in values if v.get("baseline_kind") == "untuned"), None)
                best = min(values, key=lambda v: v["value"]) if values else None
                if best is not None:  # the winner's parameters (rho_0 of an order over time)
                    study = optuna.load_study(study_name=result.study_name, storage=storage)
                    best = {**best, "params": study.trials[best["trial"]].params}
                found[space] = {"untuned": untuned, "best": best, "seconds": time.perf_counter() - start}
                print(f"# {key} {space}: rho=1 {untuned}, best {best and best['value']:.3f} "
                      f"({found[space]['seconds']:.0f}s)", flush=True)
            rows.append(summarise(key, family, found, adapter))
    print()
    print(f"device {device} ({threads or 'GPU'} threads); {args.trials} trials per study, rungs {list(rungs)}, "
          f"validated on n={args.final_n} fresh seeds (the same seeds for every study: paired), rho range "
          f"{'calibrated per model' if args.calibrate else f'[{args.rho_min}, 1.0]'}, no churn")
    print("| family | model | sampler, NFE | FID rho=1 | best FID | lift | best space | decreasing (rho_0) | "
          "increasing (rho_0) | order that won | paper |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "skipped" in row:
            print(f"| {row['label']} | {row['family']} | | | | | skipped: {row['skipped']} | | | | |")
            continue
        orders = " | ".join(f"{fmt(row.get(o))} ({fmt(row.get(o + ' rho_0'))})" for o in ORDERS)
        print(f"| {row['label']} | {row['model']} | {row['sampler']}, {row['nfe']} | {fmt(row['untuned'])} | "
              f"{fmt(row['best'])} | {row['lift']} | {row['best_space']} | {orders} | {row['order']} | "
              f"{row['paper_order'] or '-'} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def summarise(key: str, family: Family, found: dict[str, dict], adapter) -> dict:
    """One table row: rho = 1 (validated in every study on the same seeds: the first one), the best validated
    trial over all spaces, and the order over time whose best was lower (a tie: neither moved off rho = 1)."""
    untuned = next((f["untuned"] for f in found.values() if f["untuned"] is not None), None)
    best_space, best = min(((s, f["best"]) for s, f in found.items() if f["best"]), key=lambda sb: sb[1]["value"],
                           default=(None, None))
    row = {"family": key, "label": family.label, "model": adapter.name, "sampler": family.sampler, "nfe": family.nfe,
           "skip_points": len(adapter.skip_points), "untuned": untuned, "best": best and best["value"],
           "best_space": best_space, "best_trial": best and best.get("trial"),
           "seconds": sum(f["seconds"] for f in found.values())}
    row["lift"] = (f"{100 * (untuned - best['value']) / untuned:+.1f}%" if untuned and best else "")
    for order in ORDERS:
        if order in found and found[order]["best"]:
            row[order] = found[order]["best"]["value"]
            row[order + " rho_0"] = found[order]["best"]["params"].get("rho_0")
    row["paper_order"] = family.paper_order
    dec, inc = row.get(ORDERS[0]), row.get(ORDERS[1])
    if dec is None or inc is None:
        row["order"] = ""
    elif abs(dec - inc) < 1e-9:
        row["order"] = "tie (rho = 1 kept)"
    else:
        row["order"] = "decreasing" if dec < inc else "increasing"
    return row


if __name__ == "__main__":
    main()
