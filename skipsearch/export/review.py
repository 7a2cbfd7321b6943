"""Human verdicts in optuna-dashboard: a companion study ``<study>.review`` with one running trial per candidate.

optuna-dashboard shows ``user_attr`` form widgets only on RUNNING trials, and Optuna refuses user attributes on
finished ones, so a verdict cannot be written on the study's own (finished) trials. :func:`open_review` keeps, in
the same storage, a study named ``<study>.review`` holding one RUNNING trial per validated candidate (its user
attributes name the candidate; its artifacts are copies of the candidate's grids) and registers the form:

* ``verdict``: a choice, ``accept`` (stored as 1) or ``reject`` (stored as -1); the dashboard posts the value;
* ``verdict_comment``: free text, optional.

Review trials have no heartbeat rows (nothing runs them), so Optuna's stale-heartbeat check never fails them, and
skipsearch's trial loop works on the main study only. :func:`verdicts` reads them back; :func:`choose` is what
``skipsearch best`` and ``export`` use to skip a rejected winner for the next best validated candidate.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from skipsearch.proxy.config import metric_spec
from skipsearch.settings import Settings
from skipsearch.store import BestRow, BestStore, redact_url
from skipsearch.store.records import StudyRecord, TrialRecord, review_study_name

__all__ = ["ACCEPT", "REJECT", "Choice", "Verdict", "choose", "honour_verdicts", "open_review", "rejected_keys",
           "review_study_name", "verdicts"]

log = logging.getLogger(__name__)

ACCEPT, REJECT = "accept", "reject"
VERDICT_KEY, COMMENT_KEY = "verdict", "verdict_comment"
_CHOICES, _VALUES = [ACCEPT, REJECT], [1.0, -1.0]  # "accept" first: the form preselects it (a stray submit is safe)
REVIEW_OF = "review_of"  # review study user attr: the study it reviews
_ARTIFACTS = "artifacts:"  # optuna.artifacts' system-attribute prefix


@dataclass(frozen=True)
class Verdict:
    """A reviewer's verdict on trial ``trial`` of study ``study``."""

    study: str
    trial: int
    verdict: str  # ACCEPT or REJECT
    comment: str = ""
    review_trial: int | None = None  # number of the review trial that holds it

    @property
    def rejected(self) -> bool:
        return self.verdict == REJECT

    @property
    def accepted(self) -> bool:
        return self.verdict == ACCEPT


# --------------------------------------------------------------------------------------------------------------------
# Writing: the review study.


def _widgets() -> list[Any]:
    from optuna_dashboard import ChoiceWidget, TextInputWidget
    return [ChoiceWidget(choices=list(_CHOICES), values=list(_VALUES), user_attr_key=VERDICT_KEY,
                         description="accept, or reject if the images show artefacts (best/export then skip it)"),
            TextInputWidget(description="what you saw, e.g. 'speckle in the background'", user_attr_key=COMMENT_KEY,
                            optional=True)]


def open_review(study: optuna.Study, storage_url: str, artifact_store: Any | None = None,
                settings: Settings | None = None) -> str:
    """Create or update ``<study>.review``: one RUNNING trial per validated candidate; the review study's name.

    Idempotent: a candidate that already has a review trial is left alone (its verdict too); only new candidates
    get one. Processes finishing the same study together take the study lock, so none is added twice.
    ``settings`` (artifacts folder, lock timeout): the caller's; without them the environment is read here
    (``Settings.from_env()``).
    """
    from optuna_dashboard import register_user_attr_form_widgets, save_note

    from skipsearch.store.engine import connect
    from skipsearch.store.locks import study_lock
    name = review_study_name(study.study_name)
    candidates = {n: v for n, v in StudyRecord(study).validated().items() if v.value is not None}
    if not candidates and name not in optuna.get_all_study_names(study._storage):
        return name  # nothing to review yet: no empty study in the dashboard's list
    settings = settings if settings is not None else Settings.from_env()
    engine = connect(storage_url, lock_timeout=settings.lock_timeout)
    try:
        with study_lock(engine, f"{study.study_name}:review"):
            review = optuna.create_study(study_name=name, storage=study._storage, load_if_exists=True)
            if review.user_attrs.get(REVIEW_OF) != study.study_name:
                review.set_user_attr(REVIEW_OF, study.study_name)
            form = [w.to_dict() for w in _widgets()]
            current = _form(review._storage.get_study_system_attrs(review._study_id))
            if current is None or current.get("widgets") != form:
                register_user_attr_form_widgets(review, _widgets())
            reviewed = {int(t.user_attrs["reviews_trial"]) for t in review.get_trials(deepcopy=False)
                        if isinstance(t.user_attrs.get("reviews_trial"), int)}
            new = sorted((v.value, n) for n, v in candidates.items() if n not in reviewed)
            if not review.user_attrs.get("note_saved"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    save_note(review, _note(study.study_name))
                review.set_user_attr("note_saved", True)
            if new:
                store = artifact_store if artifact_store is not None else _artifact_store(storage_url, settings)
                trials = {t.number: t for t in study.get_trials(deepcopy=False)}
                metric = (StudyRecord(study).definition.get("metric") or (study.metric_names or ["value"])[0])
                for value, number in new:
                    _add_review_trial(review, study, trials.get(number), number, candidates[number], metric, store)
    finally:
        engine.dispose()
    return name


def _note(study_name: str) -> str:
    return (f"## Review of `{study_name}`\n\n"
            "Each running trial here is one validated candidate of that study (user attribute `reviews_trial`: its "
            "trial number there; `validated`: its score after validation). Its artifacts are the candidate's "
            "images, its rho heatmap and its images next to rho = 1 on the same seeds.\n\n"
            "To give a verdict: open a trial, look at the artifacts, choose **accept** or **reject** under *Set User "
            "Attributes Form*, write what you saw, **Submit**. `skipsearch best` and `skipsearch export` then skip a "
            "rejected trial for the next best validated one and say so. Reload the page to change a verdict.\n")


def _add_review_trial(review: optuna.Study, study: optuna.Study, trial: optuna.trial.FrozenTrial | None,
                      number: int, validated: Any, metric: str, artifact_store: Any) -> None:
    attrs: dict[str, Any] = {"reviews_study": study.study_name, "reviews_trial": number, "metric": metric,
                             "validated": validated.value, "n": validated.n,
                             # where the candidate itself is in this dashboard (its params, rungs, history)
                             "main_trial_url": f"/dashboard/studies/{study._study_id}/trials?numbers={number}"}
    if validated.proxy is not None:
        attrs["proxy"] = validated.proxy
    if validated.baseline:
        attrs["baseline"] = validated.baseline
    if trial is not None:
        record = TrialRecord.read(trial)
        if record.warm_start:
            attrs["warm_start"] = record.warm_start
        if trial.params:
            attrs["params"] = {k: v for k, v in trial.params.items()}
    # Made from a template, not run: no heartbeat row is ever written, so no stale-heartbeat check can fail it.
    template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs)
    target = review._storage.create_new_trial(review._study_id, template_trial=template)
    if trial is not None:
        copied = _copy_artifacts(trial, target, review._storage, artifact_store)
        if copied:
            review._storage.set_trial_user_attr(target, "artifacts", copied)


