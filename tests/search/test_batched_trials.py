"""Many schedules per forward: K trials scored together give what each gives alone (bundled model, real study)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from skipsearch.execution.session import open_session
from skipsearch.proxy.config import ProxyConfig
from skipsearch.proxy.fid_proxy import FidProxy
from skipsearch.sampling.generate import NonFiniteOutputError, generate, generate_many
from skipsearch.schedule import Churn, SkipSchedule
from skipsearch.search.definition import default_study
from skipsearch.settings import Settings
from skipsearch.store.records import TrialRecord

PARAMS = [{"rho_bottom": 0.7, "rho_top": 1.0}, {"rho_bottom": 0.9, "rho_top": 0.8},
          {"rho_bottom": 0.5, "rho_top": 0.95}, {"rho_bottom": 1.0, "rho_top": 1.0},
          {"rho_bottom": 0.8, "rho_top": 0.6}]


def _schedules(points: int) -> list[SkipSchedule | None]:
    return [SkipSchedule.constant(0.8, points), None,
            SkipSchedule.intervals([[0.7] * points, [0.9] * points, [1.0] * points], [80, 10, 1, 0.002]),
            dataclasses.replace(SkipSchedule.linear(0.6, 1.0, points), eps_scale=1.01)]


@pytest.mark.parametrize("sampler", ["heun", "euler"])
def test_generate_many_gives_each_schedule_its_own_images(bundled, sampler: str) -> None:
    """Per-sample rho, per-interval rho and epsilon scaling in one batch: every image as sampled alone."""
    schedules = _schedules(len(bundled.skip_points))
    churn = Churn(s_churn=10.0) if sampler == "euler" else None  # stochastic: the per-seed noise is shared too
    together = generate_many(bundled, schedules, sampler=sampler, nfe=5, seeds=range(10), batch_size=16,
                             churn=churn)
    for schedule, result in zip(schedules, together):
        alone = generate(bundled, sampler=sampler, nfe=5, seeds=range(10), schedule=schedule, batch_size=16,
                         churn=churn)
        assert torch.equal(alone.images, result.images)
    assert bundled.schedule is None  # the batch's hooks are gone


def test_a_failing_schedule_stops_alone(bundled) -> None:
    """Rows of the schedule whose bottom rho is 0.5 turn NaN: that schedule fails, the others finish."""
    points = len(bundled.skip_points)
    block = bundled.net.model.dec["7x7_block0"]

    def poison(_module, _args, out):
        schedule = bundled.schedule
        if schedule is None:
            return out
        rows = schedule.rho_for_sigma(bundled.probe.current())[:, 0] == 0.5
        rows = rows.expand(out.shape[0]) if rows.numel() == 1 else rows
        return torch.where(rows.reshape(-1, 1, 1, 1), torch.full_like(out, float("nan")), out)

    handle = block.register_forward_hook(poison)
    try:
        results = generate_many(bundled, [SkipSchedule.constant(0.8, points), SkipSchedule.constant(0.5, points),
                                          None], sampler="heun", nfe=3, seeds=range(6), batch_size=6)
    finally:
        handle.remove()
    assert isinstance(results[1], NonFiniteOutputError)
    assert [len(r.images) for r in (results[0], results[2])] == [6, 6]


@pytest.mark.slow  # rungs of four schedules, then each alone
def test_evaluate_many_matches_evaluate_and_prunes_alone(bundled) -> None:
    proxy = FidProxy(bundled, sampler="heun", nfe=3, config=ProxyConfig(rungs=(12, 24), batch_size=16))
    schedules = _schedules(len(bundled.skip_points))
    stop_at_first_rung = 1

    def on_rung(j: int, index: int, _rung) -> None:
        if j == stop_at_first_rung and index == 0:
            raise optuna.TrialPruned("stop")

    together = proxy.evaluate_many(schedules, on_rung=on_rung)
    assert isinstance(together[stop_at_first_rung], optuna.TrialPruned)
    for j, (schedule, result) in enumerate(zip(schedules, together)):
        if j == stop_at_first_rung:
            continue
        alone = proxy.evaluate(schedule)
        assert [(r.n, r.value) for r in alone.rungs] == [(r.n, r.value) for r in result.rungs]
        assert torch.equal(alone.preview, result.preview)


CHURNS = [{"s_churn": 0.0, "s_min": 0.0, "s_max": 80.0, "s_noise": 1.0},
          {"s_churn": 20.0, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003}]


def _run_study(tmp_path: Path, name: str, trials_per_batch: int, pruner: str, churn: bool = False) -> dict[str, dict]:
    """A study over PARAMS (with churn: two churn settings alternating, so the batch splits into churn groups)."""
    definition = default_study("edm").override(
        sampler="heun", nfe=3, trials=len(PARAMS), space="linear", name=name, proxy__rungs=(12, 24),
        space_bounds__calibrate=False, space_bounds__search_churn=churn, search__pruner=pruner,
        search__warm_start=False, search__trials_per_batch=trials_per_batch)
    settings = Settings(home=tmp_path, cache=Settings().cache)
    session = open_session(definition, storage_url=f"sqlite:///{tmp_path / 'db.sqlite'}", settings=settings)
    for i, params in enumerate(PARAMS):
        session.study.enqueue_trial({**params, **CHURNS[i % 2]} if churn else params)
    ran = session.run(trials_per_batch=trials_per_batch)
    trials = session.study.get_trials()
    session.store.close()
    assert ran == len(PARAMS)
    return {str(sorted(t.params.items())): {"state": t.state, "value": t.value,
                                            "rungs": TrialRecord.read(t).rungs} for t in trials}


@pytest.mark.slow  # two studies per case
@pytest.mark.parametrize("churn", [False, True])
def test_a_batched_study_scores_every_trial_as_one_at_a_time(tmp_path: Path, churn: bool) -> None:
    """Ask/tell with K = 3 on the same queued parameters: the same values and rungs, trial for trial."""
    one = _run_study(tmp_path, "one-at-a-time", 1, "none", churn)
    batched = _run_study(tmp_path, "batched", 3, "none", churn)
    assert one == batched
    assert all(t["state"] == TrialState.COMPLETE for t in batched.values())


@pytest.mark.slow  # two studies
def test_a_batched_study_prunes_at_the_shared_rungs(tmp_path: Path) -> None:
    """With a pruner, every trial's reported rungs are those it has alone, up to the rung where it stopped."""
    one = _run_study(tmp_path, "one-at-a-time", 1, "none")
    # K = 2: the pruner compares with finished trials, so the first batch runs to the end and later ones may stop.
    batched = _run_study(tmp_path, "batched", 2, "aggressive")
    pruned = [t for t in batched.values() if t["state"] == TrialState.PRUNED]
    assert pruned, "the aggressive pruner stops some of the later trials at the first rung"
    for key, trial in batched.items():
        assert trial["rungs"] == {n: v for n, v in one[key]["rungs"].items() if n in trial["rungs"]}
        assert list(trial["rungs"]) == ([12] if trial["state"] == TrialState.PRUNED else [12, 24])
