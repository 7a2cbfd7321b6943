"""Trial kind ``finetune-s2dm``: each trial fine-tunes a copy of the session's model with the S²-DM loss.

Optuna suggests tau, skip and lr (spaces ``s2dm`` and ``s2dm+linear``, the latter with the linear rho pair; ranges in
``skipsearch.search.spaces``). A trial copies the model, fine-tunes it on the proxy's data set (MNIST for the
bundled model)
for a fixed budget of optimiser steps, and after each segment of steps scores the EMA weights with the study's FID
proxy (same sampler, NFE and seeds) at one fixed n, the last proxy rung. The value is reported with the *training
step* as the pruning step, so a bad (tau, skip, lr) stops early. The trial's value is the proxy of the final weights.

Budget (``Settings``, from the environment; no study-file section exists for it):

- ``SKIPSEARCH_S2DM_STEPS``    optimiser steps per trial (default 200)
- ``SKIPSEARCH_S2DM_SEGMENTS`` proxy evaluations per trial, evenly spaced (default 4)
- ``SKIPSEARCH_S2DM_BATCH``    images per step (default 32)

Every trial uses the same training seed (same batches; with tau = 1 the same sigma/noise draws as a plain EDM
fine-tune), so trials differ by their hyperparameters, not by their data stream. The baseline trial fine-tunes with
tau = 1 for the same steps: the fair comparison for any S²-DM gain.

Weights: each completed trial's EMA weights are saved (safetensors, card in the metadata) under
``<artifacts>/s2dm/<study>/trial-<n>.safetensors``; a trial's file is deleted as soon as it is no longer among the top
``validate_top_k`` complete trials or the baselines (validation re-scores exactly those), and once all of them are
validated only the best validated trial's file remains. The trial's schedule names the fine-tuned weights
(``model.sha256`` = the file's sha256, ``provenance.weights_path``, ``provenance.base_sha256``), so the exported JSON
works with ``skipsearch sample --checkpoint <weights> --schedule <json>``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from skipsearch.data import DatasetError, to_model_range
from skipsearch.models.adapter import SkipAdapter
from skipsearch.models.checkpoints import CheckpointError, file_sha256, load_network, save_network
from skipsearch.models.edm import EDMAdapter
from skipsearch.proxy.fid_proxy import FidProxy, ProxyResult
from skipsearch.schedule import ModelIdentity, SkipSchedule
from skipsearch.search.definition import SearchConfig, StudyDefinitionError
from skipsearch.search.objective import TRIAL_FAILURES, Objective, TrialArtifacts
from skipsearch.search.spaces import SearchSpace
from skipsearch.search.validation import validation_candidates
from skipsearch.settings import Settings
from skipsearch.store.records import StudyRecord, TrialRecord
from skipsearch.training.loop import TrainConfig, TrainResult, train
from skipsearch.training.s2dm import S2DMLoss

TRIAL_KIND = "finetune-s2dm"
DEFAULT_STEPS, DEFAULT_SEGMENTS, DEFAULT_BATCH = 200, 4, 32
CARD_KEY = "skipsearch.card"


@dataclass(frozen=True)
class FinetuneBudget:
    """Steps, proxy segments and batch of one fine-tuning trial (plus the fixed optimiser settings)."""

    steps: int = DEFAULT_STEPS
    segments: int = DEFAULT_SEGMENTS
    batch_size: int = DEFAULT_BATCH
    seed: int = 0
    grad_clip: float | None = 1.0  # the S²-DM code clips at 1.0
    warmup_fraction: float = 0.1  # fresh Adam moments: ramp the lr up over the first 10% of the steps

    def __post_init__(self) -> None:
        for name in ("steps", "segments", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StudyDefinitionError(f"fine-tune {name} must be a positive integer, got {value!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> FinetuneBudget:
        """``SKIPSEARCH_S2DM_STEPS`` / ``_SEGMENTS`` / ``_BATCH``, as read by :class:`Settings`."""
        return cls(steps=settings.s2dm_steps, segments=settings.s2dm_segments, batch_size=settings.s2dm_batch)

    @property
    def log_every(self) -> int:
        return math.ceil(self.steps / min(self.segments, self.steps))

    def segment_steps(self) -> list[int]:
        """The training steps after which the proxy is evaluated (the last one is ``steps``)."""
        return sorted({*range(self.log_every, self.steps + 1, self.log_every), self.steps})

    def train_config(self, lr: float) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=lr,
                           lr_warmup_steps=max(1, round(self.steps * self.warmup_fraction)), seed=self.seed,
                           log_every=self.log_every, grad_clip=self.grad_clip)


@lru_cache(maxsize=2)
def training_images(dataset: str, split: str = "train", settings: Settings | None = None) -> torch.Tensor:
    """The proxy's data set as float images in [-1,1] (loaded once per process and ``settings``: where the data set
    lives, see :func:`skipsearch.proxy.stats.load_dataset`)."""
    from skipsearch.proxy.datasets import DatasetSpec, load_images
    from skipsearch.proxy.stats import DATASETS, load_dataset
    if not has_training_images(dataset):
        raise DatasetError(f"S²-DM fine-tuning needs the model's training data; data set {dataset!r} is not "
                           f"available (known: {', '.join(sorted(DATASETS))}, or folder:, zip:, npz:, "
                           "torchvision: images)")
    if DatasetSpec.parse(dataset).registered:
        return to_model_range(load_dataset(dataset, split, settings))
    return to_model_range(load_images(dataset, split, settings=settings))


def has_training_images(dataset: str) -> bool:
    """A registered data set or an image spec (folder, zip, npz, torchvision); not ``stats:`` nor ``self``."""
    from skipsearch.proxy.datasets import DatasetSpec
    from skipsearch.proxy.stats import DATASETS
    spec = DatasetSpec.parse(dataset)
    return spec.text in DATASETS if spec.registered else spec.kind in ("folder", "zip", "npz", "torchvision")


def finetune_network(base: nn.Module, images: torch.Tensor, *, tau: float, skip: int, lr: float, num_steps: int,
                     budget: FinetuneBudget = FinetuneBudget(), sigma_min: float = 0.002, sigma_max: float = 80.0,
                     device: torch.device | str = "cpu",
                     on_segment: Callable[[int, float, nn.Module], None] | None = None,
                     ) -> tuple[nn.Module, TrainResult]:
    """Fine-tune a copy of ``base`` with ``S2DMLoss`` (tau = 1: the plain EDM loss); returns (EMA net, result).

    ``num_steps`` is N of the Karras grid that defines sigma_s (the sampler's step count); ``on_segment(step, loss,
    ema)`` runs after each segment and may raise (optuna.TrialPruned) to stop.
    """
    net = copy.deepcopy(base)  # the session's model stays untouched (other trials start from it too)
    loss = S2DMLoss(tau=tau, skip=skip, num_steps=max(2, num_steps), sigma_min=sigma_min, sigma_max=sigma_max)
    return train(net, images, config=budget.train_config(lr), loss_fn=loss, device=device, on_log=on_segment)


def save_finetuned(net: nn.Module, path: Path, card: dict[str, Any]) -> str:
    """Write ``net`` as safetensors (card in the metadata) via a temporary file; returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    save_network(net, tmp, extra_metadata={CARD_KEY: json.dumps(card, sort_keys=True)})
    tmp.replace(path)  # a crash never leaves a half-written file under the final name
    return file_sha256(path)


