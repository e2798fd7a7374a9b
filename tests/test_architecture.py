"""The shape of the code (../shared/DESIGN.md, CONTRIBUTING.md): data flows one way. Every import between
pawsight's modules — function-local ones included, which hide cycles from import-time checks — goes from a
higher layer to a lower (or the same) one, and no modules import each other in a circle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pawsight"

# Layers, lowest first. A module may import its own layer and the ones below, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"_version", "errors", "options", "storage", "progress", "system"}),
    ("data", {"images", "data", "cachedir", "cache", "dedup", "onnx_check"}),
    ("engine", {"normalize", "features", "backbones", "training", "evaluation", "models", "models.base",
                "models.classical", "models.transfer", "models.scratch", "models.neither", "models.deep"}),
    ("waist", {"run", "inference", "scoring"}),
    ("surfaces", {"api", "export", "predict", "inspect", "download", "choose", "report", "report.plots",
                  "report.explain", "report.html", "serve", "serve.app", "issues", "issues.quality",
                  "issues.labels", "issues.find", "issues.output", "issues.command", "ray_engine"}),
    ("entry points", {"cli", "__main__", ""}),  # "" is the package itself: its lazy API loads api
]
RANK = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports() -> dict[str, set[str]]:
    """module -> pawsight modules it imports anywhere in its file (names relative to the package)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [p for p in package if p]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                elif (node.module or "").startswith("pawsight"):
                    module = node.module.removeprefix("pawsight").lstrip(".")
                else:
                    continue
                targets = [f"{module}.{a.name}".strip(".") for a in node.names] + [module]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("pawsight").lstrip(".") for a in node.names
                           if a.name.startswith("pawsight")]
            for t in targets:
                if t in mods and t != name:
                    found.add(t)
                    break
        graph[name] = found
    return graph


def test_every_module_has_a_layer() -> None:
    assert set(modules()) - set(RANK) == set(), "put the new module in a layer above (and in CONTRIBUTING.md)"


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted(f"{m} ({LAYERS[RANK[m]][0]}) imports {d} ({LAYERS[RANK[d]][0]})"
                    for m, deps in imports().items() for d in deps if RANK[d] > RANK[m])
    assert upward == []


def test_no_import_cycles() -> None:
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_function_local_imports(tmp_path: Path, monkeypatch) -> None:
    """The checker itself must catch what it is for: a cycle hidden in a function-local import."""
    pkg = tmp_path / "pawsight"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from .run import x\n")
    (pkg / "run.py").write_text("from .errors import f\nx = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    graph = imports()
    assert graph["errors"] == {"run"} and graph["run"] == {"errors"}
