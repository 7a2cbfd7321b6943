"""Study definitions: one readable TOML file per study kind (``studies/``), overridden by command-line flags.

Torch-free: loading or validating a study file imports neither torch nor the models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skipsearch.proxy.config import ProxyConfig
from skipsearch.schedule.limits import EPS_SCALE_RANGE, MAX_NFE, RHO_RANGE
from skipsearch.search.errors import StudyDefinitionError
from skipsearch.search.strategies import OPTUNA_SAMPLERS, PRUNERS
from skipsearch.store.records import REVIEW_SUFFIX, is_review_study

if TYPE_CHECKING:
    from skipsearch.settings import Settings

# Study files ship inside the package (skipsearch/studies is the repository's studies/ folder, linked).
STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"


@dataclass(frozen=True)
class SpaceBounds:
    """Parameter ranges; the paper's defaults (rho in [0.3, 1.0], churn in [0, 40])."""

    rho_min: float = 0.3
    rho_max: float = 1.0
    churn_max: float = 40.0
    eps_min: float = 1.0
    eps_max: float = 1.03
    num_intervals: int = 3
    search_churn: bool = True
    # A quick sweep sets rho_min/rho_max from the model before the search (skipsearch.search.calibration); off
    # when a study file or flag gives the rho range itself.
    calibrate: bool = True
    calibrate_n: int = 64

    def __post_init__(self) -> None:
        lo, hi = RHO_RANGE
        if not lo <= self.rho_min < self.rho_max <= hi:
            raise ValueError(f"rho range [{self.rho_min}, {self.rho_max}] must satisfy {lo:g} <= min < max <= {hi:g}")
        lo, hi = EPS_SCALE_RANGE
        if not lo <= self.eps_min <= self.eps_max <= hi:
            raise ValueError(f"eps-scale range [{self.eps_min}, {self.eps_max}] must lie in [{lo:g}, {hi:g}]")
        if self.churn_max < 0 or self.num_intervals < 1:
            raise ValueError("churn_max must be >= 0 and num_intervals >= 1")
        if self.calibrate_n < 2:
            raise ValueError(f"calibrate_n must be at least 2, got {self.calibrate_n}")


@dataclass(frozen=True)
class SearchConfig:
    sampler: str = "tpe"
    pruner: str = "successive-halving"
    reduction_factor: int = 3
    seed: int = 0
    validate_top_k: int = 3
    final_n: int = 2000
    validation_seed_offset: int = 1_000_000
    warm_start: bool = True
    trials_per_batch: int = 1  # trials scored together in shared forwards (this process; results unchanged)


