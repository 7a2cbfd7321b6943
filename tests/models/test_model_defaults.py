"""Defaults that fit the model: DDIM for a discrete-time model, NFE errors that name the samplers that can, and a
report that draws its grids with the model file a study was run with."""

from __future__ import annotations

import pytest
from helpers.cli import assert_one_line_error, run_cli

from skipsearch.models.bundled import BUNDLED_WEIGHTS
from skipsearch.models.loading import MODEL_FILES_DIR
from skipsearch.sampling.errors import NFEError
from skipsearch.sampling.samplers import SAMPLERS, samplers_for_nfe, steps_for_nfe
from skipsearch.search.definition import DISCRETE_MODELS, StudyDefinition, default_sampler

CATEMB = str(MODEL_FILES_DIR / "catemb-mnist.toml")


def test_discrete_models_default_to_ddim(tmp_path):
    edm_file = tmp_path / "edm.toml"
    edm_file.write_text(f'[model]\nname = "e"\nedm = "{BUNDLED_WEIGHTS}"\n')
    continuous = tmp_path / "cont.toml"
    continuous.write_text('[model]\nname = "c"\nfactory = "x.py:f"\n[parametrization]\ntype = "edm"\n')
    assert default_sampler("edm") == "heun"
    assert default_sampler("ddpm-mnist") == "ddim"
    assert default_sampler("diffusers:some/folder") == "ddim"
    assert default_sampler(CATEMB) == "ddim"
    assert default_sampler(str(edm_file)) == "heun"
    assert default_sampler(str(continuous)) == "heun"
    assert default_sampler(str(tmp_path / "missing.toml")) == "heun"
    assert StudyDefinition.from_options(model="ddpm-mnist").sampler == "ddim"
    assert StudyDefinition.from_options(model=CATEMB).sampler == "ddim"
    assert StudyDefinition.from_options(model="ddpm-mnist", sampler="heun").sampler == "heun"  # a flag wins
    edm = StudyDefinition.from_options(model="edm")
    assert edm.sampler == "heun" and edm == StudyDefinition.from_options(model="edm", sampler="heun")
    study = tmp_path / "s.toml"
    study.write_text(f'[study]\nmodel = "{CATEMB}"\nnfe = 10\n')
    assert StudyDefinition.from_options(study=study).sampler == "ddim"
    study.write_text(f'[study]\nmodel = "{CATEMB}"\nsampler = "euler"\nnfe = 10\n')
    assert StudyDefinition.from_options(study=study).sampler == "euler"  # a study's own sampler wins


@pytest.mark.slow
def test_the_declared_kinds_match_the_loaded_models():
    from skipsearch.models import load_model
    for name in ("edm", "ddpm-mnist"):
        adapter = load_model(name)
        assert (name in DISCRETE_MODELS) == (adapter.timestep_sigmas is not None), name
        assert (default_sampler(name) == "ddim") == (adapter.default_spacing == "trailing"), name


def test_nfe_errors_name_the_samplers_that_can():
    with pytest.raises(NFEError) as info:
        steps_for_nfe("heun", 10)
    assert str(info.value).startswith("heun cannot spend exactly 10")
    assert "ddim" in info.value.samplers and "heun" not in info.value.samplers
    assert info.value.samplers == samplers_for_nfe(10)
    for name in info.value.samplers:
        assert SAMPLERS.get(name).nfe_of_steps(steps_for_nfe(name, 10)) == 10
    assert info.value.hint.startswith(", or a sampler that can: --sampler ")
    assert "ddim" in info.value.hint


def test_the_cli_names_the_samplers_that_can_spend_the_nfe(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    result = run_cli(capsys, "optimize", "--model", "edm", "--sampler", "heun", "--nfe", "10", "--device", "cpu")
    assert_one_line_error(result, "heun cannot spend exactly 10", "use --nfe 9 or --nfe 11",
                          "or a sampler that can: --sampler", "ddim")


def test_report_finds_the_model_file_of_a_study():
    from skipsearch.export.report_html import study_model_spec
    assert study_model_spec({"model": "edm"}) == "edm"
    assert study_model_spec({"model": "catemb-mnist", "model_spec": CATEMB}) == CATEMB
    # a study stored before model_spec was: its model file found by name in the model folders
    assert study_model_spec({"model": "catemb-mnist"}).endswith("catemb-mnist.toml")
    assert study_model_spec({"model": "catemb-mnist", "model_spec": "/gone/m.toml"}).endswith("catemb-mnist.toml")


@pytest.mark.slow
def test_report_draws_grids_for_a_model_file_study(tmp_path, capsys, monkeypatch):
    import optuna

    from skipsearch.models import load_model
    from skipsearch.store.records import StudyRecord
    from skipsearch.store.studies import optuna_storage
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    url = f"sqlite:///{tmp_path}/db.sqlite"
    study = optuna.create_study(study_name="s", storage=optuna_storage(url))
    sha = load_model(CATEMB).identity.sha256
    StudyRecord(study).set_definition({"model": "catemb-mnist", "weights_sha256": sha, "sampler": "ddim",
                                       "nfe": 10, "metric": "fid"})
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    out = tmp_path / "report"
    result = run_cli(capsys, "report", "s", "-o", out, "--storage", url)  # finds models/catemb-mnist.toml by name
    assert result.code == 0, result
    assert (out / "grid_rho1.png").is_file() and "no image grids" not in result.out
    unknown = run_cli(capsys, "report", "s", "-o", tmp_path / "r2", "--storage", url, "--model", "nope")
    assert "no image grids: cannot load model" in " ".join(unknown.out.split())
    explicit = run_cli(capsys, "report", "s", "-o", tmp_path / "r3", "--storage", url, "--model", CATEMB)
    assert explicit.code == 0 and (tmp_path / "r3" / "grid_rho1.png").is_file()