def _trial_number(path: Path) -> int | None:
    stem = path.name.removesuffix(".safetensors")
    number = stem.removeprefix("trial-")
    return int(number) if stem.startswith("trial-") and number.isdigit() else None


class _ValidationProxy(FidProxy):
    """The proxy on a trial's fine-tuned weights; tells the objective each validated value (weights clean-up)."""

    def __init__(self, proxy: FidProxy, on_value: Callable[[float], None]):
        self.__dict__.update(proxy.__dict__)  # the same state as ``with_adapter``'s shallow copy
        self._on_value = on_value

    def evaluate(self, *args: Any, **kwargs: Any) -> ProxyResult:
        try:
            result = super().evaluate(*args, **kwargs)
        except TRIAL_FAILURES:
            self._on_value(math.inf)
            raise
        self._on_value(result.value)
        return result


class FinetuneObjective(Objective):
    """``study.optimize`` callable for fine-tuning spaces: suggest (tau, skip, lr[, rho]) -> fine-tune -> proxy."""

    kind = TRIAL_KIND

    def __init__(self, adapter: SkipAdapter, proxy: FidProxy, space: SearchSpace, *, space_name: str,
                 study: optuna.Study, search: SearchConfig, weights_dir: str | os.PathLike,
                 artifacts: TrialArtifacts | None = None, budget: FinetuneBudget | None = None,
                 images: torch.Tensor | None = None):
        super().__init__(adapter, proxy, space, space_name=space_name, artifacts=artifacts)
        if not getattr(space, "finetune", None):
            raise ValueError(f"space {space_name!r} is not a fine-tuning space")
        if not isinstance(adapter, EDMAdapter):  # the loss calls net(x, sigma, labels) and returns D (EDM units)
            from skipsearch.models import ModelError
            raise ModelError(f"space {space_name!r} fine-tunes EDM-parametrised models only; {adapter.name!r} is a "
                             f"{type(adapter).__name__}")
        if images is None:
            from skipsearch.proxy.stats import DATASETS
            if not has_training_images(proxy.config.dataset):  # fail before any trial, not inside one
                raise DatasetError(f"S²-DM fine-tuning needs the model's training data; data set "
                                   f"{proxy.config.dataset!r} is not available "
                                   f"(known: {', '.join(sorted(DATASETS))})")
        self.study, self.search, self.weights_dir = study, search, Path(weights_dir)
        self.budget = budget if budget is not None else FinetuneBudget.from_settings(proxy.settings)
        self.eval_n = proxy.config.rungs[-1]
        self._images = images
        self._validated: dict[int, float] = {}

    def pruning_steps(self) -> tuple[int, ...]:
        """Training steps, not image counts: successive halving / hyperband rungs fall on the reported segments."""
        return tuple(self.budget.segment_steps())

    # --- helpers ----------------------------------------------------------------------------------------------------
    def training_images(self) -> torch.Tensor:
        if self._images is None:
            self._images = training_images(self.proxy.config.dataset, settings=self.proxy.settings)
        if self.adapter.latent_decoder is not None:  # its UNet trains on latents, which these images are not
            raise DatasetError(f"S²-DM fine-tuning of a latent model ({self.adapter.name}) is not supported; search "
                               "skip schedules without --finetune")
        if tuple(self._images.shape[1:]) != tuple(self.adapter.img_shape):
            raise DatasetError(f"training images {tuple(self._images.shape[1:])} do not match the model's "
                               f"{tuple(self.adapter.img_shape)}")
        return self._images

    def weights_path(self, number: int) -> Path:
        return self.weights_dir / f"trial-{number}.safetensors"

    def _provenance(self, trial: optuna.Trial, extra: dict[str, Any]) -> dict[str, Any]:
        return {"space": self.space_name, "params": dict(trial.params), "kind": self.kind,
                "base_model": self.adapter.name, "base_sha256": self.adapter.identity.sha256, **extra}

    # --- the trial --------------------------------------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> None:
        """Fix every parameter now (the rho part and the fine-tuning ones), before any work."""
        self.space.suggest(trial)
        self.space.suggest_finetune(trial)  # type: ignore[attr-defined]

    def __call__(self, trial: optuna.Trial) -> float:
        start = time.perf_counter()
        rho_part = self.space.suggest(trial)
        hp = self.space.suggest_finetune(trial)  # type: ignore[attr-defined]
        # Until the weights exist the schedule names no model (a pruned trial has none to name).
        pending = rho_part.with_metadata(sampler=self.proxy.sampler, nfe=self.proxy.nfe,
                                         provenance=self._provenance(trial, {"weights_path": None}))
        TrialRecord.put(trial, schedule=pending.to_dict(), nfe=self.proxy.nfe, sampler=self.proxy.sampler,
                        trial_kind=self.kind)
        images = self.training_images()
        state: dict[str, Any] = {"eval_seconds": 0.0, "calls": 0, "result": None, "adapter": None}
        last_step = self.budget.segment_steps()[-1]

        def on_segment(step: int, loss: float, ema: nn.Module) -> None:
            t0 = time.perf_counter()
            if state["adapter"] is None:  # the EMA module is updated in place: one adapter serves every segment
                state["adapter"] = EDMAdapter(ema, self.adapter.name)
            result = self.proxy.with_adapter(state["adapter"]).evaluate(
                rho_part, rungs=[self.eval_n], preview=16 if step == last_step else 0)
            state["eval_seconds"] += time.perf_counter() - t0
            state["calls"] += result.denoiser_calls
            state["result"] = result
            trial.report(result.value, step=step)
            TrialRecord.put(trial, steps={step: result.value}, losses={step: loss})
            if trial.should_prune():
                TrialRecord.put(trial, wall_seconds=round(time.perf_counter() - start, 3))
                raise optuna.TrialPruned(f"pruned at step {step} ({self.proxy.config.metric} {result.value:.3f})")

        try:
            ema, run = finetune_network(self.adapter.net, images, num_steps=self.space.ctx.num_steps,
                                        budget=self.budget, sigma_min=self.adapter.sigma_min,
                                        sigma_max=self.adapter.sigma_max, device=self.adapter.device,
                                        on_segment=on_segment, **hp)
        except TRIAL_FAILURES as exc:
            TrialRecord.put(trial, fail_reason=f"{type(exc).__name__}: {exc}")
            raise
        result: ProxyResult = state["result"]
        train_seconds = round(run.wall_seconds - state["eval_seconds"], 3)
        card = {"trial_kind": self.kind, "base_model": self.adapter.name, "base_sha256": self.adapter.identity.sha256,
                **hp, "steps": run.steps, "batch_size": self.budget.batch_size, "seconds": train_seconds,
                "karras_num_steps": self.space.ctx.num_steps, "final_loss": run.final_loss,
                "loss": "S2DM (EDM translation, independent n'; tau=1 is the EDM loss)",
                "data": f"{self.proxy.config.dataset} train", "study": self.study.study_name, "trial": trial.number}
        path = self.weights_path(trial.number)
        sha = save_finetuned(ema, path, card)
        identity = ModelIdentity(self.adapter.name, sha, len(self.adapter.skip_points))
        finetune_info = {**hp, "steps": run.steps, "batch_size": self.budget.batch_size, "seconds": train_seconds}
        schedule = rho_part.with_metadata(model=identity, sampler=self.proxy.sampler, nfe=self.proxy.nfe,
                                          provenance=self._provenance(trial, {"weights_path": str(path.resolve()),
                                                                              "weights_sha256": sha,
                                                                              "finetune": finetune_info}))
        TrialRecord.put(trial, schedule=schedule.to_dict(), weights_sha256=sha, train_seconds=train_seconds,
                        seeds=f"{result.seeds[0]}-{result.seeds[1] - 1}", denoiser_calls=state["calls"],
                        extractor=result.extractor, rungs={result.n: result.value},
                        wall_seconds=round(time.perf_counter() - start, 3))
        if self.artifacts is not None and result.preview is not None:
            self._upload_grid(trial, result.preview)
        self.drop_weights(current=(trial.number, result.value, bool(TrialRecord.read(trial).baseline)))
        return result.value

    # --- which weights are kept -------------------------------------------------------------------------------------
    def validation_candidates(self, extra: tuple[int, float, bool] | None = None) -> list[int]:
        """Trial numbers validation will re-score: the top ``validate_top_k`` complete trials and the baselines."""
        return validation_candidates(self.study.get_trials(deepcopy=False), self.search.validate_top_k, extra,
                                     metric=self.proxy.config.metric)

    def drop_weights(self, current: tuple[int, float, bool] | None = None,
                     keep: set[int] | None = None) -> list[Path]:
        """Delete the weights of finished trials outside ``keep`` (default: the validation candidates)."""
        keep = set(self.validation_candidates(current)) if keep is None else keep
        states = {t.number: t.state for t in self.study.get_trials(deepcopy=False)}
        if current is not None:
            states[current[0]] = TrialState.COMPLETE
        removed = []
        for path in sorted(self.weights_dir.glob("trial-*.safetensors")):
            number = _trial_number(path)
            # Running trials (other workers) are left alone: their value is not known yet.
            if number is None or number in keep or not states.get(number, TrialState.FAIL).is_finished():
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def _after_validation(self, number: int, value: float) -> None:
        """Once every candidate has a validated value, keep only the best one's weights."""
        self._validated[number] = value
        values = {k: v.value if v.value is not None else math.inf
                  for k, v in StudyRecord(self.study).validated().items() if v.n == self.search.final_n}
        values.update(self._validated)
        candidates = self.validation_candidates()
        if candidates and all(n in values for n in candidates):
            best = min(candidates, key=lambda n: values[n])
            self.drop_weights(keep={best})

    # --- validation -------------------------------------------------------------------------------------------------
    def proxy_for_validation(self, trial: FrozenTrial) -> FidProxy:
        """The proxy on the trial's saved fine-tuned weights (checked against the schedule's sha256)."""
        schedule = SkipSchedule.from_dict(TrialRecord.read(trial).schedule)
        path = schedule.provenance.get("weights_path")
        if not path or not Path(path).is_file():
            raise CheckpointError(f"the fine-tuned weights of trial {trial.number} are gone ({path}); only the top "
                                  f"{self.search.validate_top_k} trials and the baselines keep theirs")
        net, _ = load_network(path)
        adapter = EDMAdapter(net, self.adapter.name, weights_sha256=file_sha256(path)).to(self.adapter.device)
        if schedule.model is not None:
            schedule.check_model(adapter.identity)  # the file on disk is the one the trial saved
        return _ValidationProxy(self.proxy.with_adapter(adapter), lambda v: self._after_validation(trial.number, v))


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The card saved with fine-tuned weights (tau, skip, lr, steps, seconds, base sha256, ...)."""
    _, metadata = load_network(path)
    return json.loads(metadata.get(CARD_KEY, "{}"))


__all__ = ["TRIAL_KIND", "FinetuneBudget", "FinetuneObjective",
           "finetune_network", "save_finetuned", "read_card", "training_images"]
