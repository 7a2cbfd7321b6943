"""The calibration sweep's choice of rho bounds, on sweeps measured on the bundled models."""

from __future__ import annotations

from skipsearch.search.calibration import DEFAULT_GRID, choose_bounds
from skipsearch.search.definition import SpaceBounds
from skipsearch.search.spaces import SpaceContext, baselines, get_space

# Constant-rho proxies at n = 64 (mnist-features FID), measured: the EDM model likes rho < 1, the DDPM does not.
EDM = [130.5, 119.5, 110.7, 102.8, 99.5, 107.9, 157.8, 322.2, 690.4, 1293.5, 2070.9, 2915.6, 3773.0]
DDPM = [20903.3, 20703.2, 20267.9, 19222.9, 16010.9, 5091.5, 82.2, 362.6, 837.2, 1202.2, 1406.6, None, None]


def test_a_model_that_likes_lower_rho_gets_the_whole_lower_side():
    assert choose_bounds(DEFAULT_GRID, EDM, untuned=157.8) == (0.4, 1.0)


def test_a_sensitive_model_gets_a_narrow_window_around_one():
    lo, hi = choose_bounds(DEFAULT_GRID, DDPM, untuned=82.2)
    assert (lo, hi) == (0.9, 1.1)  # rho = 1 alone was good: one step each side, then calibrate() looks closer
    fine = [0.9, 0.925, 0.95, 0.975, 1.0, 1.025, 1.05, 1.075, 1.1]
    proxies = [5091.5, 2495.9, 919.9, 225.1, 82.2, 107.0, 164.4, 252.6, 362.6]
    assert choose_bounds(fine, proxies, untuned=82.2, widen=True) == (0.975, 1.05)


def test_degenerate_points_end_the_range():
    proxies = [None, None, 90.0, 95.0, 100.0, None, None]
    assert choose_bounds([0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3], proxies, untuned=95.0, widen=True) == (0.9, 1.1)


def test_the_paper_recipe_is_labelled_when_clipped():
    ctx = SpaceContext(num_skip_points=6, level_of_point=[0, 0, 1, 1, 2, 2], num_steps=10)
    inside, = [b.label for b in baselines(get_space("linear", ctx, SpaceBounds()), nfe=9)][1:]
    assert "clipped" not in inside
    narrow = SpaceBounds(rho_min=0.975, rho_max=1.05)
    label = baselines(get_space("linear", ctx, narrow), nfe=9)[1].label
    assert "clipped to the bounds [0.975, 1.05]: 0.975->1)" in label
