"""Token long skips (U-ViT) and the concatenations that are never skips, against hand-written rho-scaled forwards.

The U-ViT is skipsearch's own (``skipsearch.models.uvit_networks``) with random weights; the reference forward below
is written out by hand from its modules, multiplying each ``skip`` by rho before ``skip_linear(cat([x, skip]))``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skipsearch.models import ModelError
from skipsearch.models.generic import GenericAdapter
from skipsearch.models.hooks import SkipPoint, scale_skip, scale_skip_tensor
from skipsearch.models.parametrization import EpsilonParametrization
from skipsearch.models.uvit_networks import UViT, patchify, unpatchify
from skipsearch.schedule import SkipSchedule

PARAM = EpsilonParametrization.linear()


def small_uvit(num_classes: int = 0) -> UViT:
    torch.manual_seed(0)
    return UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=7, num_heads=2, mlp_ratio=2.0,
                num_classes=num_classes).eval()


def uvit_by_hand(net: UViT, x: torch.Tensor, t: torch.Tensor, rho: list[float],
                 labels: torch.Tensor | None = None) -> torch.Tensor:
    """U-ViT's forward written out, with ``rho[i] * skip`` entering out_blocks[i]'s concatenation."""
    h = net.tokens(x, t, labels)
    skips = []
    for block in net.in_blocks:
        h = block(h)
        skips.append(h)
    h = net.mid_block(h)
    for block, r in zip(net.out_blocks, rho):
        h = block.skip_linear(torch.cat([h, r * skips.pop()], dim=-1))
        h = h + block.attn(block.norm1(h))
        h = h + block.mlp(block.norm2(h))
    return net.image(h)


def _inputs(n: int = 3, size: int = 8):
    x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(5))
    sigma = PARAM.round_sigma(torch.tensor([1.5, 0.5, 0.05][:n], dtype=torch.float64)).float()
    return x, sigma


def _reference(forward, x, sigma):
    return PARAM.denoise(forward, x, sigma)


def _assert_exact(net: nn.Module, adapter: GenericAdapter, rho: list[float]) -> None:
    """The adapter under per-layer ``rho`` equals the network's own hand-written scaling (its ``rho`` attribute)."""
    x, sigma = _inputs()
    with torch.no_grad(), adapter.apply(SkipSchedule.per_layer(rho)):
        tuned = adapter.denoise(x, sigma)
    net.rho = rho
    with torch.no_grad():
        expected = _reference(lambda x_in, t: net(x_in, t), x, sigma)
    torch.testing.assert_close(tuned, expected, atol=1e-6, rtol=0)


def test_uvit_has_depth_over_two_token_skips_and_the_token_cats_are_not_skips() -> None:
    net = small_uvit(num_classes=10)
    adapter = GenericAdapter(net, name="uvit", parametrization=PARAM, img_shape=(1, 8, 8), label_dim=10)
    points = adapter.skip_points
    assert len(points) == 7 // 2
    # 16 patches + time + label token; decoder order: out_blocks.0 consumes the innermost skip first
    assert [(p.consumer, p.resolution, p.main_channels, p.skip_channels, p.skip_first, p.tokens)
            for p in points] == [(f"out_blocks.{i}.skip_linear", 18, 16, 16, False, True) for i in range(3)]
    assert [p.source for p in points] == ["in_blocks.2", "in_blocks.1", "in_blocks.0"]
    report = "\n".join(adapter.detection_report)
    assert report.count("along the token axis, token counts") == 2, report  # the time and the label token
    assert "not a skip: a concatenation along the token axis" in report
    assert "'res' is the token count L" in report
    # one resolution, so one level holding every skip, bottom first
    assert list(adapter.iter_levels()) == [(18, points)] and adapter.level_of_points() == [0, 0, 0]


