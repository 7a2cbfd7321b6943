"""Human verdicts that count: a real tiny study, its review study, a rejection posted to the real guarded dashboard,
and ``best`` / ``export`` honouring it (real SQLite, bundled model, real optuna-dashboard server)."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from helpers.cli import assert_one_line_error, run_cli
from optuna.trial import TrialState
from sqlalchemy import create_engine, text

from skipsearch.execution.budget import recover_orphans
from skipsearch.export.review import open_review, verdicts
from skipsearch.settings import Settings
from skipsearch.store import BestKey, BestStore, Validation
from skipsearch.store.records import StudyRecord
from skipsearch.store.studies import optuna_storage

pytestmark = pytest.mark.slow
TINY = ["optimize", "--model", "edm", "--nfe", "5", "--rungs", "24,48", "--final-n", "48", "--top-k", "2",
        "--trials", "4", "--pruner", "none", "--device", "cpu", "--rho-min", "0.3", "--rho-max", "1.0"]


@dataclass
class Run:
    home: Path
    url: str
    study: str  # the main study's name

    @property
    def review(self) -> str:
        return f"{self.study}.review"

    def studies(self) -> tuple[optuna.Study, optuna.Study]:
        storage = optuna_storage(self.url)
        return (optuna.load_study(study_name=self.study, storage=storage),
                optuna.load_study(study_name=self.review, storage=storage))

    def winner(self) -> int:
        with BestStore(self.url) as store:
            (row,) = store.best("edm")
        return row.trial_number


@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> Run:
    """One real tiny study through the CLI code path (``run_definition``), shared read-only by the tests."""
    from skipsearch.optimization import optimize
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home}/skipsearch.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKIPSEARCH_HOME", str(home))
        mp.setenv("SKIPSEARCH_OFFLINE", "1")
        result = optimize("edm", 5, storage=url, device="cpu", export=home / "best.json",
                          settings=Settings.from_env(), trials=4, proxy__rungs=(24, 48), search__final_n=48,
                          search__validate_top_k=2, search__pruner="none", space_bounds__calibrate=False,
                          space_bounds__rho_min=0.3, space_bounds__rho_max=1.0)
    assert result.best is not None
    return Run(home, url, result.study_name)


@pytest.fixture()
def run(study_run: Run, tmp_path: Path, monkeypatch) -> Run:
    """A private copy of the study's database and artifacts (each test writes its own verdicts)."""
    home = tmp_path / "home"
    shutil.copytree(study_run.home, home)
    monkeypatch.setenv("SKIPSEARCH_HOME", str(home))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    return Run(home, f"sqlite:///{home}/skipsearch.db", study_run.study)


