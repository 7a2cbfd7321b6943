"""The folder layout is the pipeline: each stage imports only the stages below it (docs/architecture.md).

The layers, bottom to top; modules of one layer may import each other's, never one above. Every import counts,
also inside functions and ``TYPE_CHECKING`` blocks: a lazy import up the stack is still an arrow the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "skipsearch"
LAYERS: list[set[str]] = [
    {"errors"},
    {"settings", "registry", "lazy", "device", "inputs"},
    {"data"},
    {"store"},
    {"schedule"},
    {"models"},
    {"sampling"},
    {"proxy"},
    {"training"},
    {"search"},
    {"export"},
    {"execution"},
    {"optimization"},
    {"frontier"},
    {"cli", "__init__", "__main__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def arrows() -> list[tuple[str, str, str]]:
    """(stage, imported stage, file) for every import of another stage of the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        stage = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("skipsearch.") and (target := _stage(name)) != stage and target in LEVEL:
                    found.append((stage, target, str(rel)))
    return found


def test_every_stage_has_a_layer() -> None:
    stages = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
              if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert stages <= set(LEVEL), f"place these in LAYERS (and docs/architecture.md): {sorted(stages - set(LEVEL))}"


def test_no_import_points_up_the_stack() -> None:
    upward = sorted({f"{f}: {s} -> {t}" for s, t, f in arrows() if LEVEL[t] > LEVEL[s]})
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_package_level_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for stage, target, _ in arrows():
        graph.setdefault(stage, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    assert not [s for s in graph if reaches(s, s, {s})]
