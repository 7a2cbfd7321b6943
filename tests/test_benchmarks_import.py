"""Every ``benchmarks/*.py`` script still imports: a benchmark that deep-imports a moved internal fails here, not in
the next person's measurement.

Each script is loaded by path (its ``main`` does not run: they all guard it with ``__name__ == "__main__"``), and
every ``skipsearch`` import in it, the ones inside functions included (several scripts import lazily so that
``--help`` is fast), is resolved: the module must exist and every imported name must be in it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert SCRIPTS, f"no scripts under {BENCHMARKS}"


def _skipsearch_imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every absolute import of skipsearch in the file, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names
                      if alias.name.split(".")[0] == "skipsearch"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "skipsearch":
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_benchmark_imports(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scripts import their siblings (gpu.py imports throughput.py) as a script run from benchmarks/ would.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    name = f"_skipsearch_benchmark_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)  # top-level code only; main() is behind __name__ == "__main__"
    assert module.__name__ != "__main__"

    missing = []
    for line, target, names in _skipsearch_imports(ast.parse(script.read_text(encoding="utf-8"), str(script))):
        try:
            imported = importlib.import_module(target)
        except ImportError as exc:
            missing.append(f"{script.name}:{line}: import {target}: {exc}")
            continue
        for attr in names:
            if attr == "*" or hasattr(imported, attr):
                continue
            try:  # a submodule not imported by its package's __init__
                importlib.import_module(f"{target}.{attr}")
            except ImportError:
                missing.append(f"{script.name}:{line}: {target} has no {attr}")
    assert not missing, "\n".join(missing)
