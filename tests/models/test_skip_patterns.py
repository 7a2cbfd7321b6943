"""Exact skip scaling for the skip patterns UNets are written in, against hand-written rho-scaled forwards.

Each small UNet below takes ``rho`` (one value per skip point, bottom first) and multiplies its skip tensors itself:
that is the hand-written reference. The adapter, which knows nothing of ``rho``, must give the same output to 1e-6
under the same schedule, and the bare network bit for bit at rho = 1.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skipsearch.models.diffusers_adapter import DiffusersAdapter
from skipsearch.models.generic import GenericAdapter
from skipsearch.models.parametrization import EpsilonParametrization
from skipsearch.schedule import SkipSchedule

PARAM = EpsilonParametrization.linear()


def conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.SiLU())


class _Base(nn.Module):
    """Encoder 16 -> 8 -> 4; skips s0 (16px, 4 ch), s1 (8px, 8 ch); a time embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rho: list[float] | None = None
        self.inc, self.down1, self.down2 = conv(1, 4), conv(4, 8, 2), conv(8, 8, 2)
        self.mid = conv(8, 8)
        self.temb = nn.Linear(1, 8)

    def r(self, i: int, skip: torch.Tensor) -> torch.Tensor:
        """The hand-written scaling (the skip itself when no rho is set, as in the unmodified network)."""
        return skip if self.rho is None else self.rho[i] * skip

    def encode(self, x, t):
        s0 = self.inc(x)
        s1 = self.down1(s0)
        h = self.mid(self.down2(s1) + self.temb(t.float().reshape(-1, 1) / 1000)[:, :, None, None])
        return s0, s1, nn.functional.interpolate(h, scale_factor=2)


class ConsumerModule(_Base):
    """EDM-style: a decoder block receives cat([h, skip]) itself."""

    def __init__(self) -> None:
        super().__init__()
        self.dec1, self.dec0, self.out = conv(16, 8), conv(12, 4), nn.Conv2d(4, 1, 1)

    def forward(self, x, t):
        s0, s1, h = self.encode(x, t)
        h = nn.functional.interpolate(self.dec1(torch.cat([h, self.r(0, s1)], 1)), scale_factor=2)
        return self.out(self.dec0(torch.cat([h, self.r(1, s0)], 1)))


class CatThenEmb(_Base):
    """A paper's repo: decoder(torch.cat((skip, h), 1) + emb), skip first, nothing receives the cat."""

    def __init__(self) -> None:
        super().__init__()
        self.e1, self.e0 = nn.Linear(1, 16), nn.Linear(1, 12)
        self.dec1, self.dec0, self.out = conv(16, 8), conv(12, 4), nn.Conv2d(4, 1, 1)

    def forward(self, x, t):
        s0, s1, h = self.encode(x, t)
        tt = t.float().reshape(-1, 1) / 1000
        h = self.dec1(torch.cat((self.r(0, s1), h), 1) + self.e1(tt)[:, :, None, None])
        h = nn.functional.interpolate(h, scale_factor=2)
        return self.out(self.dec0(torch.cat((self.r(1, s0), h), 1) + self.e0(tt)[:, :, None, None]))


class SkipFirstNorm(_Base):
    """cat([skip, h]) followed by a GroupNorm (which would cancel a scale of the whole input)."""

    def __init__(self) -> None:
        super().__init__()
        self.n1, self.n0 = nn.GroupNorm(4, 16), nn.GroupNorm(4, 12)
        self.dec1, self.dec0, self.out = conv(16, 8), conv(12, 4), nn.Conv2d(4, 1, 1)

    def forward(self, x, t):
        s0, s1, h = self.encode(x, t)
        h = nn.functional.interpolate(self.dec1(self.n1(torch.cat([self.r(0, s1), h], 1))), scale_factor=2)
        return self.out(self.dec0(self.n0(torch.cat([self.r(1, s0), h], 1))))


