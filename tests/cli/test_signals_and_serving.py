"""Signals, serving and the environment through real processes: SIGTERM and Ctrl-C during a study, the dashboard
server on 127.0.0.1 (raw HTTP clients, --host), a missing optional extra, SKIPSEARCH_MNIST and file-system errors.

Each ends in a one-line error with exit code 2 (bad input) or the signal's exit code, never a traceback, and no
stored result is lost.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from helpers.cli import assert_one_line_error, run_cli
from helpers.studies import only_study, wait_for_running_trial
from optuna.trial import TrialState

from skipsearch.store.records import StudyRecord

TINY = ["--nfe", "5", "--rungs", "24,48", "--top-k", "1", "--device", "cpu", "--rho-min", "0.3", "--rho-max", "1.0",
        "--pruner", "none"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SKIPSEARCH_HOME": str(tmp_path / "home"), "SKIPSEARCH_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _optimize(*args: str) -> list[str]:
    return [sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *TINY, *args]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


# --------------------------------------------------------------------------------------------------------------------
# The dashboard: a client without Accept-Encoding, a host on the network.


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A raw GET as curl-like clients send it: no Accept-Encoding unless given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_dashboard_serves_a_client_that_sends_no_accept_encoding(tmp_path: Path) -> None:
    from skipsearch.store.studies import optuna_storage
    url = f"sqlite:///{tmp_path / 'skipsearch.db'}"
    optuna.create_study(study_name="a-study", storage=optuna_storage(url))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "skipsearch.cli", "dashboard", "--storage", url, "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path))
    try:
        for _ in range(240):
            try:
                _get(port, "/api/studies")
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.25)
        for path in ("/favicon.ico", "/static/bundle.js", "/dashboard", "/api/studies"):
            status, headers, _ = _get(port, path)
            assert status == 200, path
            assert "gzip" not in headers.get("Content-Encoding", ""), path
        status, headers, _ = _get(port, "/static/bundle.js", {"Accept-Encoding": "gzip"})
        assert status == 200 and headers.get("Content-Encoding") == "gzip"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and "KeyError" not in err, err[-3000:]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_dashboard_on_a_non_loopback_host_needs_public(host: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    served = []
    monkeypatch.setattr("skipsearch.export.dashboard.serve", lambda *a, **k: served.append(a))
    result = run_cli(capsys, "dashboard", "--storage", f"sqlite:///{tmp_path / 'db.db'}", "--host", host,
                     "--port", str(_free_port()))
    assert result.code == 2
    assert_one_line_error(result, f"--host {host}", "reachable from the network", "Host/Origin", "--public")
    assert not served


def test_dashboard_public_warns_that_it_is_reachable(tmp_path: Path, capsys, monkeypatch) -> None:
    # serve() is replaced: 0.0.0.0 is only bound by the port probe, which never listens.
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    served = []
    monkeypatch.setattr("skipsearch.export.dashboard.serve", lambda *a, **k: served.append(k["host"]))
    result = run_cli(capsys, "dashboard", "--storage", f"sqlite:///{tmp_path / 'db.db'}", "--host", "0.0.0.0",
                     "--port", str(_free_port()), "--public")
    assert result.code == 0, result.err
    assert served == ["0.0.0.0"]
    assert "warning:" in result.err and "reachable from the network" in result.err
    assert "Host/Origin" in " ".join(result.err.split())


def test_dashboard_on_loopback_does_not_warn(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("skipsearch.export.dashboard.serve", lambda *a, **k: None)
    result = run_cli(capsys, "dashboard", "--storage", f"sqlite:///{tmp_path / 'db.db'}", "--host", "127.0.0.1",
                     "--port", str(_free_port()))
    assert result.code == 0, result.err
    assert "warning" not in result.err


# --------------------------------------------------------------------------------------------------------------------
# Signals during a study.


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_fails_and_requeues_the_running_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    proc = subprocess.Popen(_optimize("--trials", "3", "--final-n", "48", "--storage", url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        aborted = wait_for_running_trial(url, proc, time.monotonic() + 300)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        _stop(proc)
    assert proc.returncode == 143, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert "terminated" in err
    trials = only_study(url).get_trials()
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    if trials[aborted.number].state == TrialState.FAIL:  # aborted: queued again with the same parameters
        assert trials[aborted.number].user_attrs["fail_reason"] == "interrupted (SIGTERM)"
        (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == aborted.number]
        assert retry.state == TrialState.WAITING and retry.params == trials[aborted.number].params
    else:
        assert trials[aborted.number].state == TrialState.COMPLETE


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctrl_c_during_validation_exits_130_and_keeps_what_was_validated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    args = _optimize("--trials", "3", "--final-n", "240", "--storage", url)
    env = _env(tmp_path)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    validating = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("validated trial"):
                validating.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        # The first candidate is validated: the next ones (the top trial and the baselines) are still to go.
        assert validating.wait(600), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()
        proc.wait(300)
        reader.join(30)
    finally:
        _stop(proc)
    err = "".join(lines)
    assert proc.returncode == 130, (proc.returncode, out[-2000:], err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert "Resume with the same command" in out
    validated = StudyRecord(only_study(url)).validated()
    assert validated and all(v.value is not None for v in validated.values())
    resumed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "exported schedule" in resumed.stdout
    again = StudyRecord(only_study(url)).validated()
    for number, entry in validated.items():  # what the interrupted run validated is kept, not scored again
        assert again[number].value == entry.value


# --------------------------------------------------------------------------------------------------------------------
# Environment and files.


def test_skipsearch_mnist_pointing_at_a_missing_folder_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    missing = tmp_path / "no-such-mnist"
    monkeypatch.setenv("SKIPSEARCH_MNIST", str(missing))
    result = run_cli(capsys, "skip-points", "--model", "edm", "--n", "2", "--device", "cpu")
    assert result.code == 2
    assert_one_line_error(result, f"SKIPSEARCH_MNIST={missing}", "does not exist")


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_a_folder_where_a_file_is_expected_names_the_option(form: str, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    flag = ["--study", str(folder)] if form == "separate" else [f"--study={folder}"]
    result = run_cli(capsys, "optimize", *flag, "--storage", f"sqlite:///{tmp_path / 'db.db'}")
    assert result.code == 2
    assert_one_line_error(result, f"--study {folder}: is a directory, expected a file")
    assert "Errno" not in result.err


# --------------------------------------------------------------------------------------------------------------------
# A missing optional extra (the README's install without [diffusers]).

BLOCK_DIFFUSERS = """
import sys


class NoDiffusers:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoDiffusers)
from skipsearch.cli import main

sys.argv[0] = "skipsearch"
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", [["skip-points", "--model", "ddpm-mnist", "--n", "2"],
                                     ["train", "--kind", "ddpm", "--steps", "1"]], ids=["skip-points", "train"])
def test_a_missing_diffusers_extra_is_one_line(command: list[str], tmp_path: Path) -> None:
    if command[0] == "train":
        command = [*command, "-o", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, "-c", BLOCK_DIFFUSERS, *command, "--device", "cpu"],
                            capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "optional extra: pip install skipsearch[diffusers]" in line, line
