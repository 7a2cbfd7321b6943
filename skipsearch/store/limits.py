"""The NFE frontier's measurements: every validated point, the model's own limit, and the time studies took.

Three tables beside the best table, on the same metadata (:class:`skipsearch.store.tables.Base`), so
:func:`skipsearch.store.migrations.ensure_schema` creates them like the others (new tables need no migration step):

* ``skipsearch_frontier_point``: one arm (rho = 1, the paper recipe, a searched schedule, a probe of the limit)
  validated at one NFE on one seed set, with its image features (later bootstraps need them) and its CIs.
* ``skipsearch_model_limit``: rho = 1 at a high NFE, per model identity, reference sampler and seed set.
* ``skipsearch_frontier_time``: append-only wall time of each stretch of a study run by ``frontier``.

A frontier is identified by :class:`FrontierKey`: the model's identity, its reference sampler and the seed set (n,
first seed, extractor). Nothing here deletes a measurement; a point is replaced only when its arm now names another
schedule (a study found a better one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Boolean, Float, Index, Integer, LargeBinary, String, Text, UniqueConstraint, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Mapped, Session, mapped_column

from skipsearch.store.engine import _retry_locked, _write, connect, redact_url
from skipsearch.store.migrations import ensure_schema
from skipsearch.store.tables import Base, UTCDateTime, _now

__all__ = ["FrontierKey", "FrontierPointRecord", "FrontierPointRow", "FrontierStore", "FrontierTimeRecord",
           "LimitRecord", "LimitRow", "NewPoint"]


# --------------------------------------------------------------------------------------------------------------------
# Tables


class FrontierPointRecord(Base):
    """One arm validated at one NFE on a frontier's seed set (FID of the extractor's features)."""

    __tablename__ = "skipsearch_frontier_point"
    __table_args__ = (UniqueConstraint("model_name", "weights_sha256", "sampler", "n", "seed_start",
                                       "extractor_sha256", "arm", "nfe", name="uq_skipsearch_frontier_point"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(255), nullable=False)
    weights_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    sampler: Mapped[str] = mapped_column(String(255), nullable=False)  # the frontier's reference sampler
    n: Mapped[int] = mapped_column(Integer, nullable=False)
    seed_start: Mapped[int] = mapped_column(Integer, nullable=False)
    extractor: Mapped[str] = mapped_column(String(255), nullable=False)
    extractor_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    arm: Mapped[str] = mapped_column(String(255), nullable=False)
    nfe: Mapped[int] = mapped_column(Integer, nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    recipe: Mapped[str] = mapped_column(Text, nullable=False)  # what decides the images (proxy.paired.recipe_key)
    schedule_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: the model as trained
    description: Mapped[str] = mapped_column(Text, nullable=False)
    study_name: Mapped[str | None] = mapped_column(String(512), nullable=True)
    features: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # float32 [n, dim], row-major
    feature_dim: Mapped[int] = mapped_column(Integer, nullable=False)
    denoiser_calls: Mapped[int] = mapped_column(Integer, nullable=False)
    seconds: Mapped[float] = mapped_column(Float, nullable=False)
    # Bootstrap CIs, filled once every point and the limit are in (null until then).
    ci_resamples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    value_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    value_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    vs_untuned: Mapped[float | None] = mapped_column(Float, nullable=True)
    vs_untuned_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    vs_untuned_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    limit_nfe: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the limit the vs_limit CI is against
    vs_limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    vs_limit_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    vs_limit_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class LimitRecord(Base):
    """The model's limit: rho = 1 with the reference sampler at the NFE where doubling stopped changing FID."""

    __tablename__ = "skipsearch_model_limit"
    __table_args__ = (UniqueConstraint("model_name", "weights_sha256", "sampler", "n", "seed_start",
                                       "extractor_sha256", name="uq_skipsearch_model_limit"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(255), nullable=False)
    weights_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    sampler: Mapped[str] = mapped_column(String(255), nullable=False)
    n: Mapped[int] = mapped_column(Integer, nullable=False)
    seed_start: Mapped[int] = mapped_column(Integer, nullable=False)
    extractor: Mapped[str] = mapped_column(String(255), nullable=False)
    extractor_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    nfe: Mapped[int] = mapped_column(Integer, nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    value_low: Mapped[float] = mapped_column(Float, nullable=False)
    value_high: Mapped[float] = mapped_column(Float, nullable=False)
    ci_resamples: Mapped[int] = mapped_column(Integer, nullable=False)
    converged: Mapped[bool] = mapped_column(Boolean, nullable=False)
    tolerance: Mapped[float] = mapped_column(Float, nullable=False)
    probes_json: Mapped[str] = mapped_column(Text, nullable=False)  # [[nfe, fid], ...] in the order measured
    denoiser_calls: Mapped[int] = mapped_column(Integer, nullable=False)
    seconds: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class FrontierTimeRecord(Base):
    """Wall time of one stretch of a study run by ``frontier`` (a study resumed after Ctrl-C has several), and
    which model, arm and NFE it was for (a study counts in its frontier's cost before any of its points exists)."""

    __tablename__ = "skipsearch_frontier_time"
    __table_args__ = (Index("ix_skipsearch_frontier_time_study", "study_name"),
                      Index("ix_skipsearch_frontier_time_model", "model_name", "weights_sha256"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(512), nullable=False)
    model_name: Mapped[str] = mapped_column(String(255), nullable=False)
    weights_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    sampler: Mapped[str] = mapped_column(String(255), nullable=False)  # the frontier's reference sampler
    arm: Mapped[str] = mapped_column(String(255), nullable=False)
    nfe: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: a shared study, over every NFE
    seconds: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# --------------------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, order=True)
class FrontierKey:
    """One frontier: a model's exact weights, its reference sampler and the validation seed set."""

    model_name: str
    weights_sha256: str
    sampler: str
    n: int
    seed_start: int
    extractor: str
    extractor_sha256: str

    def clause(self, table: type[FrontierPointRecord] | type[LimitRecord]) -> list[Any]:
        return [getattr(table, f.name) == getattr(self, f.name) for f in fields(self) if f.name != "extractor"]

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def seeds(self) -> str:
        return f"{self.seed_start}-{self.seed_start + self.n - 1}"


@dataclass(kw_only=True)
class NewPoint:
    """A validated arm at one NFE, as measured (its CIs come later, from every point's features)."""

    arm: str
    nfe: int
    value: float
    recipe: str
    features: np.ndarray
    description: str
    denoiser_calls: int
    seconds: float
    schedule_json: str | None = None
    study_name: str | None = None


@dataclass(frozen=True)
class FrontierPointRow:
    """A stored point (features left out: :meth:`FrontierStore.features` reads them)."""

    id: int
    arm: str
    nfe: int
    value: float
    recipe: str
    schedule_json: str | None
    description: str
    study_name: str | None
    denoiser_calls: int
    seconds: float
    ci_resamples: int | None
    value_low: float | None
    value_high: float | None
    vs_untuned: float | None
    vs_untuned_low: float | None
    vs_untuned_high: float | None
    limit_nfe: int | None
    vs_limit: float | None
    vs_limit_low: float | None
    vs_limit_high: float | None
    updated_at: datetime


@dataclass(frozen=True)
class LimitRow:
    """The stored limit of a frontier's model."""

    id: int
    nfe: int
    value: float
    value_low: float
    value_high: float
    ci_resamples: int
    converged: bool
    tolerance: float
    probes: list[tuple[int, float]]
    denoiser_calls: int
    seconds: float
    created_at: datetime


_POINT_FIELDS = [f.name for f in fields(FrontierPointRow)]
_POINT_COLUMNS = [getattr(FrontierPointRecord, name) for name in _POINT_FIELDS]
CI_FIELDS = ("ci_resamples", "value_low", "value_high", "vs_untuned", "vs_untuned_low", "vs_untuned_high",
             "limit_nfe", "vs_limit", "vs_limit_low", "vs_limit_high")


def _limit_row(rec: LimitRecord) -> LimitRow:
    probes = [(int(nfe), float(value)) for nfe, value in json.loads(rec.probes_json)]
    return LimitRow(id=rec.id, nfe=rec.nfe, value=rec.value, value_low=rec.value_low, value_high=rec.value_high,
                    ci_resamples=rec.ci_resamples, converged=rec.converged, tolerance=rec.tolerance, probes=probes,
                    denoiser_calls=rec.denoiser_calls, seconds=rec.seconds, created_at=rec.created_at)


# --------------------------------------------------------------------------------------------------------------------
# Store


class FrontierStore:
    """Frontier points, limits and study times in the skipsearch database (the one :class:`BestStore` uses)."""

    def __init__(self, url: str, lock_timeout: float | None = None) -> None:
        self.url = url
        self.engine = connect(url, lock_timeout=lock_timeout)
        try:
            ensure_schema(self.engine)  # creates these tables in a database made before they existed
        except Exception:
            self.engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"FrontierStore({redact_url(self.url)!r})"

    def __enter__(self) -> FrontierStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    # --- points -----------------------------------------------------------------------------------------------------
    def points(self, key: FrontierKey, arm: str | None = None, nfe: int | None = None) -> list[FrontierPointRow]:
        """The frontier's points (optionally one arm or NFE), by arm then NFE."""
        stmt = select(*_POINT_COLUMNS).where(*key.clause(FrontierPointRecord))
        if arm is not None:
            stmt = stmt.where(FrontierPointRecord.arm == arm)
        if nfe is not None:
            stmt = stmt.where(FrontierPointRecord.nfe == nfe)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(FrontierPointRecord.arm, FrontierPointRecord.nfe)).all()
        return [FrontierPointRow(**dict(zip(_POINT_FIELDS, row))) for row in rows]

    def point(self, key: FrontierKey, arm: str, nfe: int) -> FrontierPointRow | None:
        found = self.points(key, arm, nfe)
        return found[0] if found else None

    def features(self, point_id: int) -> np.ndarray:
        """A point's image features, float64 [n, dim]."""
        with self.engine.connect() as conn:
            blob, dim = conn.execute(select(FrontierPointRecord.features, FrontierPointRecord.feature_dim)
                                     .where(FrontierPointRecord.id == point_id)).one()
        return np.frombuffer(blob, dtype=np.float32).reshape(-1, dim).astype(np.float64)

    def put_point(self, key: FrontierKey, point: NewPoint) -> FrontierPointRow:
        """Store ``point``, replacing the arm's earlier point at that NFE (its CIs are cleared: they need redoing)."""
        features = np.ascontiguousarray(point.features, dtype=np.float32)
        now = _now()
        values = dict(value=float(point.value), recipe=point.recipe, schedule_json=point.schedule_json,
                      description=point.description, study_name=point.study_name, features=features.tobytes(),
                      feature_dim=int(features.shape[1]), denoiser_calls=int(point.denoiser_calls),
                      seconds=float(point.seconds), updated_at=now, **dict.fromkeys(CI_FIELDS))

        def write() -> None:
            with _write(self.engine) as conn:
                where = [*key.clause(FrontierPointRecord), FrontierPointRecord.arm == point.arm,
                         FrontierPointRecord.nfe == point.nfe]
                if conn.execute(sql_update(FrontierPointRecord).where(*where).values(**values)).rowcount == 0:
                    conn.execute(insert(FrontierPointRecord).values(**key.values(), arm=point.arm, nfe=point.nfe,
                                                                    created_at=now, **values))
        _retry_locked(write, "frontier point")
        stored = self.point(key, point.arm, point.nfe)
        assert stored is not None
        return stored

    def set_cis(self, point_id: int, **cis: float | int | None) -> None:
        """Write a point's bootstrap CIs (``CI_FIELDS``)."""
        unknown = set(cis) - set(CI_FIELDS)
        if unknown:
            raise ValueError(f"not CI fields: {sorted(unknown)}")

        def write() -> None:
            with _write(self.engine) as conn:
                conn.execute(sql_update(FrontierPointRecord).where(FrontierPointRecord.id == point_id)
                             .values(**cis))
        _retry_locked(write, "frontier CIs")

    def clear_cis(self, key: FrontierKey, nfe: int) -> None:
        """Forget the CIs of every point of ``key`` at ``nfe`` (a point there changed: they are computed again)."""
        def write() -> None:
            with _write(self.engine) as conn:
                conn.execute(sql_update(FrontierPointRecord).where(*key.clause(FrontierPointRecord),
                                                                   FrontierPointRecord.nfe == nfe)
                             .values(**dict.fromkeys(CI_FIELDS)))
        _retry_locked(write, "frontier CIs")

    def keys(self, model_name: str | None = None, sampler: str | None = None) -> list[FrontierKey]:
        """Every frontier with stored points (optionally of one model or reference sampler)."""
        names = [f.name for f in fields(FrontierKey)]
        stmt = select(*(getattr(FrontierPointRecord, name) for name in names)).distinct()
        if model_name is not None:
            stmt = stmt.where(FrontierPointRecord.model_name == model_name)
        if sampler is not None:
            stmt = stmt.where(FrontierPointRecord.sampler == sampler)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return sorted(FrontierKey(**dict(zip(names, row))) for row in rows) if rows else []

    # --- the limit --------------------------------------------------------------------------------------------------
    def limit(self, key: FrontierKey) -> LimitRow | None:
        with Session(self.engine) as s:
            rec = s.scalars(select(LimitRecord).where(*key.clause(LimitRecord))).one_or_none()
            return None if rec is None else _limit_row(rec)

    def put_limit(self, key: FrontierKey, *, nfe: int, value: float, value_low: float, value_high: float,
                  ci_resamples: int, converged: bool, tolerance: float, probes: list[tuple[int, float]],
                  denoiser_calls: int, seconds: float) -> LimitRow:
        """Store the model's limit for ``key`` (once: a stored limit is kept; measure again with another seed set)."""
        def write() -> None:
            with _write(self.engine) as conn:
                if conn.execute(select(LimitRecord.id).where(*key.clause(LimitRecord))).first() is None:
                    conn.execute(insert(LimitRecord).values(
                        **key.values(), nfe=nfe, value=float(value), value_low=float(value_low),
                        value_high=float(value_high), ci_resamples=ci_resamples, converged=converged,
                        tolerance=float(tolerance), probes_json=json.dumps([[k, float(v)] for k, v in probes]),
                        denoiser_calls=int(denoiser_calls), seconds=float(seconds), created_at=_now()))
        _retry_locked(write, "model limit")
        stored = self.limit(key)
        assert stored is not None
        return stored

    # --- study times ------------------------------------------------------------------------------------------------
    def add_study_time(self, key: FrontierKey, study_name: str, arm: str, nfe: int | None, seconds: float) -> None:
        """Record that ``frontier`` spent ``seconds`` in a study of ``key``'s model (``arm`` at ``nfe``)."""
        def write() -> None:
            with _write(self.engine) as conn:
                conn.execute(insert(FrontierTimeRecord).values(
                    study_name=study_name, model_name=key.model_name, weights_sha256=key.weights_sha256,
                    sampler=key.sampler, arm=arm, nfe=nfe, seconds=float(seconds), created_at=_now()))
        _retry_locked(write, "frontier time")

    def studies(self, key: FrontierKey) -> dict[str, tuple[str, int | None]]:
        """Every study ``frontier`` ran for ``key``'s model and reference sampler: name -> (arm, NFE or None for a
        shared study)."""
        stmt = select(FrontierTimeRecord.study_name, FrontierTimeRecord.arm, FrontierTimeRecord.nfe).where(
            FrontierTimeRecord.model_name == key.model_name, FrontierTimeRecord.weights_sha256 == key.weights_sha256,
            FrontierTimeRecord.sampler == key.sampler)
        with self.engine.connect() as conn:
            return {name: (arm, nfe) for name, arm, nfe in conn.execute(stmt)}

    def study_seconds(self, study_names: list[str]) -> dict[str, float]:
        """Total wall time ``frontier`` spent in each study (0 for one it never ran)."""
        totals = dict.fromkeys(study_names, 0.0)
        if not study_names:
            return totals
        stmt = select(FrontierTimeRecord.study_name, FrontierTimeRecord.seconds).where(
            FrontierTimeRecord.study_name.in_(study_names))
        with self.engine.connect() as conn:
            for name, seconds in conn.execute(stmt):
                totals[name] += seconds
        return totals
