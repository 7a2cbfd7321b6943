"""The skipsearch tables. They live beside Optuna's in the same database, under names starting with ``skipsearch_``
so they never clash, and with their own metadata (:class:`Base`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "BestRecord", "ResultColumns", "SchemaVersion", "UTCDateTime", "ValidationRecord"]


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


class ResultColumns:
    """The columns every stored result has (``skipsearch_best`` and ``skipsearch_validation``), declared once.

    ``_column_order`` keeps each table's physical column order as schema v1 created it (a declarative mixin's columns
    would otherwise come after the class's own); a column not named there goes last, where ``ADD COLUMN`` puts it.
    """

    _column_order: ClassVar[tuple[str, ...]] = ()

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

    @classmethod
    def __table_cls__(cls, name: str, metadata: MetaData, *args: Any, **kw: Any) -> Table:
        rank = {column: i for i, column in enumerate(cls._column_order)}
        columns = sorted((a for a in args if isinstance(a, Column)), key=lambda c: rank.get(c.name, len(rank)))
        return Table(name, metadata, *columns, *(a for a in args if not isinstance(a, Column)), **kw)


class BestRecord(ResultColumns, Base):
    """Best validated schedule per (model_name, weights_sha256, sampler, nfe); lower value is better."""

    __tablename__ = "skipsearch_best"
    __table_args__ = (
        UniqueConstraint("model_name", "weights_sha256", "sampler", "nfe", name="uq_skipsearch_best_key"),
    )
    _column_order = ("id", "model_name", "weights_sha256", "sampler", "nfe", "space", "metric", "value", "n",
                     "extractor", "extractor_sha256", "schedule_json", "study_name", "trial_number", "proxy_value",
                     "created_at", "updated_at")

    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ValidationRecord(ResultColumns, Base):
    """Append-only history of validations (every one, whether or not it became the best); with its seeds, enough
    to rebuild a best row from history alone."""

    __tablename__ = "skipsearch_validation"
    __table_args__ = (Index("ix_skipsearch_validation_key", "model_name", "weights_sha256", "sampler", "nfe"),)
    _column_order = ("id", "model_name", "weights_sha256", "sampler", "nfe", "study_name", "trial_number", "metric",
                     "value", "n", "seeds", "extractor", "extractor_sha256", "space", "proxy_value", "schedule_json",
                     "created_at")

    seeds: Mapped[str] = mapped_column(String(255), nullable=False)
