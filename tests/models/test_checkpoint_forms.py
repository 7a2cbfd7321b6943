"""Checkpoints as they come: nested checkpoints, wrapper prefixes, a repository's own imports, files first."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from skipsearch.models import ModelError, load_model
from skipsearch.models.loading import MODEL_FILES_DIR, import_callable

KWARGS = {"channels": 8, "emb_dim": 16}
MODEL_FILE = """[model]
name = "forms"
factory = "catemb_unet.py:build"
weights = "{weights}"
{extra}
[model.kwargs]
channels = 8
emb_dim = 16
[data]
range = [0, 1]
shape = [1, 28, 28]
"""


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    torch.manual_seed(0)
    net = import_callable("catemb_unet.py:build", MODEL_FILES_DIR)(**KWARGS).eval()
    with torch.no_grad():
        for p in net.parameters():  # away from the default init, so a network left unfilled cannot pass
            p.add_(torch.randn_like(p) * 0.05)
    return net


def _write(tmp_path: Path, weights: str, extra: str = "") -> str:
    shutil.copy(MODEL_FILES_DIR / "catemb_unet.py", tmp_path / "catemb_unet.py")
    path = tmp_path / "forms.toml"
    path.write_text(MODEL_FILE.format(weights=weights, extra=extra))
    return str(path)


def _same_outputs(adapter, net: torch.nn.Module) -> None:
    torch.manual_seed(1)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(adapter.net(x, t), net(x, t))


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


FORMS = {
    "model_state_dict": (lambda s: {"model_state_dict": s, "optimizer": {"lr": 1e-4}, "epoch": 3}, ""),
    "ema": (lambda s: {"ema": s, "step": 1000}, ""),
    "nested dotted key": (lambda s: {"ema": {"model": s, "decay": 0.999}}, 'weights_key = "ema.model"'),
    "chosen of two": (lambda s: {"model": {k: v * 0 for k, v in s.items()}, "ema": s}, 'weights_key = "ema"'),
    "module.": (lambda s: _prefixed(s, "module."), ""),
    "network.": (lambda s: {"state_dict": _prefixed(s, "network.")}, ""),
    "_orig_mod.": (lambda s: _prefixed(s, "_orig_mod."), ""),
    "_orig_mod.module.": (lambda s: _prefixed(s, "_orig_mod.module."), ""),
    "explicit prefix": (lambda s: {**_prefixed(s, "unet."), **_prefixed({"w": torch.ones(1)}, "vae.")},
                        'weights_prefix = "unet"'),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_checkpoint_forms_load_from_the_model_file_alone(tmp_path, original, form):
    wrap, extra = FORMS[form]
    torch.save(wrap(original.state_dict()), tmp_path / "ckpt.pt")
    adapter = load_model(_write(tmp_path, "ckpt.pt", extra))
    _same_outputs(adapter, original)


def test_prefixed_safetensors_load(tmp_path, original):
    from safetensors.torch import save_file
    save_file(_prefixed(original.state_dict(), "module."), str(tmp_path / "w.safetensors"))
    _same_outputs(load_model(_write(tmp_path, "w.safetensors")), original)


def test_two_candidate_state_dicts_are_named(tmp_path, original):
    state = original.state_dict()
    torch.save({"model": state, "ema": state, "epoch": 1}, tmp_path / "ckpt.pt")
    path = _write(tmp_path, "ckpt.pt")
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and "several state dicts" in message and "weights_key" in message
    assert "ema" in message and "model" in message and "forms.toml" in message and "[model] weights" in message


def test_checkpoint_errors_name_the_model_file_and_field(tmp_path, original):
    torch.save({"ema": original.state_dict()}, tmp_path / "ckpt.pt")
    cases = {'weights_key = "nope"': "has no key 'nope'", 'weights_prefix = "nope."': "no key starts with 'nope.'"}
    for extra, fragment in cases.items():
        with pytest.raises(ModelError) as info:
            load_model(_write(tmp_path, "ckpt.pt", extra))
        message = str(info.value)
        assert fragment in message and "forms.toml: [model] weights = 'ckpt.pt'" in message and "\n" not in message
    torch.save({"step": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelError, match=r"forms\.toml: \[model\] weights = 'ckpt.pt'.*does not hold a state dict"):
        load_model(_write(tmp_path, "ckpt.pt"))


def test_a_prefix_is_stripped_only_when_that_fits(tmp_path, original):
    state = {k: v for k, v in original.state_dict().items() if not k.startswith("out.")}
    torch.save(_prefixed(state, "module."), tmp_path / "ckpt.pt")
    with pytest.raises(ModelError) as info:
        load_model(_write(tmp_path, "ckpt.pt"))
    assert "do not fit the network" in str(info.value) and "weights_prefix" in str(info.value)


def test_a_missing_weights_file_is_reported_before_building(tmp_path):
    (tmp_path / "boom.py").write_text("def build(**kwargs):\n    raise RuntimeError('the network was built')\n")
    path = tmp_path / "x.toml"
    path.write_text('[model]\nname = "x"\nfactory = "boom.py:build"\nweights = "w.pt"\n[data]\nshape = [1, 8, 8]\n')
    with pytest.raises(ModelError) as info:
        load_model(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: [model] weights = 'w.pt': no such file (relative to the model file's folder")
    assert "built" not in message


REPO_BASE = """import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)

    def forward(self, h):
        return torch.nn.functional.silu(self.conv(h))
