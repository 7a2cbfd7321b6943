"""The study-wide trial budget, shared by every process and Ray worker on one storage.

A trial counts against the budget once it holds a *claim*: under the study lock (:mod:`skipsearch.store.locks`) it
looks at the finished trials plus the running trials that hold claims, and takes a slot only while one is free, so
concurrent processes never overshoot. A trial that gives up without using the budget -- no slot left, the exact
parameters of a finished trial, interrupted and queued again, its worker died and it was queued again -- is FAIL
with an ``uncounted`` reason and is not counted. Orphans (RUNNING trials whose process is gone) are failed and
queued again: at once when the process is known dead on this host and its heartbeat has stopped, else when Optuna
finds their heartbeat stale.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skipsearch.errors import ControlSignal, Terminated
from skipsearch.store.records import TrialRecord, count_finished
from skipsearch.store.studies import optuna_storage

log = logging.getLogger(__name__)

MAX_REQUEUES = 2  # a trial whose worker dies this many times in a row stays FAIL (and counts): it may be the cause
MAX_DUPLICATES = 20  # consecutive exact repeats before a process accepts one (the space may be exhausted)


class TrialSkipped(ControlSignal):
    """The trial gave up before any work and does not count (no slot left, a repeat of a finished trial)."""


def process_tag() -> str:
    """``host:pid:suffix``: names the process running a trial; the suffix tells apart reused pids and hosts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def running(study: optuna.Study, exclude: int | None = None) -> list[FrozenTrial]:
    """RUNNING trials: each holds a budget slot or is about to claim one (a trial claims within moments)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number != exclude]


def used(study: optuna.Study, exclude: int | None = None) -> int:
    """Budget slots taken: finished trials that count plus running ones."""
    return count_finished(study) + len(running(study, exclude))


# --------------------------------------------------------------------------------------------------------------------
# The gate every trial passes before any work.


class TrialGate:
    """Wraps an objective: tag the trial with this process, claim a budget slot, skip an exact repeat."""

    def __init__(self, objective: Any, budget: int, lock: Callable[[], AbstractContextManager[None]],
                 tag: str) -> None:
        self.objective, self.budget, self.lock, self.tag = objective, budget, lock, tag
        self.duplicates = 0  # consecutive repeats skipped by this process
        self.interrupted: list[int] = []  # trials a Ctrl-C aborted, to queue again

    def claim(self, trial: optuna.Trial) -> None:
        """Take a budget slot for ``trial`` and fix its parameters; :class:`TrialSkipped` when it must not run."""
        study = trial.study
        # A queued retry carries the failed trial's attributes: this run is a fresh one.
        for stale in ("fail_reason", "uncounted"):
            if trial.user_attrs.get(stale) is not None:
                trial.set_user_attr(stale, None)
        TrialRecord.put(trial, worker=self.tag, worker_pid=os.getpid())
        with self.lock():
            if used(study, exclude=trial.number) >= self.budget:
                _skip(trial, "the budget was spent by other processes")
            self.objective.suggest(trial)  # the parameters, fixed now: later suggestions return the same values
            repeat = duplicate_of(study, trial) if self.duplicates < MAX_DUPLICATES else None
            if repeat is not None:
                self.duplicates += 1
                study.sampler.reseed_rng()  # a sampler in step with another process's would repeat it again
                _skip(trial, f"the same parameters as trial {repeat}")
            TrialRecord.put(trial, claimed_by=self.tag)
        self.duplicates = 0

    def __call__(self, trial: optuna.Trial) -> float:
        self.claim(trial)
        try:
            return self.objective(trial)
        except KeyboardInterrupt as exc:  # a second Ctrl-C, a SIGTERM: queued again once Optuna has failed it
            self.mark_interrupted(trial, exc)
            raise

    def mark_interrupted(self, trial: optuna.Trial, exc: BaseException | None = None) -> None:
        reason = "interrupted (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        TrialRecord.put(trial, fail_reason=reason, uncounted=reason)
        self.interrupted.append(trial.number)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.objective, name)


def _skip(trial: optuna.Trial, reason: str) -> None:
    TrialRecord.put(trial, uncounted=reason, fail_reason=f"skipped: {reason}")
    raise TrialSkipped(reason)


def duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of a finished (complete or pruned) or claimed running trial with exactly these parameters."""
    params = trial.params
    if not params:
        return None
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                          TrialState.RUNNING)):
        if other.number == trial.number or other.params != params:
            continue
        if other.state != TrialState.RUNNING or TrialRecord.read(other).claimed_by:
            return other.number
    return None


