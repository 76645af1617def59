"""The maps stay true: every module of each package is named in its package's `__init__` docstring and
in docs/design.md, and every module those name exists (a stale name is as wrong as a missing one)."""

from __future__ import annotations

import ast
import re

import pytest
from support import ROOT

pytestmark = pytest.mark.unit

PACKAGES = ["fmnist_core", "fmnist_tracking", "sweeps", "sweeps/definitions", "sweeps/execution",
            "sweeps/analysis"]


def modules(package: str) -> set[str]:
    return {path.name for path in (ROOT / package).glob("*.py") if path.name != "__init__.py"}


def named_in(text: str) -> set[str]:
    return set(re.findall(r"\b([a-z_]+\.py)\b", text))


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_map_names_every_module_and_no_other(package):
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
    assert modules(package) <= named_in(docstring), f"{package}/__init__.py misses a module"
    # a name in the map that is no module of the package nor a sibling folder's file is stale
    tests = {path.name for path in (ROOT / "tests").rglob("test_*.py")}  # named as the check of a claim
    assert named_in(docstring) <= modules(package) | tests | {"cli.py"}


def test_design_names_every_module_and_benchmark_and_no_stale_one():
    design = (ROOT / "docs" / "design.md").read_text()
    mentioned = named_in(design)
    for package in PACKAGES:
        assert modules(package) <= mentioned, f"docs/design.md misses a module of {package}"
    assert {path.name for path in (ROOT / "bench").glob("*.py")} <= mentioned
    everything = {path.name for path in ROOT.rglob("*.py") if ".venv" not in path.parts}
    assert mentioned <= everything, f"docs/design.md names files that do not exist: {mentioned - everything}"


def test_no_module_docstring_names_a_file_that_is_gone():
    everything = {path.name for path in ROOT.rglob("*.py") if ".venv" not in path.parts}
    stale = []
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            gone = sorted(named_in(docstring) - everything)
            stale += [f"{path.relative_to(ROOT)}: {name}" for name in gone]
    assert stale == []
