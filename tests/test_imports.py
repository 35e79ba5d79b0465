"""The import structure of src/: no cycles (deferred imports and packages included), no private names across modules."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SRC = REPO / "src"
KNOWN: set[frozenset[str]] = set()  # none left: keep it that way


def module_name(path: Path) -> str:
    """'src/jobs/files.py' -> 'src.jobs.files'; a package's __init__.py is the package itself."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from src... import names` and `import src...` in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "src":
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "src"]
    return found


def import_graph() -> dict[str, set[str]]:
    """src module -> the src modules it imports (a name that is a submodule counts as that submodule)."""
    modules = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for module, names in imports(path):
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            deps |= set(subs) if subs and len(subs) == len(names) else {module}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The groups of modules that reach each other through imports (strongly connected, more than one)."""
    reach = {m: set() for m in graph}
    for start in graph:
        todo = list(graph[start])
        while todo:
            m = todo.pop()
            if m in graph and m not in reach[start]:
                reach[start].add(m)
                todo.extend(graph[m])
    groups = {frozenset({m} | {n for n in reach[m] if m in reach[n]}) for m in graph}
    return [g for g in groups if len(g) > 1]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_packages_and_deferred_imports(tmp_path) -> None:
    graph = import_graph()
    assert {"src.weights.checkpoint", "src.weights.tfbundle", "src.jobs.files", "src.preprocess", "src.extraction"} <= set(graph)
    assert graph["src.weights.checkpoint"] >= {"src.weights.tfbundle", "src.weights.naming", "src.weights.unpickle"}
    deferred = tmp_path / "m.py"
    deferred.write_text("def f():\n    from src.jobs import files\n    from src.media import natural_key\n")
    assert imports(deferred) == [("src.jobs", ["files"]), ("src.media", ["natural_key"])]


def test_src_has_no_import_cycles() -> None:
    found = [sorted(g) for g in cycles(import_graph()) if g not in KNOWN]
    assert not found, f"import cycles: {found}"


def test_no_module_imports_a_private_name_of_another() -> None:
    private = [f"{path.relative_to(REPO)}: from {module} import {name}"
               for path in sorted(SRC.rglob("*.py")) for module, names in imports(path)
               for name in names if name.startswith("_")]
    assert not private, "private names imported across modules:\n" + "\n".join(private)
