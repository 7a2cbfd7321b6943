"""Ray worker resources on a cluster with fewer GPUs than workers: fractional GPUs, not a queue for whole ones."""

from __future__ import annotations

import os

import pytest

from skipsearch.execution.ray import _worker_options
from skipsearch.settings import Settings

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def one_gpu_runtime():
    """A real local runtime that declares one GPU (none need exist: Ray only counts the resource)."""
    if ray.is_initialized():
        pytest.skip("a Ray runtime is already running in this process")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_two_workers_share_one_gpu(one_gpu_runtime):
    options, device, threads = _worker_options(one_gpu_runtime, 2, Settings())
    assert options["num_gpus"] == 0.5
    assert options["num_cpus"] == 1
    assert device == "cuda"
    assert threads is None


def test_one_worker_gets_the_whole_gpu(one_gpu_runtime):
    options, device, _ = _worker_options(one_gpu_runtime, 1, Settings())
    assert options["num_gpus"] == 1
    assert device == "cuda"
