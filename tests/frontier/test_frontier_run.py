"""A tiny frontier end to end on the bundled model (real studies, samplers, SQLite): its files, the stored limit,
``best --frontier``, the report section, a second run that reuses everything, and resuming after a stop."""

from __future__ import annotations

import csv

import optuna
import pytest
from helpers.cli import run_cli
from PIL import Image

from skipsearch.export.frontier import LIMIT, PAPER, UNTUNED, load_view
from skipsearch.frontier import FrontierControl, FrontierEvents, FrontierPlan, LimitPlan, run_frontier
from skipsearch.store import FrontierStore

# Two NFEs, one cheap space, 3 trials (rho = 1, the paper recipe, then a warm start or a searched one) at one 8-image
# rung, 16 validation images, the limit from NFE 5 to 11.
TINY = ("--model", "edm", "--nfes", "3,5", "--space", "linear", "--trials", "3", "--rungs", "8", "--n", "16",
        "--rho-min", "0.5", "--rho-max", "1.1", "--limit-nfe", "5", "--limit-max-nfe", "11", "--bootstrap", "30",
        "--device", "cpu")
PLAN = FrontierPlan(model="edm", nfes=(3, 5), spaces=("linear",), trials=3, rungs=(8,), n=16, rho_min=0.5,
                    rho_max=1.1, resamples=30, limit=LimitPlan(start_nfe=5, max_nfe=11))


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The CLI sets torch's threads from $OMP_NUM_THREADS: one, as the tests beside it use (tests/conftest.py)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_tiny_frontier_end_to_end_then_reused(tmp_path, capsys):
    folder, url = tmp_path, f"sqlite:///{tmp_path}/skipsearch.db"
    result = run_cli(capsys, "frontier", *TINY, "--storage", url, "-o", folder / "out")
    assert result.code == 0, result.err
    for fragment in ("NFE 3 (1 of 2)", "NFE 5 (2 of 2)", "limit: rho=1 at NFE 5", "NFE frontier of edm",
                     "studies run 2, reused 0", "limit measured"):
        assert fragment in result.out, result.out
    png, table = folder / "out" / "frontier.png", folder / "out" / "frontier.csv"
    assert Image.open(png).size[0] > 600
    rows = list(csv.DictReader(table.open()))
    assert {(r["arm"], r["nfe"]) for r in rows} == {(a, n) for a in (UNTUNED, PAPER, "linear") for n in ("3", "5")}
    assert all(r["fid_low"] and r["vs_limit_high"] for r in rows)  # every CI is in
    assert all(r["vs_rho1_low"] for r in rows if r["arm"] != UNTUNED)
    assert "NFE frontier: edm" in (folder / "out" / "index.html").read_text()

    with FrontierStore(url) as store:
        [key] = store.keys("edm")
        view = load_view(store, key)
    assert key.n == 16 and view.limit is not None and [nfe for nfe, _ in view.limit.probes] == [5, 11]
    assert len(view.studies) == 2 and all(s.calls > 0 and s.seconds > 0 for s in view.studies)
    assert sum(s.warm_starts for s in view.studies) == 1  # NFE 5 started from NFE 3's winner

    again = run_cli(capsys, "frontier", *TINY, "--storage", url, "-o", folder / "again")
    assert again.code == 0, again.err
    assert "studies run 0, reused 2" in again.out and "points measured 0, reused 6" in again.out
    assert "limit reused" in again.out and "this run: 0 denoiser calls" in again.out
    assert (folder / "again" / "frontier.csv").read_text() == table.read_text()

    shown = run_cli(capsys, "best", "--frontier", "--storage", url)
    assert shown.code == 0 and "limit: FID" in shown.out and "linear" in shown.out
    study = next(s.study_name for s in view.studies if s.nfe == 5)
    report = run_cli(capsys, "report", study, "--storage", url, "-o", folder / "report", "--no-images")
    assert report.code == 0, report.err
    page = (folder / "report" / "index.html").read_text()
    assert 'id="frontier"' in page and (folder / "report" / "frontier.png").is_file()


@pytest.mark.slow
def test_resume_after_interruption_and_budget(tmp_path):
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    # A budget too small for any work: nothing runs, nothing is stored, it says why.
    poor = run_frontier(PLAN.__class__(**{**PLAN.__dict__, "budget": 10}), storage_url=url, device="cpu")
    assert poor.stopped == "budget" and poor.spent_calls == 0 and poor.studies_run == []

    # Ctrl-C (what the CLI's handler does) after the first trial: the study stops there, everything is stored.
    control = FrontierControl()
    events = FrontierEvents(trial=lambda study, trial: control.request_stop("interrupted"))
    stopped = run_frontier(PLAN, storage_url=url, device="cpu", events=events, control=control)
    assert stopped.stopped == "interrupted" and len(stopped.studies_run) == 1
    [name] = stopped.studies_run
    kept = [(t.number, t.params, t.value) for t in optuna.load_study(study_name=name, storage=url).trials
            if t.state.is_finished()]
    assert len(kept) == 1
    run_frontier(PLAN, storage_url=url, device="cpu", control=FrontierControl(reason="interrupted"))  # at once
    with FrontierStore(url) as store:
        assert store.points(stopped.key) == [] and store.limit(stopped.key) is None
        [cost] = load_view(store, stopped.key).studies  # counted before any of its points exists
        assert cost.study_name == name and cost.calls > 0 and cost.nfe == 3

    done = run_frontier(PLAN, storage_url=url, device="cpu")
    assert done.stopped is None and name in done.studies_run  # resumed, not started again
    trials = [t for t in optuna.load_study(study_name=name, storage=url).trials if t.state.is_finished()]
    assert len(trials) == PLAN.trials and (trials[0].number, trials[0].params, trials[0].value) == kept[0]
    with FrontierStore(url) as store:
        points = store.points(done.key)
        assert {(p.arm, p.nfe) for p in points if p.arm != LIMIT} == {
            (a, n) for a in (UNTUNED, PAPER, "linear") for n in (3, 5)}
        assert store.limit(done.key) is not None
