"""Weights a schedule names (S²-DM fine-tuned exports): where they may be loaded from, and the exported copy.

A schedule JSON is data anyone can hand over, so the weights it names (``provenance.weights_path``) are loaded only
from two places: the study artifacts folder (``<artifacts>/s2dm/``, where fine-tuning trials write them) or beside the
JSON itself, named by bare file name (what :func:`copy_weights_beside` writes at export). Either way the file's
sha256 must equal the one the schedule records (``provenance.weights_sha256``, else ``model.sha256``). Weights the
user passes with ``--checkpoint`` are the user's choice and are not checked here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from skipsearch.export.errors import ScheduleWeightsError

_CHUNK = 1 << 20


def recorded_sha256(doc: dict[str, Any]) -> str | None:
    """The sha256 a schedule document records for the weights it names."""
    provenance = doc.get("provenance") or {}
    model = doc.get("model") or {}
    sha = provenance.get("weights_sha256") or (model.get("sha256") if isinstance(model, dict) else None)
    return sha if isinstance(sha, str) and sha else None


def weights_named_by(schedule: str | os.PathLike, artifacts: str | os.PathLike) -> Path | None:
    """The fine-tuned weights a schedule file names (S²-DM exports), only from beside the JSON or the study
    artifacts and only with the sha256 the schedule records (a schedule is data from anyone; ``--checkpoint``
    chooses others); None when it names none or cannot be read (loading the schedule reports that)."""
    import json

    from skipsearch.errors import SkipsearchError
    from skipsearch.inputs import read_user_text
    try:
        doc = json.loads(read_user_text(schedule, "schedule file"))
    except (SkipsearchError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("provenance"), dict):
        return None
    return schedule_weights(schedule, doc, artifacts)


def schedule_weights(schedule: str | os.PathLike, doc: dict[str, Any], artifacts: str | os.PathLike) -> Path | None:
    """The checked path of the weights ``doc`` (read from ``schedule``) names; None when it names none.

    ``artifacts`` is the study artifacts folder (``skipsearch.execution.session.artifact_dir``).
    """
    schedule = Path(schedule)
    named = (doc.get("provenance") or {}).get("weights_path")
    if not named:
        return None
    what = f"{schedule.name}: provenance.weights_path {named!r}"
    todo = "pass the weights explicitly with --checkpoint, or export the schedule again ('skipsearch export')"
    if not isinstance(named, str):
        raise ScheduleWeightsError(f"{what} is not a file name; {todo}")
    beside, root = schedule.resolve().parent, (Path(artifacts) / "s2dm").resolve()
    name = Path(named)
    if name.name == named and named not in (".", ".."):  # a bare file name: beside the JSON
        real, place = (beside / named).resolve(), f"beside {schedule.name}"
        if real.parent != beside:  # symlinks resolved: the file that would really be read
            raise ScheduleWeightsError(f"{what} links out of the schedule's folder; {todo}")
    elif name.is_absolute():
        real, place = name.resolve(), f"in the study artifacts ({root})"
        if not real.is_relative_to(root):
            raise ScheduleWeightsError(f"{what} is outside the study artifacts ({root}); weights named by a schedule "
                                       f"load only from there or beside the JSON by bare file name; {todo}")
    else:
        raise ScheduleWeightsError(f"{what} is a relative path; weights named by a schedule load only beside the "
                                   f"JSON by bare file name or from the study artifacts ({root}); {todo}")
    if not real.is_file():
        raise ScheduleWeightsError(f"{what}: no such file {place}; {todo}")
    expected = recorded_sha256(doc)
    if expected is None:
        raise ScheduleWeightsError(f"{what}: the schedule records no sha256 for these weights; {todo}")
    from skipsearch.models.checkpoints.safetensors_io import file_sha256
    actual = file_sha256(real)
    if actual != expected:
        raise ScheduleWeightsError(f"{what}: the file's sha256 {actual[:12]}... is not the schedule's "
                                   f"{expected[:12]}...; {todo}")
    return real


def copy_weights_beside(source: str | os.PathLike, output: str | os.PathLike, expected_sha256: str) -> Path:
    """Copy ``source`` to ``<output stem>.safetensors`` beside ``output`` (atomically), checking its sha256."""
    source, output = Path(source), Path(output)
    target = output.with_name(f"{output.stem}.safetensors")
    if target == output:
        raise ScheduleWeightsError(f"{output}: give the exported schedule a .json name (its weights go to {target})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    digest = hashlib.sha256()
    try:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != expected_sha256:
            raise ScheduleWeightsError(f"{source}: sha256 {digest.hexdigest()[:12]}... is not the stored schedule's "
                                       f"{expected_sha256[:12]}...; the fine-tuned weights changed after the study; "
                                       "run 'skipsearch optimize' again")
        os.replace(tmp, target)  # a reader never sees half a file under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return target


def describe_weights(checkpoint: str | os.PathLike | None, model: str, sha256: str) -> str:
    """The line ``sample`` and ``evaluate`` print: ``weights: <path or 'bundled edm'> (sha256 <12 hex>)``."""
    if checkpoint is not None:
        source = str(checkpoint)
    elif model in ("edm", "ddpm-mnist"):
        source = f"bundled {model}"
    else:
        source = f"the weights of {model}"
    return f"weights: {source} (sha256 {sha256[:12]})"


__all__ = ["ScheduleWeightsError", "copy_weights_beside", "describe_weights", "recorded_sha256", "schedule_weights"]
