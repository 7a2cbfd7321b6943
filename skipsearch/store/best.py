"""The product's answer table: the best validated Skip-Tuning schedule per (model, weights, sampler, NFE).

The tables live in the same database as Optuna's own tables (same storage URL); their names start with
``skipsearch_`` so they never clash. Two tables hold results:

* ``skipsearch_best``: one row per :class:`BestKey`, replaced only by a strictly lower validated value.
* ``skipsearch_validation``: append-only history of every validation, whether or not it became the best.

Nothing in this module deletes stored results. Every URL that reaches a message or a log line goes through
:func:`redact_url`, so credentials never leak. The code is portable between SQLite and PostgreSQL; the few
dialect-specific statements (SQLite ``BEGIN IMMEDIATE``/WAL, PostgreSQL advisory lock) are gated on the dialect.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Base",
    "BestKey",
    "BestRecord",
    "BestRow",
    "BestStore",
    "SchemaVersion",
    "StoreError",
    "Validation",
    "ValidationRecord",
    "ValidationRow",
    "connect",
    "default_storage_url",
    "ensure_schema",
    "redact_url",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_T = TypeVar("_T")
# Connection execution option read by the SQLite "begin" hook: writers take the write lock up front.
_IMMEDIATE = "skipsearch_sqlite_immediate"
# Arbitrary constant key for the PostgreSQL advisory lock that serialises concurrent ensure_schema calls.
_PG_SCHEMA_LOCK = 0x736B6970  # "skip"
_LOCK_RETRIES = 6
_HINT = "check --storage or SKIPSEARCH_STORAGE"


class StoreError(RuntimeError):
    """One-line, actionable storage error; any URL in it is redacted."""


# --------------------------------------------------------------------------------------------------------------------
# URLs and connections


def default_storage_url() -> str:
    """The storage URL used when none is given.

    ``$SKIPSEARCH_STORAGE`` if set (any SQLAlchemy URL, e.g. ``postgresql+psycopg://user:pw@host/db``), else
    ``sqlite:///<home>/skipsearch.db`` where home is ``$SKIPSEARCH_HOME`` or ``~/.skipsearch``; the home folder is
    created if missing.
    """
    url = os.environ.get("SKIPSEARCH_STORAGE", "").strip()
    if url:
        return url
    home = Path(os.environ.get("SKIPSEARCH_HOME", "").strip() or "~/.skipsearch").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'skipsearch.db'}"


def redact_url(url: str | URL) -> str:
    """``url`` with any password replaced by ``***``; unparsable strings are redacted textually."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        # Not a URL SQLAlchemy understands: still hide anything that looks like 'user:password@'.
        return re.sub(r"(//[^:/@\s]*):[^@\s]*@", r"\1:***@", str(url))


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
            return engine
        except (DBAPIError, OSError) as exc:
            reason = _reason(exc, parsed)
            if attempt + 1 >= attempts:
                engine.dispose()
                raise StoreError(f"cannot reach storage {red}: {reason}; {_HINT}") from None
            delay = backoff * 2**attempt
            log.warning("cannot reach storage %s (%s); retrying in %.1fs (%d/%d)", red, reason, delay, attempt + 1,
                        attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


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


# --------------------------------------------------------------------------------------------------------------------
# Tables


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values; they are UTC by construction)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use datetime.now(timezone.utc)")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the skipsearch tables (kept apart from Optuna's metadata)."""


class SchemaVersion(Base):
    """Single row (id 1) holding the schema version of the skipsearch tables."""

    __tablename__ = "skipsearch_schema_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class BestRecord(Base):
    """Best validated schedule per (model_name, weights_sha256, sampler, nfe); lower value is better."""

    __tablename__ = "skipsearch_best"
    __table_args__ = (
        UniqueConstraint("model_name", "weights_sha256", "sampler", "nfe", name="uq_skipsearch_best_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(255), nullable=False)
    weights_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    sampler: Mapped[str] = mapped_column(String(255), nullable=False)
    nfe: Mapped[int] = mapped_column(Integer, nullable=False)
    space: Mapped[str] = mapped_column(String(255), nullable=False)
    metric: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    n: Mapped[int] = mapped_column(Integer, nullable=False)
    extractor: Mapped[str] = mapped_column(String(255), nullable=False)
    extractor_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    schedule_json: Mapped[str] = mapped_column(Text, nullable=False)
    study_name: Mapped[str | None] = mapped_column(String(512), nullable=True)
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    proxy_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ValidationRecord(Base):
    """Append-only history of validations (every one, whether or not it became the best)."""

    __tablename__ = "skipsearch_validation"
    __table_args__ = (Index("ix_skipsearch_validation_key", "model_name", "weights_sha256", "sampler", "nfe"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(255), nullable=False)
    weights_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    sampler: Mapped[str] = mapped_column(String(255), nullable=False)
    nfe: Mapped[int] = mapped_column(Integer, nullable=False)
    study_name: Mapped[str | None] = mapped_column(String(512), nullable=True)
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metric: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    n: Mapped[int] = mapped_column(Integer, nullable=False)
    seeds: Mapped[str] = mapped_column(String(255), nullable=False)
    extractor: Mapped[str] = mapped_column(String(255), nullable=False)
    # Beyond the minimal history: enough to rebuild a best row from history alone.
    extractor_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    space: Mapped[str] = mapped_column(String(255), nullable=False)
    proxy_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    schedule_json: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --------------------------------------------------------------------------------------------------------------------
# Schema versioning

# Ordered, additive-only upgrade steps: MIGRATIONS[i] upgrades schema v(i+1) to v(i+2) inside the ensure_schema
# transaction (e.g. ALTER TABLE ... ADD COLUMN with a default). Never drop or rewrite stored results. New tables need
# no step: create_all adds them after the steps ran. Bump SCHEMA_VERSION together with appending a step.
MIGRATIONS: list[Callable[[Connection], None]] = []

assert len(MIGRATIONS) == SCHEMA_VERSION - 1, "one migration step per schema version after v1"


def _newer_error(stored: int, current: int) -> StoreError:
    return StoreError(f"database schema v{stored} is newer than this skipsearch (v{current}); upgrade skipsearch")


def _upgrade(conn: Connection, stored: int, target: int = SCHEMA_VERSION,
             migrations: list[Callable[[Connection], None]] | None = None) -> int:
    """Run the steps that take schema ``stored`` to ``target``; returns ``target``."""
    steps = MIGRATIONS if migrations is None else migrations
    if stored > target:
        raise _newer_error(stored, target)
    if stored < 1 or len(steps) < target - 1:
        raise StoreError(f"database schema v{stored} cannot be upgraded to v{target}: no migration path")
    for version in range(stored, target):
        log.info("migrating skipsearch schema v%d -> v%d", version, version + 1)
        steps[version - 1](conn)
    return target


def _ensure_schema_once(engine: Engine) -> int:
    with _write(engine) as conn:
        if conn.dialect.name == "postgresql":
            # Concurrent first-time workers would otherwise race on CREATE TABLE.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
        row = None
        if inspect(conn).has_table(SchemaVersion.__tablename__):
            row = conn.execute(select(SchemaVersion.version).where(SchemaVersion.id == 1)).scalar_one_or_none()
        if row is not None and row > SCHEMA_VERSION:
            # Checked before create_all so a newer database is not touched at all.
            raise _newer_error(row, SCHEMA_VERSION)
        if row is not None and row < SCHEMA_VERSION:
            _upgrade(conn, row)
        Base.metadata.create_all(conn, checkfirst=True)  # creates only missing tables; never alters or drops
        if row is None:
            conn.execute(insert(SchemaVersion).values(id=1, version=SCHEMA_VERSION, updated_at=_now()))
        elif row < SCHEMA_VERSION:
            conn.execute(update(SchemaVersion).where(SchemaVersion.id == 1)
                         .values(version=SCHEMA_VERSION, updated_at=_now()))
        return SCHEMA_VERSION


def ensure_schema(engine: Engine) -> int:
    """Create missing skipsearch tables, stamp or upgrade the schema version; returns the version.

    Raises :class:`StoreError` when the database was written by a newer skipsearch.
    """
    return _retry_locked(lambda: _ensure_schema_once(engine), "ensure_schema")


# --------------------------------------------------------------------------------------------------------------------
# Public records


@dataclass(frozen=True)
class BestKey:
    """What a best schedule is for: a model's exact weights, a sampler and a number of function evaluations."""

    model_name: str
    weights_sha256: str
    sampler: str
    nfe: int


@dataclass(kw_only=True)
class Validation:
    """One validated measurement of a schedule (``value``: lower is better, measured on ``n`` images)."""

    model_name: str
    weights_sha256: str
    sampler: str
    nfe: int
    metric: str
    value: float
    n: int
    seeds: str
    extractor: str
    schedule_json: str
    space: str
    extractor_sha256: str = ""
    study_name: str | None = None
    trial_number: int | None = None
    proxy_value: float | None = None

    @property
    def key(self) -> BestKey:
        return BestKey(self.model_name, self.weights_sha256, self.sampler, self.nfe)

    def check(self) -> None:
        """Raise ValueError (one line) for a record that must not be stored."""
        for name in ("model_name", "weights_sha256", "sampler", "metric", "extractor", "space"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"validation.{name}: must be a non-empty string")
        for name in ("nfe", "n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"validation.{name}: {v!r} must be a positive integer")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ValueError(f"validation.value: {self.value!r} must be a finite number")
        if self.proxy_value is not None and not math.isfinite(self.proxy_value):
            raise ValueError(f"validation.proxy_value: {self.proxy_value!r} must be a finite number or None")
        try:
            json.loads(self.schedule_json)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"validation.schedule_json: not valid JSON ({exc})") from None


@dataclass(frozen=True)
class BestRow:
    """A row of ``skipsearch_best``."""

    id: int
    model_name: str
    weights_sha256: str
    sampler: str
    nfe: int
    space: str
    metric: str
    value: float
    n: int
    extractor: str
    extractor_sha256: str
    schedule_json: str
    study_name: str | None
    trial_number: int | None
    proxy_value: float | None
    created_at: datetime
    updated_at: datetime

    @property
    def key(self) -> BestKey:
        return BestKey(self.model_name, self.weights_sha256, self.sampler, self.nfe)

    @property
    def schedule(self) -> dict[str, Any]:
        """The schedule document (parse with ``SkipSchedule.from_json`` where a schedule object is needed)."""
        return json.loads(self.schedule_json)


@dataclass(frozen=True)
class ValidationRow:
    """A row of ``skipsearch_validation``."""

    id: int
    model_name: str
    weights_sha256: str
    sampler: str
    nfe: int
    study_name: str | None
    trial_number: int | None
    metric: str
    value: float
    n: int
    seeds: str
    extractor: str
    extractor_sha256: str
    space: str
    proxy_value: float | None
    schedule_json: str
    created_at: datetime

    @property
    def key(self) -> BestKey:
        return BestKey(self.model_name, self.weights_sha256, self.sampler, self.nfe)


_BEST_FIELDS = [f for f in BestRow.__dataclass_fields__]
_VALIDATION_FIELDS = [f for f in ValidationRow.__dataclass_fields__]


def _best_row(rec: BestRecord) -> BestRow:
    return BestRow(**{f: getattr(rec, f) for f in _BEST_FIELDS})


def _validation_row(rec: ValidationRecord) -> ValidationRow:
    return ValidationRow(**{f: getattr(rec, f) for f in _VALIDATION_FIELDS})


def _key_clause(model: type[BestRecord] | type[ValidationRecord], key: BestKey) -> list[Any]:
    return [model.model_name == key.model_name, model.weights_sha256 == key.weights_sha256,
            model.sampler == key.sampler, model.nfe == key.nfe]


# --------------------------------------------------------------------------------------------------------------------
# Store


class BestStore:
    """Best validated schedules and their validation history, beside Optuna's tables in the same database.

    Safe for many concurrent workers (threads or processes) on the same database; one instance may also be shared by
    threads. Values are compared only within the same metric: a validation whose metric differs from the stored
    best's is kept in history but never replaces it.
    """

    def __init__(self, url: str | None = None, *, retries: int = 3, backoff: float = 0.5) -> None:
        self.url = url or default_storage_url()
        self.engine = connect(self.url, retries=retries, backoff=backoff)
        try:
            ensure_schema(self.engine)
        except StoreError:
            self.engine.dispose()
            raise
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot prepare skipsearch tables in {redact_url(self.url)}: "
                             f"{_reason(exc, make_url(self.url))}; {_HINT}") from None

    def __repr__(self) -> str:
        return f"BestStore({redact_url(self.url)!r})"

    def __enter__(self) -> BestStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, validation: Validation) -> bool:
        """Append ``validation`` to the history and make it the best if it is strictly better; True if it did.

        Both happen in one transaction. Concurrent callers for the same key neither lose a better value nor
        create duplicate best rows.
        """
        validation.check()
        return _retry_locked(lambda: self._record_once(validation), "record")

    def _record_once(self, v: Validation) -> bool:
        now = _now()
        best_values = dict(space=v.space, metric=v.metric, value=float(v.value), n=v.n, extractor=v.extractor,
                           extractor_sha256=v.extractor_sha256, schedule_json=v.schedule_json,
                           study_name=v.study_name, trial_number=v.trial_number,
                           proxy_value=None if v.proxy_value is None else float(v.proxy_value), updated_at=now)
        with _write(self.engine) as conn:
            conn.execute(insert(ValidationRecord).values(
                model_name=v.model_name, weights_sha256=v.weights_sha256, sampler=v.sampler, nfe=v.nfe,
                study_name=v.study_name, trial_number=v.trial_number, metric=v.metric, value=float(v.value), n=v.n,
                seeds=v.seeds, extractor=v.extractor, extractor_sha256=v.extractor_sha256, space=v.space,
                proxy_value=best_values["proxy_value"], schedule_json=v.schedule_json, created_at=now))
            try:
                # Savepoint: a unique-key clash (another worker inserted first) must not abort the history insert.
                with conn.begin_nested():
                    conn.execute(insert(BestRecord).values(
                        model_name=v.model_name, weights_sha256=v.weights_sha256, sampler=v.sampler, nfe=v.nfe,
                        created_at=now, **best_values))
                return True
            except IntegrityError as clash:
                # A conditional UPDATE is atomic on SQLite and PostgreSQL: it re-checks value > new on the latest row.
                res = conn.execute(update(BestRecord)
                                   .where(*_key_clause(BestRecord, v.key), BestRecord.metric == v.metric,
                                          BestRecord.value > float(v.value))
                                   .values(**best_values))
                if res.rowcount == 1:
                    return True
                exists = conn.execute(select(BestRecord.id).where(*_key_clause(BestRecord, v.key))).first()
                if exists is None:
                    raise clash  # the INSERT failed for another reason than the key clash
                return False

    def best(self, model_name: str | None = None, sampler: str | None = None,
             nfe: int | None = None) -> list[BestRow]:
        """Best rows, optionally filtered, ordered by model, sampler, NFE (then weights)."""
        stmt = select(BestRecord)
        if model_name is not None:
            stmt = stmt.where(BestRecord.model_name == model_name)
        if sampler is not None:
            stmt = stmt.where(BestRecord.sampler == sampler)
        if nfe is not None:
            stmt = stmt.where(BestRecord.nfe == nfe)
        stmt = stmt.order_by(BestRecord.model_name, BestRecord.sampler, BestRecord.nfe, BestRecord.weights_sha256)
        with Session(self.engine) as s:
            return [_best_row(r) for r in s.scalars(stmt)]

    def get(self, key: BestKey) -> BestRow | None:
        """The best row for ``key``, or None."""
        with Session(self.engine) as s:
            rec = s.scalars(select(BestRecord).where(*_key_clause(BestRecord, key))).one_or_none()
            return None if rec is None else _best_row(rec)

    def validations(self, key: BestKey) -> list[ValidationRow]:
        """Every validation recorded for ``key``, oldest first."""
        stmt = (select(ValidationRecord).where(*_key_clause(ValidationRecord, key))
                .order_by(ValidationRecord.created_at, ValidationRecord.id))
        with Session(self.engine) as s:
            return [_validation_row(r) for r in s.scalars(stmt)]

    def schema_version(self) -> int:
        """The schema version stored in the database."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(SchemaVersion.version).where(SchemaVersion.id == 1)).scalar_one())

    def close(self) -> None:
        """Release pooled connections (the store is unusable afterwards)."""
        self.engine.dispose()
