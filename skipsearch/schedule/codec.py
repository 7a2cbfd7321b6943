"""The ``skipsearch.schedule/v2`` JSON document: one object holding a schedule's coefficients, knobs and provenance.

v2 adds how to sample it: ``grid`` (the time grid as a law for any step count, or null for the sampler's default),
``sampler_options`` and ``nfe_set`` (the NFEs one schedule was searched for). v1 documents (without them) still load:
they mean the default grid, no options and a single NFE.

Non-finite floats are written as strings ("inf"), since standard JSON has none; reading is strict, so a typo in a
hand-edited file fails with a message naming the field instead of being ignored.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from skipsearch.schedule.validation import ScheduleError, encode_floats, float_for_json, fmt
from skipsearch.schedule.values import Churn, ModelIdentity, TimeGrid

S = TypeVar("S", bound=Any)  # SkipSchedule: the class is passed in, so this module never imports it

__all__ = ["SCHEMA", "SCHEMA_V1", "from_dict", "from_json", "load", "save", "to_dict", "to_json"]

SCHEMA = "skipsearch.schedule/v2"
SCHEMA_V1 = "skipsearch.schedule/v1"
_V1_FIELDS = ("schema", "family", "params", "rho", "sigma_bounds", "churn", "eps_scale", "model", "sampler", "nfe",
              "provenance")
_DOC_FIELDS = (*_V1_FIELDS, "grid", "sampler_options", "nfe_set")


def to_dict(schedule: Any) -> dict[str, Any]:
    """The ``skipsearch.schedule/v2`` document as plain JSON-ready Python (inf written as "inf")."""
    return {
        "schema": SCHEMA,
        "family": schedule.family,
        "params": encode_floats(copy.deepcopy(schedule.params)),
        "rho": schedule.rho.tolist(),
        "sigma_bounds": [float_for_json(b) for b in schedule.sigma_bounds],
        "churn": schedule.churn.to_dict(),
        "eps_scale": schedule.eps_scale,
        "model": None if schedule.model is None else schedule.model.to_dict(),
        "sampler": schedule.sampler,
        "nfe": schedule.nfe,
        "provenance": encode_floats(copy.deepcopy(schedule.provenance)),
        "grid": None if schedule.grid is None else schedule.grid.to_dict(),
        "sampler_options": copy.deepcopy(schedule.sampler_options),
        "nfe_set": list(schedule.nfe_set),
    }


def to_json(schedule: Any, indent: int | None = 2) -> str:
    """The document as standard JSON text (no NaN/Infinity literals)."""
    return json.dumps(to_dict(schedule), indent=indent, allow_nan=False)


def save(schedule: Any, path: str | os.PathLike) -> Path:
    """Write the JSON document (creating parent folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename so a reader (dashboard, another worker) never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_json(schedule) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def from_dict(cls: type[S], d: Any, *, expect_model: ModelIdentity | None = None) -> S:
    """Parse and strictly validate a ``skipsearch.schedule/v2`` or v1 document; optionally check it fits a model."""
    if not isinstance(d, Mapping):
        raise ScheduleError(f"schedule document must be a JSON object, got {type(d).__name__}")
    if "schema" not in d:
        raise ScheduleError(f"schedule.schema: missing; this skipsearch reads {SCHEMA}")
    if d["schema"] not in (SCHEMA, SCHEMA_V1):
        raise ScheduleError(f"unsupported schedule schema {fmt(d['schema'])}; this skipsearch reads {SCHEMA} and "
                            f"{SCHEMA_V1}")
    fields = _DOC_FIELDS if d["schema"] == SCHEMA else _V1_FIELDS
    for key in d:
        if key not in fields:
            raise ScheduleError(f"schedule: unknown field {fmt(key)} in a {d['schema']} document (known: "
                                f"{', '.join(fields)})")
    for key in ("rho", "sigma_bounds"):
        if key not in d:
            raise ScheduleError(f"schedule.{key}: missing")
    churn = Churn() if d.get("churn") is None else Churn.from_dict(d["churn"], "schedule.churn")
    model = None if d.get("model") is None else ModelIdentity.from_dict(d["model"], "schedule.model")
    params = {} if d.get("params") is None else d["params"]
    provenance = {} if d.get("provenance") is None else d["provenance"]
    grid = None if d.get("grid") is None else TimeGrid.from_dict(d["grid"], "schedule.grid")
    nfe_set = d.get("nfe_set") or ()
    schedule = cls(rho=d["rho"], sigma_bounds=d["sigma_bounds"], churn=churn,
                   eps_scale=d.get("eps_scale", 1.0), family=d.get("family", "free"), params=params,
                   model=model, sampler=d.get("sampler"), nfe=d.get("nfe"), provenance=provenance, grid=grid,
                   sampler_options={} if d.get("sampler_options") is None else d["sampler_options"],
                   nfe_set=tuple(nfe_set) if isinstance(nfe_set, list) else nfe_set)
    if expect_model is not None:
        schedule.check_model(expect_model)
    return schedule


_TOO_DEEP = "{source}: JSON nested too deeply to be a schedule; give a skipsearch.schedule/v2 document"


def from_json(cls: type[S], text: str, *, expect_model: ModelIdentity | None = None, source: str = "<string>") -> S:
    """Parse a JSON document; ``source`` (a path) is named in the message if the text is not valid JSON."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ScheduleError(_TOO_DEEP.format(source=source)) from None
    if not isinstance(d, dict):
        raise ScheduleError(f"{source}: schedule document must be a JSON object, got {type(d).__name__}")
    try:
        return from_dict(cls, d, expect_model=expect_model)
    except RecursionError:  # nesting json accepts can still be too deep for the recursive checks of params
        raise ScheduleError(_TOO_DEEP.format(source=source)) from None


def load(cls: type[S], path: str | os.PathLike, *, expect_model: ModelIdentity | None = None) -> S:
    """Read a schedule file; every error message starts with the path."""
    from skipsearch.inputs import read_user_text
    path = Path(path)
    # A regular file of sensible size only: a FIFO would block, /dev/zero would read until memory runs out.
    text = read_user_text(path, "schedule file", error=ScheduleError)
    try:
        return from_json(cls, text, expect_model=expect_model, source=str(path))
    except ScheduleError as exc:
        message = str(exc)
        raise ScheduleError(message if message.startswith(str(path)) else f"{path}: {message}") from None
