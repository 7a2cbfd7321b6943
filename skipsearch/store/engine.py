"""Storage URLs and engines: the default URL, redaction, checked connections, SQLite pragmas and lock retries.

Every URL that reaches a message or a log line goes through :func:`redact_url`, and every driver message through
:func:`redact_secrets`, so credentials never leak (not even pieces of a password a driver echoes). The code is
portable between SQLite and PostgreSQL; the few dialect-specific statements (SQLite ``BEGIN IMMEDIATE``/WAL) are
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
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, unquote_plus

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from skipsearch.settings import Settings
from skipsearch.store.errors import StoreError, StoreLockedError

__all__ = ["StoreError", "connect", "default_storage_url", "redact_secrets", "redact_url"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# Connection execution option read by the SQLite "begin" hook: writers take the write lock up front.
_IMMEDIATE = "skipsearch_sqlite_immediate"
_LOCK_RETRIES = 6  # for engines made elsewhere (no lock deadline): whole-transaction attempts on 'locked'
# When the current _retry_locked call began: the "begin" hook gives SQLite's busy timeout only what is left of the
# lock deadline, so retries never wait past it.
_LOCK_START: ContextVar[float | None] = ContextVar("skipsearch_lock_start", default=None)
_HINT = "check --storage or SKIPSEARCH_STORAGE"


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


_SECRET_NAME = r"(?:[\w.-]*pass(?:word|wd)?|pwd|secret|token|sslpassword)"
_SECRET_PARAMS = re.compile(rf"([?&]{_SECRET_NAME}=)[^&]*", re.IGNORECASE)
_SECRET_SEPARATORS = re.compile(r"([@:/?#&=;,\s])")


def _url_text(url: str | URL) -> str:
    return url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)


def _split_userinfo(text: str) -> tuple[str, str | None, str] | None:
    """``(scheme://, user[:password] or None, host and the rest)`` of a URL, None if not ``scheme://...``.

    The user part ends at the *last* ``@`` before the query (or, for a password holding ``?`` or ``#``, the last
    ``@`` at all): a password may hold unencoded ``@``, ``:`` and ``/``; a host never holds ``@``.
    """
    match = re.match(r"^([^:/?#\s]+://)(.*)$", text, re.DOTALL)
    if match is None:
        return None
    scheme, tail = match.groups()
    before_query = re.split(r"[?#]", tail, maxsplit=1)[0]
    end = before_query.rfind("@") if "@" in before_query else tail.rfind("@")
    if end < 0 or tail.startswith("/"):  # no user part (sqlite:///path: the authority is empty)
        return scheme, None, tail
    return scheme, tail[:end], tail[end + 1:]


def redact_url(url: str | URL) -> str:
    """``url`` with its password (everything between ``user:`` and the *last* ``@`` before the host, so an
    unencoded ``@``, ``:`` or ``/`` in a password cannot leak) and password-like query parameters replaced by
    ``***``."""
    text = _url_text(url)
    parts = _split_userinfo(text)
    if parts is None:  # not scheme://...: still hide anything that looks like '//user:password@'
        return _SECRET_PARAMS.sub(r"\1***", re.sub(r"(//[^:/@\s]*):\S*@", r"\1:***@", text))
    scheme, userinfo, rest = parts
    if userinfo is None:
        return scheme + _SECRET_PARAMS.sub(r"\1***", rest)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{userinfo}@" + _SECRET_PARAMS.sub(r"\1***", rest)


def _secrets(url: str | URL) -> list[str]:
    """Every secret of ``url`` a message could repeat, longest first: the password and password-like query values
    (as written and percent-decoded), and each run of their pieces between ``@ : / ? # & = ; ,`` of 3+ characters
    (a driver that splits the URL elsewhere than we do echoes such pieces, e.g. as a host name)."""
    text = _url_text(url)
    values: list[str] = []
    parts = _split_userinfo(text)
    if parts is not None and parts[1] is not None and ":" in parts[1]:
        values.append(parts[1].split(":", 1)[1])
    values += [m[1] for m in re.finditer(rf"[?&]{_SECRET_NAME}=([^&]*)", text, re.IGNORECASE)]
    if isinstance(url, URL) and url.password:
        values.append(str(url.password))
    found: set[str] = set()
    for value in values:
        for form in {value, unquote(value), unquote_plus(value)}:
            if len(form) >= 2:
                found.add(form)
            tokens = _SECRET_SEPARATORS.split(form)  # pieces at even indices, separators between them
            pieces = range(0, len(tokens), 2)
            found.update(run for i in pieces for j in pieces if j >= i
                         if len(run := "".join(tokens[i:j + 1]).strip()) >= 3)
    return sorted(found, key=len, reverse=True)


def redact_secrets(text: str, url: str | URL | None) -> str:
    """``text`` with every secret of ``url`` (see :func:`_secrets`) replaced by ``***``: apply it to any message
    built from a driver's exception before it is printed or logged."""
    secrets = _secrets(url) if url is not None else []
    if not secrets:
        return text
    return re.sub("|".join(map(re.escape, secrets)), "***", text)


def _reason(exc: BaseException, url: str | URL | None = None) -> str:
    """The first line of the driver's message, scrubbed of every secret of ``url`` in case a driver echoes it."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    reason = lines[0] if lines else type(orig).__name__
    reason = re.sub(r"\s*\(Background on this error at:.*\)$", "", reason)
    return redact_secrets(reason, url)


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


def _install_sqlite_hooks(engine: Engine, path: str, lock_timeout: float) -> None:
    """WAL journal + SQLAlchemy-controlled BEGIN so SAVEPOINT works and writers serialise with BEGIN IMMEDIATE; a
    lock another process holds past ``lock_timeout`` seconds is a :class:`StoreLockedError` naming ``path``."""

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
        start = _LOCK_START.get()
        left = lock_timeout if start is None else max(0.0, start + lock_timeout - time.monotonic())
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(left * 1000)}")
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @event.listens_for(engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        # Tag a lock error with the deadline, so _retry_locked knows how long it may go on, and what to say.
        if ctx.sqlalchemy_exception is not None and _is_locked(ctx.original_exception):
            ctx.sqlalchemy_exception.skipsearch_lock = (path, lock_timeout)


def connect(url: str, *, retries: int = 3, backoff: float = 0.5, lock_timeout: float | None = None) -> Engine:
    """An engine for ``url`` whose connectivity has been checked.

    ``retries`` is the number of connection attempts (at least one) when the server may come up (connection
    refused, timed out, starting up); attempts are spaced ``backoff * 2**i`` seconds apart. What a retry cannot mend
    (a file that is not an SQLite database, a wrong password, a missing database) fails at once with what to do.
    ``lock_timeout``: seconds to wait for a SQLite database another process has locked, on every transaction of the
    engine; callers pass ``settings.lock_timeout`` (None: the built-in default of :class:`Settings`, the environment
    is not read here). Raises :class:`StoreError` (secrets redacted).
    """
    red = redact_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"invalid storage URL {red!r}: {_reason(exc, url)}; expected e.g. "
                         f"sqlite:///path/skipsearch.db or postgresql+psycopg://user:password@host:5432/db") from None
    if "@" in (parsed.host or ""):  # the URL parser split the user part at the first '@', the password holds more
        raise StoreError(f"the password in storage URL {red} holds '@': write it as %40 (percent-encode '@', ':' "
                         f"and '/' in user and password); {_HINT}")
    kwargs: dict[str, Any] = {}
    if _is_sqlite(parsed):
        path = _sqlite_file(parsed)
        if path is not None and not path.absolute().parent.is_dir():
            raise StoreError(f"cannot open storage {red}: folder {path.absolute().parent} does not exist; "
                             f"create it or {_HINT}")
        database = str(path if path is not None else parsed.database or ":memory:")  # what a lock message names
        if lock_timeout is None:
            lock_timeout = Settings().lock_timeout
        # Wait for other writers (busy timeout) instead of failing with 'database is locked' at once.
        kwargs["connect_args"] = {"timeout": lock_timeout}
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
        _install_sqlite_hooks(engine, database, float(lock_timeout or 0))

    attempts = max(1, int(retries))
    for attempt in range(attempts):
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            break
        except (DBAPIError, OSError) as exc:
            engine.dispose()
            if _is_sqlite(engine) and _is_locked(exc):  # the busy timeout has waited out the whole deadline
                raise StoreLockedError(database, float(lock_timeout or 0)) from None
            reason = _reason(exc, url)
            advice = _advice(exc, parsed, red)
            if advice is not None:
                raise StoreError(redact_secrets(advice, url)) from None
            if attempt + 1 >= attempts or not _transient(exc):
                raise StoreError(f"cannot reach storage {red}: {reason}; {_HINT}") from None
            delay = backoff * 2**attempt
            log.warning("cannot reach storage %s (%s); retrying in %.1fs (%d/%d)", red, reason, delay, attempt + 1,
                        attempts)
            time.sleep(delay)
    _check_writable(engine, red)
    return engine


# Failures a later attempt may not meet: the server is starting, busy, restarting or not reachable yet.
_TRANSIENT = re.compile(r"connection refused|timeout expired|timed out|temporary failure|starting up|shutting down|"
                        r"in recovery mode|too many (?:clients|connections)|server closed the connection|"
                        r"connection reset|no route to host|network is unreachable|terminating connection",
                        re.IGNORECASE)


def _transient(exc: BaseException) -> bool:
    return bool(_TRANSIENT.search(str(getattr(exc, "orig", None) or exc)))


def _advice(exc: BaseException, parsed: URL, red: str) -> str | None:
    """One line saying what to do about a connection failure no retry can mend, None for any other failure."""
    msg = " ".join(str(getattr(exc, "orig", None) or exc).split())
    low = msg.lower()
    reason = _reason(exc)
    if _is_sqlite(parsed):
        where = _sqlite_file(parsed) or red
        if "file is not a database" in low or "file is encrypted" in low:
            return (f"{where} is not an SQLite database ({reason}): point --storage or SKIPSEARCH_STORAGE at another "
                    f"file; it was left unchanged")
        if "malformed" in low or "corrupt" in low:
            return (f"{where} is a corrupt (truncated or damaged) SQLite database ({reason}): restore it from a "
                    f"backup or point --storage or SKIPSEARCH_STORAGE at another file; it was left unchanged")
        if "unable to open database file" in low:
            return (f"cannot open SQLite database {where} ({reason}): check that it is a file you may read and "
                    f"write, or point --storage or SKIPSEARCH_STORAGE at another file")
        return None
    if match := re.search(r'password authentication failed for user "([^"]*)"', msg):
        return (f"password authentication failed for user '{match[1]}' at {red}: check the password in --storage "
                f"or SKIPSEARCH_STORAGE")
    if match := re.search(r'database "([^"]*)" does not exist', msg):
        return (f"database '{match[1]}' does not exist at {red}: create it (createdb {match[1]}) or fix --storage "
                f"or SKIPSEARCH_STORAGE")
    if match := re.search(r'role "([^"]*)" does not exist', msg):
        return (f"user '{match[1]}' does not exist at {red}: create it (createuser {match[1]}) or fix the user in "
                f"--storage or SKIPSEARCH_STORAGE")
    if "no pg_hba.conf entry" in low:
        return (f"the server at {red} refuses this client ({reason}): allow it in the server's pg_hba.conf or fix "
                f"--storage or SKIPSEARCH_STORAGE")
    return None


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
            raise StoreError(f"storage {red} is read-only ({_reason(exc, engine.url)}); skipsearch writes studies "
                             f"and results there: give a writable database ({_HINT})") from None
        advice = _advice(exc, engine.url, red)
        if advice is not None:
            raise StoreError(redact_secrets(advice, engine.url)) from None
        raise StoreError(f"cannot write to storage {red}: {_reason(exc, engine.url)}; {_HINT}") from None


def _is_locked(exc: BaseException) -> bool:
    msg = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in msg or "database table is locked" in msg or "database is busy" in msg


def _retry_locked(fn: Callable[[], _T], what: str) -> _T:
    """Run a whole transaction again when SQLite reports a lock (one the busy handler could not wait for, or a
    deadlock between two writers), until the engine's lock deadline; then :class:`StoreLockedError`."""
    start = time.monotonic()
    token = _LOCK_START.set(start) if _LOCK_START.get() is None else None
    try:
        attempt = 0
        while True:
            try:
                return fn()
            except OperationalError as exc:
                if not _is_locked(exc):
                    raise
                delay = 0.05 * 2**min(attempt, 5) * (1 + random.random())  # jitter: retried writers do not collide
                lock = getattr(exc, "skipsearch_lock", None)
                if lock is None:  # an engine made elsewhere: a few attempts, then its own error
                    if attempt + 1 >= _LOCK_RETRIES:
                        raise
                elif time.monotonic() + delay >= start + lock[1]:
                    raise StoreLockedError(*lock) from None
                log.debug("%s: database is locked; retrying in %.2fs", what, delay)
                time.sleep(delay)
                attempt += 1
    finally:
        if token is not None:
            _LOCK_START.reset(token)


@contextmanager
def _write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: BEGIN IMMEDIATE on SQLite (writers serialise up front), plain BEGIN elsewhere."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{_IMMEDIATE: True})
        with conn.begin():
            yield conn
