"""A throwaway PostgreSQL server for tests: its own data dir, loopback port and socket dir; one database per test.

``$SKIPSEARCH_TEST_POSTGRES_URL`` (a server URL whose user may create databases) replaces the local server. Without
that variable the binaries are looked up on PATH, then under ``/usr/lib/postgresql/*/bin`` (Debian's layout; see
``scripts/ci_postgres.sh``); tests skip only when none exists, and fail instead under CI (``CI=true``). ``initdb``
refuses to run as root, so as root the server runs as the ``postgres`` user (else ``nobody``) in a folder owned by it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from helpers.ci import skip_or_fail

ENV_URL = "SKIPSEARCH_TEST_POSTGRES_URL"
_DRIVER = "postgresql+psycopg"


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then the newest Debian versioned folder."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0])
    for initdb in reversed(versions):
        if (initdb.parent / "pg_ctl").exists():
            return initdb.parent
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The account to run the server as: None (ourselves) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists for PostgreSQL")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A server URL (no database part needed) and the databases created on it, dropped by :meth:`close`."""

    url: str
    own: bool = False
    _created: list[str] = field(default_factory=list)

    def _admin(self) -> Any:
        import psycopg
        url = make_url(self.url).set(drivername="postgresql", database="postgres")
        # CREATE/DROP DATABASE cannot run inside a transaction.
        return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True, connect_timeout=10)

    def database(self, prefix: str = "skipsearch") -> str:
        """A fresh, empty database; its ``postgresql+psycopg://`` URL (with the password)."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return make_url(self.url).set(drivername=_DRIVER, database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if not self._created:
            return
        try:
            with self._admin() as conn:
                for name in self._created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:  # an external server that went away: nothing left to clean
            pass
        self._created.clear()


@contextmanager
def local_server() -> Iterator[PostgresServer]:
    """Start a private server on a free loopback port (password auth over TCP); stop it and delete its files."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        skip_or_fail("no PostgreSQL binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin; "
                     "run scripts/ci_postgres.sh or set SKIPSEARCH_TEST_POSTGRES_URL")
    account = _run_as()
    # Not under pytest's tmp_path: its parents are private to root, and the server may run as another user.
    root = Path(tempfile.mkdtemp(prefix="skipsearch-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    password = secrets.token_urlsafe(12)
    (root / "pw").write_text(password + "\n")
    kwargs: dict[str, Any] = {}
    if account is not None:
        for path in (root, sockets, root / "pw"):
            os.chown(path, account.pw_uid, account.pw_gid)
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "cwd": str(root),
                  "env": {**os.environ, "HOME": str(root)}}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                              **kwargs)

    user = "skipsearch"
    init = run("initdb", "-D", str(data), "-U", user, f"--pwfile={root / 'pw'}", "--auth-host=scram-sha-256",
               "--auth-local=trust", "-E", "UTF8", "--no-sync")
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = 0
    try:
        for _attempt in range(3):  # another process may take the free port between the probe and the bind
            port = _free_port()
            # Durability off: a test database is thrown away, and fsync would compete with the tests for the disk.
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sockets} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                       "-c shared_buffers=32MB")
            started = run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w",
                          "-t", "60", "start")
            if started.returncode == 0:
                break
        else:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()[-300:]} {log[-500:]}")
        server = PostgresServer(f"{_DRIVER}://{user}:{password}@127.0.0.1:{port}/postgres", own=True)
        try:
            yield server
        finally:
            server.close()
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """``$SKIPSEARCH_TEST_POSTGRES_URL`` when set, else a private local server."""
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        server = PostgresServer(url)
        try:
            yield server
        finally:
            server.close()
        return
    with local_server() as server:
        yield server


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    """One server per test module (starting one takes a few seconds)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh database per test: ``postgresql+psycopg://user:password@127.0.0.1:port/name``."""
    return pg_server.database()

