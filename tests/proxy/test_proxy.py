"""FID proxy: metrics against closed forms and torch-fidelity, extractors, reference stats, disturbances."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers.pickles import code_running_pickle
from safetensors.torch import load_file, save_file
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from skipsearch.data import load_mnist, to_model_range
from skipsearch.models.checkpoints import file_sha256
from skipsearch.proxy import (
    ExtractorWeightsError,
    FeatureStats,
    NonFiniteFeaturesError,
    RankDeficientWarning,
    ReferenceStatsError,
    StatsAccumulator,
    as_uint8,
    compute_reference_stats,
    disturb,
    disturbance_table,
    fid,
    fid_features,
    fid_infinity,
    get_extractor,
    inception_hub_path,
    is_monotone,
    kid,
    load_npz,
    save_npz,
)
from skipsearch.proxy.disturb import STRENGTHS, swirl
from skipsearch.proxy.extractors import MNIST_FEATURES_CARD, MNIST_FEATURES_WEIGHTS
from skipsearch.proxy.stats import DATASETS
from skipsearch.settings import Settings


@pytest.fixture(scope="module")
def mnist_extractor():
    return get_extractor("mnist-features")


@pytest.fixture(scope="module")
def mnist_test():
    return load_mnist("test")


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(3000, 24, generator=torch.Generator().manual_seed(0)) * 3 + 1
    stats = FeatureStats.from_features(x)
    assert abs(fid(stats, stats)) < 1e-8 * np.trace(stats.sigma)


def test_fid_equals_closed_form_for_two_gaussians():
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _spd(rng, d), _spd(rng, d)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))
    assert fid(FeatureStats(mu1, s1), FeatureStats(mu2, s2)) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_streamed_stats_and_fid_equal_torch_fidelity():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(1500, 32, generator=g) + 5  # an offset mean stresses the streaming sums
    b = torch.randn(1200, 32, generator=g) * 1.3 + 5.2
    acc = StatsAccumulator()
    for chunk in a.split(256):  # uneven batches
        acc.update(chunk)
    ours = acc.stats()
    ref_a, ref_b = fid_features_to_statistics(a.double()), fid_features_to_statistics(b.double())
    assert ours.n == 1500
    np.testing.assert_allclose(ours.mu, ref_a["mu"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.sigma, ref_a["sigma"], rtol=0, atol=1e-11)
    theirs = fid_statistics_to_metric(ref_a, ref_b, verbose=False)["frechet_inception_distance"]
    assert abs(fid(ours, FeatureStats.from_features(b)) - theirs) < 1e-6


def test_kid_is_unbiased_and_equals_torch_fidelity():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(800, 16, generator=g), torch.randn(800, 16, generator=g)
    mean, std = kid(a, b, subsets=20, subset_size=400)
    assert abs(mean) < max(3 * std / np.sqrt(20), 1e-3)
    shifted, _ = kid(a, b + 0.5, subsets=20, subset_size=400)
    assert shifted > 20 * max(abs(mean), std / np.sqrt(20))
    theirs = kid_features_to_metric(a.double(), (b + 0.5).double(), kid_subsets=20, kid_subset_size=400,
                                    verbose=False)
    assert shifted == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-12)
    with pytest.raises(ValueError, match="subset_size"):
        kid(a[:100], b, subsets=2, subset_size=200)


def test_fid_infinity_removes_the_small_sample_bias():
    g = torch.Generator().manual_seed(4)
    d = 16
    ref = FeatureStats(np.zeros(d), np.eye(d))  # the exact distribution the samples come from: true FID is 0
    x = torch.randn(2000, d, generator=g)
    finite_n = fid_features(x, ref).fid
    result = fid_infinity(x, ref, reps=2)
    assert result.slope > 0 and not result.rank_deficient
    assert abs(result.fid_inf) < 0.25 * finite_n
    assert len(result.fids) == 2 * len(set(result.ns))


def test_rank_deficiency_is_flagged_and_non_finite_rejected():
    g = torch.Generator().manual_seed(5)
    ref = FeatureStats.from_features(torch.randn(500, 32, generator=g))
    with pytest.warns(RankDeficientWarning):
        small = fid_features(torch.randn(20, 32, generator=g), ref)
    assert small.rank_deficient and small.n == 20 and np.isfinite(small.fid)
    bad = torch.randn(50, 32, generator=g)
    bad[7, 3] = float("nan")
    with pytest.raises(NonFiniteFeaturesError):
        fid_features(bad, ref)
    with pytest.raises(NonFiniteFeaturesError):
        kid(bad, bad, subsets=1, subset_size=10)
    with pytest.raises(NonFiniteFeaturesError):
        StatsAccumulator().update(bad.numpy())


# ---------------------------------------------------------------------------------------------------------------
# extractors
# ---------------------------------------------------------------------------------------------------------------

class _InceptionArchitecture(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception layers with its loading step skipped, to be initialised by the test."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def _random_inception_weights(path: Path) -> None:
    """Save properly initialised random weights in torch-fidelity's format (an empty dict passes its torch.load)."""
    torch.save({}, path)
    torch.manual_seed(6)
    net = _InceptionArchitecture("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
        elif isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.01)
            torch.nn.init.zeros_(module.bias)
    # Running statistics from a real forward pass, so every BatchNorm normalises instead of passing 0/1 defaults.
    calib = (torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 255).to(torch.uint8)
    net.train()
    with torch.no_grad():
        net(calib)
    net.eval()
    variances = [m.running_var for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((v > 0).all()) and bool(torch.isfinite(v).all()) for v in variances)
    torch.save(net.state_dict(), path)


