"""Latent diffusion: a diffusers pipeline folder with an autoencoder, decoded before anything looks at images."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from skipsearch.errors import SkipsearchError  # noqa: E402
from skipsearch.models import load_model  # noqa: E402
from skipsearch.models.errors import ModelError  # noqa: E402
from skipsearch.models.latent import LatentDecoder, load_latent_decoder  # noqa: E402
from skipsearch.sampling.generate import generate  # noqa: E402
from skipsearch.schedule import ScheduleError, SkipSchedule  # noqa: E402
from skipsearch.settings import Settings  # noqa: E402

LATENT_SHAPE, PIXEL_SHAPE = (2, 8, 8), (1, 16, 16)


def tiny_vae(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, sample_size=16,
                                  block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.5)
    with torch.no_grad():  # random weights decode to nearly flat images; spread them over the data range
        vae.decoder.conv_out.weight.mul_(30.0)
    return vae.eval()


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(1)
    return diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()


def save_pipeline(folder: Path, *, vae_seed: int = 0, vae_key: str = "vae", index: bool = True) -> Path:
    tiny_unet().save_pretrained(folder / "unet")
    tiny_vae(vae_seed).save_pretrained(folder / vae_key)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    if index:
        (folder / "model_index.json").write_text(json.dumps(
            {"_class_name": "LatentDiffusionPipeline", "unet": ["diffusers", "UNet2DModel"],
             vae_key: ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pipeline(tmp_path_factory.mktemp("ldm") / "pipe")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(cache=tmp_path_factory.mktemp("cache"), offline=True, batch_calibration=False)


def model_file(folder: Path, latent: str, name: str = "tiny-ldm") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'[model]\nname = "{name}"\ndiffusers = "pipe/unet"\n\n[latent]\n{latent}\n')
    return path


def test_a_latent_pipeline_folder_loads_with_its_decoder(pipeline: Path, settings: Settings) -> None:
    adapter = load_model(f"diffusers:{pipeline}", settings=settings)
    decoder = adapter.latent_decoder
    assert decoder is not None and decoder.encode is not None
    assert tuple(adapter.img_shape) == LATENT_SHAPE and adapter.pixel_shape == PIXEL_SHAPE
    assert decoder.scaling_factor == 0.5 and len(adapter.skip_points) == 4
    latents = torch.randn(3, *LATENT_SHAPE)
    vae = decoder.module
    assert torch.equal(decoder.decode_batched(latents), vae.decode(latents / 0.5).sample)
    assert tuple(adapter.probe_images(4).shape) == (4, *LATENT_SHAPE)  # encoded probe images: the sampler's state


def test_check_model_denoises_latents_and_checks_decoded_images(pipeline: Path, settings: Settings) -> None:
    from skipsearch.models.check import check_model
    from skipsearch.sampling.generate import untuned_images
    adapter = load_model(f"diffusers:{pipeline}", settings=settings)
    report = check_model(adapter, n=8, images=untuned_images, settings=settings)
    assert all(math.isfinite(e) for e in report.spec.errors)
    assert not any(r.field == "[data] range" for r in report.alternatives)  # the latent UNet never sees pixels
    adapter.latent_decoder = dataclasses.replace(adapter.latent_decoder, encode=None)
    noise = adapter.probe_images(4, seed=3)  # no encoder: noise of the latents' unit scale
    assert torch.equal(noise, torch.randn(4, *LATENT_SHAPE, generator=torch.Generator().manual_seed(3)))


def test_a_plain_unet_folder_stays_a_pixel_model(pipeline: Path, settings: Settings) -> None:
    adapter = load_model(f"diffusers:{pipeline / 'unet'}", settings=settings)
    assert adapter.latent_decoder is None and adapter.pixel_shape == tuple(adapter.img_shape)


def test_ldm_vqvae_subfolder_without_model_index(tmp_path: Path, settings: Settings) -> None:
    folder = tmp_path / "pipe"
    tiny_unet().save_pretrained(folder / "unet")
    torch.manual_seed(0)
    diffusers.VQModel(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 8),
                      layers_per_block=1, norm_num_groups=4, num_vq_embeddings=16, sample_size=16,
                      down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(folder / "vqvae")
    adapter = load_model(f"diffusers:{folder}", settings=settings)
    assert type(adapter.latent_decoder.module).__name__ == "VQModel" and adapter.pixel_shape == PIXEL_SHAPE
    latents = adapter.probe_images(2)  # encoded before quantisation, as LDM's latents are
    assert tuple(adapter.latent_decoder.decode_batched(latents, check=False).shape) == (2, *PIXEL_SHAPE)


def test_a_model_file_latent_section(pipeline: Path, settings: Settings) -> None:
    path = model_file(pipeline.parent, 'decoder = "diffusers:pipe/vae"\nscaling_factor = 0.25\n'
                                       'pixel_shape = [1, 16, 16]')
    adapter = load_model(str(path), settings=settings)
    assert adapter.latent_decoder.scaling_factor == 0.25 and adapter.pixel_shape == PIXEL_SHAPE
    other = load_model(str(model_file(pipeline.parent, 'decoder = "diffusers:pipe/vae"', "other")),
                       settings=settings)
    assert other.latent_decoder.scaling_factor == 0.5  # the VAE config's
    assert adapter.identity.sha256 != other.identity.sha256  # another scaling is another model


def test_generate_returns_the_decoded_latents(pipeline: Path, settings: Settings) -> None:
    adapter = load_model(f"diffusers:{pipeline}", settings=settings)
    seen: list[torch.Tensor] = []
    real = adapter.latent_decoder

    def recording(latents: torch.Tensor) -> torch.Tensor:
        seen.append(latents.clone())
        return real.decode(latents)

    adapter.latent_decoder = dataclasses.replace(real, decode=recording, batch=2)
    result = generate(adapter, sampler="ddim", nfe=4, seeds=range(5))
    assert tuple(result.images.shape) == (5, *PIXEL_SHAPE) and result.images.dtype == torch.uint8
    latents = torch.cat(seen)
    assert tuple(latents.shape) == (5, *LATENT_SHAPE) and len(seen) == 3  # decoded in batches of 2
    assert torch.equal(result.images, adapter.data_range.to_uint8(real.decode(latents)))


def test_rho_scales_the_latent_unet_and_identity_is_exact(pipeline: Path, settings: Settings) -> None:
    adapter = load_model(f"diffusers:{pipeline}", settings=settings)
    x, sigma = torch.randn(2, *LATENT_SHAPE, generator=torch.Generator().manual_seed(0)), torch.full((2,), 1.5)
    plain = adapter.denoise(x, sigma)
    with adapter.apply(SkipSchedule.identity(len(adapter.skip_points))):
        assert torch.equal(adapter.denoise(x, sigma), plain)
    with adapter.apply(SkipSchedule.constant(0.5, len(adapter.skip_points))):
        assert not torch.allclose(adapter.denoise(x, sigma), plain)


def test_identity_covers_the_decoder_weights(tmp_path: Path, pipeline: Path, settings: Settings) -> None:
    first = load_model(f"diffusers:{pipeline}", settings=settings)
    second = load_model(f"diffusers:{save_pipeline(tmp_path / 'pipe', vae_seed=1)}", settings=settings)
    assert first.identity.name == second.identity.name
    assert first.identity.sha256 != second.identity.sha256
    schedule = SkipSchedule.constant(0.9, len(first.skip_points)).with_metadata(model=first.identity)
    first.apply(schedule).remove()
    with pytest.raises(ScheduleError, match="sha256"):
        second.apply(schedule)


@pytest.mark.parametrize(("latent", "match"), [
    ('decoder = "vae"', "must be 'diffusers:DIR' or a factory"),
    ('decoder = "diffusers:pipe/vae"\nscaling_factor = -1', r"\[latent\] scaling_factor must be positive"),
    ('decoder = "diffusers:pipe/vae"\nshape = [4, 7]', r"\[latent\] shape must be \[channels, height, width\]"),
    ('decoder = "diffusers:pipe/nothing"', "no such folder"),
    ('decoder = "diffusers:pipe/unet"', "UNet2DModel is not one of AutoencoderKL, VQModel"),
    ('decoder = "diffusers:pipe/vae"\nsize = 3', r"\[latent\] has no field 'size'"),
])
def test_a_bad_latent_section_is_one_line(pipeline: Path, settings: Settings, latent: str, match: str) -> None:
    with pytest.raises(ModelError, match=match) as info:
        load_model(str(model_file(pipeline.parent, latent, "bad")), settings=settings)
    assert "\n" not in str(info.value)


def test_a_hub_decoder_offline_is_one_line() -> None:
    with pytest.raises(ModelError, match="offline") as info:
        load_latent_decoder("diffusers:stabilityai/sd-vae-ft-mse", offline=True)
    assert "\n" not in str(info.value)


def flat_decoder() -> LatentDecoder:
    """A factory decoder whose images are all one value (a broken decoder)."""
    return LatentDecoder(decode=lambda z: torch.zeros(len(z), *PIXEL_SHAPE), pixel_shape=PIXEL_SHAPE,
                         sha256="0" * 64)


def test_a_constant_decoder_fails_instead_of_scoring(pipeline: Path, settings: Settings) -> None:
    adapter = load_model(f"diffusers:{pipeline}", settings=settings)
    adapter.latent_decoder = flat_decoder()
    with pytest.raises(SkipsearchError, match="blank|constant"):
        generate(adapter, sampler="ddim", nfe=2, seeds=range(3))
    with pytest.raises(ModelError, match="constant"):
        adapter.latent_decoder.decode_batched(torch.randn(3, *LATENT_SHAPE))
    nan = dataclasses.replace(flat_decoder(), decode=lambda z: torch.full((len(z), *PIXEL_SHAPE), float("nan")))
    with pytest.raises(ModelError, match="not finite"):
        nan.decode_batched(torch.randn(3, *LATENT_SHAPE))


def test_a_factory_decoder(tmp_path: Path) -> None:
    (tmp_path / "dec.py").write_text("def build():\n    return lambda z: z.repeat(1, 1, 2, 2)[:, :1]\n")
    decoder = load_latent_decoder("dec.py:build", pixel_shape=PIXEL_SHAPE, scaling_factor=2.0, folder=tmp_path)
    z = torch.randn(2, *LATENT_SHAPE)
    assert torch.equal(decoder.decode_batched(z), (z / 2.0).repeat(1, 1, 2, 2)[:, :1])


def test_the_bundled_latent_model_samples_with_ddim_by_default() -> None:
    from skipsearch.search.definition import default_sampler
    assert default_sampler("ldm-mnist") == "ddim"


@pytest.mark.slow
def test_a_study_on_the_bundled_latent_model_offline(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    command = [sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "ldm-mnist", "--sampler", "ddim",
               "--nfe", "5", "--trials", "3", "--rungs", "24,48", "--final-n", "48", "--top-k", "1",
               "--storage", f"sqlite:///{db}"]
    env = {**os.environ, "SKIPSEARCH_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "SKIPSEARCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ldm-mnist" in done.stdout
