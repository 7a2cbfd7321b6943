"""Trials of one study on K Ray worker actors (``skipsearch optimize --workers K``).

Each actor loads the model, proxy and study once and runs one trial per call; the driver hands out calls only while
the study-wide budget has room, watches the study in the storage for progress, and stops the workers on Ctrl-C.
Optuna does the coordination (a shared RDB study, ``constant_liar`` TPE, pruning against all workers' rungs); Ray
only places and restarts the workers, so Ray Tune is not used (its Optuna integration disables pruning).

A worker that dies mid-trial leaves that trial RUNNING; once its heartbeat is stale it is failed and the retry
callback enqueues its parameters once (see :func:`skipsearch.execution.budget.trial_storage`). The driver counts such
orphaned trials against the budget until then, so the study ends with exactly its trial count and nothing RUNNING.
Workers the driver kills (Ctrl-C, an error) have their trials failed and queued again at once.

Ray is imported only here, and only when ``--workers`` is given.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skipsearch.execution.budget import fail_and_requeue
from skipsearch.execution.errors import WorkersError
from skipsearch.execution.session import StudySession, open_session
from skipsearch.schedule import SkipSchedule
from skipsearch.search.definition import StudyDefinition
from skipsearch.search.objective import TRIAL_FAILURES
from skipsearch.settings import Settings
from skipsearch.store.records import FINISHED, TrialRecord, count_finished

__all__ = ["WORKER_ATTR", "TrialWorker", "WorkersError", "check_address", "run_on_ray"]

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # also bounds how long a second Ctrl-C waits: signal handlers run between ray.wait calls
START_POLL_SECONDS = 0.05  # SQLite: how often to look whether a worker's trial has started (see _drive)
# Per worker: Ray restarts a dead actor (the model is reloaded); its lost trial is retried via the heartbeat.
MAX_RESTARTS = 2
# A step that runs no trial while the study has budget is a race at most once or twice; this many in a row per
# worker, with nothing finishing, means the workers cannot run this study's trials: stop with one line.
IDLE_STEPS_PER_WORKER = 5
WORKER_ATTR = "worker"  # TrialRecord.worker: "host:pid:suffix" of the worker process running it


class TrialWorker:
    """One worker (a Ray actor): the session is opened once, ``step`` runs one trial of the shared study."""

    def __init__(self, definition: StudyDefinition, study_name: str, storage_url: str, device: str,
                 threads: int | None = 1, settings: Settings | None = None) -> None:
        import torch
        if threads:
            torch.set_num_threads(threads)  # one CPU slot per worker: more threads would oversubscribe the node
        # The driver named and created the study: join it by that name (re-deriving the name from a definition
        # could differ, e.g. once calibration replaced the rho bounds). The driver calibrates, on the workers.
        self.session = open_session(definition, storage_url=storage_url, device=device, settings=settings,
                                    study_name=study_name, calibrate=False)

    def tag(self) -> str:
        """The name this process writes on the trials it runs (TrialRecord.worker)."""
        return self.session.tag

    def pid(self) -> int:
        return os.getpid()

    def score(self, schedules: list[SkipSchedule | None], n: int) -> list[float | None]:
        """The proxy at ``n`` images for each schedule (None where it fails): the calibration sweep's share."""
        return [_score(self.session, schedule, n) for schedule in schedules]

    def step(self) -> int | None:
        """Run one trial unless the study-wide budget is spent; its number, or None when nothing ran."""
        if not self.session.refresh_calibration():
            raise WorkersError("the study's rho bounds are not calibrated yet; the driver calibrates first")
        if self.session.remaining() <= 0:
            return None
        ran: list[int] = []
        # The driver waits for other workers' trials; a worker only takes a free slot, or returns.
        self.session.run(1, callbacks=[lambda _study, trial: ran.append(trial.number)], wait_for_others=False)
        return ran[0] if ran else None


@dataclass
class _Slot:
    """The driver's view of one actor. Steps go only to an actor whose probe answered, so the owner of every
    trial in flight is known (see :func:`_drive`)."""

    actor: Any
    probe: Any = None  # ObjectRef of actor.tag(): answers once the actor has (re)started and loaded the model
    probe_after: float = 0.0  # a restarting actor rejects calls: the next probe waits until then
    tag: str | None = None  # WORKER_ATTR of the actor's current process
    call: Any = None  # ObjectRef of the step in flight
    dead: bool = False  # init failed or restarts spent (Ray's max_restarts)
    last_error: str = ""


