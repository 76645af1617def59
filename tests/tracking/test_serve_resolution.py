"""What `cli.py serve` serves, without starting a server: `servers.served_model` resolves --sweep and
--model-uri on a real MLflow store, and the command's argv and environment are those `cli.exec_server`
would replace the process with (replaced here by a stand-in that records them).
tests/cli/test_cli_tracking.py starts a real server for --run-id and asks it for a prediction.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner

import cli as cli_module
from fmnist_core.checkpoint import save_checkpoint
from fmnist_core.config import RunConfig
from fmnist_core.data import CLASSES
from fmnist_tracking import names, run_log, store
from fmnist_tracking.servers import served_model

pytestmark = pytest.mark.integration

SWEEP = "hidden_size"  # a definition in sweeps/: `serve --sweep` knows it


def checkpoint(path: Path, seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed)
    state = {"fc1.weight": torch.randn(12, 784, generator=generator) * 0.05, "fc1.bias": torch.zeros(12),
             "fc2.weight": torch.randn(10, 12, generator=generator), "fc2.bias": torch.zeros(10)}
    return save_checkpoint(path, state_dict=state, config=RunConfig(hidden_size=12).as_dict(),
                           normalization={"mean": 0.2860, "std": 0.3530}, classes=CLASSES, metrics={}).path


def finished_run(client, experiment_id: str, path: Path, val_acc: float, tags: dict[str, str]) -> str:
    """A FINISHED run holding checkpoint.pt and best_val_acc, with no MLflow model yet (serve makes it)."""
    run = run_log.RunLogger.start(client, experiment_id, RunConfig(hidden_size=12), tags=tags)
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copyfile(path, Path(scratch, names.CHECKPOINT_ARTIFACT))
        client.log_artifact(run.run_id, str(Path(scratch, names.CHECKPOINT_ARTIFACT)))
    client.log_metric(run.run_id, "best_val_acc", val_acc)
    run.end()
    return run.run_id


@pytest.fixture
def runs(mlflow_store, tmp_path):
    """A sweep of two trial runs (best_val_acc 0.80, 0.85) and, outside it, a better lone run (0.90)."""
    client, experiment_id = store.setup(mlflow_store)
    sweep_tags = {names.SWEEP_TAG: SWEEP, "sweep_role": "trial"}
    made = {
        "worse": finished_run(client, experiment_id, checkpoint(tmp_path / "a.pt", 0), 0.80, sweep_tags),
        "sweep_best": finished_run(client, experiment_id, checkpoint(tmp_path / "b.pt", 1), 0.85, sweep_tags),
        "lone_best": finished_run(client, experiment_id, checkpoint(tmp_path / "c.pt", 2), 0.90, {}),
    }
    return client, experiment_id, made


@pytest.fixture
def exec_server(monkeypatch):
    """cli.exec_server replaced: what it was given is recorded, and no server starts."""
    calls = []
    monkeypatch.setattr(cli_module, "exec_server",
                        lambda argv, environment=None: calls.append((argv, environment)))
    return calls


def model_run(uri: str) -> str:
    return mlflow.models.get_model_info(uri).run_id


def test_serve_sweep_serves_the_sweeps_best_run_not_the_best_run_overall(runs, mlflow_store, exec_server):
    client, experiment_id, made = runs
    uri, what, classes = served_model(client, experiment_id, sweep=SWEEP)
    assert uri.startswith("models:/") and model_run(uri) == made["sweep_best"]
    assert f"run {made['sweep_best']}" in what and "no recommendation recorded" in what
    assert classes == list(CLASSES)

    result = CliRunner().invoke(cli_module.cli, ["serve", "--sweep", SWEEP, "--port", "5123",
                                                 "--tracking-uri", mlflow_store])
    assert result.exit_code == 0, result.output
    [(argv, environment)] = exec_server
    assert argv == [sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", uri,
                    "--env-manager", "local", "--host", "127.0.0.1", "--port", "5123"]
    assert environment["MLFLOW_TRACKING_URI"] == mlflow_store
    assert environment["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # uvicorn without a venv
    assert f"Serving {uri}: run {made['sweep_best']}" in result.output
    assert "probability i is class i: 0 T-shirt/top" in result.output


def test_serve_without_a_choice_serves_the_best_run_overall(runs, mlflow_store, exec_server):
    client, experiment_id, made = runs
    result = CliRunner().invoke(cli_module.cli, ["serve", "--tracking-uri", mlflow_store])
    assert result.exit_code == 0, result.output
    [(argv, _)] = exec_server
    assert model_run(argv[argv.index("--model-uri") + 1]) == made["lone_best"]


def test_serve_model_uri_serves_that_model_with_a_run_id_prefix_resolved(runs, mlflow_store, exec_server):
    client, experiment_id, made = runs
    logged, _, _ = served_model(client, experiment_id, run_id=made["worse"])  # the run's model, logged now
    assert model_run(logged) == made["worse"]
    prefix = made["worse"][:8]
    uri, what, classes = served_model(client, experiment_id, model_uri=f"runs:/{prefix}/model")
    assert uri == what == f"runs:/{made['worse']}/model" and classes == list(CLASSES)

    result = CliRunner().invoke(cli_module.cli, ["serve", "--model-uri", logged,
                                                 "--tracking-uri", mlflow_store])
    assert result.exit_code == 0, result.output
    [(argv, _)] = exec_server
    assert argv[argv.index("--model-uri") + 1] == logged
    assert f"Serving {logged}: {logged}" in result.output


def test_serve_says_how_a_run_picked_by_its_metric_stands_in_its_sweep(mlflow_store, tmp_path, exec_server):
    """Without --sweep, the best run overall may be one seed of a sweep: serve says what its sweep makes of
    it, as `best` does (cli.py hands sweeps/analysis/standing.py's sentences in)."""
    client, experiment_id = store.setup(mlflow_store)
    parent = run_log.RunLogger.start(client, experiment_id, RunConfig(hidden_size=12),
                                     tags={names.SWEEP_TAG: SWEEP, names.SWEEP_ROLE_TAG: names.PARENT})
    parent.end()
    trial = finished_run(client, experiment_id, checkpoint(tmp_path / "a.pt", 0), 0.85,
                         {names.SWEEP_TAG: SWEEP, names.SWEEP_ROLE_TAG: names.TRIAL,
                          names.PARENT_RUN_TAG: parent.run_id})
    result = CliRunner().invoke(cli_module.cli, ["serve", "--tracking-uri", mlflow_store])
    assert result.exit_code == 0, result.output
    assert f"run {trial}" in result.output
    assert f"no paired evidence for this sweep; run `python cli.py report {SWEEP}`" in result.output
