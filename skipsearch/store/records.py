"""What skipsearch keeps on an Optuna trial and study (their user attributes), typed and in one place.

Every objective writes through :class:`TrialRecord` and every reader (validation, reports, the CLI, the Ray driver)
reads through it, so an attribute name exists exactly once. Values are JSON-ready (Optuna stores them as JSON).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

_RUNG_PREFIX = "proxy_n"  # proxy value after a rung of n images: proxy_n200
_STEP_PREFIX = "proxy_step"  # fine-tuning trials: proxy after a training step
_LOSS_PREFIX = "loss_step"
# An enqueued baseline's kind: "untuned" is rho = 1 on the study's own sampler and grid (for S²-DM spaces: the tau = 1
# fine-tune at rho = 1), the reference of every lift; "paper" the paper's linear recipe; "grid" rho = 1 on another
# grid shape (AYS); "sampler" rho = 1 with another sampler of a space that chooses it.
BASELINE_KINDS = ("untuned", "paper", "grid", "sampler")


def legacy_baseline_kind(label: str | None) -> str | None:
    """The kind of a baseline recorded before kinds were (by its label); None for no baseline."""
    if not label:
        return None
    if "paper recipe" in label:
        return "paper"
    if label.startswith("untuned (rho=1), Align-Your-Steps"):
        return "grid"
    if label.startswith("untuned (rho=1), "):
        return "sampler"
    return "untuned"


@dataclass
class TrialRecord:
    """A trial's user attributes. ``write`` stores the fields that are set; ``read`` gives them back."""

    schedule: dict[str, Any] | None = None  # the skipsearch.schedule JSON document of the trial
    sampler: str | None = None
    nfe: int | None = None
    trial_kind: str | None = None  # None: a rho trial; "finetune-s2dm": the weights were fine-tuned
    baseline: str | None = None  # label of an enqueued baseline ("untuned (rho=1)", "paper recipe ...")
    baseline_kind: str | None = None  # what the baseline is (BASELINE_KINDS); readers go by this, never the label
    warm_start: str | None = None  # "best of NFE 17": enqueued from a neighbouring study's best
    seeds: str | None = None  # "0-399": the image seeds of the last rung
    denoiser_calls: int | None = None
    sampling_seconds: float | None = None
    feature_seconds: float | None = None
    train_seconds: float | None = None
    wall_seconds: float | None = None
    extractor: str | None = None
    weights_sha256: str | None = None  # fine-tuned weights
    fail_reason: str | None = None
    uncounted: str | None = None  # why a FAIL trial does not count against the budget (skipsearch.execution.budget)
    claimed_by: str | None = None  # worker that claimed a budget slot for it
    sample_grid_artifact: str | None = None  # optuna artifact id of the sample grid
    rho_heatmap_artifact: str | None = None  # optuna artifact id of the rho heatmap (skip point x interval)
    side_by_side_artifact: str | None = None  # optuna artifact id of the preview next to rho = 1, same seeds
    worker: str | None = None  # host:pid:suffix of the process that ran it
    worker_pid: int | None = None
    nfe_values: dict[str, dict[str, float]] | None = None  # multi-NFE trials: NFE -> n -> proxy at that NFE
    rungs: dict[int, float] = field(default_factory=dict)  # n -> proxy
    steps: dict[int, float] = field(default_factory=dict)  # training step -> proxy (fine-tuning)
    losses: dict[int, float] = field(default_factory=dict)  # training step -> loss (fine-tuning)

    def attrs(self) -> dict[str, Any]:
        """The user attributes this record stands for (unset fields left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("rungs", "steps", "losses") or value is None:
                continue
            out[f.name] = value
        out.update({f"{_RUNG_PREFIX}{n}": v for n, v in self.rungs.items()})
        out.update({f"{_STEP_PREFIX}{n}": v for n, v in self.steps.items()})
        out.update({f"{_LOSS_PREFIX}{n}": v for n, v in self.losses.items()})
        return out

    def write(self, trial: Any) -> None:
        for key, value in self.attrs().items():
            trial.set_user_attr(key, value)

    @classmethod
    def put(cls, trial: Any, **fields: Any) -> None:
        """Write some fields now: ``TrialRecord.put(trial, fail_reason=...)``."""
        cls(**fields).write(trial)

    @classmethod
    def read(cls, trial: Any) -> TrialRecord:
        attrs = dict(trial.user_attrs)
        names = {f.name for f in dataclasses.fields(cls)} - {"rungs", "steps", "losses"}
        record = cls(**{k: v for k, v in attrs.items() if k in names})
        if record.baseline and not record.baseline_kind:
            record.baseline_kind = legacy_baseline_kind(record.baseline)
        for prefix, target in ((_RUNG_PREFIX, record.rungs), (_STEP_PREFIX, record.steps),
                               (_LOSS_PREFIX, record.losses)):
            for key, value in attrs.items():
                suffix = key.removeprefix(prefix)
                if key.startswith(prefix) and suffix.isdigit():
                    target[int(suffix)] = value
        return record


@dataclass
class Validated:
    """One trial re-scored at ``final_n`` on fresh seeds (or why that failed)."""

    n: int
    value: float | None = None
    proxy: float | None = None  # the trial's search-time value
    seeds: str | None = None
    baseline: str | None = None
    baseline_kind: str | None = None  # TrialRecord.baseline_kind of the trial
    error: str | None = None
    nfe_values: dict[str, float] | None = None  # multi-NFE studies: the metric at each NFE ("value" is their mean
    # ratio to rho = 1)
    # torch-fidelity's precision / recall (k = 3) and Inception Score on the same images (at the study's NFE);
    # None in records written before they were measured, or where they cannot be (no reference features, no logits)
    precision: float | None = None
    recall: float | None = None
    isc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Validated:
        entry = cls(**{k: d[k] for k in ("n", "value", "proxy", "seeds", "baseline", "baseline_kind", "error",
                                          "nfe_values", "precision", "recall", "isc") if k in d})
        if entry.baseline and not entry.baseline_kind:
            entry.baseline_kind = legacy_baseline_kind(entry.baseline)
        return entry


@dataclass(frozen=True)
class Calibration:
    """The sweep and the bounds it chose."""

    rho: list[float]
    proxy: list[float | None]  # None: the images were degenerate or non-finite
    untuned: float
    n: int
    tolerance: float
    rho_min: float
    rho_max: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**d)

    def describe(self) -> str:
        points = ", ".join(f"{r:g}: {'x' if p is None else f'{p:.1f}'}" for r, p in zip(self.rho, self.proxy))
        return (f"calibrated rho bounds [{self.rho_min:g}, {self.rho_max:g}] (constant-rho sweep at n={self.n}, "
                f"proxy within {self.tolerance:g}x of untuned {self.untuned:.1f}; {points}; x = degenerate)")


class StudyRecord:
    """A study's user attributes: its definition, the validated trials, whether the baselines were enqueued."""

    DEFINITION, VALIDATED, BASELINES_ENQUEUED, CALIBRATION, PROCESSES = (
        "definition", "validated", "baselines_enqueued", "calibration", "processes_joined")

    def __init__(self, study: Any) -> None:
        self.study = study

    @property
    def definition(self) -> dict[str, Any]:
        return dict(self.study.user_attrs.get(self.DEFINITION, {}))

    def set_definition(self, value: dict[str, Any]) -> None:
        self.study.set_user_attr(self.DEFINITION, value)

    def validated(self) -> dict[int, Validated]:
        raw = self.study.user_attrs.get(self.VALIDATED, {})
        return {int(k): Validated.from_dict(v) for k, v in raw.items()}

    def set_validated(self, entries: dict[int, Validated]) -> None:
        self.study.set_user_attr(self.VALIDATED, {str(k): v.to_dict() for k, v in entries.items()})

    def calibration(self) -> Calibration | None:
        raw = self.study.user_attrs.get(self.CALIBRATION)
        return None if raw is None else Calibration.from_dict(raw)

    def set_calibration(self, calibration: Calibration) -> None:
        self.study.set_user_attr(self.CALIBRATION, calibration.to_dict())

    def join(self) -> int:
        """Count one more process joining the study; its index (0 for the first). Call under the study lock."""
        index = int(self.study._storage.get_study_user_attrs(self.study._study_id).get(self.PROCESSES, 0))
        self.study.set_user_attr(self.PROCESSES, index + 1)
        return index

    @property
    def baselines_enqueued(self) -> bool:
        return bool(self.study.user_attrs.get(self.BASELINES_ENQUEUED))

    def mark_baselines_enqueued(self) -> None:
        self.study.set_user_attr(self.BASELINES_ENQUEUED, True)


