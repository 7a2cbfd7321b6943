"""Time grids as part of a schedule: monotone for every family, the NFE contract for every sampler, EDM's churn noise
stream, and the schedule JSON v1 -> v2 reader."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch

from skipsearch.sampling.grids import grid_sigmas, karras_sigmas, knots_sigmas
from skipsearch.sampling.noise import SeededNoise
from skipsearch.sampling.samplers import SAMPLERS, GridError, sample, sample_heun, steps_for_nfe
from skipsearch.schedule import Churn, ScheduleError, SkipSchedule, TimeGrid
from skipsearch.search.spaces import SpaceContext, get_space, samplers_for

NFES = (5, 9, 10, 17)


def _grids(ctx: SpaceContext, name: str, count: int = 6) -> list[TimeGrid]:
    """Grids the search proposes: the baseline, then random trials of the space."""
    space = get_space(name, ctx)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(space.baseline(1.0))
    grids = []
    for _ in range(count):
        trial = study.ask()
        grids.append(space.suggest(trial).grid)
        study.tell(trial, 0.0)
    return grids


@pytest.mark.parametrize("part", ["grid", "free-grid"])
def test_grid_families_are_monotone_at_every_step_count(part):
    ctx = SpaceContext(num_skip_points=9, level_of_point=[0, 0, 0, 1, 1, 1, 2, 2, 2], num_steps=5)
    for grid in _grids(ctx, part):
        for steps in (1, 2, 3, 5, 8, 9, 17):
            sigmas = grid_sigmas(grid, steps, sigma_min=ctx.sigma_min, sigma_max=ctx.sigma_max).tolist()
            assert len(sigmas) == steps + 1 and sigmas[-1] == 0.0
            assert all(a > b for a, b in zip(sigmas, sigmas[1:])), (grid, steps, sigmas)
            assert ctx.sigma_min * 0.999 <= sigmas[-2] and sigmas[0] <= ctx.sigma_max * 1.001


def test_baseline_grids_are_edm_defaults():
    ctx = SpaceContext(num_skip_points=9, level_of_point=[0, 0, 0, 1, 1, 1, 2, 2, 2], num_steps=5)
    karras, free = _grids(ctx, "grid", 1)[0], _grids(ctx, "free-grid", 1)[0]
    expected = karras_sigmas(5, ctx.sigma_min, ctx.sigma_max)
    torch.testing.assert_close(grid_sigmas(karras, 5, sigma_min=1.0, sigma_max=2.0), expected, rtol=1e-12, atol=0)
    # the free grid's baseline is Karras' increments (clipped at the smallest weight): close, and exact at the ends
    got = grid_sigmas(free, 5, sigma_min=1.0, sigma_max=2.0)
    assert got[0] == ctx.sigma_max and got[-2] == pytest.approx(ctx.sigma_min)
    torch.testing.assert_close(got.log()[:-1], expected.log()[:-1], rtol=0, atol=0.2)


def test_knots_are_exact_at_their_step_count_and_interpolate_log_sigma_otherwise():
    knots = (80.0, 10.0, 1.0, 0.1, 0.002)
    assert knots_sigmas(knots, 5).tolist() == list(knots)
    nine = knots_sigmas(knots, 9)
    assert nine[::2].tolist() == pytest.approx(list(knots))
    assert nine[1].item() == pytest.approx(math.sqrt(80.0 * 10.0))


@pytest.mark.slow  # every sampler x grid x NFE
def test_every_sampler_spends_the_nfe_exactly_on_every_searched_grid(bundled):
    """The NFE contract holds for every sampler a '+sampler' space may choose, on grids of both families."""
    ctx = SpaceContext(num_skip_points=len(bundled.skip_points), level_of_point=bundled.level_of_points(),
                       sigma_min=bundled.sigma_min, sigma_max=bundled.sigma_max, num_steps=5)
    grids = [None, *_grids(ctx, "grid", 2), *_grids(ctx, "free-grid", 2)]
    latents = SeededNoise([0, 1]).randn(bundled.img_shape)
    for nfe in NFES:
        assert ("heun" in samplers_for((nfe,))) == (nfe % 2 == 1)  # heun spends 2N - 1: odd NFEs only
        for name, spec in SAMPLERS.items():
            if name not in samplers_for((nfe,), spec.models):  # each kind's own list (onestep: NFE 1 only)
                with pytest.raises(ValueError, match="cannot spend exactly"):
                    steps_for_nfe(name, nfe)
                continue
            for grid in grids:
                result = sample(bundled.denoise, latents, sampler=name, nfe=nfe, sigma_min=bundled.sigma_min,
                                sigma_max=bundled.sigma_max, grid=grid, noise=SeededNoise([0, 1]))
                assert result.nfe == nfe and torch.isfinite(result.x).all()


def test_a_grid_that_collapses_on_a_discrete_model_is_a_trial_failure():
    """Two knots inside one DDPM timestep snap to the same sigma: a GridError (scored as a failed trial)."""
    table = torch.linspace(0.01, 80.0, 50, dtype=torch.float64)

    def snap(sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return table[(sigma.reshape(-1, 1) - table).abs().argmin(dim=1)].reshape(sigma.shape)

    with pytest.raises(ScheduleError, match="descend"):
        TimeGrid("knots", knots=(80.0, 40.0, 40.2, 1.0))
    grid = TimeGrid("knots", knots=(80.0, 40.5, 40.4, 1.0))
    with pytest.raises(GridError, match="do not strictly descend"):
        sample(lambda x, s: x, torch.zeros(1, 1, 2, 2), sampler="unipc", nfe=4, sigma_min=0.01, sigma_max=80.0,
               grid=grid, round_sigma=snap)


def _edm_heun_reference(denoiser, img_shape, t_steps, seeds, s_churn, s_min, s_max, s_noise):
    """EDM's stochastic sampler loop (Karras et al. 2022, Alg. 2 as released): per-image generators draw the
    latents first, then churn noise at every step."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    latents = torch.stack([torch.randn(img_shape, generator=g) for g in generators])
    num_steps = len(t_steps) - 1
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(s_churn / num_steps, math.sqrt(2) - 1) if s_min <= t_cur <= s_max else 0
        t_hat = t_cur + gamma * t_cur
        eps = torch.stack([torch.randn(x_cur.shape[1:], generator=g, dtype=x_cur.dtype) for g in generators])
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * s_noise * eps
        batch = x_hat.new_ones([x_hat.shape[0]])
        denoised = denoiser(x_hat, batch * t_hat).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            denoised = denoiser(x_next, batch * t_next).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def test_every_step_churn_noise_reproduces_edm_bit_for_bit(bundled):
    """S_min/S_max exclude steps: EDM still draws there; churn noise 'every-step' follows that stream exactly."""
    seeds = [3, 11]
    steps = 6
    t_steps = karras_sigmas(steps, bundled.sigma_min, bundled.sigma_max)
    knobs = dict(s_churn=30.0, s_min=0.05, s_max=10.0, s_noise=1.007)
    reference = _edm_heun_reference(bundled.denoise, bundled.img_shape, t_steps, seeds, **knobs)
    noise = SeededNoise(seeds)
    latents = noise.randn(bundled.img_shape)  # the latents come first from each image's generator, as in EDM
    edm_like = sample_heun(bundled.denoise, latents.to(torch.float64) * t_steps[0], t_steps, noise=noise,
                           churn=Churn(**knobs, noise="every-step")).x
    assert torch.equal(edm_like, reference)
    noise = SeededNoise(seeds)
    latents = noise.randn(bundled.img_shape)
    active = sample_heun(bundled.denoise, latents.to(torch.float64) * t_steps[0], t_steps, noise=noise,
                         churn=Churn(**knobs)).x
    assert not torch.equal(active, reference)  # the default draws only where it churns: another stream


