"""flantune's modules import one another without cycles, imports inside functions included: each module reads
after the ones it uses (issue 23 removed the four there were)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flantune"


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, anywhere in its code."""
    root = package.parent
    modules = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
               for f in sorted(package.rglob("*.py"))}

    def module_of(name: str) -> str | None:  # `from a.b import c`: a.b.c if a module, else a.b
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, file in modules.items():
        here = name if file.name == "__init__.py" else name.rpartition(".")[0]
        used = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                used.update(module_of(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package `level - 1` above this module's
                    parts = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                used.update(module_of(f"{base}.{a.name}") for a in node.names)
        graph[name] = {m for m in used if m and m != name}
    return graph


def test_flantune_has_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert {"flantune.engine", "flantune.prelude", "flantune.training"} <= set(graph)
    assert "flantune.prelude" in graph["flantune.engine"]  # the graph holds the package's own imports
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"flantune's modules import in a circle: {' -> '.join(exc.args[1])}. Move what both need to a "
                    "module of its own.")
