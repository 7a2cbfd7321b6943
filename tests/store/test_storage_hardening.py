"""Storage failures a user meets, through the real ``skipsearch`` command in its own process (what a user sees on
stderr, logging included): secrets never printed, a held SQLite lock answered within a stated deadline, and no
retries of what cannot be transient (a file that is not a database, a wrong PostgreSQL password or database).
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import CliResult, run_cli
from helpers.pg import pg_server, pg_url  # noqa: F401 - fixtures
from sqlalchemy.engine import make_url

from skipsearch.settings import Settings, SettingsError
from skipsearch.store import BestKey, BestStore, StoreError, Validation, connect, redact_url
from skipsearch.store.engine import redact_secrets

pytestmark = pytest.mark.timeout(300)

KEY = BestKey("edm", "a" * 64, "heun", 9)
COMMANDS = {"best": ["best"], "studies": ["studies"],
            "optimize": ["optimize", "--model", "edm", "--nfe", "9", "--trials", "1", "--device", "cpu"]}


def _cli(tmp_path: Path, *args: str, timeout: float = 120, **env: str) -> tuple[CliResult, float]:
    """``skipsearch ARGS`` in a fresh process; its result and how long it took."""
    environ = {k: v for k, v in os.environ.items() if k != "SKIPSEARCH_STORAGE"}
    environ.update({"SKIPSEARCH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "COLUMNS": "200", **env})
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "skipsearch.cli", *args], capture_output=True, text=True,
                          env=environ, timeout=timeout, cwd=tmp_path)
    return CliResult(proc.returncode, proc.stdout, proc.stderr), time.monotonic() - start


def _one_line_exit_2(result: CliResult, *fragments: str) -> str:
    assert result.code == 2, result
    assert "Traceback" not in result.out + result.err, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "retrying" not in result.out + result.err, result
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _validation(value: float, trial: int) -> Validation:
    return Validation(model_name=KEY.model_name, weights_sha256=KEY.weights_sha256, sampler=KEY.sampler,
                      nfe=KEY.nfe, metric="fid", value=value, n=100, seeds="0-99", extractor="lenet",
                      schedule_json=json.dumps({"rho": [[1.0, 0.9]]}), space="layer", study_name="s",
                      trial_number=trial)


def _store_with_rows(path: Path, rows: int = 3) -> str:
    url = f"sqlite:///{path}"
    with BestStore(url) as store:
        for i in range(rows):
            store.record(_validation(10.0 - i, i))
    return url


# --------------------------------------------------------------------------------------------------------------------
# Item 2: no fragment of a password is ever printed.

AT_PASSWORD = "p@ss@W0rd3x"
AT_URL = f"postgresql+psycopg://alice:{AT_PASSWORD}@127.0.0.1:1/db"
AT_FRAGMENTS = ["p@ss@W0rd3x", "ss@W0rd3x", "W0rd3x", "p@ss"]


@pytest.mark.parametrize(("url", "fragments"), [
    (AT_URL, AT_FRAGMENTS),
    ("postgresql+psycopg://alice:se:cr/et99@db.example:5432/x", ["se:cr/et99", "cr/et99", "et99"]),
    ("postgresql+psycopg://alice@db/x?password=t0p:s3cret&sslpassword=k3y@phrase",
     ["t0p:s3cret", "t0p", "s3cret", "k3y@phrase", "phrase"]),
    ("postgresql+psycopg://alice:p%40ss%40W0rd3x@db/x", ["p%40ss%40W0rd3x", "p@ss@W0rd3x", "ss@W0rd3x", "W0rd3x"]),
    ("postgresql+psycopg://alice:pa?ss#W0rd@db/x", ["pa?ss#W0rd", "W0rd"]),
])
def test_redact_secrets_hides_the_password_and_its_pieces(url: str, fragments: list[str]) -> None:
    text = (f"failed to resolve host '{' '.join(fragments)}' for {url}: user alice, "
            + " ".join(f"<{f}>" for f in fragments))
    redacted = redact_secrets(text, url)
    redacted_url = redact_url(url)
    for fragment in fragments:
        assert fragment not in redacted, (fragment, redacted)
        assert fragment not in redacted_url, (fragment, redacted_url)
    assert "alice" in redacted and "***" in redacted and "alice" in redacted_url


def test_redact_secrets_keeps_text_without_secrets() -> None:
    assert redact_secrets("file is not a database", "sqlite:////tmp/x.db") == "file is not a database"
    assert redact_secrets("user alice on db", "postgresql+psycopg://alice@db/x") == "user alice on db"
    path = "sqlite:////data/run:2024@v2/skipsearch.db"  # ':' and '@' in a path are no password
    assert redact_url(path) == path and redact_secrets("cannot open /data/run:2024@v2", path).endswith("2024@v2")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("command", ["best", "studies", "optimize"])
def test_cli_never_prints_a_password_fragment(tmp_path: Path, command: str, how: str) -> None:
    args = [*COMMANDS[command], "--storage", AT_URL] if how == "flag" else COMMANDS[command]
    env = {"SKIPSEARCH_STORAGE": AT_URL} if how == "env" else {}
    result, seconds = _cli(tmp_path, *args, **env)
    _one_line_exit_2(result, "--storage")
    for fragment in AT_FRAGMENTS:
        assert fragment not in result.out + result.err, (fragment, result)
    assert seconds < 60


def test_a_driver_message_that_echoes_the_password_is_redacted() -> None:
    """Optuna's storage hands the URL to the driver as it is: the driver, splitting at the first '@', tries to
    resolve the host 'ss@W0rd3x@127.0.0.1' and says so; the error repeats none of it."""
    from skipsearch.store.studies import optuna_storage
    with pytest.raises(StoreError) as err:
        optuna_storage(AT_URL)
    msg = str(err.value)
    assert "failed to resolve host '***@127.0.0.1'" in msg and "\n" not in msg
    for fragment in AT_FRAGMENTS:
        assert fragment not in msg, (fragment, msg)


# --------------------------------------------------------------------------------------------------------------------
# Item 4b: another process holds the SQLite write lock.

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
if sys.argv[2] == "delete":
    conn.execute("PRAGMA journal_mode=DELETE")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.rollback()
"""


