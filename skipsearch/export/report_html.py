"""The one-page study report: ``index.html`` beside its PNGs (plain HTML and CSS, no JavaScript, nothing fetched).

Every string that comes from a study (names, labels, failure reasons) goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skipsearch.errors import SkipsearchError
from skipsearch.export.figures import render, rho_heatmap
from skipsearch.export.style import CSS
from skipsearch.store import BestKey, BestStore
from skipsearch.store.records import StudyRecord, TrialRecord, Validated

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from skipsearch.models import SkipAdapter
    from skipsearch.settings import Settings

GRID_SEEDS = range(16)  # the same seeds for every grid, so the pictures differ only by the schedule
GRID_NROW, GRID_SCALE = 4, 2
GRIDS = (("best", "grid_best.png"), ("rho = 1 (untuned)", "grid_rho1.png"), ("paper recipe", "grid_paper.png"))
CI_NOT_STORED = "CI not stored"
_UNTUNED = object()  # the rho = 1 grid: no schedule applied at all

def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "-" if value is None or not math.isfinite(value) else fmt.format(value)


def _label(entry_baseline: str | None) -> str:
    return entry_baseline or "searched"


def _last_rung(trial: FrozenTrial) -> tuple[int, float] | None:
    """(n, proxy) of the last rung a trial reported; where a pruned trial stopped."""
    rungs = TrialRecord.read(trial).rungs or dict(trial.intermediate_values)
    rungs = {int(n): v for n, v in rungs.items() if v is not None and math.isfinite(v)}
    if not rungs:
        return None
    n = max(rungs)
    return n, rungs[n]


# --------------------------------------------------------------------------------------------------------------------
# Plots (matplotlib figures made without pyplot, rendered by skipsearch.export.figures.render)


def _figure(width: float = 3.8, height: float = 2.9) -> tuple[Any, Axes]:
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _numeric(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """Plot positions for parameter values; categorical ones get positions 0..k-1 and their names as ticks."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    names = sorted({str(v) for v in values})
    return [float(names.index(str(v))) for v in values], names


def scatter_plot(trials: Sequence[FrozenTrial], param: str, metric: str, path: Path) -> Path:
    """Proxy against one parameter: complete trials at their value, pruned ones at their last rung."""
    figure, ax = _figure()
    groups = {"complete": ([], []), "pruned (last rung)": ([], [])}
    for t in trials:
        if param not in t.params:
            continue
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            groups["complete"][0].append(t.params[param])
            groups["complete"][1].append(t.value)
        elif t.state == TrialState.PRUNED and (last := _last_rung(t)) is not None:
            groups["pruned (last rung)"][0].append(t.params[param])
            groups["pruned (last rung)"][1].append(last[1])
    every = groups["complete"][0] + groups["pruned (last rung)"][0]
    positions, categories = _numeric(every)
    split = len(groups["complete"][0])
    styles = {"complete": {"marker": "o", "color": "C0"},
              "pruned (last rung)": {"marker": "v", "color": "0.55", "facecolors": "none"}}
    for (name, (_, ys)), xs in zip(groups.items(), (positions[:split], positions[split:])):
        if xs:
            ax.scatter(xs, ys, s=22, label=name, **styles[name])
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories, fontsize=7)
    elif trials and any(getattr(t.distributions.get(param), "log", False) for t in trials):
        from matplotlib.ticker import NullFormatter
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
    if not every:
        ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(param, fontsize=8)
    ax.set_ylabel(metric, fontsize=8)
    ax.tick_params(labelsize=7)
    if every:
        ax.legend(fontsize=7)
    return render(figure, path)


