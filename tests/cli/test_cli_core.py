"""The core commands through the real entry point: sample, models, skip-points, and bad input."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
from helpers.cli import assert_one_line_error, run_cli
from PIL import Image

from skipsearch.execution.interrupts import interrupts_from_finalizers_redelivered
from skipsearch.schedule import SkipSchedule


def test_models_lists_presets(capsys):
    result = run_cli(capsys, "models")
    assert result.code == 0
    for name in ("edm", "edm-cifar10", "edm-imagenet64"):
        assert name in result.out
    assert "15" in result.out and "16" in result.out


def test_skip_points_table(capsys):
    result = run_cli(capsys, "skip-points", "--model", "edm", "--n", "4")
    assert result.code == 0, result.err
    assert "model.dec.7x7_block0" in result.out and "mean norm ratio" in result.out


def test_sample_writes_grid_and_npz(tmp_path, capsys):
    grid, npz = tmp_path / "grid.png", tmp_path / "images.npz"
    result = run_cli(capsys, "sample", "--model", "edm", "--nfe", "9", "--n", "4", "--seed", "3", "--rho", "0.7",
                     "-o", grid, "--npz", npz, "--device", "cpu")
    assert result.code == 0, result.err
    assert Image.open(grid).size[0] > 28
    data = np.load(npz)
    assert data["samples"].shape == (4, 28, 28, 1) and data["samples"].dtype == np.uint8
    assert list(data["seeds"]) == [3, 4, 5, 6]


def test_sample_with_schedule_file(tmp_path, capsys, bundled):
    path = SkipSchedule.linear(0.68, 1.0, len(bundled.skip_points)).with_metadata(model=bundled.identity).save(
        tmp_path / "s.json")
    result = run_cli(capsys, "sample", "--nfe", "5", "--n", "2", "--schedule", path, "-o", tmp_path / "g.png")
    assert result.code == 0, result.err
    assert "linear schedule" in result.out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert_one_line_error(run_cli(capsys, "sample", "--model", "nope"), "unknown model 'nope'")
    assert_one_line_error(run_cli(capsys, "sample", "--nfe", "10"), "--nfe 9", "--nfe 11")
    assert_one_line_error(run_cli(capsys, "sample", "--nfe", "0"), "positive")
    assert_one_line_error(run_cli(capsys, "sample", "--sampler", "plms"), "plms")
    assert_one_line_error(run_cli(capsys, "sample", "--rho", "a:b"), "--rho")
    assert_one_line_error(run_cli(capsys, "sample", "--device", "tpu"), "tpu")
    other = tmp_path / "other.json"
    other.write_text(json.dumps(SkipSchedule.constant(0.7, 15).to_dict()))
    assert_one_line_error(run_cli(capsys, "sample", "--schedule", other, "--n", "1"), "15")
    assert_one_line_error(run_cli(capsys, "sample", "--schedule", tmp_path / "missing.json"), "not found")
    assert_one_line_error(run_cli(capsys, "sample", "--model", "edm-cifar10", "--checkpoint", tmp_path / "x.pkl"),
                          "not found")


def test_ctrl_c_inside_a_finalizer_reaches_the_main_code(capsys):
    class RaisesCtrlCWhenCollected:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # Python's own handler raises KeyboardInterrupt here, in __del__

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), interrupts_from_finalizers_redelivered():
            obj = RaisesCtrlCWhenCollected()
            del obj
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "Traceback" not in capsys.readouterr().err
