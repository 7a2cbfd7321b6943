"""The frontier's numbers without a model: FID and its bootstrap, the limit's doubling rule, the verdicts, the
terminal table, the picture and the files, from points stored in a real SQLite store."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers.cli import assert_one_line_error, run_cli
from PIL import Image

from skipsearch.export.frontier import (
    LIMIT,
    PAPER,
    UNTUNED,
    breaks_limit,
    load_view,
    reach_nfe,
    terminal_table,
    write_outputs,
)
from skipsearch.frontier import doubled_nfe, first_limit_nfe, limit_converged
from skipsearch.proxy.paired import BootstrapFid, fid_of, percentile_ci, resample_indices
from skipsearch.proxy.stats import FeatureStats
from skipsearch.store import FrontierKey, FrontierStore
from skipsearch.store.limits import NewPoint

DIM = 12


def _features(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    return rng.normal(shift, 1.0, size=(n, DIM)).astype(np.float32).astype(np.float64)


def test_bootstrap_fid_is_torch_fidelitys_fid():
    rng = np.random.default_rng(0)
    ref = FeatureStats.from_features(_features(rng, 500, 0.0))
    features = _features(rng, 200, 0.3)
    boot = BootstrapFid(ref)
    assert boot.value(features) == pytest.approx(fid_of(features, ref), rel=1e-8)
    indices = resample_indices(200, 5, seed=1)
    assert np.allclose(boot(features, indices), [fid_of(features, ref, i) for i in indices], rtol=1e-8)
    assert (resample_indices(200, 5, seed=1) == indices).all()  # the same images for every arm


def test_percentile_ci_is_moved_by_the_bootstrap_bias():
    values = np.linspace(10.0, 20.0, 101)  # mean 15
    assert percentile_ci(values) == pytest.approx((10.25, 19.75))
    assert percentile_ci(values, centre=12.0) == pytest.approx((7.25, 16.75))


def test_limit_doubles_the_steps_until_two_doublings_change_little():
    assert first_limit_nfe("heun", 79) == 79 and first_limit_nfe("heun", 80) == 81
    assert doubled_nfe("heun", 79) == 159 and doubled_nfe("euler", 80) == 160
    assert not limit_converged([100.0, 99.5], 0.01)  # one doubling is not two
    assert limit_converged([100.0, 99.5, 99.2], 0.01)
    assert not limit_converged([100.0, 95.0, 94.9], 0.01)
    assert limit_converged([300.0, 100.0, 99.5, 99.2], 0.01)  # only the last two count


KEY = FrontierKey("edm", "ab" * 32, "heun", 40, 1_000_000, "mnist-features", "cd" * 32)
# FID-like shapes: rho = 1 falls with NFE, the searched arms faster; "joint" ends below the limit.
SHIFTS = {UNTUNED: {3: 3.0, 5: 2.0, 9: 1.0}, PAPER: {3: 2.9, 5: 1.9, 9: 0.95},
          "per-level": {3: 2.5, 5: 1.2, 9: 0.5}, "joint": {3: 1.0, 5: 0.3, 9: 0.0},
          "shared:joint": {3: 1.1, 5: 0.35, 9: 0.05}}


@pytest.fixture
def stored_view(tmp_path):
    """A frontier stored the way ``frontier`` stores one: points with features, the limit, the CIs."""
    rng = np.random.default_rng(0)
    ref = FeatureStats.from_features(_features(rng, 2000, 0.0))
    boot = BootstrapFid(ref)
    base = rng.normal(0, 1, size=(KEY.n, DIM))  # shared noise: the arms' images start from the same seeds
    url = f"sqlite:///{tmp_path}/frontier.db"
    with FrontierStore(url) as store:
        limit_features = base * 1.05 + 0.15
        limit_point = store.put_point(KEY, NewPoint(arm=LIMIT, nfe=79, value=boot.value(limit_features),
                                                    recipe="limit", features=limit_features, description="rho=1",
                                                    denoiser_calls=KEY.n * 79, seconds=1.0))
        for arm, by_nfe in SHIFTS.items():
            for nfe, shift in by_nfe.items():
                features = base + shift
                store.put_point(KEY, NewPoint(arm=arm, nfe=nfe, value=boot.value(features), recipe=f"{arm}{nfe}",
                                              features=features, description=f"{arm} schedule",
                                              denoiser_calls=KEY.n * nfe, seconds=0.5))
        indices = resample_indices(KEY.n, 40)
        limit = store.put_limit(KEY, nfe=79, value=limit_point.value, value_low=limit_point.value - 1,
                                value_high=limit_point.value + 1, ci_resamples=40, converged=True, tolerance=0.01,
                                probes=[(79, limit_point.value)], denoiser_calls=KEY.n * 79, seconds=1.0)
        limit_boot = boot(store.features(limit_point.id), indices)
        for p in store.points(KEY):
            own = boot(store.features(p.id), indices)
            rho1 = store.point(KEY, UNTUNED, p.nfe) if p.arm != LIMIT else None
            cis = {"ci_resamples": 40, "limit_nfe": 79, "vs_limit": p.value - limit.value,
                   **dict(zip(("vs_limit_low", "vs_limit_high"),
                              percentile_ci(own - limit_boot, centre=p.value - limit.value)))}
            if rho1 is not None and p.arm != UNTUNED:
                cis.update(vs_untuned=p.value - rho1.value, vs_untuned_low=-1.0, vs_untuned_high=-0.5)
            store.set_cis(p.id, value_low=p.value * 0.9, value_high=p.value * 1.1, **cis)
        assert store.keys() == [KEY] and store.keys("other") == []
        yield load_view(store, KEY), url


def test_verdicts_reach_and_break(stored_view):
    view, _ = stored_view
    assert view.arms == [UNTUNED, PAPER, "per-level", "joint", "shared:joint"]  # the order they were stored in
    assert view.nfes == [3, 5, 9] and len(view.probes) == 1
    reached = reach_nfe(view.points, view.limit)
    assert reached[UNTUNED] is None and reached["joint"] == 9
    assert breaks_limit(view.points) == (9, "joint")


def test_terminal_table_fits_80_columns(stored_view):
    view, _ = stored_view
    text = terminal_table(view, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for fragment in ("NFE", "rho=1", "per-level", "joint (shared)", "limit: FID", "breaks the limit at 9 NFE"):
        assert fragment in text, text
    narrow = terminal_table(view, width=60)
    assert max(len(line) for line in narrow.splitlines()) <= 60, narrow


def test_picture_and_files(stored_view, tmp_path):
    view, _ = stored_view
    written = write_outputs(view, tmp_path / "out")
    assert [p.name for p in written] == ["frontier.png", "frontier.csv", "frontier.json", "index.html"]
    width, height = Image.open(written[0]).size
    assert width > 600 and height > 400
    rows = list(csv.DictReader(written[1].open()))
    assert len(rows) == 15 and {r["arm"] for r in rows} == set(SHIFTS)
    joint9 = next(r for r in rows if r["arm"] == "joint" and r["nfe"] == "9")
    assert joint9["breaks_limit"] == "true" and joint9["within_5pct_of_limit"] == "true"
    document = json.loads(written[2].read_text())
    assert document["breaks_limit"] == {"nfe": 9, "arm": "joint"} and document["limit"]["nfe"] == 79
    assert document["costs"][-1]["what"] == "total"
    page = written[3].read_text()
    assert 'id="frontier-fid"' in page and "frontier.png" in page and "breaks the limit at 9 NFE" in page


def test_best_frontier_reads_the_store(stored_view, capsys):
    _, url = stored_view
    result = run_cli(capsys, "best", "--frontier", "--storage", url)
    assert result.code == 0, result.err
    assert "NFE frontier of edm" in result.out and "limit: FID" in result.out
    as_json = json.loads(run_cli(capsys, "best", "--frontier", "--storage", url, "--format", "json").out)
    assert as_json[0]["frontier"]["model_name"] == "edm"
    assert "no NFE frontier" in run_cli(capsys, "best", "--frontier", "--storage", url, "--model", "ddpm").out


def test_bad_frontier_values_are_one_line(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/x.db"
    for args, fragment in ((("--nfes", "3,3"), "repeats"), (("--nfes", "3,x"), "--nfes"),
                           (("--nfes", "4"), "--nfe 3 or --nfe 5"), (("--n", "5"), "--n must be at least 10"),
                           (("--space", "s2dm"), "fine-tuning"), (("--space", "nope"), "unknown search space"),
                           (("--limit-nfe", "79", "--limit-max-nfe", "9"), "--limit-max-nfe"),
                           (("--shared", "--nfes", "5"), "--shared")):
        assert_one_line_error(run_cli(capsys, "frontier", "--storage", url, *args), fragment)