@dataclass(frozen=True)
class StudyDefinition:
    """Everything a study needs; ``name`` defaults to one derived from model, weights, sampler, NFE and space."""

    model: str = "edm"
    sampler: str = "heun"
    nfe: int = 9
    # A multi-NFE study: one schedule for all of them (objective: mean proxy ratio to rho = 1); nfe is one of them.
    nfes: tuple[int, ...] = ()
    space: str = "linear"
    trials: int = 16
    name: str | None = None
    checkpoint: str | None = None
    trust_pickle: bool = False  # a .pkl checkpoint may be loaded (pickles can run code)
    space_bounds: SpaceBounds = SpaceBounds()
    proxy: ProxyConfig = ProxyConfig()
    search: SearchConfig = SearchConfig()
    sampler_options: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in defaults"
    check: bool = True  # check-model before the study opens (skipsearch.models.check); not part of the study name

    def objective_digest(self) -> str:
        """A hash of everything that changes what a trial's value means: the space and its bounds, the proxy, the
        sampler options (the model's identity and the sampler/NFE are in the study name beside it)."""
        proxy = dataclasses.asdict(self.proxy)
        if proxy.get("resize") is None:  # left out when unset, so existing studies keep their names
            proxy.pop("resize", None)
        parts = {"space": self.space, "bounds": dataclasses.asdict(self.space_bounds),
                 "proxy": proxy, "sampler_options": self.sampler_options}
        if self.nfes:  # left out for one NFE, so existing studies keep their names
            parts["nfes"] = list(self.nfes)
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @classmethod
    def from_options(cls, *, study: str | os.PathLike | StudyDefinition | None = None, model: str | None = None,
                     nfe: int | None = None, sampler: str | None = None, nfes: Sequence[int] | None = None,
                     settings: Settings | None = None, **overrides: Any) -> StudyDefinition:
        """The one way options become a study (CLI and Python): the study given (file or definition), else the
        default study of ``model`` (``edm`` when None), then every option given. ``model`` replaces a study's own
        model only when given; with ``nfes`` and no ``nfe``, the middle NFE is the one a reviewer's grids show.
        The result is validated."""
        if isinstance(study, StudyDefinition):
            base = study
        elif study is not None:
            base = load_study_file(study)
        else:
            base = default_study(model or "edm", sampler, nfe, settings=settings)
        if nfes and nfe is None and base.nfe not in nfes:
            nfe = sorted(nfes)[len(nfes) // 2]
        definition = base.override(model=model, nfe=nfe, sampler=sampler, nfes=tuple(nfes) if nfes else None,
                                   **overrides)
        validate(definition)
        return definition

    def override(self, **changes: Any) -> StudyDefinition:
        """Apply command-line flags (None means 'not given'); nested fields as ``proxy__metric`` etc."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if value is None:
                continue
            if "__" in key:
                section, name = key.split("__", 1)
                nested.setdefault(section, {})[name] = value
            else:
                top[key] = value
        for section, values in nested.items():
            try:
                top[section] = dataclasses.replace(getattr(self, section), **values)
            except (TypeError, ValueError) as exc:
                raise StudyDefinitionError(f"{section}: {exc}") from None
        return dataclasses.replace(self, **top)


_SECTIONS = {"space": ("space_bounds", SpaceBounds), "proxy": ("proxy", ProxyConfig),
             "search": ("search", SearchConfig)}
_SECTION_ATTRS = {"space_bounds", "proxy", "search"}
# The [study] table holds StudyDefinition's own fields; the others are sections of their own, or internal.
_STUDY_FIELDS = ("model", "sampler", "nfe", "nfes", "space", "trials", "name", "checkpoint", "trust_pickle",
                 "check")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type a dataclass field annotation names (an int is a float; a bool is no int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:  # tuple[X, ...]: TOML writes it as an array
        return isinstance(value, (list, tuple)) and all(_conforms(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(k, args[0]) and _conforms(v, args[1])
                                               for k, v in value.items())
    return isinstance(value, hint)


def _expected(hint: Any) -> str:
    """A field annotation in words, as a study file would write it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(arg) for arg in args if arg is not type(None))  # TOML has no null: omit it
    if origin is tuple:
        return f"a list of {_expected(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, hint.__name__)


