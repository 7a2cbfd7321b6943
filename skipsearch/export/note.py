"""The study note optuna-dashboard shows on a study's page (Markdown): what was searched, within which bounds and
budget, what validation found and by how much it beat rho = 1, where the winner was exported, where to give verdicts.

Written at the end of every run (:func:`skipsearch.optimization.run_definition`); each run saves a new version.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from skipsearch.store.records import StudyRecord, TrialRecord, review_study_name

if TYPE_CHECKING:
    import optuna

    from skipsearch.models import SkipAdapter
    from skipsearch.search.definition import StudyDefinition
    from skipsearch.search.spaces import SearchSpace
    from skipsearch.store import BestRow
    from skipsearch.store.records import Calibration


class StudySession(Protocol):
    """What the note reads of :class:`skipsearch.execution.session.StudySession` (execution imports export)."""

    definition: StudyDefinition
    adapter: SkipAdapter
    space: SearchSpace
    study: optuna.Study
    calibration: Calibration | None


class OptimizeResult(Protocol):
    """What the note reads of :class:`skipsearch.optimization.OptimizeResult` (execution imports export, not
    the other way round)."""

    counts: dict[str, int]
    validations: list[dict[str, Any]]
    best: BestRow | None
    export_path: Path | None
    interrupted: bool

    def verdict_lines(self) -> list[str]: ...

__all__ = ["save_study_note", "study_note_markdown"]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _distribution(name: str, dist: Any) -> str:
    if hasattr(dist, "choices"):
        return f"`{name}` ∈ {{{', '.join(map(str, dist.choices))}}}"
    step = f", step {dist.step:g}" if getattr(dist, "step", None) else ""
    return f"`{name}` ∈ [{dist.low:g}, {dist.high:g}]{' (log)' if dist.log else ''}{step}"


def _lift(value: float | None, untuned: float | None) -> str:
    if value is None or untuned is None or not untuned:
        return "—"
    change = 100 * (value - untuned) / untuned
    return "±0%" if abs(change) < 0.05 else f"{abs(change):.1f}% {'lower' if change < 0 else 'higher'}"


def _validated_rows(session: StudySession, result: OptimizeResult) -> list[dict[str, Any]]:
    rows = list(result.validations)
    if not rows:  # validated by another process, or earlier: what the study holds
        rows = [{"trial": n, **v.to_dict()} for n, v in StudyRecord(session.study).validated().items()
                if v.n == session.definition.search.final_n]
    return sorted(rows, key=lambda r: (r.get("value") is None, r.get("value") or 0.0, r["trial"]))


def study_note_markdown(session: StudySession, result: OptimizeResult) -> str:
    """The note's Markdown for the session's study after ``result`` (counts, validations, export path)."""
    from skipsearch.proxy.config import QUALITY_FIELDS, metric_display_name
    d, study = session.definition, session.study
    metric = metric_display_name(d.proxy.metric, d.proxy.extractor)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    lines = [f"## {study.study_name}", "",
             f"**{session.adapter.name}** (weights sha256 `{session.adapter.identity.sha256[:12]}`) · sampler "
             f"`{d.sampler}` · NFE {d.nfe} · metric **{metric}** (extractor `{d.proxy.extractor}`, reference "
             f"{d.proxy.dataset} {d.proxy.split}; lower is better)", "", "### Searched"]
    distributions: dict[str, Any] = {}
    for t in trials.values():
        distributions.update(t.distributions)
    params = ", ".join(_distribution(k, v) for k, v in sorted(distributions.items())) or "no trial has run yet"
    lines.append(f"- space `{d.space}`: {params}")
    if session.space.searches_rho:
        bounds = d.space_bounds
        how = session.calibration.describe() if session.calibration is not None else "given"
        schedules = (TrialRecord.read(t).schedule for t in trials.values())
        shape = next((schedule["rho"] for schedule in schedules if schedule), None)
        where = f" over {len(shape)} sigma interval(s) x {len(shape[0])} skip points" if shape else ""
        lines.append(f"- rho in [{bounds.rho_min:g}, {bounds.rho_max:g}] ({how}){where}")
    counts = result.counts
    state = (f"{counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, {counts.get('failed', 0)} "
             "failed")
    extra = [f"{counts[k]} {k}" for k in ("skipped", "running") if counts.get(k)]
    rungs = " → ".join(str(n) for n in d.proxy.rungs)
    lines += ["", "### Budget",
              f"- {d.trials} trials: {d.search.sampler} sampler (seed {d.search.seed}), {d.search.pruner} pruner; "
              f"proxy rungs {rungs} images on fixed seeds (seed {d.proxy.seed_offset} on)",
              f"- {state}{''.join(', ' + e for e in extra)}" + (" — interrupted" if result.interrupted else ""),
              f"- validation: top {d.search.validate_top_k} and the baselines re-scored at n = {d.search.final_n} on "
              f"fresh seeds (from {d.search.validation_seed_offset})", "", "### Validated"]
    rows = _validated_rows(session, result)
    if rows:
        untuned = next((r["value"] for r in rows if r.get("baseline_kind") == "untuned"
                        and r.get("value") is not None), None)
        best = result.best
        extra = [(key, label) for key, label in QUALITY_FIELDS if any(r.get(key) is not None for r in rows)]
        lines += [f"| trial | label | proxy | validated {metric} | n | vs untuned |"
                  + "".join(f" {label} |" for _, label in extra), "|---|---|---|---|---|---|" + "---|" * len(extra)]
        for row in rows:
            trial = trials.get(row["trial"])
            record = TrialRecord.read(trial) if trial is not None else TrialRecord()
            params = trial.params if trial is not None else {}
            label = row.get("baseline") or record.warm_start or "searched " + ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
            if best is not None and best.study_name == study.study_name and best.trial_number == row["trial"]:
                label += " ← exported"
            value = _num(row.get("value")) if row.get("error") is None else f"failed: {row['error']}"
            lift = "baseline" if row.get("value") == untuned and row.get("baseline") else _lift(row.get("value"),
                                                                                                  untuned)
            lines.append(f"| {row['trial']} | {_cell(label)} | {_num(row.get('proxy'))} | {_cell(value)} | "
                         f"{row.get('n', '—')} | {lift} |" + "".join(f" {_num(row.get(key))} |" for key, _ in extra))
        lines += [""] + [f"_{line}_" for line in result.verdict_lines()]
    elif result.interrupted:
        lines.append("_not validated: the run was interrupted; run the same command again to finish it_")
    else:
        lines.append(f"_not validated yet: validation runs when the budget is used ({counts.get('finished', 0)} of "
                     f"{d.trials} trials finished)_")
    lines += ["", "### Exported"]
    if result.export_path is not None:
        lines.append(f"- `{result.export_path}` (the best validated schedule for {session.adapter.name} / "
                     f"{d.sampler} / NFE {d.nfe}; `skipsearch best` lists it)")
    else:
        lines.append("- nothing exported yet (no validated result)")
    lines += ["", "### Review",
              f"- verdicts: open the study `{review_study_name(study.study_name)}` in this dashboard; each validated "
              "candidate is a running trial there with a Verdict form (accept / reject and a comment); `skipsearch "
              "best` and `export` skip rejected trials",
              "- each trial's artifacts: `trial-N-samples.png` (its images), `trial-N-rho.png` (rho per skip point "
              "and sigma interval), `trial-N-vs-untuned.png` (its images next to rho = 1 on the same seeds)", "",
              f"_updated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC_"]
    return "\n".join(lines) + "\n"


def save_study_note(session: StudySession, result: OptimizeResult) -> str:
    """Write :func:`study_note_markdown` as the study's optuna-dashboard note (a new version); the text."""
    from optuna_dashboard import save_note
    text = study_note_markdown(session, result)
    save_note(session.study, text)
    return text
