"""The package's import graph, read statically: no cycles, and data flows one way (ARCHITECTURE.md).

Every `import` counts, at module level and inside functions (a function-level import only delays a
cycle, it does not remove it), except those under `if TYPE_CHECKING:`, which never run. "module:attr"
strings (the task-family registry) are not imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "grokking"
TRAINING = ("grokking.train", "grokking.batched")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(tree: ast.AST, name: str, modules: set[str]) -> set[str]:
    """The package modules a module's code imports (`from pkg import mod` counts as mod, `from mod import f` as mod)."""
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file() else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(ast.parse(p.read_text(), str(p)), module_name(p), modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring nodes on the stack)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module `start` imports, directly or not, with the module that imports it (for the message)."""
    seen, todo = {start: ""}, [start]
    while todo:
        node = todo.pop()
        for nxt in graph[node]:
            if nxt not in seen:
                seen[nxt] = node
                todo.append(nxt)
    seen.pop(start)
    return seen


def chain(via: dict[str, str], start: str, end: str) -> str:
    path = [end]
    while path[-1] != start and via.get(path[-1]):
        path.append(via[path[-1]])
    return " -> ".join(reversed(path))


def test_the_graph_sees_known_imports():
    """The reader itself: a module-level, a function-level and a TYPE_CHECKING-only import of known modules."""
    graph = import_graph()
    assert "grokking.store" in graph["grokking.run"]  # module level
    assert "grokking.run" in graph["grokking.experiments.sweep"]  # inside SweepRun.run
    assert "grokking.run" not in graph["grokking.store"]  # never imported
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from grokking import run\n")
    assert imported_modules(tree, "grokking.x", {"grokking.run", "grokking.x"}) == set()


def test_find_cycle_names_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(("layer", "forbidden"), [("grokking.reports", TRAINING), ("grokking.analysis", ("grokking.reports",))])
def test_layers_import_one_way(layer: str, forbidden: tuple[str, ...]):
    """Reports never reach training code; analysis never reaches reports (directly or through another module)."""
    graph = import_graph()
    bad = []
    for module in (m for m in graph if m == layer or m.startswith(layer + ".")):
        via = reachable(graph, module)
        bad += [chain(via, module, m) for m in via if m.startswith(forbidden)]
    assert bad == []
