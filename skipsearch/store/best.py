"""The product's answer table: the best validated Skip-Tuning schedule per (model, weights, sampler, NFE).

Two tables hold results (see :mod:`skipsearch.store.tables`):

* ``skipsearch_best``: one row per :class:`BestKey`, replaced only by a strictly lower validated value.
* ``skipsearch_validation``: append-only history of every validation, whether or not it became the best.

Nothing in this module deletes stored results.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from skipsearch.store.engine import (
    _HINT,
    StoreError,
    _reason,
    _retry_locked,
    _write,
    connect,
    default_storage_url,
    redact_url,
)
from skipsearch.store.migrations import ensure_schema
from skipsearch.store.tables import BestRecord, SchemaVersion, ValidationRecord, _now

__all__ = ["BestKey", "BestRow", "BestStore", "Validation", "ValidationRow"]


# --------------------------------------------------------------------------------------------------------------------
# Public records


@dataclass(frozen=True)
class BestKey:
    """What a best schedule is for: a model's exact weights, a sampler and a number of function evaluations."""

    model_name: str
    weights_sha256: str
    sampler: str
    nfe: int


@dataclass(frozen=True, kw_only=True)
class ResultFields:
    """What every stored result says (the columns of :class:`skipsearch.store.tables.ResultColumns` but the id and
    the time); :class:`Validation`, :class:`BestRow` and :class:`ValidationRow` add their own."""

    model_name: str
    weights_sha256: str
    sampler: str
    nfe: int
    space: str
    metric: str
    value: float
    n: int
    extractor: str
    extractor_sha256: str = ""
    schedule_json: str
    study_name: str | None = None
    trial_number: int | None = None
    proxy_value: float | None = None

    @property
    def key(self) -> BestKey:
        return BestKey(self.model_name, self.weights_sha256, self.sampler, self.nfe)

    @property
    def schedule(self) -> dict[str, Any]:
        """The schedule document (parse with ``SkipSchedule.from_json`` where a schedule object is needed)."""
        return json.loads(self.schedule_json)


@dataclass(frozen=True, kw_only=True)
class Validation(ResultFields):
    """One validated measurement of a schedule (``value`` measured on ``n`` images; ``lower_is_better`` is the
    metric's direction, which the caller knows from the metric's spec: the store keeps only strictly better)."""

    seeds: str
    lower_is_better: bool = True  # not stored

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


@dataclass(frozen=True, kw_only=True)
class StoredRow(ResultFields):
    """A stored result: its row id and when it was written."""

    id: int
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class BestRow(StoredRow):
    """A row of ``skipsearch_best``."""

    updated_at: datetime

    def is_untuned(self) -> bool:
        """True when the stored best is rho = 1 everywhere with no epsilon scaling or churn: nothing beat it."""
        doc = self.schedule
        flat = [v for row in doc.get("rho", []) for v in row]
        churn = (doc.get("churn") or {}).get("s_churn", 0)
        return bool(flat) and all(v == 1.0 for v in flat) and doc.get("eps_scale", 1.0) == 1.0 and not churn


@dataclass(frozen=True, kw_only=True)
class ValidationRow(StoredRow):
    """A row of ``skipsearch_validation``."""

    seeds: str


_RESULT_FIELDS = [f.name for f in fields(ResultFields)]
_KEY_FIELDS = {f.name for f in fields(BestKey)}
_BEST_FIELDS = [f.name for f in fields(BestRow)]
_VALIDATION_FIELDS = [f.name for f in fields(ValidationRow)]


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

    Without ``url``, :func:`default_storage_url` (the environment's settings); ``lock_timeout``: the caller's
    ``settings.lock_timeout`` (None: the built-in default, see :func:`connect`).
    """

    def __init__(self, url: str | None = None, *, retries: int = 3, backoff: float = 0.5,
                 lock_timeout: float | None = None) -> None:
        self.url = url or default_storage_url()
        self.engine = connect(self.url, retries=retries, backoff=backoff, lock_timeout=lock_timeout)
        try:
            ensure_schema(self.engine)
        except StoreError:
            self.engine.dispose()
            raise
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot prepare skipsearch tables in {redact_url(self.url)}: "
                             f"{_reason(exc, self.url)}; {_HINT}") from None

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
        result: dict[str, Any] = {f: getattr(v, f) for f in _RESULT_FIELDS}
        result.update(value=float(v.value), proxy_value=None if v.proxy_value is None else float(v.proxy_value))
        best_values = {f: x for f, x in result.items() if f not in _KEY_FIELDS} | {"updated_at": now}
        with _write(self.engine) as conn:
            conn.execute(insert(ValidationRecord).values(**result, seeds=v.seeds, created_at=now))
            try:
                # Savepoint: a unique-key clash (another worker inserted first) must not abort the history insert.
                with conn.begin_nested():
                    conn.execute(insert(BestRecord).values(**result, created_at=now, updated_at=now))
                return True
            except IntegrityError as clash:
                # A conditional UPDATE is atomic on SQLite and PostgreSQL: it re-checks value > new on the latest row.
                res = conn.execute(update(BestRecord)
                                   .where(*_key_clause(BestRecord, v.key), BestRecord.metric == v.metric,
                                          BestRecord.value > float(v.value) if v.lower_is_better
                                          else BestRecord.value < float(v.value))
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

    def best_excluding(self, key: BestKey, rejected: set[tuple[str, int]],
                       lower_is_better: bool = True) -> BestRow | None:
        """The best row for ``key`` unless its (study, trial) is in ``rejected``; then the lowest validation of the
        same metric in the history whose (study, trial) is not (the earliest of equal values, as ``record`` keeps
        it), as a row; None when nothing is left. The caller says what is rejected (reviews live in Optuna)."""
        best = self.get(key)
        if best is None or (best.study_name or "", best.trial_number) not in rejected:
            return best
        left = [v for v in self.validations(key) if v.metric == best.metric and math.isfinite(v.value)
                and (v.study_name or "", v.trial_number) not in rejected]
        if not left:
            return None
        v = min(left, key=lambda v: (v.value if lower_is_better else -v.value, v.created_at, v.id))
        return BestRow(**{f: getattr(v, f) for f in _BEST_FIELDS if f != "updated_at"}, updated_at=v.created_at)

    def schema_version(self) -> int:
        """The schema version stored in the database."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(SchemaVersion.version).where(SchemaVersion.id == 1)).scalar_one())

    def close(self) -> None:
        """Release pooled connections (the store is unusable afterwards)."""
        self.engine.dispose()
