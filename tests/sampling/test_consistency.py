"""Consistency models: the boundary-condition parametrisation, the onestep / multistep samplers (NFE contract,
diffusers parity, seeded noise), which samplers go with which models, and the consistency distillation loss."""

from __future__ import annotations

import pytest
import torch
from helpers.cli import assert_one_line_error, run_cli

from skipsearch.models.checkpoints import create_network
from skipsearch.models.edm import EDMAdapter
from skipsearch.models.parametrization import ConsistencyNetwork, PreconditionedParametrization, is_consistency_model
from skipsearch.sampling.errors import NFEError, SamplerOptionError
from skipsearch.sampling.generate import generate
from skipsearch.sampling.noise import SeededNoise
from skipsearch.sampling.samplers import (
    CONSISTENCY,
    sample,
    sample_onestep,
    samplers_for_models,
)
from skipsearch.schedule import SkipSchedule
from skipsearch.search.definition import default_sampler
from skipsearch.search.spaces import samplers_for
from skipsearch.training.consistency import ConsistencyDistillationLoss, heun_step, karras_levels
from skipsearch.training.loop import TrainConfig, train

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def tiny_unet(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A small random SongUNet whose output is not near zero (EDM zero-initialises its last layers)."""
    torch.manual_seed(seed)
    net = create_network("EDMPrecond", img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=8,
                         channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return net.model.to(dtype).eval().requires_grad_(False)


def consistency_net(c_noise: str = "edm", dtype: torch.dtype = torch.float32) -> ConsistencyNetwork:
    return ConsistencyNetwork(tiny_unet(dtype=dtype), img_resolution=8, img_channels=1, c_noise=c_noise)


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.fn(x, sigma)


@pytest.mark.parametrize("c_noise", ["edm", "cm"])
def test_consistency_function_is_the_identity_at_sigma_min(c_noise: str) -> None:
    net = consistency_net(c_noise)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(net(x, torch.full((3,), SIGMA_MIN)), x)
    assert not torch.allclose(net(x, torch.full((3,), 1.0)), x)
    result = sample_onestep(lambda x, s: net(x.float(), s).double(), x.double(), torch.tensor([SIGMA_MIN, 0.0]))
    assert torch.equal(result.x, x.double()) and result.nfe == 1


def test_consistency_scalings() -> None:
    p = PreconditionedParametrization("consistency", SIGMA_MIN, SIGMA_MAX, 0.5, "cm")
    s = torch.tensor([SIGMA_MIN, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = p.coefficients(s)
    assert c_skip[0] == 1 and c_out[0] == 0
    torch.testing.assert_close(c_skip, 0.25 / ((s - SIGMA_MIN) ** 2 + 0.25))
    torch.testing.assert_close(c_out, (s - SIGMA_MIN) * 0.5 / (s**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in, 1 / (s**2 + 0.25).sqrt())
    torch.testing.assert_close(c_noise, 250 * s.log())
    with pytest.raises(ValueError, match="c_noise"):
        PreconditionedParametrization("consistency", c_noise="ln")


@pytest.mark.parametrize(("sampler", "nfe", "options"), [
    ("onestep", 1, {}), ("multistep", 1, {}), ("multistep", 2, {}), ("multistep", 4, {}),
    ("multistep", 2, {"knots": "0,22,39", "knot_steps": 40}), ("multistep", 3, {"spacing": "log-snr"})])
def test_each_sampler_spends_exactly_its_nfe(sampler: str, nfe: int, options: dict) -> None:
    net = consistency_net()
    model = Counting(lambda x, s: net(x.float(), s))
    result = sample(model, torch.randn(2, 1, 8, 8), sampler=sampler, nfe=nfe, sigma_min=SIGMA_MIN,
                    sigma_max=SIGMA_MAX, noise=SeededNoise([0, 1]), **options)
    assert result.nfe == model.calls == nfe


def test_nfe_a_sampler_cannot_spend_is_refused() -> None:
    with pytest.raises(NFEError, match="--nfe 1"):
        sample(lambda x, s: x, torch.randn(1, 1, 8, 8), sampler="onestep", nfe=2, sigma_min=SIGMA_MIN,
               sigma_max=SIGMA_MAX)
    with pytest.raises(SamplerOptionError, match="--nfe 2"):
        sample(lambda x, s: x, torch.randn(1, 1, 8, 8), sampler="multistep", nfe=3, sigma_min=SIGMA_MIN,
               sigma_max=SIGMA_MAX, noise=SeededNoise([0]), knots="0,22,39")
    with pytest.raises(SamplerOptionError, match="increasing"):
        sample(lambda x, s: x, torch.randn(1, 1, 8, 8), sampler="multistep", nfe=2, sigma_min=SIGMA_MIN,
               sigma_max=SIGMA_MAX, noise=SeededNoise([0]), knots="0,39,22")


def test_multistep_one_point_is_onestep() -> None:
    net = consistency_net()
    x = torch.randn(2, 1, 8, 8)
    one = sample(lambda x, s: net(x.float(), s), x, sampler="onestep", nfe=1, sigma_min=SIGMA_MIN,
                 sigma_max=SIGMA_MAX)
    multi = sample(lambda x, s: net(x.float(), s), x, sampler="multistep", nfe=1, sigma_min=SIGMA_MIN,
                   sigma_max=SIGMA_MAX)
    assert torch.equal(one.x, multi.x)


def _diffusers_multistep(unet, latents: torch.Tensor, timesteps: list[int], seed: int) -> torch.Tensor:
    """diffusers' CMStochasticIterativeScheduler loop (ConsistencyModelPipeline's, without clipping)."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=SIGMA_MIN,
                                                         sigma_max=SIGMA_MAX, clip_denoised=False)
    scheduler.set_timesteps(timesteps=timesteps)
    generator = torch.Generator().manual_seed(seed)
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(x, t)
        out = unet(scaled, t.reshape(1).to(x.dtype), class_labels=None)
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize(("timesteps", "knots"), [([22, 0], "0,22,39"), ([0], "0,39"), ([30, 17, 0], "0,17,30,39")])
def test_multistep_matches_diffusers_consistency_scheduler(timesteps: list[int], knots: str) -> None:
    """Same random network (float64), same noise: diffusers draws each step's noise from one generator, and
    SeededNoise with that seed draws the same values for a single image."""
    net = consistency_net("cm", torch.float64)
    latents = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ours = sample(net, latents, sampler="multistep", nfe=len(timesteps), sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                  noise=SeededNoise([123]), knots=knots, knot_steps=40)
    reference = _diffusers_multistep(net.model, latents, timesteps, seed=123)
    # diffusers keeps its sigmas in float32: agreement to float32 precision.
    torch.testing.assert_close(ours.x, reference, rtol=1e-5, atol=1e-5)
    assert (ours.x - reference).abs().max() < 1e-5 < ours.x.abs().max()


