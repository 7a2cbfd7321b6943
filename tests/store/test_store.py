"""BestStore on a real SQLite file: defaults, best-so-far semantics, concurrency, schema versions, connect errors."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import sqlite3
import threading
from datetime import timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, inspect, text

import skipsearch.store
from skipsearch.store import (
    SCHEMA_VERSION,
    BestKey,
    BestStore,
    StoreError,
    Validation,
    connect,
    default_storage_url,
    redact_url,
)
from skipsearch.store.migrations import _upgrade

KEY = BestKey("edm-cifar10", "a" * 64, "heun", 18)


def _validation(value: float, *, key: BestKey = KEY, trial: int | None = 0, tag: str = "") -> Validation:
    return Validation(model_name=key.model_name, weights_sha256=key.weights_sha256, sampler=key.sampler, nfe=key.nfe,
                      metric="fid", value=value, n=2000, seeds="100000-101999", extractor="inception-v3",
                      extractor_sha256="b" * 64, schedule_json=json.dumps({"rho": [[1.0, 0.9]], "tag": tag}),
                      space="layer", study_name="study-a", trial_number=trial, proxy_value=value + 1.0)


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'skipsearch.db'}"


# --------------------------------------------------------------------------------------------------------------------
# URLs


def test_default_storage_url_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKIPSEARCH_STORAGE", "postgresql+psycopg://u:p@db/x")
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "ignored"))
    assert default_storage_url() == "postgresql+psycopg://u:p@db/x"
    assert not (tmp_path / "ignored").exists()

    monkeypatch.delenv("SKIPSEARCH_STORAGE")
    home = tmp_path / "home" / "nested"
    monkeypatch.setenv("SKIPSEARCH_HOME", str(home))
    assert default_storage_url() == f"sqlite:///{home.resolve() / 'skipsearch.db'}"
    assert home.is_dir()

    monkeypatch.delenv("SKIPSEARCH_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_storage_url() == f"sqlite:///{(tmp_path / 'user' / '.skipsearch').resolve() / 'skipsearch.db'}"
    assert (tmp_path / "user" / ".skipsearch").is_dir()


def test_redact_url() -> None:
    assert redact_url("postgresql+psycopg://alice:s3cret@db:5432/x") == "postgresql+psycopg://alice:***@db:5432/x"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert "s3cret" not in redact_url("not a url //alice:s3cret@host")


# --------------------------------------------------------------------------------------------------------------------
# record / best semantics


def test_record_best_semantics(url: str) -> None:
    with BestStore(url) as store:
        assert store.get(KEY) is None and store.best() == []
        assert store.record(_validation(10.0, trial=1, tag="first")) is True
        first = store.get(KEY)
        assert first is not None and first.value == 10.0 and first.trial_number == 1
        assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timezone.utc.utcoffset(None)
        assert first.schedule["tag"] == "first" and first.proxy_value == 11.0 and first.extractor_sha256 == "b" * 64

        assert store.record(_validation(12.0, trial=2, tag="worse")) is False
        assert store.record(_validation(10.0, trial=3, tag="equal")) is False  # strictly better only
        kept = store.get(KEY)
        assert kept is not None and (kept.value, kept.trial_number, kept.schedule["tag"]) == (10.0, 1, "first")

        assert store.record(_validation(7.5, trial=4, tag="better")) is True
        better = store.get(KEY)
        assert better is not None
        assert (better.value, better.trial_number, better.schedule["tag"]) == (7.5, 4, "better")
        assert better.id == first.id and better.created_at == first.created_at
        assert better.updated_at >= first.updated_at

        history = store.validations(KEY)
        assert [v.value for v in history] == [10.0, 12.0, 10.0, 7.5]
        assert [v.trial_number for v in history] == [1, 2, 3, 4]
        assert history[1].seeds == "100000-101999" and history[1].space == "layer"

        other_nfe = BestKey(KEY.model_name, KEY.weights_sha256, KEY.sampler, 10)
        other_sampler = BestKey(KEY.model_name, KEY.weights_sha256, "euler", 18)
        other_weights = BestKey(KEY.model_name, "c" * 64, KEY.sampler, 18)
        for k, v in ((other_nfe, 20.0), (other_sampler, 30.0), (other_weights, 40.0)):
            assert store.record(_validation(v, key=k)) is True
        assert store.get(KEY).value == 7.5  # type: ignore[union-attr]
        rows = store.best()
        assert [(r.sampler, r.nfe) for r in rows] == [("euler", 18), ("heun", 10), ("heun", 18), ("heun", 18)]
        assert [r.value for r in store.best(sampler="heun", nfe=18)] == [7.5, 40.0]
        assert store.best(model_name="nope") == []
        assert len(store.validations(other_nfe)) == 1


def test_record_rejects_bad_values(url: str) -> None:
    with BestStore(url) as store:
        with pytest.raises(ValueError, match="validation.value"):
            store.record(_validation(float("nan")))
        bad = dataclasses.replace(_validation(1.0), schedule_json="{not json")  # Validation is frozen
        with pytest.raises(ValueError, match="schedule_json"):
            store.record(bad)
        assert store.validations(KEY) == []


def test_other_metric_never_replaces(url: str) -> None:
    with BestStore(url) as store:
        assert store.record(_validation(10.0)) is True
        kid = dataclasses.replace(_validation(0.01), metric="kid")
        assert store.record(kid) is False
        assert store.get(KEY).metric == "fid"  # type: ignore[union-attr]
        assert [v.metric for v in store.validations(KEY)] == ["fid", "kid"]


# --------------------------------------------------------------------------------------------------------------------
# concurrency


def _check_concurrent(url: str, values: list[float]) -> None:
    with BestStore(url) as store:
        rows = store.best()
        assert len(rows) == 1
        assert rows[0].value == min(values)
        history = store.validations(KEY)
        assert len(history) == len(values)
        assert sorted(v.value for v in history) == sorted(values)
        best_trial = [v.trial_number for v in history if v.value == min(values)]
        assert rows[0].trial_number in best_trial


def test_concurrent_threads(url: str) -> None:
    threads, per_thread = 8, 25
    rng = random.Random(0)
    values = [[rng.uniform(1.0, 100.0) for _ in range(per_thread)] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        try:
            store = BestStore(url)  # each worker its own engine, as separate workers would have
            barrier.wait()
            for j, v in enumerate(values[i]):
                store.record(_validation(v, trial=i * per_thread + j))
            store.close()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert not errors, errors
    _check_concurrent(url, [v for vs in values for v in vs])


# Source run by each spawned process. It registers a bare `skipsearch` package so that importing skipsearch.store.best
# skips the package __init__, which imports torch (~5 s per process on a loaded 2-core machine; the store needs none).
_CHILD = """
import random, sys, types
pkg = types.ModuleType("skipsearch")
pkg.__path__ = [PKG_DIR]
sys.modules["skipsearch"] = pkg
from skipsearch.store import BestStore, Validation

