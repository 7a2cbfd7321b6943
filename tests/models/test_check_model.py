"""check-model: the bundled models and the catemb model file pass with their right spec; a wrong data range,
number of timesteps or prediction type is caught, naming the field and the value that fits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from skipsearch.models import load_model
from skipsearch.models.bundled import BUNDLED_DDPM, BUNDLED_WEIGHTS
from skipsearch.models.check import check_spec
from skipsearch.models.loading import MODEL_FILES_DIR

pytestmark = pytest.mark.slow  # real models, a few seconds each
CATEMB = MODEL_FILES_DIR / "catemb-mnist.toml"

EDM_FILE = f"""
[model]
name = "edm-file"
dataset = "mnist"
edm = "{BUNDLED_WEIGHTS}"
[data]
range = [-1, 1]
"""
# The bundled EDM's raw UNet (no EDMPrecond) through a factory: the preconditioning is the file's to state.
EDM_RAW_FACTORY = f"""
from skipsearch.models.loading import load_network_file

def build():
    return load_network_file("{BUNDLED_WEIGHTS}").model
"""
EDM_RAW_FILE = """
[model]
name = "edm-raw"
dataset = "mnist"
factory = "edm_raw.py:build"
[parametrization]
type = "edm"
sigma_data = 0.5
[data]
range = [-1, 1]
shape = [1, 28, 28]
[call]
time = "c_noise"
"""
DDPM_FILE = f"""
[model]
name = "ddpm-file"
dataset = "mnist"
diffusers = "{BUNDLED_DDPM}"
[parametrization]
type = "epsilon"
beta_schedule = "linear"
num_timesteps = 1000
[data]
range = [-1, 1]
"""


def _write(tmp_path: Path, text: str, name: str = "m.toml") -> str:
    for file in ("catemb_unet.py", "catemb_mnist.safetensors"):
        if not (tmp_path / file).exists():
            shutil.copy(MODEL_FILES_DIR / file, tmp_path / file)
    (tmp_path / "edm_raw.py").write_text(EDM_RAW_FACTORY)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _check(spec: str, **kwargs):
    return check_spec(load_model(spec), spec, **kwargs)


@pytest.mark.parametrize("spec", ["edm", "ddpm-mnist", str(CATEMB)])
def test_right_specs_pass(spec):
    from skipsearch.sampling.generate import untuned_images
    report = _check(spec, images=untuned_images)
    assert report.ok, report.warnings
    assert all(e < 1 for e in report.spec.errors)  # better than predicting the noisy input or the mean
    assert all(r.factor < 1 for r in report.alternatives)


@pytest.mark.parametrize("text", [EDM_FILE, EDM_RAW_FILE, DDPM_FILE], ids=["edm-file", "edm-raw", "ddpm-file"])
def test_right_model_files_over_the_same_weights_pass(tmp_path, text):
    report = _check(_write(tmp_path, text), images=False)
    assert report.ok, report.warnings


@pytest.mark.parametrize("base,change,line", [
    (EDM_FILE, ("range = [-1, 1]", "range = [0, 1]"), "[data] range = [0, 1] looks wrong: the network denoises "
                                                      "[-1, 1] data"),
    (EDM_RAW_FILE, ('type = "edm"', 'type = "vp"'), '[parametrization] type = "vp" looks wrong: the network '
                                                    'denoises with type = "edm"'),
    (DDPM_FILE, ("range = [-1, 1]", "range = [0, 1]"), "[data] range = [0, 1] looks wrong"),
    (DDPM_FILE, ("num_timesteps = 1000", "num_timesteps = 200"), "[parametrization] num_timesteps = 200 looks wrong: "
                                                                 "the network denoises with num_timesteps = 1000"),
    (DDPM_FILE, ('type = "epsilon"', 'type = "v_prediction"'), '[parametrization] type = "v_prediction" looks wrong: '
                                                               'the network denoises with type = "epsilon"'),
    (CATEMB.read_text(), ("range = [0, 1]", "range = [-1, 1]"), "[data] range = [-1, 1] looks wrong: the network "
                                                                "denoises [0, 1] data"),
    (CATEMB.read_text(), ("num_timesteps = 1000", "num_timesteps = 200"), "[parametrization] num_timesteps = 200 "
                                                                          "looks wrong"),
    (CATEMB.read_text(), ('type = "epsilon"', 'type = "sample"'), '[parametrization] type = "sample" looks wrong: '
                                                                  'the network denoises with type = "epsilon"'),
], ids=["edm-range", "edm-type", "ddpm-range", "ddpm-T", "ddpm-type", "catemb-range", "catemb-T", "catemb-type"])
def test_wrong_specs_name_the_field(tmp_path, base, change, line):
    assert change[0] in base
    report = _check(_write(tmp_path, base.replace(*change), "wrong.toml"), images=False)
    assert len(report.warnings) == 1, report.lines()
    assert report.warnings[0].startswith(line), report.warnings[0]
    assert "x better" in report.warnings[0]


def test_check_model_command_exits_0_for_a_right_spec_and_1_for_a_wrong_one(tmp_path, capsys):
    from helpers.cli import run_cli
    right = run_cli(capsys, "check-model", "--model", CATEMB, "--device", "cpu", "--n", "32")
    assert right.code == 0, right
    assert "spec looks right" in right.out
    wrong = _write(tmp_path, CATEMB.read_text().replace("range = [0, 1]", "range = [-1, 1]"))
    result = run_cli(capsys, "check-model", "--model", wrong, "--device", "cpu", "--n", "32")
    assert result.code == 1, result
    assert "[data] range = [-1, 1] looks wrong: the network denoises [0, 1] data" in " ".join(result.err.split())


class _Opened(Exception):
    pass


@pytest.mark.parametrize("how", ["default", "python-false", "study-false"])
def test_optimize_checks_the_model_once_before_the_study(tmp_path, monkeypatch, how):
    import skipsearch.models.check as check
    import skipsearch.optimization as optimize_module
    from skipsearch.search.definition import StudyDefinition
    checked, opened = [], []
    real = check.check_spec
    monkeypatch.setattr(check, "check_spec", lambda adapter, spec, **kw: checked.append(adapter) or
                        real(adapter, spec, n=16, **{**kw, "images": None}))

    def fake_open(definition, **kwargs):
        opened.append(kwargs.get("adapter"))
        raise _Opened

    monkeypatch.setattr(optimize_module, "open_session", fake_open)
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("SKIPSEARCH_CHECK_MODEL", "1")  # the suite turns it off (tests/conftest.py)
    kwargs = {}
    if how == "python-false":
        kwargs["check"] = False
    if how == "study-false":
        study = tmp_path / "s.toml"
        study.write_text(f'[study]\nmodel = "{CATEMB}"\nsampler = "ddim"\nnfe = 10\ncheck = false\n')
        kwargs["study"] = study
        assert StudyDefinition.from_options(study=study).check is False
    with pytest.raises(_Opened):
        optimize_module.optimize(model=str(CATEMB), sampler="ddim", nfe=10, **kwargs)
    if how == "default":
        assert len(checked) == 1 and opened == checked  # loaded once, the session gets the checked adapter
    else:
        assert checked == [] and opened == [None]


def test_check_is_not_part_of_the_study_name():
    from skipsearch.search.definition import StudyDefinition
    on = StudyDefinition.from_options(model="edm")
    off = StudyDefinition.from_options(model="edm", check=False)
    assert on.check and not off.check
    assert on.objective_digest() == off.objective_digest()
