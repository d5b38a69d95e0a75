"""The import graph of src/pneumo has no cycle, and keeps its layers.

The graph is read from the source with ``ast``, not by importing: every ``import pneumo...`` and ``from pneumo...
import`` statement counts, at module level and inside functions alike. A lazy (function-level) import delays a
cycle to the first call rather than removing it: the two modules still cannot be understood, tested or moved apart,
and the cycles this test was written for (issue 22) ran through lazy imports. Imports under ``if TYPE_CHECKING:``
count too, for the same reason. ``from pneumo.a import b`` is an edge to the module ``pneumo.a.b`` when there is
one, else to ``pneumo.a``. The implicit import of a parent package (``pneumo.dicom`` before ``pneumo.dicom.sc``) is
not an edge; where a package's ``__init__`` re-exports its parts (``pneumo.imaging``, ``pneumo.modelfile``,
``pneumo.cli``) those are ordinary edges of the graph.

The layers: the inference path (predict, serve, the DICOM node, batch, the Python API) never reaches training,
evaluation, adaptation or the CLI; the package is at most ten floors deep (a sub-package counting once); no module is
longer than 450 lines (400 in the CLI).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str = "pneumo") -> dict[str, dict[str, str]]:
    """Module -> {imported module of ``package``: ``file:line`` of the first import of it}, for every .py under
    ``root/package``."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, dict[str, str]] = {}
    for mod, path in files.items():
        edges: dict[str, str] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    anchor = mod.split(".")[: len(mod.split(".")) - node.level + is_package]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                if target in files and target != mod:
                    edges.setdefault(target, f"{path.relative_to(root).as_posix()}:{node.lineno}")
        graph[mod] = edges
    return graph


