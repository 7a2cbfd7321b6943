"""Reference sets from where users keep images: one spec form (``skipsearch.proxy.datasets``) for every command.

The data are 64 real MNIST test digits (``skipsearch.data.load_mnist``), coloured and padded to 32x32 RGB, written as
a folder of PNGs, an EDM ``dataset_tool`` zip, npz arrays and a torchvision-layout root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import assert_one_line_error, run_cli
from PIL import Image

from skipsearch.data import load_mnist, mnist_root
from skipsearch.errors import SkipsearchError
from skipsearch.proxy.config import ProxyConfig
from skipsearch.proxy.datasets import DatasetSpec, DatasetSpecError, fit_shape, load_images
from skipsearch.proxy.errors import ProxyConfigError
from skipsearch.proxy.stats import FeatureStats, compute_reference_stats, save_npz

N = 64


@pytest.fixture(scope="module")
def gray() -> torch.Tensor:
    return load_mnist("test")[0][:N]  # uint8 [64, 1, 28, 28]


@pytest.fixture(scope="module")
def digits(gray) -> torch.Tensor:
    """The 64 digits coloured (a per-image tint) and padded to 32x32 RGB, uint8 [64, 3, 32, 32]."""
    tint = torch.rand(N, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.4
    out = torch.zeros(N, 3, 32, 32, dtype=torch.uint8)
    out[:, :, 2:30, 2:30] = (gray.to(torch.float32) * tint).round().to(torch.uint8)
    return out


@pytest.fixture(scope="module")
def extractor():
    from skipsearch.proxy.extractors import get_extractor
    return get_extractor("mnist-features")


def _png(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def _folder(images: torch.Tensor, root: Path) -> Path:
    for i, image in enumerate(images):  # two levels: the folder is read recursively
        _png(image, root / f"part{i % 2}" / f"img{i:03d}.png")
    return root


def _expected(extractor, images: torch.Tensor) -> FeatureStats:
    return FeatureStats.from_features(extractor(images))


def _same(a: FeatureStats, b: FeatureStats) -> None:
    np.testing.assert_allclose(a.mu, b.mu, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-6, atol=1e-8)


def test_spec_parsing_and_bad_specs(tmp_path):
    assert DatasetSpec.parse("mnist").registered
    spec = DatasetSpec.parse("torchvision:CIFAR10:/data/cifar")
    assert (spec.kind, spec.name, spec.path) == ("torchvision", "CIFAR10", Path("/data/cifar"))
    assert DatasetSpec.parse("self").options == {"n": 2000, "sampler": "heun", "nfe": 35}
    assert DatasetSpec.parse("self:n=8,nfe=17").options == {"n": 8, "sampler": "heun", "nfe": 17}
    for bad, fragment in [("webdataset:x", "unknown kind 'webdataset'"), ("folder:", "give a path"),
                          ("torchvision:ImageNet:/x", "NAME one of"), ("self:k=3", "options are"), ("", "empty")]:
        with pytest.raises(DatasetSpecError, match=fragment) as info:
            DatasetSpec.parse(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(SkipsearchError, match="unknown kind"):  # a study file or Python fails at once
        ProxyConfig(dataset="s3:bucket")
    with pytest.raises(ProxyConfigError, match="resize"):
        ProxyConfig(resize="stretch")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    for spec, fragment in [(f"folder:{empty}", "no PNG/JPEG/WebP"), (f"folder:{tmp_path / 'nope'}", "does not exist"),
                           (f"zip:{tmp_path / 'nope.zip'}", "does not exist"),
                           (f"npz:{tmp_path / 'nope.npz'}", "does not exist")]:
        with pytest.raises(DatasetSpecError, match=fragment) as info:
            load_images(spec)
        assert spec in str(info.value) and "\n" not in str(info.value)


def test_folder_zip_npz_give_the_same_statistics(tmp_path, digits, extractor):
    expected = _expected(extractor, digits)
    cache = tmp_path / "cache"
    folder = _folder(digits, tmp_path / "pngs")
    ref = compute_reference_stats(f"folder:{folder}", "train", extractor, cache=cache)
    assert (ref.status, ref.stats.n, ref.stats.meta["shape"]) == ("miss", N, "3x32x32")
    _same(ref.stats, expected)  # PNG is lossless: exactly the digits, in sorted path order
    assert compute_reference_stats(f"folder:{folder}", "train", extractor, cache=cache).status == "hit"

    # EDM's dataset_tool layout: 00000/img00000000.png ... and dataset.json with labels
    archive = tmp_path / "digits.zip"
    labels = load_mnist("test")[1][:N].tolist()
    with zipfile.ZipFile(archive, "w") as zf:
        names = []
        for i, image in enumerate(digits):
            name = f"{i // 1000:05d}/img{i:08d}.png"
            path = tmp_path / "z.png"
            _png(image, path)
            zf.write(path, name)
            names.append(name)
        zf.writestr("dataset.json", json.dumps({"labels": [[n, lab] for n, lab in zip(names, labels)]}))
    ref = compute_reference_stats(f"zip:{archive}", "train", extractor, cache=cache)
    assert ref.status == "miss" and ref.stats.n == N
    _same(ref.stats, expected)

    nhwc, nchw = tmp_path / "nhwc.npz", tmp_path / "nchw.npz"
    np.savez(nhwc, images=digits.permute(0, 2, 3, 1).numpy(), labels=np.array(labels))  # 'images' is used
    np.savez(nchw, digits.numpy())  # arr_0
    for path in (nhwc, nchw):
        ref = compute_reference_stats(f"npz:{path}", "train", extractor, cache=cache)
        assert ref.stats.n == N
        _same(ref.stats, expected)


def test_bad_archives_and_arrays_are_one_line_errors(tmp_path, digits):
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=digits.numpy().astype(np.float32))
    two = tmp_path / "two.npz"
    np.savez(two, a=digits.numpy(), b=digits.numpy())
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "broken.png").write_bytes(b"not a png at all")
    mixed = _folder(digits[:2], tmp_path / "mixed")
    _png(digits[0, :, :28, :28], mixed / "small.png")
    badzip = tmp_path / "bad.zip"
    with zipfile.ZipFile(badzip, "w") as zf:
        zf.writestr("00000/img00000000.png", b"")
        zf.writestr("dataset.json", "{not json")
    for spec, fragment in [(f"npz:{floats}", "dtype float32"), (f"npz:{two}", "no array named"),
                           (f"folder:{junk}", "cannot read image broken.png"), (f"folder:{mixed}", "one size"),
                           (f"zip:{badzip}", "dataset.json"), (f"zip:{junk / 'broken.png'}", "not a readable zip")]:
        with pytest.raises(DatasetSpecError, match=fragment) as info:
            load_images(spec)
        assert spec in str(info.value) and "\n" not in str(info.value)


def test_shape_must_match_the_model_or_be_center_cropped(tmp_path, digits, gray, extractor, bundled):
    folder = _folder(digits, tmp_path / "rgb32")
    with pytest.raises(DatasetSpecError, match="images are 3x32x32 but the model makes 1x28x28") as info:
        compute_reference_stats(f"folder:{folder}", "train", extractor, cache=tmp_path / "c", adapter=bundled)
    assert "center-crop" in str(info.value) and "\n" not in str(info.value)
    ref = compute_reference_stats(f"folder:{folder}", "train", extractor, cache=tmp_path / "c", adapter=bundled,
                                  resize="center-crop")
    assert ref.stats.meta["shape"] == "1x28x28" and ref.stats.n == N
    back = fit_shape(digits[:1], (1, 28, 28), "center-crop", "t")  # RGB -> gray, 32 -> 28
    assert back.shape == (1, 1, 28, 28) and back.dtype == torch.uint8
    wide = fit_shape(torch.zeros(2, 1, 28, 56, dtype=torch.uint8), (3, 32, 32), "center-crop", "t")
    assert wide.shape == (2, 3, 32, 32) and wide.dtype == torch.uint8
    # registered data sets keep their old behaviour (the extractor adapts them): no shape check
    assert compute_reference_stats("mnist", "train", extractor, adapter=bundled).stats.n == 60000


def test_a_changed_folder_is_recomputed(tmp_path, digits, extractor):
    folder = _folder(digits[:16], tmp_path / "imgs")
    cache = tmp_path / "cache"
    first = compute_reference_stats(f"folder:{folder}", "train", extractor, cache=cache)
    assert compute_reference_stats(f"folder:{folder}", "train", extractor, cache=cache).status == "hit"
    target = folder / "part0" / "img000.png"
    before = target.stat()
    _png(digits[40], target)  # another digit under the same name
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # coarse-mtime filesystems
    again = compute_reference_stats(f"folder:{folder}", "train", extractor, cache=cache)
    assert again.status == "miss" and again.path != first.path
    assert not np.allclose(again.stats.mu, first.stats.mu)
    _png(digits[41], folder / "part1" / "extra.png")  # an added file, too
    added = compute_reference_stats(f"folder:{folder}", "train", extractor, cache=cache)
    assert added.status == "miss" and added.stats.n == 17


def test_torchvision_layout_without_download(tmp_path, gray):
    # A FashionMNIST-layout root holding 64 real MNIST digits as uncompressed idx files.
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    labels = load_mnist("test")[1][:N].numpy().astype(np.uint8)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in (N, 28, 28))
            + gray[:, 0].numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + N.to_bytes(4, "big")
                                                          + labels.tobytes())
    images = load_images(f"torchvision:FashionMNIST:{tmp_path}", "test")
    assert images.dtype == torch.uint8 and torch.equal(images, gray)
    with pytest.raises(DatasetSpecError, match="never downloaded") as info:
        load_images(f"torchvision:CIFAR10:{tmp_path}")
    assert f"cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz) under {tmp_path}" in str(info.value)
    with pytest.raises(DatasetSpecError, match="unknown split"):
        load_images(f"torchvision:FashionMNIST:{tmp_path}", "val")


@pytest.mark.slow
def test_torchvision_mnist_is_the_bundled_mnist():
    root = mnist_root()  # ../shared/data/mnist is a torchvision MNIST root
    assert torch.equal(load_images(f"torchvision:MNIST:{root}", "test"), load_mnist("test")[0])


def test_stats_spec_checks_the_extractor(tmp_path, digits, extractor):
    stats = _expected(extractor, digits)
    path = save_npz(tmp_path / "ref.npz", FeatureStats(stats.mu, stats.sigma))  # EDM-style: mu, sigma only
    ref = compute_reference_stats(f"stats:{path}", "train", extractor, cache=tmp_path / "c")
    assert ref.status == "file"
    _same(ref.stats, stats)
    small = save_npz(tmp_path / "inception-like.npz", FeatureStats(np.zeros(10), np.eye(10)))
    with pytest.raises(ProxyConfigError, match="10-d statistics, but extractor mnist-features gives 232-d"):
        compute_reference_stats(f"stats:{small}", "train", extractor)
    other = save_npz(tmp_path / "other.npz", FeatureStats(stats.mu, stats.sigma, meta={"extractor": "clip"}))
    with pytest.raises(ProxyConfigError, match="statistics of extractor clip"):
        compute_reference_stats(f"stats:{other}", "train", extractor)
    with pytest.raises(ProxyConfigError, match="mu/sigma only"):
        from skipsearch.proxy.fid_proxy import reference_features
        reference_features(extractor, f"stats:{path}", "train", tmp_path / "c")


def test_self_is_cached_per_model_sampler_and_nfe(tmp_path, tiny_edm, extractor):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetSpecError, match="need a model"):
        compute_reference_stats("self:n=4", "train", extractor, cache=cache)
    ref = compute_reference_stats("self:n=4,nfe=5", "train", extractor, cache=cache, adapter=tiny_edm)
    assert (ref.status, ref.stats.n, ref.stats.meta["shape"]) == ("miss", 4, "1x16x16")
    again = compute_reference_stats("self:n=4,nfe=5", "train", extractor, cache=cache, adapter=tiny_edm)
    assert again.status == "hit"
    for spec in ("self:n=4,nfe=3", "self:n=4,nfe=5,sampler=euler"):  # NFE and sampler are parts of the key
        other = compute_reference_stats(spec, "train", extractor, cache=cache, adapter=tiny_edm)
        assert other.status == "miss" and other.path != ref.path


@pytest.mark.slow
def test_self_on_the_bundled_model(tmp_path, bundled, extractor):
    ref = compute_reference_stats("self:n=8", "train", extractor, cache=tmp_path, adapter=bundled)  # Heun, NFE 35
    assert (ref.status, ref.stats.n, ref.stats.meta["shape"]) == ("miss", 8, "1x28x28")
    assert compute_reference_stats("self:n=8", "train", extractor, cache=tmp_path, adapter=bundled).status == "hit"


def test_study_file_and_proxy_take_the_spec(tmp_path, digits, bundled):
    from skipsearch.proxy.fid_proxy import FidProxy
    from skipsearch.search.definition import StudyDefinition, StudyDefinitionError, parse_study
    from skipsearch.settings import Settings
    folder = _folder(digits[:32], tmp_path / "imgs")
    definition = parse_study({"proxy": {"dataset": f"folder:{folder}", "resize": "center-crop",
                                        "rungs": [4]}}, "t.toml")
    assert definition.proxy.dataset == f"folder:{folder}"
    with pytest.raises(StudyDefinitionError, match=r"\[proxy\].*unknown kind 'ftp'"):
        parse_study({"proxy": {"dataset": "ftp:x"}}, "t.toml")
    # an unset resize is not part of the objective digest: existing study names are unchanged
    base = StudyDefinition()
    proxy = dataclasses.asdict(base.proxy)
    proxy.pop("resize")
    old = hashlib.sha256(json.dumps({"space": base.space, "bounds": dataclasses.asdict(base.space_bounds),
                                     "proxy": proxy, "sampler_options": base.sampler_options}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:8]
    assert base.objective_digest() == old
    settings = dataclasses.replace(Settings.from_env(), cache=tmp_path / "cache")
    proxy = FidProxy(bundled, sampler="euler", nfe=2, config=definition.proxy, settings=settings)
    assert proxy.ref_stats.n == 32 and proxy.ref_stats.meta["shape"] == "1x28x28"
    assert np.isfinite(proxy.evaluate(None, preview=0).value)


def test_refstats_cli_takes_the_spec(tmp_path, capsys, monkeypatch, digits):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    folder = _folder(digits[:16], tmp_path / "imgs")
    result = run_cli(capsys, "refstats", "--dataset", f"folder:{folder}")
    assert result.code == 0 and "n=16, dim=232, miss" in result.out, result
    assert_one_line_error(run_cli(capsys, "refstats", "--dataset", f"folder:{folder}", "--model", "edm"),
                          "3x32x32", "1x28x28")
    assert_one_line_error(run_cli(capsys, "refstats", "--dataset", "gcs:bucket"), "unknown kind 'gcs'")


@pytest.mark.slow
def test_evaluate_cli_takes_the_spec(tmp_path, capsys, monkeypatch, digits):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    folder = _folder(digits[:16], tmp_path / "imgs")
    result = run_cli(capsys, "evaluate", "--model", "edm", "--nfe", "3", "--n", "4", "--dataset",
                     f"folder:{folder}", "--resize", "center-crop")
    assert result.code == 0 and "FID " in result.out, result


def test_s2dm_training_images_from_a_spec(tmp_path, gray):
    from skipsearch.data import to_model_range
    from skipsearch.search.finetune import has_training_images, training_images
    folder = _folder(gray[:8], tmp_path / "gray")
    order = sorted(range(8), key=lambda i: (i % 2, i))  # part0/ then part1/
    assert torch.equal(training_images(f"folder:{folder}"), to_model_range(gray[order]))
    assert not has_training_images("self") and not has_training_images(f"stats:{tmp_path}/x.npz")
