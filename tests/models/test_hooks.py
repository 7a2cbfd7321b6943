"""Skip hooks on real EDM networks: exactness, interval selection, removal, and the GroupNorm fact."""

from __future__ import annotations

import math

import pytest
import torch

from skipsearch import apply
from skipsearch.models.checkpoints import create_network
from skipsearch.models.edm import edm_skip_points
from skipsearch.schedule import ModelIdentity, ScheduleError, SkipSchedule


def _batch(adapter, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *adapter.img_shape, generator=g)
    return x, torch.linspace(0.1, 10.0, n)


def test_skip_points_follow_decoder_order(tiny_edm):
    points = tiny_edm.skip_points
    assert len(points) == 2 * (1 + 1)
    assert [p.index for p in points] == list(range(4))
    assert [p.resolution for p in points] == [8, 8, 16, 16]  # bottom first
    assert points[-1].source == "model.enc.16x16_conv"  # the stem output is consumed last
    for p in points:
        block = dict(tiny_edm.net.named_modules())[p.consumer]
        assert block.in_channels == p.main_channels + p.skip_channels


def test_identity_schedule_is_exact_and_removal_restores(tiny_edm):
    x, sigma = _batch(tiny_edm)
    base = tiny_edm.denoise(x, sigma)
    with tiny_edm.apply(SkipSchedule.constant(1.0, 4), check_identity=False):
        assert torch.equal(tiny_edm.denoise(x, sigma), base)
    with tiny_edm.apply(SkipSchedule.constant(0.5, 4), check_identity=False):
        changed = tiny_edm.denoise(x, sigma)
    assert not torch.allclose(changed, base)
    assert torch.equal(tiny_edm.denoise(x, sigma), base)  # removal restores bit for bit
    assert tiny_edm.schedule is None


def test_each_skip_point_is_hooked_separately(tiny_edm):
    x, sigma = _batch(tiny_edm)
    base = tiny_edm.denoise(x, sigma)
    for k in range(4):
        values = [1.0] * 4
        values[k] = 0.3
        with tiny_edm.apply(SkipSchedule.per_layer(values), check_identity=False):
            assert not torch.allclose(tiny_edm.denoise(x, sigma), base), f"skip point {k} had no effect"


def test_interval_is_chosen_per_sample(tiny_edm):
    x, _ = _batch(tiny_edm)
    sigma = torch.tensor([0.05, 5.0, 0.2, 20.0])
    two = SkipSchedule.intervals([[0.6] * 4, [0.9] * 4], sigma_bounds=[math.inf, 1.0, 0.0])
    with tiny_edm.apply(two, check_identity=False):
        mixed = tiny_edm.denoise(x, sigma)
    with tiny_edm.apply(SkipSchedule.constant(0.6, 4), check_identity=False):
        high = tiny_edm.denoise(x, sigma)
    with tiny_edm.apply(SkipSchedule.constant(0.9, 4), check_identity=False):
        low = tiny_edm.denoise(x, sigma)
    is_high = sigma > 1.0
    torch.testing.assert_close(mixed[is_high], high[is_high], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[~is_high], low[~is_high], rtol=0, atol=1e-6)


def test_apply_on_bare_network_captures_sigma_from_the_call(tiny_edm):
    x, sigma = _batch(tiny_edm)
    net = tiny_edm.net
    with torch.no_grad():
        base = net(x, sigma)
    schedule = SkipSchedule.intervals([[0.5] * 4, [1.0] * 4], sigma_bounds=[math.inf, 1.0, 0.0])
    with apply(net, schedule, check_identity=False):
        with torch.no_grad():
            hooked = net(x, sigma)
    low = sigma <= 1.0
    assert torch.equal(hooked[low], base[low])  # rho = 1 below sigma 1
    assert not torch.allclose(hooked[~low], base[~low])


def test_eps_scale_pulls_toward_x(tiny_edm):
    x, sigma = _batch(tiny_edm)
    base = tiny_edm.denoise(x, sigma)
    with tiny_edm.apply(SkipSchedule.constant(1.0, 4, eps_scale=1.02), check_identity=False):
        scaled = tiny_edm.denoise(x, sigma)
    torch.testing.assert_close(scaled, x - (x - base) / 1.02)


def test_schedule_for_another_model_is_refused(tiny_edm):
    other = SkipSchedule.constant(0.7, 4).with_metadata(model=ModelIdentity("edm-cifar10", "ab" * 32, 4))
    with pytest.raises(ScheduleError, match="edm-cifar10"):
        tiny_edm.apply(other)
    with pytest.raises(ScheduleError):
        tiny_edm.apply(SkipSchedule.constant(0.7, 15), check_identity=False)


def test_norm_ratios_are_positive(tiny_edm):
    x, sigma = _batch(tiny_edm)
    ratios = tiny_edm.norm_ratios(x, sigma)
    assert len(ratios) == 4 and all(r > 0 and math.isfinite(r) for r in ratios)


def test_groupnorm_cancels_scaling_of_pure_skip_groups():
    """Reference-facts §1.4: rho on a group holding only skip channels is undone by norm0; rho acts via block.skip."""
    torch.manual_seed(0)
    net = create_network("EDMPrecond", img_resolution=16, img_channels=3, model_type="DhariwalUNet",
                         model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)
    point = next(p for p in edm_skip_points(net.model) if p.main_channels == p.skip_channels)
    block = dict(net.named_modules())[point.consumer]
    groups = block.norm0.num_groups
    assert (point.main_channels + point.skip_channels) % groups == 0
    assert point.skip_channels % ((point.main_channels + point.skip_channels) // groups) == 0  # no straddling group
    x = torch.randn(2, point.main_channels + point.skip_channels, point.resolution, point.resolution)
    scaled = torch.cat([x[:, : point.main_channels], 0.6 * x[:, point.main_channels:]], dim=1)
    torch.testing.assert_close(block.norm0(scaled), block.norm0(x), atol=1e-4, rtol=1e-4)
    emb = torch.randn(2, block.affine.in_features)
    with torch.no_grad():
        difference = block(scaled, emb) - block(x, emb)
        via_shortcut = (block.skip(scaled) - block.skip(x)) * block.skip_scale
    torch.testing.assert_close(difference, via_shortcut, atol=1e-4, rtol=1e-4)
