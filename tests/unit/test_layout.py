"""The house's layout, read from the code's own imports: layers import downward only and nothing imports in
a circle.

The graph is built with ``ast`` from every module of ``hostkit/``, ``testcloud/`` and ``factory/``; an import
counts wherever it is written (module level, inside a function, under ``if TYPE_CHECKING``), since each one
is a dependency a reader has to follow. ``from package import module`` counts as an import of that module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hostkit", "testcloud", "factory")
Graph = dict[str, set[str]]  # module -> the project modules it imports

# Inside factory: a stage may import the stages before it, never one after it (docs/architecture.md).
FACTORY_ORDER = ("model", "images", "one", "harness", "release", "cli")
# Inside testcloud: drivers run guests and know nothing of OpenNebula; core is oned (pools, objects, the
# lifecycle) and drives the drivers; flow is OneFlow, an engine on top of core's documents and VMs; api
# serves core and flow over XML-RPC/HTTP; launcher wires them all together and daemon runs the launcher.
TESTCLOUD_ORDER = ("drivers", "core", "flow", "api", "launcher", "daemon")

# Violations still in the code, each named so that no new one slips in and a fixed one must leave the list
# (the check fails on a listed edge that is gone). Factory's belong to the engineers of its stages (issue 10).
KNOWN_UPWARD: set[str] = set()
KNOWN_CYCLES: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` names (itself, or the nearest package above it), or None if foreign."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                targets.add(target)
    # "from a.b import c" adds a.b and, where c is a module, a.b.c: keep the package only when nothing
    # deeper was named, so that importing a sibling module is not read as importing its package
    return {t for t in targets if not any(o.startswith(t + ".") for o in targets)}


@pytest.fixture(scope="module")
def graph() -> Graph:
    modules = _modules()
    return {name: _imports_of(name, path, modules) for name, path in modules.items()}


def _edges(graph: Graph) -> list[tuple[str, str]]:
    return sorted((src, dst) for src, targets in graph.items() for dst in targets)


def _rank(module: str, package: str, order: tuple[str, ...]) -> int | None:
    parts = module.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    return order.index(parts[1]) if parts[1] in order else None


def test_the_graph_sees_every_package(graph: Graph) -> None:
    """Guards the checks below against an empty or broken graph (they would pass vacuously)."""
    for package in PACKAGES:
        assert any(m.startswith(package + ".") for m in graph), package
    assert "testcloud.core.objects" in graph["testcloud.core.cloud"]
    assert "hostkit.fileio" in graph["testcloud.core.cloud"]


def test_no_import_cycle(graph: Graph) -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    found = {" -> ".join(c) for c in cycles}
    assert not found - KNOWN_CYCLES, "import cycles:\n" + "\n".join(sorted(found - KNOWN_CYCLES))
    assert not KNOWN_CYCLES - found, f"fixed, remove from KNOWN_CYCLES: {sorted(KNOWN_CYCLES - found)}"


def test_hostkit_imports_neither_factory_nor_testcloud(graph: Graph) -> None:
    bad = [(s, d) for s, d in _edges(graph) if s.startswith("hostkit") and not d.startswith("hostkit")]
    assert not bad, bad


def test_testcloud_never_imports_factory(graph: Graph) -> None:
    bad = [(s, d) for s, d in _edges(graph) if s.startswith("testcloud") and d.startswith("factory")]
    assert not bad, bad


def test_only_harness_and_cli_reach_the_launcher(graph: Graph) -> None:
    bad = [
        (s, d)
        for s, d in _edges(graph)
        if d in ("testcloud.launcher", "testcloud.daemon")
        and s.startswith("factory")
        and _rank(s, "factory", FACTORY_ORDER)
        not in (FACTORY_ORDER.index("harness"), FACTORY_ORDER.index("cli"))
    ]
    assert not bad, bad


@pytest.mark.parametrize(("package", "order"), [("factory", FACTORY_ORDER), ("testcloud", TESTCLOUD_ORDER)])
def test_layers_import_downward_only(graph: Graph, package: str, order: tuple[str, ...]) -> None:
    upward: set[str] = set()
    for src, dst in _edges(graph):
        low, high = _rank(src, package, order), _rank(dst, package, order)
        if low is not None and high is not None and high > low:
            upward.add(f"{src} -> {dst}")
    known = {edge for edge in KNOWN_UPWARD if edge.startswith(package + ".")}
    new = sorted(upward - known)
    assert not new, f"{package}: imports from a lower layer to a higher one:\n" + "\n".join(new)
    assert not known - upward, f"fixed, remove from KNOWN_UPWARD: {sorted(known - upward)}"


def test_every_layer_is_named(graph: Graph) -> None:
    """A new sub-package must be given its place in the order above, not slip past the layer check."""
    for package, order in (("factory", FACTORY_ORDER), ("testcloud", TESTCLOUD_ORDER)):
        for module in graph:
            parts = module.split(".")
            if parts[0] == package and len(parts) > 1:
                assert parts[1] in order, f"{module}: not in the {package} layer order {order}"
