"""Adapters for diffusers UNets and generic torch UNets, and the VP (epsilon) parametrization, on tiny real models."""

from __future__ import annotations

import dataclasses
import gc
import math
import sys
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import skipsearch.models
from skipsearch.models.generic import GenericAdapter
from skipsearch.models.hooks import SkipPoint, install_observers
from skipsearch.models.parametrization import DataParametrization, EpsilonParametrization
from skipsearch.schedule import SkipSchedule

diffusers = pytest.importorskip("diffusers")
from skipsearch.models.diffusers_adapter import DiffusersAdapter, _require_diffusers  # noqa: E402

BOUNDS = (math.inf, 2.0, 0.0)  # two sigma intervals
RHO_HIGH, RHO_LOW = [0.5, 1.5, 0.7, 1.2], [1.3, 0.6, 1.1, 0.8]


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is shared with a training job.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet2d() -> nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, num_class_embeds=3).eval()


def tiny_unet2d_condition() -> nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4).eval()


def one_hot(labels: list[int], n: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), n).float()


# --------------------------------------------------------------------------------------------------------------------
# diffusers UNet2DModel


@pytest.fixture(scope="module")
def unet2d() -> DiffusersAdapter:
    return DiffusersAdapter(tiny_unet2d(), name="tiny-unet2d")


def test_unet2d_skip_points_match_the_real_concatenations(unet2d: DiffusersAdapter) -> None:
    unet = unet2d.net
    points = unet2d.skip_points
    assert len(points) == len(unet.config.block_out_channels) * (unet.config.layers_per_block + 1) == 4
    assert [p.consumer for p in points] == [f"up_blocks.{b}.resnets.{j}" for b in range(2) for j in range(2)]
    assert [p.resolution for p in points] == [8, 8, 16, 16]  # bottom first
    assert unet2d.img_shape == (3, 16, 16) and unet2d.label_dim == 3
    # The skip part of each consumer's input must be the very tensor the up block received from the down path.
    skips_given: list[torch.Tensor] = []

    def take_res(_module, args, kwargs):
        res = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
        skips_given.extend(reversed(res))  # resnet j pops element n-1-j

    seen: list[tuple[SkipPoint, torch.Tensor, torch.Tensor]] = []
    handles = [block.register_forward_pre_hook(take_res, with_kwargs=True) for block in unet.up_blocks]
    handles += install_observers(unet2d.consumer_modules(), points, lambda p, m, s: seen.append((p, m, s)))
    try:
        unet2d.denoise(torch.randn(2, 3, 16, 16), 1.0, one_hot([0, 2]))
    finally:
        for handle in handles:
            handle.remove()
    assert [p for p, _, _ in seen] == points
    for (point, main, skip), given in zip(seen, skips_given, strict=True):
        assert main.shape[1:] == (point.main_channels, point.resolution, point.resolution)
        assert torch.equal(skip, given)


def test_unet2d_schedule_identity_change_and_removal(unet2d: DiffusersAdapter) -> None:
    x, labels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), one_hot([1, 2])
    sigma = unet2d.round_sigma(torch.tensor(3.0))
    plain = unet2d.denoise(x, sigma, labels)
    with unet2d.apply(SkipSchedule.identity(4)):
        assert torch.equal(unet2d.denoise(x, sigma, labels), plain)
    handle = unet2d.apply(SkipSchedule.per_layer([0.6, 1.0, 1.4, 0.9]))
    changed = unet2d.denoise(x, sigma, labels)
    handle.remove()
    assert not torch.allclose(changed, plain, atol=1e-4)
    assert torch.equal(unet2d.denoise(x, sigma, labels), plain)
    assert not unet2d.net._forward_pre_hooks and not unet2d.net._forward_hooks


def test_unet2d_interval_is_chosen_per_sample(unet2d: DiffusersAdapter) -> None:
    x, labels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), one_hot([0, 1])
    sigma = unet2d.round_sigma(torch.tensor([6.0, 0.4]))  # sample 0 in the high interval, sample 1 in the low one
    with unet2d.apply(SkipSchedule.intervals([RHO_HIGH, RHO_LOW], BOUNDS)):
        mixed = unet2d.denoise(x, sigma, labels)
    with unet2d.apply(SkipSchedule.per_layer(RHO_HIGH)):
        high = unet2d.denoise(x, sigma, labels)
    with unet2d.apply(SkipSchedule.per_layer(RHO_LOW)):
        low = unet2d.denoise(x, sigma, labels)
    assert torch.equal(mixed[0], high[0]) and torch.equal(mixed[1], low[1])
    assert not torch.allclose(high[1], low[1], atol=1e-4)


