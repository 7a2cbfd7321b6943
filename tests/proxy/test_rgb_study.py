"""CIFAR-shaped RGB data, offline, end to end: a folder of PNGs, an EDM-style zip and an npz (real MNIST digits,
coloured and padded to 3x32x32) each give reference statistics and a study on a 3x32x32 model; ``--dataset self``
runs a study too.

The model is a small random EDM SongUNet behind a model file (factory + safetensors weights in tmp_path); the
extractor is torch-fidelity's CLIP ResNet with small random local weights (``--extractor-weights``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from helpers.cli import run_cli
from helpers.studies import searched_study_names
from PIL import Image

from skipsearch.data import load_mnist
from skipsearch.store import BestStore
from skipsearch.store.records import StudyRecord

pytestmark = pytest.mark.slow
N = 64
FACTORY = """
import torch

from skipsearch.models.checkpoints import create_network


def build():
    net = create_network("EDMPrecond", img_resolution=32, img_channels=3, model_type="SongUNet", model_channels=16,
                         channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], dropout=0.0)
    return net.model  # the raw SongUNet: the model file states the EDM preconditioning
"""
MODEL_FILE = """
[model]
name = "tiny-rgb32"
factory = "tiny_rgb.py:build"
weights = "tiny_rgb.safetensors"
[parametrization]
type = "edm"
sigma_data = 0.5
[data]
range = [-1, 1]
shape = [3, 32, 32]
[call]
time = "c_noise"
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """Model file, extractor weights and the digits as folder / zip / npz, all made here."""
    from safetensors.torch import save_file
    from torch_fidelity.feature_extractor_clip import CLIPVisual

    root = tmp_path_factory.mktemp("rgb")
    (root / "tiny_rgb.py").write_text(FACTORY)
    (root / "tiny_rgb.toml").write_text(MODEL_FILE)
    import importlib.util
    spec = importlib.util.spec_from_file_location("tiny_rgb_factory", root / "tiny_rgb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.build()
    with torch.no_grad():  # zero-init output layers would make the skips invisible: randomise them
        for p in net.parameters():
            if p.abs().max() < 1e-3:
                p.normal_(0, 0.1)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "tiny_rgb.safetensors"))

    clip = CLIPVisual(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=64,
                      vision_patch_size=None)
    state = dict(clip.state_dict())
    state["text_projection"] = torch.zeros(16, 32)  # the full CLIP file has it; its width gives embed_dim
    torch.save(state, root / "clip.pt")

    gray = load_mnist("test")[0][:N]  # real MNIST digits, uint8 [N, 1, 28, 28]
    tint = torch.rand(N, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.4
    digits = torch.zeros(N, 3, 32, 32, dtype=torch.uint8)
    digits[:, :, 2:30, 2:30] = (gray.to(torch.float32) * tint).round().to(torch.uint8)
    arrays = digits.permute(0, 2, 3, 1).numpy()
    folder = root / "pngs"
    folder.mkdir()
    with zipfile.ZipFile(root / "digits.zip", "w") as zf:  # EDM dataset_tool layout
        names = []
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(folder / f"img{i:03d}.png")
            name = f"{i // 1000:05d}/img{i:08d}.png"
            zf.write(folder / f"img{i:03d}.png", name)
            names.append(name)
        labels = load_mnist("test")[1][:N].tolist()
        zf.writestr("dataset.json", json.dumps({"labels": [[n, lab] for n, lab in zip(names, labels)]}))
    np.savez(root / "digits.npz", images=arrays)
    return root


def _spec(home: Path, form: str) -> str:
    return {"folder": f"folder:{home / 'pngs'}", "zip": f"zip:{home / 'digits.zip'}",
            "npz": f"npz:{home / 'digits.npz'}", "self": "self:n=32,nfe=5"}[form]


@pytest.mark.parametrize("form", ["folder", "zip", "npz", "self"])
def test_rgb_reference_statistics_and_study(home, form, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    model, dataset = str(home / "tiny_rgb.toml"), _spec(home, form)
    extractor = ["--extractor", "clip-rn50", "--extractor-weights", str(home / "clip.pt")]

    ref = run_cli(capsys, "refstats", "--dataset", dataset, "--model", model, *extractor)
    n = 32 if form == "self" else N
    assert ref.code == 0 and f"n={n}, dim=32, miss" in " ".join(ref.out.split()), ref  # rich wraps long lines

    url = f"sqlite:///{tmp_path}/skipsearch.db"
    trials = "2" if form in ("folder", "self") else "1"
    result = run_cli(capsys, "optimize", "--model", model, "--nfe", "5", "--trials", trials, "--rungs", "16,32",
                     "--final-n", "32", "--top-k", "1", "--dataset", dataset, *extractor, "--rho-min", "0.5",
                     "--rho-max", "1.2", "--no-check", "--storage", url, "--device", "cpu", "--study-name", form)
    assert result.code == 0, result.err[-3000:]
    assert searched_study_names(url) == [form]
    validated = StudyRecord(optuna.load_study(study_name=form, storage=url)).validated()
    assert validated and all(v.n == 32 and np.isfinite(v.value) for v in validated.values())
    with BestStore(url) as store:
        (row,) = store.best()
    assert row.model_name == "tiny-rgb32" and row.nfe == 5
