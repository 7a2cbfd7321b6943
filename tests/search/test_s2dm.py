"""S²-DM: the skip-step loss (EDM and DDPM forms) and the ``finetune-s2dm`` trial kind end to end through the CLI.

What "L_skip is zero when the model is the exact denoiser of a Gaussian toy data set" can mean, and what is tested:
under neither reading is the skip term zero. With the code's independent eps' (our reading),
E_{n'} L_skip = lambda (sigma^2 d + c^2 ||x - D||^2) >= lambda sigma^2 d > 0 for every D; with the same eps it is
||eps - c eps_hat||^2, zero only if eps_hat = eps/c, which no function of x achieves. The expectation form (spec §3)
vanishes only at D = x. What *is* true, and tested here on Gaussian data y ~ N(mu, s0^2) whose exact denoiser
E[y|x] is known in closed form:
- the exact denoiser is the minimiser of L0 (the gradient of E L0 along any direction of D vanishes there), and
- the minimiser of the full expected loss is the spec's D* = s E[y|x] + (1 - s) x, s = tau/(tau + (1 - tau) c^2):
  the gradient w.r.t. a scalar output-scaling parameter a (D = E + a (1 - s)(x - E)) vanishes at a = 1 (D*), while
  at a = 0 (the exact denoiser) it is clearly negative (the skip term pulls D towards x);
- E_{n'} L_skip equals its closed form lambda (sigma^2 + c^2 (x - D)^2) (the independent-noise reading).
Gradients are per sample (one parameter per sample), so their means are compared with their standard errors.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from helpers.studies import searched_study_names
from torch import nn

from skipsearch.settings import Settings
from skipsearch.training.edm import EDMLoss
from skipsearch.training.loop import TrainConfig, train
from skipsearch.training.s2dm import (
    DDPMLoss,
    DDPMS2DMLoss,
    S2DMLoss,
    edm_skip_c2,
    karras_skip_sigma,
    linear_alphas_cumprod,
)

# --------------------------------------------------------------------------------------------------------------------
# Small real models.


class Scale(nn.Module):
    """D(x; sigma) = w x (EDM signature) or eps(x_t, t) = w x_t: one trainable scalar."""

    def __init__(self, w: float = 0.5, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=dtype))

    def forward(self, x: torch.Tensor, *_: object) -> torch.Tensor:
        return self.w * x


class TinyEps(nn.Module):
    """A small epsilon-prediction conv net with a time embedding (DDPM signature ``eps(x_t, t)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out, self.emb = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 1, 3, padding=1), nn.Linear(1, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.emb((t / 1000).view(-1, 1)).view(-1, 8, 1, 1)
        return self.out(torch.nn.functional.silu(h))


def tiny_edm_net() -> nn.Module:
    from skipsearch.models.checkpoints import create_network
    torch.manual_seed(0)
    return create_network("EDMPrecond", img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=8,
                          channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)


def images(batch: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand([batch, 1, size, size], generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------------------------------------------------
# tau = 1 is the plain loss, draw for draw.


def test_tau_one_is_the_edm_loss_and_the_same_training_run():
    net, x = tiny_edm_net(), images(6)
    g_edm, g_s2dm = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    plain = EDMLoss()(net, x, None, g_edm)
    s2dm = S2DMLoss(tau=1.0, skip=1, num_steps=5)(net, x, None, g_s2dm)
    assert torch.equal(plain, s2dm)
    assert torch.equal(g_edm.get_state(), g_s2dm.get_state())  # no n' drawn: later draws line up too
    # tau < 1 draws n' after (sigma, n): its L0 part sees the same sigma and noise, the total differs.
    other = S2DMLoss(tau=0.9, skip=1, num_steps=5)(net, x, None, torch.Generator().manual_seed(7))
    assert other.shape == plain.shape and not torch.equal(other, plain)
    # Hence a whole fine-tune with tau = 1 is the plain EDM fine-tune, bit for bit (the fair baseline).
    config = TrainConfig(steps=3, batch_size=4, lr=1e-3, lr_warmup_steps=1, log_every=1, grad_clip=1.0)
    data = images(32, seed=1)
    ema_plain, _ = train(copy.deepcopy(net), data, config=config, loss_fn=EDMLoss())
    ema_s2dm, _ = train(copy.deepcopy(net), data, config=config, loss_fn=S2DMLoss(tau=1.0, num_steps=5))
    for (name, a), (_, b) in zip(ema_plain.state_dict().items(), ema_s2dm.state_dict().items()):
        assert torch.equal(a, b), name


def test_tau_one_is_the_ddpm_loss():
    torch.manual_seed(0)
    model, x = TinyEps(), images(6)
    g_plain, g_s2dm = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = DDPMLoss()(model, x, None, g_plain)
    s2dm = DDPMS2DMLoss(tau=1.0, skip=9)(model, x, None, g_s2dm)
    assert torch.equal(plain, s2dm)
    assert torch.equal(g_plain.get_state(), g_s2dm.get_state())
    config = TrainConfig(steps=2, batch_size=4, lr=1e-3, lr_warmup_steps=1, log_every=1)
    a, _ = train(copy.deepcopy(model), images(16, seed=2), config=config, loss_fn=DDPMLoss())
    b, _ = train(copy.deepcopy(model), images(16, seed=2), config=config, loss_fn=DDPMS2DMLoss(tau=1.0))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_ddpm_loss_matches_the_authors_code():
    """``functions/losses.py`` of kingkingofall/skip-step-diffusion, transcribed (0.99/0.01, clamp, t < skip)."""
    torch.manual_seed(0)
    model, x0 = TinyEps(), images(8)
    loss = DDPMS2DMLoss(tau=0.99, skip=9)
    g = torch.Generator().manual_seed(5)
    e1, e2 = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 3, 8, 9, 10, 500, 998, 999])  # both sides of the t < skip rule
    b = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    a = (1 - b).cumprod(0).index_select(0, t).view(-1, 1, 1, 1).float()
    a_s = (1 - b).cumprod(0).index_select(0, torch.clamp(t - 9, min=0)).view(-1, 1, 1, 1).float()
    a_skip = a / a_s
    out = model(x0 * a.sqrt() + e1 * (1.0 - a).sqrt(), t.float())
    mse = nn.MSELoss(reduction="none")
    less = t < 9
    code = torch.cat([mse(e1, out).mean(dim=(1, 2, 3))[less],
                      0.01 * mse(e2, (1.0 - a_skip).sqrt() / a_skip.sqrt() * out).mean(dim=(1, 2, 3))[~less]
                      + 0.99 * mse(e1, out).mean(dim=(1, 2, 3))[~less]]).mean()
    ours = loss.from_draws(model, x0, None, t, e1, e2)
    assert ours.mean().item() == pytest.approx(code.item(), rel=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Hand-computed cases (2 samples, 1 pixel, fixed noise).


def test_edm_hand_computed_case_and_gradients_through_both_terms():
    tau, skip, n_steps, sd, w = 0.9, 1, 5, 0.5, 0.5
    y, n, n2, sig = [0.3, -0.7], [0.8, -1.1], [-0.4, 1.3], [1.0, 0.01]  # sample 2: sigma_s below sigma_min
    step = (80 ** (1 / 7) - 0.002 ** (1 / 7)) / (n_steps - 1)
    expected, grad = [], 0.0
    for yi, ni, n2i, s in zip(y, n, n2, sig):
        x = yi + s * ni
        d = w * x
        lam = (s**2 + sd**2) / (s * sd) ** 2
        l0, dl0 = lam * (d - yi) ** 2, lam * 2 * (d - yi) * x
        base = s ** (1 / 7) - skip * step
        if base <= 0.002 ** (1 / 7):
            expected.append(l0)
            grad += dl0
            continue
        s_s = base**7
        c = math.sqrt((s**2 - s_s**2) / (1 + s_s**2))
        r = s * n2i - c * (x - d)
        expected.append(tau * l0 + (1 - tau) * lam * r**2)
        grad += tau * dl0 + (1 - tau) * lam * 2 * r * c * x
        assert abs((1 - tau) * lam * 2 * r * c * x) > 1e-3  # the skip term's gradient is not negligible here
    net = Scale(w)
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float64).view(2, 1, 1, 1)  # noqa: E731
    loss = S2DMLoss(tau=tau, skip=skip, num_steps=n_steps).from_draws(net, as_tensor(y), None, as_tensor(sig),
                                                                      as_tensor(n), as_tensor(n2))
    assert loss.tolist() == pytest.approx(expected, abs=1e-6, rel=1e-9)
    loss.sum().backward()
    assert net.w.grad.item() == pytest.approx(grad, abs=1e-6, rel=1e-9)  # no stop-gradient on either term


def test_ddpm_hand_computed_case():
    tau, skip, w = 0.99, 9, 0.5
    abar = linear_alphas_cumprod()
    x0, e, e2, t = [0.3, -0.7], [0.8, -1.1], [-0.4, 1.3], [5, 500]  # t = 5 < skip: L0 alone
    expected, grad = [], 0.0
    for x0i, ei, e2i, ti in zip(x0, e, e2, t):
        a = float(abar[ti])
        xt = math.sqrt(a) * x0i + math.sqrt(1 - a) * ei
        out = w * xt
        l0, dl0 = (ei - out) ** 2, -2 * (ei - out) * xt
        if ti < skip:
            expected.append(l0)
            grad += dl0
            continue
        a_skip = a / float(abar[ti - skip])
        c = math.sqrt((1 - a_skip) / a_skip)
        expected.append(tau * l0 + (1 - tau) * (e2i - c * out) ** 2)
        grad += tau * dl0 + (1 - tau) * (-2) * (e2i - c * out) * c * xt
    model = Scale(w)
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float64).view(2, 1, 1, 1)  # noqa: E731
    loss = DDPMS2DMLoss(tau=tau, skip=skip).from_draws(model, as_tensor(x0), None, torch.tensor(t), as_tensor(e),
                                                       as_tensor(e2))
    assert loss.tolist() == pytest.approx(expected, abs=1e-6, rel=1e-9)
    loss.sum().backward()
    assert model.w.grad.item() == pytest.approx(grad, abs=1e-6, rel=1e-9)