@dataclass
class Dashboard:
    port: int

    def post(self, path: str, body: object) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:  # what the dashboard page sends (same Host and Origin)
            data = json.dumps(body).encode()
            conn.request("POST", path, data, headers={"Host": f"127.0.0.1:{self.port}",
                                                      "Origin": f"http://127.0.0.1:{self.port}",
                                                      "Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def verdict(self, review_trial: optuna.trial.FrozenTrial, verdict: object, comment: str) -> None:
        status, body = self.post(f"/api/trials/{review_trial._trial_id}/user-attrs",
                                 {"user_attrs": {"verdict": verdict, "verdict_comment": comment}})
        assert status == 204, body


@pytest.fixture()
def dashboard(run: Run) -> Iterator[Dashboard]:
    from skipsearch.export.dashboard import make_server
    server = make_server(run.url, port=0, settings=Settings.from_env())  # read-only except notes and review forms
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Dashboard(server.server_port)
    finally:
        server.shutdown()
        server.server_close()


def _review_trial(run: Run, number: int) -> optuna.trial.FrozenTrial:
    _, review = run.studies()
    (trial,) = [t for t in review.get_trials() if t.user_attrs["reviews_trial"] == number]
    return trial


def _best_row(run: Run, capsys) -> tuple[dict, str]:
    result = run_cli(capsys, "best", "--storage", run.url, "--format", "json")
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)
    return row, result.err


def test_review_study_holds_one_running_trial_and_form_per_candidate(study_run: Run) -> None:
    from optuna.artifacts import get_all_artifact_meta
    from optuna_dashboard._form_widget import get_form_widgets_json
    main, review = study_run.studies()
    validated = {n: v for n, v in StudyRecord(main).validated().items() if v.value is not None}
    assert len(validated) >= 3  # the top 2 and both baselines (one may be among the top)
    trials = review.get_trials()
    assert len(trials) == len(validated) and all(t.state == TrialState.RUNNING for t in trials)
    assert sorted(t.user_attrs["reviews_trial"] for t in trials) == sorted(validated)
    for t in trials:
        assert t.user_attrs["validated"] == pytest.approx(validated[t.user_attrs["reviews_trial"]].value)
        assert t.user_attrs["reviews_study"] == main.study_name and "verdict" not in t.user_attrs
    # The form, read as optuna-dashboard reads it (a study system attribute).
    form = get_form_widgets_json(review._storage.get_study_system_attrs(review._study_id))
    assert form["output_type"] == "user_attr"
    choice, comment = form["widgets"]
    assert (choice["type"], choice["user_attr_key"], choice["choices"]) == ("choice", "verdict", ["accept", "reject"])
    assert (comment["type"], comment["user_attr_key"], comment["optional"]) == ("text", "verdict_comment", True)
    # The candidate's grids are on its review trial: copies, same bytes, own ids.
    artifacts = study_run.home / "artifacts"
    for t in trials:
        source = main.trials[t.user_attrs["reviews_trial"]]
        theirs = {m.filename: m.artifact_id for m in get_all_artifact_meta(source, storage=main._storage)}
        ours = {m.filename: m.artifact_id for m in get_all_artifact_meta(t, storage=review._storage)}
        assert set(ours) == set(theirs) and any(name.endswith("-samples.png") for name in ours), (ours, theirs)
        for name, artifact_id in ours.items():
            assert artifact_id != theirs[name]
            assert (artifacts / artifact_id).read_bytes() == (artifacts / theirs[name]).read_bytes()


def test_rejection_in_the_dashboard_changes_best_and_export(run: Run, dashboard: Dashboard, capsys) -> None:
    winner = run.winner()
    main, _ = run.studies()
    validated = StudyRecord(main).validated()
    # What the dashboard's form posts: the choice's value (-1 for "reject") and the comment.
    dashboard.verdict(_review_trial(run, winner), -1, "speckle")
    (verdict,) = verdicts(run.url, run.study).values()
    assert (verdict.trial, verdict.verdict, verdict.comment) == (winner, "reject", "speckle")
    row, err = _best_row(run, capsys)
    assert row["study_name"] == run.study and row["trial_number"] != winner
    others = [v.value for n, v in validated.items() if n != winner and v.value is not None]
    assert row["value"] == pytest.approx(min(others))
    line = (f"trial {winner} of study {run.study} was rejected by a reviewer: 'speckle'; using trial "
            f"{row['trial_number']} (")
    assert line in err  # --format json: the reason on stderr, stdout stays data
    table = run_cli(capsys, "best", "--storage", run.url)
    assert table.code == 0 and line in table.out, table
    out = run.home / "exported.json"
    result = run_cli(capsys, "export", "-o", out, "--model", "edm", "--nfe", "5", "--storage", run.url)
    assert result.code == 0, result.err
    assert line in result.out and f"trial {row['trial_number']})" in result.out
    provenance = json.loads(out.read_text())["provenance"]
    assert provenance["trial"] == row["trial_number"]
    assert provenance["review"]["verdict"] is None  # nobody reviewed the replacement itself
    assert provenance["review"]["skipped"] == [{"study": run.study, "trial": winner, "verdict": "reject",
                                                "comment": "speckle"}]


def test_every_candidate_rejected_is_said_and_export_refuses(run: Run, dashboard: Dashboard, capsys) -> None:
    _, review = run.studies()
    for t in review.get_trials():  # a script may post the choice's name instead of its value
        dashboard.verdict(t, "reject", f"bad {t.user_attrs['reviews_trial']}")
    result = run_cli(capsys, "best", "--storage", run.url)
    assert result.code == 0, result.err
    assert f"trial {run.winner()} of study {run.study} was rejected by a reviewer: 'bad {run.winner()}'; no other " \
           "validated candidate is left" in result.out
    result = run_cli(capsys, "export", "-o", run.home / "x.json", "--model", "edm", "--nfe", "5",
                     "--storage", run.url)
    assert_one_line_error(result, "was rejected by a reviewer", f"{run.study}.review")
    assert not (run.home / "x.json").exists()


def test_accepting_and_rerunning_optimize_keep_the_verdict(run: Run, dashboard: Dashboard, capsys) -> None:
    winner = run.winner()
    dashboard.verdict(_review_trial(run, winner), -1, "speckle")
    before = {t.number: t.user_attrs for t in run.studies()[1].get_trials()}
    # The same command again: the study is done, validation is cached, the export and review are redone.
    export = run.home / "again.json"
    result = run_cli(capsys, *TINY, "--storage", run.url, "--export", export)
    assert result.code == 0, result.err[-2000:]
    main, review = run.studies()
    assert {t.number: t.user_attrs for t in review.get_trials()} == before  # nothing added, no verdict reset
    assert all(t.state == TrialState.RUNNING for t in review.get_trials())
    assert verdicts(run.url, run.study)[winner].rejected
    assert json.loads(export.read_text())["provenance"]["trial"] != winner  # optimize's own export skips it too
    assert open_review(main, run.url) == run.review and len(review.get_trials()) == len(before)
    row, _ = _best_row(run, capsys)
    assert row["trial_number"] != winner
    # The reviewer changes their mind (reload, submit again): the winner is back, and its export says who accepted.
    dashboard.verdict(_review_trial(run, winner), 1, "fine on a second look")
    row, err = _best_row(run, capsys)
    assert row["trial_number"] == winner and "rejected" not in err
    out = run.home / "accepted.json"
    result = run_cli(capsys, "export", "-o", out, "--model", "edm", "--nfe", "5", "--storage", run.url)
    assert result.code == 0 and "rejected" not in result.out, result
    review_doc = json.loads(out.read_text())["provenance"]["review"]
    assert (review_doc["verdict"], review_doc["comment"]) == ("accept", "fine on a second look")
    assert review_doc["review_study"] == run.review and "skipped" not in review_doc


def test_heartbeat_checks_never_fail_review_trials(run: Run) -> None:
    storage = optuna_storage(run.url, heartbeat_seconds=1)
    main = optuna.load_study(study_name=run.study, storage=storage)
    review = optuna.load_study(study_name=run.review, storage=storage)
    ids = [t._trial_id for t in review.get_trials()]
    engine = create_engine(run.url)
    with engine.connect() as conn:  # nothing beats for them, so nothing can find their beat stale
        beats = conn.execute(text("SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id IN "
                                  f"({','.join(map(str, ids))})")).scalar()
    engine.dispose()
    assert beats == 0
    time.sleep(3.5)  # past the stale grace of a 1 s heartbeat
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        optuna.storages.fail_stale_trials(review)
    assert recover_orphans(main, 1) == ([], [])
    assert [t.state for t in review.get_trials()] == [TrialState.RUNNING] * len(ids)


def test_best_excluding_walks_the_validation_history(tmp_path: Path) -> None:
    key = BestKey("m", "a" * 64, "heun", 9)

    def validation(trial: int, value: float, metric: str = "fid", study: str = "s") -> Validation:
        return Validation(model_name=key.model_name, weights_sha256=key.weights_sha256, sampler=key.sampler,
                          nfe=key.nfe, metric=metric, value=value, n=48, seeds="0-47", extractor="x",
                          schedule_json=json.dumps({"rho": [[1.0]], "trial": trial}), space="layer", study_name=study,
                          trial_number=trial)

    with BestStore(f"sqlite:///{tmp_path / 'best.db'}") as store:
        for v in (validation(0, 5.0), validation(1, 3.0), validation(2, 4.0), validation(3, 1.0, metric="kid"),
                  validation(4, 4.0, study="t"), validation(2, 3.5)):
            store.record(v)
        assert store.best_excluding(key, set()) == store.get(key)
        assert store.best_excluding(key, {("t", 1)}) == store.get(key)
        row = store.best_excluding(key, {("s", 1)})  # trial 2 validated twice: its lower value; kid never counts
        assert (row.study_name, row.trial_number, row.value, row.metric) == ("s", 2, 3.5, "fid")
        row = store.best_excluding(key, {("s", 1), ("s", 2)})
        assert (row.study_name, row.trial_number) == ("t", 4)  # another study of the same key
        assert store.best_excluding(key, {("s", 0), ("s", 1), ("s", 2), ("t", 4)}) is None
        assert store.best_excluding(BestKey("other", "b" * 64, "heun", 9), set()) is None
