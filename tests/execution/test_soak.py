"""Soak: three ``optimize`` processes (one driving two Ray workers) on one PostgreSQL study, SIGKILLs at random.

Bounded (a deadline, a cap on kills), loopback only, stops by itself. Victims are the two local processes (each
restarted at once, as a user would) and the Ray worker processes (Ray restarts them); the Ray driver is spared, since
a SIGKILLed driver strands its private Ray runtime. Afterwards the study must hold exactly its budget, nothing
RUNNING or WAITING, no exact repeat among finished trials, each candidate validated once, one best row.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers.pg import pg_server, pg_url  # noqa: F401 - fixtures
from helpers.studies import searched_study_names
from optuna.trial import TrialState

from skipsearch.store import BestKey, BestStore
from skipsearch.store.records import count_finished

TRIALS = 40
MAX_KILLS = 5
DEADLINE_SECONDS = 720
ARGS = ["--nfe", "5", "--rungs", "32,64", "--final-n", "64", "--top-k", "2", "--device", "cpu", "--rho-min", "0.3",
        "--rho-max", "1.0", "--trials", str(TRIALS)]


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_SECONDS + 180)
def test_soak_three_processes_two_ray_workers_random_sigkills(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    rng = random.Random(20261202)
    env = {**os.environ, "SKIPSEARCH_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "SKIPSEARCH_OFFLINE": "1",
           "SKIPSEARCH_HEARTBEAT_SECONDS": "2"}
    command = [sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *ARGS, "--storage", pg_url]
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, extra: list[str]) -> subprocess.Popen:
        log = open(logs / f"{name}-{time.monotonic_ns()}.log", "w")
        return subprocess.Popen([*command, *extra], stdout=log, stderr=subprocess.STDOUT, text=True, env=env)

    start_time = time.monotonic()
    # The Ray driver first (its runtime takes a while to start); the local processes join once a worker runs.
    procs = {"ray": start("ray", ["--workers", "2"])}
    while not _ray_worker_pids(pg_url, procs) and time.monotonic() - start_time < 300:
        assert procs["ray"].poll() is None, "\n".join(p.read_text()[-3000:] for p in logs.iterdir())
        time.sleep(0.5)
    procs.update({"local-1": start("local-1", []), "local-2": start("local-2", [])})
    kills: list[str] = []
    exits: dict[str, int] = {}
    try:
        while procs and time.monotonic() - start_time < DEADLINE_SECONDS:
            time.sleep(rng.uniform(3, 9))
            for name, proc in list(procs.items()):
                if proc.poll() is not None:
                    exits[name] = proc.returncode
                    del procs[name]
            if len(kills) >= MAX_KILLS or not procs:
                continue
            workers = _ray_worker_pids(pg_url, procs)
            ray_kills = sum(k.startswith("Ray") for k in kills)
            # Both kinds of victim: Ray workers (at most 2: Ray restarts each twice) and the local processes.
            if workers and ray_kills < 2 and (rng.random() < 0.6 or len(kills) >= MAX_KILLS - 1):
                victim: str | int | None = rng.choice(workers)
            else:
                victim = rng.choice([name for name in procs if name != "ray"] or [None])
            if isinstance(victim, str):
                procs[victim].kill()
                procs[victim].wait(30)
                kills.append(f"{victim} (process)")
                procs[victim] = start(victim, [])  # resumed at once, as a user would
            elif isinstance(victim, int):
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills.append(f"Ray worker pid {victim}")
                except ProcessLookupError:
                    pass
    finally:
        for proc in procs.values():
            proc.kill()
    wall = time.monotonic() - start_time
    output = "\n".join(p.read_text()[-1500:] for p in sorted(logs.iterdir()))
    assert not procs, f"did not finish within {DEADLINE_SECONDS}s; kills {kills}\n{output}"
    assert exits == {"local-1": 0, "local-2": 0, "ray": 0}, f"{exits}\n{output}"

    (name,) = searched_study_names(pg_url)
    study = optuna.load_study(study_name=name, storage=pg_url)
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert count_finished(study) == TRIALS
    finished = [tuple(sorted(t.params.items())) for t in trials
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == len(set(finished))
    with BestStore(pg_url) as store:
        rows = store.best()
        assert len(rows) == 1
        validations = store.validations(BestKey(rows[0].model_name, rows[0].weights_sha256, rows[0].sampler,
                                                rows[0].nfe))
    ran = {t.user_attrs.get("worker") for t in trials if t.state.is_finished()}
    assert len(ran) >= 4, (ran, output)  # the Ray workers and the local processes all ran trials
    numbers = [v.trial_number for v in validations]
    assert numbers and len(numbers) == len(set(numbers))
    print(f"\nsoak: {len(kills)} SIGKILLs survived ({', '.join(kills)}); {len(trials)} trials created, "
          f"{count_finished(study)} counted, {len([t for t in trials if t.state == TrialState.FAIL])} failed/"
          f"uncounted; {len(numbers)} validations; wall {wall:.0f}s")


def _ray_worker_pids(url: str, procs: dict[str, subprocess.Popen]) -> list[int]:
    """Pids of processes running trials that are none of ours: the Ray workers."""
    ours = {proc.pid for proc in procs.values()}
    try:
        (name,) = searched_study_names(url)
        study = optuna.load_study(study_name=name, storage=url)
    except Exception:  # no schema or study yet
        return []
    return sorted({int(t.user_attrs["worker_pid"]) for t in study.get_trials(states=(TrialState.RUNNING,))
                   if "worker_pid" in t.user_attrs} - ours)
