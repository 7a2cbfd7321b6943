"""A reviewer's path through the real dashboard in a real headless chromium (selenium), on a tiny real study.

``skipsearch optimize`` (bundled model, tiny budget) fills a SQLite database; ``skipsearch dashboard`` serves it on a
free loopback port; chromium opens the study, a trial and its artifacts, the study note, and submits a verdict
through the review study's form. Screenshots go to ``$SKIPSEARCH_SCREENSHOTS`` (the committed ones, linked from
``dashboards/README.md``, were made with ``SKIPSEARCH_SCREENSHOTS=dashboards/screenshots``), else to a temporary
folder, so a test run leaves the checkout untouched. Skipped only where chromium or chromedriver cannot be found
(``scripts/ci_browser.sh`` installs Debian's packages), and failed instead under CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from helpers.ci import skip_or_fail
from helpers.cli import run_cli
from PIL import Image

from skipsearch.export.review import review_study_name, verdicts
from skipsearch.store.studies import optuna_storage

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("SKIPSEARCH_SCREENSHOTS") or Path(tempfile.gettempdir()) / "skipsearch-screenshots")
TINY = ["--nfe", "5", "--rungs", "24,48", "--final-n", "48", "--top-k", "2", "--trials", "4", "--device", "cpu",
        "--rho-min", "0.3", "--rho-max", "1.0"]  # a fixed rho range: no calibration sweep
WAIT = 60  # seconds for the dashboard's React app to fetch and draw (it polls the API every few seconds)
# Per-trial artifacts and the user attribute naming each (the sample grid is always there; the others once the
# objective writes them).
GRID, HEATMAP, SIDE_BY_SIDE = "sample_grid_artifact", "rho_heatmap_artifact", "side_by_side_artifact"


def _browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip the module saying what is missing (fail it under CI)."""
    browsers = ("chromium", "chromium-browser", "google-chrome")
    browser = next((path for name in browsers if (path := shutil.which(name))), None)
    drivers = ("/usr/lib/chromium/chromedriver", "/usr/lib/chromium-browser/chromedriver")
    driver = shutil.which("chromedriver") or next((p for p in drivers if os.path.exists(p)), None)
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    if missing:
        skip_or_fail(f"no {' and no '.join(missing)} on PATH: run 'bash scripts/ci_browser.sh' (Debian's chromium "
                     f"and chromium-driver) to run the browser test")
    return browser, driver


