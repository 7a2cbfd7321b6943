"""The sampling batch chosen by measurement: cached per model and device, overridable, and harmless to results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli

from skipsearch.models import load_model
from skipsearch.models.adapter import BatchCalibration
from skipsearch.sampling import batching
from skipsearch.sampling.generate import generate
from skipsearch.settings import Settings


@pytest.fixture
def fresh(monkeypatch):
    """No choices remembered from earlier tests in this process; the machine counts as quiet (its load is not
    this test's to choose)."""
    monkeypatch.setattr(batching, "_chosen", {})
    monkeypatch.setattr(batching, "_quiet", lambda: True)


def test_pick_prefers_the_largest_batch_near_the_fastest() -> None:
    assert batching.pick({16: 300.0, 64: 550.0, 128: 540.0, 256: 450.0}) == 128  # 540 is within 3% of 550
    assert batching.pick({16: 300.0, 64: 550.0, 128: 500.0}) == 64


def test_candidates_are_powers_of_two_within_the_bound() -> None:
    assert batching.candidates(torch.device("cpu"), (1, 28, 28)) == [16, 32, 64, 128, 256]


def test_the_choice_is_measured_once_and_cached_with_the_model_identity(tiny_edm, tmp_path: Path, fresh) -> None:
    choice = batching.calibrated_batch_size(tiny_edm, cache=tmp_path, sizes=[4, 8, 16])
    assert choice.measured and choice.batch_size in (4, 8, 16) and set(choice.rates) == {4, 8, 16}
    stored = json.loads((tmp_path / batching.CACHE_FILE).read_text())
    key = batching.calibration_key(tiny_edm)
    assert tiny_edm.identity.sha256[:16] in key and f"threads{torch.get_num_threads()}" in key
    assert stored[key]["batch_size"] == choice.batch_size
    batching._chosen.clear()  # another process: reads the file, measures nothing
    again = batching.calibrated_batch_size(tiny_edm, cache=tmp_path, sizes=[4, 8, 16])
    assert not again.measured and again.batch_size == choice.batch_size


def test_a_choice_made_on_a_busy_machine_is_not_kept(tiny_edm, tmp_path: Path, fresh, monkeypatch) -> None:
    monkeypatch.setattr(batching, "_quiet", lambda: False)
    choice = batching.calibrated_batch_size(tiny_edm, cache=tmp_path, sizes=[4, 8])
    assert choice.measured and not (tmp_path / batching.CACHE_FILE).exists()
    assert batching.calibrated_batch_size(tiny_edm, cache=tmp_path, sizes=[4, 8]) is choice  # this process keeps it


def test_a_network_too_big_for_the_cpu_budget_takes_the_smallest_batch(tiny_edm, tmp_path: Path, fresh,
                                                                        monkeypatch) -> None:
    monkeypatch.setattr(batching, "CPU_GFLOP_PER_FORWARD", 1e-9)
    choice = batching.calibrated_batch_size(tiny_edm, cache=tmp_path, sizes=[4, 8])
    assert choice.batch_size == 4 and choice.rates == {}


def test_a_damaged_cache_is_measured_again(tiny_edm, tmp_path: Path, fresh) -> None:
    (tmp_path / batching.CACHE_FILE).write_text("{not json")
    choice = batching.calibrated_batch_size(tiny_edm, cache=tmp_path, sizes=[4, 8])
    assert choice.measured
    assert json.loads((tmp_path / batching.CACHE_FILE).read_text())[choice.key]["batch_size"] == choice.batch_size


def test_generate_uses_the_measured_batch_unless_given(tiny_edm, tmp_path: Path, fresh, monkeypatch) -> None:
    monkeypatch.setattr(tiny_edm, "batch_calibration", BatchCalibration(tmp_path))
    monkeypatch.setattr(batching, "candidates", lambda _device, _shape: [4, 8])
    calls: list[int] = []
    original = tiny_edm.denoise

    def counting(x, sigma, labels=None):
        calls.append(x.shape[0])
        return original(x, sigma, labels)

    chosen = generate(tiny_edm, sampler="euler", nfe=2, seeds=range(10)).images
    measured = batching.calibrated_batch_size(tiny_edm, cache=tmp_path).batch_size
    monkeypatch.setattr(tiny_edm, "denoise", counting)
    given = generate(tiny_edm, sampler="euler", nfe=2, seeds=range(10), batch_size=3).images
    assert max(calls) == 3  # --batch-size overrides the measurement
    assert measured in (4, 8) and (tmp_path / batching.CACHE_FILE).is_file()
    assert torch.equal(chosen, given)  # every image comes from its own seed: the batch changes nothing


@pytest.mark.slow  # times real forwards, twice through the CLI
def test_sample_measures_the_batch_and_caches_it(tmp_path: Path, monkeypatch, capsys, fresh) -> None:
    """The CLI path end to end: `skipsearch sample` with the measurement on writes the cache file."""
    env = {"SKIPSEARCH_HOME": tmp_path / "home", "SKIPSEARCH_CACHE": tmp_path / "cache", "SKIPSEARCH_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "SKIPSEARCH_BATCH_CALIBRATION": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    result = run_cli(capsys, "sample", "--nfe", "3", "--n", "20", "-o", str(tmp_path / "grid.png"), "--device", "cpu")
    assert result.code == 0, result.err
    stored = json.loads((tmp_path / "cache" / batching.CACHE_FILE).read_text())
    (entry,) = stored.values()
    assert entry["batch_size"] in batching.candidates(torch.device("cpu"), (1, 28, 28))


def test_load_model_enables_calibration_unless_switched_off(tmp_path: Path) -> None:
    on = load_model("edm", settings=Settings(home=tmp_path, cache=tmp_path))
    assert on.batch_calibration == BatchCalibration(tmp_path)
    off = load_model("edm", settings=Settings.from_env({"SKIPSEARCH_BATCH_CALIBRATION": "0",
                                                        "SKIPSEARCH_HOME": str(tmp_path)}))
    assert off.batch_calibration is None