def test_multistep_noise_is_per_seed() -> None:
    net = consistency_net()
    latents = SeededNoise([5, 6, 7]).randn((1, 8, 8))

    def run(seeds: list[int], x: torch.Tensor) -> torch.Tensor:
        return sample(lambda x, s: net(x.float(), s), x, sampler="multistep", nfe=3, sigma_min=SIGMA_MIN,
                      sigma_max=SIGMA_MAX, noise=SeededNoise(seeds)).x

    together = run([5, 6, 7], latents)
    alone = run([6], latents[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(together, run([8, 9, 10], latents))


def test_samplers_go_with_their_kind_of_model() -> None:
    assert set(samplers_for_models(CONSISTENCY)) == {"onestep", "multistep"}
    assert samplers_for((1,), CONSISTENCY) == ("onestep", "multistep")
    assert samplers_for((2,), CONSISTENCY) == ("multistep",)
    diffusion = samplers_for((1, 3))
    assert "onestep" not in diffusion and "multistep" not in diffusion and "euler" in diffusion
    assert default_sampler("cd-edm") == "multistep" and default_sampler("edm") == "heun"
    cm = EDMAdapter(consistency_net(), "tiny-cm")
    edm = EDMAdapter(create_network("EDMPrecond", img_resolution=8, img_channels=1, model_type="SongUNet",
                                    model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[]), "e")
    assert is_consistency_model(cm) and not is_consistency_model(edm)
    with pytest.raises(SamplerOptionError, match="tiny-cm is a consistency model: use --sampler onestep"):
        generate(cm, sampler="heun", nfe=3, seeds=[0])
    with pytest.raises(SamplerOptionError, match="for consistency models"):
        generate(edm, sampler="onestep", nfe=1, seeds=[0])


def test_a_default_sampler_from_a_consistency_model_file(tmp_path) -> None:
    path = tmp_path / "cm.toml"
    path.write_text('[model]\nname = "cm"\nfactory = "x.py:build"\n[parametrization]\ntype = "consistency"\n'
                    'c_noise = "cm"\n')
    assert default_sampler(str(path)) == "multistep"
    from skipsearch.models.spec import parse_model_file
    file = parse_model_file(path)
    assert file.parametrization.type == "consistency" and file.parametrization.c_noise == "cm"


def test_rho_acts_on_a_consistency_model_like_any_other() -> None:
    cm = EDMAdapter(consistency_net(), "tiny-cm")
    seeds = list(range(4))
    plain = generate(cm, sampler="multistep", nfe=2, seeds=seeds, batch_size=4).images
    same = generate(cm, sampler="multistep", nfe=2, seeds=seeds, batch_size=4,
                    schedule=SkipSchedule.identity(len(cm.skip_points))).images
    tuned = generate(cm, sampler="multistep", nfe=2, seeds=seeds, batch_size=4,
                     schedule=SkipSchedule.constant(0.5, len(cm.skip_points))).images
    assert torch.equal(plain, same) and not torch.equal(plain, tuned)


def test_distillation_loss_trains_a_student_towards_its_target() -> None:
    teacher = create_network("EDMPrecond", img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=8,
                             channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)
    student = ConsistencyNetwork(tiny_unet(), img_resolution=8, img_channels=1)
    loss_fn = ConsistencyDistillationLoss(teacher, num_scales=6)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    losses = loss_fn(student.train().requires_grad_(True), images[:4], None, torch.Generator().manual_seed(0))
    assert losses.shape == (4,) and bool((losses >= 0).all()) and losses.requires_grad
    before = [p.clone() for p in loss_fn.target.parameters()]
    _, result = train(student, images, config=TrainConfig(steps=3, batch_size=4, lr=1e-3, lr_warmup_steps=1,
                                                          log_every=1), loss_fn=loss_fn)
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(v)) for _, v in result.loss_history)
    after = list(loss_fn.target.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the target followed the student
    assert not any(p.requires_grad for p in loss_fn.teacher.parameters())


def test_teacher_heun_step_and_levels() -> None:
    levels = karras_levels(18, SIGMA_MIN, SIGMA_MAX)
    assert levels[0] == pytest.approx(SIGMA_MAX) and levels[-1] == pytest.approx(SIGMA_MIN)
    assert bool((levels[1:] < levels[:-1]).all())
    x = torch.randn(2, 1, 8, 8)
    zero = heun_step(lambda x, s, labels: torch.zeros_like(x), x, torch.full((2, 1, 1, 1), 2.0),
                     torch.full((2, 1, 1, 1), 1.0), None)
    torch.testing.assert_close(zero, x / 2)  # D = 0: dx/dsigma = x/sigma, so x scales with sigma exactly


@pytest.mark.slow
def test_the_shipped_consistency_model_samples_digits_in_one_step() -> None:
    import json

    from skipsearch.models import load_model
    from skipsearch.models.checkpoints import file_sha256
    from skipsearch.models.consistency import CD_WEIGHTS
    from skipsearch.sampling.generate import degenerate_reason
    adapter = load_model("cd-edm")
    assert is_consistency_model(adapter) and len(adapter.skip_points) == 9 and adapter.dataset == "mnist"
    card = json.loads(CD_WEIGHTS.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(CD_WEIGHTS) and card["parametrization"]["type"] == "consistency"
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(adapter.denoise(x, torch.full((4,), adapter.sigma_min)), x)
    images = generate(adapter, sampler="onestep", nfe=1, seeds=list(range(32)), batch_size=32).images
    assert degenerate_reason(adapter.data_range.from_uint8(images), images, adapter.data_range) is None
    ink = (images > 128).float().mean(dim=(1, 2, 3))
    assert bool(((ink > 0.03) & (ink < 0.5)).all())  # every image a stroke on a dark background, as MNIST
    assert images.float().std(dim=0).mean() > 20  # not one image 32 times


@pytest.mark.slow
def test_a_one_step_study_runs_end_to_end(tmp_path, monkeypatch) -> None:
    from skipsearch.optimization import optimize
    from skipsearch.settings import Settings
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    result = optimize("cd-edm", 1, "onestep", storage=f"sqlite:///{tmp_path}/s.db", device="cpu",
                      export=tmp_path / "best.json", settings=Settings.from_env(), trials=3, proxy__rungs=(24, 48),
                      search__final_n=48, search__validate_top_k=1, search__pruner="none",
                      space_bounds__calibrate=False, space_bounds__rho_min=0.7, space_bounds__rho_max=1.1)
    assert result.counts["complete"] == 3 and result.validations
    assert "onestep-nfe1" in result.study_name and (tmp_path / "best.json").is_file()


def test_a_consistency_model_file_loads_as_a_consistency_model(tmp_path) -> None:
    """A model file over a plain UNet (the repository's catemb example, random weights) with consistency scalings."""
    from pathlib import Path

    from skipsearch.models import load_model
    factory = Path(__file__).resolve().parents[2] / "models" / "catemb_unet.py"
    path = tmp_path / "cm.toml"
    path.write_text(f'[model]\nname = "cm-file"\nfactory = "{factory}:build"\n'
                    '[model.kwargs]\nchannels = 8\nemb_dim = 16\n[parametrization]\ntype = "consistency"\n'
                    '[data]\nshape = [1, 28, 28]\n')
    adapter = load_model(str(path))
    assert is_consistency_model(adapter) and adapter.parametrization.c_noise == "edm"
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(adapter.denoise(x, torch.full((2,), SIGMA_MIN, dtype=torch.float64)), x)
    assert default_sampler(str(path)) == "multistep"


def test_the_cli_refuses_a_sampler_of_the_other_kind_in_one_line(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    result = run_cli(capsys, "optimize", "--model", "cd-edm", "--sampler", "heun", "--nfe", "3", "--no-check",
                     "--device", "cpu")
    assert_one_line_error(result, "sampler heun is for diffusion models, but cd-edm is a consistency model",
                          "--sampler onestep | multistep")
    result = run_cli(capsys, "optimize", "--model", "edm", "--sampler", "onestep", "--nfe", "1", "--no-check",
                     "--device", "cpu")
    assert_one_line_error(result, "sampler onestep is for consistency models, but edm is a diffusion model")
    result = run_cli(capsys, "optimize", "--model", "cd-edm", "--sampler", "onestep", "--nfe", "2", "--no-check",
                     "--device", "cpu")
    assert_one_line_error(result, "onestep cannot spend exactly 2", "--nfe 1", "--sampler multistep")
