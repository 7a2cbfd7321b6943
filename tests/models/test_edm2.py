"""EDM2: our magnitude-preserving UNet against the official layout, rho inside mp_cat, pickles, presets, a study."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.cli import assert_one_line_error, run_cli
from torch import nn

from skipsearch.models import ADAPTER_KINDS, adapt, apply, edm2_networks, load_model, recognise
from skipsearch.models.checkpoints import (
    CONFIG_ATTR,
    UntrustedPickleError,
    create_network,
    file_sha256,
    load_checkpoint,
    network_config,
    save_network,
)
from skipsearch.models.checkpoints.edm2_latents import SD_VAE_LATENTS, LatentStandardisation
from skipsearch.models.checkpoints.edm2_presets import EDM2_PRESETS
from skipsearch.models.edm2 import EDM2Adapter
from skipsearch.models.errors import ModelError
from skipsearch.schedule import SkipSchedule

# A small config: 16x16x3, 10 classes, widths 8 and 16, one block per level, attention at 8x8, heads of 8 channels.
SMALL = dict(img_resolution=16, img_channels=3, label_dim=10, model_channels=8, channel_mult=[1, 2], num_blocks=1,
             attn_resolutions=[8], channels_per_head=8, logvar_channels=8, use_fp16=False)

# The official key names and shapes for SMALL, from EDM2's layout: the encoder input has 3 + 1 (ones) channels; each
# level of the encoder holds a stem conv (level 0) or a down block, then num_blocks blocks; the decoder has in0/in1
# (bottom, in0 attends) or an up block, then num_blocks + 1 blocks taking main + skip channels; Blocks change width
# through a 1x1 conv_skip; attention adds qkv (3x) and proj; the Precond adds the log-variance head.
EXPECTED_STATE = """
unet.out_gain -
unet.emb_fourier.freqs 8
unet.emb_fourier.phases 8
unet.emb_noise.weight 16,8
unet.emb_label.weight 16,10
unet.enc.16x16_conv.weight 8,4,3,3
unet.enc.16x16_block0.emb_gain -
unet.enc.16x16_block0.conv_res0.weight 8,8,3,3
unet.enc.16x16_block0.emb_linear.weight 8,16
unet.enc.16x16_block0.conv_res1.weight 8,8,3,3
unet.enc.8x8_down.emb_gain -
unet.enc.8x8_down.conv_res0.weight 8,8,3,3
unet.enc.8x8_down.emb_linear.weight 8,16
unet.enc.8x8_down.conv_res1.weight 8,8,3,3
unet.enc.8x8_block0.emb_gain -
unet.enc.8x8_block0.conv_res0.weight 16,16,3,3
unet.enc.8x8_block0.emb_linear.weight 16,16
unet.enc.8x8_block0.conv_res1.weight 16,16,3,3
unet.enc.8x8_block0.conv_skip.weight 16,8,1,1
unet.enc.8x8_block0.attn_qkv.weight 48,16,1,1
unet.enc.8x8_block0.attn_proj.weight 16,16,1,1
unet.dec.8x8_in0.emb_gain -
unet.dec.8x8_in0.conv_res0.weight 16,16,3,3
unet.dec.8x8_in0.emb_linear.weight 16,16
unet.dec.8x8_in0.conv_res1.weight 16,16,3,3
unet.dec.8x8_in0.attn_qkv.weight 48,16,1,1
unet.dec.8x8_in0.attn_proj.weight 16,16,1,1
unet.dec.8x8_in1.emb_gain -
unet.dec.8x8_in1.conv_res0.weight 16,16,3,3
unet.dec.8x8_in1.emb_linear.weight 16,16
unet.dec.8x8_in1.conv_res1.weight 16,16,3,3
unet.dec.8x8_block0.emb_gain -
unet.dec.8x8_block0.conv_res0.weight 16,32,3,3
unet.dec.8x8_block0.emb_linear.weight 16,16
unet.dec.8x8_block0.conv_res1.weight 16,16,3,3
unet.dec.8x8_block0.conv_skip.weight 16,32,1,1
unet.dec.8x8_block0.attn_qkv.weight 48,16,1,1
unet.dec.8x8_block0.attn_proj.weight 16,16,1,1
unet.dec.8x8_block1.emb_gain -
unet.dec.8x8_block1.conv_res0.weight 16,24,3,3
unet.dec.8x8_block1.emb_linear.weight 16,16
unet.dec.8x8_block1.conv_res1.weight 16,16,3,3
unet.dec.8x8_block1.conv_skip.weight 16,24,1,1
unet.dec.8x8_block1.attn_qkv.weight 48,16,1,1
unet.dec.8x8_block1.attn_proj.weight 16,16,1,1
unet.dec.16x16_up.emb_gain -
unet.dec.16x16_up.conv_res0.weight 16,16,3,3
unet.dec.16x16_up.emb_linear.weight 16,16
unet.dec.16x16_up.conv_res1.weight 16,16,3,3
unet.dec.16x16_block0.emb_gain -
unet.dec.16x16_block0.conv_res0.weight 8,24,3,3
unet.dec.16x16_block0.emb_linear.weight 8,16
unet.dec.16x16_block0.conv_res1.weight 8,8,3,3
unet.dec.16x16_block0.conv_skip.weight 8,24,1,1
unet.dec.16x16_block1.emb_gain -
unet.dec.16x16_block1.conv_res0.weight 8,16,3,3
unet.dec.16x16_block1.emb_linear.weight 8,16
unet.dec.16x16_block1.conv_res1.weight 8,8,3,3
unet.dec.16x16_block1.conv_skip.weight 8,16,1,1
unet.out_conv.weight 3,8,3,3
logvar_fourier.freqs 8
logvar_fourier.phases 8
logvar_linear.weight 1,8
"""


def expected_state() -> dict[str, tuple[int, ...]]:
    rows = (line.split() for line in EXPECTED_STATE.strip().splitlines())
    return {key: () if shape == "-" else tuple(int(v) for v in shape.split(",")) for key, shape in rows}


def small_edm2(seed: int = 0, **overrides: Any) -> nn.Module:
    """A small EDM2 whose parameters are all random: the zero-initialised gains would make the UNet output 0."""
    torch.manual_seed(seed)
    net = create_network(edm2_networks.PRECOND_NAME, **{**SMALL, **overrides})
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if name.endswith("gain") else 1.0))
    return net.eval().requires_grad_(False)


def _inputs(net: nn.Module, n: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, net.img_channels, net.img_resolution, net.img_resolution, generator=gen)
    sigma = torch.tensor([0.05, 0.8, 12.0][:n])
    labels = torch.eye(net.label_dim)[torch.arange(n) % net.label_dim] if net.label_dim else None
    return x, sigma, labels


def _mp_cat_weights(na: int, nb: int, t: float) -> tuple[float, float]:
    # EDM2's magnitude-preserving concatenation (its Eq. 103): C = sqrt((Na + Nb) / ((1 - t)^2 + t^2)).
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return c * (1 - t) / math.sqrt(na), c * t / math.sqrt(nb)


def hand_forward(net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None,
                 rho: torch.Tensor) -> torch.Tensor:
    """D(x; sigma) with our own loop over the UNet: decoder skip k enters as cat([wa x, wb (rho[:, k] skip)])."""
    unet = net.unet
    s = sigma.reshape(-1, 1, 1, 1)
    sd = net.sigma_data
    c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
    emb = unet.embed(sigma.log() / 4, labels)
    h = torch.cat([c_in * x, torch.ones_like(x[:, :1])], dim=1)
    skips = []
    for name, module in unet.enc.items():
        h = module(h) if name.endswith("_conv") else module(h, emb)
        skips.append(h)
    k = 0
    for name, module in unet.dec.items():
        if "block" in name:
            skip = skips.pop()
            wa, wb = _mp_cat_weights(h.shape[1], skip.shape[1], unet.concat_balance)
            h = torch.cat([wa * h, wb * (rho[:, k].reshape(-1, 1, 1, 1) * skip)], dim=1)
            k += 1
        h = module(h, emb)
    assert k == rho.shape[1] and not skips
    return c_skip * x + c_out * unet.out_conv(h, gain=unet.out_gain)


# ----------------------------------------------------------------------------------------------------------------
# The network.


def test_state_dict_has_the_official_names_and_shapes_and_loads_strictly():
    net = small_edm2()
    state = net.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_state()
    assert list(state) == list(expected_state())  # the official registration order too
    other = small_edm2(seed=1)
    assert other.load_state_dict(state, strict=True).missing_keys == []
    x, sigma, labels = _inputs(net)
    assert torch.equal(other(x, sigma, labels), net(x, sigma, labels))


def test_magnitude_preserving_operations():
    a, b = torch.randn(4, 6, 5, 5), torch.randn(4, 2, 5, 5)
    wa, wb = _mp_cat_weights(6, 2, 0.3)
    assert torch.allclose(edm2_networks.mp_cat(a, b, t=0.3), torch.cat([wa * a, wb * b], dim=1))
    assert edm2_networks.mp_cat_weights(4, 4, 0.5) == (1.0, 1.0)
    big = torch.randn(20000)
    assert abs(float(edm2_networks.mp_silu(big).square().mean().sqrt()) - 1) < 0.05  # 0.596: SiLU's output RMS
    assert abs(float(edm2_networks.mp_sum(big, torch.randn(20000), t=0.3).std()) - 1) < 0.05
    w = torch.randn(3, 5) * 7
    assert torch.allclose(edm2_networks.normalize(w).square().mean(dim=1), torch.ones(3), atol=1e-3)


def test_forced_weight_normalisation_only_in_training():
    conv = edm2_networks.MPConv(4, 3, kernel=(3, 3))
    with torch.no_grad():
        conv.weight.mul_(5)
    before = conv.weight.detach().clone()
    x = torch.randn(2, 4, 6, 6)
    conv.eval()(x)
    assert torch.equal(conv.weight, before)
    y_eval = conv(x)
    conv.train()(x)
    assert torch.allclose(conv.weight, edm2_networks.normalize(before))  # the stored weight is renormalised
    # ... and the layer computes the same function (up to normalize's epsilon of 1e-4).
    assert torch.allclose(conv.eval()(x), y_eval, rtol=1e-3, atol=1e-4)
    assert torch.allclose(conv(x, gain=2.0), 2 * conv(x), atol=1e-6)


def test_precond_outputs_and_logvar_head():
    net = small_edm2()
    x, sigma, labels = _inputs(net)
    denoised, logvar = net(x, sigma, labels, return_logvar=True)
    assert torch.equal(denoised, net(x, sigma, labels)) and logvar.shape == (3, 1, 1, 1)
    plain = hand_forward(net, x, sigma, labels, torch.ones(3, 4))
    assert torch.allclose(denoised, plain, atol=1e-6, rtol=0)
    assert torch.equal(small_edm2(use_fp16=True)(x, sigma, labels), denoised)  # float16 on CUDA only
    unconditional = small_edm2(label_dim=0)
    assert "unet.emb_label.weight" not in unconditional.state_dict()
    assert unconditional(x, sigma).shape == x.shape


# ----------------------------------------------------------------------------------------------------------------
# Skip points and rho.


def test_skip_table_one_point_per_concatenating_decoder_block():
    adapter = adapt(small_edm2())
    assert isinstance(adapter, EDM2Adapter) and recognise(adapter.net) == "edm2" and "edm2" in ADAPTER_KINDS
    points = adapter.skip_points
    assert [p.consumer for p in points] == ["unet.dec.8x8_block0", "unet.dec.8x8_block1", "unet.dec.16x16_block0",
                                            "unet.dec.16x16_block1"]
    # LIFO over every encoder output, the stem conv included; the input cat([x, ones]) is not among them.
    assert [p.source for p in points] == ["unet.enc.8x8_block0", "unet.enc.8x8_down", "unet.enc.16x16_block0",
                                          "unet.enc.16x16_conv"]
    assert [(p.main_channels, p.skip_channels) for p in points] == [(16, 16), (16, 8), (16, 8), (8, 8)]


@pytest.mark.parametrize("name", [n for n in EDM2_PRESETS.names()])
def test_preset_skip_tables_have_16_points(name):
    preset = EDM2_PRESETS[name]
    with torch.device("meta"):
        net = preset.create()
    adapter = EDM2Adapter(net, name)
    assert len(adapter.skip_points) == preset.num_skip_points == 16
    assert adapter.img_shape == ((4 if preset.vae else 3), 64, 64) and adapter.label_dim == 1000
    channels = preset.kwargs["model_channels"]
    assert adapter.skip_points[-1].skip_channels == channels and adapter.skip_points[0].skip_channels == 4 * channels


def test_rho_one_is_bit_identical():
    net = small_edm2()
    adapter = adapt(net)
    x, sigma, labels = _inputs(net)
    plain = net(x, sigma, labels)
    # rho = 1 below sigma 1: hooks are installed (the schedule is not all ones) but multiply by 1.
    schedule = SkipSchedule.intervals([[0.5, 0.6, 0.7, 0.8], [1.0] * 4], sigma_bounds=[math.inf, 1.0, 0.0])
    with adapter.apply(schedule):
        tuned = adapter.denoise(x, sigma, labels)
    assert torch.equal(tuned[:2], plain[:2]) and not torch.equal(tuned[2], plain[2])
    with adapter.apply(SkipSchedule.identity(4)):
        assert torch.equal(adapter.denoise(x, sigma, labels), plain)


def test_rho_multiplies_the_skip_before_its_mp_cat_weight():
    net = small_edm2()
    adapter = adapt(net)
    x, sigma, labels = _inputs(net)
    values = [0.8, 1.3, 0.55, 0.9]
    rho = torch.tensor([values] * 3)
    expected = hand_forward(net, x, sigma, labels, rho)
    with adapter.apply(SkipSchedule.per_layer(values)):
        tuned = adapter.denoise(x, sigma, labels)
    assert (tuned - expected).abs().max() < 1e-6
    assert (tuned - net(x, sigma, labels)).abs().max() > 1e-2  # rho did change the output


def test_sigma_dependent_schedule_on_the_bare_network():
    net = small_edm2()
    x, sigma, labels = _inputs(net)
    matrix = [[0.7, 0.9, 1.1, 0.6], [1.2, 0.8, 0.75, 1.0]]
    schedule = SkipSchedule.intervals(matrix, sigma_bounds=[math.inf, 1.0, 0.0])
    with apply(net, schedule):
        tuned = net(x, sigma, labels)  # called directly: the sigma is captured from the call
    rho = torch.tensor([matrix[1], matrix[1], matrix[0]])  # sigmas 0.05 and 0.8 lie below 1, 12 above
    assert (tuned - hand_forward(net, x, sigma, labels, rho)).abs().max() < 1e-6


def test_check_model_reads_the_edm2_unet_under_other_preconditionings():
    from skipsearch.models.check import check_model
    report = check_model(adapt(small_edm2(label_dim=0)), n=8)
    assert [r.value for r in report.alternatives] == ['[0, 1]', '"vp"', '"ve"', '"denoiser"']
    assert all(len(r.errors) == len(report.sigmas) and all(math.isfinite(e) for e in r.errors)
               for r in [report.spec, *report.alternatives])


# ----------------------------------------------------------------------------------------------------------------
# Files: our safetensors, and pickles with the official EDM2 layout.


class _StabilityVAEEncoder:
    """Stands in for EDM2's latent encoder in a pickle: its recorded fields only."""

    def __init__(self, latents: LatentStandardisation):
        self.vae_name, self.batch_size, self._vae = "stabilityai/sd-vae-ft-mse", 8, None
        self.scale, self.bias = np.float32(latents.scale), np.float32(latents.bias)


