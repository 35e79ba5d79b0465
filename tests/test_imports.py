"""No module of src/ imports one that imports it back (directly or through others), deferred imports included."""
from __future__ import annotations

import re

from tests.conftest import REPO

IMPORT = re.compile(r"\s*(?:from\s+src\.(\w+)(?:\.\w+)*\s+import|import\s+src\.(\w+))")
KNOWN: set[frozenset[str]] = set()  # none left: keep it that way


def import_graph() -> dict[str, set[str]]:
    """src module -> the src modules it imports, read from every import line (module level or in a function)."""
    graph = {}
    for path in sorted((REPO / "src").glob("*.py")):
        matches = (IMPORT.match(line) for line in path.read_text().splitlines())
        deps = {m.group(1) or m.group(2) for m in matches if m}
        graph[path.stem] = deps - {path.stem}
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


def test_src_has_no_import_cycles() -> None:
    graph = import_graph()
    assert {"checkpoint", "tfbundle", "naming", "unpickle", "files"} <= set(graph)
    assert graph["checkpoint"] >= {"tfbundle", "naming", "unpickle"}  # the parser sees the real imports
    found = [sorted(g) for g in cycles(graph) if g not in KNOWN]
    assert not found, f"import cycles: {found}"