@pytest.mark.slow
@pytest.mark.parametrize("journal", ["wal", "delete"])
@pytest.mark.parametrize("command", ["best", "optimize"])
def test_a_held_lock_ends_in_one_line_within_the_deadline(tmp_path: Path, command: str, journal: str, capsys,
                                                          caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (imports done, so the time is the command's), logging caught by caplog."""
    db = tmp_path / "skipsearch.db"
    url = _store_with_rows(db)
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKIPSEARCH_LOCK_TIMEOUT", "2")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), journal], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        result = run_cli(capsys, *COMMANDS[command], "--storage", url)
        seconds = time.monotonic() - start
    finally:
        holder.communicate("", timeout=30)
    line = _one_line_exit_2(result, "locked by another process", str(db), "SKIPSEARCH_LOCK_TIMEOUT")
    assert "2s" in line, line
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert seconds < 2 + 8, seconds
    with BestStore(url) as store:
        assert len(store.validations(KEY)) == 3 and store.get(KEY).value == 8.0
    result, _ = _cli(tmp_path, "best", "--storage", url, "--format", "json")
    assert result.code == 0, result
    assert json.loads(result.out)[0]["value"] == 8.0


def test_lock_timeout_setting() -> None:
    assert Settings().lock_timeout == 30.0
    assert Settings.from_env({"SKIPSEARCH_LOCK_TIMEOUT": "2.5"}).lock_timeout == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(SettingsError, match="SKIPSEARCH_LOCK_TIMEOUT"):
            Settings.from_env({"SKIPSEARCH_LOCK_TIMEOUT": bad})


# --------------------------------------------------------------------------------------------------------------------
# Item 7: no retries of what cannot be transient.


def _text_file(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 40)


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(16384))


def _truncated(path: Path) -> None:
    _store_with_rows(path, rows=40)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _header_only(path: Path) -> None:
    _store_with_rows(path, rows=1)
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.slow
@pytest.mark.parametrize("make", [_text_file, _random_bytes, _truncated, _header_only])
@pytest.mark.parametrize("command", ["best", "optimize"])
def test_a_file_that_is_no_sqlite_database_is_not_retried_nor_touched(tmp_path: Path, command: str, make) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "skipsearch.db"
    make(db)
    before = db.read_bytes()
    result, _ = _cli(tmp_path, *COMMANDS[command], "--storage", f"sqlite:///{db}")
    line = _one_line_exit_2(result, str(db), "--storage")
    assert "not an SQLite database" in line or "corrupt" in line, line
    assert db.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["skipsearch.db"]


@pytest.mark.slow
def test_a_wrong_postgres_password_is_not_retried(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    url = make_url(pg_url).set(password="not-the-password").render_as_string(hide_password=False)
    result, _ = _cli(tmp_path, "best", "--storage", url)
    line = _one_line_exit_2(result, "password authentication failed", "check the password")
    assert "not-the-password" not in result.out + result.err
    assert make_url(pg_url).username in line


@pytest.mark.slow
def test_a_missing_postgres_database_is_not_retried(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    url = make_url(pg_url).set(database="no_such_db_x").render_as_string(hide_password=False)
    for args in (["best"], COMMANDS["optimize"]):
        result, _ = _cli(tmp_path, *args, "--storage", url)
        _one_line_exit_2(result, "database 'no_such_db_x' does not exist", "createdb no_such_db_x")
        assert make_url(pg_url).password not in result.out + result.err


def test_a_refused_connection_is_still_retried(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(StoreError, match="cannot reach storage"):
        connect("postgresql+psycopg://alice:s3cret@127.0.0.1:1/db", retries=2, backoff=0.01)
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert not any("s3cret" in r.getMessage() for r in caplog.records)