def test_uvit_rho_is_exact_and_rho_one_is_the_bare_network() -> None:
    net = small_uvit()
    adapter = GenericAdapter(net, name="uvit", parametrization=PARAM, img_shape=(1, 8, 8))
    x, sigma = _inputs()
    with torch.no_grad():
        bare = _reference(lambda x_in, t: net(x_in, t), x, sigma)
        with adapter.apply(SkipSchedule.identity(3)):
            assert torch.equal(adapter.denoise(x, sigma), bare)
        for rho in ([0.7, 1.3, 0.9], [0.0, 1.0, 1.0], [1.0, 1.0, 0.5]):
            with adapter.apply(SkipSchedule.per_layer(rho)):
                tuned = adapter.denoise(x, sigma)
            expected = _reference(lambda x_in, t, rho=rho: uvit_by_hand(net, x_in, t, rho), x, sigma)
            assert not torch.allclose(tuned, bare)
            torch.testing.assert_close(tuned, expected, atol=1e-6, rtol=0)
        assert torch.equal(adapter.denoise(x, sigma), bare)


def test_uvit_per_sample_rho_over_tokens() -> None:
    """A batch mixing sigma intervals: rho is [B] and broadcasts over [B, L, D] skips."""
    net = small_uvit()
    adapter = GenericAdapter(net, name="uvit", parametrization=PARAM, img_shape=(1, 8, 8))
    schedule = SkipSchedule.intervals([[0.5, 0.8, 0.9], [1.0, 1.2, 1.0]], sigma_bounds=[float("inf"), 0.2, 0.0])
    x, sigma = _inputs()
    with torch.no_grad(), adapter.apply(schedule):
        tuned = adapter.denoise(x, sigma)
    with torch.no_grad():
        high = _reference(lambda x_in, t: uvit_by_hand(net, x_in, t, [0.5, 0.8, 0.9]), x[:2], sigma[:2])
        low = _reference(lambda x_in, t: uvit_by_hand(net, x_in, t, [1.0, 1.2, 1.0]), x[2:], sigma[2:])
    torch.testing.assert_close(tuned, torch.cat([high, low]), atol=1e-6, rtol=0)


def test_declared_skip_linear_consumers_give_the_detected_points() -> None:
    net = small_uvit()
    detected = GenericAdapter(net, name="uvit", parametrization=PARAM, img_shape=(1, 8, 8))
    declared = GenericAdapter(net, name="uvit", parametrization=PARAM, img_shape=(1, 8, 8),
                              consumers=[f"out_blocks.{i}.skip_linear" for i in (2, 0, 1)])
    assert declared.skip_points == detected.skip_points


class SkipFirstTokens(nn.Module):
    """Tokens in, skip first: ``fuse(cat([skip, x], dim=2))`` with a LayerNorm after the fuse."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.rho: list[float] = [1.0, 1.0]
        self.embed, self.temb = nn.Linear(4, 8), nn.Linear(1, 8)
        self.enc0, self.enc1, self.mid = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.fuse1, self.fuse0 = nn.Linear(16, 8), nn.Linear(16, 8)
        self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 4)

    def forward(self, x, t):
        h = self.embed(patchify(x, 2)) + self.temb(t.float().reshape(-1, 1, 1) / 1000)
        s0 = self.enc0(h).tanh()
        s1 = self.enc1(s0).tanh()
        h = self.mid(s1).tanh()
        h = self.norm(self.fuse1(torch.cat([self.rho[0] * s1, h], dim=2)))
        h = self.fuse0(torch.cat([self.rho[1] * s0, h], dim=2))
        return unpatchify(self.head(h), 1, 8)


def test_skip_first_token_concatenation_is_exact() -> None:
    net = SkipFirstTokens().eval()
    adapter = GenericAdapter(net, name="skipfirst", parametrization=PARAM, img_shape=(1, 8, 8))
    assert [(p.consumer, p.skip_first, p.tokens, p.resolution) for p in adapter.skip_points] == \
        [("fuse1", True, True, 16), ("fuse0", True, True, 16)]
    _assert_exact(net, adapter, [0.6, 1.4])


def conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.SiLU())


class InputCatUNet(nn.Module):
    """EDM2-like: the encoder's input gains a channel of ones, ``cat([x, ones_like(x[:, :1])])``; the skips are
    joined with weights (``cat([wa * h, wb * skip])``, as a magnitude-preserving cat does); the output layer sees
    ``cat([h, x])`` with the network input again."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.rho: list[float] = [1.0, 1.0]
        self.inc, self.down, self.mid = conv(2, 4), conv(4, 8, 2), conv(8, 8)
        self.temb = nn.Linear(1, 8)
        self.dec1, self.dec0, self.out = conv(16, 8), conv(12, 4), nn.Conv2d(5, 1, 1)

    def forward(self, x, t):
        x_in = x
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        s0 = self.inc(x)
        s1 = self.down(s0)
        h = self.mid(s1 + self.temb(t.float().reshape(-1, 1) / 1000)[:, :, None, None])
        h = self.dec1(torch.cat([0.6 * h, 0.8 * (self.rho[0] * s1)], dim=1))
        h = nn.functional.interpolate(h, scale_factor=2)
        h = self.dec0(torch.cat([0.6 * h, 0.8 * (self.rho[1] * s0)], dim=1))
        return self.out(torch.cat([h, x_in], dim=1))


