"""``skipsearch frontier``: quality against steps, tuned and untuned, and the model's own limit.

For each NFE (ascending) one study per searched space runs, or resumes, on the shared store through
:func:`skipsearch.optimization.run_definition`; its session warm-starts it from the neighbouring NFEs' stored best
(``search.warm_start``). Then every arm is validated on one fresh seed set at one n: rho = 1 with the reference
sampler, the paper recipe, each study's validated winner and, when asked, one schedule searched for every NFE at once
(``shared:<space>``). The limit, rho = 1 at a high NFE doubled until two doublings in a row change FID by less than
1 %, is measured once per model identity and seed set. Each point keeps its image features, so every paired-bootstrap
CI (against rho = 1, against the limit) resamples the same images for every arm.

Everything is stored as soon as it is measured (trials by Optuna, points and the limit by
:class:`skipsearch.store.limits.FrontierStore`), so a run stopped by Ctrl-C or by its budget loses at most the trial
or point in progress, and a re-run redoes nothing it finds stored.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from skipsearch.errors import UsageError
from skipsearch.export.frontier import LIMIT, PAPER, SHARED_PREFIX, UNTUNED
from skipsearch.schedule import SkipSchedule
from skipsearch.search.definition import StudyDefinition
from skipsearch.settings import Settings
from skipsearch.store.limits import FrontierKey, FrontierStore, LimitRow, NewPoint

__all__ = ["CallBudget", "FrontierControl", "FrontierError", "FrontierEvents", "FrontierPlan", "FrontierResult",
           "LimitPlan", "doubled_nfe", "first_limit_nfe", "limit_converged", "run_frontier"]

JOINT_RHO = (0.5, 1.1)  # rho range of a space that also searches the sampler or grid (studies/edm-joint.toml)
CI_SEED = 0  # the bootstrap's image indices: the same for every point of every frontier


class FrontierError(UsageError):
    """A frontier that cannot run as asked (NFEs, spaces, sizes); the message says which value and why."""


@dataclass(frozen=True)
class LimitPlan:
    """How the model's limit is measured: rho = 1 from ``start_nfe`` up, doubling the steps."""

    start_nfe: int = 79
    max_nfe: int = 639  # stop here even when not converged (the row says so)
    tolerance: float = 0.01  # two doublings in a row must each change FID by less than this (relative)


@dataclass(frozen=True)
class FrontierPlan:
    """What to measure. ``None`` fields come from the model's study file (``studies/{model}.toml``)."""

    model: str = "edm"
    nfes: tuple[int, ...] = (3, 5, 7, 9, 13, 19, 35)
    spaces: tuple[str, ...] = ()  # empty: the study file's space (rho only) and "joint"
    shared: bool = False  # also one schedule searched for all NFEs at once (the last sampler-searching space)
    sampler: str | None = None  # the reference sampler (rho = 1, the paper recipe, the limit)
    n: int | None = None  # images per validated point (default: the study file's final_n)
    study_n: int | None = None  # images of each study's own validation, which picks its winner (default: n)
    trials: int | None = None
    rungs: tuple[int, ...] | None = None
    rho_min: float | None = None
    rho_max: float | None = None
    budget: int | None = None  # denoiser calls this run may spend (stored work costs nothing to reuse)
    resamples: int = 200
    limit: LimitPlan = LimitPlan()
    checkpoint: str | None = None
    trust_pickle: bool = False

    def check(self) -> None:
        """One-line errors for values that cannot work, before anything loads."""
        if not self.nfes or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.nfes):
            raise FrontierError(f"--nfes must be positive integers, got {list(self.nfes)}")
        if len(set(self.nfes)) != len(self.nfes):
            raise FrontierError(f"--nfes repeats an NFE: {list(self.nfes)}")
        if self.shared and len(self.nfes) < 2:
            raise FrontierError("--shared needs at least two NFEs")
        for name, value, low in (("--n", self.n, 10), ("--study-n", self.study_n, 2), ("--trials", self.trials, 1),
                                 ("--budget", self.budget, 1),
                                 ("--bootstrap", self.resamples, 20), ("--limit-nfe", self.limit.start_nfe, 1)):
            if value is not None and value < low:
                raise FrontierError(f"{name} must be at least {low}, got {value}")
        if self.limit.max_nfe < self.limit.start_nfe:
            raise FrontierError(f"--limit-max-nfe {self.limit.max_nfe} is below --limit-nfe {self.limit.start_nfe}")
        if not 0 < self.limit.tolerance < 1:
            raise FrontierError(f"limit tolerance must lie in (0, 1), got {self.limit.tolerance}")


