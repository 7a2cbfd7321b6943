"""Bad input that used to end in a traceback, a hang or a process killed for memory: one line, exit code 2.

Requests larger than the machine (images, NFE, upscaled grids) are refused before anything is allocated; user files
are read only when they are regular files of a sensible size (a FIFO would block forever, /dev/zero reads until
memory runs out); the last tracebacks (seed overflow, huge sigma, non-safetensors extractor weights, a poisoned
feature cache, unknown sampler options in a schedule, TOML nested too deeply) and accepted nonsense (``--lr inf``,
a training run whose loss goes non-finite) are each one line.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import assert_one_line_error, run_cli

HUGE = "99999999999"


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    return tmp_path


def _schedule(path: Path, **fields) -> Path:
    doc = {"schema": "skipsearch.schedule/v2", "rho": [[1.0] * 9], "sigma_bounds": ["inf", 0.0], **fields}
    path.write_text(json.dumps(doc))
    return path


def _refused(result, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.err[-3000:])
    assert_one_line_error(result, *fragments)


# --------------------------------------------------------------------------------------------------------------------
# Item 3: requests larger than the machine.


@pytest.mark.parametrize(("args", "fragment"), [
    (["sample", "--n", HUGE, "--nfe", "3"], "--n"),
    (["sample", "--nfe", "999999999999", "--n", "1"], "10000"),
    (["sample", "--scale", "100000", "--n", "1", "--nfe", "3"], "--scale"),
    (["sample", "--scale", "300", "--n", "64", "--nfe", "3"], "65535"),
    (["skip-points", "--n", HUGE], "--n"),
    (["optimize", "--nfe", "999999999999", "--trials", "1"], "10000"),
    (["optimize", "--nfes", "9,999999999999", "--trials", "1"], "10000"),
    (["evaluate", "--nfe", "999999999999", "--n", "2"], "10000"),
], ids=lambda v: "-".join(v) if isinstance(v, list) else v)
def test_requests_larger_than_the_machine_are_one_line(args, fragment, env, capsys):
    _refused(run_cli(capsys, *args, "-o" if args[0] == "sample" else "--device",
                     str(env / "grid.png") if args[0] == "sample" else "cpu"), fragment)
    assert not (env / "grid.png").exists()


def test_schedule_with_a_huge_nfe_is_one_line(env, capsys):
    path = _schedule(env / "huge-nfe.json", sampler="heun", nfe=999999999999)
    _refused(run_cli(capsys, "sample", "--schedule", path, "--n", "1", "-o", env / "grid.png"), str(path), "10000")


def test_the_nfe_limit_is_the_samplers():
    from skipsearch.sampling.samplers import NFEError, steps_for_nfe
    from skipsearch.schedule.limits import MAX_NFE
    assert steps_for_nfe("euler", MAX_NFE) == MAX_NFE
    with pytest.raises(NFEError, match=str(MAX_NFE)):
        steps_for_nfe("euler", MAX_NFE + 1)


def test_generate_refuses_more_images_than_memory(tiny_edm):
    from skipsearch.inputs import ResourceLimitError, available_memory
    if available_memory() is None:  # pragma: no cover - Linux reports it; without it the check cannot refuse
        pytest.skip("this system reports no available memory")
    from skipsearch.sampling.generate import generate
    with pytest.raises(ResourceLimitError, match="memory"):
        generate(tiny_edm, sampler="euler", nfe=1, seeds=range(10**13))


def _oversized(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(17 * 2**20)  # sparse: 17 MiB without writing them
    return path


USER_FILES = [("sample", "--schedule", "schedule.json"), ("optimize", "--study", "study.toml"),
              ("skip-points", "--model", "model.toml")]


@pytest.mark.parametrize(("command", "flag", "name"), USER_FILES, ids=[f[1] for f in USER_FILES])
def test_oversized_user_files_are_one_line(command, flag, name, env, capsys):
    path = _oversized(env / name)
    _refused(run_cli(capsys, command, flag, path), str(path), "16.0 MiB")


@pytest.mark.parametrize(("command", "flag"), [("sample", "--schedule"), ("optimize", "--study")])
def test_special_files_are_one_line(command, flag, env, capsys):
    _refused(run_cli(capsys, command, flag, "/dev/null"), "/dev/null", "not a regular file")


def _cli_subprocess(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a child whose address space is capped (8 GiB): a regression that reads /dev/zero ends in a
    MemoryError there, not in the machine's OOM killer; a FIFO that blocks fails on the timeout."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))

    child_env = {**os.environ, "SKIPSEARCH_HOME": str(cwd / "home"), "SKIPSEARCH_OFFLINE": "1",
                 "SKIPSEARCH_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "skipsearch.cli", *args], cwd=cwd, env=child_env, timeout=timeout,
                          capture_output=True, text=True, preexec_fn=cap)


def _one_line_child(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_dev_zero_as_schedule_is_one_line(tmp_path):
    _one_line_child(_cli_subprocess("sample", "--schedule", "/dev/zero", "--n", "1", cwd=tmp_path),
                    "/dev/zero", "character device")


# --------------------------------------------------------------------------------------------------------------------
# Item 4a: a FIFO would block forever.


@pytest.mark.parametrize(("command", "flag", "name"), USER_FILES, ids=[f[1] for f in USER_FILES])
def test_fifo_user_files_are_refused_not_waited_on(command, flag, name, tmp_path):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    done = _cli_subprocess(command, flag, str(fifo), cwd=tmp_path, timeout=120)
    _one_line_child(done, str(fifo), "FIFO")


# --------------------------------------------------------------------------------------------------------------------
# Item 5: the last tracebacks.


@pytest.mark.parametrize(("args", "fragment"), [
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--sigma", "1e308"], "--sigma"),
], ids=["seed-overflow", "seed-negative", "sigma-huge"])
def test_skip_points_values_are_one_line(args, fragment, env, capsys):
    _refused(run_cli(capsys, "skip-points", "--device", "cpu", *args), fragment)


@pytest.mark.parametrize("command", ["evaluate", "refstats"])
def test_non_safetensors_extractor_weights_are_one_line(command, env, capsys):
    weights = env / "weights.pth"
    weights.write_bytes(b"\xff" * 1000)  # read as a safetensors header length: "header too large"
    args = ["--n", "2", "--nfe", "3", "--device", "cpu"] if command == "evaluate" else []
    _refused(run_cli(capsys, command, "--extractor", "mnist-features", "--fid-weights", weights, *args),
             str(weights))


def test_poisoned_feature_cache_is_recomputed(env, capsys, monkeypatch, caplog):
    from skipsearch.proxy.extractors import get_extractor
    from skipsearch.proxy.stats import cache_path
    cache = env / "cache"
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(cache))
    extractor = get_extractor("mnist-features")
    poisoned = cache_path(cache, "mnist", "train", extractor.name, extractor.weights_sha256).with_suffix(
        ".feat5000.npy")
    poisoned.parent.mkdir(parents=True)
    np.save(poisoned, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    with caplog.at_level(logging.WARNING, logger="skipsearch.proxy.fid_proxy"):
        result = run_cli(capsys, "evaluate", "--metric", "kid", "--n", "4", "--nfe", "3", "--device", "cpu")
    assert result.code == 0, result.err[-3000:]
    assert "Traceback" not in result.err
    assert any("feature cache" in r.getMessage() and "unusable" in r.getMessage() for r in caplog.records)
    features = np.load(poisoned, allow_pickle=False)
    assert features.dtype == np.float64 and features.shape == (5000, extractor.dim)


def test_unknown_sampler_option_in_a_schedule_is_one_line(env, capsys):
    path = _schedule(env / "options.json", sampler="heun", nfe=3, sampler_options={"__class__": 1})
    _refused(run_cli(capsys, "sample", "--schedule", path, "--n", "1", "-o", env / "grid.png"),
             str(path), "__class__", "rho")


@pytest.mark.parametrize(("command", "flag", "name"), USER_FILES[1:], ids=[f[1] for f in USER_FILES[1:]])
def test_deeply_nested_toml_is_one_line(command, flag, name, env, capsys):
    path = env / name
    path.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    result = run_cli(capsys, command, flag, path)
    _refused(result, str(path), "nested too deeply")
    assert len(result.err) < 2000


# --------------------------------------------------------------------------------------------------------------------
# Item 6: accepted nonsense.


@pytest.mark.parametrize("lr", ["inf", "nan", "-inf", "0", "-1"])
def test_non_finite_or_non_positive_lr_is_refused(lr, env, capsys):
    _refused(run_cli(capsys, "train", "-o", env / "run", "--steps", "2", "--lr", lr), "--lr")
    assert not (env / "run").exists()


def test_training_whose_loss_diverges_names_the_step(env, capsys):
    result = run_cli(capsys, "train", "-o", env / "run", "--steps", "4", "--batch-size", "4", "--lr", "1e30",
                     "--device", "cpu")
    assert result.code == 2, (result.code, result.err[-3000:])
    assert "Traceback" not in result.err
    # The run had started: its progress line stays above the one error line.
    errors = [line for line in result.err.splitlines() if "error" in line]
    assert len(errors) == 1 and result.err.strip().splitlines()[-1] == errors[0], result.err
    assert "diverged at step 2 of 4" in errors[0] and "loss is nan" in errors[0] and "--lr" in errors[0]


def test_train_config_refuses_nonsense():
    from skipsearch.training.loop import TrainConfig, TrainingError
    for bad in ({"lr": float("inf")}, {"lr": 0.0}, {"steps": 0}, {"batch_size": -1}, {"grad_clip": float("nan")}):
        with pytest.raises(TrainingError):
            TrainConfig(**bad)
