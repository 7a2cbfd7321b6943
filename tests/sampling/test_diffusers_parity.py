"""Discrete-time samplers against diffusers' own scheduler loops on the same UNet and noise (max |dx| <= 1e-4)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from skipsearch.models.diffusers_adapter import DiffusersAdapter  # noqa: E402
from skipsearch.sampling.samplers import sample  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    """The bundled diffusers DDPM (a trained model: its samples have the scale of real images)."""
    from skipsearch.models.bundled import BUNDLED_DDPM
    net = diffusers.UNet2DModel.from_pretrained(str(BUNDLED_DDPM), subfolder="unet", low_cpu_mem_usage=False)
    return net.eval().requires_grad_(False)


def _diffusers_loop(unet, scheduler, latents: torch.Tensor, steps: int) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(eps, t, x).prev_sample
    return x


def _ours(unet, scheduler, latents: torch.Tensor, sampler: str, steps: int, spacing: str) -> torch.Tensor:
    adapter = DiffusersAdapter(unet, name="parity", scheduler=scheduler)
    result = sample(adapter.denoise, latents, sampler=sampler, nfe=steps, sigma_min=adapter.sigma_min,
                    sigma_max=adapter.sigma_max, round_sigma=adapter.round_sigma, spacing=spacing,
                    timestep_sigmas=adapter.timestep_sigmas, vp_start=True)
    return result.x.float()


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [5, 10])
def test_ddim_matches_diffusers_ddim_scheduler(unet, spacing: str, steps: int) -> None:
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                        set_alpha_to_one=True, timestep_spacing=spacing)
    latents = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    reference = _diffusers_loop(unet, scheduler, latents, steps)
    ours = _ours(unet, scheduler, latents, "ddim", steps, spacing)
    assert (ours - reference).abs().max() <= 1e-4
    assert reference.std() > 0.05  # a real, non-constant result


@pytest.mark.parametrize("steps", [5, 10])
def test_dpmpp_2m_matches_diffusers_dpm_solver_multistep(unet, steps: int) -> None:
    scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                                      algorithm_type="dpmsolver++", solver_order=2,
                                                      timestep_spacing="linspace", final_sigmas_type="zero")
    latents = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    reference = _diffusers_loop(unet, scheduler, latents, steps)
    ours = _ours(unet, scheduler, latents, "dpmpp_2m", steps, "linspace")
    assert (ours - reference).abs().max() <= 1e-4