@dataclass
class FrontierEvents:
    """What a caller hears: a line per stage (the NFE being worked on), each study session, each finished trial."""

    stage: Callable[[str], None] = lambda line: None
    session: Callable[[Any, str, int | None], None] = lambda session, arm, nfe: None
    trial: Callable[[Any, Any], None] = lambda study, trial: None


@dataclass
class FrontierControl:
    """Stops a run after the current trial or point (Ctrl-C, the budget); the stored work stays."""

    reason: str | None = None  # "interrupted" or "budget"
    session: Any = None  # the study session running now, stopped after its current trial

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def request_stop(self, reason: str = "interrupted") -> None:
        self.reason = self.reason or reason
        if self.session is not None:
            self.session.interrupted = True
            try:
                self.session.study.stop()
            except RuntimeError:  # not inside optimize() at this moment: the session's flag stops it
                pass


@dataclass
class CallBudget:
    """Denoiser calls this run may still spend; work starts only when its bound fits."""

    total: int | None
    spent: int = 0

    def fits(self, calls: int) -> bool:
        return self.total is None or self.spent + calls <= self.total

    def spend(self, calls: int) -> None:
        self.spent += max(0, int(calls))


@dataclass
class FrontierResult:
    key: FrontierKey
    stopped: str | None  # None: complete; "interrupted"; "budget"
    spent_calls: int
    seconds: float
    studies_run: list[str] = field(default_factory=list)
    studies_reused: list[str] = field(default_factory=list)
    points_measured: int = 0
    points_reused: int = 0
    limit: LimitRow | None = None
    limit_reused: bool = False


# --------------------------------------------------------------------------------------------------------------------
# Small pure pieces.


def first_limit_nfe(sampler: str, at_least: int) -> int:
    """The smallest NFE ``sampler`` spends exactly that is at least ``at_least`` (79 for Heun and most others)."""
    from skipsearch.sampling.samplers import get_sampler
    spec = get_sampler(sampler)
    return spec.nfe_of_steps(max(1, spec.steps_of_nfe(at_least)))


def doubled_nfe(sampler: str, nfe: int) -> int:
    """The NFE of twice the steps (Heun: 2 NFE + 1)."""
    from skipsearch.sampling.samplers import get_sampler, steps_for_nfe
    return get_sampler(sampler).nfe_of_steps(2 * steps_for_nfe(sampler, nfe))


def limit_converged(values: Sequence[float], tolerance: float) -> bool:
    """The last two doublings each changed FID by less than ``tolerance`` (relative to the smaller NFE's)."""
    if len(values) < 3:
        return False
    return all(abs(b - a) < tolerance * abs(a) for a, b in zip(values[-3:-1], values[-2:]))


def searches_sampler_or_grid(space: str) -> bool:
    from skipsearch.search.spaces import parse_space_name
    parsed = parse_space_name(space)
    return parsed.sampler or parsed.grid is not None


def default_spaces(base: StudyDefinition) -> tuple[str, ...]:
    """The study file's space (rho only, the Skip-Tuning arm) and ``joint``."""
    return tuple(dict.fromkeys((base.space, "joint")))


def check_spaces(spaces: Sequence[str]) -> None:
    from skipsearch.search.spaces import SPACES, parse_space_name
    for space in spaces:
        if SPACES[parse_space_name(space).base].finetune:
            raise FrontierError(f"--space {space}: fine-tuning spaces change the weights; a frontier compares "
                                "schedules of one model")