def test_schedule_json_v1_still_loads_and_v2_round_trips(tmp_path):
    v1 = {"schema": "skipsearch.schedule/v1", "family": "linear", "params": {"rho_bottom": 0.7, "rho_top": 1.0},
          "rho": [[0.7, 0.85, 1.0]], "sigma_bounds": ["inf", 0.0],
          "churn": {"s_churn": 0.0, "s_min": 0.0, "s_max": "inf", "s_noise": 1.0}, "eps_scale": 1.0,
          "model": None, "sampler": "heun", "nfe": 9, "provenance": {}}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    old = SkipSchedule.load(path)
    assert old.grid is None and old.sampler_options == {} and old.nfe_set == () and old.sampler == "heun"
    assert old.rho.tolist() == [[0.7, 0.85, 1.0]]
    with pytest.raises(ScheduleError, match="unknown field 'grid' in a skipsearch.schedule/v1"):
        SkipSchedule.from_dict({**v1, "grid": None})
    new = SkipSchedule(rho=old.rho, grid=TimeGrid("karras", rho=5.0, sigma_min=0.01, sigma_max=60.0),
                       sampler="unipc", sampler_options={"order": 2, "variant": "bh2"}, nfe=9, nfe_set=(5, 9, 17),
                       churn=Churn(s_churn=5.0, noise="every-step"))
    document = new.to_dict()
    assert document["schema"] == "skipsearch.schedule/v2"
    assert SkipSchedule.from_json(new.to_json()) == new
    knots = SkipSchedule(rho=old.rho, grid=TimeGrid("knots", knots=(80.0, 3.0, 0.01)))
    assert SkipSchedule.from_json(knots.to_json()).grid == knots.grid
    with pytest.raises(ScheduleError, match="nfe: 10 is not in its nfe_set"):
        SkipSchedule(rho=old.rho, nfe=10, nfe_set=(5, 9))
    with pytest.raises(ScheduleError, match="grid.kind"):
        SkipSchedule.from_dict({**document, "grid": {"kind": "spiral"}})
