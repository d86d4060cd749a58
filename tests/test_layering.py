"""The import directions of docs/ARCHITECTURE.md hold: lower layers never import higher ones, and no library module
imports a command-line tool (a module run with ``python -m``). Read from the source with ``ast``; nothing is run."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

PACKAGES = ("data_prep", "retriever", "eval", "query_generation")
# Layers, lowest first. A module may import its own layer and the layers below it, never a layer above.
LAYERS = (
    ("data_prep",),
    ("retriever.process_group", "retriever.page_sources", "retriever.pairs", "retriever.model", "retriever.scoring",
     "retriever.mining", "retriever.index"),
    ("eval",),
    ("retriever.training", "retriever.model_card", "retriever.train", "retriever.mine", "retriever.merge",
     "retriever.export", "retriever.tiny", "retriever.search", "retriever.report",
     "retriever.hparams"),
    ("query_generation",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p))
            for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))}


SOURCES = _sources()


def _imports(tree: ast.Module) -> set[str]:
    """Every project module a file imports (``from a.b import c`` counts ``a.b`` and ``a.b.c`` where that exists)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n in SOURCES and n.split(".")[0] in PACKAGES}


def _layer(module: str) -> int:
    best, depth = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


def _is_cli(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)
               for node in tree.body)


def test_every_module_has_a_layer() -> None:
    assert [m for m in SOURCES if m not in PACKAGES and _layer(m) < 0] == []


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{m} (layer {_layer(m)}) imports {i} (layer {_layer(i)})"
              for m, tree in SOURCES.items() for i in sorted(_imports(tree)) if _layer(i) > _layer(m)]
    assert upward == []


def test_no_module_imports_a_command_line_tool() -> None:
    clis = {m for m, tree in SOURCES.items() if _is_cli(tree)}
    assert {"eval.retrieval", "retriever.train", "query_generation.generate"} <= clis
    importers = [f"{m} imports {i}" for m, tree in SOURCES.items() for i in sorted(_imports(tree) & clis)]
    assert importers == []


@pytest.mark.parametrize("module", ["retriever.training.recipe", "eval.engine"])
def test_the_scan_sees_imports(module: str) -> None:
    assert _imports(SOURCES[module]), f"no project import found in {module}: the scan is broken"