def arm_definition(plan: FrontierPlan, space: str, nfe: int, n: int, nfes: tuple[int, ...] = (), *,
                   settings: Settings | None = None) -> StudyDefinition:
    """The study of one searched arm: the model's study file at this NFE with the plan's flags; its validation on the
    frontier's seeds (at ``study_n`` images, else ``n``); a space that also searches the sampler or grid gets the
    joint study's fixed rho range."""
    bounds: dict[str, Any] = {}
    if plan.rho_min is not None or plan.rho_max is not None:
        bounds = {"space_bounds__rho_min": plan.rho_min, "space_bounds__rho_max": plan.rho_max,
                  "space_bounds__calibrate": False}
    elif searches_sampler_or_grid(space):  # a calibration sweep would calibrate for the reference sampler only
        bounds = {"space_bounds__rho_min": JOINT_RHO[0], "space_bounds__rho_max": JOINT_RHO[1],
                  "space_bounds__calibrate": False}
    return StudyDefinition.from_options(
        model=plan.model, nfe=nfe, sampler=plan.sampler, nfes=nfes or None, settings=settings, space=space,
        trials=plan.trials, proxy__rungs=plan.rungs, search__final_n=plan.study_n or n, search__warm_start=True,
        checkpoint=plan.checkpoint, trust_pickle=plan.trust_pickle or None, **bounds)


def paper_schedule(num_skip_points: int, nfe: int) -> SkipSchedule:
    """The paper's recipe at ``nfe``: linear rho_bottom(nfe) -> 1.0 bottom to top."""
    from skipsearch.search.spaces import paper_rho_bottom
    return SkipSchedule.linear(paper_rho_bottom(nfe), 1.0, num_skip_points)


def validated_winner(study: Any) -> SkipSchedule | None:
    """The schedule of a study's trial with the lowest validated value (baselines included), else None."""
    from skipsearch.store.records import StudyRecord, TrialRecord
    scored = [(v.value, number) for number, v in StudyRecord(study).validated().items() if v.value is not None]
    if not scored:
        return None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    schedule = TrialRecord.read(trials[min(scored)[1]]).schedule
    return None if not schedule else SkipSchedule.from_dict(schedule)


# --------------------------------------------------------------------------------------------------------------------
# The run.


@dataclass
class _Run:
    """What every step of one frontier run shares."""

    plan: FrontierPlan
    key: FrontierKey
    store: FrontierStore
    proxy: Any  # FidProxy of the reference sampler
    storage_url: str
    device: str
    settings: Settings
    events: FrontierEvents
    control: FrontierControl
    budget: CallBudget
    result: FrontierResult
    fid: Any  # proxy.paired.BootstrapFid against the proxy's reference statistics

    @property
    def seeds(self) -> range:
        return range(self.key.seed_start, self.key.seed_start + self.key.n)


def run_frontier(plan: FrontierPlan, *, storage_url: str, device: str = "cpu", settings: Settings | None = None,
                 events: FrontierEvents | None = None, control: FrontierControl | None = None) -> FrontierResult:
    """Run (or resume) the frontier of ``plan``; everything measured is in the store when this returns."""
    from skipsearch.models import load_model
    from skipsearch.proxy.fid_proxy import FidProxy
    from skipsearch.proxy.paired import BootstrapFid
    from skipsearch.sampling.samplers import steps_for_nfe

    start = time.perf_counter()
    settings = settings or Settings.from_env()
    events, control = events or FrontierEvents(), control or FrontierControl()
    plan.check()
    nfes = tuple(sorted(plan.nfes))
    base = StudyDefinition.from_options(model=plan.model, nfe=nfes[0], sampler=plan.sampler, settings=settings)
    spaces = plan.spaces or default_spaces(base)
    check_spaces(spaces)
    for nfe in (*nfes, first_limit_nfe(base.sampler, plan.limit.start_nfe)):
        steps_for_nfe(base.sampler, nfe)  # every NFE must be exact for the reference sampler (one-line NFEError)
    n = plan.n or base.search.final_n
    for space in spaces:  # every study definition is valid before the model loads
        arm_definition(plan, space, nfes[0], n, settings=settings)
    adapter = load_model(plan.model, checkpoint=plan.checkpoint, trust_pickle=plan.trust_pickle, device=device,
                         settings=settings)
    proxy = FidProxy(adapter, sampler=base.sampler, nfe=nfes[0], config=base.proxy,
                     sampler_options=base.sampler_options, settings=settings)
    key = FrontierKey(adapter.name, adapter.identity.sha256, base.sampler, n, base.search.validation_seed_offset,
                      proxy.extractor.name, proxy.extractor.weights_sha256)
    with FrontierStore(storage_url, lock_timeout=settings.lock_timeout) as store:
        run = _Run(plan, key, store, proxy, storage_url, device, settings, events, control, CallBudget(plan.budget),
                   FrontierResult(key, None, 0, 0.0), BootstrapFid(proxy.ref_stats))
        _run_all(run, nfes, spaces)
        run.result.stopped = control.reason
        run.result.spent_calls = run.budget.spent
        run.result.seconds = time.perf_counter() - start
        return run.result


