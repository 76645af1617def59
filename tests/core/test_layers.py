"""The layers hold: the training core imports nothing of tracking, sweeps or the terminal.

Every core module is imported in a fresh interpreter (an import made by an earlier test or by
pytest itself would hide one), one after another, and what each brought in is checked.
"""

import json
import pkgutil
import subprocess
import sys

import pytest

import fmnist_core

pytestmark = pytest.mark.unit

CORE_MODULES = sorted(f"fmnist_core.{m.name}" for m in pkgutil.iter_modules(fmnist_core.__path__))
# What the core must never load: tracking, sweeps, plotting, the command line, schemas. (tqdm is
# not listed: `import torch` itself loads it.)
FORBIDDEN = ("mlflow", "optuna", "matplotlib", "click", "sqlalchemy", "pydantic", "yaml", "scipy",
             "sweeps", "fmnist_tracking")


def test_every_core_module_is_covered():
    assert {"fmnist_core.trainer", "fmnist_core.data", "fmnist_core.mlp_manual", "fmnist_core.mlp_torch",
            "fmnist_core.checkpoint", "fmnist_core.serving"} <= set(CORE_MODULES)


def test_the_core_loads_no_tracking_sweeps_or_terminal_code():
    # One fresh interpreter imports the modules one by one and reports, after each, what it brought
    # in that the core must not load: the first module to load one is the one named.
    code = (f"import importlib, json, sys\n"
            f"seen = {{}}\n"
            f"for module in {CORE_MODULES!r}:\n"
            f"    importlib.import_module(module)\n"
            f"    seen[module] = sorted(m for m in {FORBIDDEN!r} if m in sys.modules)\n"
            f"print(json.dumps(seen))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert list(loaded) == CORE_MODULES
    assert {module: found for module, found in loaded.items() if found} == {}