rng = random.Random(SEED)
store = BestStore(URL)
START.wait(60)  # a barrier: all processes record at once
for j in range(COUNT):
    v = rng.uniform(1.0, 100.0)
    store.record(Validation(model_name=KEY[0], weights_sha256=KEY[1], sampler=KEY[2], nfe=KEY[3], metric="fid",
                            value=v, n=2000, seeds="100000-101999", extractor="inception-v3",
                            extractor_sha256="b" * 64, schedule_json="{}", space="layer", study_name="study-a",
                            trial_number=SEED * 1000 + j, proxy_value=v + 1.0))
store.close()
"""


def test_concurrent_processes(url: str) -> None:
    procs, per_proc = 4, 20
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(procs)
    pkg_dir = str(Path(skipsearch.store.__file__).parents[1])  # the skipsearch package folder
    workers = [ctx.Process(target=exec, args=(_CHILD, {"PKG_DIR": pkg_dir, "URL": url, "SEED": i, "COUNT": per_proc,
                                                        "START": start, "KEY": tuple(vars(KEY).values())}))
               for i in range(procs)]
    for w in workers:
        w.start()
    # The processes also create the schema on the fresh file at about the same time: ensure_schema must not race.
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * procs
    values = []
    for i in range(procs):  # the same draws the children made
        rng = random.Random(i)
        values += [rng.uniform(1.0, 100.0) for _ in range(per_proc)]
    _check_concurrent(url, values)


# --------------------------------------------------------------------------------------------------------------------
# schema


def test_schema_fresh_newer_and_reopen(url: str, tmp_path: Path) -> None:
    with BestStore(url) as store:
        assert store.schema_version() == SCHEMA_VERSION == 1
        store.record(_validation(3.0))
    names = set(inspect(create_engine(url)).get_table_names())
    assert {"skipsearch_schema_version", "skipsearch_best", "skipsearch_validation"} <= names

    with BestStore(url) as store:  # re-opening keeps data and does not duplicate the version row
        assert store.get(KEY).value == 3.0  # type: ignore[union-attr]
        assert len(store.validations(KEY)) == 1
    with sqlite3.connect(tmp_path / "skipsearch.db") as db:
        assert db.execute("SELECT count(*), max(version) FROM skipsearch_schema_version").fetchone() == (1, 1)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute("UPDATE skipsearch_schema_version SET version = 2")
    with pytest.raises(StoreError) as err:
        BestStore(url)
    assert str(err.value) == "database schema v2 is newer than this skipsearch (v1); upgrade skipsearch"
    with sqlite3.connect(tmp_path / "skipsearch.db") as db:  # the newer database was left untouched
        assert db.execute("SELECT version FROM skipsearch_schema_version").fetchone() == (2,)
        assert db.execute("SELECT count(*) FROM skipsearch_validation").fetchone() == (1,)


def test_upgrade_runs_steps_in_order(url: str) -> None:
    calls: list[int] = []
    steps = [lambda c, v=v: calls.append(v) for v in (2, 3)]  # step i takes v(i+1) to v(i+2)
    engine = connect(url)
    with engine.begin() as conn:
        assert isinstance(conn, Connection)
        assert _upgrade(conn, 1, target=3, migrations=steps) == 3
        assert calls == [2, 3]
        calls.clear()
        assert _upgrade(conn, 2, target=3, migrations=steps) == 3
        assert calls == [3]
        with pytest.raises(StoreError, match="newer"):
            _upgrade(conn, 4, target=3, migrations=steps)
        with pytest.raises(StoreError, match="no migration path"):
            _upgrade(conn, 1, target=4, migrations=steps)
    engine.dispose()


# --------------------------------------------------------------------------------------------------------------------
# connect errors


def test_connect_unreachable_postgres_is_redacted() -> None:
    with pytest.raises(StoreError) as err:
        connect("postgresql+psycopg://alice:s3cret@127.0.0.1:9/db", retries=1)
    msg = str(err.value)
    assert "***" in msg and "s3cret" not in msg and "\n" not in msg
    assert msg.startswith("cannot reach storage postgresql+psycopg://alice:***@127.0.0.1:9/db: ")
    assert "SKIPSEARCH_STORAGE" in msg


def test_connect_retries_with_backoff() -> None:
    with pytest.raises(StoreError, match="cannot reach storage"):
        connect("postgresql+psycopg://alice:s3cret@127.0.0.1:9/db", retries=2, backoff=0.01)


def test_connect_sqlite_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist") as err:
        connect(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("bad", ["nosuchdb://host/x", "postgresql+nosuchdriver://u:pw@h/x", "::not a url::"])
def test_connect_bad_urls(bad: str) -> None:
    with pytest.raises(StoreError) as err:
        connect(bad, retries=1)
    assert "pw" not in str(err.value) and "\n" not in str(err.value)


def test_connect_sqlite_ok(url: str) -> None:
    engine = connect(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()


@pytest.mark.parametrize("url,secret", [
    ("postgresql+psycopg://u@host/db?password=s3cret", "s3cret"),
    ("postgresql+psycopg://u:pa@ss@word@host/db", "ss@word"),
    ("postgresql://u:pw9@h:5432/x?sslpassword=zz9&x=1", "zz9"),
])
def test_redaction_hides_passwords_in_query_and_with_at_signs(url, secret):
    redacted = redact_url(url)
    assert secret not in redacted and "pw9" not in redacted and "***" in redacted
    assert redacted.startswith(url.split("://")[0] + "://u")
