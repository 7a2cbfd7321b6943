"""Samplers for denoisers D(x; sigma) in the k-diffusion convention, with exact counts of denoiser calls (NFE).

Every sampler is a short pure function ``fn(denoiser, x, sigmas, *, noise, churn, **options) -> SampleResult``.
``x`` is the state at ``sigmas[0]`` (already scaled by it), ``sigmas`` is a 1-D decreasing schedule that normally ends
in 0 (see :func:`karras_sigmas`). The state and all sigma arithmetic are float64 like EDM, and the denoiser output is
cast to float64. ``SampleResult.nfe`` counts the calls actually made; it is never computed from a formula.

The VE parametrisation is used throughout: alpha_t = 1, sigma_t = sigma, lambda = -ln sigma, and the denoiser is the
data prediction, so the exponential-integrator samplers (DPM-Solver++(2M), UniPC) use their data-prediction updates.
Written from the published algorithms (EDM Alg. 2, DPM-Solver++, UniPC); no code is copied from EDM.

``onestep`` and ``multistep`` sample consistency models (Song et al. 2023): their "denoiser" is the consistency
function f(x, sigma), which maps any point of a trajectory to its end. ``SamplerSpec.models`` keeps each kind of
sampler to its kind of model.
"""

from __future__ import annotations

import inspect
import math
import operator
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from skipsearch.registry import Registry
from skipsearch.sampling.errors import GridError, NFEError, SamplerOptionError, UnknownSamplerError
from skipsearch.sampling.grids import SPACINGS, RoundSigma, grid_sigmas, karras_sigmas, sampling_sigmas
from skipsearch.sampling.noise import SeededNoise
from skipsearch.schedule import Churn, TimeGrid
from skipsearch.schedule.limits import MAX_NFE

__all__ = [
    "CONSISTENCY",
    "DIFFUSION",
    "Denoiser",
    "GridError",
    "NFEError",
    "SAMPLERS",
    "SampleResult",
    "SamplerOption",
    "SamplerOptionError",
    "SamplerSpec",
    "SeededNoise",
    "UnknownSamplerError",
    "check_sampler_for_model",
    "check_sampler_options",
    "get_sampler",
    "karras_sigmas",
    "sample",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sample_multistep",
    "sample_onestep",
    "sample_unipc",
    "sampler_option_types",
    "steps_for_nfe",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers


@dataclass
class SampleResult:
    """Final state (float64, at the schedule's last sigma) and the number of denoiser calls made."""

    x: torch.Tensor
    nfe: int


class _CountingDenoiser:
    """Calls the denoiser with a per-image sigma vector [B], casts its output to x's dtype and counts the calls."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(x, x.new_ones([x.shape[0]]) * sigma).to(x.dtype)


def _start(x: torch.Tensor, sigmas: torch.Tensor, *, strict: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Validates the schedule and returns (float64 state, sigmas as Python floats)."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    values = sigmas.detach().to(torch.float64).tolist()
    if any(v <= 0 for v in values[:-1]) or values[-1] < 0:
        raise ValueError("sigmas must be positive except possibly the last, which may be 0")
    # Heun/Euler tolerate repeats (round_sigma can snap neighbours together); log-step samplers need h > 0.
    if any(b > a or (strict and b == a) for a, b in zip(values, values[1:])):
        raise ValueError(f"sigmas must be {'strictly decreasing' if strict else 'non-increasing'}")
    return x.to(torch.float64), values


def _churn_gammas(sigmas: list[float], churn: Churn) -> list[float]:
    """EDM's per-step churn factor: min(S_churn/N, sqrt(2)-1) where S_min <= sigma_i <= S_max, else 0."""
    if churn.s_churn < 0:
        raise ValueError(f"s_churn must be >= 0, got {churn.s_churn}")
    steps = len(sigmas) - 1
    gamma = min(churn.s_churn / steps, math.sqrt(2.0) - 1.0)
    return [gamma if gamma > 0 and churn.s_min <= s <= churn.s_max else 0.0 for s in sigmas[:-1]]


def _require_noise(noise: SeededNoise | None, needed: bool, sampler: str) -> None:
    if needed and noise is None:
        raise ValueError(f"{sampler} with these settings draws noise: pass noise=SeededNoise(seeds, device)")


def _reject_churn(churn: Churn, sampler: str) -> None:
    # Deterministic multistep solvers have no churn step; ignoring the request silently would mislabel results.
    if churn.s_churn != 0:
        raise ValueError(f"{sampler} is deterministic and does not support churn (got s_churn={churn.s_churn})")


def _draws_noise(gammas: list[float], churn: Churn) -> bool:
    """Whether the churn steps draw noise: where gamma > 0, or at every step of a churning ``every-step`` run."""
    return any(g > 0 for g in gammas) or (churn.noise == "every-step" and churn.s_churn > 0)


def _churn_step(x: torch.Tensor, sigma: float, gamma: float, churn: Churn, noise: SeededNoise | None,
                round_sigma: RoundSigma | None) -> tuple[torch.Tensor, float]:
    """Raises the noise level to sigma_hat = sigma + gamma sigma by adding fresh noise.

    No draw when gamma == 0, unless ``churn.noise == "every-step"``: then, as EDM's sampler, every step of a
    churning run draws (scaled by 0 where gamma = 0), so each image's noise stream is EDM's.
    """
    if gamma <= 0 and not (churn.noise == "every-step" and churn.s_churn > 0):
        return x, sigma
    sigma_hat = sigma + gamma * sigma  # EDM's order of operations (bit-for-bit with its sampler)
    if round_sigma is not None:
        sigma_hat = float(torch.as_tensor(round_sigma(torch.tensor(sigma_hat, dtype=torch.float64))).reshape(()))
    assert noise is not None  # checked up front by _require_noise
    eps = noise.randn_like(x)
    return x + math.sqrt(max(sigma_hat**2 - sigma**2, 0.0)) * churn.s_noise * eps, sigma_hat


# --------------------------------------------------------------------------------------------------------------------
# Samplers


def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: SeededNoise | None = None,
                 churn: Churn = Churn(), round_sigma: RoundSigma | None = None) -> SampleResult:
    """Euler on the probability-flow ODE dx/dsigma = (x - D)/sigma, with EDM churn. NFE = N steps."""
    x, s = _start(x, sigmas)
    model = _CountingDenoiser(denoiser)
    gammas = _churn_gammas(s, churn)
    _require_noise(noise, _draws_noise(gammas, churn), "euler")
    for i, gamma in enumerate(gammas):
        x, s_hat = _churn_step(x, s[i], gamma, churn, noise, round_sigma)
        x = x + (s[i + 1] - s_hat) * (x - model(x, s_hat)) / s_hat
    return SampleResult(x, model.calls)


