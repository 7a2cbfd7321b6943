"""Figures for trial artifacts and reports (matplotlib): a schedule's rho heatmap, two image grids side by side.

The ``*_figure`` builders return a matplotlib ``Figure`` made without pyplot (no global figure state, no backend
switch, safe in worker threads); ``rho_heatmap`` and ``side_by_side`` render one to PNG bytes, or to ``path``.
matplotlib is imported on first use, not with this module.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from skipsearch.export.errors import FigureError
from skipsearch.export.images import image_grid
from skipsearch.schedule import SkipSchedule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FigureError", "interval_labels", "rho_heatmap", "rho_heatmap_figure", "side_by_side",
           "side_by_side_figure"]

DPI = 100


def interval_labels(sigma_bounds: Sequence[float]) -> list[str]:
    """One label per sigma interval, highest noise first: interval i is (bounds[i+1], bounds[i]]."""
    labels = []
    for hi, lo in zip(sigma_bounds[:-1], sigma_bounds[1:]):
        if math.isinf(hi) and lo <= 0:
            labels.append("all σ")
        elif math.isinf(hi):
            labels.append(f"σ > {lo:g}")
        elif lo <= 0:
            labels.append(f"σ ≤ {hi:g}")
        else:
            labels.append(f"{lo:g} < σ ≤ {hi:g}")
    return labels


def _schedule(schedule: SkipSchedule | Mapping[str, Any]) -> SkipSchedule:
    return schedule if isinstance(schedule, SkipSchedule) else SkipSchedule.from_dict(schedule)


def rho_heatmap_figure(schedule: SkipSchedule | Mapping[str, Any], resolutions: Sequence[int] | None,
                       title: str = "") -> Figure:
    """Skip point (columns, bottom first, with its resolution) x sigma interval (rows, high noise on top), each
    cell annotated with its rho; colours diverge from rho = 1 (blue: skip weakened, red: amplified)."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    schedule = _schedule(schedule)
    rho = np.asarray(schedule.rho, dtype=float)
    rows, cols = rho.shape
    if resolutions is not None and len(resolutions) != cols:
        raise FigureError(f"resolutions: {len(resolutions)} given for a schedule with {cols} skip points; pass one "
                          "per skip point (adapter.skip_points[i].resolution) or None")
    span = max(float(np.abs(rho - 1.0).max()), 0.05)  # symmetric about 1 so that white always means "as trained"
    norm = Normalize(1.0 - span, 1.0 + span)
    figure = Figure(figsize=(max(5.0, 0.5 * cols + 2.4), max(2.4, 0.45 * rows + 1.9)), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    mesh = ax.imshow(rho, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
    size = 8 if cols <= 16 else 7
    for i in range(rows):
        for j in range(cols):
            value = rho[i, j]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=size,
                    color="white" if abs(value - 1.0) > 0.6 * span else "black")
    ax.set_xticks(range(cols), [f"#{j}" if resolutions is None else f"#{j}\n{resolutions[j]} px"
                                for j in range(cols)], fontsize=size)
    ax.set_yticks(range(rows), interval_labels(schedule.sigma_bounds), fontsize=8)
    ax.set_xlabel("skip point (decoder order, bottom first) and its resolution" if resolutions is not None
                  else "skip point (decoder order, bottom first)", fontsize=8)
    ax.set_ylabel("sigma interval", fontsize=8)
    extras = []
    if schedule.eps_scale != 1.0:
        extras.append(f"eps_scale {schedule.eps_scale:.3f}")
    if schedule.churn.s_churn:
        extras.append(f"churn {schedule.churn.s_churn:.3g}")
    ax.set_title("\n".join(filter(None, [title, " · ".join(extras)])), fontsize=9)
    figure.colorbar(mesh, ax=ax, shrink=0.9, pad=0.02).set_label("rho (1 = as trained)", fontsize=8)
    return figure


def rho_heatmap(schedule: SkipSchedule | Mapping[str, Any], resolutions: Sequence[int] | None, title: str = "", *,
                path: str | Path | None = None) -> bytes | Path:
    """:func:`rho_heatmap_figure` as PNG: the bytes, or the written ``path``."""
    return render(rho_heatmap_figure(schedule, resolutions, title), path)


def _images(images: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.dtype != torch.uint8 or images.shape[0] == 0:
        raise FigureError(f"side_by_side: {name} must be uint8 images [N, C, H, W] (N >= 1), got "
                          f"{images.dtype} of shape {tuple(images.shape)}")
    return images


def side_by_side_figure(trial_images: torch.Tensor | np.ndarray, untuned_images: torch.Tensor | np.ndarray,
                        labels: Sequence[str], title: str = "") -> Figure:
    """Two image grids next to each other, each captioned (e.g. a trial's preview and rho = 1 on the same seeds)."""
    from matplotlib.figure import Figure

    if len(labels) != 2:
        raise FigureError(f"side_by_side: needs two labels (left grid, right grid), got {len(labels)}: "
                          f"{list(labels)}")
    left, right = _images(trial_images, "trial_images"), _images(untuned_images, "untuned_images")
    if left.shape != right.shape:
        raise FigureError(f"side_by_side: trial images {tuple(left.shape)} and untuned images "
                          f"{tuple(right.shape)} differ; both grids must show the same seeds at the same size")
    grids = [image_grid(left), image_grid(right)]
    height_px, width_px = grids[0].shape[:2]
    side = min(5.0, max(2.5, 2 * max(height_px, width_px) / DPI))  # small images are shown enlarged
    figure = Figure(figsize=(2 * side + 0.3, side * height_px / width_px + (0.8 if title else 0.5)), dpi=DPI,
                    layout="constrained")
    for ax, grid, label in zip(figure.subplots(1, 2), grids, labels):
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def side_by_side(trial_images: torch.Tensor | np.ndarray, untuned_images: torch.Tensor | np.ndarray,
                 labels: Sequence[str], title: str = "", *, path: str | Path | None = None) -> bytes | Path:
    """:func:`side_by_side_figure` as PNG: the bytes, or the written ``path``."""
    return render(side_by_side_figure(trial_images, untuned_images, labels, title), path)


def render(figure: Figure, path: str | Path | None = None) -> bytes | Path:
    """A figure as PNG bytes, or written to ``path`` (parents created) and the path returned."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    if path is None:
        return buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path