# --------------------------------------------------------------------------------------------------------------------
# Orphans and retries.


def requeue(study: optuna.Study, trial: FrozenTrial, *, max_requeues: int | None = MAX_REQUEUES) -> bool:
    """Queue a failed trial's parameters again; the queued trial names it, so it no longer counts. False when its
    retries are spent (it stays FAIL and counts: the parameters may be what kills the worker)."""
    history = [*(trial.system_attrs.get("retry_history") or []), trial.number]
    if max_requeues is not None and len(history) > max_requeues:
        log.warning("trial %d: its worker died %d times; not retried again", trial.number, len(history))
        return False
    system_attrs = {**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                    "retry_history": history}
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("claimed_by", "uncounted", "fail_reason")}
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, user_attrs=user_attrs,
                                        system_attrs=system_attrs))
    return True


class RequeueStaleTrial:
    """Optuna's ``heartbeat_stale_trial_callback``: a trial whose heartbeat went stale is queued again."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        requeue(study, trial)


def trial_storage(url: str, heartbeat_seconds: int = 10) -> optuna.storages.RDBStorage:
    """The storage trials run on: a dead worker's RUNNING trial is failed and its parameters queued again."""
    return optuna_storage(url, heartbeat_seconds, on_stale=RequeueStaleTrial())


def fail_and_requeue(study: optuna.Study, trials: list[FrozenTrial], reason: str) -> list[int]:
    """FAIL the given RUNNING trials (with ``reason``) and queue them again; whoever fails a trial first requeues
    it, the others skip it."""
    storage = study._storage
    done = []
    for trial in trials:
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)  # only while it is RUNNING
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # it finished meanwhile, or another process failed it first
        requeue(study, storage.get_trial(trial._trial_id))
        done.append(trial.number)
    return done


def requeue_interrupted(study: optuna.Study, numbers: list[int]) -> None:
    """After a Ctrl-C aborted these trials (Optuna marks them FAIL): queue them again, as often as it happens."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number in numbers:
            requeue(study, trial, max_requeues=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:  # a killed process stays a zombie until its parent reaps it: dead all the same
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _last_beat_age(study: optuna.Study, trial: FrozenTrial) -> float | None:
    """Seconds since the trial's last heartbeat in the database clock, None when it has none (or no table)."""
    from sqlalchemy import text
    engine = getattr(study._storage, "engine", None)
    if engine is None:
        return None
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT heartbeat, CURRENT_TIMESTAMP FROM trial_heartbeats WHERE trial_id = :id"),
                               {"id": trial._trial_id}).first()
    except Exception:  # another Optuna schema: leave it to the stale-heartbeat path
        return None
    if row is None:
        return None
    beat, now = (v if isinstance(v, datetime.datetime) else datetime.datetime.fromisoformat(str(v)) for v in row)
    return (now.replace(tzinfo=None) - beat.replace(tzinfo=None)).total_seconds()


def recover_orphans(study: optuna.Study, heartbeat_seconds: int) -> tuple[list[int], list[int]]:
    """Fail and requeue orphans: (numbers requeued now, numbers that look orphaned but must wait a heartbeat).

    Heartbeat-stale trials (3 heartbeats) go whatever their host. A trial of a dead process on this host goes once
    its heartbeat is older than 1.5 intervals (a live one beats every interval); one that never wrote its process
    or heartbeat goes once it is older than the stale grace. The heartbeat is read only for those candidates: live
    processes' trials cost no query.
    """
    with _quiet_experimental():
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    now = datetime.datetime.now()
    dead, waiting = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = TrialRecord.read(t)
        worker_host = (record.worker or "").partition(":")[0]
        pid = record.worker_pid
        if record.worker is None:
            started = t.datetime_start or now
            if (now - started).total_seconds() > 3 * heartbeat_seconds and _last_beat_age(study, t) is None:
                dead.append(t)
        elif worker_host == host and pid is not None and not _pid_alive(int(pid)):
            age = _last_beat_age(study, t)
            (dead if age is None or age > 1.5 * heartbeat_seconds else waiting).append(t)
    requeued = fail_and_requeue(study, dead, "its worker process died")
    return requeued, [t.number for t in waiting]


@contextmanager
def _quiet_experimental() -> Iterator[None]:
    with warnings.catch_warnings():  # Optuna flags fail_stale_trials experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