def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: SeededNoise | None = None,
                churn: Churn = Churn(), round_sigma: RoundSigma | None = None) -> SampleResult:
    """EDM Algorithm 2: churn, Euler step, 2nd-order (trapezoidal) correction unless the next sigma is 0.

    NFE = 2N - 1. Unlike EDM's loop, which draws churn noise at every step even when gamma = 0, noise is drawn only
    when gamma > 0, unless ``churn.noise == "every-step"`` (EDM's stream). Common random numbers hold either way:
    which steps draw depends only on the schedule and churn.
    """
    x, s = _start(x, sigmas)
    model = _CountingDenoiser(denoiser)
    gammas = _churn_gammas(s, churn)
    _require_noise(noise, _draws_noise(gammas, churn), "heun")
    for i, gamma in enumerate(gammas):
        x, s_hat = _churn_step(x, s[i], gamma, churn, noise, round_sigma)
        s_next = s[i + 1]
        d = (x - model(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d_next = (x_next - model(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return SampleResult(x, model.calls)


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: SeededNoise | None = None,
                churn: Churn = Churn(), eta: float = 0.0, round_sigma: RoundSigma | None = None) -> SampleResult:
    """DDIM in the VE sigma parametrisation. NFE = N steps.

    eta = 0 is deterministic and identical to Euler. eta > 0 is ancestral (DDIM's sigma_t(eta) in VE form): step
    down to sigma_down = sqrt(s_next^2 - sigma_up^2), then add sigma_up noise, where
    sigma_up = eta * sqrt(s_next^2 (s^2 - s_next^2) / s^2), capped at s_next. EDM churn is also accepted, applied
    before each step as in Euler.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x, s = _start(x, sigmas)
    model = _CountingDenoiser(denoiser)
    gammas = _churn_gammas(s, churn)
    _require_noise(noise, _draws_noise(gammas, churn) or (eta > 0 and any(v > 0 for v in s[1:])), "ddim")
    for i, gamma in enumerate(gammas):
        x, s_hat = _churn_step(x, s[i], gamma, churn, noise, round_sigma)
        s_next = s[i + 1]
        sigma_up = min(s_next, eta * math.sqrt(s_next**2 * max(s_hat**2 - s_next**2, 0.0) / s_hat**2))
        sigma_down = math.sqrt(s_next**2 - sigma_up**2)
        # Written as an Euler step so that eta = 0 reproduces sample_euler bit for bit.
        x = x + (sigma_down - s_hat) * (x - model(x, s_hat)) / s_hat
        if sigma_up > 0:
            assert noise is not None
            x = x + sigma_up * noise.randn_like(x)
    return SampleResult(x, model.calls)


def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: SeededNoise | None = None,
                    churn: Churn = Churn()) -> SampleResult:
    """DPM-Solver++(2M) in t = -ln sigma; the first step and a step to sigma = 0 are first order. NFE = N steps."""
    _reject_churn(churn, "dpmpp_2m")
    x, s = _start(x, sigmas, strict=True)
    model = _CountingDenoiser(denoiser)
    previous: torch.Tensor | None = None
    h_previous = 0.0
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        if s[i + 1] == 0:
            x = denoised  # the exponential-integrator step to sigma = 0 lands exactly on the data prediction
            break
        h = math.log(s[i] / s[i + 1])
        if previous is None:
            target = denoised
        else:
            r = h_previous / h
            target = (1.0 + 0.5 / r) * denoised - (0.5 / r) * previous
        x = (s[i + 1] / s[i]) * x - math.expm1(-h) * target
        previous, h_previous = denoised, h
    return SampleResult(x, model.calls)


def _unipc_coefficients(h: float, rks: list[float], variant: str) -> tuple[float, list[float], list[float]]:
    """B(h) and the predictor (K-1) and corrector (K) weights of a UniPC step of order K = len(rks) + 1.

    rks are the past points' (lambda_j - lambda_0)/h (negative); the new point has r = 1. Data-prediction form with
    hh = -h: the b_k come from the phi-function recursion, and the weights solve R rho = b with R_kj = r_j^(k-1).
    """
    order = len(rks) + 1
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    phi = math.expm1(hh) / hh - 1.0
    factorial = 1.0
    b = []
    for k in range(1, order + 1):
        b.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1.0 / factorial
    # UniPC fixes the 2nd-order predictor weight and the 1st-order corrector weight to 1/2, as the original does.
    if order == 1:
        return b_h, [], [0.5]
    nodes = torch.tensor([*rks, 1.0], dtype=torch.float64)
    matrix = torch.stack([nodes**k for k in range(order)])
    rhs = torch.tensor(b, dtype=torch.float64)
    rhos_p = [0.5] if order == 2 else torch.linalg.solve(matrix[:-1, :-1], rhs[:-1]).tolist()
    rhos_c = torch.linalg.solve(matrix, rhs).tolist()
    return b_h, rhos_p, rhos_c


def sample_unipc(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: SeededNoise | None = None,
                 churn: Churn = Churn(), order: int = 3, variant: str = "bh1", lower_order_final: bool = True,
                 corrector: bool = True) -> SampleResult:
    """Multistep UniPC (UniP-p predictor + UniC corrector) in data-prediction mode, VE (alpha=1, lambda=-ln sigma).

    Steps between positive sigmas are UniPC steps of order min(order, j) (warm-up) and, with lower_order_final,
    at most the number of such steps left. The corrector reuses the denoiser call at the predicted point, which the
    next predictor needs anyway, so each step costs one call; the last such step has no corrector.

    A schedule ending in 0 (lambda = inf) ends with a first-order (DDIM) step, which at sigma_next = 0 is exactly
    x = D(x, sigma_{N-1}): the UniPC steps land on sigma_{N-1} without a corrector (its result would be discarded)
    and the call there gives the output. This equals the original's ``denoise_to_zero`` run with N-1 steps.
    NFE = N for N schedule steps in either case. ``corrector=False`` gives the predictor alone (UniP-p, order p)
    at the same NFE, for ablations; with it (the default) UniPC-p has order p + 1.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    _reject_churn(churn, "unipc")
    x, s = _start(x, sigmas, strict=True)
    model = _CountingDenoiser(denoiser)
    to_zero = s[-1] == 0
    solver_steps = len(s) - 1 - int(to_zero)
    outputs = [model(x, s[0])]  # data predictions at past points, newest last
    lambdas = [-math.log(s[0])]
    for j in range(1, solver_steps + 1):
        step_order = min(order, j, solver_steps + 1 - j) if lower_order_final else min(order, j)
        lam = -math.log(s[j])
        h = lam - lambdas[-1]
        rks = [(lambdas[-1 - k] - lambdas[-1]) / h for k in range(1, step_order)]
        b_h, rhos_p, rhos_c = _unipc_coefficients(h, rks, variant)
        m0 = outputs[-1]
        diffs = [(outputs[-1 - k] - m0) / rks[k - 1] for k in range(1, step_order)]
        x_linear = (s[j] / s[j - 1]) * x - math.expm1(-h) * m0
        x = x_linear - b_h * sum((rho * d for rho, d in zip(rhos_p, diffs)), torch.zeros_like(x))
        last = j == solver_steps
        if last and not to_zero:
            break  # UniPC's final step: predictor only, no denoiser call
        m_new = model(x, s[j])
        if corrector and not last:
            correction = sum((rho * d for rho, d in zip(rhos_c[:-1], diffs)), torch.zeros_like(x))
            x = x_linear - b_h * (correction + rhos_c[-1] * (m_new - m0))
        outputs, lambdas = [*outputs, m_new][-order:], [*lambdas, lam][-order:]
    if to_zero:
        x = outputs[-1]
    return SampleResult(x, model.calls)


def _knot_sigmas(knots: str, knot_steps: int, knot_rho: float, sigma_min: float, sigma_max: float) -> list[float]:
    """Consistency models' published sigma lists: indices (``"0,22,39"``) into a Karras grid of ``knot_steps``
    levels from sigma_max (index 0) to sigma_min (index knot_steps - 1)."""
    try:
        indices = [int(part) for part in knots.split(",")]
    except ValueError:
        raise SamplerOptionError(f"multistep knots must be comma-separated integers like '0,22,39', got {knots!r}") \
            from None
    if len(indices) < 2 or indices != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= knot_steps:
        raise SamplerOptionError(f"multistep knots {knots!r} must be at least 2 increasing indices in "
                                 f"[0, {knot_steps - 1}] (knot_steps = {knot_steps})")
    levels = karras_sigmas(knot_steps, sigma_min, sigma_max, knot_rho)[:-1].tolist()
    return [levels[i] for i in indices]


def sample_onestep(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: SeededNoise | None = None,
                   churn: Churn = Churn()) -> SampleResult:
    """A consistency model's one-step sample x = f(x, sigma_max) (Song et al. 2023, Alg. 1 with one step). NFE 1."""
    _reject_churn(churn, "onestep")
    x, s = _start(x, sigmas, strict=True)
    model = _CountingDenoiser(denoiser)
    return SampleResult(model(x, s[0]), model.calls)


def sample_multistep(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, noise: SeededNoise | None = None,
                     churn: Churn = Churn(), knots: str = "", knot_steps: int = 40,
                     knot_rho: float = 7.0) -> SampleResult:
    """A consistency model's multistep ("stochastic iterative") sampling (Song et al. 2023, Alg. 1).

    The positive sigmas are the points; the last one is the model's sigma_min, where f is the identity, so it is
    not evaluated: at each other point x0 = f(x, sigma_i), then x = x0 + sqrt(sigma_{i+1}^2 - sigma_min^2) z with
    fresh seeded noise; the sample is the last x0. NFE = points - 1. ``knots`` replaces the grid's points with
    indices into a Karras grid of ``knot_steps`` levels over the same range (CD ImageNet-64: ``"0,22,39"``, 40).
    """
    _reject_churn(churn, "multistep")
    x, s = _start(x, sigmas, strict=True)
    points = [v for v in s if v > 0]
    if len(points) < 2:
        raise ValueError("multistep needs at least 2 positive sigmas: the points and the sigma_min it lands on")
    if knots:
        chosen = _knot_sigmas(knots, knot_steps, knot_rho, points[-1], points[0])
        if len(chosen) != len(points):
            raise SamplerOptionError(f"multistep knots {knots!r} evaluate {len(chosen) - 1} sigma point(s); use "
                                     f"--nfe {len(chosen) - 1}")
        points = chosen
    _require_noise(noise, len(points) > 2, "multistep")
    model = _CountingDenoiser(denoiser)
    sigma_min = points[-1]
    for i, sigma in enumerate(points[:-1]):
        x0 = model(x, sigma)
        if i + 2 < len(points):
            assert noise is not None
            x = x0 + math.sqrt(max(points[i + 1] ** 2 - sigma_min**2, 0.0)) * noise.randn_like(x0)
    return SampleResult(x0, model.calls)


# --------------------------------------------------------------------------------------------------------------------
# Registry and NFE budgeting

SamplerFn = Callable[..., SampleResult]
# What a sampler's denoiser is: a diffusion model's D(x, sigma), for ODE/SDE solvers, or a consistency function
# f(x, sigma), which jumps to the data at once; neither kind of sampler makes sense on the other kind of model.
DIFFUSION, CONSISTENCY = "diffusion", "consistency"


def _nfe_one_per_step(steps: int) -> int:
    return steps


def _nfe_heun(steps: int) -> int:
    return 2 * steps - 1


def _steps_one_per_step(nfe: int) -> int:
    return nfe


def _steps_heun(nfe: int) -> int:
    # Inverse of 2*steps - 1, rounded up: an even budget gets the step count one call above it.
    return (nfe + 2) // 2


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _or(values: tuple) -> str:
    words = [repr(v) if isinstance(v, str) else str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@dataclass(frozen=True)
class SamplerOption:
    """One keyword option of a sampler (or of the grid): its type, the values it accepts, and what a '+sampler'
    search space explores of it.

    Accepted values: ``choices`` when they are a list, else the interval from ``low`` (``low_open``: excluded) to
    ``high`` (None: unbounded). ``search`` is None when the option is not searched, else ``(low, high)`` for an int
    or float (``suggest_int``/``suggest_float``) or the choices of a categorical one; ``default`` is the function's
    own default and the search's baseline.
    """

    type: type
    default: typing.Any
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    search: tuple | None = None

    def _in_range(self, value: typing.Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def accepts(self, value: object) -> bool:
        """``value`` has the option's type and lies in its valid values."""
        return _has_type(value, self.type) and self._in_range(value)

    def rule(self) -> str:
        """The valid values in words ("1, 2 or 3", ">= 0" ...), for messages."""
        if self.choices is not None:
            return _or(self.choices)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"<= {self.high:g}" if self.high is not None else _TYPE_WORDS.get(self.type, self.type.__name__)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler, whether it takes noise (churn or ancestral), its NFE as a function of the step count, and its
    options (the keyword arguments of ``fn`` besides the pipeline's), with what a '+sampler' space searches.

    ``steps_of_nfe`` inverts ``nfe_of_steps``: the fewest steps whose NFE is at least the given budget.
    """

    name: str
    fn: SamplerFn
    stochastic: bool
    nfe_of_steps: Callable[[int], int]
    description: str
    nfe_formula: str = "steps"
    steps_of_nfe: Callable[[int], int] = _steps_one_per_step
    options: Mapping[str, SamplerOption] = field(default_factory=dict, hash=False)
    models: str = DIFFUSION  # the denoisers it is for: DIFFUSION (D(x, sigma)) or CONSISTENCY (f(x, sigma))
    max_steps: int | None = None  # onestep: 1
    # The grid gets one more point than the steps: where the last step lands (a consistency model's sigma_min,
    # where f is the identity), never evaluated.
    landing_point: bool = False

    def grid_steps(self, steps: int) -> int:
        """The sigma grid's points (before its final 0) for ``steps`` steps."""
        return steps + int(self.landing_point)

    def searched_options(self) -> dict[str, SamplerOption]:
        """The options a '+sampler' space searches, in the order it suggests them."""
        return {name: option for name, option in self.options.items() if option.search is not None}

    def signature_options(self) -> dict[str, tuple[typing.Any, typing.Any]]:
        """(type hint, default) of each keyword option ``fn`` takes, which ``options`` must describe."""
        hints = typing.get_type_hints(self.fn)
        return {p.name: (hints.get(p.name, object), p.default) for p in inspect.signature(self.fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _PIPELINE_ARGS}


# Keyword arguments the pipeline passes itself, never options of a study.
_PIPELINE_ARGS = {"noise", "churn", "round_sigma", "grid"}

SAMPLERS = Registry[SamplerSpec]("sampler", UnknownSamplerError)
for _spec in (
    SamplerSpec("heun", sample_heun, True, _nfe_heun, "EDM Algorithm 2 (Heun, 2nd order) with optional churn",
                "2*steps - 1", _steps_heun),
    SamplerSpec("euler", sample_euler, True, _nfe_one_per_step, "Euler (1st order) with optional EDM churn"),
    SamplerSpec("dpmpp_2m", sample_dpmpp_2m, False, _nfe_one_per_step, "DPM-Solver++(2M), deterministic"),
    SamplerSpec("unipc", sample_unipc, False, _nfe_one_per_step,
                "UniPC multistep, data prediction (options: order 1-3, variant bh1/bh2)",
                options={"order": SamplerOption(int, 3, choices=(1, 2, 3), search=(1, 3)),
                         "variant": SamplerOption(str, "bh1", choices=("bh1", "bh2"), search=("bh1", "bh2")),
                         "lower_order_final": SamplerOption(bool, True),
                         "corrector": SamplerOption(bool, True)}),
    # Not "stochastic": no EDM churn is searched for DDIM; its own noise (eta) is an option, 0 = deterministic.
    SamplerSpec("ddim", sample_ddim, False, _nfe_one_per_step, "DDIM in sigma form (option eta; eta=0 is Euler)",
                options={"eta": SamplerOption(float, 0.0, low=0.0, search=(0.0, 1.0))}),
    # Consistency models: their noise is part of the sampler, not EDM churn, so not "stochastic" either.
    SamplerSpec("onestep", sample_onestep, False, _nfe_one_per_step, "consistency model, one step f(x, sigma_max)",
                "1", models=CONSISTENCY, max_steps=1),
    SamplerSpec("multistep", sample_multistep, False, _nfe_one_per_step,
                "consistency model, multistep (options: knots '0,22,39' into a Karras grid of knot_steps)",
                "steps (sigma points evaluated)", models=CONSISTENCY, landing_point=True,
                options={"knots": SamplerOption(str, ""),
                         "knot_steps": SamplerOption(int, 40, low=2),
                         "knot_rho": SamplerOption(float, 7.0, low=0.0, low_open=True)}),
):
    SAMPLERS.register(_spec.name, _spec)
del _spec


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler called ``name``."""
    try:
        return SAMPLERS.get(name)
    except UnknownSamplerError:
        # The registry's own message says "known:"; this one has always said "known samplers:".
        raise UnknownSamplerError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}") from None


# Options of the sigma grid, which sample() takes for every sampler; a sampler's own are its spec's ``options``.
GRID_OPTIONS: dict[str, SamplerOption] = {"spacing": SamplerOption(str, "karras", choices=SPACINGS),
                                          "rho": SamplerOption(float, 7.0, low=0.0, low_open=True)}


def sampler_option_types(name: str) -> dict[str, type]:
    """The options ``sample(sampler=name, **options)`` takes: the grid's and the sampler's own, with their types."""
    return {key: option.type for key, option in {**GRID_OPTIONS, **get_sampler(name).options}.items()}


def _has_type(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float) and isinstance(value, bool):
        return False  # True is no count and no number here
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def check_sampler_options(name: str, options: Mapping[str, object], *, where: str = "sampler options") -> None:
    """SamplerOptionError (message starting with ``where``) for an option ``name`` does not take or a bad value.

    Cheap and model-free, so a study can be refused before its model is loaded or a trial is spent.
    """
    known = {**GRID_OPTIONS, **get_sampler(name).options}
    for key, value in options.items():
        if key not in known:
            raise SamplerOptionError(f"{where} {key!r} is not an option of sampler {name}; it takes "
                                     f"{', '.join(sorted(known))}")
        option = known[key]
        if option.type in _TYPE_WORDS and not _has_type(value, option.type):
            raise SamplerOptionError(f"{where} {key} must be {_TYPE_WORDS[option.type]} for sampler {name}, "
                                     f"got {value!r}")
        if not option._in_range(value):
            raise SamplerOptionError(f"{where} {key} must be {option.rule()} for sampler {name}, got {value!r}")


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The step count whose NFE is exactly ``nfe``; NFEError naming the nearest valid budgets otherwise."""
    spec = get_sampler(sampler)
    try:
        budget = operator.index(nfe)
    except TypeError:
        raise NFEError(f"NFE must be a positive integer, got {nfe!r}") from None
    if isinstance(nfe, bool) or budget <= 0:
        raise NFEError(f"NFE must be a positive integer, got {nfe!r}")
    if budget > MAX_NFE:
        raise NFEError(f"NFE must be at most {MAX_NFE} denoiser calls per image, got {budget}")
    steps = max(1, spec.steps_of_nfe(budget))  # computed, not searched: a huge budget must not hang
    if spec.max_steps is not None and steps > spec.max_steps:
        steps = spec.max_steps + 1  # the nearest budget is the largest it can spend
    elif spec.nfe_of_steps(steps) == budget:
        return steps
    options = [spec.nfe_of_steps(n) for n in (steps - 1, steps) if n >= 1 and n <= (spec.max_steps or n)]
    raise NFEError(f"{spec.name} cannot spend exactly {budget} denoiser calls (NFE = {spec.nfe_formula}): use "
                   + " or ".join(f"--nfe {value}" for value in options), samplers_for_nfe(budget, spec.models))


def samplers_for_nfe(nfe: int, models: str | None = DIFFUSION) -> tuple[str, ...]:
    """The registered samplers for ``models`` (None: any) that can spend exactly ``nfe`` denoiser calls."""
    return tuple(name for name, spec in SAMPLERS.items()
                 if spec.nfe_of_steps(max(1, spec.steps_of_nfe(nfe))) == nfe and models in (None, spec.models)
                 and spec.steps_of_nfe(nfe) <= (spec.max_steps or nfe))


def samplers_for_models(models: str) -> tuple[str, ...]:
    """The registered samplers for ``models`` (DIFFUSION or CONSISTENCY)."""
    return tuple(name for name, spec in SAMPLERS.items() if spec.models == models)


def check_sampler_for_model(name: str, models: str, model_name: str = "the model") -> None:
    """SamplerOptionError when sampler ``name`` is not for ``models``' kind (``SamplerSpec.models``, the one rule
    that ``generate`` and a study's session apply, and that '+sampler' spaces filter their choices by)."""
    spec = get_sampler(name)
    if spec.models != models:
        raise SamplerOptionError(f"sampler {name} is for {spec.models} models, but {model_name} is a {models} "
                                 f"model: use --sampler {' | '.join(samplers_for_models(models))}")


def sample(denoiser: Denoiser, x: torch.Tensor, *, sampler: str, nfe: int, sigma_min: float, sigma_max: float,
           rho: float = 7.0, round_sigma: RoundSigma | None = None, noise: SeededNoise | None = None,
           churn: Churn = Churn(), spacing: str = "karras", timestep_sigmas: torch.Tensor | None = None,
           vp_start: bool = False, grid: TimeGrid | None = None, **options: object) -> SampleResult:
    """Samples from standard-normal latents ``x`` with exactly ``nfe`` denoiser calls.

    The grid is ``spacing`` (:func:`skipsearch.sampling.grids.sampling_sigmas`: Karras by default, or a timestep
    spacing of a discrete model's ``timestep_sigmas``). The start is ``x * sigma_0`` in float64 (EDM), or with
    ``vp_start`` ``x * sqrt(sigma_0^2 + 1)``: a VP model's prior N(0, I) at its first timestep, as diffusers starts.
    A schedule's ``grid`` (:class:`TimeGrid`) replaces ``spacing``. ``options`` go to the sampler (e.g. order, eta).
    """
    spec = get_sampler(sampler)
    steps = spec.grid_steps(steps_for_nfe(sampler, nfe))
    if grid is not None:
        sigmas = grid_sigmas(grid, steps, sigma_min=sigma_min, sigma_max=sigma_max, round_sigma=round_sigma,
                             device=x.device)
        values = sigmas.tolist()
        if any(b >= a for a, b in zip(values, values[1:-1])):  # e.g. two points snapped to one timestep
            raise GridError(f"time grid {grid.describe()} gives {steps} sigmas that do not strictly descend "
                            f"({', '.join(f'{v:.4g}' for v in values[:-1])}) on this model")
    else:
        sigmas = sampling_sigmas(steps, spacing=spacing, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                                 round_sigma=round_sigma, timestep_sigmas=timestep_sigmas, device=x.device)
    if round_sigma is not None and spec.stochastic:
        options.setdefault("round_sigma", round_sigma)
    start = math.sqrt(float(sigmas[0]) ** 2 + 1) if vp_start else sigmas[0]
    result = spec.fn(denoiser, x.to(torch.float64) * start, sigmas, noise=noise, churn=churn, **options)
    if result.nfe != nfe:
        raise AssertionError(f"{sampler} made {result.nfe} denoiser calls, expected {nfe}")
    return result