def history_plot(trials: Sequence[FrozenTrial], metric: str, path: Path) -> Path:
    """Value per trial in trial order: complete, pruned (at the last rung), failed (marked on the top edge)."""
    figure, ax = _figure(6.4, 3.2)
    complete = [(t.number, t.value) for t in trials
                if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    pruned = [(t.number, last[1]) for t in trials if t.state == TrialState.PRUNED and (last := _last_rung(t))]
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    if complete:
        ax.scatter(*zip(*complete), s=22, marker="o", color="C0", label="complete")
        best, steps = math.inf, []
        for number, value in complete:
            best = min(best, value)
            steps.append((number, best))
        ax.step(*zip(*steps), where="post", color="C1", linewidth=1, label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), s=22, marker="v", facecolors="none", edgecolors="0.45", label="pruned (last rung)")
    if failed:  # no value to show: a cross on the top edge at the trial's number
        ax.scatter(failed, [0.97] * len(failed), marker="x", color="C3", label="failed",
                   transform=ax.get_xaxis_transform(), clip_on=False)
    if not (complete or pruned or failed):
        ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial", fontsize=8)
    ax.set_ylabel(metric, fontsize=8)
    ax.tick_params(labelsize=7)
    return render(figure, path)


# --------------------------------------------------------------------------------------------------------------------
# Image grids: the best schedule, rho = 1 and the paper recipe on the same seeds with the study's model


@dataclass
class Grid:
    title: str
    file: str
    caption: str
    note: str | None = None  # why it is missing


def study_model_spec(definition: dict[str, Any], settings: Settings | None = None) -> str:
    """The spec to load a study's model with: the spec it was run with (stored since model files could be
    reported), else its name when registered, else the model file of that name in the model folders."""
    from skipsearch.models.errors import ModelError
    from skipsearch.models.loading import MODEL_FILES_DIR, model_file_folders, model_names
    from skipsearch.models.spec import parse_model_file
    spec, name = definition.get("model_spec"), definition.get("model") or ""
    if isinstance(spec, str) and spec and (not spec.endswith(".toml") or Path(spec).is_file()):
        return spec
    if name in model_names():
        return name
    for folder in model_file_folders(settings) if settings is not None else [MODEL_FILES_DIR]:
        for path in sorted(folder.glob("*.toml")):
            try:
                if parse_model_file(path).name == name:
                    return str(path)
            except ModelError:
                continue
    return name


def _load_adapter(definition: dict[str, Any], device: str, settings: Settings | None,
                  model: str | None = None) -> SkipAdapter:
    from skipsearch.device import resolve_device
    from skipsearch.models import ModelError, load_model
    adapter = load_model(model or study_model_spec(definition, settings), device=str(resolve_device(device)),
                         settings=settings)
    if definition.get("weights_sha256") and adapter.identity.sha256 != definition["weights_sha256"]:
        raise ModelError(f"model {definition.get('model')!r} now has weights {adapter.identity.sha256[:12]}, the "
                         f"study used {definition['weights_sha256'][:12]}")
    return adapter


def image_grids(adapter: SkipAdapter, definition: dict[str, Any], best: FrozenTrial | None,
                trials: Sequence[FrozenTrial], output: Path) -> list[Grid]:
    from skipsearch.export.images import save_grid
    from skipsearch.sampling.generate import generate, recipe_of
    from skipsearch.schedule import SkipSchedule
    from skipsearch.search.spaces import paper_rho_bottom

    nfe, sampler = int(definition["nfe"]), str(definition["sampler"])
    paper_trial = next((t for t in trials if TrialRecord.read(t).baseline_kind == "paper"
                        and TrialRecord.read(t).schedule), None)
    choices: list[tuple[str, Any]] = []
    if best is None or not TrialRecord.read(best).schedule:
        choices.append(("no validated or complete trial with a schedule", None))
    elif TrialRecord.read(best).trial_kind:
        choices.append((f"trial {best.number} fine-tuned the weights ({TrialRecord.read(best).trial_kind}); its "
                        "images need those weights", None))
    else:
        choices.append((f"trial {best.number}", TrialRecord.read(best).schedule))
    choices.append(("the model as trained", _UNTUNED))
    if paper_trial is not None:
        choices.append((f"trial {paper_trial.number}: {TrialRecord.read(paper_trial).baseline}",
                        TrialRecord.read(paper_trial).schedule))
    else:
        bottom = paper_rho_bottom(nfe)
        choices.append((f"linear {bottom:.2f}->1.0 (not a trial of this study)",
                        SkipSchedule.linear(bottom, 1.0, len(adapter.skip_points)).to_dict()))
    grids = []
    for (title, file), (what, schedule) in zip(GRIDS, choices):
        grid = Grid(title, file, what)
        if schedule is None:
            grid.note = what
        else:
            try:
                parsed = None if schedule is _UNTUNED else SkipSchedule.from_dict(schedule)
                # a schedule that names its sampler (a joint study's) is shown with it, at the study's NFE
                own, _nfe, options = recipe_of(parsed, sampler, nfe, dict(definition.get("sampler_options") or {}))
                result = generate(adapter, sampler=own, nfe=nfe, seeds=GRID_SEEDS, schedule=parsed, **options)
                save_grid(result.images, output / file, nrow=GRID_NROW, scale=GRID_SCALE)
            except SkipsearchError as exc:
                grid.note = f"{what}: {exc}"
        grids.append(grid)
    return grids