def _run_all(run: _Run, nfes: tuple[int, ...], spaces: Sequence[str]) -> None:
    """Every NFE, the shared schedule, the limit, the CIs; returns early when stopped (all done so far is stored)."""
    for index, nfe in enumerate(nfes):
        if not _one_nfe(run, nfe, f"{index + 1} of {len(nfes)}", spaces):
            return
    if run.plan.shared and not _shared(run, nfes, spaces):
        return
    run.result.limit = _measure_limit(run)
    if not run.control.stopped:  # a stopped run leaves the bootstrap to the next one
        _fill_cis(run, run.result.limit)


def _one_nfe(run: _Run, nfe: int, progress: str, spaces: Sequence[str]) -> bool:
    """One study per searched space at ``nfe``, then every arm validated; False when stopped."""
    run.events.stage(f"NFE {nfe} ({progress}): studies {', '.join(spaces)}")
    winners: list[tuple[str, SkipSchedule | None, str | None]] = []
    for space in spaces:
        name, winner = _run_study(run, arm_definition(run.plan, space, nfe, run.key.n, settings=run.settings),
                                  space, nfe)
        if run.control.stopped:
            return False
        winners.append((space, winner, name))
    run.events.stage(f"NFE {nfe} ({progress}): validating every arm at n={run.key.n}")
    paper = paper_schedule(len(run.proxy.adapter.skip_points), nfe)
    for arm, schedule, study in [(UNTUNED, None, None), (PAPER, paper, None), *winners]:
        if arm not in (UNTUNED, PAPER) and schedule is None:
            run.events.stage(f"NFE {nfe}: {arm}: no validated schedule in study {study}; the arm is left out")
            continue
        if not _validate_point(run, arm, nfe, schedule, study):
            return False
    return True


