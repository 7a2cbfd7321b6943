"""The study-wide budget under concurrency, kills and interrupts (real SQLite and PostgreSQL, real processes).

Claims are tested first on a cheap objective (many processes, many trials, seconds), then end to end through the
CLI on the bundled model: two concurrent ``optimize`` runs, a SIGKILL followed by an immediate re-run, a double
Ctrl-C, and every trial failing.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers.pg import pg_server, pg_url  # noqa: F401 - fixtures
from helpers.studies import only_study, wait_for_running_trial
from optuna.trial import TrialState

from skipsearch.execution.budget import (
    TrialGate,
    TrialSkipped,
    process_tag,
    recover_orphans,
    trial_storage,
    used,
)
from skipsearch.store import BestKey, BestStore
from skipsearch.store.locks import study_lock
from skipsearch.store.records import count_finished

TINY = ["--nfe", "5", "--rungs", "24,48", "--final-n", "48", "--top-k", "1", "--device", "cpu", "--rho-min", "0.3",
        "--rho-max", "1.0"]


def _storage(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/skipsearch.db"
    return request.getfixturevalue("pg_url")


class Bowl:
    """A cheap objective over two parameters with the interface the gate needs (``suggest``)."""

    def suggest(self, trial: optuna.Trial) -> None:
        trial.suggest_float("x", -1, 1)
        trial.suggest_categorical("y", [0, 1, 2])  # few values: exact repeats happen

    def __call__(self, trial: optuna.Trial) -> float:
        self.suggest(trial)
        time.sleep(0.02)
        return trial.params["x"] ** 2 + trial.params["y"]


def _claim_loop(url: str, name: str, budget: int, seed: int) -> None:
    """One process: trials through the gate until the study-wide budget is used."""
    study = optuna.load_study(study_name=name, storage=trial_storage(url, 2),
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    store = BestStore(url)
    gate = TrialGate(Bowl(), budget, lambda: study_lock(store.engine, name), process_tag())
    while used(study) < budget:
        study.optimize(gate, n_trials=1, catch=(TrialSkipped,))
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_concurrent_processes_use_exactly_the_budget(kind: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    url = _storage(kind, tmp_path, request)
    BestStore(url).close()
    optuna.create_study(study_name="bowl", storage=trial_storage(url, 2))
    # The same seed in every process: without the duplicate check they would propose identical points.
    procs = [multiprocessing.get_context("spawn").Process(target=_claim_loop, args=(url, "bowl", 24, 0))
             for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(240)
        assert proc.exitcode == 0
    study = optuna.load_study(study_name="bowl", storage=url)
    trials = study.get_trials()
    assert count_finished(study) == 24
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 24
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == len(params)  # no exact repeat among finished trials
    skipped = [t for t in trials if t.state == TrialState.FAIL]
    assert skipped and all(t.user_attrs.get("uncounted") for t in skipped)  # identical seeds collide: skipped
    assert len({t.user_attrs["claimed_by"] for t in complete}) == 3  # every process took part


def test_orphan_of_a_dead_process_is_requeued_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    BestStore(url).close()
    study = optuna.create_study(study_name="bowl", storage=trial_storage(url, 1))
    # A process that took a trial and was SIGKILLed before it finished.
    code = ("import optuna, os, signal, sys; from skipsearch.execution.budget import trial_storage\n"
            "from skipsearch.execution.budget import process_tag\n"
            f"s = optuna.load_study(study_name='bowl', storage=trial_storage({url!r}, 1))\n"
            "t = s.ask(); t.suggest_float('x', -1, 1)\n"
            "t.set_user_attr('worker', process_tag()); t.set_user_attr('worker_pid', os.getpid())\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (orphan,) = study.get_trials(states=(TrialState.RUNNING,))
    requeued, waiting = recover_orphans(study, heartbeat_seconds=1)
    assert requeued == [orphan.number] and waiting == []
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert "died" in trials[orphan.number].user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.system_attrs["failed_trial"] == orphan.number and retry.params == orphan.params
    assert count_finished(study) == 0  # the orphan does not count: its retry will


# --------------------------------------------------------------------------------------------------------------------
# End to end through the CLI on the bundled model.


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SKIPSEARCH_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "SKIPSEARCH_OFFLINE": "1",
            **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *TINY, *args]


def _assert_settled(study: optuna.Study, trials: int) -> None:
    """Exactly the budget, nothing left running or queued, no exact repeat among finished trials."""
    all_trials = study.get_trials()
    assert not [t.number for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert count_finished(study) == trials
    finished = [tuple(sorted(t.params.items())) for t in all_trials
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(set(finished)) == len(finished)


def _validations(url: str, study: optuna.Study) -> list:
    with BestStore(url) as store:
        (row,) = store.best("edm")
        return store.validations(BestKey(row.model_name, row.weights_sha256, row.sampler, row.nfe))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_optimize_runs_share_one_budget_and_validate_once(kind: str, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    url = _storage(kind, tmp_path, request)
    env = _env(tmp_path)
    procs = [subprocess.Popen(_cli("--trials", "6", "--pruner", "none", "--storage", url), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [proc.communicate(timeout=800) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    study = only_study(url)
    _assert_settled(study, 6)
    ran_by = {t.user_attrs.get("claimed_by") for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert len(ran_by) == 2  # both processes ran trials
    validations = _validations(url, study)
    numbers = [v.trial_number for v in validations]
    assert numbers and len(numbers) == len(set(numbers))  # each candidate validated once, by one process


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_then_an_immediate_rerun_recovers_the_orphan(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    env = _env(tmp_path, SKIPSEARCH_HEARTBEAT_SECONDS="2")
    args = _cli("--trials", "4", "--pruner", "none", "--storage", url)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        orphan = wait_for_running_trial(url, proc, time.monotonic() + 300)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=800)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = only_study(url)
    _assert_settled(study, 4)
    trials = study.get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[orphan.number].params
    # The re-run finds nothing left to do.
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=800)
    assert again.returncode == 0 and len(only_study(url).get_trials()) == len(trials), again.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_double_ctrl_c_requeues_the_aborted_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    env = _env(tmp_path)
    args = _cli("--trials", "3", "--pruner", "none", "--storage", url)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        aborted = wait_for_running_trial(url, proc, time.monotonic() + 300)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    trials = only_study(url).get_trials()
    assert trials[aborted.number].state == TrialState.FAIL
    assert trials[aborted.number].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == aborted.number]
    assert retry.state == TrialState.WAITING
    resumed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = only_study(url)
    _assert_settled(study, 3)
    assert study.get_trials()[retry.number].state == TrialState.COMPLETE


# --------------------------------------------------------------------------------------------------------------------
# Seeds, failure accounting, early checks.


def test_each_process_gets_its_own_sampler_seed(bundled, tmp_path: Path) -> None:
    from skipsearch.execution.session import open_session
    from skipsearch.search.definition import default_study
    from skipsearch.search.strategies import process_seed
    from skipsearch.settings import Settings

    definition = default_study("edm").override(nfe=5, trials=4, space_bounds__calibrate=False)
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    settings = Settings(home=tmp_path)

    def first_proposal(session) -> dict:
        trial = session.study.ask()
        session.objective.suggest(trial)
        session.study.tell(trial, state=TrialState.FAIL)
        return trial.params

    sessions = [open_session(definition, storage_url=url, adapter=bundled, settings=settings) for _ in range(3)]
    assert sessions[0].study.user_attrs["processes_joined"] == 3
    proposals = [first_proposal(s) for s in sessions]
    assert len({tuple(sorted(p.items())) for p in proposals}) == 3  # same study seed, three different points
    assert process_seed(7, 0) == 7 and len({process_seed(7, i) for i in range(100)}) == 100
    # The first process of a study keeps the study seed: a one-process study is reproducible.
    other = open_session(definition.override(name="again"), storage_url=url, adapter=bundled, settings=settings)
    assert first_proposal(other) == proposals[0]
    for s in (*sessions, other):
        s.store.close()


def _nan_checkpoint(tmp_path: Path) -> Path:
    """The bundled EDM weights with one layer NaN: every image is non-finite."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from skipsearch.models.bundled import BUNDLED_WEIGHTS
    with safe_open(str(BUNDLED_WEIGHTS), "pt") as handle:
        metadata = handle.metadata()  # the network config travels with the weights
    tensors = load_file(str(BUNDLED_WEIGHTS))
    name = next(k for k in tensors if k.endswith("weight") and tensors[k].ndim == 4)
    tensors[name] = tensors[name] * float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.slow
