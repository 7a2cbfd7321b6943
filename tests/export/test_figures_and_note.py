"""What a reviewer sees in optuna-dashboard: named metrics, per-trial rho heatmaps and side-by-side grids, a note."""

from __future__ import annotations

import io
import math

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from skipsearch.errors import SkipsearchError
from skipsearch.export.figures import (
    FigureError,
    interval_labels,
    rho_heatmap,
    rho_heatmap_figure,
    side_by_side,
    side_by_side_figure,
)
from skipsearch.schedule import SkipSchedule


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _texts(figure) -> list[str]:
    texts = [t.get_text() for t in figure.texts]
    for ax in figure.axes:
        texts += [t.get_text() for t in ax.texts]
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    return texts


# --- figures on hand-made schedules --------------------------------------------------------------------------------


def test_heatmap_many_intervals_annotates_values_resolutions_and_sigma():
    rho = [[0.5, 0.75, 1.0, 1.25], [0.6, 0.8, 1.0, 1.0], [1.0, 1.0, 1.0, 0.9]]
    schedule = SkipSchedule(np.array(rho), sigma_bounds=(math.inf, 2.0, 0.5, 0.0))
    figure = rho_heatmap_figure(schedule.to_dict(), [4, 8, 8, 16], "trial 7")
    texts = _texts(figure)
    for value in ("0.50", "0.75", "1.25", "0.60", "0.90"):
        assert value in texts
    assert sum(t.count("px") for t in texts) == 4  # one resolution label per skip point
    assert any("16 px" in t for t in texts) and any("4 px" in t for t in texts)
    assert interval_labels((math.inf, 2.0, 0.5, 0.0)) == ["σ > 2", "0.5 < σ ≤ 2", "σ ≤ 0.5"]
    assert any("trial 7" in t for t in texts)
    image = _png(rho_heatmap(schedule.to_dict(), [4, 8, 8, 16], "trial 7"))
    assert image.width > 300 and image.height > 150


def test_heatmap_single_interval_and_schedule_object(tmp_path):
    schedule = SkipSchedule(np.array([[0.4, 0.7, 1.0, 1.0, 1.0, 1.0]]))
    texts = _texts(rho_heatmap_figure(schedule, [4] * 2 + [8] * 2 + [16] * 2, "layer-wise"))
    assert "0.40" in texts and "0.70" in texts
    assert "all σ" in texts
    path = rho_heatmap(schedule, [4, 4, 8, 8, 16, 16], "layer-wise", path=tmp_path / "rho.png")
    assert path == tmp_path / "rho.png" and _png(path.read_bytes()).width > 300


def test_heatmap_many_points_stays_readable():
    schedule = SkipSchedule(np.full((3, 24), 0.85), sigma_bounds=(math.inf, 10.0, 1.0, 0.0))
    image = _png(rho_heatmap(schedule, [4 * 2 ** (i // 8) for i in range(24)], "wide"))
    assert image.width >= 24 * 40  # about a value's width per cell


def test_heatmap_rejects_wrong_resolutions_in_one_line():
    schedule = SkipSchedule(np.array([[0.5, 1.0]]))
    with pytest.raises(FigureError, match="resolutions") as info:
        rho_heatmap(schedule, [8, 8, 16], "x")
    assert isinstance(info.value, SkipsearchError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value) and "2 skip points" in str(info.value)


def test_side_by_side_grids_with_captions(tmp_path):
    generator = torch.Generator().manual_seed(0)
    trial = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=generator)
    untuned = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=generator)
    figure = side_by_side_figure(trial, untuned, ("trial 3", "rho = 1 (untuned)"), title="seeds 0-15")
    texts = _texts(figure)
    assert "trial 3" in texts and "rho = 1 (untuned)" in texts and any("seeds 0-15" in t for t in texts)
    image = _png(side_by_side(trial, untuned, ("trial 3", "rho = 1 (untuned)")))
    assert image.width > 1.5 * image.height  # two grids next to each other
    rgb = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=generator)
    path = side_by_side(rgb, rgb, ("a", "b"), path=tmp_path / "sbs.png")
    assert _png(path.read_bytes()).mode in ("RGB", "RGBA")


def test_side_by_side_rejects_unlike_images():
    a = torch.zeros((4, 1, 28, 28), dtype=torch.uint8)
    with pytest.raises(FigureError, match="same seeds"):
        side_by_side(a, torch.zeros((4, 1, 16, 16), dtype=torch.uint8), ("a", "b"))
    with pytest.raises(FigureError, match="two labels"):
        side_by_side(a, a, ("a",))


# --- a tiny real study: what the dashboard gets ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    from skipsearch.optimization import run_definition
    from skipsearch.search.definition import default_study
    home = tmp_path_factory.mktemp("home")
    sessions = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKIPSEARCH_HOME", str(home))
        mp.setenv("SKIPSEARCH_OFFLINE", "1")
        definition = default_study("edm").override(
            nfe=5, trials=5, space="linear", proxy__rungs=(24, 48), search__final_n=48, search__validate_top_k=1,
            search__pruner="aggressive", space_bounds__calibrate=False, space_bounds__rho_min=0.3,
            space_bounds__rho_max=1.0)
        result = run_definition(definition, storage_url=f"sqlite:///{home}/skipsearch.db",
                                export=home / "best.json", on_session=sessions.append)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage_url)
    return home, result, study, sessions[0]


@pytest.mark.slow
def test_metric_names_are_stored(tiny_study):
    _, _, study, _ = tiny_study
    assert study.metric_names == ["fid"]


@pytest.mark.slow
def test_every_scored_trial_has_grid_heatmap_and_side_by_side(tiny_study, tmp_path):
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
    home, _, study, session = tiny_study
    store = FileSystemArtifactStore(str(home / "artifacts"))
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states
    for trial in study.trials:
        if trial.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            continue
        metas = {m.artifact_id: m for m in get_all_artifact_meta(trial, storage=study._storage)}
        for key in ("sample_grid_artifact", "rho_heatmap_artifact", "side_by_side_artifact"):
            artifact_id = trial.user_attrs.get(key)
            assert artifact_id in metas, f"trial {trial.number} ({trial.state.name}) has no {key}"
            assert metas[artifact_id].mimetype == "image/png"
            target = tmp_path / f"{trial.number}-{key}.png"
            download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact_id)
            image = _png(target.read_bytes())
            assert image.width >= 100 and image.height >= 60 and target.stat().st_size > 1000
        names = {m.filename for m in metas.values()}
        assert {f"trial-{trial.number}-rho.png", f"trial-{trial.number}-vs-untuned.png"} <= names
    # The rho = 1 preview is sampled at most once per objective (the untuned baseline trial usually supplies it).
    assert session.objective.untuned_generated <= 1


@pytest.mark.slow
def test_study_note_tells_what_was_searched_and_what_won(tiny_study):
    import optuna_dashboard
    _, result, study, _ = tiny_study
    note = optuna_dashboard.get_note(study)
    assert note.startswith(f"## {study.study_name}")
    assert "| trial | label | proxy | validated fid | n | vs untuned |" in note
    assert result.validations
    for row in result.validations:
        assert f"| {row['trial']} |" in note
    assert "untuned (rho=1)" in note and "paper recipe" in note
    assert str(result.export_path) in note
    assert f"`{study.study_name}.review`" in note
    assert "rho in [0.3, 1] (given)" in note
    counts = result.counts
    assert f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed" in note
    assert "5 trials" in note and "24 → 48" in note