def _shared(run: _Run, nfes: tuple[int, ...], spaces: Sequence[str]) -> bool:
    """One schedule searched for every NFE at once (the last space that searches the sampler or grid), validated
    at each; False when stopped."""
    space = next((s for s in reversed(spaces) if searches_sampler_or_grid(s)), spaces[-1])
    arm = SHARED_PREFIX + space
    run.events.stage(f"NFE {', '.join(map(str, nfes))}: one {space} schedule for every NFE")
    definition = arm_definition(run.plan, space, nfes[len(nfes) // 2], run.key.n, nfes, settings=run.settings)
    name, winner = _run_study(run, definition, arm, None)
    if run.control.stopped:
        return False
    return all(_validate_point(run, arm, nfe, winner, name) for nfe in nfes) if winner is not None else True


# --------------------------------------------------------------------------------------------------------------------
# Studies.


def _study_calls(storage_url: str, name: str, arm: str) -> int:
    """Denoiser calls a stored study has spent (0 when it does not exist yet)."""
    import optuna

    from skipsearch.export.frontier import study_cost
    try:
        study = optuna.load_study(study_name=name, storage=storage_url)
    except KeyError:
        return 0
    return study_cost(study, arm, None, 0.0).calls


def _bounds(session: Any) -> tuple[int, int]:
    """(one trial, the study's validation) in denoiser calls at most: a trial samples the last rung at every NFE;
    validation re-scores the top k and every baseline at final n (and rho = 1 per NFE for a shared study)."""
    from skipsearch.search.spaces import baselines
    definition = session.definition
    nfes = definition.nfes or (definition.nfe,)
    trial = max(definition.proxy.rungs) * sum(nfes)
    candidates = definition.search.validate_top_k + len(baselines(session.space, definition.nfe))
    validation = (candidates + (1 if definition.nfes else 0)) * definition.search.final_n * sum(nfes)
    return trial, validation


def _run_study(run: _Run, definition: StudyDefinition, arm: str, nfe: int | None) -> tuple[str, SkipSchedule | None]:
    """Run or resume one study to its budget and validation; (its name, its validated winner)."""
    import optuna

    from skipsearch.execution.session import study_name_for
    from skipsearch.optimization import run_definition
    from skipsearch.store.records import StudyRecord, TrialRecord

    name = study_name_for(definition, run.proxy.adapter)  # what open_session names it: the stored study if any
    before = _study_calls(run.storage_url, name, arm)
    counted = {"calls": 0}

    def over_budget(session: Any) -> bool:
        """Another trial (and the validation after the last) would not fit; or a validation still to do."""
        trial, validation = _bounds(session)
        if session.remaining() > 0:
            return not run.budget.fits(trial + validation)
        return not StudyRecord(session.study).validated() and not run.budget.fits(validation)

    def on_session(session: Any) -> None:
        run.control.session = session
        run.events.session(session, arm, nfe)
        if run.control.stopped or over_budget(session):
            run.control.request_stop(run.control.reason or "budget")

    def on_trial(study: optuna.Study, trial: Any) -> None:
        calls = TrialRecord.read(trial).denoiser_calls or 0
        run.budget.spend(calls)
        counted["calls"] += calls
        run.events.trial(study, trial)
        if run.control.session is not None and over_budget(run.control.session):
            run.control.request_stop("budget")

    try:
        # check-model is not repeated per NFE and arm (the frontier's model is loaded and probed already)
        result = run_definition(dataclasses.replace(definition, check=False), storage_url=run.storage_url,
                                device=run.device, settings=run.settings, on_trial=on_trial, on_session=on_session)
    finally:
        run.control.session = None
    spent = _study_calls(run.storage_url, result.study_name, arm) - before
    run.budget.spend(spent - counted["calls"])  # calibration and validation: counted once they are stored
    if spent > 0:
        run.store.add_study_time(run.key, result.study_name, arm, nfe, result.seconds)
        run.result.studies_run.append(result.study_name)
        run.events.stage(f"{_where(nfe)}{arm}: study {result.study_name}: {result.counts['finished']} trials, "
                         f"{spent:,} denoiser calls, {result.seconds:.0f}s")
    else:
        run.result.studies_reused.append(result.study_name)
        run.events.stage(f"{_where(nfe)}{arm}: study {result.study_name} reused (complete in the store)")
    if result.interrupted:
        run.control.request_stop(run.control.reason or "interrupted")
        return result.study_name, None
    study = optuna.load_study(study_name=result.study_name, storage=run.storage_url)
    return result.study_name, validated_winner(study)


def _where(nfe: int | None) -> str:
    return "" if nfe is None else f"NFE {nfe}: "


# --------------------------------------------------------------------------------------------------------------------
# Points, the limit, the CIs.


def _validate_point(run: _Run, arm: str, nfe: int, schedule: SkipSchedule | None, study: str | None) -> bool:
    """Validate one arm at ``nfe`` on the frontier's seeds unless stored with the same recipe; False: stopped."""
    from skipsearch.proxy.paired import describe_schedule, recipe_key, schedule_features

    recipe = recipe_key(run.proxy, schedule, nfe)
    stored = run.store.point(run.key, arm, nfe)
    if stored is not None and stored.recipe == recipe:
        run.result.points_reused += 1
        return True
    same = next((p for p in run.store.points(run.key, nfe=nfe) if p.recipe == recipe), None)
    if same is not None:  # another arm picked the same schedule (often a baseline won): its images are these
        features, calls, seconds = run.store.features(same.id), 0, 0.0
    else:
        calls = run.key.n * nfe
        if run.control.stopped:
            return False
        if not run.budget.fits(calls):
            run.control.request_stop("budget")
            return False
        run.events.stage(f"NFE {nfe}: validating {arm} ({calls:,} denoiser calls)")
        t0 = time.perf_counter()
        features = schedule_features(run.proxy, schedule, nfe, run.seeds)
        seconds = time.perf_counter() - t0
        run.budget.spend(calls)
        run.result.points_measured += 1
    value = run.fid.value(features)  # torch-fidelity's FID to ~1e-9, without its general eigenproblem
    schedule_json = None if schedule is None else schedule.to_json(indent=None)
    run.store.put_point(run.key, NewPoint(arm=arm, nfe=nfe, value=value, recipe=recipe, features=features,
                                          description=describe_schedule(schedule, run.key.sampler),
                                          denoiser_calls=calls, seconds=seconds, schedule_json=schedule_json,
                                          study_name=study))
    run.store.clear_cis(run.key, nfe)  # a new point (rho = 1 among them) changes the CIs of its NFE
    return not run.control.stopped


def _measure_limit(run: _Run) -> LimitRow | None:
    """The stored limit of this frontier's model, else measured now (probes stored one by one); None: stopped."""
    from skipsearch.proxy.paired import percentile_ci, resample_indices

    stored = run.store.limit(run.key)
    if stored is not None:
        run.result.limit_reused = True
        run.events.stage(f"limit: stored, FID {stored.value:.4g} at NFE {stored.nfe} (measured once per model)")
        return stored
    tolerance = run.plan.limit.tolerance
    nfe = first_limit_nfe(run.key.sampler, run.plan.limit.start_nfe)
    probes: list[tuple[int, float]] = []
    while True:
        run.events.stage(f"limit: rho=1 at NFE {nfe}" + (f" (NFE {probes[-1][0]}: {probes[-1][1]:.4g})"
                                                          if probes else ""))
        if not _validate_point(run, LIMIT, nfe, None, None):
            return None
        probes.append((nfe, run.store.point(run.key, LIMIT, nfe).value))
        converged = limit_converged([value for _, value in probes], tolerance)
        if converged or doubled_nfe(run.key.sampler, nfe) > run.plan.limit.max_nfe:
            break
        nfe = doubled_nfe(run.key.sampler, nfe)
    points = [run.store.point(run.key, LIMIT, k) for k, _ in probes]
    last = points[-1]
    low, high = percentile_ci(run.fid(run.store.features(last.id),
                                   resample_indices(run.key.n, run.plan.resamples, CI_SEED)), centre=last.value)
    return run.store.put_limit(run.key, nfe=nfe, value=last.value, value_low=low, value_high=high,
                               ci_resamples=run.plan.resamples, converged=converged, tolerance=tolerance,
                               probes=probes, denoiser_calls=sum(p.denoiser_calls for p in points),
                               seconds=sum(p.seconds for p in points))


def _fill_cis(run: _Run, limit: LimitRow | None) -> None:
    """Paired-bootstrap CIs of every point lacking them: its own, against rho = 1 at its NFE, against the limit.
    The same resampled image indices for all (the points share their seeds)."""
    import numpy as np

    from skipsearch.proxy.paired import percentile_ci, resample_indices

    points = run.store.points(run.key)
    stale = [p for p in points if p.arm != LIMIT and (
        p.ci_resamples != run.plan.resamples or (limit is not None and p.limit_nfe != limit.nfe))]
    if not stale:
        return
    run.events.stage(f"bootstrap: {run.plan.resamples} resamples of {len(stale)} points")
    indices = resample_indices(run.key.n, run.plan.resamples, CI_SEED)
    vectors: dict[int, np.ndarray] = {}

    def vector(point_id: int) -> np.ndarray:
        if point_id not in vectors:
            vectors[point_id] = run.fid(run.store.features(point_id), indices)
        return vectors[point_id]

    untuned = {p.nfe: p for p in points if p.arm == UNTUNED}
    reference = None if limit is None else next((p for p in points if p.arm == LIMIT and p.nfe == limit.nfe), None)
    for p in stale:
        low, high = percentile_ci(vector(p.id), centre=p.value)
        cis: dict[str, Any] = {"ci_resamples": run.plan.resamples, "value_low": low, "value_high": high}
        if p.nfe in untuned and p.arm != UNTUNED:
            rho1 = untuned[p.nfe]
            cis.update(_paired("vs_untuned", p.value - rho1.value, vector(p.id) - vector(rho1.id)))
        if reference is not None:
            cis.update(limit_nfe=limit.nfe, **_paired("vs_limit", p.value - limit.value,
                                                      vector(p.id) - vector(reference.id)))
        run.store.set_cis(p.id, **cis)


def _paired(name: str, difference: float, boot_differences: Any) -> dict[str, float]:
    from skipsearch.proxy.paired import percentile_ci
    low, high = percentile_ci(boot_differences, centre=difference)
    return {name: difference, f"{name}_low": low, f"{name}_high": high}
