"""The project's layering, read from the source: ``utils/`` never imports ``models/``, ``models/`` never reaches the
data code, no two project modules import each other (directly or round a loop), and library modules and functions
stay small enough to read.

Every import counts, including those inside function bodies: a late import hides a cycle, it does not remove it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LIBRARY_LINES = 600
MAX_FUNCTION_LINES = 80


def project_files() -> dict[str, Path]:
    """Dotted module name -> file, for the top-level scripts and every module under models/ and utils/."""
    files = list(ROOT.glob("*.py")) + list((ROOT / "models").rglob("*.py")) + list((ROOT / "utils").rglob("*.py"))
    out = {}
    for f in files:
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imported_modules(tree: ast.AST, modules: set[str]) -> set[str]:
    """Project modules a file imports anywhere (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    return {name: imported_modules(ast.parse(f.read_text()), set(files)) - {name} for name, f in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_utils_never_imports_models():
    edges = [f"{m} -> {d}" for m, deps in import_graph().items() if m.startswith("utils")
             for d in sorted(deps) if d.startswith("models")]
    assert not edges, "utils/ imports models/: " + ", ".join(edges)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for d in graph.get(todo.pop(), ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_models_never_lean_on_the_data_code():
    """Building, loading and running a model needs no dataset code (not even through a utils module)."""
    graph = import_graph()
    found = {m: sorted(d for d in reachable(graph, m) if d.startswith("utils.data") or d == "utils.datasets")
             for m in graph if m.startswith("models")}
    assert not any(found.values()), {m: d for m, d in found.items() if d}


def test_no_import_cycle_between_project_modules():
    assert not cycles(import_graph())


def test_the_cycle_finder_finds_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["models", "utils"])
def test_library_modules_stay_short(package):
    long = {str(f.relative_to(ROOT)): n for f in (ROOT / package).rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LIBRARY_LINES}
    assert not long, f"over {MAX_LIBRARY_LINES} lines: {long}"


def test_functions_stay_short():
    long = []
    for f in project_files().values():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"over {MAX_FUNCTION_LINES} lines: {long}"
