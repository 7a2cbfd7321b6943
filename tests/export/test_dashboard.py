"""The guarded optuna-dashboard server on real SQLite: Host and Origin checks, read-only default, best rows kept."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from helpers.cli import run_cli

from skipsearch.export.dashboard import make_server
from skipsearch.settings import Settings
from skipsearch.store import BestKey, BestStore, Validation
from skipsearch.store.studies import optuna_storage

KEY = BestKey("edm-cifar10", "a" * 64, "heun", 18)


@dataclass
class Db:
    url: str
    settings: Settings
    kept: int  # study id referenced by a best row
    loose: int  # study id no best row references


@dataclass
class Server:
    port: int
    db: Db

    def request(self, method: str, path: str, body: object = None, *, host: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            if host != "":
                conn.putheader("Host", host or f"127.0.0.1:{self.port}")
            data = b"" if body is None else json.dumps(body).encode()
            if body is not None:
                conn.putheader("Content-Type", "application/json")
            if body is not None or method not in ("GET", "HEAD"):
                conn.putheader("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.endheaders(data or None)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def _validation() -> Validation:
    return Validation(model_name=KEY.model_name, weights_sha256=KEY.weights_sha256, sampler=KEY.sampler, nfe=KEY.nfe,
                      metric="fid", value=3.5, n=2000, seeds="100000-101999", extractor="inception-v3",
                      extractor_sha256="b" * 64, schedule_json=json.dumps({"rho": [[1.0, 0.9]]}), space="layer",
                      study_name="kept-study", trial_number=0, proxy_value=4.0)


@pytest.fixture()
def db(tmp_path: Path) -> Db:
    url = f"sqlite:///{tmp_path / 'skipsearch.db'}"
    storage = optuna_storage(url)
    ids = {}
    for name in ("kept-study", "loose-study"):
        study = optuna.create_study(study_name=name, storage=storage)
        study.optimize(lambda t: t.suggest_float("rho", 0.5, 1.0), n_trials=2)
        ids[name] = study._study_id
    with BestStore(url) as store:
        assert store.record(_validation())
    return Db(url, Settings(home=tmp_path / "home"), ids["kept-study"], ids["loose-study"])


def _serve(db: Db, allow_writes: bool) -> Iterator[Server]:
    server = make_server(db.url, "127.0.0.1", 0, db.settings, allow_writes=allow_writes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(server.server_port, db)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


@pytest.fixture()
def server(db: Db) -> Iterator[Server]:
    yield from _serve(db, allow_writes=False)


@pytest.fixture()
def writable(db: Db) -> Iterator[Server]:
    yield from _serve(db, allow_writes=True)


def _study_names(db: Db) -> list[str]:
    return sorted(optuna.get_all_study_names(optuna_storage(db.url)))


def _first_trial_id(db: Db, study_id: int) -> int:
    storage = optuna_storage(db.url)
    return storage.get_all_trials(study_id)[0]._trial_id


# --------------------------------------------------------------------------------------------------------------------
# Host (DNS rebinding)


def test_dashboard_page_is_served_on_loopback_names(server: Server) -> None:
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"LOCALHOST:{server.port}",
                 f"[::1]:{server.port}"):
        status, body = server.request("GET", "/dashboard", host=host)
        assert status == 200, (host, body)
        assert b"<html" in body.lower()
    status, body = server.request("GET", "/api/studies")
    assert status == 200
    assert sorted(s["study_name"] for s in json.loads(body)["study_summaries"]) == ["kept-study", "loose-study"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1", "127.0.0.2:{port}",
                                  "127.0.0.1:{other}", "127.0.0.1:{port},evil.example", ""])
def test_foreign_host_is_refused(server: Server, host: str) -> None:
    host = host.format(port=server.port, other=server.port + 1)
    requests = (("GET", "/dashboard"), ("GET", "/api/studies"), ("DELETE", f"/api/studies/{server.db.loose}"))
    for method, path in requests:
        status, body = server.request(method, path, host=host)
        assert status == 403, (host, method, path, body)
        assert b"Host" in body
    assert _study_names(server.db) == ["kept-study", "loose-study"]


def test_writable_server_still_refuses_foreign_host(writable: Server) -> None:
    status, _ = writable.request("DELETE", f"/api/studies/{writable.db.loose}", host="evil.example")
    assert status == 403
    assert _study_names(writable.db) == ["kept-study", "loose-study"]


# --------------------------------------------------------------------------------------------------------------------
# Read-only by default


@pytest.mark.parametrize("method,path", [("DELETE", "/api/studies/{loose}"), ("DELETE", "/api/studies/{loose}/"),
                                         ("delete", "/api/studies/{loose}"),
                                         ("POST", "/api/studies/{loose}/rename")])
def test_delete_and_rename_are_refused_without_allow_writes(server: Server, method: str, path: str) -> None:
    status, body = server.request(method, path.format(loose=server.db.loose), {"study_name": "renamed"})
    assert status == 403, body
    assert b"--allow-writes" in body
    assert _study_names(server.db) == ["kept-study", "loose-study"]


def test_other_writes_are_refused_without_allow_writes(server: Server) -> None:
    trial_id = _first_trial_id(server.db, server.db.loose)
    for method, path, body in (("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
                               ("POST", f"/api/trials/{trial_id}/tell", {"state": "Fail"}),
                               ("POST", "/incompatible-rdb-schema", None),
                               ("PATCH", "/api/studies", None)):
        status, text = server.request(method, path, body)
        assert status == 403, (method, path, text)
        assert b"--allow-writes" in text
    assert _study_names(server.db) == ["kept-study", "loose-study"]


def test_notes_are_saved_without_allow_writes(server: Server) -> None:
    db = server.db
    origin = {"Origin": f"http://127.0.0.1:{server.port}"}
    status, body = server.request("PUT", f"/api/studies/{db.kept}/note", {"version": 1, "body": "study note"},
                                  headers=origin)
    assert status == 204, body
    trial_id = _first_trial_id(db, db.kept)
    status, body = server.request("PUT", f"/api/studies/{db.kept}/{trial_id}/note", {"version": 1, "body": "t note"})
    assert status == 204, body
    status, body = server.request("GET", f"/api/studies/{db.kept}")
    detail = json.loads(body)
    assert detail["note"] == {"version": 1, "body": "study note"}
    assert [t["note"] for t in detail["trials"] if t["trial_id"] == trial_id] == [{"version": 1, "body": "t note"}]


def test_review_form_attrs_are_saved_but_no_others(server: Server) -> None:
    db = server.db
    # Optuna takes user attributes only on a RUNNING trial: the human-in-the-loop case the form widgets serve.
    trial_id = optuna_storage(db.url).create_new_trial(db.loose)
    verdict = {"verdict": -1, "verdict_comment": "speckle"}
    status, body = server.request("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": verdict})
    assert status == 204, body
    for key in ("schedule", "proxy_n200", "reviews_trial", "looks_good"):
        status, body = server.request("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": {key: "forged"}})
        assert status == 403, (key, body)
        assert key.encode() in body and b"--allow-writes" in body
    attrs = optuna_storage(db.url).get_trial(trial_id).user_attrs
    assert attrs == verdict


def test_write_with_foreign_origin_is_refused(server: Server) -> None:
    db = server.db
    for origin in ("http://evil.example", f"http://localhost:{server.port + 1}", "null"):
        status, body = server.request("PUT", f"/api/studies/{db.kept}/note", {"version": 1, "body": "csrf"},
                                      headers={"Origin": origin})
        assert status == 403, (origin, body)
        assert b"Origin" in body
    status, body = server.request("GET", f"/api/studies/{db.kept}")
    assert json.loads(body)["note"] == {"version": 0, "body": ""}


# --------------------------------------------------------------------------------------------------------------------
# --allow-writes: everything but losing a study the best table points at


def test_allow_writes_deletes_an_unreferenced_study(writable: Server) -> None:
    status, body = writable.request("DELETE", f"/api/studies/{writable.db.loose}")
    assert status == 204, body
    assert _study_names(writable.db) == ["kept-study"]


@pytest.mark.parametrize("method,path", [("DELETE", "/api/studies/{kept}"), ("DELETE", "/api/studies/{kept}/"),
                                         ("delete", "/api/studies/{kept}"), ("POST", "/api/studies/{kept}/rename")])
def test_allow_writes_keeps_a_study_the_best_table_references(writable: Server, method: str, path: str) -> None:
    db = writable.db
    status, body = writable.request(method, path.format(kept=db.kept), {"study_name": "renamed"})
    assert status == 409, body
    text = body.decode()
    assert "kept-study" in text and KEY.model_name in text and KEY.sampler in text and str(KEY.nfe) in text
    assert _study_names(db) == ["kept-study", "loose-study"]
    with BestStore(db.url) as store:
        row = store.get(KEY)
    assert row is not None and row.study_name == "kept-study" and row.value == 3.5


def test_allow_writes_still_checks_origin(writable: Server) -> None:
    status, body = writable.request("DELETE", f"/api/studies/{writable.db.loose}",
                                    headers={"Origin": "http://evil.example"})
    assert status == 403, body
    assert _study_names(writable.db) == ["kept-study", "loose-study"]
    status, body = writable.request("DELETE", f"/api/studies/{writable.db.loose}",
                                    headers={"Origin": f"http://localhost:{writable.port}"},
                                    host=f"localhost:{writable.port}")
    assert status == 204, body


# --------------------------------------------------------------------------------------------------------------------
# CLI


def test_dashboard_help_lists_allow_writes(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    result = run_cli(capsys, "dashboard", "--help")
    assert result.code == 0, result.err
    assert "--allow-writes" in result.out


@pytest.mark.slow  # starts the dashboard server as a subprocess
def test_dashboard_command_serves_read_only_and_says_so(db: Db, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # A wide console: rich wraps at 80 columns without a terminal, and where the long database path (longer under
    # xdist: .../popen-gw1/...) puts the break decides whether the sentence checked below stays on one line.
    env = {**os.environ, "SKIPSEARCH_HOME": str(tmp_path / "home"), "SKIPSEARCH_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
    proc = subprocess.Popen([sys.executable, "-m", "skipsearch.cli", "dashboard", "--storage", db.url, "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        client = Server(port, db)
        for _ in range(120):
            try:
                status, _ = client.request("GET", "/api/studies")
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.5)
        assert status == 200
        assert client.request("DELETE", f"/api/studies/{db.loose}")[0] == 403
        assert client.request("GET", "/api/studies", host="evil.example")[0] == 403
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"at http://127.0.0.1:{port}/ (read-only except notes and review forms" in out, (out, err)
    assert _study_names(db) == ["kept-study", "loose-study"]
