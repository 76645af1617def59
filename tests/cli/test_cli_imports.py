"""The command line answers at once: `--help` of every command, and a mistake that needs no store or data,
load none of torch, MLflow, Optuna and the other heavy packages (each fresh interpreter below starts clean:
an import made by an earlier test would hide one). The commands load them where they use them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # fresh interpreters

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "mlflow", "optuna", "matplotlib", "pandas", "scipy", "statsmodels")


def loaded_after(code: str) -> dict:
    """Run `code` in a fresh interpreter at the project root; it prints JSON, returned here."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_of_the_group_and_of_every_command_loads_no_heavy_package():
    seen = loaded_after(f"""
import json, sys
from click.testing import CliRunner
import cli
seen = {{}}
for args in ([], *[[name] for name in sorted(cli.cli.commands)]):
    result = CliRunner().invoke(cli.cli, [*args, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, (args, result.output)
    seen[" ".join(args) or "cli"] = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps(seen))
""")
    assert {"cli", "sweep", "best", "train", "runs", "serve", "report"} <= set(seen)
    assert {args: found for args, found in seen.items() if found} == {}


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "-1"], "lr"),
    (["train", "--epochs", "0"], "epochs"),
    (["sweep", "hidden_size", "--set", "lr"], "is not KEY=VALUE"),
    (["serve", "--port", "0"], "--port"),
])
def test_a_mistake_found_before_any_work_is_one_line_with_no_heavy_package(args, message):
    seen = loaded_after(f"""
import json, sys
from click.testing import CliRunner
import cli
result = CliRunner().invoke(cli.cli, {args!r})
print(json.dumps({{"code": result.exit_code, "output": result.output,
                  "loaded": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
""")
    assert seen["code"] == 2 and message in seen["output"] and "Traceback" not in seen["output"]
    assert seen["loaded"] == []


def test_the_store_modules_need_no_torch_and_the_data_no_torchvision():
    """`dashboard` loads the store's paths and the servers' commands: no MLflow, no torch; `runs` and `ui`
    the registry too: MLflow, never torch. Reading the data needs torch but not torchvision (which loads
    torch's compiler: seconds)."""
    seen = loaded_after("""
import json, sys
def heavy():
    return sorted(m for m in ("torch", "mlflow", "optuna") if m in sys.modules)
import fmnist_tracking.servers, fmnist_tracking.store
paths = heavy()
import fmnist_tracking.registry
registry = heavy()
import fmnist_core.data
print(json.dumps({"paths": paths, "registry": registry, "torchvision": "torchvision" in sys.modules}))
""")
    assert seen == {"paths": [], "registry": ["mlflow"], "torchvision": False}