# --------------------------------------------------------------------------------------------------------------------
# The Gaussian toy: what the expected loss optimises.

MU, S0, TAU, STEPS = 0.3, 0.5, 0.9, 5


class ShrunkGaussianDenoiser(nn.Module):
    """D = E[y|x] + a (1 - s(sigma)) (x - E[y|x]) for y ~ N(MU, S0^2); one ``a`` per sample (per-sample gradients).

    a = 0: the exact denoiser; a = 1: the spec's optimum D* of tau L0 + (1 - tau) L_skip (D* = E where the per-sample
    rule leaves L0 alone).
    """

    def __init__(self, batch: int, a: float, loss: S2DMLoss):
        super().__init__()
        self.a = nn.Parameter(torch.full([batch, 1, 1, 1], a, dtype=torch.float64))
        self.loss = loss

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, _labels: object = None) -> torch.Tensor:
        exact = MU + S0**2 / (S0**2 + sigma**2) * (x - MU)
        sigma_s, active = karras_skip_sigma(sigma, self.loss.skip, self.loss.num_steps)
        c2 = edm_skip_c2(sigma, sigma_s)
        s = torch.where(active, TAU / (TAU + (1 - TAU) * c2), torch.ones_like(c2))
        return exact + self.a * (1 - s) * (x - exact)


