"""Settings are read once, at the boundary, and passed down: what a Python caller passes is what every stage uses.

The environment points elsewhere (or holds values ``Settings.from_env()`` refuses) in these tests, so a stage that
still read it would look in the wrong folder or fail; and a static check keeps ``Settings.from_env()`` at the
boundary: the CLI and the documented public entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import skipsearch
from skipsearch.settings import Settings

PACKAGE = Path(skipsearch.__file__).parent

# Where Settings.from_env() may be called: the CLI, and public entry points whose ``settings=None`` means "read the
# environment now" (their docstrings say so). Everything they call gets the settings handed down.
ALLOWED = {
    "cli/app.py": None,  # the boundary: anywhere in the module
    "optimization.py": {"optimize", "run_definition"},
    "execution/session.py": {"open_session"},
    "models/loading.py": {"load_model", "list_models"},
    "models/checkpoints/presets.py": {"default_cache_dir"},
    "proxy/fid_proxy.py": {"FidProxy.__init__"},
    "proxy/stats.py": {"compute_reference_stats"},
    "data.py": {"mnist_root"},
    "store/engine.py": {"default_storage_url"},
    "export/dashboard.py": {"make_server"},
    "export/review.py": {"open_review"},
    "frontier.py": {"run_frontier"},
}
UNDOCUMENTED = {("frontier.py", "run_frontier")}  # its docstring is owned elsewhere (frontier work in progress)


def _from_env_calls(path: Path) -> list[tuple[str, str | None, int]]:
    """(enclosing qualname or '<module>', its docstring, line) of every ``*.from_env(...)`` call in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST, scope: list[str], doc: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own = ast.get_docstring(child)
                # a constructor's fallback may be documented on its class
                visit(child, [*scope, child.name], own or (doc if child.name == "__init__" else None))
                continue
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr == "from_env"):
                found.append((".".join(scope) or "<module>", doc, child.lineno))
            visit(child, scope, doc)

    visit(tree, [], ast.get_docstring(tree))
    return found


def test_from_env_only_at_the_boundary() -> None:
    stray, undocumented = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "settings.py":  # where it is defined
            continue
        for where, doc, line in _from_env_calls(path):
            allowed = ALLOWED.get(rel, set())
            if allowed is None:
                continue
            if where not in allowed:
                stray.append(f"skipsearch/{rel}:{line} in {where}")
            elif (rel, where) not in UNDOCUMENTED and "environment" not in (doc or ""):
                undocumented.append(f"skipsearch/{rel}:{line} {where}: the docstring does not say it reads it")
    assert not stray, ("Settings.from_env() below the boundary; take `settings` from the caller instead: "
                       + "; ".join(stray))
    assert not undocumented, "; ".join(undocumented)


def test_the_static_check_sees_a_call(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text('"""m"""\nclass A:\n    """Reads the environment."""\n    def __init__(self):\n'
                      "        self.s = Settings.from_env()\n\ndef f():\n    return g(Settings.from_env().cache)\n")
    assert [(w, line) for w, _, line in _from_env_calls(sample)] == [("A.__init__", 5), ("f", 8)]


# --------------------------------------------------------------------------------------------------------------------
# Behaviour: the environment says one thing, the settings another.


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _tiny_mnist(root: Path, n: int = 48) -> Path:
    """A folder with ``MNIST/raw`` test files of ``n`` random digits (all a loader needs for the test split)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    return root


@pytest.fixture()
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment's folders: a cache and home that must stay empty, an MNIST folder that does not exist."""
    env = tmp_path / "env"
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(env / "cache"))
    monkeypatch.setenv("SKIPSEARCH_HOME", str(env / "home"))
    monkeypatch.setenv("SKIPSEARCH_MNIST", str(env / "no-mnist-here"))
    return env


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_reference_statistics_and_mnist_follow_the_settings(tmp_path: Path, elsewhere: Path, bundled) -> None:
    """FidProxy(settings=...) computes its reference from the settings' MNIST into the settings' cache (it once
    loaded MNIST from $SKIPSEARCH_MNIST whatever the settings said)."""
    from skipsearch.proxy.config import ProxyConfig
    from skipsearch.proxy.fid_proxy import FidProxy
    mine = tmp_path / "mine"
    settings = Settings(home=mine / "home", cache=mine / "cache", mnist=_tiny_mnist(mine / "mnist"), offline=True)
    # the test split has no shipped statistics: a cache miss that loads the data set
    proxy = FidProxy(bundled, sampler="euler", nfe=5, settings=settings,
                     config=ProxyConfig(split="test", rungs=(8,)))
    (written,) = _files(mine / "cache")
    assert written.parent == mine / "cache" / "refstats" and written.name.startswith("mnist-test-mnist-features-")
    assert proxy.ref_stats.n == 48  # the settings' MNIST, not another copy
    assert _files(elsewhere) == []


