"""The NFE frontier for people and scripts: FID against NFE per arm and the model's limit, from the store.

What ``skipsearch frontier`` measured (:mod:`skipsearch.store.limits`) becomes a :class:`FrontierView`; from it come
the picture (``frontier.png``: log NFE axis, one line per arm, the limit as a band with its bootstrap CI, where each
arm first comes within 5 % of the limit), the numbers (``frontier.csv``, ``frontier.json``), a terminal table that
fits 80 columns, and the section of ``report``'s ``index.html``. Reading a view runs nothing.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skipsearch.export.tables import Column, render, table, wrap
from skipsearch.store.limits import FrontierKey, FrontierPointRow, FrontierStore, LimitRow

__all__ = ["LIMIT", "PAPER", "REACH_TOLERANCE", "UNTUNED", "FrontierView", "StudyCost", "arm_kind", "breaks_limit",
           "cost_rows", "frontier_rows", "headline", "load_view", "plot", "reach_nfe", "report_section",
           "terminal_table", "write_outputs"]

UNTUNED, PAPER, LIMIT = "rho=1", "paper", "limit"  # arm names; a searched arm is named after its space
SHARED_PREFIX = "shared:"  # one schedule searched for every NFE of the frontier at once ("shared:joint")
REACH_TOLERANCE = 0.05  # "reaches the limit": FID within 5 % of it
FILES = ("frontier.png", "frontier.csv", "frontier.json", "index.html")


def arm_kind(arm: str) -> str:
    """``untuned``, ``paper``, ``limit`` (a probe of the limit), ``shared`` or ``tuned`` (a per-NFE study's)."""
    if arm in (UNTUNED, PAPER, LIMIT):
        return {UNTUNED: "untuned", PAPER: "paper", LIMIT: "limit"}[arm]
    return "shared" if arm.startswith(SHARED_PREFIX) else "tuned"


def is_searched(arm: str) -> bool:
    return arm_kind(arm) in ("tuned", "shared")


@dataclass(frozen=True)
class StudyCost:
    """What one study cost (denoiser calls: trials, calibration and validation; wall time of frontier's runs)."""

    study_name: str
    arm: str
    nfe: int | None  # None: a shared study, over every NFE
    calls: int
    seconds: float
    warm_starts: int
    trials: int


@dataclass
class FrontierView:
    """One frontier as stored: its points (limit probes apart), the limit and what the studies cost."""

    key: FrontierKey
    points: list[FrontierPointRow]
    limit: LimitRow | None
    probes: list[FrontierPointRow] = field(default_factory=list)
    studies: list[StudyCost] = field(default_factory=list)

    @property
    def arms(self) -> list[str]:
        """rho = 1, the paper recipe, the per-NFE searched arms, then the shared ones."""
        order = {"untuned": 0, "paper": 1, "tuned": 2, "shared": 3}
        first = {}  # searched arms in the order they were first stored: the order of --space
        for p in sorted(self.points, key=lambda p: p.id):
            first.setdefault(p.arm, p.id)
        return sorted(first, key=lambda a: (order[arm_kind(a)], first[a]))

    @property
    def nfes(self) -> list[int]:
        return sorted({p.nfe for p in self.points})

    def point(self, arm: str, nfe: int) -> FrontierPointRow | None:
        return next((p for p in self.points if p.arm == arm and p.nfe == nfe), None)


# --------------------------------------------------------------------------------------------------------------------
# What the numbers say.


def reach_nfe(points: Sequence[FrontierPointRow], limit: LimitRow | None,
              tolerance: float = REACH_TOLERANCE) -> dict[str, int | None]:
    """Per arm, the fewest NFE whose FID is within ``tolerance`` of the limit (None: not reached)."""
    arms = {p.arm for p in points}
    if limit is None:
        return dict.fromkeys(arms)
    bound = limit.value * (1 + tolerance)
    return {arm: min((p.nfe for p in points if p.arm == arm and p.value <= bound), default=None) for arm in arms}


def breaks_limit(points: Sequence[FrontierPointRow]) -> tuple[int, str] | None:
    """(NFE, arm): the smallest NFE at which a searched arm's paired CI against the limit lies at or below 0."""
    hits = [(p.nfe, p.arm) for p in points
            if is_searched(p.arm) and p.vs_limit_high is not None and p.vs_limit_high <= 0]
    return min(hits) if hits else None


def _fid(value: float | None) -> str:
    """FID in 4 significant digits (16266, 139.7, 7.331): values span four decades between 3 and 35 NFE."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _ci(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value:+.2f}"
    return text if low is None or high is None else f"{text} [{low:+.2f}, {high:+.2f}]"


def limit_line(view: FrontierView) -> str:
    limit = view.limit
    if limit is None:
        return "limit: not measured yet (run 'skipsearch frontier')"
    state = "converged" if limit.converged else f"not converged to {limit.tolerance:.0%} by NFE {limit.nfe}"
    probes = ", ".join(f"{nfe}: {_fid(value)}" for nfe, value in limit.probes)
    return (f"limit: FID {_fid(limit.value)} [{_fid(limit.value_low)}, {_fid(limit.value_high)}] = "
            f"{view.key.sampler} rho=1 at NFE {limit.nfe} ({state}; probes {probes})")


def headline(view: FrontierView) -> list[str]:
    """The plain-words result: the limit, where tuned sampling breaks it, where each arm reaches it, the cost."""
    lines = [limit_line(view)]
    if view.limit is not None:
        hit = breaks_limit(view.points)
        searched = [p for p in view.points if is_searched(p.arm)]
        if hit is not None:
            lines.append(f"tuned sampling breaks the limit at {hit[0]} NFE ({hit[1]}: its paired 95% CI against "
                         "the limit lies at or below 0)")
        elif searched:
            lines.append(f"tuned sampling does not break the limit up to NFE {max(p.nfe for p in searched)} (no "
                         "searched arm's paired 95% CI against the limit lies at or below 0)")
        reached = reach_nfe(view.points, view.limit)
        parts = [f"{arm} at {reached[arm]}" if reached.get(arm) else f"{arm} not reached" for arm in view.arms]
        lines.append(f"within {REACH_TOLERANCE:.0%} of the limit: " + ", ".join(parts))
    total = cost_rows(view)[-1]
    lines.append(f"cost: {total['calls']:,} denoiser calls, {_duration(total['seconds'])} wall time; "
                 f"{total['trials']} trials, of them warm-started from a neighbouring NFE: {total['warm_starts']}")
    return lines


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def cost_rows(view: FrontierView) -> list[dict[str, Any]]:
    """Denoiser calls and wall time per NFE (its studies and validations), the shared studies, the limit, total."""
    rows = []
    for nfe in sorted({*view.nfes, *(s.nfe for s in view.studies if s.nfe is not None)}):
        studies = [s for s in view.studies if s.nfe == nfe]
        points = [p for p in view.points if p.nfe == nfe]
        rows.append({"what": f"NFE {nfe}", "nfe": nfe, "search_calls": sum(s.calls for s in studies),
                     "validation_calls": sum(p.denoiser_calls for p in points),
                     "seconds": sum(s.seconds for s in studies) + sum(p.seconds for p in points),
                     "warm_starts": sum(s.warm_starts for s in studies), "trials": sum(s.trials for s in studies)})
    for study in (s for s in view.studies if s.nfe is None):
        rows.append({"what": study.arm, "nfe": None, "search_calls": study.calls, "validation_calls": 0,
                     "seconds": study.seconds, "warm_starts": study.warm_starts, "trials": study.trials})
    if view.probes:
        rows.append({"what": "limit", "nfe": view.limit.nfe if view.limit else None, "search_calls": 0,
                     "validation_calls": sum(p.denoiser_calls for p in view.probes),
                     "seconds": sum(p.seconds for p in view.probes), "warm_starts": 0, "trials": 0})
    for row in rows:
        row["calls"] = row["search_calls"] + row["validation_calls"]
    keys = ("search_calls", "validation_calls", "calls", "seconds", "warm_starts", "trials")
    rows.append({"what": "total", "nfe": None, **{k: sum(r[k] for r in rows) for k in keys}})
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Numbers for scripts.

POINT_FIELDS = ["model_name", "weights_sha256", "sampler", "n", "seeds", "extractor", "arm", "kind", "nfe", "fid",
                "fid_low", "fid_high", "vs_rho1", "vs_rho1_low", "vs_rho1_high", "vs_limit", "vs_limit_low",
                "vs_limit_high", "limit_nfe", "within_5pct_of_limit", "breaks_limit", "ci_resamples",
                "validation_calls", "validation_seconds", "study_name", "schedule"]


def frontier_rows(view: FrontierView) -> list[dict[str, Any]]:
    """One row per (arm, NFE) with every number (CSV and JSON)."""
    key, limit = view.key, view.limit
    bound = None if limit is None else limit.value * (1 + REACH_TOLERANCE)
    rows = []
    for p in sorted(view.points, key=lambda p: (view.arms.index(p.arm), p.nfe)):
        rows.append({"model_name": key.model_name, "weights_sha256": key.weights_sha256, "sampler": key.sampler,
                     "n": key.n, "seeds": key.seeds, "extractor": key.extractor, "arm": p.arm,
                     "kind": arm_kind(p.arm), "nfe": p.nfe, "fid": p.value, "fid_low": p.value_low,
                     "fid_high": p.value_high, "vs_rho1": p.vs_untuned, "vs_rho1_low": p.vs_untuned_low,
                     "vs_rho1_high": p.vs_untuned_high, "vs_limit": p.vs_limit, "vs_limit_low": p.vs_limit_low,
                     "vs_limit_high": p.vs_limit_high, "limit_nfe": p.limit_nfe,
                     "within_5pct_of_limit": None if bound is None else p.value <= bound,
                     "breaks_limit": None if p.vs_limit_high is None else p.vs_limit_high <= 0,
                     "ci_resamples": p.ci_resamples, "validation_calls": p.denoiser_calls,
                     "validation_seconds": p.seconds, "study_name": p.study_name, "schedule": p.description})
    return rows


def summary(view: FrontierView) -> dict[str, Any]:
    """The JSON document: the frontier's identity, the limit, the headline, points and costs."""
    limit = view.limit
    hit = breaks_limit(view.points)
    return {"frontier": {**dataclasses.asdict(view.key), "seeds": view.key.seeds},
            "limit": None if limit is None else {
                "nfe": limit.nfe, "fid": limit.value, "fid_low": limit.value_low, "fid_high": limit.value_high,
                "converged": limit.converged, "tolerance": limit.tolerance, "probes": limit.probes,
                "ci_resamples": limit.ci_resamples},
            "breaks_limit": None if hit is None else {"nfe": hit[0], "arm": hit[1]},
            "reaches_limit_within_5pct": reach_nfe(view.points, limit), "headline": headline(view),
            "points": frontier_rows(view), "costs": cost_rows(view)}


# --------------------------------------------------------------------------------------------------------------------
# The terminal table.


def _cell(view: FrontierView, arm: str, nfe: int, reached: dict[str, int | None]) -> str:
    point = view.point(arm, nfe)
    if point is None:
        return ""
    marks = ("<" if point.vs_limit_high is not None and point.vs_limit_high <= 0 and is_searched(arm) else "") + (
        "*" if reached.get(arm) == nfe else "")
    return _fid(point.value) + marks


def terminal_table(view: FrontierView, width: int = 80, wide: bool = False) -> str:
    """FID per NFE (rows) and arm (columns) with calls and time per NFE, fitted to ``width``; the headline under."""
    reached = reach_nfe(view.points, view.limit)
    costs = {row["nfe"]: row for row in cost_rows(view) if row["what"].startswith("NFE ")}
    rows = [{"nfe": nfe, **{arm: _cell(view, arm, nfe, reached) for arm in view.arms},
             "calls": costs[nfe]["calls"], "seconds": costs[nfe]["seconds"]} for nfe in sorted(costs)]
    columns = [Column("NFE", key="nfe", right=True),
               *(Column(arm.removeprefix(SHARED_PREFIX) + (" (shared)" if arm_kind(arm) == "shared" else ""),
                        key=arm, right=True) for arm in view.arms),
               Column("calls", 1, right=True, text=lambda v: f"{v / 1e3:.0f}k" if v >= 1e4 else str(v)),
               Column("time", 2, key="seconds", right=True, text=_duration)]
    key = view.key
    title = (f"NFE frontier of {key.model_name} ({key.weights_sha256[:10]}), FID ({key.extractor}) at n={key.n} on "
             f"seeds {key.seeds}; rho=1 and paper with {key.sampler}")
    text = table(rows, columns, title=title, width=width, wide=wide)
    legend = f"* first NFE within {REACH_TOLERANCE:.0%} of the limit; < paired 95% CI at or below the limit"
    lines = [part for line in (legend, *headline(view)) for part in (wrap(line, width) if not wide else [line])]
    return text + "\n".join(lines) + "\n"


def render_rows(view: FrontierView, fmt: str) -> str:
    """``json`` (the summary document) or ``csv`` (one row per arm and NFE) for scripts."""
    if fmt == "json":
        return json.dumps(summary(view), indent=1, default=str) + "\n"
    return render(frontier_rows(view), "csv", fields=POINT_FIELDS)


# --------------------------------------------------------------------------------------------------------------------
# The picture.


def plot(view: FrontierView, path: Path) -> Path:
    """FID against NFE (both log axes), one line per arm with its bootstrap CI, the limit as a band, and each arm's
    first NFE within 5 % of the limit marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from skipsearch.export.figures import render as render_png

    figure = Figure(figsize=(8.4, 4.6), dpi=110, layout="constrained")
    ax = figure.add_subplot()
    reached = reach_nfe(view.points, view.limit)
    styles = {"untuned": ("k", "o", "--"), "paper": ("0.5", "s", ":")}
    colours = ["C0", "C1", "C3", "C4", "C5", "C6", "C8", "C9"]  # C2 (green) is the limit's
    searched = [arm for arm in view.arms if is_searched(arm)]
    for arm in view.arms:
        points = sorted((p for p in view.points if p.arm == arm), key=lambda p: p.nfe)
        index = searched.index(arm) if arm in searched else 0
        colour, marker, line = styles.get(arm_kind(arm), (colours[index % len(colours)], "D^v<>ph"[index % 7], "-"))
        xs, ys = [p.nfe for p in points], [p.value for p in points]
        low = [max(0.0, p.value - p.value_low) if p.value_low is not None else 0 for p in points]
        high = [max(0.0, p.value_high - p.value) if p.value_high is not None else 0 for p in points]
        ax.errorbar(xs, ys, yerr=[low, high], color=colour, marker=marker, linestyle=line, markersize=4,
                    capsize=2, linewidth=1.3, label=arm)
        first = reached.get(arm)
        if first is not None:
            value = next(p.value for p in points if p.nfe == first)
            ax.plot([first], [value], marker="*", markersize=15, color=colour, markeredgecolor="k", zorder=5)
            ax.annotate(f"{first}", (first, value), textcoords="offset points", xytext=(4, 6), fontsize=8)
    if view.limit is not None:
        limit = view.limit
        ax.axhspan(limit.value_low, limit.value_high, color="C2", alpha=0.25, linewidth=0)
        ax.axhline(limit.value, color="C2", linewidth=1.2,
                   label=f"limit: {view.key.sampler} rho=1 at NFE {limit.nfe} (95% CI band)")
        ax.axhline(limit.value * (1 + REACH_TOLERANCE), color="C2", linewidth=0.8, linestyle=":",
                   label=f"limit + {REACH_TOLERANCE:.0%}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if view.nfes:
        ax.set_xticks(view.nfes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE (denoiser calls per image, log scale)", fontsize=9)
    ax.set_ylabel(f"FID ({view.key.extractor}, n={view.key.n}, log scale)", fontsize=9)
    hit = breaks_limit(view.points)
    if hit is not None:  # ringed: the headline point, the first whose CI against the limit lies at or below 0
        point = view.point(hit[1], hit[0])
        ax.plot([hit[0]], [point.value], marker="o", markersize=16, markerfacecolor="none", markeredgecolor="C3",
                markeredgewidth=1.5, linestyle="none", label=f"breaks the limit ({hit[1]}, NFE {hit[0]})", zorder=6)
    verdict = ("" if view.limit is None else f"; tuned breaks the limit at {hit[0]} NFE" if hit
               else "; tuned does not break the limit")
    # A figure title: constrained layout keeps it inside the image, however long the model's name.
    figure.suptitle(f"{view.key.model_name}: FID against NFE (* first NFE within {REACH_TOLERANCE:.0%} of the "
                    f"limit){verdict}", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing stored yet: an empty frame, no legend
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a line
    ax.tick_params(labelsize=8)
    return render_png(figure, path)


# --------------------------------------------------------------------------------------------------------------------
# HTML: the section of report's index.html, and the frontier command's own page.


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _point_html(row: dict[str, Any]) -> str:
    own = "-" if row["fid_low"] is None else f"[{_fid(row['fid_low'])}, {_fid(row['fid_high'])}]"
    cells = [row["arm"], row["nfe"], _fid(row["fid"]), own, _ci(row["vs_rho1"], row["vs_rho1_low"],
                                                                  row["vs_rho1_high"]),
             _ci(row["vs_limit"], row["vs_limit_low"], row["vs_limit_high"])]
    numeric = ' class="num"'
    return ("<tr>" + "".join(f"<td{numeric if i else ''}>{_esc(c)}</td>" for i, c in enumerate(cells))
            + f"<td>{_esc(row['schedule'])}</td></tr>")


def section_html(view: FrontierView, image: str = "frontier.png") -> str:
    """The frontier section (its PNG is ``image`` beside the page): headline, FID table, CIs, costs."""
    reached = reach_nfe(view.points, view.limit)
    head = "".join(f"<th>{_esc(a)}</th>" for a in view.arms)
    body = "".join(f'<tr><td class="num">{nfe}</td>'
                   + "".join(f'<td class="num">{_esc(_cell(view, arm, nfe, reached))}</td>' for arm in view.arms)
                   + "</tr>" for nfe in view.nfes)
    details = "".join(_point_html(r) for r in frontier_rows(view))
    costs = "".join(
        f'<tr><td>{_esc(r["what"])}</td><td class="num">{r["search_calls"]:,}</td>'
        f'<td class="num">{r["validation_calls"]:,}</td><td class="num">{_duration(r["seconds"])}</td>'
        f'<td class="num">{r["warm_starts"]}</td></tr>' for r in cost_rows(view))
    lines = "".join(f"<li>{_esc(line)}</li>" for line in headline(view))
    key = view.key
    return f"""<section id="frontier">
<h2>NFE frontier: {_esc(key.model_name)}</h2>
<p class="muted">FID ({_esc(key.extractor)}) at n={key.n} on seeds {_esc(key.seeds)}, the same for every point;
rho=1 and paper recipe with {_esc(key.sampler)}; CIs: paired bootstrap over the images, 95%.</p>
<ul>{lines}</ul>
<figure><img src="{_esc(image)}" alt="FID against NFE"><figcaption>FID against NFE per arm; the band is the
limit's 95% CI; a star marks the first NFE within {REACH_TOLERANCE:.0%} of the limit.</figcaption></figure>
<table id="frontier-fid"><tr><th>NFE</th>{head}</tr>{body}</table>
<p class="muted">* first NFE within {REACH_TOLERANCE:.0%} of the limit; &lt; paired 95% CI at or below the limit.</p>
<table id="frontier-points"><tr><th>arm</th><th>NFE</th><th>FID</th><th>95% CI</th><th>vs rho=1 [95% CI]</th>
<th>vs limit [95% CI]</th><th>schedule</th></tr>{details}</table>
<table id="frontier-costs"><tr><th>work</th><th>search calls</th><th>validation calls</th><th>wall time</th>
<th>warm starts</th></tr>{costs}</table>
<p><a href="frontier.csv">frontier.csv</a> · <a href="frontier.json">frontier.json</a></p>
</section>"""


def write_files(view: FrontierView, folder: Path) -> list[Path]:
    """``frontier.png``, ``frontier.csv`` and ``frontier.json`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [plot(view, folder / FILES[0])]
    written.append(folder / FILES[1])
    written[-1].write_text(render_rows(view, "csv"), encoding="utf-8")
    written.append(folder / FILES[2])
    written[-1].write_text(render_rows(view, "json"), encoding="utf-8")
    return written


def write_outputs(view: FrontierView, folder: Path) -> list[Path]:
    """The PNG, CSV and JSON, and ``index.html`` holding the frontier section."""
    from skipsearch.export.style import CSS
    written = write_files(view, folder)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>NFE frontier: '
            f"{_esc(view.key.model_name)}</title><style>{CSS}</style></head>\n<body>\n{section_html(view)}\n"
            "</body></html>\n")
    written.append(folder / FILES[3])
    written[-1].write_text(page, encoding="utf-8")
    return written


# --------------------------------------------------------------------------------------------------------------------
# Reading a frontier from the store.


def study_cost(study: Any, arm: str, nfe: int | None, seconds: float) -> StudyCost:
    """Denoiser calls a study spent: its trials (pruned ones up to their last rung), its calibration sweep and its
    validations (each candidate at final n at every NFE of the study, and rho = 1 per NFE for a shared one)."""
    from skipsearch.store.records import StudyRecord, TrialRecord
    record = StudyRecord(study)
    definition = record.definition
    nfes = list(definition.get("nfes") or [definition.get("nfe") or 0])
    trials = study.get_trials(deepcopy=False)
    calls = sum(TrialRecord.read(t).denoiser_calls or 0 for t in trials)
    calibration = record.calibration()
    if calibration is not None:
        sweep = len(calibration.rho) + (0 if 1.0 in calibration.rho else 1)  # rho = 1 is scored once either way
        calls += sweep * calibration.n * nfes[0]
    validated = [v for v in record.validated().values() if v.value is not None]
    calls += sum(v.n for v in validated) * sum(nfes) + (validated[0].n * sum(nfes) if len(nfes) > 1 and validated
                                                         else 0)
    finished = [t for t in trials if t.state.is_finished()]  # not the baselines left waiting beyond the budget
    warm = sum(1 for t in finished if TrialRecord.read(t).warm_start)
    return StudyCost(study.study_name, arm, nfe, int(calls), seconds, warm, len(finished))


def _studies(url: str, names: dict[str, tuple[str, int | None]], seconds: dict[str, float]) -> list[StudyCost]:
    import optuna
    costs = []
    storage = optuna.storages.RDBStorage(url) if names else None  # one connection pool for every study
    for name, (arm, nfe) in sorted(names.items()):
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # deleted since: its points stand, its cost is unknown
            continue
        costs.append(study_cost(study, arm, nfe, seconds.get(name, 0.0)))
    return costs


def load_view(store: FrontierStore, key: FrontierKey) -> FrontierView:
    """The frontier ``key`` as stored (points, limit, what its studies cost); runs nothing."""
    every = store.points(key)
    points = [p for p in every if p.arm != LIMIT]
    probes = [p for p in every if p.arm == LIMIT]
    names = store.studies(key)  # the studies frontier ran, its points not in yet included
    for p in points:
        if p.study_name and is_searched(p.arm):
            names.setdefault(p.study_name, (p.arm, None if arm_kind(p.arm) == "shared" else p.nfe))
    return FrontierView(key, points, store.limit(key), probes,
                        _studies(store.url, names, store.study_seconds(list(names))))


def report_section(url: str, model_name: str, weights_sha256: str, output: Path) -> str:
    """The ``report`` page's frontier section for a study's model (its files written into ``output``); "" when the
    store holds no frontier of that model."""
    with FrontierStore(url) as store:
        keys = [k for k in store.keys(model_name) if k.weights_sha256 == weights_sha256]
        if not keys:
            return ""
        key = max(keys, key=lambda k: (k.n, len(store.points(k))))  # the largest n: the firmest numbers
        view = load_view(store, key)
    write_files(view, output)
    return section_html(view)