"""
REPO_UNET = """import torch
from torch import nn

from net.base import Block


class UNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.inc, self.down, self.mid = Block(1, c), Block(c, c, 2), Block(c, c)
        self.up = nn.Upsample(scale_factor=2)
        self.dec = Block(2 * c, c)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x, t):
        s = self.inc(x)
        h = self.up(self.mid(self.down(s)))
        return self.out(self.dec(torch.cat((s, h), 1)))
"""


@pytest.mark.parametrize("factory,where", [("net/UNet.py:UNet", ""), ("net.UNet:UNet", ""),
                                           ("net.UNet:UNet", "configs")])
def test_a_repository_factory_imports_its_sibling_packages(tmp_path, monkeypatch, factory, where):
    repo = tmp_path / "repo"
    (repo / "net").mkdir(parents=True)
    (repo / "net" / "__init__.py").write_text("")
    (repo / "net" / "base.py").write_text(REPO_BASE)
    (repo / "net" / "UNet.py").write_text(REPO_UNET)
    folder = repo / where
    folder.mkdir(exist_ok=True)
    path_line = 'path = ".."' if where else ""
    (folder / "unet.toml").write_text(f'[model]\nname = "repo-unet"\nfactory = "{factory}"\n{path_line}\n'
                                      '[data]\nshape = [1, 8, 8]\n')
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)  # not the repository: only the model file's folders make 'net' importable
    _forget_net()
    saved = list(sys.path)
    try:
        adapter = load_model(str(folder / "unet.toml"))
    finally:
        _forget_net()  # the next case's repository is another 'net'
    assert len(adapter.skip_points) == 1 and type(adapter.net).__name__ == "UNet"
    assert sys.path == saved  # restored after the import


def _forget_net() -> None:
    for name in [m for m in sys.modules if m == "net" or m.startswith("net.")]:
        del sys.modules[name]


@pytest.mark.parametrize("extra,fragment", [
    ('path = "nope"', "[model] path = 'nope': no such folder (relative to the model file's folder)"),
    ("path = 3", "[model] path must be a folder or a list of folders"),
    ("weights_key = 3", "[model] weights_key must be a string"),
])
def test_bad_checkpoint_fields_are_one_line(tmp_path, original, extra, fragment):
    torch.save(original.state_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(ModelError) as info:
        load_model(_write(tmp_path, "ckpt.pt", extra))
    assert fragment in str(info.value) and "forms.toml" in str(info.value) and "\n" not in str(info.value)


def test_the_checkpoint_fields_are_in_the_digest_only_when_set(tmp_path):
    from skipsearch.models.spec import parse_model_file
    plain = parse_model_file(_write(tmp_path, "ckpt.pt")).digest()
    keyed = parse_model_file(_write(tmp_path, "ckpt.pt", 'weights_key = "ema"\npath = "."')).digest()
    assert keyed != plain and parse_model_file(_write(tmp_path, "ckpt.pt", 'path = "."')).digest() == plain