def _first_line(exc: BaseException) -> str:
    """The exception's own last line (Ray wraps the remote traceback around it)."""
    if type(exc).__name__ == "OutOfMemoryError":  # Ray's memory monitor: a page of advice after the reason
        return "Ray killed the worker: the node ran low on memory"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def _connect(ray: Any, address: str | None, workers: int, gpus: bool) -> bool:
    """Join ``address`` ('auto', 'ray://host:port', host:port) or start a local runtime; True when we connected.

    A local runtime gets a CPU slot per worker at least, and this machine's GPUs unless the driver runs on CPU
    (``--device cpu`` on a GPU machine means CPU workers).
    """
    if ray.is_initialized():  # the caller (a notebook, a test) owns the runtime: use it, leave it running
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    # ray.init installs its own SIGTERM handler (exit 15, no cleanup): the caller's stays, so a SIGTERM fails
    # and requeues the running trials like a Ctrl-C.
    sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            import torch
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a private runtime reports to nobody
            cpus = max(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
            ray.init(num_cpus=cpus, num_gpus=torch.cuda.device_count() if gpus else 0, include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False)
    except Exception as exc:  # ConnectionError, RuntimeError, grpc errors: one line for the CLI
        where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
        raise WorkersError(f"cannot start or join {where}: {_first_line(exc)}") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


def check_address(address: str | None) -> None:
    """Fail fast, before any model loads, on a Ray address that is malformed or does not answer."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)


def _check_reachable(address: str, attempts: int = 3, backoff: float = 1.0) -> None:
    """Fail fast, in one line, on a head node that does not answer: Ray itself retries for minutes."""
    if address == "auto":  # Ray reads the address of the cluster on this machine, or says there is none
        return
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise WorkersError(f"Ray address {address!r} is not 'auto', 'host:port' or 'ray://host:port'")
    for attempt in range(attempts):
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
                return
        except OSError as exc:
            if attempt + 1 == attempts:
                raise WorkersError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; start it with "
                                   f"'ray start --head' or check --ray-address") from None
            time.sleep(backoff * 2**attempt)


def _worker_options(ray: Any, workers: int, settings: Settings) -> tuple[dict[str, Any], str, int | None]:
    """Actor resources: a GPU (or a share of one) each when the cluster has GPUs, else one CPU slot (and one torch
    thread).

    With more workers than GPUs each actor asks for ``1 / ceil(workers / gpus)`` of a GPU (0.5 each for 2 workers
    on 1 GPU), so they share the GPUs and run at once instead of queueing for a whole one. The driver's settings go
    to the workers, whose nodes may not have them; the storage URL travels as an argument instead, since
    runtime_env variables show in Ray's dashboard.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    env = settings.to_env()
    options: dict[str, Any] = {"max_restarts": MAX_RESTARTS, "max_task_retries": 0}
    if env:
        options["runtime_env"] = {"env_vars": env}
    if gpus:
        # Ray places a fractional request on a single GPU: gpus / workers (e.g. 2/3) would leave a GPU with room
        # for one actor only, while 1 / (actors per GPU) packs every worker.
        per_gpu = math.ceil(workers / gpus)
        share: float = 1 if per_gpu == 1 else 1 / per_gpu
        if per_gpu > 1:
            log.info("%d workers on %d GPU(s): up to %d share each GPU (num_gpus=%.4g each)", workers, gpus,
                     per_gpu, share)
        return {**options, "num_gpus": share, "num_cpus": 1}, "cuda", None
    return {**options, "num_cpus": 1}, "cpu", 1


def run_on_ray(session: StudySession, *, workers: int, address: str | None = None,
               on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
               prepare: Callable[[Callable[[list[SkipSchedule | None]], list[float | None]]], None] | None = None
               ) -> bool:
    """Run the session's study to its budget on ``workers`` Ray actors; True when interrupted.

    Every actor joins the driver's study by its name. ``prepare(evaluate_many)`` runs once the actors are up and
    before any trial: the driver calibrates the rho bounds with ``evaluate_many`` spreading the sweep over the
    workers, then enqueues the baselines (see :func:`skipsearch.optimization.run_definition`).
    ``session.interrupted`` (set by the CLI's first Ctrl-C) stops handing out trials and lets the running ones
    finish; a KeyboardInterrupt kills the workers at once (their trials are failed, their parameters queued again).
    ``on_trial(study, last_finished_trial)`` is called from the driver whenever the finished count grows.
    """
    if workers < 1:
        raise WorkersError(f"--workers must be at least 1, got {workers}")
    import ray
    connected = _connect(ray, address, workers, gpus=session.adapter.device.type == "cuda")
    slots: list[_Slot] = []
    lost: dict[str, float] = {}  # tags of worker processes seen dying -> when
    try:
        options, device, threads = _worker_options(ray, workers, session.settings)
        remote = ray.remote(TrialWorker)
        for _ in range(workers):
            actor = remote.options(**options).remote(session.requested, session.study.study_name,
                                                     session.storage_url, device, threads, session.settings)
            slots.append(_Slot(actor))
        if prepare is not None:
            n = session.definition.space_bounds.calibrate_n
            prepare(lambda schedules: _score_on_workers(ray, session, slots, schedules, n))
        return _drive(ray, session, slots, lost, on_trial)
    except KeyboardInterrupt:
        return True
    finally:
        _kill(ray, [slot.actor for slot in slots])
        # Their processes are gone now: fail their unfinished trials and queue the retries at once, rather than
        # leave that to the heartbeat of the next run.
        tags = {slot.tag for slot in slots if slot.tag} | set(lost)
        try:
            fail_and_requeue(session.study, [t for t in session.study.get_trials(deepcopy=False, states=(
                TrialState.RUNNING,)) if TrialRecord.read(t).worker in tags], "its Ray worker was stopped")
        except Exception as exc:  # e.g. the database is gone too: the heartbeat does it on the next run
            log.warning("could not fail the killed workers' trials now (%s); the next run will", _first_line(exc))
        if connected:
            ray.shutdown()  # stops a runtime we started; only disconnects from a cluster we joined


def _score_on_workers(ray: Any, session: StudySession, slots: list[_Slot], schedules: list[SkipSchedule | None],
                      n: int) -> list[float | None]:
    """The calibration sweep's schedules, dealt out over the workers; a share whose worker fails to start or dies
    is scored here instead, so a sick cluster slows the sweep but cannot change it."""
    values: list[float | None] = [None] * len(schedules)
    shares = [list(range(i, len(schedules), len(slots))) for i in range(len(slots))]
    calls = [(slot.actor.score.remote([schedules[i] for i in share], n), share)
             for slot, share in zip(slots, shares) if share]
    for call, share in calls:
        try:
            scored = ray.get(call)
        except ray.exceptions.RayError as exc:
            log.warning("a Ray worker could not score its share of the calibration (%s); scoring it here",
                        _first_line(exc))
            scored = [_score(session, schedules[i], n) for i in share]
        for i, value in zip(share, scored):
            values[i] = value
    return values


def _score(session: StudySession, schedule: SkipSchedule | None, n: int) -> float | None:
    """The proxy at ``n`` images (calibration), None where the schedule fails."""
    try:
        return session.proxy.evaluate(schedule, rungs=[n], preview=0).value
    except TRIAL_FAILURES:
        return None


def _kill(ray: Any, actors: list[Any], timeout: float = 15.0) -> None:
    """Kill the actors (idle ones too: each holds a model, maybe a GPU) and wait until Ray reports them dead, so
    no worker still writes to the study once the caller goes on."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead
            pass
    probes = [actor.pid.remote() for actor in actors]  # each fails with RayActorError once its actor is gone
    deadline = time.monotonic() + timeout
    while probes and time.monotonic() < deadline:
        ready, probes = ray.wait(probes, num_returns=len(probes), timeout=min(1.0, deadline - time.monotonic()))


def _drive(ray: Any, session: StudySession, slots: list[_Slot], lost: dict[str, float],
           on_trial: Callable[[optuna.Study, FrozenTrial], None] | None) -> bool:
    """Hand out one-trial calls within the budget until it is spent, all calls returned and no orphan is left."""
    study = session.study
    # Optuna's SQLite engine reads a WAITING trial and marks it RUNNING in two statements (pysqlite starts the
    # transaction at the write), so two workers starting at once can both take the same enqueued trial, or both
    # fail a stale one and queue two retries. On SQLite the driver therefore lets one worker start at a time: the
    # next call goes out once the previous worker's trial is RUNNING under its name. PostgreSQL locks the row.
    one_start = session.storage_url.startswith("sqlite")
    reported = count_finished(study)
    idle_steps = 0  # steps in a row that ran no trial while this study had budget: workers on another study
    stale_checked = waiting_since = 0.0
    warned = False
    # As optuna_storage: a trial is stale 3 heartbeats after its last one.
    grace = 3 * session.settings.heartbeat_seconds
    while True:
        interrupted = bool(getattr(session, "interrupted", False))
        for slot in slots:
            if not slot.dead and slot.tag is None and slot.probe is None and time.monotonic() >= slot.probe_after:
                slot.probe = slot.actor.tag.remote()
        live = [s for s in slots if not s.dead]
        busy = [s for s in live if s.call is not None]
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        # RUNNING trials no step in flight owns: a dead worker's (until failed), another driver's. A trial whose
        # attr is not written yet counts for a moment: over-counting delays a call, under-counting would overrun.
        orphans = [t for t in running if TrialRecord.read(t).worker not in {s.tag for s in busy}]
        starting = [s for s in busy if s.tag not in {TrialRecord.read(t).worker for t in running}]
        remaining = session.remaining()
        if not interrupted:
            free = remaining - len(busy) - len(orphans)
            for slot in live:
                if free <= 0 or (one_start and starting):
                    break
                if slot.call is None and slot.tag is not None:
                    slot.call = slot.actor.step.remote()
                    busy.append(slot)
                    starting.append(slot)
                    free -= 1
        if not busy:
            if interrupted or (remaining == 0 and not orphans):
                return interrupted
            if not live:
                errors = "; ".join(sorted({s.last_error for s in slots if s.last_error}))
                raise WorkersError(f"all {len(slots)} Ray workers died ({errors or 'no error reported'}); the study "
                                   f"is saved: run the same command again to resume")
        if orphans and not (one_start and starting) and time.monotonic() - stale_checked > POLL_SECONDS:
            # Workers do this at each trial start too, but none may be starting while orphans hold the budget.
            stale_checked = time.monotonic()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            # A worker killed before its trial's first heartbeat leaves a trial Optuna never sees as stale; Ray
            # told us that process died, so after the same grace its trial is failed and retried here.
            fail_and_requeue(study, [t for t in orphans if time.monotonic() - lost.get(
                str(TrialRecord.read(t).worker), math.inf) > grace], "its Ray worker died")
            waiting_since = waiting_since or time.monotonic()
            if not busy and not warned and time.monotonic() - waiting_since > 3 * grace:
                warned = True
                log.warning("waiting for trial(s) %s, RUNNING but not on this run's workers: they count against "
                            "the budget until they finish or their heartbeat is stale (Ctrl-C stops; the study "
                            "is saved)", ", ".join(str(t.number) for t in orphans))
        elif not orphans:
            waiting_since = 0.0
        refs = [s.call for s in busy] + [s.probe for s in live if s.probe is not None]
        # While a start is awaited, look again soon; otherwise one ready call is enough to act on.
        timeout = START_POLL_SECONDS if one_start and starting and len(busy) < len(live) else POLL_SECONDS
        if refs:
            ready = set(ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=True)[0])
            for slot in live:
                if slot.call is not None and slot.call in ready:
                    idle_steps = 0 if _collect_step(ray, slot, lost) is not None else idle_steps + 1
                if slot.probe is not None and slot.probe in ready:
                    _collect_probe(ray, slot)
        else:
            time.sleep(timeout)
        finished = count_finished(study)
        if idle_steps >= IDLE_STEPS_PER_WORKER * len(slots) and finished == reported and session.remaining() > 0:
            raise WorkersError(f"the Ray workers ran no trial in their last {idle_steps} calls while study "
                               f"{study.study_name!r} has {session.remaining()} trial(s) left; the study is saved: "
                               "run the same command again to resume")
        if finished != reported:
            idle_steps = 0
            reported = finished
            last = _last_finished(study)
            if on_trial is not None and last is not None:
                on_trial(study, last)


def _collect_probe(ray: Any, slot: _Slot) -> None:
    probe, slot.probe = slot.probe, None
    try:
        slot.tag = ray.get(probe)
    except ray.exceptions.ActorUnavailableError:  # restarting (reloading the model): ask again shortly
        slot.probe_after = time.monotonic() + POLL_SECONDS
    except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
        # Its constructor failed, Ray has given up restarting it, or killed it for memory.
        slot.dead, slot.last_error = True, _first_line(exc)


def _collect_step(ray: Any, slot: _Slot, lost: dict[str, float]) -> int | None:
    """The result of a step: the trial it ran (None: none), a lost actor (Ray restarts it; its trial is retried;
    -1), or an error (re-raised)."""
    call, slot.call = slot.call, None
    try:
        return ray.get(call)
    except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
        if slot.tag:
            lost[slot.tag] = time.monotonic()
        if not isinstance(exc, ray.exceptions.RayActorError) or isinstance(
                exc, ray.exceptions.ActorUnavailableError):  # the process died; Ray is restarting the actor
            log.warning("Ray worker %s died during a trial (%s); it is restarted and the trial retried", slot.tag,
                        _first_line(exc))
        else:  # init failed or the restarts are spent
            slot.dead, slot.last_error = True, _first_line(exc)
            log.warning("Ray worker %s is gone (%s)", slot.tag, slot.last_error)
        slot.tag = None  # probed again: a restarted actor is another process
        return -1
    except ray.exceptions.RayTaskError as exc:
        # An error outside the trial failures the objective records (a bug, a lost database): as without Ray.
        raise (exc.cause if isinstance(exc.cause, BaseException) else exc) from None


def _last_finished(study: optuna.Study) -> FrozenTrial | None:
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.datetime_complete is not None]
    return max(trials, key=lambda t: (t.datetime_complete, t.number)) if trials else None
