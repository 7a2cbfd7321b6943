"""torch-fidelity's extractors and metrics through its own registry: every extractor is an --extractor, local
weights load into torch-fidelity's own network (weights_only), hub-only ones say so in one line, and validation
adds precision / recall (and IS under Inception) beside the metric."""

from __future__ import annotations

import re

import pytest
import torch
from helpers.cli import assert_one_line_error, run_cli
from helpers.pickles import code_running_pickle

from skipsearch.proxy.config import metric_display_name
from skipsearch.proxy.errors import ExtractorWeightsError
from skipsearch.proxy.extractors import extractor_names, get_extractor

IMAGES = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)


def _fidelity_names() -> list[str]:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    return list(FEATURE_EXTRACTORS_REGISTRY)


def test_every_torch_fidelity_extractor_is_an_extractor_choice():
    from skipsearch.cli.app import CHOICES
    names = _fidelity_names()
    assert {"inception-v3-compat", "clip-vit-b-32", "clip-vit-l-14", "dinov2-vit-s-14", "dinov2-vit-g-14",
            "vgg16"} <= set(names)
    assert set(names) <= set(extractor_names())
    for command in ("evaluate", "refstats", "optimize", "proxy-check"):
        assert set(names) <= set(CHOICES[(command, "extractor")]())


def test_metric_display_names():
    assert metric_display_name("fid", "inception-v3-compat") == "fid"
    assert metric_display_name("fid", "mnist-features") == "fid"
    assert metric_display_name("fid", "dinov2-vit-s-14") == "fd-dinov2"
    assert metric_display_name("fid", "clip-vit-b-32") == "fd-clip"
    assert metric_display_name("kid", "vgg16") == "kd-vgg16"
    assert metric_display_name(None, None) == "fid"


def _check(extractor, dim: int | None = None) -> torch.Tensor:
    features = extractor(IMAGES)
    assert features.shape == (3, dim or extractor.dim) and features.dtype == torch.float32
    assert bool(torch.isfinite(features).all())
    return features


@pytest.mark.slow
def test_inception_on_local_random_weights_gives_features_and_logits(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as inception
    with monkeypatch.context() as mp:  # torch-fidelity's architecture, random init: nothing loaded
        mp.setattr(inception, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "inception.pth"
    torch.save(net.state_dict(), path)
    extractor = get_extractor("inception-v3-compat", weights_path=path, offline=True)
    _check(extractor, 2048)
    features, logits = extractor.features_and_logits(IMAGES)
    assert extractor.has_logits and logits is not None and logits.shape == (3, 1008)

    from skipsearch.proxy.metrics import quality_metrics
    many = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    features, logits = extractor.features_and_logits(many)
    numbers = quality_metrics(features.numpy(), features.numpy()[::-1].copy(), logits)
    assert numbers["precision"] == 1.0 and numbers["recall"] == 1.0 and numbers["isc"] >= 1.0


def _tiny_clip_state(vit: bool) -> dict[str, torch.Tensor]:
    """torch-fidelity's CLIP visual network (architecture read back from the state dict), small and random."""
    from torch_fidelity.feature_extractor_clip import CLIPVisual
    if vit:
        net = CLIPVisual(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=16)
    else:
        net = CLIPVisual(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=64,
                         vision_patch_size=None)
    state = dict(net.state_dict())
    state["text_projection"] = torch.zeros(16, 32)  # the full CLIP file has it; its width gives embed_dim
    return state


@pytest.mark.parametrize("vit", [True, False], ids=["vit", "resnet"])
def test_clip_on_local_random_weights(tmp_path, vit):
    path = tmp_path / "clip.pt"
    torch.save(_tiny_clip_state(vit), path)
    extractor = get_extractor("clip-vit-b-32" if vit else "clip-rn50", weights_path=path, offline=True)
    _check(extractor, 32)
    from safetensors.torch import save_file
    safe = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_clip_state(vit).items()}, str(safe))
    name = "clip-vit-b-32" if vit else "clip-rn50"
    assert bool(torch.isfinite(get_extractor(name, weights_path=safe)(IMAGES)).all())