def _copy_artifacts(source: optuna.trial.FrozenTrial, target: int, storage: Any, artifact_store: Any) -> list[str]:
    """Copy the source trial's artifacts onto the target (own ids, so deleting one never deletes the other)."""
    copied = []
    for key, raw in sorted(source.system_attrs.items()):
        if not key.startswith(_ARTIFACTS):
            continue
        try:
            meta = json.loads(raw)
            new_id = str(uuid.uuid4())
            with artifact_store.open_reader(meta["artifact_id"]) as reader:
                artifact_store.write(new_id, reader)
        except Exception as exc:  # a missing or unreadable file must not stop the review of the others
            log.warning("review: artifact %s of trial %d not copied: %s", key.removeprefix(_ARTIFACTS),
                        source.number, exc)
            continue
        storage.set_trial_system_attr(target, _ARTIFACTS + new_id,
                                      json.dumps({**meta, "artifact_id": new_id}))
        copied.append(str(meta.get("filename", new_id)))
    return copied


def _artifact_store(storage_url: str, settings: Settings) -> Any:
    from optuna.artifacts import FileSystemArtifactStore

    from skipsearch.store.studies import artifact_dir
    folder = artifact_dir(storage_url, settings)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def _form(system_attrs: dict[str, Any]) -> dict[str, Any] | None:
    from optuna_dashboard._form_widget import get_form_widgets_json
    return get_form_widgets_json(system_attrs)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# Reading.


def _read_storage(storage_or_url: Any) -> Any | None:
    """An Optuna storage to read from, None when the database has no Optuna tables (nothing was reviewed)."""
    if not isinstance(storage_or_url, str):
        return storage_or_url
    from sqlalchemy import inspect

    from skipsearch.store.engine import StoreError, _reason, connect
    engine = connect(storage_or_url)
    try:
        if not inspect(engine).has_table("studies"):
            return None  # reading must not create Optuna's tables
    finally:
        engine.dispose()
    try:
        return optuna.storages.RDBStorage(
            storage_or_url, skip_table_creation=True,
            engine_kwargs={"pool_pre_ping": True} if not storage_or_url.startswith("sqlite") else None)
    except Exception as exc:  # sqlalchemy/driver errors vary
        raise StoreError(f"cannot read the review studies in {redact_url(storage_or_url)}: "
                         f"{_reason(exc, storage_or_url)}") from None


def _decode(value: Any, widget: dict[str, Any] | None) -> str | None:
    """ACCEPT/REJECT from what the form stored (the choice's value; or its name, written by a script)."""
    choices = list(widget.get("choices", _CHOICES)) if widget else _CHOICES
    values = list(widget.get("values", _VALUES)) if widget else _VALUES
    if isinstance(value, str):
        text = value.strip().lower()
        for choice in choices:
            if text == str(choice).lower():
                return choice
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        for choice, v in zip(choices, values):
            if float(v) == float(value):
                return choice
    return None


