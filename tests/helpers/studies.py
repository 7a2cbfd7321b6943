"""The searched studies of a storage (each run also keeps a ``<study>.review`` companion for verdicts), and waiting
for a study's process to be inside a trial."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from skipsearch.store.records import is_review_study


def searched_study_names(storage: Any) -> list[str]:
    return [name for name in optuna.get_all_study_names(storage) if not is_review_study(name)]


def only_study(url: str) -> optuna.Study:
    """The one searched study of the storage at ``url``."""
    (name,) = searched_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def wait_for_running_trial(url: str, proc: subprocess.Popen, deadline: float) -> optuna.trial.FrozenTrial:
    """The first trial a worker has claimed while ``proc`` runs (polled until ``deadline``, a monotonic time)."""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            trials = only_study(url).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # no schema or study yet
            time.sleep(0.2)
            continue
        for trial in trials:
            if "claimed_by" in trial.user_attrs:
                return trial
        time.sleep(0.1)
    raise AssertionError(f"no running trial: {proc.communicate()[1][-3000:]}")