def _check_types(cls: type, values: dict[str, Any], where: str, section: str) -> None:
    """Every value in ``values`` has the type of ``cls``'s field of that name (the one place types are checked)."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _conforms(value, hints[key]):
            raise StudyDefinitionError(f"{where}: [{section}] {key} must be {_expected(hints[key])}, "
                                       f"got {_short(value)}")


def _table(data: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise StudyDefinitionError(f"{source}: [{section}] must be a table (a '[{section}]' header and key = value "
                                   f"lines), got {type(value).__name__} {_short(value)}")
    return dict(value)


def parse_study(data: dict[str, Any], source: str) -> StudyDefinition:
    """A definition from parsed TOML: ``[study]`` top-level fields, ``[space]``, ``[proxy]``, ``[search]``."""
    unknown = set(data) - {"study", "sampler_options", *_SECTIONS}
    if unknown:
        raise StudyDefinitionError(f"{source}: unknown section(s) {sorted(unknown)}; expected [study], [space], "
                                   "[proxy], [search], [sampler_options]")
    kwargs: dict[str, Any] = {"source": source}
    study = _table(data, "study", source)
    for key in study:
        if key not in _STUDY_FIELDS:
            raise StudyDefinitionError(f"{source}: [study] has no field {key!r}; known: {sorted(_STUDY_FIELDS)}")
    _check_types(StudyDefinition, study, source, "study")
    if isinstance(study.get("nfes"), list):
        study["nfes"] = tuple(study["nfes"])
    kwargs.update(study)
    if "sampler" not in study and isinstance(study.get("model"), str):
        kwargs["sampler"] = default_sampler(study["model"])  # DDIM for a discrete-time model
    for section, (attr, cls) in _SECTIONS.items():
        values = _table(data, section, source)
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise StudyDefinitionError(f"{source}: [{section}] has no field {key!r}; known: {sorted(fields)}")
        # Before the constructor: its range checks would fail on a wrong type with a message naming no field.
        _check_types(cls, values, source, section)
        if isinstance(values.get("rungs"), list):
            values["rungs"] = tuple(values["rungs"])
        if section == "space" and ("rho_min" in values or "rho_max" in values):
            values.setdefault("calibrate", False)  # a range given in the file is the range searched
        try:
            kwargs[attr] = cls(**values)
        except (TypeError, ValueError) as exc:
            raise StudyDefinitionError(f"{source}: [{section}] {exc}") from None
    kwargs["sampler_options"] = _table(data, "sampler_options", source)
    definition = StudyDefinition(**kwargs)
    validate(definition)
    return definition


# Study names become file names (exports, fine-tuned weights): a safe character set, no path separators.
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def validate(definition: StudyDefinition) -> None:
    """Types and ranges of every field, however the definition was made (file, flags, Python)."""
    where = definition.source
    _check_types(StudyDefinition, {k: v for k, v in _fields(definition).items() if k not in _SECTION_ATTRS},
                 where, "study")
    for section, (attr, cls) in _SECTIONS.items():
        _check_types(cls, _fields(getattr(definition, attr)), where, section)
    name = definition.name
    if name is not None and not STUDY_NAME.match(name):
        raise StudyDefinitionError(f"{where}: study name {name!r} must be 1-128 letters, digits, '.', '_' "
                                   "or '-', starting with a letter or digit")
    if name is not None and is_review_study(name):
        raise StudyDefinitionError(f"{where}: {name!r} names a review study (verdicts on the trials of "
                                   f"{name.removesuffix(REVIEW_SUFFIX)!r}); run trials in that study instead")
    if definition.trials < 1:
        raise StudyDefinitionError(f"{where}: trials must be a positive integer, got {definition.trials!r}")
    for nfe in (definition.nfe, *definition.nfes):  # a grid of steps is allocated whole: a huge NFE exhausts memory
        if not 1 <= nfe <= MAX_NFE:
            raise StudyDefinitionError(f"{where}: nfe must be a positive integer of at most {MAX_NFE} (denoiser "
                                       f"calls per image), got {nfe!r}")
    nfes = definition.nfes
    if nfes and (any(n < 1 for n in nfes) or len(set(nfes)) != len(nfes) or len(nfes) < 2):
        raise StudyDefinitionError(f"{where}: nfes must be two or more different positive NFEs, got {list(nfes)}")
    if nfes and definition.nfe not in nfes:
        raise StudyDefinitionError(f"{where}: nfe {definition.nfe} must be one of nfes {list(nfes)} (the NFE whose "
                                   "grids a reviewer sees); give --nfe with one of them")
    search, proxy = definition.search, definition.proxy
    if search.sampler not in OPTUNA_SAMPLERS:
        raise StudyDefinitionError(f"{where}: unknown Optuna sampler {search.sampler!r}; "
                                   f"use {', '.join(OPTUNA_SAMPLERS)}")
    if search.pruner not in PRUNERS:
        raise StudyDefinitionError(f"{where}: unknown pruner {search.pruner!r}; use {', '.join(PRUNERS)}")
    # Ranges that Optuna or numpy would otherwise refuse with a traceback once the study is being created.
    ranges = [("search", "final_n", search.final_n >= 2, ">= 2"),
              ("search", "validate_top_k", search.validate_top_k >= 0, ">= 0"),
              ("search", "seed", 0 <= search.seed < 2**32, "in [0, 2**32 - 1]"),
              ("search", "reduction_factor", search.reduction_factor >= 2, ">= 2"),
              ("search", "validation_seed_offset", search.validation_seed_offset >= 0, ">= 0"),
              ("search", "trials_per_batch", 1 <= search.trials_per_batch <= 64, "in [1, 64]"),
              ("proxy", "seed_offset", proxy.seed_offset >= 0, ">= 0"),
              ("proxy", "batch_size", proxy.batch_size is None or proxy.batch_size >= 1, ">= 1"),
              ("proxy", "kid_subset_size", proxy.kid_subset_size >= 2, ">= 2")]
    for section, key, ok, rule in ranges:
        if not ok:
            value = getattr(search if section == "search" else proxy, key)
            raise StudyDefinitionError(f"{where}: [{section}] {key} must be {rule}, got {value!r}")


def load_study_file(path: str | os.PathLike) -> StudyDefinition:
    from skipsearch.inputs import read_user_toml
    path = Path(path)
    data = read_user_toml(path, "study file", error=StudyDefinitionError)  # a regular file of sensible size only
    return parse_study(data, str(path))


def default_study(model: str, sampler: str | None = None, nfe: int | None = None, *,
                  settings: Settings | None = None) -> StudyDefinition:
    """The most specific study file: ``{model}-{sampler}-nfe{nfe}``, ``{model}-nfe{nfe}``, ``{model}``, looked up
    in ``Settings.studies`` (``$SKIPSEARCH_STUDIES``) and then in the shipped studies; else the built-in defaults."""
    folders = [f for f in ((settings.studies if settings else None), STUDIES_DIR) if f is not None]
    spec, model = model, _study_key(model)
    names = []
    if sampler and nfe:
        names.append(f"{model}-{sampler}-nfe{nfe}.toml")
    if nfe:
        names.append(f"{model}-nfe{nfe}.toml")
    names.append(f"{model}.toml")
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return load_study_file(folder / name)
    sampler = default_sampler(spec)
    return StudyDefinition(model=model) if sampler == StudyDefinition.sampler else \
        StudyDefinition(model=model, sampler=sampler)


# Registered discrete-time models (their adapters have a timestep grid); tests/models/test_check_model.py checks
# this against the loaded adapters.
DISCRETE_MODELS = ("ddpm-mnist", "ldm-mnist")
DISCRETE_TYPES = ("epsilon", "v_prediction", "sample")  # as skipsearch.models.spec (which loads torch with models)
CONSISTENCY_MODELS = ("cd-edm",)  # registered consistency models (sampled by onestep / multistep only)


def default_sampler(model: str) -> str:
    """The sampler used when neither a flag nor a study names one: DDIM for a discrete-time model (a registered
    DDPM, ``diffusers:DIR``, a model file with a discrete ``[parametrization] type``), multistep (any NFE) for a
    consistency model, EDM's Heun otherwise. Reads a model file's TOML only (no torch, no model load)."""
    if model in CONSISTENCY_MODELS or _declared_type(model) == "consistency":
        return "multistep"
    return "ddim" if _declared_discrete(model) else "heun"


def _declared_discrete(model: str) -> bool:
    if model in DISCRETE_MODELS or model.startswith("diffusers:"):
        return True
    return _declared_type(model) in DISCRETE_TYPES


def _declared_type(model: str) -> str | None:
    """A model file's ``[parametrization] type`` (None: not a model file, or one that loads an EDM network)."""
    if not model.endswith(".toml"):
        return None
    try:
        from skipsearch.inputs import read_user_toml
        data = read_user_toml(Path(model), "model file", error=StudyDefinitionError)
    except (StudyDefinitionError, OSError):
        return None  # load_model says what is wrong with it
    section, parametrization = data.get("model"), data.get("parametrization", {})
    if not isinstance(section, dict) or "edm" in section or not isinstance(parametrization, dict):
        return None
    return parametrization.get("type", "epsilon")


def _study_key(model: str) -> str:
    """The study-file stem for a model spec: a name as is, a model file by its stem, others by a safe name."""
    if model.endswith(".toml"):
        return Path(model).stem
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in model.removeprefix("diffusers:")).strip("-.")
