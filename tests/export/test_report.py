"""``skipsearch report`` on a real tiny study of the bundled model: index.html, its plots and image grids."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers.cli import run_cli
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from skipsearch.schedule import SkipSchedule
from skipsearch.store import BestKey, BestStore
from skipsearch.store.records import StudyRecord, Validated

pytestmark = pytest.mark.slow
TINY = ["--nfe", "5", "--rungs", "24,48", "--final-n", "48", "--top-k", "1", "--device", "cpu", "--rho-min", "0.3",
        "--rho-max", "1.0"]
GRIDS = ("grid_best.png", "grid_rho1.png", "grid_paper.png")


class Page(HTMLParser):
    """Every ``<img src>`` and every table (by id) as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = attrs.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _env(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("SKIPSEARCH_HOME", str(home))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """One real tiny study (aggressive pruner, so some trials are pruned)."""
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home}/skipsearch.db"
    proc = subprocess.run([sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *TINY,
                           "--trials", "4", "--space", "linear", "--pruner", "aggressive", "--storage", url],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "SKIPSEARCH_HOME": str(home), "SKIPSEARCH_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (name,) = [n for n in optuna.get_all_study_names(url) if not n.endswith(".review")]  # not the review study
    return home, url, optuna.load_study(study_name=name, storage=url)


def test_report_index_html(study_run, tmp_path, capsys, monkeypatch):
    home, url, study = study_run
    _env(monkeypatch, home)
    out = tmp_path / "report"
    result = run_cli(capsys, "report", study.study_name, "-o", out, "--storage", url)
    assert result.code == 0, result.err
    for name in ("trials.csv", "trials.md", "fid_vs_rho.png", "fid_vs_nfe.png", "index.html"):
        assert (out / name).is_file(), name
    page = _parse(out / "index.html")
    html = (out / "index.html").read_text(encoding="utf-8")
    # Every picture the page shows lies beside it, and nothing else is referenced.
    assert page.images and all((out / src).is_file() and "/" not in src for src in page.images), page.images
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    # Header: the study's identity and counts.
    definition = StudyRecord(study).definition
    header = dict(row for row in page.tables["header"] if len(row) == 2)
    assert header["study"] == study.study_name and header["model"] == "edm"
    assert header["weights sha256"] == definition["weights_sha256"]
    assert header["sampler"] == definition["sampler"] and header["NFE"] == "5" and header["space"] == "linear"
    states = [t.state for t in study.get_trials()]
    assert header["trials"].startswith(f"{len(states)} (")
    assert f"{states.count(TrialState.PRUNED)} pruned" in header["trials"]
    # The validated table matches the study record and the store's validation history.
    validated = StudyRecord(study).validated()
    rows = {row[0]: row for row in page.tables["validated"][1:]}
    assert set(rows) == {str(n) for n in validated}
    assert any(v.baseline and "untuned" in v.baseline for v in validated.values())
    for number, entry in validated.items():
        row = dict(zip(page.tables["validated"][0], rows[str(number)]))
        assert row["validated"] == f"{entry.value:.4f}" and row["n"] == str(entry.n) and row["seeds"] == entry.seeds
        assert row["proxy"] == f"{entry.proxy:.4f}"
        assert row["label"] == (entry.baseline or "searched")
        assert row["95% CI"] == "CI not stored"
    with BestStore(url) as store:
        history = store.validations(BestKey("edm", definition["weights_sha256"], definition["sampler"], 5))
    history = [h for h in history if h.study_name == study.study_name]
    assert history
    for h in history:
        assert rows[str(h.trial_number)][3] == f"{h.value:.4f}"
    # Plots: the best trial's rho heatmap, one scatter per searched parameter, the optimisation history.
    params = sorted({k for t in study.get_trials() for k in t.params})
    assert {"rho_bottom", "rho_top", "s_churn"} <= set(params)  # heun is stochastic: churn is searched too
    for png in ["rho_heatmap.png", "history.png", *(f"scatter_{p}.png" for p in params), *GRIDS]:
        assert png in page.images, png
    assert len([s for s in page.images if s.startswith("scatter_")]) == len(params)
    # Grids: 16 images each (4 x 4 of 28 px with 2 px padding, shown at twice the size), real pictures.
    grids = [Image.open(out / g) for g in GRIDS]
    for grid in grids:
        assert grid.size == (2 * (4 * 30 + 2),) * 2
        assert np.unique(np.asarray(grid)).size > 2
    assert grids[1].tobytes() != grids[2].tobytes()  # rho = 1 and the paper recipe differ on the same seeds
    assert "seeds 0-15" in html


def test_report_no_images(study_run, tmp_path, capsys, monkeypatch):
    home, url, study = study_run
    _env(monkeypatch, home)
    out = tmp_path / "report"
    result = run_cli(capsys, "report", study.study_name, "-o", out, "--storage", url, "--no-images")
    assert result.code == 0, result.err
    page = _parse(out / "index.html")
    assert not any((out / g).exists() for g in GRIDS) and not set(GRIDS) & set(page.images)
    assert "rho_heatmap.png" in page.images and all((out / src).is_file() for src in page.images)
    assert "--no-images" in (out / "index.html").read_text(encoding="utf-8")


def test_report_escapes_markup(tmp_path, capsys, monkeypatch):
    """A hand-made study whose model name and failure reason carry HTML: shown as text, never as markup."""
    _env(monkeypatch, tmp_path)
    url = f"sqlite:///{tmp_path}/hand.db"
    study = optuna.create_study(study_name="handmade", storage=url)
    record = StudyRecord(study)
    record.set_definition({"model": "<b>bold-model</b>", "weights_sha256": "ab" * 32, "sampler": "heun", "nfe": 5,
                           "space": "constant", "metric": "fid", "space_bounds": {"rho_min": 0.3, "rho_max": 1.0}})
    rho = FloatDistribution(0.3, 1.0)
    schedule = SkipSchedule.constant(0.5, 2).to_dict()
    study.add_trial(create_trial(params={"rho": 0.5}, distributions={"rho": rho}, value=3.0,
                                 user_attrs={"schedule": schedule, "proxy_n24": 3.0}))
    study.add_trial(create_trial(params={"rho": 0.9}, distributions={"rho": rho}, state=TrialState.FAIL,
                                 user_attrs={"fail_reason": "<b>boom</b> & <script>alert(1)</script>"}))
    record.set_validated({0: Validated(n=48, value=2.5, proxy=3.0, seeds="1000000-1000047",
                                       baseline="<i>label</i>")})
    out = tmp_path / "report"
    result = run_cli(capsys, "report", "handmade", "-o", out, "--storage", url, "--no-images")
    assert result.code == 0, result.err
    html = (out / "index.html").read_text(encoding="utf-8")
    for markup in ("<b>", "<i>", "<script"):
        assert markup not in html
    assert "&lt;b&gt;bold-model&lt;/b&gt;" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;i&gt;label&lt;/i&gt;" in html
    page = _parse(out / "index.html")
    assert all((out / src).is_file() for src in page.images)
    # With images on, a model that cannot be loaded leaves the grids out with one note, not a failure.
    result = run_cli(capsys, "report", "handmade", "-o", tmp_path / "with-images", "--storage", url)
    assert result.code == 0, result.err
    assert "note: no image grids" in result.out
    assert "<b>" not in (tmp_path / "with-images" / "index.html").read_text(encoding="utf-8")