def test_a_study_whose_every_trial_fails_exits_nonzero_in_one_line_per_trial(tmp_path: Path) -> None:
    checkpoint = _nan_checkpoint(tmp_path)
    proc = subprocess.run(_cli("--trials", "3", "--checkpoint", str(checkpoint)), capture_output=True, text=True,
                          env=_env(tmp_path), timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "nothing was validated" in proc.stdout
    failures = [line for line in proc.stderr.splitlines() if "failed: NonFiniteOutputError" in line]
    assert len(failures) == 3, proc.stderr[-3000:]  # one line per failed trial, with its reason


def test_workers_and_ray_address_are_checked_before_the_model_loads(tmp_path: Path, capsys, monkeypatch) -> None:
    from helpers.cli import assert_one_line_error, run_cli

    from skipsearch.errors import UsageError
    from skipsearch.optimization import run_definition
    from skipsearch.search.definition import default_study

    url = f"sqlite:///{tmp_path}/skipsearch.db"
    for workers in (0, -1, True):
        with pytest.raises(UsageError, match="workers must be a positive integer"):
            run_definition(default_study("edm"), storage_url=url, workers=workers)
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    result = run_cli(capsys, "optimize", "--trials", "2", "--workers", "2", "--ray-address", "127.0.0.1:1")
    assert_one_line_error(result, "cannot reach the Ray cluster at 127.0.0.1:1")
    assert result.code == 2
    assert not (tmp_path / "skipsearch.db").exists()  # no study created, no baselines left WAITING


def test_offline_stops_checkpoint_downloads(tmp_path: Path) -> None:
    from skipsearch.models import load_model
    from skipsearch.models.errors import ModelError
    from skipsearch.settings import Settings

    with pytest.raises(ModelError, match="downloading is disabled"):
        load_model("edm-cifar10", settings=Settings(home=tmp_path, cache=tmp_path / "cache", offline=True))