@pytest.mark.slow
def test_vgg16_on_local_random_weights(tmp_path):
    import torchvision
    path = tmp_path / "vgg16.pth"
    torch.save(torchvision.models.vgg16().state_dict(), path)
    extractor = get_extractor("vgg16", weights_path=path, offline=True)
    _check(extractor, 4096)


def test_local_weights_refuse_code_and_foreign_networks(tmp_path):
    evil, marker = code_running_pickle(tmp_path)
    with pytest.raises(ExtractorWeightsError, match="weights_only"):
        get_extractor("clip-vit-b-32", weights_path=evil)
    assert not marker.exists()
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(ExtractorWeightsError, match="do not fit"):
        get_extractor("vgg16", weights_path=foreign)


@pytest.mark.parametrize("name", [n for n in _fidelity_names() if n.startswith("dinov2")])
def test_hub_only_dinov2_says_it_needs_the_network(tmp_path, name):
    with pytest.raises(ExtractorWeightsError) as info:
        get_extractor(name, offline=True)
    message = str(info.value)
    assert "\n" not in message and "needs the network" in message and name in message
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    with pytest.raises(ExtractorWeightsError, match="needs the network"):
        get_extractor(name, weights_path=weights)


def test_offline_without_weights_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    for name in ("clip-vit-l-14", "vgg16"):
        with pytest.raises(ExtractorWeightsError, match="--extractor-weights") as info:
            get_extractor(name, offline=True)
        assert "\n" not in str(info.value)


def test_refstats_names_the_missing_weights_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    result = run_cli(capsys, "refstats", "--extractor", "dinov2-vit-s-14")
    assert_one_line_error(result, "needs the network")
    result = run_cli(capsys, "optimize", "--extractor", "clip-vit-b-32", "--extractor-weights",
                     str(tmp_path / "absent.pt"), "--trials", "1")
    assert_one_line_error(result, "absent.pt")


@pytest.mark.slow
def test_validation_adds_precision_and_recall_in_record_note_and_cli(capsys, monkeypatch, tmp_path):
    import optuna

    from skipsearch.store.records import StudyRecord
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")

    def no_check(*args, **kwargs):  # the model check (minutes on 2 cores) is not what this test is about
        raise RuntimeError("skipped in this test")

    monkeypatch.setattr("skipsearch.models.check.check_spec", no_check)
    result = run_cli(capsys, "optimize", "--model", "edm", "--nfe", "3", "--trials", "1", "--space", "constant",
                     "--rungs", "16", "--final-n", "24", "--top-k", "1", "--rho-min", "0.8", "--rho-max", "1.0",
                     "--study-name", "prc", "--export", str(tmp_path / "best.json"), "--device", "cpu")
    assert result.code == 0, result.err
    text = " ".join(result.out.split())  # rich wraps long lines
    lines = re.findall(r"validated [\d.]+ at n=24 \(proxy [\d.]+\) precision ([\d.]+) recall ([\d.]+)", text)
    assert lines and text.count(": validated ") == len(lines), result.out
    study = optuna.load_study(study_name="prc", storage=f"sqlite:///{tmp_path}/skipsearch.db")
    validated = StudyRecord(study).validated()
    assert validated and all(0 <= v.precision <= 1 and 0 <= v.recall <= 1 for v in validated.values())
    assert all(v.isc is None for v in validated.values())  # mnist-features has no class logits
    import optuna_dashboard
    note = optuna_dashboard.get_note(study)
    assert "| vs untuned | precision | recall |" in note
    report = run_cli(capsys, "report", "prc", "-o", str(tmp_path / "report"), "--no-images")
    assert report.code == 0, report.err
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<th>precision</th><th>recall</th>" in page


def test_old_validated_records_read_without_the_new_numbers():
    from skipsearch.store.records import Validated
    old = Validated.from_dict({"n": 40, "value": 3.0, "seeds": "0-39"})
    assert old.precision is None and old.recall is None and old.isc is None
    assert "precision" not in old.to_dict()
    new = Validated.from_dict({**old.to_dict(), "precision": 0.5, "recall": 0.25, "isc": 1.5})
    assert (new.precision, new.recall, new.isc) == (0.5, 0.25, 1.5)