@dataclass
class Site:
    home: Path
    url: str  # storage URL
    base: str  # http://127.0.0.1:PORT
    study: optuna.Study
    export: Path
    driver: object  # selenium.webdriver.Chrome

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def shot(self, name: str, folder: Path = SHOTS) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        time.sleep(0.5)  # let MUI transitions (ripples, dialogs fading in) settle before the picture
        # Scrolling a wide row into view also scrolls sideways; the picture shows the page from its left edge.
        self.driver.execute_script("document.querySelectorAll('*').forEach(e => { if (e.scrollLeft) "
                                   "e.scrollLeft = 0; }); window.scrollTo(0, window.scrollY);")
        assert self.driver.save_screenshot(str(path)), path
        return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_dashboard(base: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/api/studies", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    raise AssertionError(f"skipsearch dashboard did not answer on {base} within 120 s")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    browser, chromedriver = _browser_binaries()  # skip before any work when there is no browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home}/skipsearch.db"
    export = home / "best.json"
    env = {**os.environ, "SKIPSEARCH_HOME": str(home), "SKIPSEARCH_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    ran = subprocess.run([sys.executable, "-m", "skipsearch.cli", "optimize", "--model", "edm", *TINY, "--storage",
                          url, "--export", str(export)], capture_output=True, text=True, env=env, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    names = [n for n in optuna.get_all_study_names(url) if not n.endswith(".review")]
    assert len(names) == 1, names
    study = optuna.load_study(study_name=names[0], storage=url)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "skipsearch.cli", "dashboard", "--storage", url, "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    driver = None
    try:
        _wait_for_dashboard(base, proc)
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            options.add_argument(arg)
        options.binary_location = browser
        driver = webdriver.Chrome(options=options, service=Service(chromedriver))
        yield Site(home, url, base, study, export, driver)
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.communicate(timeout=30)


# --------------------------------------------------------------------------------------------------------------------
# helpers (selectors by visible text, roles and aria labels: the UI is MUI/React, its class names are generated)


def _lit(text: str) -> str:
    """``text`` as an XPath string literal."""
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


def _by_text(text: str, tag: str = "*", *, part: bool = False) -> tuple[str, str]:
    """The innermost ``tag`` whose text (React may split it into several nodes) is ``text``, or contains it."""
    from selenium.webdriver.common.by import By
    test = f"contains(normalize-space(.), {_lit(text)})" if part else f"normalize-space(.)={_lit(text)}"
    return By.XPATH, f"//{tag}[{test} and not(.//*[{test}])]"


def _wait(site: Site, condition, what: str, timeout: float = WAIT):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(site.driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        body = site.driver.find_element("tag name", "body").text
        # Beside the study, not in dashboards/screenshots/ (those are the committed pictures of a passing run).
        shot = site.shot("failed-" + "".join(c if c.isalnum() else "-" for c in what) + ".png", site.home)
        raise AssertionError(f"timed out waiting for {what} at {site.driver.current_url} (screenshot {shot}); "
                             f"page text:\n{body[:3000]}") from None


def _visible(site: Site, locator: tuple[str, str], what: str):
    from selenium.webdriver.support import expected_conditions as EC
    return _wait(site, EC.visibility_of_element_located(locator), what)


def _click(site: Site, locator: tuple[str, str], what: str) -> None:
    from selenium.webdriver.support import expected_conditions as EC
    element = _wait(site, EC.element_to_be_clickable(locator), what)
    site.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def _page_text(site: Site) -> str:
    return site.driver.find_element("tag name", "body").text


def _study_id(site: Site, name: str) -> int:
    with urllib.request.urlopen(site.base + "/api/studies", timeout=30) as response:
        summaries = json.load(response)["study_summaries"]
    return next(s["study_id"] for s in summaries if s["study_name"] == name)


def _loaded_image(site: Site, alt: str):
    """The <img alt=...> of an artifact, once the browser has decoded it (naturalWidth > 0)."""
    from selenium.webdriver.common.by import By
    locator = (By.CSS_SELECTOR, f"img[alt={json.dumps(alt)}]")
    image = _visible(site, locator, f"artifact {alt}")
    site.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", image)
    _wait(site, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image),
          f"artifact {alt} to load")
    return image


def _artifacts(site: Site, trial: optuna.trial.FrozenTrial) -> dict[str, object]:
    """artifact id -> meta (filename, mimetype) of a trial, as Optuna stores them."""
    from optuna.artifacts import get_all_artifact_meta
    return {m.artifact_id: m for m in get_all_artifact_meta(trial, storage=site.study._storage)}


def _best_trial(site: Site) -> optuna.trial.FrozenTrial:
    """The trial the best table names (the validated winner, not necessarily the lowest proxy)."""
    from skipsearch.store import BestStore
    with BestStore(site.url) as store:
        (row,) = store.best("edm")
    return site.study.trials[row.trial_number]


# --------------------------------------------------------------------------------------------------------------------
# the reviewer's path


def test_study_list_and_overview(site: Site) -> None:
    from selenium.webdriver.common.by import By
    name = site.study.study_name
    study_id = _study_id(site, name)
    site.open("/dashboard")
    link = _visible(site, (By.CSS_SELECTOR, f"a[href$='/dashboard/studies/{study_id}']"), "the study in the list")
    assert f"{study_id}. {name}" in link.text.splitlines(), link.text  # the review study is listed too
    _click(site, (By.CSS_SELECTOR, f"a[href$='/dashboard/studies/{study_id}']"), "the study link")
    _wait(site, lambda d: d.current_url.rstrip("/").endswith(f"/dashboard/studies/{study_id}"), "the study page")
    # Drawn once the study's trials are fetched.
    _visible(site, _by_text("Best Trial (number=", part=True), "the best trial card")
    _visible(site, _by_text("Study User Attributes"), "the study user attributes")
    site.shot("01-study-overview.png")
    text = _page_text(site)
    assert name in text
    metrics = site.study.metric_names
    if metrics:  # a named metric replaces optuna-dashboard's "Objective 0"
        assert "Objective 0" not in text, "the study names its metric but the dashboard still shows 'Objective 0'"
        assert any(metric in text for metric in metrics), (metrics, text[:2000])


def test_trial_shows_its_artifacts(site: Site) -> None:
    from selenium.webdriver.common.by import By
    best = _best_trial(site)
    study_id = _study_id(site, site.study.study_name)
    site.open(f"/dashboard/studies/{study_id}")
    _click(site, (By.CSS_SELECTOR, f"a[href$='/studies/{study_id}/trials']"), "the Trials tab")
    _click(site, _by_text(f"Trial {best.number}"), f"trial {best.number} in the trial list")
    _visible(site, _by_text(f"Trial {best.number} (trial_id={best._trial_id})", "h4"), "the trial heading")
    metas = _artifacts(site, best)
    assert best.user_attrs.get(GRID) in metas, f"trial {best.number} has no sample grid artifact ({GRID})"
    expected = {key: metas[best.user_attrs[key]].filename for key in (GRID, HEATMAP, SIDE_BY_SIDE)
                if best.user_attrs.get(key) in metas}
    assert expected[GRID] == f"trial-{best.number}-samples.png"
    shown = {}
    for key, filename in expected.items():
        image = _loaded_image(site, filename)
        stored = Image.open(site.home / "artifacts" / best.user_attrs[key])
        # The browser decoded the very file in the artifact store (same pixel size), not a broken-image icon.
        width, height = site.driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                                   image)
        assert (width, height) == stored.size, (filename, (width, height), stored.size)
        shown[key] = image
    site.driver.execute_script("arguments[0].scrollIntoView({block: 'end'});", shown[GRID])
    site.shot("02-trial-artifacts.png")
    # Every PNG attached to the trial is on the page, named as uploaded.
    for meta in metas.values():
        if meta.mimetype == "image/png":
            _loaded_image(site, meta.filename)
    # The cards are thumbnails; a reviewer opens an artifact's link for the full picture.
    sources = {key: image.get_attribute("src") for key, image in shown.items()}
    for key, name in ((GRID, "03-trial-sample-grid.png"), (HEATMAP, "04-trial-rho-heatmap.png"),
                      (SIDE_BY_SIDE, "05-trial-side-by-side.png")):
        if key in sources:
            site.driver.get(sources[key])
            full = _visible(site, (By.TAG_NAME, "img"), f"{key} at full size")
            width = site.driver.execute_script("return arguments[0].naturalWidth", full)
            assert width == Image.open(site.home / "artifacts" / best.user_attrs[key]).width, (key, width)
            site.shot(name)


