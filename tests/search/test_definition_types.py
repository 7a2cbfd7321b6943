"""Study files with wrong types, bad ranges or sampler options a sampler does not take: refused in one line, early."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
import typing

import pytest

from skipsearch.proxy.config import ProxyConfig
from skipsearch.search.definition import (
    STUDIES_DIR,
    SearchConfig,
    SpaceBounds,
    StudyDefinition,
    StudyDefinitionError,
    load_study_file,
    parse_study,
    validate,
)

SECTIONS = {"study": StudyDefinition, "space": SpaceBounds, "proxy": ProxyConfig, "search": SearchConfig}
NOT_IN_FILES = {"space_bounds", "proxy", "search", "sampler_options", "source"}  # sections of their own, or internal


def _wrong_values(hint) -> list:
    """Values of another type than ``hint`` allows (TOML has no null, so Optional adds nothing)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0]
    if hint is bool:
        return ["yes", 1]
    if hint is int:
        return ["x", 2.5, True]
    if hint is float:
        return ["x", False]
    if hint is str:
        return [1, ["a"]]
    if typing.get_origin(hint) is tuple:
        return [3, [250, "a"], [250.5]]
    raise AssertionError(f"no wrong values for {hint}")


def _cases():
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if section == "study" and f.name in NOT_IN_FILES:
                continue
            for value in _wrong_values(hints[f.name]):
                yield pytest.param(section, f.name, value, id=f"{section}.{f.name}={value!r}")


def test_every_field_is_walked():
    walked = {(c.values[0], c.values[1]) for c in _cases()}
    assert ("search", "final_n") in walked and ("proxy", "common_random_numbers") in walked
    assert len(walked) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values()) - len(NOT_IN_FILES)


@pytest.mark.parametrize(("section", "key", "value"), list(_cases()))
def test_wrong_type_names_file_section_field_and_value(section, key, value):
    with pytest.raises(StudyDefinitionError) as info:
        parse_study({section: {key: value}}, "bad.toml")
    message = str(info.value)
    assert message.startswith("bad.toml: ") and f"[{section}] {key}" in message and repr(value) in message, message
    assert "must be" in message and "\n" not in message


@pytest.mark.parametrize(("section", "value"), [("study", "x"), ("space", [1, 2]), ("space", 3), ("proxy", True),
                                                ("search", "x"), ("sampler_options", 3),
                                                ("sampler_options", [1])])
def test_section_that_is_not_a_table(section, value):
    with pytest.raises(StudyDefinitionError, match=rf"^bad\.toml: \[{section}\] must be a table"):
        parse_study({section: value}, "bad.toml")


def test_integers_are_numbers_and_lists_are_rungs():
    definition = parse_study({"space": {"churn_max": 40, "rho_min": 0, "rho_max": 1},
                              "proxy": {"rungs": [10, 20], "common_random_numbers": False}}, "ok.toml")
    assert definition.space_bounds.churn_max == 40 and definition.proxy.rungs == (10, 20)
    assert definition.proxy.common_random_numbers is False


