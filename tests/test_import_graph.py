"""mkvlib's modules import each other without a cycle, so that no import needs to hide inside a function to
break one.

The graph is read from the source with ``ast``: an edge for every ``import`` of an mkvlib module, at module
level or inside a function, plus the implicit one to a package's ``__init__`` that importing one of its
submodules from outside the package runs first.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mkvlib"
# cycles closed only by function-level imports in code other engineers own (the docs generator and
# `mkv reproduce`); a cycle through module-level imports is never allowed


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imported(node, name: str, path: Path, known) -> list[str]:
    """The mkvlib modules one import statement of module ``name`` (file ``path``) names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
    target = ".".join(base + ([node.module] if node.module else []))
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]


def graph(module_level_only: bool) -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if module_level_only else ast.walk(tree)
        deps = set()
        for node in nodes:
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in imported(node, name, path, known):
                parts = target.split(".")
                for i in range(2, len(parts) + 1):          # importing a.b.c runs a.b's __init__ first
                    step = ".".join(parts[:i])
                    inside = name == step or name.startswith(step + ".")
                    if step in known and step != name and (step == target or not inside):
                        deps.add(step)
        edges[name] = deps
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_module_level_imports_form_no_cycle():
    assert cycles(graph(module_level_only=True)) == []


def test_no_function_level_import_closes_a_cycle():
    assert cycles(graph(module_level_only=False)) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


CORE = "mkvlib.core"
CORE_LINES = 2500   # the whole method in at most about 2,500 lines


def test_the_core_imports_nothing_outside_it():
    """Every mkvlib import of a module under mkvlib/core/ (at module level or inside a function) stays in core."""
    edges = graph(module_level_only=False)
    outside = {name: sorted(d for d in deps if d != CORE and not d.startswith(CORE + ".") and d != "mkvlib")
               for name, deps in edges.items() if name == CORE or name.startswith(CORE + ".")}
    assert {name: deps for name, deps in outside.items() if deps} == {}


def test_the_core_fits_its_line_budget():
    import subprocess

    files = subprocess.run(["git", "ls-files", "mkvlib/core"], cwd=ROOT.parent, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files, "no files under mkvlib/core"
    lines = sum(len((ROOT.parent / f).read_text().splitlines()) for f in files)
    assert lines <= CORE_LINES, f"mkvlib/core holds {lines} lines, more than {CORE_LINES}"


def test_no_function_is_over_60_lines():
    """The library's functions stay short enough to read at once (the lean-library target: none over 60 lines)."""
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, path in modules().items() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, long
