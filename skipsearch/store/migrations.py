"""Schema versions of the skipsearch tables: create what is missing, stamp the version, run upgrade steps.

Migrations are hand-written, not alembic's: our two small tables sit beside Optuna's, which Optuna migrates itself,
and the only steps ever needed are additive (none yet: the schema is still v1). Alembic would add its own version
table and migration environment to every user database for that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine, insert, inspect, select, text, update
from sqlalchemy.engine import Connection

from skipsearch.store.engine import StoreError, _retry_locked, _write
from skipsearch.store.tables import Base, SchemaVersion, _now

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "ensure_schema"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Arbitrary constant key for the PostgreSQL advisory lock that serialises concurrent ensure_schema calls.
_PG_SCHEMA_LOCK = 0x736B6970  # "skip"

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
