"""SkipSchedule: constructors, sigma-interval lookup, JSON round trip and strict validation."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from skipsearch.sampling.grids import karras_interval_bounds, karras_sigmas
from skipsearch.schedule import SCHEMA, Churn, ModelIdentity, ScheduleError, SkipSchedule

EDM = ModelIdentity(name="edm", sha256="a" * 64, num_skip_points=9)
BOUNDS = (math.inf, 10.0, 1.5, 0.2, 0.0)  # four intervals


# --------------------------------------------------------------------------------------------------------------------
# Constructors


def test_linear_matches_paper_rule_over_nine_points() -> None:
    s = SkipSchedule.linear(0.68, 1.0, 9)
    assert s.rho.shape == (1, 9) and s.rho.dtype == np.float64
    np.testing.assert_allclose(s.rho[0], [0.68 + 0.04 * i for i in range(9)], rtol=0, atol=1e-12)
    assert s.rho[0, 0] == 0.68 and s.rho[0, -1] == 1.0  # bottom skip point first
    assert s.sigma_bounds == (math.inf, 0.0) and s.num_intervals == 1 and s.num_skip_points == 9
    assert s.family == "linear" and s.params == {"rho_bottom": 0.68, "rho_top": 1.0}
    assert SkipSchedule.linear(0.5, 1.0, 1).rho.tolist() == [[0.5]]


def test_constant_identity_and_per_layer_repeat_over_intervals() -> None:
    s = SkipSchedule.constant(0.78, 4, sigma_bounds=BOUNDS)
    assert s.rho.shape == (4, 4) and np.all(s.rho == 0.78) and s.params == {"rho": 0.78}
    assert s.is_layer_wise and not s.is_identity
    ident = SkipSchedule.identity(9)
    assert ident.is_identity and ident.family == "identity" and ident.rho.shape == (1, 9)
    assert not dataclasses.replace(ident, eps_scale=1.05).is_identity
    p = SkipSchedule.per_layer([0.5, 0.7, 0.9], sigma_bounds=BOUNDS)
    assert p.rho.shape == (4, 3) and all(row == [0.5, 0.7, 0.9] for row in p.rho.tolist())
    assert p.family == "per_layer" and p.params == {"values": [0.5, 0.7, 0.9]}


def test_per_level_expands_levels_to_points() -> None:
    s = SkipSchedule.per_level([0.6, 0.8, 1.0], [0, 0, 1, 1, 1, 2, 2])
    assert s.rho.tolist() == [[0.6, 0.6, 0.8, 0.8, 0.8, 1.0, 1.0]]
    assert s.params == {"level_values": [0.6, 0.8, 1.0], "level_of_point": [0, 0, 1, 1, 1, 2, 2]}
    with pytest.raises(ScheduleError, match=r"level_of_point\[2\]: 3 is not a level index in \[0, 2\]"):
        SkipSchedule.per_level([0.6, 0.8, 1.0], [0, 1, 3])


def test_intervals_free_form() -> None:
    s = SkipSchedule.intervals([[1.0, 1.0], [0.7, 0.9], [0.8, 1.0], [1.0, 1.0]], BOUNDS)
    assert s.family == "intervals" and s.num_intervals == 4 and s.rho[1].tolist() == [0.7, 0.9]
    assert not s.is_layer_wise


def test_window_puts_rho_only_in_its_interval() -> None:
    bounds = karras_interval_bounds(0.002, 80.0, 52, 4)  # the paper's 13 windows of 4 steps
    s = SkipSchedule.window(bounds, 6, 0.8, 9)
    assert s.num_intervals == 13 and s.family == "window" and s.params == {"window": 6, "rho": 0.8}
    assert np.all(s.rho[6] == 0.8)
    assert np.all(np.delete(s.rho, 6, axis=0) == 1.0)
    per_layer = SkipSchedule.window(bounds, 0, [0.5, 0.6, 0.7])
    assert per_layer.rho[0].tolist() == [0.5, 0.6, 0.7] and np.all(per_layer.rho[1:] == 1.0)
    with pytest.raises(ScheduleError, match=r"window: 13 is not an interval index in \[0, 12\]"):
        SkipSchedule.window(bounds, 13, 0.8, 9)


def test_karras_interval_bounds_group_sampling_steps() -> None:
    sigmas = karras_sigmas(52, 0.002, 80.0)[:-1].numpy()  # without the final 0
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-1] == pytest.approx(0.002)
    bounds = karras_interval_bounds(0.002, 80.0, 52, 4)
    assert len(bounds) == 14 and bounds[0] == math.inf and bounds[-1] == 0.0
    assert bounds[1] == pytest.approx(math.sqrt(sigmas[3] * sigmas[4]))
    s = SkipSchedule.identity(1, sigma_bounds=bounds)
    # Every sampling step lands in window step // 4.
    assert s.interval_index(torch.tensor(sigmas)).tolist() == [i // 4 for i in range(52)]
    # A partial last window: 10 steps in windows of 4 -> 3 windows.
    assert len(karras_interval_bounds(0.002, 80.0, 10, 4)) == 4


@pytest.mark.parametrize("direction", ["decreasing", "increasing"])
def test_linear_in_time_direction_and_monotonicity(direction: str) -> None:
    s = SkipSchedule.linear_in_time(0.5, 3, direction=direction, sigma_min=0.002, sigma_max=80.0)
    assert s.num_intervals == 8 and s.sigma_bounds[0] == math.inf and s.sigma_bounds[-1] == 0.0
    inner = np.log(s.sigma_bounds[1:-1])
    np.testing.assert_allclose(np.diff(inner), np.diff(inner)[0])  # equal in log-sigma
    assert not s.is_layer_wise and np.all(s.rho == s.rho[:, :1])  # varies with sigma, same at every point
    column = s.rho[:, 0]  # row 0 = highest sigma (time T)
    near_min, near_max = s.rho_at(0.002)[0], s.rho_at(80.0)[0]
    if direction == "decreasing":  # 1.0 at sigma_min falling to rho_0 at sigma_max
        assert near_min > 0.95 and near_max < 0.55 and np.all(np.diff(column) > 0)
    else:
        assert near_min < 0.55 and near_max > 0.95 and np.all(np.diff(column) < 0)
    assert s.params["direction"] == direction and s.params["num_intervals"] == 8


def test_constructor_argument_errors_name_the_argument() -> None:
    with pytest.raises(ScheduleError, match="num_skip_points: 0 must be a positive integer"):
        SkipSchedule.linear(0.5, 1.0, 0)
    with pytest.raises(ScheduleError, match="direction: 'down' must be"):
        SkipSchedule.linear_in_time(0.5, 3, direction="down", sigma_min=0.002, sigma_max=80)  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match=r"schedule.rho\[0\]\[0\]: 2.5 is outside \[0, 2\]"):
        SkipSchedule.constant(2.5, 3)


# --------------------------------------------------------------------------------------------------------------------
# Direct construction, immutability, equality


def test_direct_construction_validates_with_field_names() -> None:
    rho = np.ones((2, 5))
    rho[1, 3] = 2.5
    with pytest.raises(ScheduleError, match=r"^schedule.rho\[1\]\[3\]: 2.5 is outside \[0, 2\]$"):
        SkipSchedule(rho=rho, sigma_bounds=(math.inf, 1.0, 0.0))
    with pytest.raises(ScheduleError, match=r"churn.s_noise: 0.0 must be > 0"):
        Churn(s_noise=0)
    with pytest.raises(ScheduleError, match="schedule.model.num_skip_points"):
        SkipSchedule(rho=np.ones((1, 5)), model=EDM)


def test_schedule_is_immutable_and_private() -> None:
    source = np.full((1, 3), 0.7)
    s = SkipSchedule(rho=source)
    source[0, 0] = 0.1  # the schedule holds its own copy
    assert s.rho[0, 0] == 0.7
    with pytest.raises(ValueError):
        s.rho[0, 0] = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.eps_scale = 1.1  # type: ignore[misc]
    params = {"a": [1, 2]}
    t = SkipSchedule(rho=[[1.0]], params=params)
    params["a"].append(3)
    assert t.params == {"a": [1, 2]}


def test_equality_by_content_and_unhashable() -> None:
    a = SkipSchedule.linear(0.68, 1.0, 9)
    assert a == SkipSchedule.linear(0.68, 1.0, 9)
    assert a != SkipSchedule.linear(0.70, 1.0, 9)
    assert a != dataclasses.replace(a, eps_scale=1.1)
    assert a != a.with_metadata(nfe=9)
    assert a != SkipSchedule.linear(0.68, 1.0, 8)  # different shape, no broadcasting surprise
    with pytest.raises(TypeError):
        hash(a)


def test_with_metadata_copies_and_rejects_coefficients() -> None:
    a = SkipSchedule.linear(0.68, 1.0, 9)
    b = a.with_metadata(model=EDM, sampler="heun", nfe=19, provenance={"trial": 3})
    assert a.model is None and b.model == EDM and b.nfe == 19 and np.array_equal(a.rho, b.rho)
    with pytest.raises(ScheduleError, match="with_metadata: 'rho' is not a metadata field"):
        a.with_metadata(rho=np.ones((1, 9)))
    with pytest.raises(ScheduleError, match="schedule.nfe: 0 must be a positive integer"):
        a.with_metadata(nfe=0)


def test_pickle_and_deepcopy_drop_device_cache() -> None:
    s = SkipSchedule.intervals([[0.5, 0.6], [1.0, 1.0]], (math.inf, 1.0, 0.0)).with_metadata(model=None, nfe=9)
    s.rho_for_sigma(torch.tensor([2.0]))
    for clone in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s)):
        assert clone == s and not clone.rho.flags.writeable
        assert clone.rho_for_sigma(torch.tensor(0.5)).tolist() == [[1.0, 1.0]]


# --------------------------------------------------------------------------------------------------------------------
# Sigma -> interval -> rho


def _four_interval_schedule() -> SkipSchedule:
    return SkipSchedule.intervals([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], BOUNDS)


def test_interval_index_boundary_convention_and_clamping() -> None:
    s = _four_interval_schedule()
    sigma = torch.tensor([1e6, 80.0, 10.0, 9.99, 1.5, 1.0, 0.2, 0.1, 0.0, -1.0], dtype=torch.float64)
    # A sigma exactly on an inner bound belongs to the interval below it: (bounds[i+1], bounds[i]].
    assert s.interval_index(sigma).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert s.interval_index(sigma).dtype == torch.long
    # Upper bound finite: sigma above it still clamps to interval 0; lower bound positive: below clamps to last.
    finite = SkipSchedule.intervals([[0.5], [0.9]], (5.0, 1.0, 0.5))
    assert finite.interval_index(torch.tensor([100.0, 5.0, 1.0, 0.5, 0.01])).tolist() == [0, 0, 1, 1, 1]
    # float32 sigma equal to a bound literal counts as on the bound.
    assert s.interval_index(torch.tensor([0.2], dtype=torch.float32)).tolist() == [3]


def test_interval_index_shapes_and_single_interval() -> None:
    s = _four_interval_schedule()
    zero_dim = s.interval_index(torch.tensor(5.0))
    assert zero_dim.shape == () and int(zero_dim) == 1
    assert s.interval_index(torch.full((2, 3), 0.5)).shape == (2, 3)
    assert s.interval_index(3.0).tolist() == 1  # a plain float works too
    assert SkipSchedule.linear(0.5, 1.0, 4).interval_index(torch.tensor([100.0, 0.0])).tolist() == [0, 0]


def test_rho_for_sigma_selects_per_sample_rows() -> None:
    s = _four_interval_schedule()
    sigma = torch.tensor([0.05, 50.0, 1.5, 3.0])
    out = s.rho_for_sigma(sigma)
    assert out.shape == (4, 2) and out.dtype == torch.float32 and out.device == sigma.device
    expected = torch.tensor([[0.7, 0.8], [0.1, 0.2], [0.5, 0.6], [0.3, 0.4]])
    torch.testing.assert_close(out, expected)
    single = s.rho_for_sigma(torch.tensor(50.0))
    assert single.shape == (1, 2)
    torch.testing.assert_close(single, expected[1:2])
    # Repeated calls (cached table) give the same values and a fresh tensor each time.
    again = s.rho_for_sigma(sigma)
    torch.testing.assert_close(again, out)
    again.zero_()
    torch.testing.assert_close(s.rho_for_sigma(sigma), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rho_for_sigma_on_cuda() -> None:
    s = _four_interval_schedule()
    out = s.rho_for_sigma(torch.tensor([0.05, 50.0], device="cuda"))
    assert out.device.type == "cuda"
    assert out.cpu().tolist() == pytest.approx([[0.7, 0.8], [0.1, 0.2]])


# --------------------------------------------------------------------------------------------------------------------
# JSON


def _full_schedule() -> SkipSchedule:
    s = SkipSchedule.linear(0.68, 1.0, 9, sigma_bounds=(math.inf, 1.5, 0.0),
                            churn=Churn(s_churn=10.0, s_min=0.05, s_noise=1.003), eps_scale=1.005)
    return s.with_metadata(model=EDM, sampler="heun", nfe=9,
                           provenance={"study": "edm-nfe9", "trial": 17, "fid": 2.92, "tags": ["a", "b"]})


def test_json_round_trip(tmp_path: Path) -> None:
    s = _full_schedule()
    text = s.to_json()
    doc = json.loads(text)
    assert doc["schema"] == SCHEMA and doc["sigma_bounds"] == ["inf", 1.5, 0.0] and doc["churn"]["s_max"] == "inf"
    assert doc["model"] == {"name": "edm", "sha256": "a" * 64, "num_skip_points": 9}
    back = SkipSchedule.from_json(text, expect_model=EDM)
    assert back == s and back.sigma_bounds[0] == math.inf and back.churn.s_max == math.inf
    path = s.save(tmp_path / "sub" / "best.json")
    assert SkipSchedule.load(path) == s
    for factory in (lambda: SkipSchedule.identity(3),
                    lambda: SkipSchedule.window(karras_interval_bounds(0.002, 80, 52, 4), 5, [0.7, 0.8, 0.9]),
                    lambda: SkipSchedule.per_level([0.5, 1.0], [0, 1, 1]),
                    lambda: SkipSchedule.linear_in_time(0.6, 2, direction="increasing", sigma_min=0.002,
                                                        sigma_max=80)):
        one = factory()
        assert SkipSchedule.from_dict(json.loads(one.to_json())) == one


def test_json_accepts_infinity_spellings_and_defaults() -> None:
    doc = {"schema": SCHEMA, "rho": [[0.9, 1.0]], "sigma_bounds": ["Infinity", 0]}
    s = SkipSchedule.from_dict(doc)
    assert s.sigma_bounds == (math.inf, 0.0) and s.churn == Churn() and s.family == "free" and s.model is None


def _doc(**changes: Any) -> dict[str, Any]:
    """A valid v1 document with some fields replaced; a keyword `_del_<field>` removes that field."""
    doc = json.loads(_full_schedule().to_json())
    for key, value in changes.items():
        if key.startswith("_del_"):
            del doc[key[5:]]
        else:
            doc[key] = value
    return doc


MALFORMED: list[tuple[str, Any, str]] = [
    ("not-object", [1, 2, 3], "schedule document must be a JSON object, got list"),
    ("missing-schema", _doc(_del_schema=True), "schedule.schema: missing"),
    ("schema-v3", _doc(schema="skipsearch.schedule/v3"),
     "unsupported schedule schema 'skipsearch.schedule/v3'; this skipsearch reads skipsearch.schedule/v2 and "
     "skipsearch.schedule/v1"),
    ("unknown-field", _doc(sigma_bound=[1]), "schedule: unknown field 'sigma_bound'"),
    ("missing-rho", _doc(_del_rho=True), "schedule.rho: missing"),
    ("rho-not-list", _doc(rho=0.7), "schedule.rho: must be a non-empty 2-D list of numbers"),
    ("rho-empty", _doc(rho=[]), "schedule.rho: must be a non-empty 2-D list of numbers"),
    ("rho-1d", _doc(rho=[0.7] * 9), "schedule.rho[0]: must be a list of numbers"),
    ("rho-ragged", _doc(rho=[[1.0] * 9, [1.0] * 8], sigma_bounds=["inf", 1, 0]),
     "schedule.rho[1]: has 8 values but row 0 has 9"),
    ("rho-string", _doc(rho=[[1.0] * 8 + ["x"]]), "schedule.rho[0][8]: 'x' is not a number"),
    ("rho-bool", _doc(rho=[[True] * 9]), "schedule.rho[0][0]: True is not a number"),
    ("rho-nan", _doc(rho=[[1.0] * 4 + [float("nan")] + [1.0] * 4]), "schedule.rho[0][4]: nan is not finite"),
    ("rho-inf", _doc(rho=[[1.0] * 8 + ["inf"]]), "schedule.rho[0][8]: inf is not finite"),
    ("rho-too-big", _doc(rho=[[1.0] * 3 + [2.5] + [1.0] * 5]), "schedule.rho[0][3]: 2.5 is outside [0, 2]"),
    ("rho-negative", _doc(rho=[[-0.1] + [1.0] * 8]), "schedule.rho[0][0]: -0.1 is outside [0, 2]"),
    ("bounds-length", _doc(sigma_bounds=["inf", 2.0, 1.0, 0.0]),
     "schedule.sigma_bounds: has 4 values but rho has 2 rows"),
    ("bounds-ascending", _doc(sigma_bounds=["inf", 0.0, 1.5]),
     "schedule.sigma_bounds[2]: 1.5 is not below the previous"),
    ("bounds-equal", _doc(sigma_bounds=[3.0, 3.0, 0.0]), "schedule.sigma_bounds[1]: 3.0 is not below the previous"),
    ("bounds-negative", _doc(sigma_bounds=["inf", 1.5, -0.1]), "schedule.sigma_bounds[2]: -0.1 is negative"),
    ("bounds-not-list", _doc(sigma_bounds="inf,0"), "schedule.sigma_bounds: must be a list of numbers"),
    ("churn-negative", _doc(churn={"s_churn": -1}), "schedule.churn.s_churn: -1.0 must be >= 0"),
    ("churn-smax", _doc(churn={"s_min": 1.0, "s_max": 0.5}), "schedule.churn.s_max: 0.5 must be >= s_min (1.0)"),
    ("churn-noise", _doc(churn={"s_noise": 0}), "schedule.churn.s_noise: 0.0 must be > 0"),
    ("churn-unknown", _doc(churn={"churn": 1}), "schedule.churn: unknown field 'churn'"),
    ("churn-inf", _doc(churn={"s_churn": "inf"}), "schedule.churn.s_churn: inf must be finite"),
    ("eps-scale", _doc(eps_scale=3.0), "schedule.eps_scale: 3.0 is outside [0.5, 2]"),
    ("nfe-zero", _doc(nfe=0), "schedule.nfe: 0 must be a positive integer"),
    ("nfe-float", _doc(nfe=9.5), "schedule.nfe: 9.5 must be a positive integer"),
    ("nfe-bool", _doc(nfe=True), "schedule.nfe: True must be a positive integer"),
    ("model-not-object", _doc(model="edm"), "schedule.model: must be an object with name, sha256, num_skip_points"),
    ("model-missing-sha", _doc(model={"name": "edm", "num_skip_points": 9}), "schedule.model.sha256: missing"),
    ("model-bad-count", _doc(model={"name": "edm", "sha256": "", "num_skip_points": "9"}),
     "schedule.model.num_skip_points: '9' must be a positive integer"),
    ("model-vs-rho", _doc(model={"name": "edm", "sha256": "", "num_skip_points": 15}),
     "schedule.model.num_skip_points: model 'edm' (15 skip points) does not match rho's 9 columns"),
    ("family-empty", _doc(family=""), "schedule.family: '' must be a non-empty string"),
    ("params-list", _doc(params=[1]), "schedule.params: must be an object"),
    ("sampler-number", _doc(sampler=3), "schedule.sampler: 3 must be a non-empty string or null"),
]


@pytest.mark.parametrize(("doc", "message"), [(d, m) for _, d, m in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_malformed_documents_are_rejected(doc: Any, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        SkipSchedule.from_dict(doc)
    assert message in str(info.value)
    assert "\n" not in str(info.value)  # one line


def test_invalid_json_and_missing_file_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match=r"<string>: invalid JSON at line 1 column"):
        SkipSchedule.from_json('{"schema": ')
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ScheduleError, match=rf"^{bad}: invalid JSON at line 1"):
        SkipSchedule.load(bad)
    listing = tmp_path / "list.json"
    listing.write_text("[1]", encoding="utf-8")
    with pytest.raises(ScheduleError, match=rf"^{listing}: schedule document must be a JSON object"):
        SkipSchedule.load(listing)
    out_of_range = tmp_path / "range.json"
    out_of_range.write_text(json.dumps(_doc(eps_scale=0.1)), encoding="utf-8")
    with pytest.raises(ScheduleError, match=rf"^{out_of_range}: schedule.eps_scale: 0.1 is outside"):
        SkipSchedule.load(out_of_range)
    missing = tmp_path / "nope.json"
    with pytest.raises(ScheduleError, match=rf"^schedule file not found: {missing}$"):
        SkipSchedule.load(missing)


# --------------------------------------------------------------------------------------------------------------------
# expect_model


def test_expect_model_mismatches() -> None:
    cifar = ModelIdentity(name="edm-cifar10", sha256="b" * 64, num_skip_points=15)
    doc = SkipSchedule.linear(0.68, 1.0, 15).with_metadata(model=cifar).to_dict()
    with pytest.raises(ScheduleError) as info:
        SkipSchedule.from_dict(doc, expect_model=EDM)
    assert str(info.value) == ("schedule is for model 'edm-cifar10' (15 skip points) but the loaded model is 'edm' "
                               "(9 skip points)")
    renamed = dataclasses.replace(EDM, name="edm-ffhq")
    with pytest.raises(ScheduleError, match="schedule is for model 'edm' .* but the loaded model is 'edm-ffhq'"):
        SkipSchedule.from_dict(_full_schedule().to_dict(), expect_model=renamed)
    other_weights = dataclasses.replace(EDM, sha256="c" * 64)
    with pytest.raises(ScheduleError, match="schedule is for model 'edm' with weights sha256 aaaaaaaaaaaa"):
        SkipSchedule.from_dict(_full_schedule().to_dict(), expect_model=other_weights)
    # No model block: the skip-point count must still match.
    bare = SkipSchedule.linear(0.68, 1.0, 15).to_dict()
    with pytest.raises(ScheduleError, match="schedule has 15 skip points per interval but the loaded model is 'edm'"):
        SkipSchedule.from_dict(bare, expect_model=EDM)
    assert SkipSchedule.from_dict(SkipSchedule.linear(0.68, 1.0, 9).to_dict(), expect_model=EDM).model is None
    # Unknown sha256 ("") on the schedule's side is not compared.
    unknown = _full_schedule().with_metadata(model=dataclasses.replace(EDM, sha256=""))
    assert SkipSchedule.from_dict(unknown.to_dict(), expect_model=other_weights) == unknown
