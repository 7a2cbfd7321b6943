"""Model specs: the four ways to name a model, model files, and one-line errors for bad ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from skipsearch.models import ModelError, apply, load_model, model_key
from skipsearch.models.bundled import BUNDLED_DDPM
from skipsearch.models.loading import MODEL_FILES_DIR
from skipsearch.schedule import SkipSchedule

CATEMB = MODEL_FILES_DIR / "catemb-mnist.toml"


def test_the_four_forms_load():
    name = load_model("edm")
    file = load_model(str(CATEMB))
    factory = load_model("helpers.factories:tiny_edm_network")
    ready = load_model("helpers.factories:tiny_adapter")
    folder = load_model(f"diffusers:{BUNDLED_DDPM}")
    assert (name.name, len(name.skip_points)) == ("edm", 9)
    assert (file.name, len(file.skip_points), file.data_range.describe()) == ("catemb-mnist", 3, "[0, 1]")
    assert all(p.skip_first for p in file.skip_points)  # cat((skip, h), 1)
    assert factory.name == "helpers.factories:tiny_edm_network" and len(factory.skip_points) == 4
    assert ready.name == "tiny-adapter"
    assert folder.name == "diffusers:ddpm_mnist" and len(folder.skip_points) == 6
    assert folder.timestep_sigmas is not None and folder.default_spacing == "trailing"
    for spec, adapter in ((str(CATEMB), file), (f"diffusers:{BUNDLED_DDPM}", folder), ("edm", name)):
        assert model_key(spec) == adapter.name  # what best/export look a spec up by, without loading it


def test_apply_takes_a_spec_and_the_identity_covers_the_spec(tmp_path):
    adapter = load_model(str(CATEMB))
    schedule = SkipSchedule.constant(0.9, 3).with_metadata(model=adapter.identity)
    handle = apply(adapter, schedule)
    handle.remove()
    loaded = apply(str(CATEMB), SkipSchedule.constant(0.9, 3), check_identity=False)
    assert loaded.adapter.name == "catemb-mnist"
    loaded.remove()
    # The same weights read with another data range are another model: schedules do not carry over.
    other = tmp_path / "other.toml"
    other.write_text(CATEMB.read_text().replace("range = [0, 1]", "range = [-1, 1]"))
    for name in ("catemb_unet.py", "catemb_mnist.safetensors"):
        shutil.copy(MODEL_FILES_DIR / name, tmp_path / name)
    moved = load_model(str(other))
    assert moved.weights_sha256 == adapter.weights_sha256 and moved.identity.sha256 != adapter.identity.sha256


def test_data_range_maps_samples_to_images():
    adapter = load_model(str(CATEMB))
    x = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3)
    assert adapter.data_range.to_uint8(x).flatten().tolist() == [0, 128, 255]


def _model_file(tmp_path: Path, text: str) -> str:
    for name in ("catemb_unet.py", "catemb_mnist.safetensors"):
        shutil.copy(MODEL_FILES_DIR / name, tmp_path / name)
    path = tmp_path / "m.toml"
    path.write_text(text)
    return str(path)


BASE = CATEMB.read_text()


@pytest.mark.parametrize("change,fragment", [
    (("factory = \"catemb_unet.py:build\"", "factory = \"catemb_unet.py:nope\""), "no callable 'nope'"),
    (("factory = \"catemb_unet.py:build\"", "factory = \"missing.py:build\""), "factory file not found"),
    (("range = [0, 1]", "range = [1, 0]"), "[data] range must be [lo, hi]"),
    (("channels = 16", "channels = 8"), "do not fit the network"),
    (("type = \"epsilon\"", "type = \"score\""), "[parametrization] type = 'score'"),
    (("[skips]", "[skipz]"), "unknown section [skipz]"),
    (("name = \"catemb-mnist\"", "nome = \"catemb-mnist\""), "[model] has no field 'nome'"),
    (("shape = [1, 28, 28]", "shape = [28, 28]"), "[data] shape"),
    (("time = \"timestep\"", "time = \"sigma\""), "does not go with [parametrization] type = 'epsilon'"),
    (("weights = \"catemb_mnist.safetensors\"", "weights = \"missing.pt\""), "weights not found"),
])
def test_bad_model_files_are_one_line(tmp_path, change, fragment):
    path = _model_file(tmp_path, BASE.replace(*change))
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_specs_are_one_line(tmp_path):
    cases = {
        "no-such-model": "unknown model 'no-such-model'",
        str(tmp_path / "missing.toml"): "model file not found",
        "helpers.factories:plain_module": "write a model file",
        "helpers.factories:not_a_model": "not an nn.Module",
        "no.such.module:build": "cannot import 'no.such.module'",
        f"diffusers:{tmp_path / 'empty'}": "no such folder",
    }
    for spec, fragment in cases.items():
        with pytest.raises(ModelError) as info:
            load_model(spec)
        assert fragment in str(info.value) and "\n" not in str(info.value), (spec, info.value)


def test_a_model_file_without_skips_is_refused(tmp_path):
    (tmp_path / "plain.py").write_text(
        "from torch import nn\n\nclass Plain(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 1, 3, padding=1)\n\n"
        "    def forward(self, x, t):\n        return self.b(self.a(x).relu())\n\ndef build():\n    return Plain()\n")
    path = tmp_path / "plain.toml"
    path.write_text('[model]\nname = "plain"\nfactory = "plain.py:build"\n[data]\nshape = [1, 8, 8]\n')
    with pytest.raises(ModelError, match="no skip connection found"):
        load_model(str(path))


def test_pickled_torch_weights_never_run_code(tmp_path):
    """A .pt state dict is read with weights_only=True: a file that would execute code is refused."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    path = _model_file(tmp_path, BASE.replace('weights = "catemb_mnist.safetensors"', 'weights = "evil.pt"'))
    with pytest.raises(ModelError, match="weights_only=True"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()