def test_mnist_follows_the_settings(tmp_path: Path, elsewhere: Path) -> None:
    from skipsearch.data import load_mnist, mnist_root
    settings = Settings(cache=tmp_path / "cache", mnist=_tiny_mnist(tmp_path / "mine"))
    assert mnist_root(settings=settings) == tmp_path / "mine"
    images, labels = load_mnist("test", settings=settings)
    assert images.shape == (48, 1, 28, 28) and labels.shape == (48,)
    with pytest.raises(skipsearch.data.DatasetError, match="SKIPSEARCH_MNIST=.*no-mnist-here does not exist"):
        load_mnist("test")  # a script's call without settings: the environment's folder


def test_checkpoint_cache_follows_the_settings(tmp_path: Path, elsewhere: Path) -> None:
    from skipsearch.models import ModelError, load_model
    settings = Settings(home=tmp_path / "home", cache=tmp_path / "mine", offline=True)
    with pytest.raises(ModelError, match="not in the cache") as err:
        load_model("edm-cifar10", settings=settings)
    assert str(tmp_path / "mine" / "checkpoints" / "edm-cifar10-32x32-cond-vp.pkl") in str(err.value)
    assert "env" not in str(err.value).replace(str(tmp_path), "")


def test_finetune_budget_follows_the_proxy_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundled) -> None:
    """A fine-tuning objective without an explicit budget takes the S²-DM budget of its proxy's settings (it once
    read $SKIPSEARCH_S2DM_* instead)."""
    import optuna

    from skipsearch.proxy.config import ProxyConfig
    from skipsearch.proxy.fid_proxy import FidProxy
    from skipsearch.search.definition import SearchConfig
    from skipsearch.search.finetune import FinetuneBudget, FinetuneObjective
    from skipsearch.search.spaces import SpaceContext, get_space
    monkeypatch.setenv("SKIPSEARCH_S2DM_STEPS", "7")
    monkeypatch.setenv("SKIPSEARCH_S2DM_SEGMENTS", "not-a-number")  # any read of the environment would fail
    settings = Settings(cache=tmp_path / "cache", s2dm_steps=3, s2dm_segments=1, s2dm_batch=4)
    proxy = FidProxy(bundled, sampler="euler", nfe=5, config=ProxyConfig(rungs=(8,)), settings=settings)
    ctx = SpaceContext(num_skip_points=len(bundled.skip_points), level_of_point=bundled.level_of_points(),
                       num_steps=5)
    objective = FinetuneObjective(bundled, proxy, get_space("s2dm", ctx), space_name="s2dm",
                                  study=optuna.create_study(), search=SearchConfig(), weights_dir=tmp_path / "w",
                                  images=torch.zeros(4, *bundled.img_shape))
    assert objective.budget == FinetuneBudget(steps=3, segments=1, batch_size=4)


def test_the_store_does_not_read_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """connect() and BestStore take the lock timeout from the caller; a bad $SKIPSEARCH_LOCK_TIMEOUT (which
    Settings.from_env() refuses) no longer reaches them."""
    from skipsearch.store import BestStore
    from skipsearch.store.engine import connect
    from skipsearch.store.studies import artifact_dir
    monkeypatch.setenv("SKIPSEARCH_LOCK_TIMEOUT", "soon")
    monkeypatch.setenv("SKIPSEARCH_ARTIFACTS", str(tmp_path / "env-artifacts"))
    url = f"sqlite:///{tmp_path}/s.db"
    connect(url).dispose()
    with BestStore(url, lock_timeout=5.0) as store:
        assert store.best() == []
    assert artifact_dir(url, Settings()) == tmp_path / "artifacts"
    assert artifact_dir(url, Settings(artifacts=tmp_path / "mine")) == tmp_path / "mine"


@pytest.mark.slow  # a tiny study end to end (about 20 s on 2 cores)
def test_optimize_runs_on_the_settings_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """optimize(settings=...) with an environment Settings.from_env() refuses: every stage (store, model, proxy,
    trials, validation, export, review) works from the settings passed, and the environment's home stays empty."""
    from skipsearch import optimize
    for name in ("HEARTBEAT_SECONDS", "LOCK_TIMEOUT", "S2DM_STEPS", "S2DM_SEGMENTS", "S2DM_BATCH"):
        monkeypatch.setenv(f"SKIPSEARCH_{name}", "poison")
    monkeypatch.setenv("SKIPSEARCH_HOME", str(tmp_path / "env-home"))
    settings = Settings(home=tmp_path / "home", cache=tmp_path / "cache", offline=True, batch_calibration=False)
    result = optimize("edm", 5, settings=settings, trials=2, proxy__rungs=(16,), search__final_n=16,
                      search__validate_top_k=1, search__pruner="none", space_bounds__calibrate=False)
    assert result.best is not None and result.export_path is not None
    assert result.storage_url == f"sqlite:///{(tmp_path / 'home').resolve()}/skipsearch.db"
    assert result.export_path.is_relative_to((tmp_path / "home").resolve())
    assert not (tmp_path / "env-home").exists()
