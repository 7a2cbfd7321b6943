"""The search service end to end on the bundled model: CLI optimize, store, export, resume, bad input, dashboard."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from helpers.cli import assert_one_line_error, run_cli
from helpers.studies import searched_study_names

from skipsearch.schedule import SkipSchedule
from skipsearch.store import BestStore

pytestmark = pytest.mark.slow
# A fixed rho range: no calibration sweep (tests/search/test_byo_models.py covers it).
TINY = ["--nfe", "5", "--rungs", "24,48", "--final-n", "48", "--top-k", "1", "--device", "cpu", "--rho-min", "0.3",
        "--rho-max", "1.0"]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """One real study through the CLI entry point (aggressive pruner so pruning is exercised)."""
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home}/skipsearch.db"
    export = home / "best.json"
    code = subprocess.run([sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *TINY,
                           "--trials", "5", "--space", "linear", "--pruner", "aggressive", "--storage", url,
                           "--export", str(export)],
                          capture_output=True, text=True, env={**os.environ, "SKIPSEARCH_HOME": str(home)},
                          timeout=900)
    return home, url, export, code


def _study(url: str) -> optuna.Study:
    names = searched_study_names(url)
    assert len(names) == 1
    return optuna.load_study(study_name=names[0], storage=url)


def test_optimize_end_to_end(study_run):
    home, url, export, proc = study_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exported schedule" in proc.stdout
    study = _study(url)
    trials = study.get_trials()
    assert len(trials) == 5
    labels = {t.user_attrs.get("baseline") for t in trials} - {None}
    assert any("untuned" in label for label in labels) and any("paper" in label for label in labels)
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in complete:
        assert {"schedule", "seeds", "denoiser_calls", "wall_seconds", "proxy_n24", "proxy_n48"} <= set(t.user_attrs)
        assert t.user_attrs["sample_grid_artifact"]
    with BestStore(url) as store:
        rows = store.best("edm")
    assert len(rows) == 1 and rows[0].nfe == 5 and rows[0].n == 48
    schedule = SkipSchedule.load(export)
    assert schedule.model.name == "edm" and schedule.nfe == 5
    assert schedule.provenance["validated"]["value"] == pytest.approx(rows[0].value)


def test_export_and_sample_use_the_best(study_run, tmp_path, capsys):
    home, url, _, _ = study_run
    out = tmp_path / "s.json"
    result = run_cli(capsys, "export", "-o", out, "--model", "edm", "--nfe", "5", "--storage", url)
    assert result.code == 0, result.err
    result = run_cli(capsys, "sample", "--nfe", "5", "--n", "2", "--schedule", out, "-o", tmp_path / "g.png")
    assert result.code == 0, result.err
    for command in (["best", "--storage", url], ["studies", "--storage", url]):
        result = run_cli(capsys, *command)
        assert result.code == 0 and "edm" in result.out, result.err
    study = _study(url)
    result = run_cli(capsys, "report", study.study_name, "-o", tmp_path / "report", "--storage", url)
    assert result.code == 0, result.err
    assert (tmp_path / "report" / "trials.csv").exists() and (tmp_path / "report" / "fid_vs_rho.png").exists()


def test_resume_after_interrupt(tmp_path):
    url = f"sqlite:///{tmp_path}/resume.db"
    args = [sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *TINY, "--trials", "4",
            "--pruner", "none", "--storage", url, "--top-k", "0"]
    env = {**os.environ, "SKIPSEARCH_HOME": str(tmp_path)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 600
    while time.time() < deadline:  # interrupt once the first trial has finished
        time.sleep(1)
        try:
            names = searched_study_names(url)
            if names and any(t.state.is_finished() for t in optuna.load_study(
                    study_name=names[0], storage=url).get_trials()):
                break
        except Exception:  # the database may not exist yet
            continue
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-2000:]
    assert "Resume with the same command" in out
    first = _study(url).get_trials()
    assert 1 <= len([t for t in first if t.state.is_finished()]) < 4
    resumed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = _study(url).get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    # The finished trials of the first run are untouched.
    for before in first:
        if before.state.is_finished():
            assert trials[before.number].params == before.params and trials[before.number].value == before.value


def test_bad_input_one_line(tmp_path, capsys, study_run):
    _, url, _, _ = study_run
    with BestStore(url) as store:
        before = [(r.id, r.value) for r in store.best()]
    bad_study = tmp_path / "bad.toml"
    bad_study.write_text("[study]\nnfe = 'nine'\n")
    unknown_field = tmp_path / "unknown.toml"
    unknown_field.write_text("[proxy]\nrung = [1]\n")
    cases = [
        (["optimize", "--model", "nope"], ["unknown model 'nope'"]),
        (["optimize", "--nfe", "0"], ["positive"]),
        (["optimize", "--nfe", "10"], ["--nfe 9"]),
        (["optimize", "--sampler", "plms"], ["plms"]),
        (["optimize", "--space", "spiral"], ["spiral"]),
        (["optimize", "--study", bad_study], ["nfe"]),
        (["optimize", "--study", unknown_field], ["rung"]),
        (["optimize", "--study", tmp_path / "none.toml"], ["not found"]),
        (["optimize", "--storage", "postgresql+psycopg://u:pw@127.0.0.1:9/x"], ["***"]),
        (["export", "--model", "edm", "--nfe", "77", "--storage", url], ["no validated best"]),
    ]
    for args, fragments in cases:
        result = run_cli(capsys, *args)
        assert_one_line_error(result, *fragments)
        assert "pw@" not in result.err
    with BestStore(url) as store:
        assert [(r.id, r.value) for r in store.best()] == before  # nothing stored was lost


def test_missing_fid_weights_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("SKIPSEARCH_FID_WEIGHTS", raising=False)
    study = tmp_path / "inception.toml"
    study.write_text('[proxy]\nextractor = "inception-v3-compat"\n')
    result = run_cli(capsys, "optimize", "--study", study, "--storage", f"sqlite:///{tmp_path}/x.db")
    assert_one_line_error(result, "SKIPSEARCH_FID_WEIGHTS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study(study_run):
    _, url, _, _ = study_run
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "skipsearch.cli", "dashboard", "--storage", url, "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        body = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, proc.stderr.read() if proc.poll() is not None else "dashboard did not answer"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == optuna.get_all_study_names(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_baselines_carry_a_kind_and_old_labels_are_read_as_kinds() -> None:
    """Readers go by a baseline's kind, never its label: an S²-DM study's 'tau=1 fine-tune, rho=1' is untuned."""
    from skipsearch.store.records import BASELINE_KINDS, TrialRecord, Validated, legacy_baseline_kind

    assert {legacy_baseline_kind(label) for label in ("untuned (rho=1)", "tau=1 fine-tune, rho=1")} == {"untuned"}
    assert legacy_baseline_kind("paper recipe (linear 0.61->1.0)") == "paper"
    assert legacy_baseline_kind("tau=1 fine-tune, paper recipe (linear 0.61->1.0)") == "paper"
    assert legacy_baseline_kind("untuned (rho=1), dpmpp_2m") == "sampler"
    assert legacy_baseline_kind(None) is None
    record = TrialRecord(baseline="a label of any wording", baseline_kind="untuned")
    assert set(BASELINE_KINDS) >= {record.baseline_kind}
    assert Validated.from_dict({"n": 8, "baseline": "tau=1 fine-tune, rho=1"}).baseline_kind == "untuned"


def test_an_s2dm_studys_baseline_gets_a_lift_line() -> None:
    """The lift is measured against the baseline of kind 'untuned', whatever its label says."""
    from skipsearch.optimization import OptimizeResult

    validations = [{"trial": 0, "value": 20.0, "baseline": "tau=1 fine-tune, rho=1", "baseline_kind": "untuned"},
                   {"trial": 1, "value": 22.0, "baseline": "tau=1 fine-tune, paper recipe", "baseline_kind": "paper"},
                   {"trial": 4, "value": 15.0}]
    lines = OptimizeResult("s", "sqlite://", {}, validations=validations).verdict_lines()
    assert lines == ["best searched schedule 15.0000 vs untuned 20.0000 (25.0% lower)"]