def test_inception_extractor_runs_on_cpu_with_given_weights(tmp_path, mnist_test):
    weights = tmp_path / "inception-random.pth"
    _random_inception_weights(weights)
    extractor = get_extractor("inception-v3-compat", weights_path=weights)
    assert extractor.name == "inception-v3-compat" and extractor.dim == 2048
    assert extractor.weights_sha256 == file_sha256(weights)
    images = mnist_test[0][:4]  # 28x28 grayscale uint8: replicated to RGB, resized to 299 inside torch-fidelity
    features = extractor(images)
    assert features.shape == (4, 2048) and features.dtype == torch.float32
    assert bool(torch.isfinite(features).all())
    assert float(features.std(0).mean()) > 1e-3 * float(features.abs().mean())  # images give different features
    # Float [-1,1] input is the same pixels after as_uint8.
    torch.testing.assert_close(extractor(to_model_range(images)), features)


def test_inception_without_weights_offline_says_what_to_download(tmp_path, monkeypatch):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
        monkeypatch.delenv("SKIPSEARCH_FID_WEIGHTS", raising=False)
        with pytest.raises(ExtractorWeightsError) as info:
            get_extractor("inception-v3-compat", offline=Settings.from_env().offline)
        message = str(info.value)
        assert "\n" not in message
        assert "weights-inception-2015-12-05-6726825d.pth" in message and "https://" in message
        assert str(inception_hub_path()) in message and "SKIPSEARCH_FID_WEIGHTS" in message
        monkeypatch.setenv("SKIPSEARCH_FID_WEIGHTS", str(tmp_path / "absent.pth"))
        with pytest.raises(ExtractorWeightsError, match="absent.pth"):
            get_extractor("inception-v3-compat", weights_path=Settings.from_env().fid_weights)
    finally:
        torch.hub.set_dir(previous)


def test_input_conversion_and_registry():
    x = torch.linspace(-1.2, 1.2, 2 * 28 * 28).view(2, 1, 28, 28)
    u = as_uint8(x)
    assert u.dtype == torch.uint8 and int(u.min()) == 0 and int(u.max()) == 255
    assert as_uint8(u) is u
    with pytest.raises(ValueError):
        as_uint8(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError):
        as_uint8(torch.zeros(2, 1, 28, 28, dtype=torch.int32))
    x[1, 0, 3, 3] = float("inf")
    with pytest.raises(NonFiniteFeaturesError):
        as_uint8(x)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        get_extractor("no-such-net")


def test_mnist_features_accuracy_card_and_sha(mnist_extractor, mnist_test):
    card = json.loads(MNIST_FEATURES_CARD.read_text())
    assert card["sha256"] == file_sha256(MNIST_FEATURES_WEIGHTS) == mnist_extractor.weights_sha256
    assert card["test_accuracy"] >= 0.99 and card["features"]["dim"] == mnist_extractor.dim <= 256
    images, labels = mnist_test[0][:2000], mnist_test[1][:2000]
    net = mnist_extractor.module
    with torch.inference_mode():
        accuracy = float((net(net.normalise(images)).argmax(1) == labels).float().mean())
    assert accuracy >= 0.99
    features = mnist_extractor(images[:8])
    assert features.shape == (8, mnist_extractor.dim) and features.dtype == torch.float32
    # RGB and upscaled copies of the same digits land on (nearly) the same features.
    rgb = images[:8].expand(-1, 3, -1, -1)
    torch.testing.assert_close(mnist_extractor(rgb), features)
    assert mnist_extractor(torch.nn.functional.interpolate(images[:8], scale_factor=2)).shape == features.shape


def test_mnist_features_rejects_weights_not_matching_their_card(tmp_path):
    weights, card = tmp_path / "mnist_features.safetensors", tmp_path / "mnist_features.json"
    shutil.copy(MNIST_FEATURES_CARD, card)
    state = load_file(str(MNIST_FEATURES_WEIGHTS))
    state["fc2.bias"] = state["fc2.bias"] + 1e-3
    save_file(state, str(weights))
    with pytest.raises(ExtractorWeightsError, match="sha256"):
        get_extractor("mnist-features", weights_path=weights)


# ---------------------------------------------------------------------------------------------------------------
# reference statistics
# ---------------------------------------------------------------------------------------------------------------

