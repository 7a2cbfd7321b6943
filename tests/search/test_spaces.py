"""Search spaces: every space turns its baseline parameters into the schedule they stand for."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from skipsearch.search.spaces import (
    SPACES,
    SpaceBounds,
    SpaceContext,
    UnknownSpaceError,
    baselines,
    get_space,
    paper_rho_bottom,
    parse_space_name,
    space_names,
)

CTX = SpaceContext(num_skip_points=9, level_of_point=[0, 0, 0, 1, 1, 1, 2, 2, 2], num_steps=5)


@pytest.mark.parametrize("name", [n for n in space_names() if not SPACES[parse_space_name(n).base].finetune])
def test_baselines_reproduce_their_schedules(name):
    space = get_space(name, CTX)
    for baseline in baselines(space, nfe=9):
        schedule = space.suggest(optuna.trial.FixedTrial(baseline.params))
        assert schedule.num_skip_points == 9
        if "untuned" in baseline.label:
            assert np.all(schedule.rho == 1.0)
        if name in ("linear", "per-layer", "intervals"):
            if "paper" in baseline.label:
                np.testing.assert_allclose(schedule.rho[:, 0], paper_rho_bottom(9))
                np.testing.assert_allclose(schedule.rho[:, -1], 1.0)


def test_stochastic_sampler_adds_churn_and_eps_suffix_adds_eps():
    ctx = SpaceContext(num_skip_points=9, level_of_point=CTX.level_of_point, num_steps=9, stochastic=True)
    space = get_space("per-level+eps", ctx, SpaceBounds(rho_max=1.2))
    study = optuna.create_study()
    trial = study.ask()
    schedule = space.suggest(trial)
    assert {"s_churn", "s_min", "s_max", "s_noise", "eps_scale", "rho_level0"} <= set(trial.params)
    assert schedule.churn.s_churn == trial.params["s_churn"] and schedule.eps_scale == trial.params["eps_scale"]
    assert schedule.rho.max() <= 1.2


def test_unknown_space():
    with pytest.raises(UnknownSpaceError, match="known"):
        get_space("spiral", CTX)
    with pytest.raises(UnknownSpaceError):
        get_space("linear+churn", CTX)


def test_paper_recipe_rises_with_nfe():
    assert paper_rho_bottom(9) == pytest.approx(0.68)
    assert paper_rho_bottom(9) < paper_rho_bottom(19) < paper_rho_bottom(39) < 0.9


@pytest.mark.parametrize("direction", ["decreasing", "increasing"])
def test_linear_in_time_with_a_fixed_direction_searches_rho_0_only(direction):
    """The per-order spaces (paper Table 10) give the both-ways space's schedule for their direction."""
    one_way = get_space(f"linear-in-time-{direction}", CTX)
    both = get_space("linear-in-time", CTX)
    schedule = one_way.suggest(optuna.trial.FixedTrial({"rho_0": 0.7}))
    column = schedule.rho[:, 0]  # rows: sigma intervals from sigma_max (first) down to sigma_min (last)
    assert len(column) > 1 and 0.7 <= column.min() and column.max() <= 1.0
    steps = np.diff(column)
    assert (steps > 0).all() if direction == "decreasing" else (steps < 0).all()
    expected = both.suggest(optuna.trial.FixedTrial({"rho_0": 0.7, "direction": direction}))
    np.testing.assert_array_equal(schedule.rho, expected.rho)
    np.testing.assert_array_equal(schedule.sigma_bounds, expected.sigma_bounds)
