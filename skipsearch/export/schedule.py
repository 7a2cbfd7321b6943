"""Export the validated best schedule from the store as schedule JSON (what ``apply()`` and ``sample`` read)."""

from __future__ import annotations

from pathlib import Path

from skipsearch.errors import SkipsearchError
from skipsearch.schedule import SkipSchedule
from skipsearch.store import BestRow, BestStore


class ExportError(SkipsearchError, LookupError):
    """No stored best matches the request; the message lists what exists."""


def find_best(store: BestStore, model: str, sampler: str | None, nfe: int | None) -> BestRow:
    rows = store.best(model, sampler, nfe)
    if not rows:
        known = ", ".join(sorted({f"{r.model_name}/{r.sampler}/nfe{r.nfe}" for r in store.best()})) or "none"
        raise ExportError(f"no validated best schedule for model={model} sampler={sampler or 'any'} "
                          f"nfe={nfe if nfe is not None else 'any'}; stored: {known}. "
                          "Run 'skipsearch optimize' first")
    if len(rows) > 1:
        options = ", ".join(f"--sampler {r.sampler} --nfe {r.nfe}" for r in rows[:6])
        raise ExportError(f"{len(rows)} best schedules match; choose one with {options}")
    return rows[0]


def export_best(store: BestStore, output: str | Path, *, model: str, sampler: str | None = None,
                nfe: int | None = None) -> tuple[Path, BestRow]:
    row = find_best(store, model, sampler, nfe)
    schedule = SkipSchedule.from_json(row.schedule_json, source=f"store row {row.id}")
    return schedule.save(output), row
