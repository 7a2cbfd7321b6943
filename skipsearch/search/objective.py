"""Where a trial is scored: Optuna parameters -> schedule -> proxy rungs (reported for pruning) -> value."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from skipsearch.export.images import save_grid
from skipsearch.models.adapter import SkipAdapter
from skipsearch.proxy.errors import NonFiniteError
from skipsearch.proxy.fid_proxy import FidProxy, RungResult
from skipsearch.sampling.generate import DegenerateOutputError, NonFiniteOutputError
from skipsearch.schedule import SkipSchedule
from skipsearch.search.records import TrialRecord
from skipsearch.search.spaces import SearchSpace

# Failures that belong to a trial (its schedule), not to the study: the trial is FAIL and the study goes on.
TRIAL_FAILURES: tuple[type[BaseException], ...] = (NonFiniteOutputError, DegenerateOutputError, NonFiniteError,
                                                     torch.OutOfMemoryError, MemoryError)


class Objective:
    """Callable for ``study.optimize``; holds the model and proxy so a worker loads them once."""

    def __init__(self, adapter: SkipAdapter, proxy: FidProxy, space: SearchSpace, *, space_name: str,
                 artifact_store: Any | None = None):
        self.adapter, self.proxy, self.space, self.space_name = adapter, proxy, space, space_name
        self.artifact_store = artifact_store

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
        start = time.perf_counter()
        schedule = self.schedule_for(trial)
        TrialRecord.put(trial, schedule=schedule.to_dict(), nfe=self.proxy.nfe, sampler=self.proxy.sampler)

        def on_rung(_index: int, rung: RungResult) -> None:
            trial.report(rung.value, step=rung.n)
            TrialRecord.put(trial, rungs={rung.n: rung.value})
            if trial.should_prune():
                TrialRecord.put(trial, wall_seconds=round(time.perf_counter() - start, 3))
                raise optuna.TrialPruned(f"pruned at n={rung.n} ({self.proxy.config.metric} {rung.value:.3f})")

        try:
            result = self.proxy.evaluate(schedule, on_rung=on_rung)
        except TRIAL_FAILURES as exc:
            TrialRecord.put(trial, fail_reason=f"{type(exc).__name__}: {exc}")
            raise
        TrialRecord.put(trial, seeds=f"{result.seeds[0]}-{result.seeds[1] - 1}", denoiser_calls=result.denoiser_calls,
                        sampling_seconds=round(result.sampling_seconds, 3),
                        feature_seconds=round(result.feature_seconds, 3), extractor=result.extractor,
                        wall_seconds=round(time.perf_counter() - start, 3))
        if self.artifact_store is not None and result.preview is not None:
            self._upload_grid(trial, result.preview)
        return result.value

    def _upload_grid(self, trial: optuna.Trial, images: torch.Tensor) -> None:
        from optuna.artifacts import upload_artifact
        with tempfile.TemporaryDirectory() as folder:
            path = save_grid(images, Path(folder) / f"trial-{trial.number}-samples.png", scale=2)
            artifact_id = upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                          study_or_trial=trial, mimetype="image/png")
        TrialRecord.put(trial, sample_grid_artifact=artifact_id)
