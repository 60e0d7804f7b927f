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


# ----------------------------------------------------------------------------- docs/mutation.md against the code

REPO = PACKAGE.parent
MUTATION_DOC = REPO / "docs" / "mutation.md"


def _defined(path: Path) -> set[str]:
    """The functions and classes a module defines at the top level, and its methods as `Class.method`."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}.{f.name}" for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
    return names


def _doc_section(title: str) -> str:
    text = MUTATION_DOC.read_text(encoding="utf-8")
    assert f"\n## {title}" in text, f"docs/mutation.md has no section {title!r}"
    return text.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def _doc_mutated() -> dict[str, list[str] | None]:
    """The doc's "What is mutated" list: module path -> the functions it names, or None (every function)."""
    import re

    listed = {}
    for m in re.finditer(r"^- `(mlan/[\w/]+\.py)`: (every function|only (.*))$", _doc_section("What is mutated"), re.M):
        listed[m.group(1)] = re.findall(r"`(\w+)`", m.group(3)) if m.group(3) else None
    return listed


def _mutate_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutate_script", REPO / "scripts" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mutation_doc_lists_what_is_mutated():
    """The modules and functions docs/mutation.md says are mutated are pyproject's `only_mutate` and
    scripts/mutate.py's FUNCTIONS, and every function it names there is defined in that module."""
    import tomllib

    only_mutate = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]["only_mutate"]
    functions = _mutate_script().FUNCTIONS
    listed = _doc_mutated()
    assert sorted(listed) == sorted(only_mutate)
    assert set(functions) <= set(only_mutate), "FUNCTIONS names a module mutmut does not mutate"
    assert {path: names for path, names in listed.items() if names is not None} == functions
    missing = [f"{path}: {f}" for path, names in functions.items() for f in names if f not in _defined(REPO / path)]
    assert not missing, "mutated functions that are not defined where they are said to be:\n" + "\n".join(missing)


def test_mutation_doc_names_functions_where_they_are():
    """Every `module.function` the doc names (survivors: `packing.pack` 15) is defined in that mutated module,
    every name followed by mutant numbers is written so, every module path named exists, and every test it
    names is in the test file named beside it."""
    import re

    text = MUTATION_DOC.read_text(encoding="utf-8")
    stems = {Path(p).stem: REPO / p for p in _doc_mutated()}
    qualified = re.findall(r"`((\w+)\.([\w.]+))`", text)
    named = [(full, stems[stem], rest) for full, stem, rest in qualified if stem in stems and rest != "py"]
    assert len(named) > 20  # the survivors' list names functions this way
    wrong = [f"{full} (not in {path.relative_to(REPO)})" for full, path, rest in named if rest not in _defined(path)]
    assert not wrong, "\n".join(wrong)
    numbered = re.findall(r"`([\w.]+)` \d", _doc_section("Mutants left alive on purpose"))
    assert numbered and all(n.split(".")[0] in stems for n in numbered), numbered
    paths = set(re.findall(r"`((?:mlan|tests|scripts)/[\w/]+\.py)`", text))
    assert not [p for p in paths if not (REPO / p).is_file()]
    for bullet in _doc_section("Tests added for this check").split("\n- ")[1:]:
        files = [REPO / f for f in re.findall(r"`(tests/\w+\.py)`", bullet)]
        tests = re.findall(r"`(test_\w+)`", bullet)
        defined = set().union(*(_defined(f) for f in files)) if files else set()
        assert files and all(t in defined for t in tests), bullet
