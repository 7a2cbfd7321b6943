"""Weights a schedule names (S²-DM exports): only from the artifacts folder or beside the JSON, and only by sha256.

Also: ``sample``/``evaluate`` say which weights ran, warn when the schedule was tuned for another sampler/NFE, and the
"use it:" hint printed by ``optimize`` is a command that runs.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from helpers.cli import assert_one_line_error, run_cli

from skipsearch.models.checkpoints import file_sha256
from skipsearch.schedule import ModelIdentity, SkipSchedule

NUM_SKIPS = 9  # skip points of the bundled model
SAMPLE = ["--nfe", "5", "--n", "2", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the CLI sizes torch threads from it (shared 2-core machine)
    for name in ("SKIPSEARCH_STORAGE", "SKIPSEARCH_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, str]:
    """Real weights that are not the bundled file: the bundled network saved again with a card (another sha256)."""
    from skipsearch.models.bundled import BUNDLED_WEIGHTS
    from skipsearch.models.checkpoints import load_network
    from skipsearch.search.finetune import save_finetuned
    net, _ = load_network(BUNDLED_WEIGHTS)
    path = tmp_path_factory.mktemp("weights") / "tuned.safetensors"
    sha = save_finetuned(net, path, {"note": "a test copy of the bundled weights"})
    assert sha != file_sha256(BUNDLED_WEIGHTS)
    return path, sha


def _schedule(path: Path, weights_path: str | None, sha: str, *, sampler: str = "heun", nfe: int = 5,
              weights_sha: bool = False) -> Path:
    provenance = {"weights_path": weights_path, "base_sha256": "0" * 64}
    if weights_sha:
        provenance["weights_sha256"] = sha
    path.parent.mkdir(parents=True, exist_ok=True)
    return SkipSchedule.constant(0.9, NUM_SKIPS).with_metadata(
        model=ModelIdentity("edm", sha, NUM_SKIPS), sampler=sampler, nfe=nfe, provenance=provenance).save(path)


def _weights_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("weights: ")]
    assert len(lines) == 1, out
    return lines[0]


# --------------------------------------------------------------------------------------------------------------------
# Where a schedule's weights may come from.


@pytest.mark.parametrize("weights_sha", [False, True], ids=["model-sha", "provenance-sha"])
def test_weights_beside_the_schedule_load_by_file_name(tmp_path, capsys, monkeypatch, tuned, weights_sha):
    weights, sha = tuned
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copyfile(weights, folder / "best.safetensors")
    schedule = _schedule(folder / "best.json", "best.safetensors", sha, weights_sha=weights_sha)
    monkeypatch.chdir(tmp_path)  # beside the JSON, not the current folder
    result = run_cli(capsys, "sample", "--schedule", schedule, *SAMPLE, "-o", tmp_path / "g.png")
    assert result.code == 0, result.err
    assert _weights_line(result.out) == f"weights: {folder / 'best.safetensors'} (sha256 {sha[:12]})"
    assert (tmp_path / "g.png").is_file()


def test_weights_in_the_artifacts_folder_load(tmp_path, capsys, tuned):
    from skipsearch.settings import Settings
    from skipsearch.store import default_storage_url
    from skipsearch.store.studies import artifact_dir
    weights, sha = tuned
    settings = Settings.from_env()
    trial = artifact_dir(default_storage_url(settings), settings) / "s2dm" / "some-study" / "trial-3.safetensors"
    trial.parent.mkdir(parents=True)
    shutil.copyfile(weights, trial)
    schedule = _schedule(tmp_path / "elsewhere" / "s.json", str(trial), sha)
    result = run_cli(capsys, "sample", "--schedule", schedule, *SAMPLE, "-o", tmp_path / "g.png")
    assert result.code == 0, result.err
    assert _weights_line(result.out) == f"weights: {trial.resolve()} (sha256 {sha[:12]})"


def _refusal_cases(tmp_path: Path, tuned: tuple[Path, str]) -> dict[str, Path]:
    """One schedule per way of naming weights that must not load; each names real files where it can."""
    from skipsearch.models.bundled import BUNDLED_WEIGHTS
    weights, sha = tuned
    outside = tmp_path / "outside" / "tuned.safetensors"
    outside.parent.mkdir()
    shutil.copyfile(weights, outside)  # the right bytes, in the wrong place
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "sub").mkdir()
    shutil.copyfile(weights, folder / "sub" / "tuned.safetensors")
    shutil.copyfile(BUNDLED_WEIGHTS, folder / "other.safetensors")  # real weights, other sha256
    (folder / "wrong.safetensors").write_text("not weights\n")
    (folder / "link.safetensors").symlink_to(outside)
    return {
        "dotdot": _schedule(folder / "dotdot.json", "../outside/tuned.safetensors", sha),
        "etc-passwd": _schedule(folder / "passwd.json", "../../../../../../../../etc/passwd", sha),
        "absolute": _schedule(folder / "absolute.json", str(outside), sha),
        "subfolder": _schedule(folder / "subfolder.json", "sub/tuned.safetensors", sha),
        "symlink": _schedule(folder / "symlink.json", "link.safetensors", sha),
        "missing": _schedule(folder / "missing.json", "gone.safetensors", sha),
        "mismatch": _schedule(folder / "mismatch.json", "other.safetensors", sha),
        "wrong-file": _schedule(folder / "wrong.json", "wrong.safetensors", sha),
    }


REFUSALS = ["dotdot", "etc-passwd", "absolute", "subfolder", "symlink", "missing", "mismatch", "wrong-file"]


@pytest.mark.parametrize("case", REFUSALS)
def test_other_weights_are_refused(tmp_path, capsys, monkeypatch, tuned, case):
    schedule = _refusal_cases(tmp_path, tuned)[case]
    monkeypatch.chdir(schedule.parent)  # where a relative '../' path was once followed from
    result = run_cli(capsys, "sample", "--schedule", schedule, *SAMPLE, "-o", tmp_path / "g.png")
    assert_one_line_error(result, "--checkpoint", schedule.name)
    assert result.code == 2 and not (tmp_path / "g.png").exists()


def test_evaluate_refuses_and_names_the_weights(tmp_path, capsys, monkeypatch, tuned):
    schedule = _refusal_cases(tmp_path, tuned)["dotdot"]
    monkeypatch.chdir(schedule.parent)
    args = ["evaluate", "--nfe", "5", "--n", "8", "--device", "cpu"]
    assert_one_line_error(run_cli(capsys, *args, "--schedule", schedule), "--checkpoint", schedule.name)
    weights, sha = tuned
    shutil.copyfile(weights, schedule.parent / "best.safetensors")
    good = _schedule(schedule.parent / "best.json", "best.safetensors", sha)
    result = run_cli(capsys, *args, "--schedule", good)
    assert result.code == 0, result.err
    assert _weights_line(result.out) == f"weights: {schedule.parent / 'best.safetensors'} (sha256 {sha[:12]})"


def test_an_explicit_checkpoint_is_trusted(tmp_path, capsys, tuned):
    weights, sha = tuned
    schedule = _schedule(tmp_path / "s.json", "/etc/passwd", sha)
    result = run_cli(capsys, "sample", "--schedule", schedule, "--checkpoint", weights, *SAMPLE,
                     "-o", tmp_path / "g.png")
    assert result.code == 0, result.err
    assert _weights_line(result.out) == f"weights: {weights} (sha256 {sha[:12]})"


def test_bundled_weights_are_named(tmp_path, capsys, bundled):
    result = run_cli(capsys, "sample", "--rho", "0.7", *SAMPLE, "-o", tmp_path / "g.png")
    assert result.code == 0, result.err
    assert _weights_line(result.out) == f"weights: bundled edm (sha256 {bundled.identity.sha256[:12]})"


# --------------------------------------------------------------------------------------------------------------------
# A schedule tuned for another sampler or NFE.


def test_schedule_for_another_sampler_or_nfe_warns(tmp_path, capsys, bundled):
    schedule = _schedule(tmp_path / "schedule.json", None, bundled.identity.sha256, sampler="heun", nfe=9)
    args = ["sample", "--schedule", schedule, "--n", "2", "--device", "cpu", "-o", tmp_path / "g.png"]
    result = run_cli(capsys, *args, "--sampler", "euler", "--nfe", "17")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: schedule.json was tuned for heun NFE 9; sampling euler NFE 17"]
    result = run_cli(capsys, *args, "--sampler", "heun", "--nfe", "7")
    assert result.code == 0 and "warning: schedule.json was tuned for heun NFE 9; sampling heun NFE 7" in result.err
    result = run_cli(capsys, *args, "--sampler", "heun", "--nfe", "9")
    assert result.code == 0 and "warning" not in result.err
    result = run_cli(capsys, "evaluate", "--schedule", schedule, "--n", "8", "--device", "cpu", "--nfe", "5")
    assert result.code == 0 and "warning: schedule.json was tuned for heun NFE 9; sampling heun NFE 5" in result.err


# --------------------------------------------------------------------------------------------------------------------
# The "use it:" hint after a tiny real study, run as printed.

TINY_STUDY = ["--nfe", "5", "--trials", "2", "--rungs", "16", "--final-n", "16", "--top-k", "1", "--pruner", "none",
              "--device", "cpu"]


def _hint(out: str) -> list[str]:
    lines = [line for line in out.splitlines() if line.startswith("use it: ")]
    assert len(lines) == 1, out
    words = shlex.split(lines[0].removeprefix("use it: "))
    assert words[0] == "skipsearch"
    return words[1:]


@pytest.mark.slow  # a whole (tiny) optimize study
def test_hint_after_a_finetune_study_uses_the_weights_beside_the_json(tmp_path, capsys, monkeypatch):
    for key, value in {"SKIPSEARCH_S2DM_STEPS": "2", "SKIPSEARCH_S2DM_SEGMENTS": "1",
                       "SKIPSEARCH_S2DM_BATCH": "8"}.items():
        monkeypatch.setenv(key, value)
    export = tmp_path / "my exports" / "best.json"  # a space: the hint must quote it
    result = run_cli(capsys, "optimize", "--space", "s2dm", *TINY_STUDY, "--export", export)
    assert result.code == 0, result.err
    doc = json.loads(export.read_text())
    copy = export.with_suffix(".safetensors")
    assert doc["provenance"]["weights_path"] == copy.name
    assert doc["provenance"]["weights_sha256"] == doc["model"]["sha256"] == file_sha256(copy)
    hint = _hint(result.out)
    assert "--checkpoint" not in hint
    monkeypatch.chdir(tmp_path)
    ran = run_cli(capsys, *hint)
    assert ran.code == 0, ran.err
    assert _weights_line(ran.out) == f"weights: {copy} (sha256 {doc['model']['sha256'][:12]})"
    assert (tmp_path / "grid.png").is_file()

    # 'skipsearch export' elsewhere makes another self-contained copy; the JSON moves with its weights.
    url = f"sqlite:///{tmp_path / 'home' / 'skipsearch.db'}"
    again = tmp_path / "again" / "s.json"
    again.parent.mkdir()
    result = run_cli(capsys, "export", "-o", again, "--nfe", "5", "--storage", url)
    assert result.code == 0, result.err
    assert json.loads(again.read_text())["provenance"]["weights_path"] == "s.safetensors"
    moved = tmp_path / "moved"
    shutil.move(again.parent, moved)
    ran = run_cli(capsys, "sample", "--schedule", moved / "s.json", *SAMPLE, "-o", tmp_path / "m.png")
    assert ran.code == 0, ran.err
    assert _weights_line(ran.out) == f"weights: {moved / 's.safetensors'} (sha256 {doc['model']['sha256'][:12]})"

    # The artifacts' copy gone: export says so in one line and writes nothing.
    for path in (tmp_path / "home" / "artifacts" / "s2dm").rglob("*.safetensors"):
        path.unlink()
    result = run_cli(capsys, "export", "-o", tmp_path / "late" / "s.json", "--nfe", "5", "--storage", url)
    assert_one_line_error(result, "weights")
    assert not (tmp_path / "late" / "s.json").exists()


@pytest.mark.slow  # a whole (tiny) optimize study
def test_hint_after_a_study_with_a_checkpoint_names_it(tmp_path, capsys, monkeypatch):
    from skipsearch.models.bundled import BUNDLED_WEIGHTS
    checkpoint = tmp_path / "my weights" / "edm.safetensors"
    checkpoint.parent.mkdir()
    shutil.copyfile(BUNDLED_WEIGHTS, checkpoint)
    export = tmp_path / "best.json"
    result = run_cli(capsys, "optimize", "--space", "linear", "--checkpoint", checkpoint, *TINY_STUDY,
                     "--rho-min", "0.5", "--rho-max", "1.0", "--export", export)
    assert result.code == 0, result.err
    hint = _hint(result.out)
    assert hint[hint.index("--checkpoint") + 1] == str(checkpoint)
    monkeypatch.chdir(tmp_path)
    ran = run_cli(capsys, *hint)
    assert ran.code == 0, ran.err
    assert _weights_line(ran.out).startswith(f"weights: {checkpoint} (sha256 ")
