"""Bring your own model, end to end through the CLI: a diffusers DDPM folder and a plain-PyTorch model file.

Real models (the bundled diffusers DDPM and the catemb example in models/), real samplers, real SQLite, offline.
"""

from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import optuna
import pytest
import torch
from helpers.cli import assert_one_line_error, run_cli
from helpers.studies import searched_study_names

from skipsearch.data import DataRange
from skipsearch.models.bundled import BUNDLED_DDPM
from skipsearch.models.loading import MODEL_FILES_DIR
from skipsearch.sampling.generate import degenerate_reason
from skipsearch.store import BestStore

pytestmark = pytest.mark.slow
DDPM = f"diffusers:{BUNDLED_DDPM}"
CATEMB = str(MODEL_FILES_DIR / "catemb-mnist.toml")
# Small budgets; the calibration sweep runs (no rho range given) at a small n.
STUDY = """
[study]
space = "per-level"
trials = 4
[space]
calibrate_n = 16
[proxy]
rungs = [24, 48]
[search]
final_n = 48
validate_top_k = 1
"""


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    """One small DDPM study through the in-process CLI (module-scoped, so capsys is not available)."""
    home = tmp_path_factory.mktemp("byo")
    study = home / "small.toml"
    study.write_text(STUDY)
    url = f"sqlite:///{home}/skipsearch.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKIPSEARCH_HOME", str(home))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = run_cli(_Captured(out, err), "optimize", "--model", DDPM, "--sampler", "ddim", "--nfe", "10",
                             "--study", study, "--storage", url, "--device", "cpu")
    yield home, url, study, result


class _Captured:
    """What run_cli reads from capsys: the redirected stdout and stderr."""

    def __init__(self, out: io.StringIO, err: io.StringIO) -> None:
        self.out, self.err = out, err

    def readouterr(self):
        return SimpleNamespace(out=self.out.getvalue(), err=self.err.getvalue())


def test_diffusers_ddpm_optimizes_end_to_end(ddpm_run):
    home, url, _study, result = ddpm_run
    assert result.code == 0, result.err[-3000:]
    assert "calibrated rho bounds [" in result.out
    names = searched_study_names(url)
    assert len(names) == 1 and names[0].startswith("diffusers-ddpm_mnist-")
    study = optuna.load_study(study_name=names[0], storage=url)
    calibration = study.user_attrs["calibration"]
    assert calibration["rho_min"] < 1.0 < calibration["rho_max"]
    validated = study.user_attrs["validated"]
    baselines = {t.number for t in study.trials if t.user_attrs.get("baseline")}
    assert baselines and baselines <= {int(k) for k in validated}  # both baselines validated, pruned or not
    assert any("paper recipe" in (v.get("baseline") or "") for v in validated.values())
    with BestStore(url) as store:
        (row,) = store.best()
    assert row.model_name == "diffusers:ddpm_mnist" and row.sampler == "ddim" and row.nfe == 10
    assert "exported schedule:" in result.out


def test_best_export_and_sample_take_the_spec(ddpm_run, tmp_path, capsys):
    _home, url, _study, _result = ddpm_run
    best = run_cli(capsys, "best", "--model", DDPM, "--storage", url)
    assert best.code == 0 and "ddim" in best.out and "no validated" not in best.out
    out = tmp_path / "s.json"
    exported = run_cli(capsys, "export", "--model", DDPM, "--sampler", "ddim", "--nfe", "10", "--storage", url,
                       "-o", out)
    assert exported.code == 0, exported.err
    schedule = json.loads(out.read_text())
    assert schedule["model"]["name"] == "diffusers:ddpm_mnist" and schedule["nfe"] == 10
    grid = tmp_path / "grid.png"
    sampled = run_cli(capsys, "sample", "--model", DDPM, "--sampler", "ddim", "--nfe", "10", "--n", "4",
                      "--schedule", out, "-o", grid)
    assert sampled.code == 0, sampled.err
    assert grid.is_file()


def test_other_bounds_make_another_study_and_a_named_study_refuses(ddpm_run, capsys):
    home, url, study, _result = ddpm_run
    args = ["optimize", "--model", DDPM, "--sampler", "ddim", "--nfe", "10", "--study", study, "--storage", url,
            "--trials", "1"]
    other = run_cli(capsys, *args, "--rho-min", "0.95", "--rho-max", "1.05", "--top-k", "0")
    assert other.code == 0, other.err[-2000:]
    assert len(searched_study_names(url)) == 2  # a new study, not a silent resume of the first
    first = sorted(searched_study_names(url))[0]
    refused = run_cli(capsys, *args, "--study-name", first, "--rho-min", "0.5", "--rho-max", "1.5")
    assert_one_line_error(refused, "different objective")


def test_plain_pytorch_model_file_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path))
    study = tmp_path / "small.toml"
    study.write_text(STUDY.replace("trials = 4", "trials = 3"))
    url = f"sqlite:///{tmp_path}/skipsearch.db"
    table = run_cli(capsys, "skip-points", "--model", CATEMB, "--n", "4")
    assert table.code == 0 and "cat #0" in table.out and "skip" in table.out
    result = run_cli(capsys, "optimize", "--model", CATEMB, "--sampler", "ddim", "--nfe", "10", "--study", study,
                     "--storage", url)
    assert result.code == 0, result.err[-3000:]
    with BestStore(url) as store:
        (row,) = store.best()
    assert row.model_name == "catemb-mnist"
    evaluated = run_cli(capsys, "evaluate", "--model", CATEMB, "--sampler", "ddim", "--nfe", "10", "--n", "32",
                        "--rho", "0.98")
    assert evaluated.code == 0 and "FID" in evaluated.out


def test_degenerate_batches_are_named():
    black = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    assert degenerate_reason(torch.full((8, 1, 28, 28), -1.0), black, DataRange()) == "all black images"
    dim = torch.randint(0, 40, (8, 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    assert "blank" in degenerate_reason(DataRange().from_uint8(dim), dim, DataRange())
    saturated = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)).sign() * 5  # clipped +-
    assert "saturated" in degenerate_reason(saturated, DataRange().to_uint8(saturated), DataRange())
    from skipsearch.data import load_mnist
    real = load_mnist("test")[0][:64]
    assert degenerate_reason(DataRange().from_uint8(real), real, DataRange()) is None
