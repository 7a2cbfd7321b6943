"""Shared fixtures: small real networks (random init) and the bundled model."""

from __future__ import annotations

import os

import pytest
import torch

# Tests share 2 cores with each other's subprocesses; one intra-op thread avoids oversubscription stalls.
THREADS = int(os.environ.get("SKIPSEARCH_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)
# The sampling batch by the formula, not by measurement: a timing on this shared machine would make the suite's
# batches (and its duration) vary from run to run. tests/sampling/test_batching.py turns the measurement on.
os.environ.setdefault("SKIPSEARCH_BATCH_CALIBRATION", "0")
# The model check before every study costs 5-15 s on these CPUs; the suite's studies run on models whose specs are
# right. tests/models/test_check_model.py turns it on.
os.environ.setdefault("SKIPSEARCH_CHECK_MODEL", "0")


@pytest.fixture(autouse=True)
def _torch_threads():
    """Every test starts (and leaves) at THREADS torch threads: an in-process CLI run, in a test or a module fixture,
    sets the count for the machine, and bit-exact comparisons across batch sizes hold only at one thread (under
    xdist, which test ran before another also changes)."""
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def tiny_edm():
    """A small random-init EDM SongUNet (same architecture family as the bundled model), as an adapter."""
    from skipsearch.models.checkpoints import create_network
    from skipsearch.models.edm import EDMAdapter
    torch.manual_seed(0)
    net = create_network("EDMPrecond", img_resolution=16, img_channels=1, model_type="SongUNet", model_channels=16,
                         channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
    # Zero-init output layers make a fresh UNet ignore its skips; randomise them so hooks are observable.
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() < 1e-3:
                p.normal_(0, 0.1)
    return EDMAdapter(net, "tiny-edm")


@pytest.fixture(scope="session")
def bundled():
    from skipsearch.models import load_model
    return load_model("edm")


# Heavy tests (over ~5 s on 2 cores) in files other work owns at the moment (tests/execution/), marked slow here by
# node id; the marks belong in the files themselves once those are free. A path alone marks the whole module.
_SLOW_BY_ID = {
    "tests/execution/test_budget.py::test_concurrent_processes_use_exactly_the_budget",  # 3 optimize processes
    "tests/execution/test_ray_gpu_options.py",  # starts a real Ray runtime
}


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        path, _, name = item.nodeid.partition("::")
        if path in _SLOW_BY_ID or f"{path}::{name.split('[')[0]}" in _SLOW_BY_ID:
            item.add_marker(pytest.mark.slow)
