"""Samplers against the closed-form Gaussian ODE, true NFE counts, seeded noise and NFE budgeting."""

from __future__ import annotations

import math

import pytest
import torch

from skipsearch.sampling.grids import karras_sigmas
from skipsearch.sampling.noise import SeededNoise
from skipsearch.sampling.samplers import (
    SAMPLERS,
    NFEError,
    SampleResult,
    UnknownSamplerError,
    get_sampler,
    sample,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_unipc,
    steps_for_nfe,
)
from skipsearch.schedule import Churn

MU, STD = 0.3, 0.5  # per-dimension Gaussian data N(MU, STD^2)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser of N(MU, STD^2) data: E[y | y + sigma n = x]."""
    sigma = sigma.reshape(-1, *[1] * (x.ndim - 1))
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def exact_ode(x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
    """Probability-flow ODE solution for Gaussian data: x - MU scales with sqrt(STD^2 + sigma^2)."""
    return MU + (x_start - MU) * math.sqrt(STD**2 + sigma_end**2) / math.sqrt(STD**2 + sigma_start**2)


class CountingDenoiser:
    """Wraps a denoiser, counts its calls and checks the calling convention (sigma is a 1-D [B] tensor)."""

    def __init__(self) -> None:
        self.calls = 0
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        assert torch.all(sigma == sigma[0])
        self.calls += 1
        self.sigmas.append(float(sigma[0]))
        # Return float32 like EDM's networks; the samplers must cast back to float64.
        return gaussian_denoiser(x, sigma).float()


def latents(n: int = 7) -> torch.Tensor:
    """Deterministic standard-normal-like latents in [-3, 3], shaped [n, 1, 1, 1]."""
    return torch.linspace(-3.0, 3.0, n, dtype=torch.float64).reshape(n, 1, 1, 1)


def solve_error(name: str, sigmas: torch.Tensor, **options: object) -> float:
    """Max error of a sampler against the exact ODE solution at the schedule's last sigma."""
    x_start = latents() * sigmas[0]
    result = SAMPLERS[name].fn(gaussian_denoiser, x_start, sigmas, **options)
    expected = exact_ode(x_start, float(sigmas[0]), float(sigmas[-1]))
    return float((result.x - expected).abs().max())


def positive_sigmas(steps: int) -> torch.Tensor:
    """A Karras schedule of ``steps`` steps that ends at SIGMA_MIN instead of 0 (no first-order final step)."""
    return karras_sigmas(steps + 1, SIGMA_MIN, SIGMA_MAX)[:-1]


# --------------------------------------------------------------------------------------------------------------------
# Schedule


def test_karras_sigmas_formula_and_edges() -> None:
    sigmas = karras_sigmas(18)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (19,)
    i = 5
    expected = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert float(sigmas[i]) == pytest.approx(expected, rel=1e-14)
    assert float(sigmas[0]) == pytest.approx(80.0, rel=1e-14)
    assert float(sigmas[17]) == pytest.approx(0.002, rel=1e-12)
    assert float(sigmas[18]) == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert karras_sigmas(1, 0.5, 3.0).tolist() == pytest.approx([3.0, 0.0], rel=1e-14)


def test_karras_sigmas_round_sigma_applied_before_the_zero() -> None:
    sigmas = karras_sigmas(6, round_sigma=lambda s: torch.round(s * 10) / 10 + 0.05)
    assert sigmas[-1] == 0.0
    assert torch.allclose((sigmas[:-1] - 0.05) * 10, torch.round((sigmas[:-1] - 0.05) * 10))


# --------------------------------------------------------------------------------------------------------------------
# NFE accounting

NFE_CASES = [
    ("heun", 1, {}), ("heun", 9, {}), ("heun", 19, {}), ("heun", 35, {}),
    ("euler", 1, {}), ("euler", 10, {}),
    ("dpmpp_2m", 1, {}), ("dpmpp_2m", 2, {}), ("dpmpp_2m", 9, {}),
    ("ddim", 7, {}), ("ddim", 7, {"eta": 1.0}), ("ddim", 12, {"eta": 0.5}),
    ("unipc", 1, {}), ("unipc", 2, {}),
    *[("unipc", nfe, {"order": order}) for order in (1, 2, 3) for nfe in (5, 9)],
    ("unipc", 9, {"variant": "bh2"}), ("unipc", 9, {"lower_order_final": False}),
]


@pytest.mark.parametrize(("name", "nfe", "options"), NFE_CASES)
def test_counted_calls_equal_reported_and_requested_nfe(name: str, nfe: int, options: dict) -> None:
    denoiser = CountingDenoiser()
    noise = SeededNoise(range(3))
    result = sample(denoiser, noise.randn((2, 4, 4)), sampler=name, nfe=nfe, sigma_min=SIGMA_MIN,
                    sigma_max=SIGMA_MAX, noise=noise, **options)
    assert isinstance(result, SampleResult)
    assert denoiser.calls == result.nfe == nfe
    assert result.x.dtype == torch.float64 and result.x.shape == (3, 2, 4, 4)
    assert torch.isfinite(result.x).all()


@pytest.mark.parametrize("steps", [1, 2, 6, 10])
def test_nfe_with_churn_and_with_schedules_ending_above_zero(steps: int) -> None:
    noise = SeededNoise([4, 5])
    churn = Churn(s_churn=10.0)
    for name in ("heun", "euler", "ddim"):
        denoiser = CountingDenoiser()
        x = noise.randn((3,)).double() * SIGMA_MAX
        result = SAMPLERS[name].fn(denoiser, x, karras_sigmas(steps), noise=noise, churn=churn)
        assert denoiser.calls == result.nfe == SAMPLERS[name].nfe_of_steps(steps)
    # A schedule that stops at sigma_min: Heun corrects every step, the others still spend one call per step.
    for name in SAMPLERS:
        denoiser = CountingDenoiser()
        result = SAMPLERS[name].fn(denoiser, latents() * SIGMA_MAX, positive_sigmas(steps),
                                   noise=SeededNoise(range(7)))  # multistep's noise between its points
        expected = 2 * steps if name == "heun" else min(steps, SAMPLERS[name].max_steps or steps)  # onestep: 1
        assert denoiser.calls == result.nfe == expected


def test_unipc_evaluates_every_schedule_sigma_but_zero_once() -> None:
    denoiser = CountingDenoiser()
    sigmas = karras_sigmas(9)
    sample_unipc(denoiser, latents() * SIGMA_MAX, sigmas)
    assert denoiser.sigmas == pytest.approx(sigmas[:-1].tolist(), rel=1e-12)


def test_unipc_step_to_zero_returns_the_last_data_prediction() -> None:
    sigmas = karras_sigmas(6)
    x_start = latents() * SIGMA_MAX
    seen: list[torch.Tensor] = []

    def recording(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(gaussian_denoiser(x, sigma))
        return seen[-1]

    result = sample_unipc(recording, x_start, sigmas)
    assert torch.equal(result.x, seen[-1])


# --------------------------------------------------------------------------------------------------------------------
# Accuracy against the closed form

ACCURACY = [
    ("heun", {}, 128, 2e-3),
    ("dpmpp_2m", {}, 128, 2e-3),
    ("unipc", {"order": 3}, 128, 1e-4),
    ("unipc", {"order": 3, "variant": "bh2"}, 128, 1e-4),
    ("unipc", {"order": 2}, 128, 5e-4),
    ("euler", {}, 128, 4e-2),
    ("ddim", {}, 128, 4e-2),
]


@pytest.mark.parametrize(("name", "options", "steps", "tol"), ACCURACY)
def test_samplers_agree_with_the_exact_ode(name: str, options: dict, steps: int, tol: float) -> None:
    # Outputs are O(1) here (|x| <= MU + 3 STD); the step to sigma = 0 adds only O(sigma_min^2) error.
    assert solve_error(name, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), **options) < tol


@pytest.mark.parametrize(("name", "options", "low", "high"), [
    ("heun", {}, 3.5, 4.6),
    ("dpmpp_2m", {}, 3.5, 4.8),
    ("unipc", {"order": 1}, 3.5, 4.8),  # UniC lifts the first-order predictor to second order
    ("unipc", {"order": 2}, 7.0, 10.0),
    ("unipc", {"order": 3}, 12.0, 18.0),
    ("euler", {}, 1.8, 2.2),
])
def test_convergence_order(name: str, options: dict, low: float, high: float) -> None:
    ratio = solve_error(name, positive_sigmas(32), **options) / solve_error(name, positive_sigmas(64), **options)
    assert low < ratio < high


@pytest.mark.parametrize(("order", "low", "high"), [(1, 1.8, 2.2), (2, 3.5, 4.6), (3, 7.0, 9.0)])
def test_unipc_predictor_alone_has_its_nominal_order(order: int, low: float, high: float) -> None:
    errors = [solve_error("unipc", positive_sigmas(steps), order=order, corrector=False) for steps in (64, 128)]
    assert low < errors[0] / errors[1] < high


def test_unipc_order_3_beats_order_1_at_the_same_nfe() -> None:
    # At very few steps this 1-D Gaussian (whose D is a sigmoid in lambda of width ~1) favours low orders, so the
    # comparison is made where the steps resolve it, as the convergence tests do.
    for steps, factor in ((32, 4), (64, 10)):
        sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
        assert solve_error("unipc", sigmas, order=3) * factor < solve_error("unipc", sigmas, order=1)


def test_ddim_eta_zero_is_euler() -> None:
    sigmas = karras_sigmas(12)
    x_start = latents() * SIGMA_MAX
    assert torch.equal(sample_ddim(gaussian_denoiser, x_start, sigmas).x,
                       sample_euler(gaussian_denoiser, x_start, sigmas).x)


def test_dpmpp_2m_first_step_is_ddim() -> None:
    # With one step to a positive sigma both are the first-order exponential integrator (== Euler in VE form).
    sigmas = torch.tensor([80.0, 3.0], dtype=torch.float64)
    x_start = latents() * SIGMA_MAX
    assert torch.allclose(sample_dpmpp_2m(gaussian_denoiser, x_start, sigmas).x,
                          sample_euler(gaussian_denoiser, x_start, sigmas).x, rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------------------------------------------------
# Stochastic sampling


def propagated_std(sigmas: torch.Tensor, *, gamma: float = 0.0, eta: float = 0.0, heun: bool = True) -> float:
    """Exact std of the samples when the start has the exact marginal, from the linear recursion of one step.

    For Gaussian data every step maps x - MU linearly (D - MU = c(sigma) (x - MU)) and adds independent noise, so
    the variance follows a scalar recursion; this checks the injected noise's size, not just its presence.
    """
    def c(sigma: float) -> float:
        return STD**2 / (STD**2 + sigma**2)

    s = sigmas.tolist()
    variance = STD**2 + s[0] ** 2
    for s_cur, s_next in zip(s, s[1:]):
        s_hat = s_cur * (1 + gamma)
        variance += s_hat**2 - s_cur**2  # churn
        up = min(s_next, eta * math.sqrt(s_next**2 * (s_hat**2 - s_next**2) / s_hat**2))
        down = math.sqrt(s_next**2 - up**2)
        slope = (1 - c(s_hat)) / s_hat  # (x - D)/sigma per unit of x - MU
        gain = 1 + (down - s_hat) * slope
        if heun and s_next > 0:
            gain = 1 + (s_next - s_hat) * 0.5 * (slope + (1 - c(s_next)) / s_next * gain)
        variance = gain**2 * variance + up**2
    return math.sqrt(variance)


def exact_marginal_start(noise: SeededNoise, dims: int) -> torch.Tensor:
    """Samples of the exact marginal at SIGMA_MAX, standardised so only later noise adds sampling error."""
    z = noise.randn((dims,)).double()
    return MU + math.sqrt(STD**2 + SIGMA_MAX**2) * (z - z.mean()) / z.std()


def test_heun_churn_keeps_the_data_marginal() -> None:
    # 4000 seeds x 8 independent dimensions: the std's sampling error is ~0.4 %. (Kept below 32768 elements, where
    # torch would split elementwise ops over threads, which is slow on a busy machine.)
    n, dims, steps = 4000, 8, 64
    noise = SeededNoise(range(n))
    x_start = exact_marginal_start(noise, dims)
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    churned = sample_heun(gaussian_denoiser, x_start, sigmas, noise=noise, churn=Churn(s_churn=80.0))
    plain = sample_heun(gaussian_denoiser, x_start, sigmas)
    assert churned.nfe == plain.nfe == 2 * steps - 1
    x = churned.x.flatten()
    assert abs(float(x.mean()) - MU) < 4 * STD / math.sqrt(n * dims)
    expected = propagated_std(sigmas, gamma=math.sqrt(2) - 1)  # S_churn/N > sqrt(2)-1: gamma is capped
    assert float(x.std()) == pytest.approx(expected, rel=0.012)
    assert float(x.std()) == pytest.approx(STD, rel=0.03)  # and the discretisation error is small
    # Without the noise (or with twice it) the std would be far off; and the samples really moved off the ODE map.
    assert propagated_std(sigmas, gamma=math.sqrt(2) - 1) < 0.9 * math.sqrt(2 * STD**2)
    correlation = torch.corrcoef(torch.stack([x, plain.x.flatten()]))[0, 1]
    assert float(correlation) < 0.9


def test_ddim_ancestral_noise_has_the_right_size() -> None:
    n, dims, steps = 4000, 8, 32
    noise = SeededNoise(range(10_000, 10_000 + n))
    sigmas = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    result = sample_ddim(gaussian_denoiser, exact_marginal_start(noise, dims), sigmas, noise=noise, eta=1.0)
    assert abs(float(result.x.mean()) - MU) < 4 * STD / math.sqrt(n * dims)
    # Ancestral sampling is first order, so at 32 steps the std is still well below STD; check the exact value.
    assert float(result.x.std()) == pytest.approx(propagated_std(sigmas, eta=1.0, heun=False), rel=0.012)


def test_propagated_std_converges_to_the_data_std() -> None:
    # The reference recursion itself: finer schedules approach STD for churned Heun and ancestral DDIM.
    fine = karras_sigmas(2048, SIGMA_MIN, SIGMA_MAX)
    assert propagated_std(fine, gamma=math.sqrt(2) - 1) == pytest.approx(STD, rel=2e-3)
    assert propagated_std(fine, eta=1.0, heun=False) == pytest.approx(STD, rel=4e-3)  # first order


def test_churn_range_limits_where_noise_is_drawn() -> None:
    # S_min/S_max outside the whole schedule: no gamma > 0, so no noise object is needed and the result is the ODE's.
    sigmas = karras_sigmas(10)
    x_start = latents() * SIGMA_MAX
    churn = Churn(s_churn=40.0, s_min=100.0, s_max=200.0)
    assert torch.equal(sample_heun(gaussian_denoiser, x_start, sigmas, churn=churn).x,
                       sample_heun(gaussian_denoiser, x_start, sigmas).x)


def test_stochastic_settings_without_noise_and_churn_on_deterministic_samplers_are_rejected() -> None:
    sigmas = karras_sigmas(5)
    x_start = latents() * SIGMA_MAX
    with pytest.raises(ValueError, match="noise"):
        sample_heun(gaussian_denoiser, x_start, sigmas, churn=Churn(s_churn=5.0))
    with pytest.raises(ValueError, match="noise"):
        sample_ddim(gaussian_denoiser, x_start, sigmas, eta=1.0)
    for fn in (sample_unipc, sample_dpmpp_2m):
        with pytest.raises(ValueError, match="churn"):
            fn(gaussian_denoiser, x_start, sigmas, noise=SeededNoise(range(7)), churn=Churn(s_churn=5.0))
    # Churn is searched only for the EDM samplers; DDIM's own noise is its eta option (0: deterministic DDIM).
    assert [name for name, spec in SAMPLERS.items() if spec.stochastic] == ["heun", "euler"]


def test_round_sigma_reaches_churned_noise_levels() -> None:
    grid = karras_sigmas(40)[:-1]

    def snap(sigma: torch.Tensor) -> torch.Tensor:
        index = (sigma.reshape(-1, 1) - grid.reshape(1, -1)).abs().argmin(dim=1)
        return grid[index].reshape(sigma.shape)

    denoiser = CountingDenoiser()
    noise = SeededNoise(range(7))
    sample(denoiser, noise.randn((1, 1, 1)), sampler="heun", nfe=19, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
           round_sigma=snap, noise=noise, churn=Churn(s_churn=20.0))
    assert all(any(abs(s - g) < 1e-12 * g for g in grid.tolist()) for s in denoiser.sigmas)


# --------------------------------------------------------------------------------------------------------------------
# Seeded noise and determinism


def sample_with_seeds(seeds: list[int]) -> torch.Tensor:
    noise = SeededNoise(seeds)
    return sample(gaussian_denoiser, noise.randn((2, 3, 3)), sampler="heun", nfe=9, sigma_min=SIGMA_MIN,
                  sigma_max=SIGMA_MAX, noise=noise, churn=Churn(s_churn=30.0, s_noise=1.007)).x


def test_same_seeds_give_identical_samples() -> None:
    assert torch.equal(sample_with_seeds([3, 1, 4]), sample_with_seeds([3, 1, 4]))
    assert not torch.equal(sample_with_seeds([3, 1, 4])[0], sample_with_seeds([5, 1, 4])[0])


def test_each_image_depends_only_on_its_seed() -> None:
    alone = sample_with_seeds([42])[0]
    assert torch.equal(sample_with_seeds([7, 42, 9])[1], alone)
    assert torch.equal(sample_with_seeds([42, 1, 2, 3, 4])[0], alone)
    assert torch.equal(sample_with_seeds([2**32 + 42])[0], alone)  # seeds are taken modulo 2**32


def test_seeded_noise_draws() -> None:
    noise = SeededNoise([0, 1, 2])
    labels = noise.randint(10)
    assert labels.dtype == torch.int64 and labels.shape == (3,) and bool(((labels >= 0) & (labels < 10)).all())
    draws = noise.randn((4, 2))
    assert draws.dtype == torch.float32 and draws.shape == (3, 4, 2)
    like = noise.randn_like(torch.zeros(3, 5, dtype=torch.float64))
    assert like.dtype == torch.float64 and like.shape == (3, 5)
    # The first draw of a fresh generator for seed 1 is the row drawn for image 1.
    assert torch.equal(SeededNoise([1]).randn((4, 2))[0], SeededNoise([0, 1]).randn((4, 2))[1])
    with pytest.raises(ValueError, match="batch"):
        noise.randn_like(torch.zeros(2, 5))


# --------------------------------------------------------------------------------------------------------------------
# NFE budgets and names


def test_steps_for_nfe() -> None:
    assert steps_for_nfe("heun", 35) == 18
    assert steps_for_nfe("heun", 19) == 10
    assert steps_for_nfe("heun", 1) == 1
    assert steps_for_nfe("unipc", 9) == 9
    assert all(steps_for_nfe(name, spec.nfe_of_steps(13)) == 13 for name, spec in SAMPLERS.items()
               if spec.max_steps is None)


def test_nfe_errors_name_the_nearest_valid_budgets() -> None:
    with pytest.raises(NFEError) as info:
        steps_for_nfe("heun", 10)
    assert str(info.value) == ("heun cannot spend exactly 10 denoiser calls (NFE = 2*steps - 1): "
                               "use --nfe 9 or --nfe 11")
    with pytest.raises(NFEError, match="^NFE must be a positive integer, got 0$"):
        steps_for_nfe("heun", 0)
    with pytest.raises(NFEError, match="positive integer"):
        steps_for_nfe("unipc", -3)
    with pytest.raises(NFEError):
        sample(gaussian_denoiser, latents(), sampler="heun", nfe=36, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)


def test_unknown_sampler_lists_the_known_names() -> None:
    with pytest.raises(UnknownSamplerError) as info:
        steps_for_nfe("lms", 10)
    assert isinstance(info.value, ValueError)
    assert all(name in str(info.value) for name in ("heun", "euler", "dpmpp_2m", "unipc", "ddim"))
    with pytest.raises(UnknownSamplerError):
        get_sampler("Heun")
    with pytest.raises(UnknownSamplerError):
        sample(gaussian_denoiser, latents(), sampler="dpm", nfe=9, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