def test_study_note(site: Site) -> None:
    from selenium.webdriver.common.by import By
    study_id = _study_id(site, site.study.study_name)
    with urllib.request.urlopen(f"{site.base}/api/studies/{study_id}", timeout=30) as response:
        note = json.load(response)["note"]["body"]
    site.open(f"/dashboard/studies/{study_id}")
    _click(site, (By.CSS_SELECTOR, f"a[href$='/studies/{study_id}/note']"), "the Note tab")
    _wait(site, lambda d: d.current_url.endswith("/note"), "the note page")
    _visible(site, _by_text("Note", "h5"), "the note heading")
    if not note.strip():
        pytest.fail("the study has no note: run_definition should save one (optuna_dashboard.save_note)")
    # The markdown is rendered: its headings show as text (without the '#'), and the exported path is named.
    headings = [line.lstrip("#").strip() for line in note.splitlines() if line.startswith("#")]
    for heading in headings:
        _visible(site, _by_text(heading), f"note heading {heading!r}")
    site.shot("06-study-note.png")
    text = _page_text(site)
    review = review_study_name(site.study.study_name)
    for named in (str(site.export), review):  # where the schedule went, where verdicts go
        assert named in note and named in text, (named, note)
    site.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});",
                               _visible(site, _by_text(str(site.export), part=True), "the exported path"))
    site.shot("07-study-note-export-review.png")


def _best_json(capsys, site: Site) -> dict:
    result = run_cli(capsys, "best", "--model", "edm", "--format", "json", "--storage", site.url)
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)
    return row