class AttentionAfterCat(_Base):
    """Self-attention over the concatenation, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.attn1 = nn.MultiheadAttention(16, 2, batch_first=True)
        self.dec1, self.dec0, self.out = conv(16, 8), conv(12, 4), nn.Conv2d(4, 1, 1)

    def attend(self, h):
        b, c, hh, ww = h.shape
        seq = h.flatten(2).transpose(1, 2)
        return (seq + self.attn1(seq, seq, seq, need_weights=False)[0]).transpose(1, 2).reshape(b, c, hh, ww)

    def forward(self, x, t):
        s0, s1, h = self.encode(x, t)
        h = nn.functional.interpolate(self.dec1(self.attend(torch.cat([h, self.r(0, s1)], 1))), scale_factor=2)
        return self.out(self.dec0(torch.cat([h, self.r(1, s0)], 1)))


class TwoSkipsOneCat(_Base):
    """One concatenation carrying two skips: cat([h, s0, up(s1)]) at the top."""

    def __init__(self) -> None:
        super().__init__()
        self.dec1, self.dec0, self.out = conv(8, 8), conv(8 + 4 + 8, 4), nn.Conv2d(4, 1, 1)

    def forward(self, x, t):
        s0, s1, h = self.encode(x, t)
        h = nn.functional.interpolate(self.dec1(h), scale_factor=2)
        s1_up = nn.functional.interpolate(s1, scale_factor=2)
        return self.out(self.dec0(torch.cat([h, self.r(0, s0), self.r(1, s1_up)], 1)))


def _inputs():
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    sigma = PARAM.round_sigma(torch.tensor([1.5, 0.5, 0.05], dtype=torch.float64)).float()
    return x, sigma


def _reference(model: _Base, x, sigma, rho):
    """The hand-written rho-scaled forward, through the same parametrisation (VP input scaling, eps -> D)."""
    model.rho = rho
    try:
        return PARAM.denoise(lambda x_in, t: model(x_in, t), x, sigma)
    finally:
        model.rho = None


@pytest.mark.parametrize("cls", [ConsumerModule, CatThenEmb, SkipFirstNorm, AttentionAfterCat])
def test_rho_scales_exactly_the_skip(cls) -> None:
    model = cls().eval()
    adapter = GenericAdapter(model, name=cls.__name__, parametrization=PARAM, img_shape=(1, 16, 16))
    assert [(p.resolution, p.skip_channels) for p in adapter.skip_points] == [(8, 8), (16, 4)], \
        adapter.detection_report
    x, sigma = _inputs()
    with torch.no_grad():
        bare = PARAM.denoise(lambda x_in, t: model(x_in, t), x, sigma)
        with adapter.apply(SkipSchedule.identity(2)):
            assert torch.equal(adapter.denoise(x, sigma), bare)  # rho = 1 is the bare network, bit for bit
        for rho in ([0.7, 1.3], [0.0, 1.0], [1.0, 0.5]):
            with adapter.apply(SkipSchedule.per_layer(rho)):
                tuned = adapter.denoise(x, sigma)
            torch.testing.assert_close(tuned, _reference(model, x, sigma, rho), atol=1e-6, rtol=0)
        assert torch.equal(adapter.denoise(x, sigma), bare)  # removed on leaving the block


def test_two_skips_in_one_concatenation() -> None:
    model = TwoSkipsOneCat().eval()
    adapter = GenericAdapter(model, name="two", parametrization=PARAM, img_shape=(1, 16, 16))
    assert [(p.cat_index, p.part, p.skip_channels) for p in adapter.skip_points] == [(0, 1, 4), (0, 2, 8)]
    x, sigma = _inputs()
    with torch.no_grad(), adapter.apply(SkipSchedule.per_layer([0.6, 1.2])):
        tuned = adapter.denoise(x, sigma)
    torch.testing.assert_close(tuned, _reference(model, x, sigma, [0.6, 1.2]), atol=1e-6, rtol=0)


def test_per_interval_rho_picks_the_sigma_of_each_sample() -> None:
    model = CatThenEmb().eval()
    adapter = GenericAdapter(model, name="intervals", parametrization=PARAM, img_shape=(1, 16, 16))
    schedule = SkipSchedule.intervals([[0.5, 0.9], [1.0, 1.0]], sigma_bounds=[float("inf"), 0.2, 0.0])
    x, sigma = _inputs()  # sigmas 1.5 and 0.5 fall in the first interval, 0.05 in the second
    with torch.no_grad(), adapter.apply(schedule):
        tuned = adapter.denoise(x, sigma)
    high = _reference(model, x[:2], sigma[:2], [0.5, 0.9])
    low = _reference(model, x[2:], sigma[2:], [1.0, 1.0])
    torch.testing.assert_close(tuned, torch.cat([high, low]), atol=1e-6, rtol=0)


def test_declared_consumer_must_receive_the_concatenation_itself() -> None:
    from skipsearch.models import ModelError
    with pytest.raises(ModelError, match="not a concatenation itself"):
        GenericAdapter(CatThenEmb().eval(), name="x", parametrization=PARAM, img_shape=(1, 16, 16),
                       consumers=["dec1", "dec0"])


def test_a_net_without_skips_is_a_one_line_error() -> None:
    from skipsearch.models import ModelError

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv(1, 4), nn.Conv2d(4, 1, 1)

        def forward(self, x, t):
            return self.b(self.a(x))

    with pytest.raises(ModelError, match="no skip connection found") as info:
        GenericAdapter(Plain(), name="plain", parametrization=PARAM, img_shape=(1, 16, 16))
    assert "\n" not in str(info.value)


def test_diffusers_up_blocks(unet2d_small) -> None:
    """diffusers UNet2DModel: both the consumer-hook adapter and cat interception match a hand-written forward
    that scales the skip channels of each up-block resnet's input."""
    unet = unet2d_small
    scheduler_adapter = DiffusersAdapter(unet, name="d")
    generic = GenericAdapter(unet, name="g", parametrization=scheduler_adapter.parametrization,
                             img_shape=scheduler_adapter.img_shape)
    k = len(scheduler_adapter.skip_points)
    assert [(p.resolution, p.skip_channels) for p in generic.skip_points] == \
        [(p.resolution, p.skip_channels) for p in scheduler_adapter.skip_points]
    rho = [0.5 + 0.1 * i for i in range(k)]
    x = torch.randn(2, *scheduler_adapter.img_shape, generator=torch.Generator().manual_seed(3))
    sigma = scheduler_adapter.round_sigma(torch.tensor([3.0, 0.3], dtype=torch.float64)).float()

    handles = []
    for point in scheduler_adapter.skip_points:  # the hand-written reference: scale the trailing skip channels
        module = dict(unet.named_modules())[point.consumer]

        def hook(_m, args, point=point):
            h = args[0]
            main, skip = h[:, : h.shape[1] - point.skip_channels], h[:, h.shape[1] - point.skip_channels:]
            return (torch.cat([main, rho[point.index] * skip], 1), *args[1:])

        handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        reference = scheduler_adapter.denoise(x, sigma)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        bare = scheduler_adapter.denoise(x, sigma)
        for adapter in (scheduler_adapter, generic):
            with adapter.apply(SkipSchedule.identity(k), check_identity=False):
                assert torch.equal(adapter.denoise(x, sigma), bare)
            with adapter.apply(SkipSchedule.per_layer(rho), check_identity=False):
                torch.testing.assert_close(adapter.denoise(x, sigma), reference, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def unet2d_small():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=4).eval().requires_grad_(False)