def test_apply_to_bare_unet_reads_sigma_from_timestep() -> None:
    unet = tiny_unet2d()
    adapter = skipsearch.models.adapt(unet)
    assert isinstance(adapter, DiffusersAdapter) and adapter.name == "UNet2DModel"
    linear = EpsilonParametrization.linear()
    assert torch.equal(adapter.parametrization.sigmas, linear.sigmas)  # documented default: DDPM linear, T=1000
    x_vp, classes = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 2])
    t = torch.tensor([700, 100])  # sigma ~ 4.3 (high interval) and ~ 0.36 (low interval)
    assert linear.sigmas[700] > BOUNDS[1] > linear.sigmas[100]

    def eps() -> torch.Tensor:
        with torch.no_grad():
            return unet(x_vp, t, class_labels=classes).sample

    plain = eps()
    handle = skipsearch.models.apply(unet, SkipSchedule.intervals([RHO_HIGH, RHO_LOW], BOUNDS))
    mixed = eps()
    assert adapter.probe.sigma is None  # cleared after the call
    with pytest.raises(ValueError, match="class_labels"):
        unet(x_vp, t)  # a failing forward must not leave its sigma behind
    assert adapter.probe.sigma is None
    # Through denoise, the same state in EDM units gives the same epsilon.
    sigma = linear.sigmas[t].float()
    x = x_vp * (1 + sigma[:, None, None, None] ** 2).sqrt()
    denoised = adapter.denoise(x, sigma, one_hot([0, 2]))
    torch.testing.assert_close((x - denoised) / sigma[:, None, None, None], mixed, rtol=1e-4, atol=1e-4)
    handle.remove()
    with skipsearch.models.apply(unet, SkipSchedule.per_layer(RHO_HIGH)):
        high = eps()
    with skipsearch.models.apply(unet, SkipSchedule.per_layer(RHO_LOW)):
        low = eps()
    assert torch.equal(mixed[0], high[0]) and torch.equal(mixed[1], low[1])
    assert torch.equal(eps(), plain)


def test_missing_diffusers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what Python does for a package that cannot be imported
    with pytest.raises(ImportError, match=r"pip install skipsearch\[diffusers\]"):
        _require_diffusers()


def tiny_edm_net() -> nn.Module:
    from skipsearch.models.checkpoints import create_network
    torch.manual_seed(0)
    return create_network("EDMPrecond", img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=8,
                          channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)


@pytest.mark.parametrize("make", [tiny_unet2d, tiny_edm_net])
def test_a_network_given_to_apply_is_collected_once_its_caller_drops_it(make) -> None:
    """adapt()'s cache holds networks weakly: apply() keeps a bare network alive no longer than its caller does,
    with a schedule left on it or not."""
    net = make()
    points = len(skipsearch.models.adapt(net).skip_points)
    with skipsearch.models.apply(net, SkipSchedule.constant(0.8, points)):
        pass
    handle = skipsearch.models.apply(net, SkipSchedule.intervals([[0.7] * points, [0.9] * points], BOUNDS))
    gone = weakref.ref(net)
    del net, handle
    gc.collect()
    assert gone() is None


def test_apply_again_replaces_a_schedule_whose_handle_was_dropped() -> None:
    """While a schedule is on a bare network, the network holds its adapter: a second apply() replaces the first
    schedule instead of stacking on it, and removing it gives the plain network back."""
    unet = tiny_unet2d()
    x, t, classes = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)), torch.tensor([600, 50]), \
        torch.tensor([1, 2])

    def eps() -> torch.Tensor:
        with torch.no_grad():
            return unet(x, t, class_labels=classes).sample

    plain = eps()
    skipsearch.models.apply(unet, SkipSchedule.per_layer(RHO_LOW))  # handle dropped at once
    gc.collect()
    adapter = skipsearch.models.adapt(unet)
    assert adapter.schedule is not None and adapter is skipsearch.models.adapt(unet)
    skipsearch.models.apply(unet, SkipSchedule.per_layer(RHO_HIGH))
    gc.collect()
    assert skipsearch.models.adapt(unet) is adapter and np.array_equal(adapter.schedule.rho[0], RHO_HIGH)
    with DiffusersAdapter(tiny_unet2d(), name="reference").apply(SkipSchedule.per_layer(RHO_HIGH)) as reference:
        with torch.no_grad():
            expected = reference.adapter.net(x, t, class_labels=classes).sample
    assert torch.equal(eps(), expected)  # RHO_HIGH alone, not RHO_LOW then RHO_HIGH
    adapter.remove_schedule()
    assert torch.equal(eps(), plain) and not unet._forward_pre_hooks


