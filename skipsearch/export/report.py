"""Reports: a study's trials as CSV/Markdown (pandas), FID-vs-rho and FID-vs-NFE plots, and ``index.html``
(:mod:`skipsearch.export.report_html`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
import pandas as pd

from skipsearch.export.report_html import write_index
from skipsearch.store import BestStore
from skipsearch.store.records import StudyRecord, TrialRecord

if TYPE_CHECKING:
    from skipsearch.settings import Settings


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, value, parameters, mean rho, rungs, validation, timing."""
    validated = StudyRecord(study).validated()
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.read(t)
        schedule = record.schedule or {}
        rho = np.asarray(schedule.get("rho") or [[np.nan]], dtype=float)
        row = {"trial": t.number, "state": t.state.name, "value": t.value,
               "validated": validated[t.number].value if t.number in validated else None,
               "mean_rho": float(rho.mean()), "rho_bottom": float(rho[:, 0].mean()),
               "rho_top": float(rho[:, -1].mean()), "eps_scale": schedule.get("eps_scale"),
               "baseline": record.baseline or "", "fail_reason": record.fail_reason or "",
               "wall_seconds": record.wall_seconds, "denoiser_calls": record.denoiser_calls}
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row.update({f"proxy_n{n}": v for n, v in record.rungs.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else floatfmt.format(v)
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_report(study: optuna.Study, store: BestStore, output: str | Path, *, images: bool = True,
                 device: str = "auto", settings: Settings | None = None,
                 on_note: Callable[[str], None] | None = None, model: str | None = None) -> list[Path]:
    """``trials.csv``, ``trials.md``, ``fid_vs_rho.png``, (from the store) ``fid_vs_nfe.png`` and ``index.html``
    with its plots in ``output``; ``images``: also sample the best / rho = 1 / paper-recipe grids with the study's
    model (on ``device``; ``model``: the spec to load, by default the one the study was run with). ``on_note``
    hears what was left out and why (one line each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study)
    written = [output / "trials.csv", output / "trials.md"]
    frame.to_csv(written[0], index=False)
    written[1].write_text(f"# {study.study_name}\n\n" + to_markdown(frame))

    done = frame[frame.state == "COMPLETE"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(done.rho_bottom, done.value, s=14, label="proxy (search n)")
    valid = frame.dropna(subset=["validated"])
    ax.scatter(valid.rho_bottom, valid.validated, marker="x", color="C3", label="validated (final n)")
    ax.set_xlabel("rho at the bottom skip point (mean over intervals)")
    ax.set_ylabel(StudyRecord(study).definition.get("metric", "proxy"))
    ax.set_title(study.study_name, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output / "fid_vs_rho.png", dpi=120)
    plt.close(fig)
    written.append(output / "fid_vs_rho.png")

    definition = StudyRecord(study).definition
    rows = [r for r in store.best(definition.get("model"), definition.get("sampler"))
            if r.weights_sha256 == definition.get("weights_sha256")]
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        rows.sort(key=lambda r: r.nfe)
        ax.plot([r.nfe for r in rows], [r.value for r in rows], "o-", label="validated best")
        ax.set_xlabel("NFE")
        ax.set_ylabel(rows[0].metric)
        ax.set_title(f"{definition.get('model')} / {definition.get('sampler')}", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(output / "fid_vs_nfe.png", dpi=120)
        plt.close(fig)
        written.append(output / "fid_vs_nfe.png")
    extra = [p.name for p in written if p.suffix == ".png"]
    return written + write_index(study, store, output, images=images, device=device, settings=settings, extra=extra,
                                 on_note=on_note, model=model)
