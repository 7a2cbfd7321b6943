"""Many trials per forward: ask K trials, score their schedules in shared batches, tell each its own result.

``study.optimize`` runs one trial at a time; a small UNet then leaves a GPU mostly idle at one trial's batch. Here
K trials are asked (Optuna's ask/tell; TPE's constant liar keeps them apart), each claims its budget slot through
the same :class:`~skipsearch.execution.budget.TrialGate` as a single trial, and
:meth:`~skipsearch.search.objective.Objective.evaluate_trials` samples them together on the same seeds: every trial
reports its own rungs, is pruned alone at the shared rungs, and gets the value it would get alone.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread  # what study.optimize wraps each trial in
from optuna.trial import FrozenTrial, TrialState

from skipsearch.execution.budget import TrialGate, TrialSkipped, used
from skipsearch.search.objective import TRIAL_FAILURES

log = logging.getLogger("optuna.study._optimize")  # where Optuna reports its trials (the CLI's log filter too)

Callback = Callable[[optuna.Study, FrozenTrial], None]


def run_trial_batch(study: optuna.Study, gate: TrialGate, k: int,
                    callbacks: Sequence[Callback] | None = None) -> int:
    """Ask up to ``k`` trials, run the ones that claim a slot together; the number of trials asked."""
    claimed: list[optuna.Trial] = []
    asked = 0
    with ExitStack() as heartbeats:
        for _ in range(k):
            if claimed and used(study) >= gate.budget:
                break  # asking more would only make trials that skip
            with warnings.catch_warnings():  # the heartbeat is run here, as study.optimize would
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = study.ask()
            asked += 1
            try:
                gate.claim(trial)
            except TrialSkipped:
                _tell(study, trial, TrialState.FAIL, None, callbacks)
                if used(study) >= gate.budget:
                    break  # no slot left for more
                continue
            heartbeats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
            claimed.append(trial)
        if not claimed:
            return asked
        try:
            outcomes: Sequence[float | Exception] = gate.objective.evaluate_trials(claimed)
        except KeyboardInterrupt as exc:  # a second Ctrl-C, a SIGTERM: the trials are queued again by the session
            for trial in claimed:
                gate.mark_interrupted(trial, exc)
            heartbeats.close()
            for trial in claimed:
                _tell(study, trial, TrialState.FAIL, None, callbacks)
            raise
        except Exception as exc:  # a bug, not a trial's fault: fail them all and let it surface
            outcomes = [exc] * len(claimed)
    unexpected: Exception | None = None
    for trial, outcome in zip(claimed, outcomes):
        if isinstance(outcome, optuna.TrialPruned):
            log.info("Trial %d pruned. %s", trial.number, outcome)
            _tell(study, trial, TrialState.PRUNED, None, callbacks)
        elif isinstance(outcome, Exception):
            if isinstance(outcome, TRIAL_FAILURES):
                log.warning("trial %d failed: %s: %s", trial.number, type(outcome).__name__,
                            " ".join(str(outcome).split()))
            else:
                unexpected = unexpected or outcome
            _tell(study, trial, TrialState.FAIL, None, callbacks)
        else:
            log.info("Trial %d finished with value: %s and parameters: %s.", trial.number, outcome, trial.params)
            _tell(study, trial, TrialState.COMPLETE, outcome, callbacks)
    if unexpected is not None:
        raise unexpected
    return asked


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None,
          callbacks: Sequence[Callback] | None) -> None:
    # skip_if_finished: another process may have failed it as stale (a starved process beats late) and queued it
    # again; its result then has nowhere to go and the study goes on.
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    if callbacks:
        frozen = study._storage.get_trial(trial._trial_id)
        for callback in callbacks:
            callback(study, frozen)
