"""A lock per study, shared by every process on the same database: budget claims and validation take it.

SQLite databases are one machine's files, so an ``flock`` on ``<db>.lock`` beside the file serialises processes
(and threads, each opening its own descriptor); a write transaction could not be used, since the work inside the
lock writes through Optuna's own connection. PostgreSQL uses a session advisory lock keyed by the study name, MySQL
``GET_LOCK``. In-memory SQLite lives in one process: a thread lock does.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from skipsearch.store.engine import StoreError, _sqlite_file, redact_url

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (PostgreSQL's bigint)."""
    return int.from_bytes(hashlib.sha256(f"skipsearch:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def study_lock(engine: Engine, name: str, timeout: float = 3600.0) -> Iterator[None]:
    """Hold the database-wide lock called ``name`` (a study name) while the block runs."""
    url = engine.url
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_file(make_url(str(url)))
        if path is None:
            with _THREAD_LOCKS_GUARD:
                lock = _THREAD_LOCKS.setdefault(f"{url}:{name}", threading.Lock())
            if not lock.acquire(timeout=timeout):
                raise StoreError(f"timed out after {timeout:.0f}s waiting for the lock of study {name!r}")
            try:
                yield
            finally:
                lock.release()
            return
        with _file_lock(Path(str(path) + ".lock"), timeout, name):
            yield
        return
    with engine.connect() as conn:
        if backend == "postgresql":
            conn.execute(text("SELECT set_config('lock_timeout', :ms, false)"), {"ms": f"{int(timeout * 1000)}"})
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _key(name)})
            release = text("SELECT pg_advisory_unlock(:key)"), {"key": _key(name)}
        elif backend in ("mysql", "mariadb"):
            got = conn.execute(text("SELECT GET_LOCK(:name, :timeout)"),
                               {"name": f"skipsearch:{_key(name)}", "timeout": int(timeout)}).scalar()
            if got != 1:
                raise StoreError(f"could not take the lock of study {name!r} in {redact_url(str(url))}")
            release = text("SELECT RELEASE_LOCK(:name)"), {"name": f"skipsearch:{_key(name)}"}
        else:
            raise StoreError(f"no study lock for the {backend} backend; use SQLite, PostgreSQL or MySQL")
        conn.commit()
        try:
            yield
        finally:
            conn.execute(*release)
            conn.commit()


@contextmanager
def _file_lock(path: Path, timeout: float, name: str) -> Iterator[None]:
    import fcntl
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"timed out after {timeout:.0f}s waiting for the lock of study {name!r} "
                                     f"({path})") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