def test_reference_stats_shipped_cache_miss_hit_and_sha_key(tmp_path, monkeypatch, request, mnist_extractor):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    shipped = compute_reference_stats("mnist", "train", mnist_extractor)
    assert shipped.status == "shipped" and shipped.stats.n == 60000 and shipped.stats.dim == mnist_extractor.dim
    # A registered 1000-image data set keeps the miss path fast; it is the same code as for "mnist".
    DATASETS.register("mnist-head", lambda split: load_mnist(split)[0][:1000])
    request.addfinalizer(lambda: DATASETS.unregister("mnist-head"))
    first = compute_reference_stats("mnist-head", "test", mnist_extractor)
    second = compute_reference_stats("mnist-head", "test", mnist_extractor)
    assert (first.status, second.status) == ("miss", "hit") and first.path == second.path
    assert first.path.is_relative_to(tmp_path / "cache" / "refstats")
    assert second.stats.n == 1000 and np.array_equal(first.stats.sigma, second.stats.sigma)
    direct = FeatureStats.from_features(mnist_extractor(load_mnist("test")[0][:1000]))
    np.testing.assert_allclose(second.stats.mu, direct.mu, atol=1e-9)
    np.testing.assert_allclose(second.stats.sigma, direct.sigma, atol=1e-9)
    # Other weights -> other sha256 -> another cache entry.
    state = load_file(str(MNIST_FEATURES_WEIGHTS))
    state["fc1.bias"] = state["fc1.bias"] + 0.5
    save_file(state, str(tmp_path / "other.safetensors"))
    other_extractor = get_extractor("mnist-features", weights_path=tmp_path / "other.safetensors")
    other = compute_reference_stats("mnist-head", "test", other_extractor)
    assert other.status == "miss" and other.path != first.path
    assert not np.allclose(other.stats.mu, first.stats.mu)


def test_npz_round_trip_and_edm_files(tmp_path):
    rng = np.random.default_rng(8)
    stats = FeatureStats(rng.standard_normal(6), _spd(rng, 6), 123, {"extractor": "x"})
    loaded = load_npz(save_npz(tmp_path / "ref.npz", stats))
    assert np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma)
    assert loaded.n == 123 and loaded.meta == {"extractor": "x"}
    np.savez(tmp_path / "edm.npz", mu=stats.mu, sigma=stats.sigma)  # EDM's fid.py writes exactly these keys
    edm = load_npz(tmp_path / "edm.npz")
    assert edm.n is None and np.array_equal(edm.sigma, stats.sigma)


@pytest.mark.parametrize("case", ["missing_sigma", "bad_shape", "nan", "garbage"])
def test_malformed_npz_is_rejected(tmp_path, case):
    path = tmp_path / f"{case}.npz"
    mu, sigma = np.zeros(4), np.eye(4)
    if case == "missing_sigma":
        np.savez(path, mu=mu)
    elif case == "bad_shape":
        np.savez(path, mu=mu, sigma=np.eye(5))
    elif case == "nan":
        sigma[1, 2] = np.nan
        np.savez(path, mu=mu, sigma=sigma)
    else:
        path.write_bytes(b"not an npz file at all")
    with pytest.raises(ReferenceStatsError) as info:
        load_npz(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# disturbances
# ---------------------------------------------------------------------------------------------------------------

def test_disturbances_keep_shape_and_level_zero_is_identity(mnist_test):
    images = mnist_test[0][:16]
    for name in STRENGTHS:
        assert torch.equal(disturb(images, name, 0), images)
        out = disturb(images, name, 2)
        assert out.shape == images.shape and out.dtype == torch.uint8 and not torch.equal(out, images)
    x = images.float() / 255
    torch.testing.assert_close(swirl(x, 0.0, torch.Generator()), x, atol=1e-5, rtol=0)


def test_mnist_features_fid_grows_with_every_disturbance(mnist_extractor, mnist_test):
    images = mnist_test[0][torch.randperm(10000, generator=torch.Generator().manual_seed(9))[:500]]
    ref = compute_reference_stats("mnist", "train", mnist_extractor)
    assert ref.status == "shipped"
    table = disturbance_table(mnist_extractor, images, ref.stats)
    assert len(table) == 5 * len(STRENGTHS) and {row.disturbance for row in table} == set(STRENGTHS)
    assert is_monotone(table), table
    assert not is_monotone([row._replace(fid=-row.fid) for row in table])


def test_fid_weights_are_loaded_without_running_code(tmp_path):
    """A pickle in the FID-weights slot that would run a command is refused, and the command never runs."""
    evil, marker = code_running_pickle(tmp_path)
    with pytest.raises(ExtractorWeightsError, match="weights_only=True") as info:
        get_extractor("inception-v3-compat", weights_path=evil)
    assert not marker.exists() and "\n" not in str(info.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ExtractorWeightsError, match="garbage.pth"):
        get_extractor("inception-v3-compat", weights_path=garbage)
