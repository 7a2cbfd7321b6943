"""The proxy of a schedule on the bundled model: rungs accumulate, CRN, guard rails, the CLI commands."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.cli import assert_one_line_error, run_cli

from skipsearch.proxy.config import ProxyConfig
from skipsearch.proxy.errors import ProxyConfigError
from skipsearch.proxy.fid_proxy import FidProxy
from skipsearch.sampling.generate import NonFiniteOutputError
from skipsearch.schedule import SkipSchedule


@pytest.fixture(scope="module")
def proxy(bundled):
    return FidProxy(bundled, sampler="heun", nfe=5, config=ProxyConfig(rungs=(16, 32)))


def test_rungs_accumulate_and_report(proxy):
    seen = []
    result = proxy.evaluate(None, on_rung=lambda i, r: seen.append((i, r.n)))
    assert seen == [(0, 16), (1, 32)]
    assert result.seeds == (0, 32) and result.denoiser_calls == 2 * 5  # two rung batches, NFE 5 each
    assert all(r.value > 0 for r in result.rungs) and result.rungs[-1].rank_deficient  # n=32 < 232-d features
    assert result.preview.shape[0] == 16


def test_common_random_numbers(proxy, bundled):
    a = proxy.evaluate(None).value
    assert proxy.evaluate(None).value == a  # same seeds, same images, same value
    fresh = FidProxy(bundled, sampler="heun", nfe=5, config=ProxyConfig(rungs=(16, 32), common_random_numbers=False))
    first, second = fresh.evaluate(None), fresh.evaluate(None)
    assert first.seeds != second.seeds and first.value != second.value


def test_schedule_changes_value(proxy):
    base = proxy.evaluate(None).value
    assert proxy.evaluate(SkipSchedule.constant(0.5, 9)).value != base


def test_non_finite_output_fails_the_evaluation(proxy):
    """A non-finite denoiser output surfaces as NonFiniteOutputError (the trial fails), never a NaN FID."""
    block = proxy.adapter.net.model.dec["7x7_block0"]
    hook = block.register_forward_hook(lambda _m, _a, out: out * float("nan"))
    try:
        with pytest.raises(NonFiniteOutputError):
            proxy.evaluate(None, rungs=[4])
    finally:
        hook.remove()


def test_bad_proxy_config():
    with pytest.raises(ProxyConfigError):
        ProxyConfig(metric="is")
    with pytest.raises(ProxyConfigError):
        ProxyConfig(rungs=(500, 250))


def test_evaluate_command(capsys):
    result = run_cli(capsys, "evaluate", "--nfe", "5", "--n", "24", "--metric", "fid,kid", "--rho", "0.8")
    assert result.code == 0, result.err
    assert "FID" in result.out and "KID" in result.out and "n=24" in result.out and "mnist-features" in result.out
    assert_one_line_error(run_cli(capsys, "evaluate", "--metric", "is", "--n", "4"), "is")


def test_fid_infinity_option(bundled):
    proxy = FidProxy(bundled, sampler="heun", nfe=5, config=ProxyConfig(rungs=(64,), metric="fid-inf"))
    result = proxy.evaluate(None)
    assert result.metric == "fid-inf" and np.isfinite(result.value)