def test_recognition_picks_the_same_adapters_for_the_bundled_models(bundled) -> None:
    """The adapter kinds, tried in order, recognise the bundled networks as the hasattr chain did: EDM, diffusers,
    and none for a network only a model file describes."""
    from skipsearch.models import ADAPTER_KINDS, ModelError, load_model, recognise
    from skipsearch.models.edm import EDMAdapter
    assert ADAPTER_KINDS.names()[:2] == ["edm", "diffusers"]
    ddpm = load_model("ddpm-mnist")
    for loaded, kind, cls in ((bundled, "edm", EDMAdapter), (ddpm, "diffusers", DiffusersAdapter)):
        assert recognise(loaded.net) == kind
        adapted = skipsearch.models.adapt(loaded.net)
        assert type(adapted) is cls and adapted.skip_points == loaded.skip_points
    assert recognise(tiny_unet2d()) == "diffusers" and recognise(tiny_unet2d_condition()) == "diffusers"
    generic = load_model("models/catemb-mnist.toml")
    with pytest.raises(ModelError, match="cannot tell the parametrisation"):
        skipsearch.models.adapt(generic.net)


# --------------------------------------------------------------------------------------------------------------------
# diffusers UNet2DConditionModel


def test_unet2d_condition_with_text_states() -> None:
    text = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(4))
    adapter = DiffusersAdapter(tiny_unet2d_condition(), name="tiny-cond", encoder_hidden_states=text)
    assert len(adapter.skip_points) == 4 and adapter.img_shape == (4, 8, 8)
    assert [p.resolution for p in adapter.skip_points] == [4, 4, 8, 8]
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigma = adapter.round_sigma(torch.tensor(2.5, dtype=torch.float64))
    plain = adapter.denoise(x, sigma)
    assert plain.dtype == torch.float64 and plain.shape == x.shape
    with adapter.apply(SkipSchedule.identity(4)):
        assert torch.equal(adapter.denoise(x, sigma), plain)
    with adapter.apply(SkipSchedule.constant(0.5, 4)):
        assert not torch.allclose(adapter.denoise(x, sigma), plain, atol=1e-4)
    assert torch.equal(adapter.denoise(x, sigma), plain)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        DiffusersAdapter(adapter.net, name="no-text").denoise(x, sigma)


# --------------------------------------------------------------------------------------------------------------------
# EpsilonParametrization


def test_sigma_timestep_round_trip() -> None:
    p = EpsilonParametrization.linear()
    t = torch.arange(1000)
    assert bool((p.sigmas[1:] > p.sigmas[:-1]).all()) and p.sigma_min == float(p.sigmas[0])
    assert 0.009 < p.sigma_min < 0.011 and 150 < p.sigma_max < 160
    assert torch.equal(p.timestep_for_sigma(p.sigmas), t)
    torch.testing.assert_close(p.sigma_for_timestep(t), p.sigmas, rtol=1e-12, atol=0)
    # Off-grid sigmas (a third of the way to the next log-sigma) snap back to their own timestep.
    log = p.sigmas.log()
    near = torch.cat([(log[:-1] + (log[1:] - log[:-1]) / 3).exp(), p.sigmas[-1:] * 1.5])
    assert torch.equal(p.timestep_for_sigma(near), t)
    assert torch.equal(p.round_sigma(near), p.sigmas)
    assert p.round_sigma(near.float()).dtype == torch.float32
    assert int(p.timestep_for_sigma(torch.tensor(0.0))) == 0
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    torch.testing.assert_close(EpsilonParametrization.from_scheduler(scheduler).sigmas, p.sigmas, rtol=2e-4, atol=0)
    with pytest.raises(ValueError, match="prediction_type"):
        EpsilonParametrization.linear(prediction_type="flow")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_exact_model_on_gaussian_data_gives_the_closed_form_denoiser(kind: str) -> None:
    # Data x0 ~ N(mu, s^2) per pixel. In VP units x_vp = a x0 + b n; the exact predictions are posterior means.
    mu, s = 0.3, 0.7
    p = EpsilonParametrization.linear(prediction_type=kind)

    def exact(x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = p.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        resid = x_vp - a * mu
        eps = b * resid / (a * a * s * s + b * b)
        x0 = mu + a * s * s * resid / (a * a * s * s + b * b)
        return eps if kind == "epsilon" else a * eps - b * x0

    sigma = p.sigmas[torch.tensor([50, 400, 900])]
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 3
    want = mu + s * s / (s * s + sigma.reshape(-1, 1, 1, 1) ** 2) * (x - mu)
    torch.testing.assert_close(p.denoise(exact, x, sigma), want, rtol=1e-10, atol=1e-10)


def test_data_parametrization_passes_sigma_through() -> None:
    p = DataParametrization()
    x = torch.randn(2, 1, 2, 2)
    assert torch.equal(p.denoise(lambda x_in, s: x_in * s.reshape(-1, 1, 1, 1), x, 0.5), x * 0.5)
    assert (p.sigma_min, p.sigma_max) == (0.002, 80.0)


# --------------------------------------------------------------------------------------------------------------------
# GenericAdapter


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(h))