def tangles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): the modules that import
    each other, directly or round a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One shortest cycle (``[a, b, ..., a]``) through each tangle (a module importing itself is not counted)."""
    return [_cycle_in(graph, set(c)) for c in tangles(graph)]


def _cycle_in(graph: dict[str, dict[str, str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (breadth-first)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in component and w != start and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def describe(graph: dict[str, dict[str, str]], cycle: list[str]) -> str:
    """``a -> b (a.py:12) -> a (b.py:40)``: each step with the place of its import statement."""
    steps = [cycle[0]]
    for a, b in itertools.pairwise(cycle):
        steps.append(f"{b} ({graph[a][b]})")
    return " -> ".join(steps)


def test_src_pneumo_has_no_import_cycle():
    graph = import_graph(SRC)
    found = [f"{describe(graph, _cycle_in(graph, set(t)))}   [tangled: {', '.join(t)}]" for t in tangles(graph)]
    assert not found, "import cycles in src/pneumo (break them; lazy imports count):\n" + "\n".join(found)


def test_the_graph_sees_module_level_function_level_and_package_imports():
    graph = import_graph(SRC)
    assert "pneumo.adapt.fit" in graph["pneumo.adapt.report"]  # module level, from-import of names
    assert "pneumo.training.grad_cam" in graph["pneumo.cli.predict"]  # inside a function (the explain command)
    assert "pneumo.atomic" in graph["pneumo.batch.parts"]  # ``from pneumo import atomic``: the submodule
    assert "pneumo.dicom" in graph["pneumo.dicom.node"] or "pneumo.dicom" in graph["pneumo.cli.serve"]  # the package


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_a_lazy_import_is_found_and_named(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from pkg import c\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "from pkg.a import f\n",  # imports into the cycle without being on it
        "pkg/sub/__init__.py": "",
        "pkg/sub/e.py": "from . import g\n",
        "pkg/sub/g.py": "from ..sub import e\n",  # relative imports resolve too
    })  # fmt: skip
    graph = import_graph(tmp_path, "pkg")
    described = sorted(describe(graph, c) for c in find_cycles(graph))
    assert described == [
        "pkg.a -> pkg.b (pkg/a.py:1) -> pkg.c (pkg/b.py:2) -> pkg.a (pkg/c.py:1)",
        "pkg.sub.e -> pkg.sub.g (pkg/sub/e.py:1) -> pkg.sub.e (pkg/sub/g.py:1)",
    ]


def test_an_acyclic_package_passes(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\n", "pkg/b.py": "import os\nimport pkg\n"})
    assert find_cycles(import_graph(tmp_path, "pkg")) == []


# The layers (issue 28). What predict, serve, the DICOM node, batch and the Python API load: it never reaches the
# training or evaluation code (nor the CLI), not even through a lazy import. PyTorch Grad-CAM for old graphs is
# handed in by the caller (``pneumo explain --method cam``), so the heat maps need no edge into training either.
INFERENCE_ENTRIES = (
    "pneumo", "pneumo.api", "pneumo.predict_io", "pneumo.serve.app", "pneumo.dicom.node", "pneumo.dicom.dicomweb",
    "pneumo.dicom.outputs", "pneumo.explain.explainer", "pneumo.batch.run",
)  # fmt: skip
NOT_FOR_INFERENCE = ("pneumo.training", "pneumo.evaluation", "pneumo.adapt", "pneumo.cli")
MAX_FLOORS = 10  # packages (a folder counts once) stacked by their imports
MAX_LINES, MAX_CLI_LINES = 450, 400


def reached_by(graph: dict[str, dict[str, str]], starts: tuple[str, ...]) -> dict[str, list[str]]:
    """Every module reachable from ``starts``, with one import path to it (breadth-first)."""
    paths = {s: [s] for s in starts if s in graph}
    frontier = list(paths)
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return paths


def forbidden_reaches(graph: dict[str, dict[str, str]], starts: tuple[str, ...], forbidden: tuple[str, ...]):
    """The import paths from ``starts`` to a module of a ``forbidden`` package."""
    below = tuple(f + "." for f in forbidden)
    reached = reached_by(graph, starts).items()
    return sorted(" -> ".join(path) for m, path in reached if m in forbidden or m.startswith(below))


def floors(graph: dict[str, dict[str, str]]) -> int:
    """The longest chain of imports between the package's parts, a sub-package counting as one part."""

    def part(m: str) -> str:
        return ".".join(m.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for m, targets in graph.items():
        edges.setdefault(part(m), set()).update(part(t) for t in targets if part(t) != part(m))
    memo: dict[str, int] = {}

    def height(v: str) -> int:
        if v not in memo:
            memo[v] = 1 + max((height(w) for w in edges.get(v, ())), default=0)
        return memo[v]

    return max(height(v) for v in edges)


def test_the_inference_layer_never_imports_training_evaluation_or_the_cli():
    found = forbidden_reaches(import_graph(SRC), INFERENCE_ENTRIES, NOT_FOR_INFERENCE)
    assert not found, "the inference path reaches training-side code:\n" + "\n".join(found)


def test_the_layer_rule_sees_a_lazy_import_two_steps_away(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/serve.py": "from pkg.maps import heat\n",
        "pkg/maps.py": "def heat():\n    from pkg.training.cam import grad\n",
        "pkg/training/__init__.py": "",
        "pkg/training/cam.py": "def grad():\n    pass\n",
    })  # fmt: skip
    graph = import_graph(tmp_path, "pkg")
    assert forbidden_reaches(graph, ("pkg.serve",), ("pkg.training",)) == ["pkg.serve -> pkg.maps -> pkg.training.cam"]
    assert floors(graph) == 3  # serve -> maps -> training (a folder counts once)


def test_the_package_is_at_most_ten_floors_deep():
    assert floors(import_graph(SRC)) <= MAX_FLOORS


def test_no_module_is_too_long():
    lengths = {p.relative_to(SRC).as_posix(): len(p.read_text().splitlines()) for p in (SRC / "pneumo").rglob("*.py")}
    too_long = {p: n for p, n in lengths.items() if n > (MAX_CLI_LINES if p.startswith("pneumo/cli/") else MAX_LINES)}
    assert not too_long, f"split these modules (at most {MAX_LINES} lines, {MAX_CLI_LINES} in the CLI): {too_long}"