# --------------------------------------------------------------------------------------------------------------------
# The page


def best_trial(study: optuna.Study, validated: dict[int, Validated]) -> FrozenTrial | None:
    """The trial with the lowest validated value (baselines included, as in the store); else the best proxy."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    scored = [(v.value, n) for n, v in validated.items()
              if v.value is not None and math.isfinite(v.value) and n in trials]
    if scored:
        return trials[min(scored)[1]]
    complete = [t for t in trials.values()
                if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return min(complete, key=lambda t: t.value) if complete else None


def _file_name(param: str, taken: set[str]) -> str:
    stem = "scatter_" + (re.sub(r"[^A-Za-z0-9_.-]", "_", param) or "param")
    name, k = f"{stem}.png", 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}.png"
    taken.add(name)
    return name


def _table(rows: list[list[str]], header: list[str], table_id: str, numeric: Sequence[int] = (),
           row_class: Callable[[int], str] | None = None) -> str:
    """Cells must already be escaped."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_class(i) if row_class else ""
        cells = "".join(f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f'<table id="{table_id}"><tr>{head}</tr>{"".join(body)}</table>'


def _img(src: str, caption: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return (f'<figure><img src="{esc(src)}" alt="{esc(caption)}"{size}><figcaption>{esc(caption)}</figcaption>'
            "</figure>")


def _bounds(definition: dict[str, Any], record: StudyRecord) -> str:
    calibration = record.calibration()
    if calibration is not None:
        return f"rho [{calibration.rho_min:g}, {calibration.rho_max:g}] (calibrated; {calibration.describe()})"
    b = definition.get("space_bounds") or {}
    if "rho_min" in b and "rho_max" in b:
        return f"rho [{b['rho_min']:g}, {b['rho_max']:g}]"
    return "not recorded"


def _param_ranges(trials: Sequence[FrozenTrial]) -> str:
    ranges: dict[str, str] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name in ranges:
                continue
            if hasattr(dist, "low"):
                ranges[name] = f"{name} [{dist.low:g}, {dist.high:g}]{' log' if getattr(dist, 'log', False) else ''}"
            else:
                ranges[name] = f"{name} {{{', '.join(map(str, getattr(dist, 'choices', ())))}}}"
    return "; ".join(ranges[k] for k in sorted(ranges)) or "none"


def frontier_section(store: BestStore, definition: dict[str, Any], output: Path,
                     note: Callable[[str], None]) -> str:
    """The NFE frontier of the study's model when the store holds one ('skipsearch frontier'); else ""."""
    from skipsearch.export.frontier import report_section
    if not definition.get("model") or not definition.get("weights_sha256"):
        return ""
    try:
        return report_section(store.url, definition["model"], definition["weights_sha256"], output)
    except SkipsearchError as exc:
        note(f"no NFE frontier section: {exc}")
        return ""


def write_index(study: optuna.Study, store: BestStore, output: Path, *, images: bool = True, device: str = "auto",
                settings: Settings | None = None, extra: Sequence[str] = (),
                on_note: Callable[[str], None] | None = None, model: str | None = None) -> list[Path]:
    """``index.html`` and its PNGs in ``output``; ``extra`` names PNGs already there to show at the end. ``model``:
    the spec to draw the grids with (default: :func:`study_model_spec`)."""
    note = on_note or (lambda message: None)
    record = StudyRecord(study)
    definition = record.definition
    from skipsearch.proxy.config import QUALITY_FIELDS, metric_display_name
    metric = (metric_display_name(str(definition["metric"]), definition.get("extractor"))
              if definition.get("metric") else "proxy")
    trials = study.get_trials(deepcopy=False)
    validated = record.validated()
    best = best_trial(study, validated)
    written: list[Path] = []

    adapter, grids, grid_note = None, [], None
    if images:
        try:
            adapter = _load_adapter(definition, device, settings, model)
        except (SkipsearchError, OSError) as exc:
            grid_note = (f"no image grids: cannot load model {definition.get('model')!r} ({exc}); --no-images "
                         "leaves them out without trying")
            note(grid_note)
    else:
        grid_note = "image grids left out (--no-images)"
    if adapter is not None:
        grids = image_grids(adapter, definition, best, trials, output)
        written += [output / g.file for g in grids if g.note is None]
        for g in grids:
            if g.note is not None:
                note(f"no {g.title} grid: {g.note}")

    # The best trial's rho heatmap.
    heatmap = ""
    best_schedule = TrialRecord.read(best).schedule if best is not None else None
    if best_schedule:
        resolutions = None
        if adapter is not None and len(adapter.skip_points) == len((best_schedule.get("rho") or [[]])[0]):
            resolutions = [p.resolution for p in adapter.skip_points]
        try:
            written.append(rho_heatmap(best_schedule, resolutions, f"trial {best.number}",
                                       path=output / "rho_heatmap.png"))
            heatmap = _img("rho_heatmap.png", f"rho of trial {best.number} (skip point x sigma interval)")
        except SkipsearchError as exc:
            heatmap = f'<p class="note">no heatmap: {esc(exc)}</p>'
    else:
        heatmap = '<p class="note">no trial with a schedule yet</p>'

    written.append(history_plot(trials, metric, output / "history.png"))
    taken: set[str] = set()
    scatters = []
    for param in sorted({k for t in trials for k in t.params}):
        name = _file_name(param, taken)
        written.append(scatter_plot(trials, param, metric, output / name))
        scatters.append(_img(name, param))

    # Header.
    states = [t.state for t in trials]
    counts = (f"{len(states)} ({states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} "
              f"pruned, {states.count(TrialState.FAIL)} failed"
              + (f", {states.count(TrialState.RUNNING)} running" if TrialState.RUNNING in states else "") + ")")
    from skipsearch.store.records import count_finished
    used = count_finished(study)
    budget = (f"{used} of {definition['trials']} trials used" if definition.get("trials")
              else f"{used} trials used (the study does not record its budget)")
    header = [("study", study.study_name), ("model", definition.get("model")),
              ("weights sha256", definition.get("weights_sha256")), ("sampler", definition.get("sampler")),
              ("NFE", definition.get("nfe")), ("space", definition.get("space")),
              ("bounds", _bounds(definition, record)),
              ("parameters", _param_ranges(trials)), ("metric", metric),
              ("rungs", ", ".join(map(str, definition.get("rungs") or [])) or "-"),
              ("final n", definition.get("final_n", "-")), ("budget", budget), ("trials", counts)]
    header_html = ('<table id="header" class="kv">'
                   + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in header) + "</table>")

    # Validated table (best first; failed validations last).
    stored = None
    if definition.get("model") and definition.get("weights_sha256") and definition.get("sampler"):
        try:
            stored = store.get(BestKey(definition["model"], definition["weights_sha256"], definition["sampler"],
                                       int(definition.get("nfe") or 0)))
        except (SkipsearchError, ValueError):
            stored = None
    order = sorted(validated.items(), key=lambda kv: (kv[1].value is None, kv[1].value or 0.0, kv[0]))
    rows, best_rows = [], set()
    # torch-fidelity's precision / recall (and IS) on the same images, where validation measured them
    quality = [(key, label) for key, label in QUALITY_FIELDS if any(getattr(v, key) is not None for _, v in order)]
    for i, (number, v) in enumerate(order):
        remark = f"validation failed: {v.error}" if v.error else ""
        if stored is not None and stored.study_name == study.study_name and stored.trial_number == number:
            remark = "stored best for this model, sampler and NFE"
            best_rows.add(i)
        ci = CI_NOT_STORED if v.value is not None else "-"
        rows.append([esc(number), esc(_label(v.baseline)), _num(v.proxy), _num(v.value), esc(v.n),
                     esc(v.seeds or "-"), ci, esc(remark)] + [_num(getattr(v, key)) for key, _ in quality])
    validated_html = (_table(rows, ["trial", "label", "proxy", "validated", "n", "seeds", "95% CI", "note"]
                             + [label for _, label in quality], "validated",
                             numeric=(0, 2, 3, 4, *range(8, 8 + len(quality))),
                             row_class=lambda i: "best" if i in best_rows else "")
                      + '<p class="muted">proxy: the search-time value; validated: re-scored at the final n on fresh '
                      f"seeds. {CI_NOT_STORED}: validation keeps the {esc(metric)} value only, not the final-n "
                      "features a bootstrap interval would need.</p>"
                      if rows else '<p class="note">no validated trial yet</p>')

    # Every trial.
    trial_rows = []
    for t in trials:
        r = TrialRecord.read(t)
        last = _last_rung(t)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        trial_rows.append([esc(t.number), esc(t.state.name), _num(t.value), esc(r.baseline or ""),
                           "-" if last is None else f"{_num(last[1])} (n={last[0]})", esc(params),
                           esc(r.fail_reason or "")])
    trials_html = _table(trial_rows, ["trial", "state", "value", "baseline", "last rung", "parameters",
                                      "fail reason"], "trials", numeric=(0, 2))

    if grids:
        caption = f"{len(GRID_SEEDS)} images each, seeds {GRID_SEEDS[0]}-{GRID_SEEDS[-1]} (the same for all three)"
        figs = [_img(g.file, f"{g.title}: {g.caption}") if g.note is None
                else f'<p class="note">{esc(g.title)}: {esc(g.note)}</p>' for g in grids]
        grids_html = f'<p class="muted">{esc(caption)}</p><div class="figs">{"".join(figs)}</div>'
    else:
        grids_html = f'<p class="note">{esc(grid_note)}</p>'

    frontier_html = frontier_section(store, definition, output, note)
    best_text = "none" if best is None else f"trial {best.number}" + (
        f" ({TrialRecord.read(best).baseline})" if TrialRecord.read(best).baseline else "")
    extra_html = "".join(_img(name, name) for name in extra if (output / name).is_file())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(study.study_name)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(study.study_name)}</h1>
{header_html}
<h2>Validated trials</h2>
{validated_html}
{frontier_html}
<h2>Best trial: {esc(best_text)}</h2>
{heatmap}
<h2>Images: best vs rho = 1 vs paper recipe</h2>
{grids_html}
<h2>Optimization history</h2>
{_img("history.png", "value per trial in order; pruned trials at their last rung; failed ones marked on top")}
<h2>Proxy against each searched parameter</h2>
<div class="figs">{"".join(scatters) or '<p class="note">no searched parameter</p>'}</div>
<h2>All trials</h2>
{trials_html}
<h2>More</h2>
<p><a href="trials.csv">trials.csv</a> · <a href="trials.md">trials.md</a></p>
<div class="figs">{extra_html}</div>
</body></html>
"""
    index = output / "index.html"
    index.write_text(page, encoding="utf-8")
    return [*written, index]
