"""Export the validated best schedule from the store as schedule JSON (what ``apply()`` and ``sample`` read).

A schedule of fine-tuned weights (S²-DM trials) is exported self-contained: the weights are copied beside the JSON
as ``<json stem>.safetensors`` and the JSON names them by that file name plus their sha256, so the pair can be moved
together and ``sample --schedule`` loads them without ``--checkpoint``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from skipsearch.export.errors import AllRejectedError, ExportError
from skipsearch.proxy.config import metric_spec
from skipsearch.schedule import SkipSchedule
from skipsearch.store import BestRow, BestStore


def find_best(store: BestStore, model: str, sampler: str | None, nfe: int | None) -> BestRow:
    rows = store.best(model, sampler, nfe)
    if not rows:
        known = ", ".join(sorted({f"{r.model_name}/{r.sampler}/nfe{r.nfe}" for r in store.best()})) or "none"
        raise ExportError(f"no validated best schedule for model={model} sampler={sampler or 'any'} "
                          f"nfe={nfe if nfe is not None else 'any'}; stored: {known}. "
                          "Run 'skipsearch optimize' first")
    comparable = len({(r.model_name, r.weights_sha256, r.nfe, r.metric) for r in rows}) == 1
    if len(rows) > 1 and sampler is None and nfe is not None and comparable:
        # One NFE, one metric, several samplers (a study that searched the sampler): the best of them is the answer.
        return min(rows, key=lambda r: metric_spec(r.metric).sort_key(r.value))
    if len(rows) > 1:
        options = ", ".join(f"--sampler {r.sampler} --nfe {r.nfe}" for r in rows[:6])
        raise ExportError(f"{len(rows)} best schedules match; choose one with {options}")
    return rows[0]


def export_best(store: BestStore, output: str | Path, *, model: str, sampler: str | None = None,
                nfe: int | None = None, on_skip: Callable[[str], None] | None = None) -> tuple[Path, BestRow]:
    """Write the best validated schedule no reviewer rejected (``on_skip`` gets one line per rejected winner)."""
    from skipsearch.export.review import choose, review_study_name
    best = find_best(store, model, sampler, nfe)
    choice = choose(store, best)
    for line in choice.lines:
        if on_skip is not None:
            on_skip(line)
    if choice.row is None:
        said = "; ".join(f"trial {v.trial} of study {v.study}: {v.comment or 'no comment'}" for v in choice.skipped)
        raise AllRejectedError(f"every validated schedule for model={best.model_name} sampler={best.sampler} "
                               f"nfe={best.nfe} was rejected by a reviewer ({said}); accept one in the "
                               f"dashboard (study {review_study_name(choice.skipped[0].study)}) or run 'skipsearch "
                               "optimize' for more")
    row = choice.row
    source = f"store row {row.id}" if row is best else f"validation row {row.id}"
    schedule = SkipSchedule.from_json(row.schedule_json, source=source)
    review = choice.provenance()
    if review is not None:  # what a reviewer said of it, and which rejected winners it replaces
        schedule = schedule.with_metadata(provenance={**schedule.provenance, "review": review})
    weights = schedule.provenance.get("weights_path")
    if weights:  # fine-tuned weights: copied first, so the JSON never names a file that is not there
        from skipsearch.export.weights import copy_weights_beside
        sha = schedule.provenance.get("weights_sha256") or (schedule.model.sha256 if schedule.model else None)
        if not sha:
            raise ExportError(f"the best schedule (study {row.study_name} trial {row.trial_number}) names weights "
                              f"{weights} but no sha256; run 'skipsearch optimize' again")
        if not Path(weights).is_file():
            raise ExportError(f"the fine-tuned weights of the best schedule (study {row.study_name} trial "
                              f"{row.trial_number}) are gone ({weights}); a study keeps only its best trial's "
                              "weights: run 'skipsearch optimize' for a new study")
        copy = copy_weights_beside(weights, output, sha)
        schedule = schedule.with_metadata(provenance={**schedule.provenance, "weights_path": copy.name,
                                                      "weights_sha256": sha})
    return schedule.save(output), row
