"""The package's import graph has no cycles (docs/architecture.md): a module imports only from
the layers below it. Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "rnnlab"


def unit_of(path: Path) -> str:
    """A top-level module or subpackage of rnnlab: ``training``, ``runs``, ``cli``..."""
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and path.parent != SRC:
            units.add(unit_of(path))  # within its own subpackage
        for name in names:
            parts = name.split(".")
            if (
                parts[0] == "rnnlab"
                and len(parts) > 1
                and (SRC / parts[1]).exists() | (SRC / f"{parts[1]}.py").exists()
            ):
                units.add(parts[1])
    return units


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.parent == SRC and path.name in ("__init__.py", "__main__.py"):
            continue  # the package's facade re-exports everything lazily
        unit = unit_of(path)
        edges.setdefault(unit, set()).update(imported_units(path) - {unit})
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_package_import_graph_has_no_cycles():
    cycle = find_cycle(graph())
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_tasks_sit_above_the_loop_and_the_loop_knows_no_task():
    edges = graph()
    assert "training" in edges["tasks"] and "tasks" not in edges["training"]
    assert "tasks" not in edges["loading"] and "loading" in edges["tasks"]
