"""The winner's curse: re-score the top trials and both baselines at ``final_n`` on fresh seeds.

This module is the one writer of validated results: each re-scored trial goes to the study's record and to the
store (:meth:`BestStore.record`, whose best row only changes for a validated better value).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from skipsearch.models import SkipAdapter
from skipsearch.proxy.config import METRICS
from skipsearch.proxy.fid_proxy import FidProxy
from skipsearch.schedule import SkipSchedule
from skipsearch.search.definition import StudyDefinition
from skipsearch.search.objective import TRIAL_FAILURES
from skipsearch.store import BestStore, Validation
from skipsearch.store.records import StudyRecord, TrialRecord, Validated


class StudySession(Protocol):
    """What validation needs of :class:`skipsearch.execution.session.StudySession`."""

    definition: StudyDefinition
    adapter: SkipAdapter
    proxy: FidProxy
    study: optuna.Study
    store: BestStore
    objective: Any


def validation_candidates(trials: Iterable[FrozenTrial], top_k: int,
                          extra: tuple[int, float, bool] | None = None, metric: str = "fid") -> list[int]:
    """Numbers of the trials to re-score: the ``top_k`` best complete ones, then every baseline with a schedule
    (pruned baselines too: the lift is always reported against both). ``extra`` is (number, value, is_baseline)
    of a trial finishing right now."""
    complete: list[tuple[int, float, bool]] = []
    baselines: list[int] = []
    for t in trials:
        record = TrialRecord.read(t)
        if record.baseline and record.schedule and t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            baselines.append(t.number)
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            complete.append((t.number, t.value, bool(record.baseline)))
    if extra is not None and math.isfinite(extra[1]):
        complete.append(extra)
        if extra[2]:
            baselines.append(extra[0])
    ranked = [n for n, _, _ in sorted(complete, key=lambda row: METRICS.get(metric).sort_key(row[1]))[:top_k]]
    return ranked + [n for n in dict.fromkeys(baselines) if n not in ranked]


def validate(session: StudySession, top_k: int | None = None,
             on_done: Callable[[FrozenTrial, float], None] | None = None) -> list[dict]:
    """Re-evaluate the candidates at ``final_n``; record each; returns one dict per candidate."""
    config = session.definition.search
    study_record = StudyRecord(session.study)
    validated = study_record.validated()
    trials = {t.number: t for t in session.study.get_trials(deepcopy=False)}
    results: list = []
    references: dict[int, float] | None = None
    for number in validation_candidates(trials.values(), config.validate_top_k if top_k is None else top_k,
                                        metric=session.definition.proxy.metric):
        if session.interrupted:  # the CLI's first Ctrl-C: stop after the candidate being scored (recorded)
            break
        trial = trials[number]
        record = TrialRecord.read(trial)
        schedule = SkipSchedule.from_dict(record.schedule)
        entry = validated.get(number)
        if entry is None or entry.n != config.final_n:
            nfes = session.definition.nfes or (session.definition.nfe,)
            # precision, recall and IS beside the metric, on the features of one NFE (the study's)
            main_nfe = session.definition.nfe if session.definition.nfe in nfes else nfes[0]
            try:
                proxy = session.objective.proxy_for_validation(trial)
                scored = [proxy.evaluate(schedule.with_metadata(nfe=k) if len(nfes) > 1 else schedule,
                                          rungs=[config.final_n], seed_offset=config.validation_seed_offset,
                                          preview=0, quality=k == main_nfe) for k in nfes]
                references = _references(session, nfes, references)
            except TRIAL_FAILURES as exc:
                validated[number] = Validated(n=config.final_n, error=f"{type(exc).__name__}: {exc}",
                                              baseline=record.baseline, baseline_kind=record.baseline_kind)
                study_record.set_validated(validated)
                results.append({"trial": number, **validated[number].to_dict()})
                continue
            seeds = f"{scored[0].seeds[0]}-{scored[0].seeds[1] - 1}"
            quality = next((r.quality for r in scored if r.quality), None) or {}
            if len(nfes) == 1:
                entry = Validated(n=scored[0].n, value=scored[0].value, proxy=trial.value, seeds=seeds,
                                  baseline=record.baseline, baseline_kind=record.baseline_kind, **quality)
            else:  # the mean ratio to rho = 1 over the NFEs, as the search scored it; each NFE's metric beside
                ratio = sum(r.value / references[k] for k, r in zip(nfes, scored)) / len(nfes)
                entry = Validated(n=config.final_n, value=ratio, proxy=trial.value, seeds=seeds,
                                  baseline=record.baseline, baseline_kind=record.baseline_kind,
                                  nfe_values={str(k): r.value for k, r in zip(nfes, scored)}, **quality)
            validated[number] = entry
            study_record.set_validated(validated)
            searched = record.nfe_values or {}  # a multi-NFE trial: its proxy per NFE (its value: their mean ratio)
            for k, result in zip(nfes, scored):  # one best-table row per NFE: `best --nfe K` finds the schedule
                at_k = searched.get(str(k))
                proxy_value = at_k[max(at_k, key=int)] if at_k else trial.value
                provenance = {**schedule.provenance, "study": session.study.study_name, "trial": number,
                              "validated": {"metric": session.proxy.config.metric, "value": result.value,
                                            "n": result.n, "seeds": seeds, "extractor": result.extractor}}
                stored = schedule.with_metadata(provenance=provenance, nfe=k)
                session.store.record(Validation(
                    model_name=session.adapter.name, weights_sha256=session.adapter.identity.sha256,
                    sampler=schedule.sampler or session.definition.sampler, nfe=k,
                    metric=session.proxy.config.metric, value=result.value, n=result.n, seeds=seeds,
                    extractor=result.extractor, extractor_sha256=result.extractor_sha256,
                    schedule_json=stored.to_json(), space=session.definition.space,
                    study_name=session.study.study_name, trial_number=number, proxy_value=proxy_value,
                    lower_is_better=METRICS.get(session.proxy.config.metric).direction == "minimize"))
        if on_done is not None and entry.value is not None:
            on_done(trial, entry.value)
        results.append({"trial": number, **entry.to_dict()})
    return results


def _references(session: StudySession, nfes: tuple[int, ...], known: dict[int, float] | None) -> dict[int, float]:
    """rho = 1 with the study's sampler on its default grid at ``final_n`` per NFE (multi-NFE studies only)."""
    if len(nfes) == 1 or known is not None:
        return known or {}
    config = session.definition.search
    identity = SkipSchedule.identity(len(session.adapter.skip_points))
    return {k: session.proxy.evaluate(identity.with_metadata(sampler=session.definition.sampler, nfe=k),
                                      rungs=[config.final_n], seed_offset=config.validation_seed_offset,
                                      preview=0).value for k in nfes}