def verdicts(storage_or_url: Any, study_name: str) -> dict[int, Verdict]:
    """Verdicts on the trials of ``study_name`` (trial number -> verdict); {} when nobody reviewed it.

    A trial with two review trials (should not happen: :func:`open_review` takes a lock) takes the first one's
    verdict.
    """
    storage = _read_storage(storage_or_url)
    if storage is None:
        return {}
    try:
        study_id = storage.get_study_id_from_name(review_study_name(study_name))
    except KeyError:
        return {}
    form = _form(storage.get_study_system_attrs(study_id)) or {}
    widget = next((w for w in form.get("widgets", []) if w.get("user_attr_key") == VERDICT_KEY), None)
    out: dict[int, Verdict] = {}
    for t in sorted(storage.get_all_trials(study_id, deepcopy=False), key=lambda t: t.number):
        number = t.user_attrs.get("reviews_trial")
        choice = _decode(t.user_attrs.get(VERDICT_KEY), widget)
        if not isinstance(number, int) or choice is None or number in out:
            continue
        comment = t.user_attrs.get(COMMENT_KEY)
        out[number] = Verdict(study_name, number, choice, "" if comment is None else str(comment).strip(), t.number)
    return out


def rejected_keys(storage_or_url: Any, study_names: Iterable[str]) -> dict[tuple[str, int], Verdict]:
    """(study name, trial number) -> verdict for every rejected trial of ``study_names``."""
    storage = _read_storage(storage_or_url)
    out: dict[tuple[str, int], Verdict] = {}
    if storage is None:
        return out
    for name in dict.fromkeys(n for n in study_names if n):
        out.update({(name, n): v for n, v in verdicts(storage, name).items() if v.rejected})
    return out


# --------------------------------------------------------------------------------------------------------------------
# best / export: skip rejected winners.


@dataclass
class Choice:
    """The row ``best``/``export`` use for one key after verdicts: ``row`` (None: every candidate was rejected),
    the verdict on it, and the rejected winners skipped (best first) with one line each."""

    row: BestRow | None
    verdict: Verdict | None = None
    skipped: list[Verdict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def provenance(self) -> dict[str, Any] | None:
        """What the exported schedule records of the review (None: nobody reviewed it or what it beat)."""
        if self.verdict is None and not self.skipped:
            return None
        doc: dict[str, Any] = {"verdict": self.verdict.verdict if self.verdict else None}
        if self.verdict is not None:
            doc.update(comment=self.verdict.comment, review_study=review_study_name(self.verdict.study),
                       review_trial=self.verdict.review_trial)
        if self.skipped:
            doc["skipped"] = [{"study": v.study, "trial": v.trial, "verdict": v.verdict, "comment": v.comment}
                              for v in self.skipped]
        return doc


def _said(v: Verdict) -> str:
    return f"{v.comment!r}" if v.comment else "(no comment)"


def choose(store: BestStore, row: BestRow, storage: Any | None = None) -> Choice:
    """The best row for ``row.key`` that no reviewer rejected, with a line per rejected winner skipped."""
    storage = storage if storage is not None else _read_storage(store.url)
    if storage is None:
        return Choice(row)
    history = store.validations(row.key)
    rejected = rejected_keys(storage, [row.study_name or ""] + [v.study_name or "" for v in history])
    spec = metric_spec(row.metric)
    pick = store.best_excluding(row.key, set(rejected), spec.direction == "minimize") if rejected else row
    ranked = sorted((v for v in history if v.metric == row.metric and math.isfinite(v.value)),
                    key=lambda v: (spec.sort_key(v.value), v.created_at, v.id))
    skipped: dict[tuple[str, int], Verdict] = {}
    best = (row.study_name or "", row.trial_number)
    for v in [row, *ranked]:  # the rejected ones ranked above the one used
        key = (v.study_name or "", v.trial_number)
        if key in rejected and (pick is None or v.value < pick.value or key == best):
            skipped.setdefault(key, rejected[key])
    lines = []
    for v in skipped.values():
        if pick is None:
            using = "no other validated candidate is left: run 'skipsearch optimize' for more, or accept one"
        elif pick.study_name == v.study:
            using = f"using trial {pick.trial_number} ({pick.metric} {pick.value:.4f})"
        else:
            using = f"using trial {pick.trial_number} of study {pick.study_name} ({pick.metric} {pick.value:.4f})"
        lines.append(f"trial {v.trial} of study {v.study} was rejected by a reviewer: {_said(v)}; {using}")
    verdict = None
    if pick is not None and pick.study_name and pick.trial_number is not None:
        verdict = verdicts(storage, pick.study_name).get(pick.trial_number)
    return Choice(pick, verdict, list(skipped.values()), lines)


def honour_verdicts(store: BestStore, rows: list[BestRow]) -> tuple[list[BestRow], list[str]]:
    """``rows`` with each rejected winner replaced by the next best validated candidate (left out when none is
    left), and one line per rejected winner skipped."""
    storage = _read_storage(store.url)
    if storage is None:
        return rows, []
    out, lines = [], []
    for row in rows:
        choice = choose(store, row, storage)
        lines += choice.lines
        if choice.row is not None:
            out.append(choice.row)
    return out, lines
