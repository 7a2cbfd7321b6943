"""The floor every stage writes through: skipsearch's SQL tables beside Optuna's (the validated best per model,
sampler, NFE; the frontier), the Optuna storage and artifact folder, and the schema of what a trial records."""

from skipsearch.store.best import BestKey, BestRow, BestStore, Validation, ValidationRow
from skipsearch.store.engine import StoreError, connect, default_storage_url, redact_url
from skipsearch.store.limits import FrontierKey, FrontierStore  # registers the frontier tables with ensure_schema
from skipsearch.store.migrations import MIGRATIONS, SCHEMA_VERSION, ensure_schema
from skipsearch.store.tables import Base, BestRecord, SchemaVersion, ValidationRecord

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Base",
    "BestKey",
    "BestRecord",
    "BestRow",
    "BestStore",
    "FrontierKey",
    "FrontierStore",
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