class _Edm2LayoutPickler(pickle.Pickler):
    """Pickles our EDM2 modules the way ``torch_utils.persistence`` does: ``(_reconstruct_persistent_obj, (meta,))``
    with the class name and instance ``__dict__``; torch containers stay ordinary."""

    def __init__(self, file: io.BytesIO, reconstruct: Any):
        super().__init__(file, protocol=pickle.DEFAULT_PROTOCOL)
        self.reconstruct = reconstruct

    def reducer_override(self, obj: Any) -> Any:
        ours = isinstance(obj, nn.Module) and type(obj).__module__ == edm2_networks.__name__
        if not ours and not isinstance(obj, _StabilityVAEEncoder):
            return NotImplemented
        state = dict(obj.__dict__)
        config = state.pop(CONFIG_ATTR, None)
        state["_init_args"], state["_init_kwargs"] = (), dict(config["kwargs"]) if config else {}
        name = "StabilityVAEEncoder" if isinstance(obj, _StabilityVAEEncoder) else type(obj).__name__
        meta = dict(type="class", version=6, module_src="# networks_edm2.py stand-in; never executed\n",
                    class_name=name, state=state)
        return self.reconstruct, (meta,)


def _fake_module(name: str, **members: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in members.items():
        value.__module__, value.__qualname__ = name, key
        setattr(module, key, value)
    return module


def edm2_layout_pickle(ema: nn.Module, encoder: Any = None) -> bytes:
    """``pickle`` of EDM2's snapshot ``EasyDict(encoder=..., dataset_kwargs=..., loss_fn=None, ema=...)``, the network
    in float16 as the training loop saves it."""
    def _reconstruct_persistent_obj(meta: dict) -> Any:
        raise AssertionError("the loader must not call the pickling side's function")

    class EasyDict(dict):
        pass

    fakes = {"torch_utils": types.ModuleType("torch_utils"), "dnnlib": types.ModuleType("dnnlib"),
             "torch_utils.persistence": _fake_module("torch_utils.persistence",
                                                     _reconstruct_persistent_obj=_reconstruct_persistent_obj),
             "dnnlib.util": _fake_module("dnnlib.util", EasyDict=EasyDict)}
    sys.modules.update(fakes)
    try:
        half = copy.deepcopy(ema).to(torch.float16)
        data = EasyDict(encoder=encoder, dataset_kwargs=EasyDict(path="img.zip"), loss_fn=None, ema=half)
        buffer = io.BytesIO()
        _Edm2LayoutPickler(buffer, _reconstruct_persistent_obj).dump(data)
        return buffer.getvalue()
    finally:
        for name in fakes:
            del sys.modules[name]


def test_safetensors_round_trip(tmp_path: Path):
    net = small_edm2()
    path = save_network(net, tmp_path / "edm2.safetensors")
    loaded = load_checkpoint(path)
    assert type(loaded) is edm2_networks.Precond and network_config(loaded) == network_config(net)
    x, sigma, labels = _inputs(net)
    assert torch.equal(loaded(x, sigma, labels), net(x, sigma, labels))


def test_official_layout_pickle_loads_strictly_behind_the_trust_flag(tmp_path: Path):
    net = small_edm2()
    data = edm2_layout_pickle(net, _StabilityVAEEncoder(SD_VAE_LATENTS))
    assert b"torch_utils.persistence" in data and b"skipsearch" not in data and b"tests" not in data
    path = tmp_path / "edm2-snapshot.pkl"
    path.write_bytes(data)
    with pytest.raises(UntrustedPickleError, match="--trust-pickle"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust_pickle=True)
    assert type(loaded) is edm2_networks.Precond and not loaded.training
    assert network_config(loaded)["precond"] == edm2_networks.PRECOND_NAME
    for key, value in net.state_dict().items():  # float16 in the file, float32 in our network
        assert loaded.state_dict()[key].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key
    assert loaded.edm2_latents == LatentStandardisation(*(tuple(float(np.float32(v)) for v in part)
                                                         for part in (SD_VAE_LATENTS.scale, SD_VAE_LATENTS.bias)))
    assert isinstance(adapt(loaded), EDM2Adapter)


def test_pickle_through_the_cli_needs_the_flag(tmp_path: Path, capsys):
    path = tmp_path / "edm2.pkl"
    path.write_bytes(edm2_layout_pickle(small_edm2()))
    model = tmp_path / "edm2.toml"
    model.write_text(f'[model]\nname = "tiny-edm2"\nedm = "{path}"\n')
    assert_one_line_error(run_cli(capsys, "skip-points", "--model", str(model)), "--trust-pickle")
    ok = run_cli(capsys, "skip-points", "--model", str(model), "--trust-pickle", "--device", "cpu")
    assert ok.code == 0, ok.err
    assert "unet.dec.16x16_block1" in ok.out


# ----------------------------------------------------------------------------------------------------------------
# Presets.


def test_preset_facts():
    widths = {"xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}
    assert EDM2_PRESETS.names() == [f"edm2-img64-{s}" for s in ("xs", "s", "m", "l", "xl")] + \
        [f"edm2-img512-{s}" for s in widths]
    for name, preset in EDM2_PRESETS.items():
        size = name.rsplit("-", 1)[1]
        assert preset.kwargs["model_channels"] == widths[size]
        assert preset.kwargs["channel_mult"] == [1, 2, 3, 4] and preset.kwargs["num_blocks"] == 3
        assert preset.kwargs["attn_resolutions"] == [16, 8] and preset.kwargs["label_dim"] == 1000
        assert preset.url.startswith("https://nvlabs-fi-cdn.nvidia.com/edm2/") and preset.filename.startswith(name)
        assert (preset.vae is not None) == ("img512" in name)
    # EDM2's standardisation: raw latents of mean (5.81, 3.25, 0.12, -2.15), std (4.17, 4.62, 3.71, 3.28) -> 0, 0.5.
    assert SD_VAE_LATENTS.scale[0] == pytest.approx(0.5 / 4.17)
    assert SD_VAE_LATENTS.bias[3] == pytest.approx(2.15 * 0.5 / 3.28)


def test_preset_without_weights_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    result = run_cli(capsys, "skip-points", "--model", "edm2-img64-s")
    assert_one_line_error(result, "edm2-img64-s", "--checkpoint PATH",
                          "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img64-s-")


def test_preset_refuses_weights_of_another_architecture(tmp_path: Path):
    path = save_network(small_edm2(), tmp_path / "small.safetensors")
    with pytest.raises(ModelError, match="is not edm2-img64-m: img_resolution 16 .expected 64.") as info:
        load_model("edm2-img64-m", checkpoint=path)
    assert "\n" not in str(info.value)


def test_pixel_preset_loads_an_official_layout_pickle(tmp_path: Path):
    from skipsearch.models.loading import LoadRequest, _edm2_preset_loader
    from skipsearch.settings import Settings

    preset = dataclasses.replace(EDM2_PRESETS["edm2-img64-s"], kwargs=dict(SMALL, model_channels=8))
    net = small_edm2()
    path = tmp_path / preset.filename
    path.write_bytes(edm2_layout_pickle(net))
    settings = dataclasses.replace(Settings.from_env(), cache=tmp_path / "cache", offline=True)
    with pytest.raises(ModelError, match="--trust-pickle"):
        _edm2_preset_loader(preset)(LoadRequest(path, False, False, settings))
    adapter = _edm2_preset_loader(preset)(LoadRequest(path, True, False, settings))
    assert isinstance(adapter, EDM2Adapter) and adapter.name == "edm2-img64-s" and adapter.dataset == "imagenet64"
    assert adapter.latent_decoder is None and len(adapter.skip_points) == 4
    x, sigma, labels = _inputs(net)
    assert torch.allclose(adapter.denoise(x, sigma, labels), net.half().float()(x, sigma, labels), atol=1e-5)


def test_latent_preset_decodes_with_the_standardised_sd_vae(tmp_path: Path):
    from diffusers import AutoencoderKL

    from skipsearch.models.loading import LoadRequest, _edm2_preset_loader
    from skipsearch.settings import Settings

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1)
    cache = tmp_path / "cache"
    vae.save_pretrained(cache / "sd-vae-ft-mse")
    tiny = dict(SMALL, img_channels=4, label_dim=1000)
    preset = dataclasses.replace(EDM2_PRESETS["edm2-img512-xs"], kwargs=dict(tiny, model_channels=8))
    weights = save_network(small_edm2(**tiny), tmp_path / "tiny512.safetensors")
    settings = dataclasses.replace(Settings.from_env(), cache=cache, offline=True)
    adapter = _edm2_preset_loader(preset)(LoadRequest(weights, False, False, settings))
    decoder = adapter.latent_decoder
    assert adapter.img_shape == (4, 16, 16) and (adapter.data_range.lo, adapter.data_range.hi) == (0.0, 1.0)
    z = torch.randn(2, 4, 16, 16)
    scale = torch.tensor(SD_VAE_LATENTS.scale).reshape(1, -1, 1, 1)
    bias = torch.tensor(SD_VAE_LATENTS.bias).reshape(1, -1, 1, 1)
    with torch.no_grad():
        images = decoder.decode_batched(z)
        assert images.shape == (2, 3, 32, 32) and decoder.pixel_shape == (3, 32, 32)  # the VAE's 2x, here
        assert torch.allclose(images, vae.decode((z - bias) / scale).sample, atol=1e-6)
    identity = adapter.identity.sha256
    (cache / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError):  # the VAE is needed
        _edm2_preset_loader(preset)(LoadRequest(weights, False, False, settings))
    plain = EDM2Adapter(adapter.net, preset.name, weights_sha256=file_sha256(weights))
    assert identity != plain.identity.sha256  # the decoder and its standardisation are part of the identity


# ----------------------------------------------------------------------------------------------------------------
# A study end to end, and the generic route.


def _tiny_model_file(tmp_path: Path) -> Path:
    net = small_edm2(label_dim=0)
    weights = save_network(net, tmp_path / "tiny-edm2.safetensors")
    model = tmp_path / "tiny-edm2.toml"
    model.write_text(f'[model]\nname = "tiny-edm2"\nedm = "{weights}"\n')
    return model


@pytest.mark.slow
def test_two_trial_study_end_to_end(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    result = run_cli(capsys, "optimize", "--model", str(_tiny_model_file(tmp_path)), "--nfe", "5", "--trials", "2",
                     "--rungs", "16,32", "--final-n", "32", "--top-k", "1", "--dataset", "self:n=32,nfe=9",
                     "--extractor", "mnist-features", "--rho-min", "0.5", "--rho-max", "1.2", "--no-check",
                     "--storage", url, "--device", "cpu", "--study-name", "edm2")
    assert result.code == 0, result.err[-3000:]
    from skipsearch.store.best import BestStore
    with BestStore(url) as store:
        (row,) = store.best()
    assert row.model_name == "tiny-edm2" and row.nfe == 5 and math.isfinite(row.value)


def _generic_model_file(tmp_path: Path, net: nn.Module) -> Path:
    """A model file whose factory builds our bare EDM2 UNet (no Precond): the generic route detects its skips."""
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in net.unet.state_dict().items()}, str(tmp_path / "unet.safetensors"))
    kwargs = {k: v for k, v in SMALL.items() if k not in ("logvar_channels", "use_fp16")}
    kwargs["label_dim"] = 0
    lines = [f"{k} = {json.dumps(v)}" for k, v in kwargs.items()]
    model = tmp_path / "edm2-generic.toml"
    model.write_text("\n".join(["[model]", 'name = "edm2-generic"', 'weights = "unet.safetensors"',
                                'factory = "skipsearch.models.edm2_networks:UNet"', "[model.kwargs]", *lines,
                                "[parametrization]", 'type = "edm"', "[data]", "shape = [3, 16, 16]", ""]))
    return model


def test_generic_route_does_not_take_the_input_cat_as_a_skip(tmp_path: Path):
    net = small_edm2(label_dim=0)
    adapter = load_model(str(_generic_model_file(tmp_path, net)))
    assert len(adapter.skip_points) == 4
    x, sigma, _ = _inputs(net)
    values = [0.8, 1.3, 0.55, 0.9]
    with adapter.apply(SkipSchedule.per_layer(values), check_identity=False):
        tuned = adapter.denoise(x, sigma)
    assert (tuned - hand_forward(net, x, sigma, None, torch.tensor([values] * 3))).abs().max() < 1e-5