def gaussian_batch(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (MU + S0 * torch.randn([batch, 1, 1, 1], generator=g, dtype=torch.float64))


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.flatten()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def per_sample_grad(loss_fn: S2DMLoss, a: float, batch: int, seed: int) -> torch.Tensor:
    net = ShrunkGaussianDenoiser(batch, a, S2DMLoss(tau=TAU, skip=1, num_steps=STEPS))
    y = gaussian_batch(batch, seed)
    g = torch.Generator().manual_seed(seed + 1)
    sigma = (torch.randn([batch, 1, 1, 1], generator=g, dtype=torch.float64) * 1.2 - 1.2).exp()
    noise = torch.randn(y.shape, generator=g, dtype=torch.float64)
    skip_noise = None if loss_fn.tau == 1 else torch.randn(y.shape, generator=g, dtype=torch.float64)
    loss_fn.from_draws(net, y, None, sigma, noise, skip_noise).sum().backward()
    return net.a.grad


def test_exact_gaussian_denoiser_minimises_l0_and_dstar_the_s2dm_loss():
    batch = 1 << 18
    l0_only = S2DMLoss(tau=1.0, skip=1, num_steps=STEPS)
    s2dm = S2DMLoss(tau=TAU, skip=1, num_steps=STEPS)
    # L0: stationary at the exact denoiser (a = 0), not at D* (a = 1).
    mean, se = mean_and_se(per_sample_grad(l0_only, 0.0, batch, seed=10))
    assert abs(mean) < 4 * se
    mean, se = mean_and_se(per_sample_grad(l0_only, 1.0, batch, seed=11))
    assert mean > 8 * se
    # tau L0 + (1 - tau) L_skip: stationary at D* (a = 1); at the exact denoiser it pulls towards x (a grows).
    mean, se = mean_and_se(per_sample_grad(s2dm, 1.0, batch, seed=12))
    assert abs(mean) < 4 * se
    mean, se = mean_and_se(per_sample_grad(s2dm, 0.0, batch, seed=13))
    assert mean < -8 * se


def test_skip_term_expectation_is_not_zero_but_its_closed_form():
    """With independent n', E_{n'} of the skip term is lambda (sigma^2 + c^2 (x - D)^2): a penalty, never 0."""
    batch = 1 << 18
    skip_only = S2DMLoss(tau=0.0, skip=1, num_steps=STEPS)  # tau = 0: the skip term alone where it applies
    net = ShrunkGaussianDenoiser(batch, 0.0, skip_only)  # the exact denoiser
    y = gaussian_batch(batch, seed=20)
    g = torch.Generator().manual_seed(21)
    sigma = torch.full([batch, 1, 1, 1], 1.5, dtype=torch.float64)  # one active sigma, so lambda etc. are fixed
    noise, skip_noise = (torch.randn(y.shape, generator=g, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        value = skip_only.from_draws(net, y, None, sigma, noise, skip_noise)
        x = y + sigma * noise
        sigma_s, active = karras_skip_sigma(sigma, 1, STEPS)
        assert bool(active.all())
        lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        closed = (lam * (sigma**2 + edm_skip_c2(sigma, sigma_s) * (x - net(x, sigma)) ** 2)).flatten()
    mean, se = mean_and_se(value - closed)
    assert abs(mean) < 4 * se
    assert float(closed.min()) >= float(lam.min() * sigma.min() ** 2) > 0


def test_skip_rule_and_validation():
    sigma = torch.tensor([80.0, 1.0, 0.1, 0.002])
    sigma_s, active = karras_skip_sigma(sigma, 1, 5)
    assert active.tolist() == [True, True, False, False]
    assert 0 < sigma_s[1] < 1 and sigma_s[0] == pytest.approx(((80 ** (1 / 7) * 3 + 0.002 ** (1 / 7)) / 4) ** 7)
    assert karras_skip_sigma(sigma, 2, 1000)[1].tolist() == [True, True, True, False]
    for bad in (dict(tau=1.1), dict(skip=0), dict(num_steps=1)):
        with pytest.raises(ValueError):
            S2DMLoss(**bad)
    with pytest.raises(ValueError):
        DDPMS2DMLoss(skip=1000)


# --------------------------------------------------------------------------------------------------------------------
# Spaces and budget.


def test_s2dm_spaces_and_budget():
    from skipsearch.search.finetune import FinetuneBudget
    from skipsearch.search.spaces import (
        SpaceContext,
        UnknownSpaceError,
        baselines,
        check_space_name,
        get_space,
        space_names,
    )
    names = space_names()
    assert {"s2dm", "s2dm+linear", "linear", "linear+eps"} <= set(names) and "s2dm+eps" not in names
    assert check_space_name("s2dm+linear") == ("s2dm+linear", False)
    assert check_space_name("per-layer+eps") == ("per-layer", True)
    for bad in ("s2dm+eps", "s2dm+linear+eps", "s2dm+per-layer"):
        with pytest.raises(UnknownSpaceError):
            check_space_name(bad)
    ctx = SpaceContext(num_skip_points=9, level_of_point=[0, 0, 0, 1, 1, 1, 2, 2, 2], num_steps=5)
    only = baselines(get_space("s2dm", ctx), nfe=9)
    assert len(only) == 1 and only[0].params == {"tau": 1.0, "skip": 1, "lr": 1e-4} and "tau=1" in only[0].label
    combined = baselines(get_space("s2dm+linear", ctx), nfe=9)
    assert [b.params["rho_bottom"] for b in combined] == [1.0, pytest.approx(0.68)]
    assert all(b.params["tau"] == 1.0 and b.params["lr"] == 1e-4 for b in combined)
    budget = FinetuneBudget.from_settings(Settings.from_env({"SKIPSEARCH_S2DM_STEPS": "10",
                                                             "SKIPSEARCH_S2DM_SEGMENTS": "3"}))
    assert (budget.steps, budget.segments, budget.batch_size) == (10, 3, 32)
    assert budget.segment_steps() == [4, 8, 10]
    assert FinetuneBudget(steps=2, segments=5).segment_steps() == [1, 2]
    from skipsearch.settings import SettingsError
    with pytest.raises(SettingsError, match="SKIPSEARCH_S2DM_BATCH"):
        FinetuneBudget.from_settings(Settings.from_env({"SKIPSEARCH_S2DM_BATCH": "lots"}))


# --------------------------------------------------------------------------------------------------------------------
# The trial kind end to end on the bundled model.

TINY_BUDGET = {"SKIPSEARCH_S2DM_STEPS": "6", "SKIPSEARCH_S2DM_SEGMENTS": "3", "SKIPSEARCH_S2DM_BATCH": "16"}


def _one_core() -> None:
    # The CLI sizes its torch threads by CPU affinity: one core keeps the shared machine's other work running.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **TINY_BUDGET, "SKIPSEARCH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "skipsearch.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900, preexec_fn=_one_core)


@pytest.fixture(scope="module")
def s2dm_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("s2dm")
    url = f"sqlite:///{home}/skipsearch.db"
    export = home / "best.json"
    proc = _cli(["optimize", "--model", "edm", "--nfe", "5", "--space", "s2dm", "--trials", "3", "--rungs", "24",
                 "--final-n", "24", "--top-k", "1", "--pruner", "aggressive", "--device", "cpu", "--storage", url,
                 "--export", export], home)
    return home, url, export, proc


@pytest.mark.slow  # the s2dm_run fixture: a fine-tune study through the CLI
def test_finetune_study_through_the_cli(s2dm_run):
    from skipsearch.models.checkpoints import file_sha256
    from skipsearch.schedule import SkipSchedule
    from skipsearch.search.finetune import read_card
    home, url, export, proc = s2dm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    (name,) = searched_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials()
    assert len(trials) == 3
    base_sha = study.user_attrs["definition"]["weights_sha256"]
    baseline = trials[0]
    assert "tau=1" in baseline.user_attrs["baseline"] and baseline.params["tau"] == 1.0
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in trials)  # reported steps are pruning steps
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [2, 4, 6]  # one report per segment, keyed by training step
            assert {"proxy_step2", "proxy_step6", "train_seconds", "weights_sha256"} <= set(t.user_attrs)
            assert t.value == pytest.approx(t.intermediate_values[6])
        elif t.state == optuna.trial.TrialState.PRUNED:
            assert set(t.intermediate_values) <= {2, 4, 6} and "weights_sha256" not in t.user_attrs
    # The exported schedule names the fine-tuned weights, copied beside it; only the best trial's weights are left.
    schedule = SkipSchedule.load(export)
    weights = export.parent / schedule.provenance["weights_path"]
    assert schedule.provenance["weights_path"] == "best.safetensors"
    assert weights.is_file() and schedule.model.sha256 == file_sha256(weights) != base_sha
    assert schedule.provenance["weights_sha256"] == schedule.model.sha256
    assert schedule.model.name == "edm" and schedule.provenance["base_sha256"] == base_sha
    assert schedule.provenance["validated"]["n"] == 24
    (kept,) = (home / "artifacts" / "s2dm").rglob("*.safetensors")
    assert file_sha256(kept) == schedule.model.sha256
    card = read_card(weights)
    assert card["steps"] == 6 and card["batch_size"] == 16 and card["base_sha256"] == base_sha
    assert {"tau", "skip", "lr", "seconds"} <= set(card)
    best = next(t for t in trials if t.user_attrs.get("weights_sha256") == schedule.model.sha256)
    assert card["tau"] == best.params["tau"] and card["lr"] == best.params["lr"]


@pytest.mark.slow  # the s2dm_run fixture, then a sample subprocess
def test_exported_schedule_samples_with_its_checkpoint(s2dm_run, tmp_path):
    home, _, export, proc = s2dm_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = export.parent / json.loads(export.read_text())["provenance"]["weights_path"]
    ok = _cli(["sample", "--checkpoint", weights, "--schedule", export, "--nfe", "5", "--n", "2", "--device", "cpu",
               "-o", tmp_path / "grid.png"], home)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "grid.png").is_file()
    # Without --checkpoint, sample loads the weights beside the schedule (provenance.weights_path) ...
    auto = _cli(["sample", "--schedule", export, "--nfe", "5", "--n", "2", "--device", "cpu", "-o",
                 tmp_path / "auto.png"], home)
    assert auto.returncode == 0, auto.stderr[-2000:]
    # ... and without that file beside it the schedule is refused (never the base weights, never a guess).
    (tmp_path / "moved.json").write_text(export.read_text())
    refused = _cli(["sample", "--schedule", tmp_path / "moved.json", "--nfe", "5", "--n", "2", "--device", "cpu",
                    "-o", tmp_path / "no.png"], home)
    assert refused.returncode == 2 and "--checkpoint" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "no.png").exists()


