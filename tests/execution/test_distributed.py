"""Studies on Ray workers (real local Ray runtime) over SQLite and a real PostgreSQL server: budget, dead workers,
Ctrl-C, and concurrent writers of the best-schedule table.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from helpers.pg import pg_server, pg_url  # noqa: F401 - fixtures
from helpers.studies import searched_study_names
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from skipsearch.store import BestKey, BestStore
from skipsearch.store.records import count_finished

TINY = ["--nfe", "5", "--rungs", "24,48", "--final-n", "48", "--top-k", "1", "--device", "cpu", "--rho-min", "0.3",
        "--rho-max", "1.0"]
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def _storage(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/skipsearch.db"
    return request.getfixturevalue("pg_url")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # One torch thread per process (the CLI driver too): the machine's cores are shared.
    return {**os.environ, "SKIPSEARCH_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *TINY, *args]


def _study(url: str | optuna.storages.BaseStorage) -> optuna.Study:
    names = searched_study_names(url)
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=url)


def _assert_best_row(url: str, study: optuna.Study, export: Path | None = None) -> None:
    with BestStore(url) as store:
        rows = store.best("edm")
    assert len(rows) == 1
    row = rows[0]
    assert row.nfe == 5 and row.n == 48 and row.metric == "fid" and math.isfinite(row.value)
    assert row.study_name == study.study_name
    trial = study.trials[row.trial_number]
    assert trial.state == TrialState.COMPLETE
    assert row.schedule["provenance"]["trial"] == trial.number
    if export is not None:
        assert export.exists()


def _assert_complete(study: optuna.Study, trials: int) -> None:
    states = [t.state for t in study.get_trials()]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    assert count_finished(study) == trials


# --------------------------------------------------------------------------------------------------------------------
# Through the CLI: the driver starts its own local Ray runtime.


def test_two_workers_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    export = tmp_path / "best.json"
    # The aggressive pruner: each worker's pruner judges its trial against the rungs all workers reported.
    proc = subprocess.run(_cli("--trials", "6", "--pruner", "aggressive", "--workers", "2", "--storage", url,
                               "--export", str(export)), capture_output=True, text=True, env=_env(tmp_path),
                          timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(url)
    assert len(study.trials) == 6
    _assert_complete(study, 6)
    assert TrialState.PRUNED in {t.state for t in study.trials}
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, workers  # both workers ran trials of the one study
    _assert_best_row(url, study, export)


@pytest.mark.timeout(1200)  # Ray, a calibration sweep and validation: 1-2 min alone, much longer on a loaded CI
def test_two_workers_with_the_default_calibrated_study(tmp_path: Path) -> None:
    """The default study calibrates its rho bounds: the workers must run the driver's study, not one named from the
    calibrated bounds (which never finished: the driver waited on a study nobody ran), and the sweep runs on them."""
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    tiny = ["--nfe", "5", "--rungs", "24,48", "--final-n", "48", "--top-k", "1", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *tiny, "--trials",
                           "4", "--workers", "2", "--storage", url], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=1100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "calibrated rho bounds" in proc.stdout
    study = _study(url)  # one searched study: the driver's
    _assert_complete(study, 4)
    assert {t.user_attrs["worker"] for t in study.trials} and all("worker" in t.user_attrs for t in study.trials)
    assert any(t.user_attrs.get("baseline") for t in study.trials if t.state == TrialState.COMPLETE)
    from skipsearch.store.records import StudyRecord
    calibration = StudyRecord(study).calibration()
    assert calibration is not None and calibration.rho_min < 1 < calibration.rho_max
    for trial in study.trials:  # every searched rho lies in the calibrated bounds
        for name, value in trial.params.items():
            if name.startswith("rho"):
                assert calibration.rho_min - 1e-9 <= value <= calibration.rho_max + 1e-9, (name, value)
    _assert_best_row(url, study)


def _wait_for_study(url: str, proc: subprocess.Popen, deadline: float) -> optuna.storages.RDBStorage:
    """A storage once the CLI has created the schema and the study (building one earlier would race its DDL)."""
    engine = create_engine(url)
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with engine.connect() as conn:
                    if conn.execute(text("SELECT count(*) FROM studies")).scalar():
                        return optuna.storages.RDBStorage(url)
            except DBAPIError:  # no tables yet
                pass
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError(f"the study did not appear: {proc.communicate()[1][-3000:]}")


def _kill_a_running_trial(storage: optuna.storages.RDBStorage, proc: subprocess.Popen, deadline: float) -> int:
    """SIGKILL the worker process of a trial that has just started (before its first rung); the trial's number."""
    study = _study(storage)
    while time.monotonic() < deadline and proc.poll() is None:
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if "worker_pid" in trial.user_attrs and "proxy_n24" not in trial.user_attrs:
                os.kill(trial.user_attrs["worker_pid"], signal.SIGKILL)
                return trial.number
        time.sleep(0.1)
    raise AssertionError(f"no running trial to kill: {proc.communicate()[1][-3000:]}")


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_dead_worker_is_replaced_and_its_trial_retried(kind: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    url = _storage(kind, tmp_path, request)
    # A 1 s heartbeat (3 s grace) so the killed worker's trial goes stale quickly; driver and workers read it.
    env = _env(tmp_path, SKIPSEARCH_HEARTBEAT_SECONDS="1")
    proc = subprocess.Popen(_cli("--trials", "6", "--pruner", "none", "--workers", "2", "--storage", url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        storage = _wait_for_study(url, proc, time.monotonic() + 300)
        killed = [_kill_a_running_trial(storage, proc, time.monotonic() + 300)]
        time.sleep(1.0)
        # The signal may land just after the trial finished (then another trial ran on): kill again.
        while _study(storage).trials[killed[-1]].state == TrialState.COMPLETE and len(killed) < 3:
            killed.append(_kill_a_running_trial(storage, proc, time.monotonic() + 120))
            time.sleep(1.0)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    if kind == "postgres":
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        assert password not in out + err
        assert "***" in out
    study = _study(url)
    _assert_complete(study, 6)
    lost = study.trials[killed[-1]]
    assert lost.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    # Killed while suggesting, the lost trial may hold only some of its parameters; the retry has those and more.
    assert lost.params.items() <= retries[0].params.items()
    assert len(study.trials) == 6 + len(killed)
    _assert_best_row(url, study)


# --------------------------------------------------------------------------------------------------------------------
# In-process: the test owns the Ray runtime; run_on_ray joins it and leaves it running.


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of the raylet may linger as a zombie until reaped.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_ctrl_c_kills_workers_and_the_study_resumes(ray_runtime: None, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from skipsearch.execution.ray import run_on_ray
    from skipsearch.execution.session import open_session
    from skipsearch.search.definition import default_study

    # The heartbeat of this process's storage (it fails stale trials) and of the workers (settings are forwarded).
    monkeypatch.setenv("SKIPSEARCH_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    definition = default_study("edm").override(nfe=5, trials=6, proxy__rungs=(24, 48), search__final_n=48,
                                               search__validate_top_k=1, search__pruner="none",
                                               space_bounds__calibrate=False)
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    session = open_session(definition, storage_url=url, device="cpu")

    def second_ctrl_c(_study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        raise KeyboardInterrupt  # what the CLI's SIGINT handler raises on a second Ctrl-C

    assert run_on_ray(session, workers=2, on_trial=second_ctrl_c) is True
    assert ray.is_initialized()  # a runtime the caller started is left running
    first = session.study.get_trials()
    pids = {t.user_attrs["worker_pid"] for t in first if "worker_pid" in t.user_attrs}
    # The workers were killed, not left running (a killed process may take a moment to be reaped).
    assert pids and _wait(lambda: not any(_alive(pid) for pid in pids), 15)
    assert 1 <= count_finished(session.study) < 6
    # The killed workers' trials are failed at once, each with its retry queued.
    now = session.study.get_trials()
    assert not [t for t in now if t.state == TrialState.RUNNING]
    for lost in (t for t in now if t.state == TrialState.FAIL):
        assert [t.state for t in now if t.system_attrs.get("failed_trial") == lost.number] == [TrialState.WAITING]

    def first_ctrl_c(_study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        session.interrupted = True  # what the CLI's SIGINT handler sets on a first Ctrl-C

    assert run_on_ray(session, workers=2, on_trial=first_ctrl_c) is True
    # Graceful: the trials in flight were let finish.
    assert not session.study.get_trials(states=(TrialState.RUNNING,))
    assert count_finished(session.study) < 6
    session.interrupted = False
    seen: list[int] = []
    assert run_on_ray(session, workers=2, on_trial=lambda _s, t: seen.append(t.number)) is False
    _assert_complete(session.study, 6)
    assert seen and max(seen) == max(t.number for t in session.study.trials if t.state.is_finished())
    for before in first:  # the first run's finished trials are untouched
        if before.state.is_finished():
            assert session.study.trials[before.number].value == before.value
    session.store.close()


def test_driver_stops_in_one_line_when_workers_make_no_progress(ray_runtime: None, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers whose view of the study leaves them nothing to run (here: a smaller budget than the driver's) must
    not keep the driver looping: it stops with one line once they ran no trial for several calls."""
    import dataclasses

    from skipsearch.execution.ray import WorkersError, run_on_ray
    from skipsearch.execution.session import open_session
    from skipsearch.search.definition import default_study

    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    definition = default_study("edm").override(nfe=5, trials=3, proxy__rungs=(24,), search__final_n=24,
                                               search__pruner="none", space_bounds__calibrate=False)
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    session = open_session(definition, storage_url=url, device="cpu")
    session.run(1)  # one trial finished here; the workers below believe the budget is 1
    session.requested = dataclasses.replace(session.requested, trials=1)
    start = time.monotonic()
    with pytest.raises(WorkersError, match="ran no trial") as caught:
        run_on_ray(session, workers=2)
    assert "\n" not in str(caught.value) and "resume" in str(caught.value)
    assert time.monotonic() - start < 240
    assert count_finished(session.study) == 1 and not session.study.get_trials(states=(TrialState.RUNNING,))
    session.store.close()


def test_ray_is_not_imported_without_workers() -> None:
    code = ("import sys, skipsearch.optimization, skipsearch.execution.ray, skipsearch.cli; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_unreachable_ray_cluster_is_a_one_line_error() -> None:
    # A fresh process: this one may hold a Ray runtime already, which run_on_ray would simply use.
    code = ("import ray; from skipsearch.execution.ray import WorkersError, _connect\n"
            "for address in ('127.0.0.1:1', 'ray://127.0.0.1:1', 'nonsense'):\n"
            "    try:\n"
            "        _connect(ray, address, 2, gpus=False)\n"
            "    except WorkersError as exc:\n"
            "        print(exc)\n"
            "    assert not ray.is_initialized()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in lines[0] and "ray://127.0.0.1:1" in lines[1]
    assert "'nonsense'" in lines[2]


# --------------------------------------------------------------------------------------------------------------------
# The best-schedule table under concurrent writers on PostgreSQL.

KEY = BestKey("edm", "c" * 64, "heun", 5)

# Run by each spawned process: a bare `skipsearch` package so that importing the store skips torch.
_CHILD = """
import random, sys, threading, types
pkg = types.ModuleType("skipsearch")
pkg.__path__ = [PKG_DIR]
sys.modules["skipsearch"] = pkg
from skipsearch.store import BestStore, Validation

def work(thread):
    store = BestStore(URL)
    rng = random.Random(SEED * 100 + thread)
    START.wait(120)
    for j in range(COUNT):
        v = rng.uniform(1.0, 100.0)
        store.record(Validation(model_name=KEY[0], weights_sha256=KEY[1], sampler=KEY[2], nfe=KEY[3], metric="fid",
                                value=v, n=48, seeds="0-47", extractor="mnist-features", schedule_json="{}",
                                space="linear", study_name="s", trial_number=(SEED * 100 + thread) * 1000 + j))
    store.close()

threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_concurrent_best_upserts_postgres(pg_url: str) -> None:  # noqa: F811 - the fixture
    import skipsearch.store
    procs, threads, count = 3, 3, 12
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(procs * threads)
    pkg_dir = str(Path(skipsearch.store.__file__).parents[1])  # the skipsearch package folder
    workers = [ctx.Process(target=exec, args=(_CHILD, {"PKG_DIR": pkg_dir, "URL": pg_url, "SEED": i, "COUNT": count,
                                                        "THREADS": threads, "START": start,
                                                        "KEY": tuple(vars(KEY).values())}))
               for i in range(procs)]
    for w in workers:  # they also create the schema on the empty database at the same time
        w.start()
    for w in workers:
        w.join(timeout=240)
    assert [w.exitcode for w in workers] == [0] * procs
    values = [random.Random(i * 100 + t) for i in range(procs) for t in range(threads)]
    drawn = [rng.uniform(1.0, 100.0) for rng in values for _ in range(count)]
    with BestStore(pg_url) as store:
        rows = store.best("edm")
        history = store.validations(KEY)
    assert len(rows) == 1 and rows[0].value == min(drawn)
    assert sorted(v.value for v in history) == sorted(drawn)
    assert rows[0].trial_number == next(v.trial_number for v in history if v.value == min(drawn))

