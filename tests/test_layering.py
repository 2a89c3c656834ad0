"""The import structure holds: ``pipelines -> components -> model`` (DESIGN §4), and no two packages of
``components/`` import each other, directly or around a loop.

Read from the source with ``ast`` rather than from ``sys.modules``: an import inside a function counts
(a lazy import that only hides a cycle is still a cycle), and nothing has to be importable to be checked.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as absolute dotted names (``from a import b``
    yields ``a`` and ``a.b``, since ``b`` may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path, root).split(".")
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def components_package(module: str) -> str | None:
    """``components.fit_flame.stage`` -> ``components.fit_flame``; a top-level module is its own unit."""
    parts = module.split(".")
    if parts[0] != "components" or len(parts) < 2:
        return None
    return f"components.{parts[1]}"


def package_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: [files that import it]}} over the packages of ``components/``."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((root / "components").rglob("*.py")):
        source = components_package(_module_name(path, root))
        for module in imported_modules(path, root):
            target = components_package(module)
            if target and source and target != source:
                files = graph[source][target]
                rel = str(path.relative_to(root))
                if rel not in files:
                    files.append(rel)
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_component_packages():
    graph = package_graph()
    assert graph, "no imports between components/ packages found: the scan is broken"
    loops = cycles(graph)
    lines = [
        f"{a} -> {b} ({', '.join(graph[a][b])})"
        for loop in loops
        for a in loop
        for b in sorted(graph[a])
        if b in loop
    ]
    assert not loops, "import cycles between components/ packages:\n  " + "\n  ".join(lines)


def test_cycle_finder_sees_a_loop_through_a_lazy_import(tmp_path):
    """The scan itself: an import inside a function closes a loop, and the loop is reported."""
    (tmp_path / "components" / "a").mkdir(parents=True)
    (tmp_path / "components" / "b").mkdir()
    (tmp_path / "components" / "c.py").write_text("X = 1\n")
    (tmp_path / "components" / "a" / "__init__.py").write_text("from components.b import thing\n")
    (tmp_path / "components" / "b" / "__init__.py").write_text("def f():\n    from components import a\n")
    (tmp_path / "components" / "b" / "thing.py").write_text("from ..c import X\n")
    graph = package_graph(tmp_path)
    assert dict(graph["components.b"]) == {
        "components.a": ["components/b/__init__.py"],
        "components.c": ["components/b/thing.py"],
    }
    assert cycles(graph) == [["components.a", "components.b"]]


def test_model_imports_nothing_above_it():
    """``model/`` is the ML library: it must not reach up into the stages or the orchestration."""
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / "model").rglob("*.py")
        for module in imported_modules(path)
        if module.split(".")[0] in ("components", "pipelines")
    )
    assert not offenders, "model/ imports from components/ or pipelines/:\n  " + "\n  ".join(offenders)


def test_components_import_nothing_from_pipelines():
    """Stages are pure ``run(config, inputs)`` plus a CLI; orchestration sits above them, never below."""
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / "components").rglob("*.py")
        for module in imported_modules(path)
        if module.split(".")[0] == "pipelines"
    )
    assert not offenders, "components/ imports from pipelines/:\n  " + "\n  ".join(offenders)
