"""The package's import structure: no import circle between graphattn's modules.

Every ``import`` and ``from ... import`` statement of every module counts, wherever it
stands (module level, inside a function, under ``if TYPE_CHECKING:``): a circle closed
by a function-level import is still a circle, only a later one. ``from pkg import name``
is an edge to the submodule ``pkg.name`` when there is one, else to ``pkg`` itself; the
implicit import of a module's parent packages is not an edge (every module would then
sit in a circle with its package's ``__init__``).
"""

import ast
from pathlib import Path
from typing import Dict, List, Set

import graphattn

PACKAGE = Path(graphattn.__file__).parent

# The modules whose place in the layering this test holds: the graph value and what is
# built around it (one way: _csr <- _graph_build <- graph <- ordering, patterns).
GRAPH_MODULES = {
    "graphattn._csr",
    "graphattn._graph_build",
    "graphattn.graph",
    "graphattn.ordering",
    "graphattn.patterns",
}

# Circles elsewhere in the package that are known and not fixed yet, each as the sorted
# modules of one circle. Remove an entry when its circle is broken; add none.
KNOWN_CYCLES: List[List[str]] = []


def _modules() -> Dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The package's modules that ``module`` imports, anywhere in its source."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            targets.update(f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names)
    return {t for t in targets if t in modules and t != module}


def import_graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The import circles: each strongly connected set of two or more modules, sorted
    (Tarjan's algorithm, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(sorted(members))
    return sorted(found)


def _describe(cycle: List[str], graph: Dict[str, Set[str]]) -> str:
    inside = set(cycle)
    return "; ".join(f"{m} imports {', '.join(sorted(graph[m] & inside))}" for m in cycle)


def test_the_cycle_finder_finds_a_circle_and_only_that():
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(toy) == [["a", "b", "c"]]


def test_the_import_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "graphattn.graph" in graph["graphattn.ordering"]  # a module-level relative import
    assert "graphattn.ops" in graph["graphattn"]  # ``from . import ops``: the submodule


def test_the_graph_value_does_not_import_what_is_built_around_it():
    graph = import_graph()
    assert not graph["graphattn._csr"]
    assert graph["graphattn._graph_build"] == {"graphattn._csr"}
    assert "graphattn.ordering" not in graph["graphattn.graph"]
    assert "graphattn.patterns" not in graph["graphattn.graph"]


def test_no_import_cycle_between_graphattn_modules():
    graph = import_graph()
    found = cycles(graph)
    for cycle in found:
        assert not set(cycle) & GRAPH_MODULES, f"import circle through the graph modules: {_describe(cycle, graph)}"
    unexpected = [c for c in found if c not in KNOWN_CYCLES]
    assert not unexpected, "import circles: " + " | ".join(_describe(c, graph) for c in unexpected)
    fixed = [c for c in KNOWN_CYCLES if c not in found]
    assert not fixed, f"these known circles are gone: remove them from KNOWN_CYCLES: {fixed}"