class _TinyUNet(nn.Module):
    """Two levels: skips of 8 ch at 16px and 12 ch at 8px; the decoder main path is 20 ch then 16 ch."""

    def __init__(self, skip_first: bool):
        super().__init__()
        torch.manual_seed(0)
        self.skip_first, self.zero_top_skip = skip_first, False
        self.enc0, self.down0 = _Block(3, 8), _Block(8, 8, stride=2)
        self.enc1, self.down1 = _Block(8, 12), _Block(12, 20, stride=2)
        self.temb = nn.Linear(1, 20)
        self.up = nn.Upsample(scale_factor=2)
        self.dec1, self.dec0 = _Block(20 + 12, 16), _Block(16 + 8, 8)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def cat(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, h] if self.skip_first else [h, skip], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s0 = self.enc0(x)
        s1 = self.enc1(self.down0(s0))
        h = self.down1(s1) + self.temb(t.float().reshape(-1, 1).log1p())[:, :, None, None]
        h = self.dec1(self.cat(self.up(h), s1))
        h = self.dec0(self.cat(self.up(h), s0 * 0 if self.zero_top_skip else s0))
        return self.out(h)


@pytest.mark.parametrize("skip_first", [False, True])
def test_generic_detection_finds_the_decoder_cats(skip_first: bool) -> None:
    model = _TinyUNet(skip_first)
    parametrization = DataParametrization() if skip_first else EpsilonParametrization.linear()
    adapter = GenericAdapter(model, name="tiny", parametrization=parametrization, img_shape=(3, 16, 16))
    part = 0 if skip_first else 1
    assert adapter.skip_points == [
        SkipPoint(0, "dec1", 8, main_channels=20, skip_channels=12, skip_first=skip_first, source="enc1",
                  cat_index=0, part=part),
        SkipPoint(1, "dec0", 16, main_channels=16, skip_channels=8, skip_first=skip_first, source="enc0",
                  cat_index=1, part=part),
    ]
    # Declared consumers (in any order) give the same points.
    declared = GenericAdapter(model, name="tiny", parametrization=parametrization, img_shape=(3, 16, 16),
                              consumers=["dec0", "dec1"])
    assert declared.skip_points == adapter.skip_points

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    sigma = adapter.round_sigma(torch.tensor([1.5, 0.2]))
    plain = adapter.denoise(x, sigma)
    with adapter.apply(SkipSchedule.identity(2)):
        assert torch.equal(adapter.denoise(x, sigma), plain)
    with adapter.apply(SkipSchedule.per_layer([1.0, 0.0])):
        dropped = adapter.denoise(x, sigma)
    assert not torch.allclose(dropped, plain, atol=1e-4)
    assert torch.equal(adapter.denoise(x, sigma), plain)
    # rho = 0 at the top point scales exactly the skip part: the same as the model feeding zeros in place of s0.
    model.zero_top_skip = True
    assert torch.equal(adapter.denoise(x, sigma), dropped)


def test_generic_detection_on_a_diffusers_unet_agrees_with_the_diffusers_adapter(unet2d: DiffusersAdapter) -> None:
    generic = GenericAdapter(unet2d.net, name="generic", parametrization=unet2d.parametrization,
                             img_shape=unet2d.img_shape, label_dim=3,
                             call=lambda m, x, t, labels: m(x, t, class_labels=labels.argmax(dim=1)))
    assert [dataclasses.replace(p, cat_index=None, part=None) for p in generic.skip_points] == unet2d.skip_points
