"""Storage URLs and engines: the default URL, redaction, checked connections, SQLite pragmas and lock retries.

Every URL that reaches a message or a log line goes through :func:`redact_url`, so credentials never leak. The code
is portable between SQLite and PostgreSQL; the few dialect-specific statements (SQLite ``BEGIN IMMEDIATE``/WAL) are
gated on the dialect.
"""

from __future__ import annotations

import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from skipsearch.errors import SkipsearchError
from skipsearch.settings import Settings

__all__ = ["StoreError", "connect", "default_storage_url", "redact_url"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# Connection execution option read by the SQLite "begin" hook: writers take the write lock up front.
_IMMEDIATE = "skipsearch_sqlite_immediate"
_LOCK_RETRIES = 6
_HINT = "check --storage or SKIPSEARCH_STORAGE"


class StoreError(SkipsearchError, RuntimeError):
    """One-line, actionable storage error; any URL in it is redacted."""


def default_storage_url(settings: Settings | None = None) -> str:
    """The storage URL used when none is given.

    ``settings.storage`` if set (any SQLAlchemy URL, e.g. ``postgresql+psycopg://user:pw@host/db``), else
    ``sqlite:///<settings.home>/skipsearch.db``; the home folder is created if missing. Without ``settings``, they
    are read from the environment now (:meth:`Settings.from_env`).
    """
    settings = settings or Settings.from_env()
    if settings.storage:
        return settings.storage
    home = Path(settings.home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'skipsearch.db'}"


_SECRET_PARAMS = re.compile(r"([?&](?:[\w.-]*pass(?:word|wd)?|pwd|secret|token|sslpassword)=)[^&#]*", re.IGNORECASE)


def redact_url(url: str | URL) -> str:
    """``url`` with its password (everything between ``user:`` and the *last* ``@`` of the authority, so an
    unencoded ``@`` in a password cannot leak) and password-like query parameters replaced by ``***``."""
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    match = re.match(r"^([^:/?#\s]+://)([^/?#]*)(.*)$", text, re.DOTALL)
    if match is None:  # not scheme://...: still hide anything that looks like '//user:password@'
        return _SECRET_PARAMS.sub(r"\1***", re.sub(r"(//[^:/@\s]*):\S*@", r"\1:***@", text))
    scheme, authority, rest = match.groups()
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        authority = f"{userinfo}@{host}"
    return scheme + authority + _SECRET_PARAMS.sub(r"\1***", rest)


def _reason(exc: BaseException, url: URL | None = None) -> str:
    """The first line of the driver's message, scrubbed of the password in case a driver echoes it."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    reason = lines[0] if lines else type(orig).__name__
    reason = re.sub(r"\s*\(Background on this error at:.*\)$", "", reason)
    if url is not None and url.password:
        reason = reason.replace(str(url.password), "***")
    return reason


def _is_sqlite(engine_or_url: Engine | Connection | URL) -> bool:
    if isinstance(engine_or_url, URL):
        return engine_or_url.get_backend_name() == "sqlite"
    return engine_or_url.dialect.name == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a sqlite URL, or None for in-memory / URI-style databases."""
    db = url.database or ""
    if db in ("", ":memory:") or db.startswith("file:") or url.query.get("uri") in ("true", "1"):
        return None
    return Path(db)


def _install_sqlite_hooks(engine: Engine) -> None:
    """WAL journal + SQLAlchemy-controlled BEGIN so SAVEPOINT works and writers serialise with BEGIN IMMEDIATE."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (its legacy mode breaks SAVEPOINT); the "begin" hook emits it.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            # WAL lets readers proceed beside a writer; it persists in the file, so Optuna's engine benefits too.
            if str(mode).lower() not in ("wal", "memory"):
                cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if not _is_read_only(exc):
                raise
            # A read-only database keeps its journal mode; _check_writable reports it in one line.
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def connect(url: str, *, retries: int = 3, backoff: float = 0.5) -> Engine:
    """An engine for ``url`` whose connectivity has been checked.

    ``retries`` is the number of connection attempts (at least one); attempts are spaced ``backoff * 2**i``
    seconds apart. Raises :class:`StoreError` (URL redacted) for an invalid URL, an unknown dialect/driver, a sqlite
    file in a missing folder, or when the last attempt fails.
    """
    red = redact_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"invalid storage URL {red!r}: {_reason(exc)}; expected e.g. sqlite:///path/skipsearch.db "
                         f"or postgresql+psycopg://user:password@host:5432/db") from None
    kwargs: dict[str, Any] = {}
    if _is_sqlite(parsed):
        path = _sqlite_file(parsed)
        if path is not None and not path.absolute().parent.is_dir():
            raise StoreError(f"cannot open storage {red}: folder {path.absolute().parent} does not exist; "
                             f"create it or {_HINT}")
        # Wait for other writers (busy timeout) instead of failing with 'database is locked'.
        kwargs["connect_args"] = {"timeout": 30}
    else:
        # Long-lived workers: replace connections the server dropped instead of failing a record().
        kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError:
        raise StoreError(f"unknown database dialect/driver {parsed.drivername!r} in {red}; use sqlite:///path or "
                         f"postgresql+psycopg://...") from None
    except ImportError as exc:
        raise StoreError(f"database driver for {parsed.drivername!r} is not installed ({exc.name or exc}); "
                         f"install it or use postgresql+psycopg://... ({red})") from None
    except (ArgumentError, TypeError, ValueError) as exc:
        raise StoreError(f"invalid storage URL {red}: {_reason(exc, parsed)}; {_HINT}") from None
    if _is_sqlite(engine):
        _install_sqlite_hooks(engine)

    attempts = max(1, int(retries))
    for attempt in range(attempts):
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            break
        except (DBAPIError, OSError) as exc:
            reason = _reason(exc, parsed)
            if attempt + 1 >= attempts:
                engine.dispose()
                raise StoreError(f"cannot reach storage {red}: {reason}; {_HINT}") from None
            delay = backoff * 2**attempt
            log.warning("cannot reach storage %s (%s); retrying in %.1fs (%d/%d)", red, reason, delay, attempt + 1,
                        attempts)
            time.sleep(delay)
    _check_writable(engine, red)
    return engine


def _is_read_only(exc: BaseException) -> bool:
    msg = str(getattr(exc, "orig", exc)).lower()
    return "readonly database" in msg or "read-only" in msg or "read only" in msg


def _check_writable(engine: Engine, red: str) -> None:
    """StoreError unless the database takes writes: every command may create tables or record results, and a
    read-only one would otherwise fail mid-study with a driver traceback. Nothing is written: the probe is rolled
    back (on SQLite it never leaves the page cache, so the file and its WAL keep their bytes)."""
    def probe() -> None:
        with _write(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE skipsearch_write_probe (x INTEGER)")
            conn.rollback()

    try:
        if _is_sqlite(engine):
            _retry_locked(probe, "write check")  # another writer may hold the lock past the busy timeout
        elif engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                read_only = conn.exec_driver_sql("SHOW transaction_read_only").scalar()
            if str(read_only).lower() in ("on", "true"):
                raise StoreError(f"storage {red} is read-only (transaction_read_only is on); skipsearch writes "
                                 f"studies and results there: give a writable database ({_HINT})")
    except StoreError:
        engine.dispose()
        raise
    except (DBAPIError, OSError) as exc:
        engine.dispose()
        if _is_read_only(exc):
            raise StoreError(f"storage {red} is read-only ({_reason(exc)}); skipsearch writes studies and results "
                             f"there: give a writable database ({_HINT})") from None
        raise StoreError(f"cannot write to storage {red}: {_reason(exc)}; {_HINT}") from None


def _is_locked(exc: BaseException) -> bool:
    msg = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in msg or "database table is locked" in msg or "database is busy" in msg


def _retry_locked(fn: Callable[[], _T], what: str) -> _T:
    """Run a whole transaction again when SQLite reports a lock that outlasted the busy timeout."""
    for attempt in range(_LOCK_RETRIES):
        try:
            return fn()
        except OperationalError as exc:
            if not _is_locked(exc) or attempt + 1 >= _LOCK_RETRIES:
                raise
            delay = 0.05 * 2**attempt * (1 + random.random())  # jitter so retried writers do not collide again
            log.warning("%s: database is locked; retrying in %.2fs", what, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: BEGIN IMMEDIATE on SQLite (writers serialise up front), plain BEGIN elsewhere."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{_IMMEDIATE: True})
        with conn.begin():
            yield conn
