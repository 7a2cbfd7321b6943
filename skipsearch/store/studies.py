"""Optuna's side of the store: the RDB storage of every study, and the folder of the trials' artifacts."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from skipsearch.settings import Settings
from skipsearch.store.engine import StoreError, _reason, redact_url

__all__ = ["artifact_dir", "optuna_storage", "study_summaries"]


def artifact_dir(storage_url: str, settings: Settings) -> Path:
    """Trial artifacts: ``settings.artifacts``, else beside a SQLite file, else ``<settings.home>/artifacts``."""
    if settings.artifacts is not None:
        return settings.artifacts
    if storage_url.startswith("sqlite:///"):
        return Path(storage_url.removeprefix("sqlite:///")).expanduser().resolve().parent / "artifacts"
    return settings.home / "artifacts"


def optuna_storage(url: str, heartbeat_seconds: int = 10,
                   on_stale: Callable[[optuna.Study, Any], None] | None = None) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeat; ``on_stale(study, trial)`` is called for a RUNNING trial whose heartbeat
    stopped once Optuna has failed it (the executor queues its parameters again:
    :func:`skipsearch.execution.budget.trial_storage`)."""
    try:
        with warnings.catch_warnings():  # heartbeat and its retry callback are flagged experimental by Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_seconds, grace_period=3 * heartbeat_seconds,
                heartbeat_stale_trial_callback=on_stale,
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
    except Exception as exc:  # sqlalchemy/driver errors vary; the store has already checked connectivity
        raise StoreError(f"cannot open Optuna storage {redact_url(url)}: {_reason(exc, url)}") from None


def study_summaries(url: str, heartbeat_seconds: int = 10) -> list[dict[str, Any]]:
    """One row per study in the storage: trial counts by state, best proxy and best validated value (each by its
    study's own direction), when it started."""
    from skipsearch.store.records import StudyRecord
    rdb = optuna_storage(url, heartbeat_seconds)
    rows = []
    for summary in optuna.get_all_study_summaries(rdb, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=rdb)
        trials = study.get_trials(deepcopy=False)
        states = [t.state.name for t in trials]
        best = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        values = [t.value for t in trials if t.value is not None]
        validated = [v.value for v in StudyRecord(study).validated().values() if v.value is not None]
        rows.append({"study_name": summary.study_name, "trials": len(states), "complete": states.count("COMPLETE"),
                     "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
                     "running": states.count("RUNNING"), "best_proxy": best(values) if values else None,
                     "best_validated": best(validated) if validated else None, "started": summary.datetime_start})
    return rows