@pytest.mark.slow  # a combined-space study in this process
def test_combined_space_in_process(tmp_path, monkeypatch):
    """``s2dm+linear``: the rho pair and the fine-tune parameters in one trial (Python API, no CLI threads)."""
    from skipsearch import optimize  # the public entry point (stable across module moves)
    from skipsearch.models.checkpoints import file_sha256
    for key, value in TINY_BUDGET.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SKIPSEARCH_S2DM_SEGMENTS", "1")
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    result = optimize("edm", nfe=5, space="s2dm+linear", trials=2, storage=f"sqlite:///{tmp_path}/c.db",
                      export=tmp_path / "c.json", proxy__rungs=(24,), search__final_n=24,
                      search__validate_top_k=1, search__pruner="none", space_bounds__calibrate=False)
    assert result.counts["complete"] == 2 and len(result.validations) == 2  # both baselines (rho 1 and paper)
    schedule = json.loads((tmp_path / "c.json").read_text())
    assert {"rho_bottom", "rho_top", "tau", "skip", "lr"} <= set(schedule["provenance"]["params"])  # (+ churn)
    weights = tmp_path / schedule["provenance"]["weights_path"]
    assert schedule["model"]["sha256"] == file_sha256(weights)
    (kept,) = (tmp_path / "artifacts" / "s2dm").rglob("*.safetensors")
    assert file_sha256(kept) == file_sha256(weights)
