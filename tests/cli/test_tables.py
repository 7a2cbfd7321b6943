"""``best``, ``studies`` and ``models`` in a real terminal width (``$COLUMNS``), and as JSON / CSV for scripts.

Every case reads one real SQLite database in ``$SKIPSEARCH_HOME``: best rows recorded through ``BestStore`` and real
Optuna studies with complete, pruned and failed trials.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import pytest
from helpers.cli import assert_one_line_error, run_cli

from skipsearch.schedule import SkipSchedule

LONG_STUDY = "edm-1a2b3c4d-heun-nfe9-layer-0123456789ab"  # the shape study_name_for() gives
SHA = {"edm": "ab" * 32, "edm-cifar10": "cd" * 32, "ddpm-mnist": "ef" * 32}
BEST = [  # model, sampler, nfe, metric, value, proxy, trial
    ("edm", "heun", 9, "fid", 3.14159265358979, 4.5, 3),
    ("edm", "dpmpp_2m", 11, "fid", 2.718281828459045, None, 7),
    ("edm-cifar10", "heun", 18, "kid", 0.0123456789, 0.02, 12),
    ("ddpm-mnist", "ddim", 10, "fid", 12.5, 13.25, 0),
]
ESSENTIAL = ["model", "sampler", "NFE", "metric", "validated"]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    import optuna

    from skipsearch.settings import Settings
    from skipsearch.store import BestStore, Validation, default_storage_url
    folder = tmp_path_factory.mktemp("home")
    url = default_storage_url(Settings(home=folder))
    with BestStore(url) as store:
        for model, sampler, nfe, metric, value, proxy, trial in BEST:
            store.record(Validation(
                model_name=model, weights_sha256=SHA[model], sampler=sampler, nfe=nfe, metric=metric, value=value,
                n=2000, seeds="100000-101999", extractor="mnist-features", extractor_sha256="b" * 64,
                schedule_json=SkipSchedule.constant(0.9, 9).to_json(), space="layer", study_name=LONG_STUDY,
                trial_number=trial, proxy_value=proxy))
    storage = optuna.storages.RDBStorage(url)
    for name in (LONG_STUDY, "tiny"):
        study = optuna.create_study(storage=storage, study_name=name)

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", 0.0, 1.0)
            if trial.number == 1:
                raise optuna.TrialPruned()
            if trial.number == 2:
                raise RuntimeError("a failed trial")
            return x

        study.optimize(objective, n_trials=4, catch=(RuntimeError,))
    storage.engine.dispose()
    return folder


@pytest.fixture()
def term(home, monkeypatch):
    """A terminal of N columns reading the shared database."""
    monkeypatch.setenv("SKIPSEARCH_HOME", str(home))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")

    def at(columns: int) -> None:
        monkeypatch.setenv("COLUMNS", str(columns))
    at(80)
    return at


def _lines(text: str) -> list[str]:
    return text.rstrip("\n").splitlines()


def _table_rows(text: str, header: str) -> tuple[list[str], list[str]]:
    """The header line of the table that starts with ``header`` and the lines below its rule."""
    lines = _lines(text)
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    body = [line for line in lines[start + 2:] if line.strip() and not line.startswith("not shown:")]
    return lines[start], body


def test_best_fits_80_columns(term, capsys):
    result = run_cli(capsys, "best")
    assert result.code == 0, result.err
    assert all(len(line) <= 80 for line in _lines(result.out)), result.out
    assert "…" not in result.out
    header, body = _table_rows(result.out, "model")
    assert header.split()[:5] == ESSENTIAL  # a table, not the vertical layout
    assert len(body) == len(BEST)  # one line per row
    for model, sampler, nfe, metric, value, _proxy, _trial in BEST:
        line = next(line for line in body if line.split()[:2] == [model, sampler])
        assert line.split()[2:5] == [str(nfe), metric, f"{value:.4f}"], line
    assert not any(sha in result.out for sha in SHA.values())  # the full sha only with --wide
    assert "not shown:" in result.out and "--wide" in result.out


def test_best_wide_shows_everything(term, capsys):
    result = run_cli(capsys, "best", "--wide")
    assert result.code == 0, result.err
    assert all(sha in result.out for sha in SHA.values())
    header, body = _table_rows(result.out, "model")
    for name in [*ESSENTIAL, "study/trial", "n", "proxy", "space", "sha256", "updated"]:
        assert name in header.split(), header
    assert f"{LONG_STUDY}#3" in result.out and "not shown" not in result.out


def test_best_at_200_columns_shows_every_column_with_short_sha(term, capsys):
    term(200)
    result = run_cli(capsys, "best")
    assert result.code == 0, result.err
    assert all(len(line) <= 200 for line in _lines(result.out))
    header, body = _table_rows(result.out, "model")
    assert "sha256" in header and "updated" in header and "study/trial" in header
    assert SHA["edm"][:10] in result.out and SHA["edm"] not in result.out
    assert f"{LONG_STUDY}#12" in result.out


def test_best_narrow_terminal_is_vertical(term, capsys):
    term(30)
    result = run_cli(capsys, "best")
    assert result.code == 0, result.err
    assert "…" not in result.out
    assert "model: edm-cifar10" in result.out and "validated: 0.0123" in result.out
    assert result.out.count("model: ") == len(BEST)


def test_best_json_has_full_values(term, capsys):
    result = run_cli(capsys, "best", "--format", "json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert isinstance(rows, list) and len(rows) == len(BEST)
    for model, sampler, nfe, metric, value, proxy, trial in BEST:
        (row,) = [r for r in rows if (r["model_name"], r["sampler"], r["nfe"]) == (model, sampler, nfe)]
        assert row["weights_sha256"] == SHA[model] and row["value"] == value and row["proxy_value"] == proxy
        assert row["metric"] == metric and row["study_name"] == LONG_STUDY and row["trial_number"] == trial
        assert row["n"] == 2000 and row["untuned"] is False
        assert datetime.fromisoformat(row["updated_at"]).tzinfo is not None


def test_best_csv_parses(term, capsys):
    result = run_cli(capsys, "best", "--format", "csv", "--nfe", "9")
    assert result.code == 0, result.err
    (row,) = list(csv.DictReader(io.StringIO(result.out)))
    assert row["model_name"] == "edm" and row["weights_sha256"] == SHA["edm"]
    assert float(row["value"]) == BEST[0][4] and row["trial_number"] == "3"
    assert datetime.fromisoformat(row["updated_at"]).tzinfo is not None
    assert "\x1b" not in result.out


def test_best_formats_when_nothing_matches(term, capsys):
    assert json.loads(run_cli(capsys, "best", "--nfe", "99", "--format", "json").out) == []
    header = run_cli(capsys, "best", "--nfe", "99", "--format", "csv").out
    assert header.startswith("model_name,weights_sha256,") and len(_lines(header)) == 1


def test_bad_format_is_one_line(term, capsys):
    for command in ("best", "studies", "models"):
        assert_one_line_error(run_cli(capsys, command, "--format", "yaml"), "--format", "yaml")


@pytest.mark.parametrize("columns", [80, 200])
def test_studies_fit(columns, term, capsys):
    term(columns)
    result = run_cli(capsys, "studies")
    assert result.code == 0, result.err
    assert all(len(line) <= columns for line in _lines(result.out)), result.out
    assert "…" not in result.out and LONG_STUDY in result.out and "tiny" in result.out
    header, body = _table_rows(result.out, "study")
    assert "validated" in header and "trials" in header
    if columns == 200:
        for name in ("complete", "pruned", "failed", "proxy"):
            assert name in header
        line = next(line for line in body if line.startswith(LONG_STUDY))
        assert line.split()[1:5] == ["4", "2", "1", "1"], line  # trials, complete, pruned, failed


def test_studies_json(term, capsys):
    rows = json.loads(run_cli(capsys, "studies", "--format", "json").out)
    (row,) = [r for r in rows if r["study_name"] == LONG_STUDY]
    assert (row["trials"], row["complete"], row["pruned"], row["failed"]) == (4, 2, 1, 1)
    assert isinstance(row["best_proxy"], float) and row["best_validated"] is None
    assert datetime.fromisoformat(row["started"])


def test_models_fit_80_columns(term, capsys):
    result = run_cli(capsys, "models")
    assert result.code == 0, result.err
    assert all(len(line) <= 80 for line in _lines(result.out)), result.out
    assert "…" not in result.out
    header, _ = _table_rows(result.out, "name")
    assert header.split()[:3] == ["name", "skip", "points"]
    for name in ("edm-cifar10", "edm-imagenet64", "ddpm-mnist"):
        assert any(line.startswith(name + " ") for line in _lines(result.out)), name


def test_models_json_and_csv(term, capsys):
    rows = json.loads(run_cli(capsys, "models", "--format", "json").out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["edm-cifar10"]["skip_points"] == 15 and by_name["edm-imagenet64"]["skip_points"] == 16
    assert by_name["edm-cifar10"]["source"].startswith("https://")  # whole, not cut
    assert all(set(r) == {"name", "skip_points", "description", "source"} for r in rows)
    table = list(csv.DictReader(io.StringIO(run_cli(capsys, "models", "--format", "csv").out)))
    assert [r["name"] for r in table] == [r["name"] for r in rows]
    assert table[0]["description"] == rows[0]["description"]


def test_wrap_keeps_every_character():
    from skipsearch.export.tables import wrap
    path = "/home/user/projects/skipsearch/models/files/catemb-mnist.toml"  # any long path
    for width in (5, 12, 20, 60):
        lines = wrap(path, width)
        assert "".join(lines) == path and all(len(line) <= width for line in lines)
    assert wrap("bundled EDM (SongUNet) trained", 12) == ["bundled EDM", "(SongUNet)", "trained"]


def test_fit_columns_by_priority():
    from skipsearch.export.tables import Column, fit_columns
    rows = [{"a": "x" * 10, "b": "y" * 10, "c": "z" * 10, "d": "long words " * 6}]
    columns = [Column("a"), Column("b", 2), Column("c", 1), Column("d", wrap=True)]
    layout = fit_columns(rows, columns, 46)
    assert [(c.name, w) for c, w in layout] == [("a", 10), ("c", 10), ("d", 22)]  # b dropped first, d wraps
    assert [w for _, w in fit_columns(rows, columns, 200)] == [10, 10, 10, 66]  # all, whole
    assert [c.name for c, _ in fit_columns(rows, columns, 40, wide=True)] == ["a", "b", "c", "d"]
    assert fit_columns(rows, columns, 25) is None  # not even a and d: the vertical layout
