"""sweeps/definitions/request.py: one request from the command line to the runner and the workers.

The CLI builds one SweepRequest from its options; `--workers N` hands it to each child whole (JSON),
so a child runs exactly what its parent was asked. And no function of the product but a click command
takes more than ten parameters: options travel as one object, not as loose keyword arguments.
"""

from __future__ import annotations

import ast
import json
import os

import pytest
from click.testing import CliRunner
from support import ROOT

from sweeps.definitions.request import SweepRequest

pytestmark = pytest.mark.unit


def test_a_request_survives_json_and_a_worker_runs_it_without_bar_fresh_or_create():
    asked = SweepRequest("hidden_size", impl="torch", overrides={"epochs": "2"}, max_seeds=4, margin=0.01,
                         time_budget=30.0, population=4, fresh=True, create=True, storage="postgresql://h/db",
                         data_dir=ROOT / "data")
    assert SweepRequest.from_json(asked.to_json()) == asked
    argv = asked.worker_argv(ROOT / "cli.py")
    assert argv[1:5] == [str(ROOT / "cli.py"), "sweep", "hidden_size", "--request"]
    worker = SweepRequest.from_json(argv[5])
    assert worker == asked.replace(fresh=False, create=False, progress=False)
    assert json.loads(argv[5])["data_dir"] == str(ROOT / "data")
    with pytest.raises(TypeError):  # an unknown setting is an error, as for RunConfig
        SweepRequest("hidden_size", epochs=3)


def test_the_cli_hands_the_runner_one_request_and_a_worker_its_parents(monkeypatch):
    from cli import cli
    from sweeps.execution import runner

    received = []
    monkeypatch.setattr(runner, "run_sweep", lambda request: received.append(request) or [])
    result = CliRunner().invoke(cli, ["sweep", "hidden_size", "--epochs", "2", "--set", "lr=0.1",
                                      "--max-seeds", "3", "--time-budget", "60", "--no-progress",
                                      "--storage", "sqlite:////tmp/x.db"])
    assert result.exit_code == 0, result.output
    [asked] = received
    assert asked == SweepRequest("hidden_size", overrides={"lr": "0.1", "epochs": 2}, max_seeds=3,
                                 time_budget=60.0, progress=False, storage="sqlite:////tmp/x.db",
                                 tracking_uri=os.environ["MLFLOW_TRACKING_URI"])  # conftest's store
    parent = asked.replace(seeds=None, margin=0.02)
    result = CliRunner().invoke(cli, ["sweep", "ignored", "--epochs", "9", "--request", parent.to_json()])
    assert result.exit_code == 0, result.output
    assert received[-1] == parent  # the child runs its parent's request, whatever else its argv says


def test_no_function_but_a_click_command_takes_more_than_ten_parameters():
    offenders = []
    paths = [*(ROOT / "sweeps").rglob("*.py"), *(ROOT / "fmnist_core").rglob("*.py"),
             *(ROOT / "fmnist_tracking").rglob("*.py"), ROOT / "cli.py"]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            arguments = node.args
            names = [a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]]
            names = [name for name in names if name not in ("self", "cls")]
            command = any("command" in ast.unparse(decorator) for decorator in node.decorator_list)
            if len(names) > 10 and not command:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({len(names)})")
    assert offenders == []
    assert len(paths) > 50
