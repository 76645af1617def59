"""No import cycles in the project's own code, type-only and lazy (in-function) imports included.

An `ast` walk, not an import: every `import` / `from ... import` anywhere in a module counts, inside
functions and `if TYPE_CHECKING:` blocks too, since each is an arrow a reader has to follow. Importing
`a.b.c` also runs `a` and `a.b` (their `__init__`), so a module depends on its parent packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import ROOT

pytestmark = pytest.mark.unit

PACKAGES = ("fmnist_core", "fmnist_tracking", "sweeps")
SCRIPTS = ("cli.py",)


def module_files(root: Path, packages=PACKAGES, scripts=SCRIPTS) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `packages` (packages as their `__init__`)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for script in scripts:
        if (root / script).exists():
            found[Path(script).stem] = root / script
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that `name` imports, anywhere in its file, plus its parent packages."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    resolved = set()
    for target in targets | parents:
        while target and target not in modules:  # `a.b.Name` -> module `a.b`
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, in name order: stable output)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def import_graph(root: Path, packages=PACKAGES, scripts=SCRIPTS) -> dict[str, set[str]]:
    modules = module_files(root, packages, scripts)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_the_project_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert len(graph) > 40 and graph["sweeps.execution.lease"]  # the walk found the project's modules
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_check_finds_type_only_lazy_and_package_cycles(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    type_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    (package / "b.py").write_text(type_only)
    (package / "sub" / "c.py").write_text("def f():\n    from ..sub import d\n")
    (package / "sub" / "d.py").write_text("from . import c\n")
    graph = import_graph(tmp_path, packages=("pkg",), scripts=())
    assert graph["pkg.sub.c"] == {"pkg", "pkg.sub", "pkg.sub.d"}  # lazy, relative, parents
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    (package / "b.py").write_text("import os\n")
    assert find_cycle(import_graph(tmp_path, packages=("pkg",), scripts=())) == ["pkg.sub.c", "pkg.sub.d",
                                                                                   "pkg.sub.c"]
    (package / "sub" / "d.py").write_text("import pkg.a\n")
    assert find_cycle(import_graph(tmp_path, packages=("pkg",), scripts=())) is None
