"""A trial's pictures in Optuna's artifact store, where optuna-dashboard shows them: the sample grid, the rho
heatmap and the grid beside rho = 1 on the same seeds.

The objective (:mod:`skipsearch.search.objective`) decides *when* a trial gets pictures and with which images; it
is handed a :class:`TrialArtifacts` by the session, so scoring never imports plotting.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from skipsearch.export.figures import rho_heatmap, side_by_side
from skipsearch.export.images import save_grid

__all__ = ["TrialArtifacts"]


@dataclass
class TrialArtifacts:
    """Renders a trial's pictures and uploads them to ``store`` (an Optuna artifact store)."""

    store: Any

    def write(self, trial: optuna.Trial, images: torch.Tensor, untuned: torch.Tensor, *,
              schedule: dict[str, Any] | None, resolutions: Sequence[int], title: str,
              caption: str) -> dict[str, str]:
        """Upload the pictures of ``trial``; their artifact ids by ``TrialRecord`` field."""
        from optuna.artifacts import upload_artifact
        n, ids = trial.number, {}
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files = {"sample_grid_artifact": save_grid(images, folder / f"trial-{n}-samples.png", scale=2)}
            if schedule:
                files["rho_heatmap_artifact"] = rho_heatmap(schedule, list(resolutions), title,
                                                            path=folder / f"trial-{n}-rho.png")
            files["side_by_side_artifact"] = side_by_side(
                images.cpu(), untuned, (f"trial {n}", "rho = 1 (untuned)"), caption,
                path=folder / f"trial-{n}-vs-untuned.png")
            for field_name, path in files.items():
                ids[field_name] = upload_artifact(artifact_store=self.store, file_path=str(path),
                                                  study_or_trial=trial, mimetype="image/png")
        return ids
