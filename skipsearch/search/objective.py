"""Where a trial is scored: Optuna parameters -> schedule -> proxy rungs (reported for pruning) -> value."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import optuna
import torch

from skipsearch.models.adapter import SkipAdapter
from skipsearch.proxy.errors import NonFiniteFeaturesError
from skipsearch.proxy.fid_proxy import FidProxy, RungResult
from skipsearch.sampling.generate import DegenerateOutputError, NonFiniteOutputError, generate
from skipsearch.sampling.samplers import GridError
from skipsearch.schedule import SkipSchedule
from skipsearch.search.spaces import SearchSpace
from skipsearch.store.records import TrialRecord
from skipsearch.training.loop import TrainingDivergedError

# Failures that belong to a trial (its schedule), not to the study: the trial is FAIL and the study goes on.
# A fine-tuning trial whose training loss diverged (its learning rate) is one of them.
TRIAL_FAILURES: tuple[type[BaseException], ...] = (NonFiniteOutputError, DegenerateOutputError,
                                                     NonFiniteFeaturesError, GridError, TrainingDivergedError,
                                                     torch.OutOfMemoryError, MemoryError)
PREVIEW_IMAGES = 16  # images of a trial shown in its artifacts (the first seeds of its first rung)


class TrialArtifacts(Protocol):
    """Where a trial's pictures go (``skipsearch.export.artifacts.TrialArtifacts``: Optuna's artifact store)."""

    store: Any

    def write(self, trial: optuna.Trial, images: torch.Tensor, untuned: torch.Tensor, *,
              schedule: dict[str, Any] | None, resolutions: Sequence[int], title: str,
              caption: str) -> dict[str, str]: ...


class Objective:
    """Callable for ``study.optimize``; holds the model and proxy so a worker loads them once."""

    def __init__(self, adapter: SkipAdapter, proxy: FidProxy, space: SearchSpace, *, space_name: str,
                 artifacts: TrialArtifacts | None = None):
        self.adapter, self.proxy, self.space, self.space_name = adapter, proxy, space, space_name
        self.artifacts = artifacts  # None: no pictures (benchmarks, tests)
        # rho = 1 on the preview seeds, per (first seed, count): sampled once per process (with common random
        # numbers every trial previews the same seeds), or taken from the untuned baseline trial for free.
        self._untuned_previews: dict[tuple[int, int], torch.Tensor] = {}
        self.untuned_generated = 0  # how often the rho = 1 preview had to be sampled here
        self._references: dict[int, dict[int, float]] | None = None  # multi-NFE: rho = 1 per NFE and rung

    def pruning_steps(self) -> tuple[int, ...]:
        """The steps this objective reports to the pruner: the proxy rungs (image counts)."""
        return tuple(self.proxy.config.rungs)

    def proxy_for_validation(self, trial: optuna.trial.FrozenTrial) -> FidProxy:
        """The proxy that re-scores ``trial`` (objectives that change the model return one bound to its weights)."""
        return self.proxy

    def suggest(self, trial: optuna.trial.BaseTrial) -> None:
        """Fix every parameter of the trial now (before any work), so a repeat can be recognised."""
        self.space.suggest(trial)

    def schedule_for(self, trial: optuna.trial.BaseTrial) -> SkipSchedule:
        """The trial's schedule, naming how it is sampled: the searched sampler and its options, or the study's."""
        schedule = self.space.suggest(trial)
        sampler, _nfe, options = self.proxy.recipe(schedule)
        return schedule.with_metadata(model=self.adapter.identity, sampler=sampler, nfe=self.proxy.nfe,
                                      sampler_options=options, nfe_set=self.space.ctx.nfes,
                                      provenance={"space": self.space_name, "params": dict(trial.params)})

    def __call__(self, trial: optuna.Trial) -> float:
        outcome = self.evaluate_trials([trial])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def evaluate_trials(self, trials: Sequence[optuna.Trial]) -> list[float | Exception]:
        """Score trials together: their schedules share every forward (:meth:`FidProxy.evaluate_many`), each
        reports its own rungs and is pruned alone. Entry j is trial j's value, or what ended it
        (``optuna.TrialPruned``, one of :data:`TRIAL_FAILURES`)."""
        start = time.perf_counter()
        schedules = []
        for trial in trials:
            schedule = self.schedule_for(trial)
            TrialRecord.put(trial, schedule=schedule.to_dict(), nfe=self.proxy.nfe, sampler=schedule.sampler)
            schedules.append(schedule)
        if len(self.space.ctx.nfes) > 1:
            return self._evaluate_nfe_set(trials, schedules, start)
        first_seeds = self.proxy.first_seeds(len(trials))  # the seeds evaluate_many() is about to use

        def on_rung(j: int, _index: int, rung: RungResult) -> None:
            trial, schedule = trials[j], schedules[j]
            trial.report(rung.value, step=rung.n)
            TrialRecord.put(trial, rungs={rung.n: rung.value})
            if trial.should_prune():
                TrialRecord.put(trial, wall_seconds=round(time.perf_counter() - start, 3))
                if self.artifacts is not None:  # a reviewer sees what was pruned, too (16 more images)
                    count = min(PREVIEW_IMAGES, rung.n)
                    images = (self.untuned_preview(first_seeds[j], count) if _untuned(schedule)
                              else self._preview(schedule, first_seeds[j], count))
                    self._upload_grid(trial, images, first_seed=first_seeds[j])
                raise optuna.TrialPruned(f"pruned at n={rung.n} ({self.proxy.config.metric} {rung.value:.3f})")

        try:
            results: list = self.proxy.evaluate_many(schedules, on_rung=on_rung, preview=PREVIEW_IMAGES)
        except TRIAL_FAILURES as exc:  # out of memory: every trial of the batch ran in it
            results = [exc] * len(trials)
        outcomes: list[float | Exception] = []
        for trial, schedule, result in zip(trials, schedules, results):
            if isinstance(result, Exception):
                if isinstance(result, TRIAL_FAILURES):
                    TrialRecord.put(trial, fail_reason=f"{type(result).__name__}: {result}")
                outcomes.append(result)
                continue
            TrialRecord.put(trial, seeds=f"{result.seeds[0]}-{result.seeds[1] - 1}",
                            denoiser_calls=result.denoiser_calls, sampling_seconds=round(result.sampling_seconds, 3),
                            feature_seconds=round(result.feature_seconds, 3), extractor=result.extractor,
                            wall_seconds=round(time.perf_counter() - start, 3))
            if result.preview is not None and _untuned(schedule):
                self._untuned_previews.setdefault((result.seeds[0], len(result.preview)), result.preview.cpu())
            if self.artifacts is not None and result.preview is not None:
                self._upload_grid(trial, result.preview, first_seed=result.seeds[0])
            outcomes.append(result.value)
        return outcomes

    def reference_rungs(self) -> dict[int, dict[int, float]]:
        """rho = 1 (the study's sampler on its default grid) at each NFE of the set: NFE -> n -> proxy, on the
        trials' seeds; computed once per process (the denominators of a multi-NFE study's ratios)."""
        if self._references is None:
            identity = SkipSchedule.identity(len(self.adapter.skip_points))
            nfes = self.space.ctx.nfes
            results = self.proxy.evaluate_many([identity.with_metadata(sampler=self.proxy.sampler, nfe=k)
                                                for k in nfes], preview=0)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            self._references = {k: {r.n: r.value for r in result.rungs} for k, result in zip(nfes, results)}
        return self._references

    def _evaluate_nfe_set(self, trials: Sequence[optuna.Trial], schedules: list[SkipSchedule],
                          start: float) -> list[float | Exception]:
        """One schedule for several NFEs: each trial's value after a rung is the mean over the NFEs of its proxy
        divided by rho = 1's at that NFE (< 1 is better); it is reported and pruned on that mean, and a pruned
        trial stops at every NFE."""
        nfes = self.space.ctx.nfes
        references = self.reference_rungs()
        expanded = [schedule.with_metadata(nfe=k) for schedule in schedules for k in nfes]
        owner = [j for j in range(len(trials)) for _ in nfes]
        reported: dict[tuple[int, int], dict[int, float]] = {}
        pruned: set[int] = set()

        def on_rung(i: int, index: int, rung: RungResult) -> None:
            j, k = owner[i], nfes[i % len(nfes)]
            if j in pruned:
                raise optuna.TrialPruned()
            values = reported.setdefault((j, index), {})
            values[k] = rung.value
            if len(values) < len(nfes):
                return
            trial = trials[j]
            ratio = sum(values[m] / references[m][rung.n] for m in nfes) / len(nfes)
            trial.report(ratio, step=rung.n)
            TrialRecord.put(trial, rungs={rung.n: ratio})
            if trial.should_prune():
                pruned.add(j)
                TrialRecord.put(trial, wall_seconds=round(time.perf_counter() - start, 3))
                raise optuna.TrialPruned(f"pruned at n={rung.n} (mean ratio to rho = 1 {ratio:.3f})")

        try:
            results: list = self.proxy.evaluate_many(expanded, on_rung=on_rung, preview=PREVIEW_IMAGES,
                                                     keep=lambda i: owner[i] not in pruned)
        except TRIAL_FAILURES as exc:
            results = [exc] * len(expanded)
        outcomes: list[float | Exception] = []
        for j, trial in enumerate(trials):
            mine = results[j * len(nfes):(j + 1) * len(nfes)]
            failure = next((r for r in mine if isinstance(r, TRIAL_FAILURES)), None)
            if j in pruned or failure is None and any(isinstance(r, Exception) for r in mine):
                outcomes.append(optuna.TrialPruned(f"pruned (mean ratio to rho = 1, NFEs {list(nfes)})"))
                continue
            if failure is not None:
                TrialRecord.put(trial, fail_reason=f"{type(failure).__name__}: {failure}")
                outcomes.append(failure)
                continue
            per_nfe = {str(k): {str(r.n): r.value for r in result.rungs} for k, result in zip(nfes, mine)}
            first = mine[0]
            TrialRecord.put(trial, seeds=f"{first.seeds[0]}-{first.seeds[1] - 1}", nfe_values=per_nfe,
                            denoiser_calls=sum(r.denoiser_calls for r in mine),
                            sampling_seconds=round(sum(r.sampling_seconds for r in mine), 3),
                            feature_seconds=round(sum(r.feature_seconds for r in mine), 3),
                            extractor=first.extractor, wall_seconds=round(time.perf_counter() - start, 3))
            shown = mine[nfes.index(self.proxy.nfe)] if self.proxy.nfe in nfes else first
            if self.artifacts is not None and shown.preview is not None:
                self._upload_grid(trial, shown.preview, first_seed=shown.seeds[0])
            outcomes.append(sum(r.value / references[k][r.n] for k, r in zip(nfes, mine)) / len(nfes))
        return outcomes

    def _preview(self, schedule: SkipSchedule | None, first_seed: int, count: int) -> torch.Tensor:
        """The first ``count`` images of an evaluation from ``first_seed`` (the same noise the proxy used)."""
        sampler, nfe, options = self.proxy.recipe(schedule)
        return generate(self.adapter, sampler=sampler, nfe=nfe, seeds=range(first_seed, first_seed + count),
                        schedule=schedule, batch_size=self.proxy.config.batch_size, **options).images.cpu()

    def untuned_preview(self, first_seed: int, count: int) -> torch.Tensor:
        """rho = 1 (the model as trained) on the preview seeds, cached for this objective."""
        key = (first_seed, count)
        if key not in self._untuned_previews:
            self._untuned_previews[key] = self._preview(None, first_seed, count)
            self.untuned_generated += 1
        return self._untuned_previews[key]

    def _upload_grid(self, trial: optuna.Trial, images: torch.Tensor, first_seed: int | None = None) -> None:
        """The trial's pictures (:class:`TrialArtifacts`): its grid, rho heatmap, and grid beside rho = 1."""
        record = TrialRecord.read(trial)
        if first_seed is None:  # the seeds written by the objective ("0-399"), else the configured offset
            first_seed = int(record.seeds.split("-")[0]) if record.seeds else self.proxy.config.seed_offset
        label = record.baseline or record.warm_start or self.space_name
        where = f"{self.proxy.sampler} NFE {self.proxy.nfe}"
        ids = self.artifacts.write(trial, images, self.untuned_preview(first_seed, len(images)),
                                   schedule=record.schedule,
                                   resolutions=[p.resolution for p in self.adapter.skip_points],
                                   title=f"trial {trial.number} · {label} · {where}",
                                   caption=f"seeds {first_seed}-{first_seed + len(images) - 1} · {where}")
        TrialRecord.put(trial, **ids)


def _untuned(schedule: SkipSchedule) -> bool:
    """The schedule samples exactly what ``schedule=None`` (the model as trained) samples."""
    return schedule.is_identity and not schedule.churn.s_churn
