"""Joint search: sampler, time grid and rho together; structured rho(level, sigma) families; one schedule for several
NFEs; a searched grid reproduced through ``sample --schedule`` and through ``apply()``."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
from helpers.cli import assert_one_line_error, run_cli

import skipsearch
from skipsearch.sampling.noise import SeededNoise
from skipsearch.sampling.samplers import get_sampler
from skipsearch.schedule import SkipSchedule
from skipsearch.search.spaces import (
    SpaceContext,
    UnknownSpaceError,
    baselines,
    get_space,
    parse_space_name,
    samplers_for,
)
from skipsearch.store import BestStore

LEVELS = [0, 0, 0, 1, 1, 1, 2, 2, 2]
CTX = SpaceContext(num_skip_points=9, level_of_point=LEVELS, num_steps=5, sampler="heun")


def test_space_names_compose_parts():
    assert parse_space_name("joint") == parse_space_name("per-level-sigma+grid+sampler")
    parsed = parse_space_name("linear+free-grid+eps")
    assert (parsed.base, parsed.grid, parsed.eps, parsed.sampler) == ("linear", "knots", True, False)
    assert parse_space_name("grid").base == "identity"
    for bad in ("linear+grid+free-grid", "linear+grid+grid", "s2dm+grid", "joint+churn", "spiral+grid"):
        with pytest.raises(UnknownSpaceError, match="parts"):
            parse_space_name(bad)


def test_sampler_choice_keeps_the_nfe_contract_and_is_conditional():
    assert "heun" not in samplers_for((10,)) and "heun" in samplers_for((5, 9, 17))
    assert "heun" not in samplers_for((5, 10))
    space = get_space("sampler", SpaceContext(num_skip_points=9, level_of_point=LEVELS, num_steps=10,
                                              sampler="unipc", nfes=()))
    assert "heun" not in space.ctx.samplers
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        schedule = space.suggest(trial)
        name = trial.params["sampler"]
        seen.add(name)
        assert schedule.sampler == name and np.all(schedule.rho == 1.0)
        own = {k for k in trial.params if k.startswith(("unipc_", "ddim_"))}
        assert own == {f"{name}_{o}" for o in schedule.sampler_options}  # only the chosen sampler's options
        churn = {"s_churn", "s_min", "s_max", "s_noise"} & set(trial.params)
        assert bool(churn) == get_sampler(name).stochastic
        study.tell(trial, 0.0)
    assert seen == set(space.ctx.samplers)


def test_joint_baselines_are_every_sampler_untuned_plus_the_paper_recipe():
    space = get_space("joint", dataclass_replace(CTX, stochastic=True))
    found = baselines(space, nfe=9)
    labels = [b.label for b in found]
    assert labels[0] == "untuned (rho=1)" and "paper recipe" in labels[1]
    assert {b.params["sampler"] for b in found} == set(samplers_for((9,)))
    for baseline in found:
        schedule = space.suggest(optuna.trial.FixedTrial(baseline.params))
        assert schedule.grid is not None and schedule.grid.rho == 7.0  # EDM's default grid
        if "untuned" in baseline.label:
            assert np.all(schedule.rho == 1.0) and schedule.churn.s_churn == 0.0


@pytest.mark.parametrize("name", ["rho-sigma", "per-level-sigma"])
def test_structured_families_are_smooth_in_sigma_and_low_dimensional(name):
    ctx = SpaceContext(num_skip_points=16, level_of_point=[0] * 4 + [1] * 4 + [2] * 4 + [3] * 4, num_steps=9)
    space = get_space(name, ctx)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(10):
        trial = study.ask()
        schedule = space.suggest(trial)
        assert len(trial.params) <= 6  # 16 skip points x 12 sigma intervals from at most 6 numbers
        assert schedule.rho.shape == (12, 16) and np.isfinite(schedule.rho).all()
        for level in range(4):  # one value per level at each sigma
            assert np.all(schedule.rho[:, 4 * level:4 * level + 4] == schedule.rho[:, [4 * level]])
        study.tell(trial, 0.0)
    untuned, paper = baselines(space, nfe=9)
    assert np.all(space.suggest(optuna.trial.FixedTrial(untuned.params)).rho == 1.0)
    recipe = space.suggest(optuna.trial.FixedTrial(paper.params)).rho
    assert recipe[:, 0] == pytest.approx(0.68) and np.all(recipe[:, -1] > 0.95)  # bottom-heavy, flat in sigma
    assert np.all(np.diff(recipe[0]) >= -1e-12)


def dataclass_replace(ctx, **changes):
    import dataclasses
    return dataclasses.replace(ctx, **changes)


def test_a_searched_grid_reproduces_through_sample_and_apply(bundled, tmp_path, capsys):
    """A schedule of the joint-free space (free grid, UniPC with options, rho per level and sigma) gives the same
    images through the CLI as through ``skipsearch.apply`` with the sigmas ``schedule_sigmas`` returns."""
    ctx = SpaceContext(num_skip_points=len(bundled.skip_points), level_of_point=bundled.level_of_points(),
                       sigma_min=bundled.sigma_min, sigma_max=bundled.sigma_max, num_steps=5, sampler="heun")
    space = get_space("joint-free", ctx)
    params = {**space.baseline(0.8), "sampler": "unipc", "unipc_order": 2, "unipc_variant": "bh2",
              "grid_sigma_min": 0.02, "grid_w0": 0.3, "grid_w1": 1.0, "grid_w2": 0.5, "grid_w3": 0.2,
              "rho_sigma_centre": 1.0, "rho_sigma_sharpness": 0.5}
    schedule = space.suggest(optuna.trial.FixedTrial(params)).with_metadata(model=bundled.identity, nfe=7)
    assert schedule.grid.kind == "knots" and schedule.sampler_options == {"order": 2, "variant": "bh2"}
    path = schedule.save(tmp_path / "searched.json")
    result = run_cli(capsys, "sample", "--model", "edm", "--schedule", path, "--n", "3", "--seed", "5",
                     "-o", tmp_path / "grid.png", "--npz", tmp_path / "images.npz", "--device", "cpu")
    assert result.code == 0, result
    assert "unipc, NFE 7, grid free grid of 5 knots" in " ".join(result.out.split())
    from_cli = np.load(tmp_path / "images.npz")["samples"]

    loaded = SkipSchedule.load(path, expect_model=bundled.identity)
    sigmas = skipsearch.schedule_sigmas(bundled, loaded)
    assert len(sigmas) == 8 and sigmas[0] == 80.0 and sigmas[-2] == 0.02
    noise = SeededNoise(range(5, 8))
    latents = noise.randn(bundled.img_shape)
    with skipsearch.apply(bundled, loaded):
        x = get_sampler(loaded.sampler).fn(bundled.denoise, latents.to(torch.float64) * sigmas[0], sigmas,
                                           noise=noise, **loaded.sampler_options).x
    by_hand = bundled.data_range.to_uint8(x.float()).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(from_cli, by_hand)

    plain = run_cli(capsys, "sample", "--model", "edm", "--rho", "1", "--sampler", "unipc", "--nfe", "7",
                    "--n", "3", "--seed", "5", "-o", tmp_path / "plain.png", "--npz", tmp_path / "plain.npz")
    assert plain.code == 0, plain
    assert not np.array_equal(np.load(tmp_path / "plain.npz")["samples"], from_cli)  # the grid changed them


@pytest.mark.slow
def test_one_joint_schedule_for_several_nfes(tmp_path, capsys, monkeypatch):
    """--space joint --nfes 5,9: one study, its trials scored by the mean ratio to rho = 1, validated at each NFE,
    one best row per NFE, exported once with its NFE set; `best --nfe` and `export --nfe` find it."""
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    url = f"sqlite:///{tmp_path}/s.db"
    result = run_cli(capsys, "optimize", "--model", "edm", "--space", "joint", "--nfes", "5,9", "--trials", "4",
                     "--rungs", "16,32", "--final-n", "32", "--top-k", "1", "--rho-min", "0.5", "--rho-max", "1.0",
                     "--storage", url, "--export", tmp_path / "best.json")
    assert result.code == 0, result
    names = [n for n in optuna.get_all_study_names(url) if not n.endswith(".review")]
    assert len(names) == 1 and "-nfe5+9-joint-" in names[0]
    study = optuna.load_study(study_name=names[0], storage=url)
    untuned = study.trials[0]
    assert untuned.user_attrs["baseline"] == "untuned (rho=1)"
    assert untuned.value == pytest.approx(1.0)  # the study's own rho = 1: ratio 1 at every NFE
    assert set(untuned.user_attrs["nfe_values"]) == {"5", "9"}
    with BestStore(url) as store:
        rows = store.best("edm")
    assert {r.nfe for r in rows} == {5, 9}
    exported = SkipSchedule.load(tmp_path / "best.json")
    assert exported.nfe_set == (5, 9) and exported.sampler and exported.grid is not None
    listed = run_cli(capsys, "best", "--nfe", "5", "--storage", url, "--format", "json")
    assert listed.code == 0 and {r["nfe"] for r in json.loads(listed.out)} == {5}
    again = run_cli(capsys, "export", "--model", "edm", "--nfe", "5", "--storage", url, "-o", tmp_path / "five.json")
    assert again.code == 0, again
    five = SkipSchedule.load(tmp_path / "five.json")
    assert five.nfe == 5 and five.nfe_set == (5, 9)
    bad = run_cli(capsys, "optimize", "--model", "edm", "--nfes", "5,x", "--storage", url)
    assert_one_line_error(bad, "--nfes")
    even = run_cli(capsys, "optimize", "--model", "edm", "--sampler", "heun", "--nfes", "5,10", "--storage", url)
    assert_one_line_error(even, "heun cannot spend exactly 10")
