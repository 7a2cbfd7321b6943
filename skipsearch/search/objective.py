"""Where a trial is scored: Optuna parameters -> schedule -> proxy rungs (reported for pruning) -> value."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch

from skipsearch.export.figures import rho_heatmap, side_by_side
from skipsearch.export.images import save_grid
from skipsearch.models.adapter import SkipAdapter
from skipsearch.proxy.errors import NonFiniteError
from skipsearch.proxy.fid_proxy import FidProxy, RungResult
from skipsearch.sampling.generate import DegenerateOutputError, NonFiniteOutputError, generate
from skipsearch.schedule import SkipSchedule
from skipsearch.search.records import TrialRecord
from skipsearch.search.spaces import SearchSpace

# Failures that belong to a trial (its schedule), not to the study: the trial is FAIL and the study goes on.
TRIAL_FAILURES: tuple[type[BaseException], ...] = (NonFiniteOutputError, DegenerateOutputError, NonFiniteError,
                                                     torch.OutOfMemoryError, MemoryError)
PREVIEW_IMAGES = 16  # images of a trial shown in its artifacts (the first seeds of its first rung)


class Objective:
    """Callable for ``study.optimize``; holds the model and proxy so a worker loads them once."""

    def __init__(self, adapter: SkipAdapter, proxy: FidProxy, space: SearchSpace, *, space_name: str,
                 artifact_store: Any | None = None):
        self.adapter, self.proxy, self.space, self.space_name = adapter, proxy, space, space_name
        self.artifact_store = artifact_store
        # rho = 1 on the preview seeds, per (first seed, count): sampled once per process (with common random
        # numbers every trial previews the same seeds), or taken from the untuned baseline trial for free.
        self._untuned_previews: dict[tuple[int, int], torch.Tensor] = {}
        self.untuned_generated = 0  # how often the rho = 1 preview had to be sampled here

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
        schedule = self.space.suggest(trial)
        return schedule.with_metadata(model=self.adapter.identity, sampler=self.proxy.sampler, nfe=self.proxy.nfe,
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
            TrialRecord.put(trial, schedule=schedule.to_dict(), nfe=self.proxy.nfe, sampler=self.proxy.sampler)
            schedules.append(schedule)
        first_seeds = self.proxy.first_seeds(len(trials))  # the seeds evaluate_many() is about to use

        def on_rung(j: int, _index: int, rung: RungResult) -> None:
            trial, schedule = trials[j], schedules[j]
            trial.report(rung.value, step=rung.n)
            TrialRecord.put(trial, rungs={rung.n: rung.value})
            if trial.should_prune():
                TrialRecord.put(trial, wall_seconds=round(time.perf_counter() - start, 3))
                if self.artifact_store is not None:  # a reviewer sees what was pruned, too (16 more images)
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
            if self.artifact_store is not None and result.preview is not None:
                self._upload_grid(trial, result.preview, first_seed=result.seeds[0])
            outcomes.append(result.value)
        return outcomes

    def _preview(self, schedule: SkipSchedule | None, first_seed: int, count: int) -> torch.Tensor:
        """The first ``count`` images of an evaluation from ``first_seed`` (the same noise the proxy used)."""
        return generate(self.adapter, sampler=self.proxy.sampler, nfe=self.proxy.nfe,
                        seeds=range(first_seed, first_seed + count), schedule=schedule,
                        batch_size=self.proxy.config.batch_size, **self.proxy.sampler_options).images.cpu()

    def untuned_preview(self, first_seed: int, count: int) -> torch.Tensor:
        """rho = 1 (the model as trained) on the preview seeds, cached for this objective."""
        key = (first_seed, count)
        if key not in self._untuned_previews:
            self._untuned_previews[key] = self._preview(None, first_seed, count)
            self.untuned_generated += 1
        return self._untuned_previews[key]

    def _upload_grid(self, trial: optuna.Trial, images: torch.Tensor, first_seed: int | None = None) -> None:
        """The trial's artifacts: its sample grid, its rho heatmap and its grid beside rho = 1 on the same seeds."""
        from optuna.artifacts import upload_artifact
        record = TrialRecord.read(trial)
        if first_seed is None:  # the seeds written by the objective ("0-399"), else the configured offset
            first_seed = int(record.seeds.split("-")[0]) if record.seeds else self.proxy.config.seed_offset
        untuned = self.untuned_preview(first_seed, len(images))
        label = record.baseline or record.warm_start or self.space_name
        seeds = f"seeds {first_seed}-{first_seed + len(images) - 1}"
        where = f"{self.proxy.sampler} NFE {self.proxy.nfe}"
        ids: dict[str, str] = {}
        with tempfile.TemporaryDirectory() as tmp:
            folder, n = Path(tmp), trial.number
            files = {"sample_grid_artifact": save_grid(images, folder / f"trial-{n}-samples.png", scale=2)}
            if record.schedule:
                files["rho_heatmap_artifact"] = rho_heatmap(
                    record.schedule, [p.resolution for p in self.adapter.skip_points],
                    f"trial {n} · {label} · {where}", path=folder / f"trial-{n}-rho.png")
            files["side_by_side_artifact"] = side_by_side(
                images.cpu(), untuned, (f"trial {n}", "rho = 1 (untuned)"), f"{seeds} · {where}",
                path=folder / f"trial-{n}-vs-untuned.png")
            for field_name, path in files.items():
                ids[field_name] = upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                                  study_or_trial=trial, mimetype="image/png")
        TrialRecord.put(trial, **ids)


def _untuned(schedule: SkipSchedule) -> bool:
    """The schedule samples exactly what ``schedule=None`` (the model as trained) samples."""
    return schedule.is_identity and not schedule.churn.s_churn
