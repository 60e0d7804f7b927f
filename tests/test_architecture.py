"""The package's shape: no import cycles between mlan's modules (counting every import: at the top,
inside functions and under `if TYPE_CHECKING:`), the shared layers (config, dataset schemas, io, paths,
errors) import no stage, and no module is over `MAX_LINES` lines. Read from the source (ast), nothing
imported."""

from __future__ import annotations

import ast
from pathlib import Path

import mlan

PACKAGE = Path(mlan.__file__).parent
# Layers every stage may use; they must not reach into a stage.
SHARED = (
    "mlan.config",
    "mlan.schemas",
    "mlan.io",
    "mlan.paths",
    "mlan.errors",
    "mlan.kinds",
    "mlan.hub",
    "mlan.images",
)
STAGES = (
    "mlan.data",
    "mlan.rationales",
    "mlan.train",
    "mlan.evaluate",
    "mlan.merge",
    "mlan.wings",
    "mlan.lab",
    "mlan.cli",
    "mlan.checkpoints",
)
# One job per module: a module past this many lines does several and is split by job.
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """mlan modules imported anywhere in the file: top level, inside functions and under `if TYPE_CHECKING:`
    (an import for annotations only still ties the two modules together)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from mlan.x import y` may name a submodule y or an attribute of mlan.x.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, set(files)) for name, path in files.items()}


def _in(name: str, layers: tuple[str, ...]) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_shared_layers_import_no_stage():
    bad = [
        f"{name} imports {dep}"
        for name, deps in sorted(_graph().items())
        if _in(name, SHARED)
        for dep in sorted(deps)
        if _in(dep, STAGES)
    ]
    assert not bad, "\n".join(bad)


def test_the_walk_sees_imports():
    """Not vacuous: known edges are found (a relative and an absolute import)."""
    graph = _graph()
    assert "mlan.errors" in graph["mlan.cli"]
    assert any(dep.startswith("mlan.config") for dep in graph["mlan.train.sft"])


def test_the_walk_sees_type_checking_imports(tmp_path):
    """An import under `if TYPE_CHECKING:` is an edge like any other."""
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from mlan.errors import MlanError\n")
    assert _imports(path, "mlan.m", {"mlan.errors", "mlan.m"}) == {"mlan.errors"}


def test_no_module_over_450_lines():
    sizes = {_module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    over = [f"{name}: {n} lines" for name, n in sorted(sizes.items()) if n > MAX_LINES]
    assert not over, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(over)
