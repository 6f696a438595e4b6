"""House rules that a reader relies on, measured on the source: no import cycle between ie-flow's
modules (imports inside functions count: they still tie the two modules together), stages import
neither Ray nor MLflow, no function over 60 lines, one version source, and no module outside an
estimator's own names its settings (the measurement contract: the smoothed measure's β is named in
its module only)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ie_flow"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _unit(module: str) -> str:
    """The graph's node: a top-level module, or a subpackage as a whole (its files may import each other)."""
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    """unit -> units it imports, from every import statement (module level or inside a function)."""
    edges: dict[str, set[str]] = {}
    paths = list(PACKAGE.rglob("*.py"))
    units = {_unit(_module_name(p)) for p in paths} - {"ie_flow"}  # everything may import the error type
    for path in paths:
        source = _unit(_module_name(path))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges.setdefault(source, set()).update(u for t in targets if (u := _unit(t)) in units and u != source)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    edges = import_graph()
    assert "ie_flow.cli" in edges and "ie_flow.jobs" in edges["ie_flow.cli"]  # the graph is read
    assert cycles(edges) == []


def test_stages_import_neither_ray_nor_mlflow():
    for path in (PACKAGE / "stages").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("ray", "mlflow") for n in names), (path.name, names)


def test_no_function_over_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{_module_name(path)}.{node.name}: {lines}")
    assert long == []


def test_one_version_source():
    """The package metadata reads the version from ie_flow.__version__; nothing else states one."""
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ie_flow.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __import__("ie_flow").__version__)


def test_beta_is_named_only_in_the_smoothed_module():
    """The pipeline asks every estimator the same things (estimators.base.Estimator): β, the smoothed
    measure's resolution, is one of its variants, and no other module names it."""
    found = sorted({_module_name(p) for p in PACKAGE.rglob("*.py") if re.search(r"beta", p.read_text())})
    assert found == ["ie_flow.estimators.smoothed"]