def test_a_concatenation_of_the_input_is_never_a_skip() -> None:
    net = InputCatUNet().eval()
    adapter = GenericAdapter(net, name="edm2-like", parametrization=PARAM, img_shape=(1, 8, 8))
    assert [(p.index, p.cat_index, p.resolution, p.skip_channels) for p in adapter.skip_points] == \
        [(0, 1, 4, 8), (1, 2, 8, 4)]
    report = adapter.detection_report
    assert "cat #0 at 8x8, widths [1, 1]: ignored (not a skip: its parts derive from the network input" in report[1]
    assert "cat #3" in report[-1] and "ignored" in report[-1] and "network input" in report[-1]
    _assert_exact(net, adapter, [0.8, 1.25])


def test_declared_and_detected_errors_offer_a_route_that_works() -> None:
    net = small_uvit()
    with pytest.raises(ModelError) as info:  # declared on a module after the skip_linear: auto works here
        GenericAdapter(net, name="uvit", parametrization=PARAM, img_shape=(1, 8, 8),
                       consumers=["out_blocks.0.norm1"])
    message = str(info.value)
    assert "'out_blocks.0.norm1' is not a concatenation" in message
    assert "detect = 'auto' finds 3 skip point(s)" in message
    assert "\n" not in message


class NoSkipTokens(nn.Module):
    """Only a token-axis cat (a time token): nothing to scale, so no [skips] route can work."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.temb, self.head = nn.Linear(4, 8), nn.Linear(1, 8), nn.Linear(8, 4)

    def forward(self, x, t):
        h = torch.cat([self.temb(t.float().reshape(-1, 1, 1) / 1000), self.embed(patchify(x, 2))], dim=1)
        return unpatchify(self.head(h)[:, 1:], 1, 8)


def test_no_skip_error_says_what_it_saw_and_sends_nowhere_circular() -> None:
    with pytest.raises(ModelError) as info:
        GenericAdapter(NoSkipTokens(), name="tokens", parametrization=PARAM, img_shape=(1, 8, 8))
    message = str(info.value)
    assert "1 along the token axis" in message and "not a skip: a concatenation along the token axis" in message
    assert "neither [skips] route applies" in message and "consumers" not in message
    with pytest.raises(ModelError) as info:  # declaring the module that receives the token-axis cat
        GenericAdapter(NoSkipTokens(), name="tokens", parametrization=PARAM, img_shape=(1, 8, 8),
                       consumers=["head"])
    message = str(info.value)
    assert "'head' receives has no skip part (not a skip: a concatenation along the token axis" in message
    assert "neither [skips] route applies" in message and "detect = 'auto'" not in message


def test_scale_skip_tensor_broadcasts_over_any_rank() -> None:
    rho = torch.tensor([0.5, 2.0])
    for shape in ([2, 3], [2, 5, 4], [2, 3, 4, 4], [2, 1, 2, 3, 3]):
        skip = torch.randn(shape)
        scaled = scale_skip_tensor(skip, rho)
        assert torch.equal(scaled[0], skip[0] * 0.5) and torch.equal(scaled[1], skip[1] * 2.0)
        assert torch.equal(scale_skip_tensor(skip, torch.tensor([3.0])), skip * 3.0)
    point = SkipPoint(index=0, consumer="fuse", resolution=5, main_channels=4, skip_channels=2, tokens=True)
    main, skip = torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    assert torch.equal(scale_skip(point, torch.cat([main, skip], dim=-1), rho),
                       torch.cat([main, skip * rho.reshape(-1, 1, 1)], dim=-1))