@pytest.mark.parametrize(("search", "field"), [({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"),
                                               ({"reduction_factor": 1}, "reduction_factor"),
                                               ({"validation_seed_offset": -5}, "validation_seed_offset"),
                                               ({"final_n": 1}, "final_n"),
                                               ({"validate_top_k": -1}, "validate_top_k")])
def test_search_values_out_of_range(search, field):
    with pytest.raises(StudyDefinitionError, match=rf"^bad\.toml: .*{field}"):
        parse_study({"search": search}, "bad.toml")


@pytest.mark.parametrize(("proxy", "field"), [({"batch_size": 0}, "batch_size"), ({"seed_offset": -1}, "seed_offset"),
                                              ({"kid_subset_size": 1}, "kid_subset_size")])
def test_proxy_values_out_of_range(proxy, field):
    with pytest.raises(StudyDefinitionError, match=rf"^bad\.toml: .*{field}"):
        parse_study({"proxy": proxy}, "bad.toml")


def test_validate_checks_types_given_from_python():
    with pytest.raises(StudyDefinitionError, match=r"\[study\] trials must be an integer, got '3'"):
        validate(StudyDefinition().override(trials="3"))
    with pytest.raises(StudyDefinitionError, match=r"\[search\] seed must be an integer, got 1.5"):
        validate(StudyDefinition().override(search__seed=1.5))


def test_shipped_studies_still_load():
    files = sorted(STUDIES_DIR.glob("*.toml"))
    assert files
    for path in files:
        load_study_file(path)


def test_definition_stays_torch_free(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[search]\nfinal_n = "x"\n')
    code = ("import sys\nfrom skipsearch.search.definition import load_study_file, StudyDefinitionError\n"
            f"try:\n    load_study_file({str(bad)!r})\nexcept StudyDefinitionError:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------------------------------------------
# Sampler options: checked against the sampler before the store, the model or the study exist.

BAD_OPTIONS = [
    ("heun", {"bogus": 1}, "bogus"), ("heun", {"eta": 0.5}, "eta"), ("heun", {"churn": 1}, "churn"),
    ("heun", {"batch_size": 4}, "batch_size"), ("heun", {"spacing": "nope"}, "spacing"),
    ("heun", {"rho": 0}, "rho"), ("heun", {"rho": "7"}, "rho"), ("ddim", {"eta": -1.0}, "eta"),
    ("ddim", {"eta": "0.5"}, "eta"), ("unipc", {"order": 5}, "order"), ("unipc", {"order": 2.0}, "order"),
    ("unipc", {"variant": "bh3"}, "variant"), ("unipc", {"corrector": "yes"}, "corrector"),
]


@pytest.mark.parametrize(("sampler", "options", "key"), BAD_OPTIONS)
def test_bad_sampler_options_refused_before_storage(sampler, options, key, tmp_path):
    from skipsearch.execution.session import open_session
    from skipsearch.sampling.samplers import SamplerOptionError
    nfe = 9
    definition = dataclasses.replace(StudyDefinition(sampler=sampler, nfe=nfe, trials=1, source="s.toml"),
                                     sampler_options=options)
    db = tmp_path / "skipsearch.db"
    with pytest.raises(SamplerOptionError) as info:
        open_session(definition, storage_url=f"sqlite:///{db}")
    message = str(info.value)
    assert message.startswith("s.toml: [sampler_options] ") and key in message and "\n" not in message, message
    assert not db.exists()  # refused before the store (and so the model and the study) were opened


@pytest.mark.parametrize(("sampler", "options"), [("unipc", {"order": 3, "variant": "bh1"}),
                                                  ("unipc", {"order": 1, "lower_order_final": False,
                                                             "corrector": False}),
                                                  ("ddim", {"eta": 0.5}), ("ddim", {"eta": 0}),
                                                  ("heun", {"spacing": "log-snr", "rho": 5}), ("euler", {})])
def test_good_sampler_options_pass(sampler, options):
    from skipsearch.sampling.samplers import check_sampler_options
    check_sampler_options(sampler, options)


def test_open_session_validates_a_definition_made_in_python(tmp_path):
    from skipsearch.execution.session import open_session
    definition = StudyDefinition(trials=1, source="python", proxy=ProxyConfig(common_random_numbers="yes"))
    db = tmp_path / "skipsearch.db"
    with pytest.raises(StudyDefinitionError, match=r"^python: \[proxy\] common_random_numbers must be true or false"):
        open_session(definition, storage_url=f"sqlite:///{db}")
    assert not db.exists()


def test_a_study_file_keeps_its_model_in_python_and_on_the_cli(tmp_path) -> None:
    """``optimize(study=FILE)`` once replaced the file's model with the default 'edm' (the CLI guarded it)."""
    import skipsearch

    path = tmp_path / "other.toml"
    path.write_text('[study]\nmodel = "no-such-model"\nnfe = 5\ntrials = 2\n')
    assert StudyDefinition.from_options(study=path).model == "no-such-model"
    assert StudyDefinition.from_options(study=path, model="edm").model == "edm"  # given: it wins
    assert StudyDefinition.from_options().model == "edm"
    assert StudyDefinition.from_options(nfes=(5, 9, 17)).nfe == 9  # the middle NFE of a multi-NFE study
    import skipsearch.optimization  # noqa: F401 - the module must not replace the package's optimize()
    assert callable(skipsearch.optimize)
    with pytest.raises(Exception, match="no-such-model"):  # the file's model is the one loaded
        skipsearch.optimize(study=path, storage=f"sqlite:///{tmp_path}/s.db")