# A study's companion for human verdicts (skipsearch.export.review) is named after it; no trial ever runs there.
REVIEW_SUFFIX = ".review"


def review_study_name(study_name: str) -> str:
    return f"{study_name}{REVIEW_SUFFIX}"


def is_review_study(study_name: str) -> bool:
    return study_name.endswith(REVIEW_SUFFIX)


# --------------------------------------------------------------------------------------------------------------------
# Which finished trials used the budget (the budget itself is kept by skipsearch.execution.budget).

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def retried_trials(trials: list[FrozenTrial]) -> set[int]:
    numbers: set[int] = set()
    for t in trials:
        history = t.system_attrs.get("retry_history") or []
        numbers.update(int(n) for n in history)
        if t.system_attrs.get("failed_trial") is not None:
            numbers.add(int(t.system_attrs["failed_trial"]))
    return numbers


def counts_against_budget(trial: FrozenTrial, retried: set[int]) -> bool:
    """Whether a finished trial used the budget: complete, pruned, or failed and neither uncounted nor retried."""
    if trial.state != TrialState.FAIL:
        return True
    return trial.number not in retried and not TrialRecord.read(trial).uncounted


def count_finished(study: optuna.Study) -> int:
    """Finished trials that used the budget."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_trials(trials)
    return sum(1 for t in trials if t.state in FINISHED and counts_against_budget(t, retried))


def uncounted_failures(study: optuna.Study) -> int:
    """FAIL trials that did not use the budget (skipped, or queued again)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_trials(trials)
    return sum(1 for t in trials if t.state == TrialState.FAIL and not counts_against_budget(t, retried))