def test_verdict_through_the_review_form_changes_best(site: Site, capsys, monkeypatch, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    monkeypatch.setenv("SKIPSEARCH_HOME", str(site.home))
    monkeypatch.setenv("SKIPSEARCH_OFFLINE", "1")
    best = _best_trial(site)
    before = _best_json(capsys, site)
    assert before["trial_number"] == best.number

    # The review study: one running trial per validated candidate, with the verdict form.
    name = review_study_name(site.study.study_name)
    review = optuna.load_study(study_name=name, storage=site.url)
    (target,) = [t for t in review.trials if t.user_attrs.get("reviews_trial") == best.number]
    assert target.state == optuna.trial.TrialState.RUNNING
    review_id = _study_id(site, name)
    site.open("/dashboard")
    link = _visible(site, (By.CSS_SELECTOR, f"a[href$='/dashboard/studies/{review_id}']"), "the review study")
    assert f"{review_id}. {name}" in link.text.splitlines(), link.text
    _click(site, (By.CSS_SELECTOR, f"a[href$='/dashboard/studies/{review_id}']"), "the review study link")
    _click(site, (By.CSS_SELECTOR, f"a[href$='/studies/{review_id}/trials']"), "the review study's Trials tab")
    _click(site, _by_text(f"Trial {target.number}"), f"review trial {target.number}")
    _visible(site, _by_text(f"Trial {target.number} (trial_id={target._trial_id})", "h4"), "the review trial")
    _visible(site, _by_text(f"reviews_trial {best.number}"), "the reviewed trial's number")
    grid = f"trial-{best.number}-samples.png"  # the candidate's images, copied next to the form
    assert grid in {m.filename for m in _artifacts(site, target).values()}
    _loaded_image(site, grid)

    form_heading = _visible(site, _by_text("Set User Attributes Form", "h5"), "the verdict form")
    form = form_heading.find_element(By.XPATH, "following-sibling::*[1]")
    site.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", form)
    site.shot("08-review-form.png")
    reject = form.find_element(By.XPATH, ".//*[@role='radiogroup']//label[normalize-space(.)='reject']")
    reject.click()
    radio = reject.find_element(By.TAG_NAME, "input")
    _wait(site, lambda d: radio.is_selected(), "the reject choice to be selected")
    comment = "speckle in the background (browser test)"
    form.find_element(By.CSS_SELECTOR, "input[type='text']").send_keys(comment)
    site.shot("09-review-form-filled.png")
    form.find_element(By.XPATH, ".//button[@type='submit']").click()

    # Stored with the review trial, in the same database (through the dashboard guard's user-attrs route).
    storage = optuna_storage(site.url)
    _wait(site, lambda d: "verdict" in storage.get_trial(target._trial_id).user_attrs, "the verdict to be stored")
    attrs = storage.get_trial(target._trial_id).user_attrs
    assert attrs["verdict_comment"] == comment
    verdict = verdicts(site.url, site.study.study_name)[best.number]
    assert verdict.rejected and verdict.comment == comment and verdict.review_trial == target.number
    stored = _visible(site, _by_text(f"verdict_comment {comment}"), "the stored comment on the page")
    site.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", stored)
    site.shot("10-review-submitted.png")

    # best and export now skip the rejected winner for the next best validated candidate, and say so.
    validated = {int(k): v["value"] for k, v in site.study.user_attrs["validated"].items()}
    runner_up = min((n for n in validated if n != best.number), key=validated.get)
    after = _best_json(capsys, site)
    assert after["trial_number"] == runner_up and after["value"] == pytest.approx(validated[runner_up])
    shown = run_cli(capsys, "best", "--model", "edm", "--storage", site.url)
    assert shown.code == 0, shown.err
    said = shown.out + shown.err
    assert f"trial {best.number} of study {site.study.study_name} was rejected by a reviewer" in said, said
    assert comment in said, said
    out = tmp_path / "schedule.json"
    exported = run_cli(capsys, "export", "-o", out, "--model", "edm", "--nfe", "5", "--storage", site.url)
    assert exported.code == 0, exported.err
    assert json.loads(out.read_text())["provenance"]["trial"] == runner_up
