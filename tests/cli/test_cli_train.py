"""`cli.py train` end to end, in-process through click on the real data: to completion (tracked and with
--no-track) and the divergence exit. Tiny settings (16 hidden units, one epoch, large batches) keep each
run to seconds; what is checked is what a user relies on: the checkpoint is the run's, its accuracy is
what the run logged, --no-track writes no run, and a diverged run ends in one line with exit code 1.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from cli import cli
from fmnist_core import serving
from fmnist_core.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e

TINY = ["--epochs", "1", "--hidden-size", "16", "--batch-size", "512", "--val-size", "1000",
        "--device", "cpu"]
EXPERIMENT = "train-test"
DIVERGING = ["--lr", "1e8"]  # the loss overflows within a few steps


def train(*args: str, store: str):
    return CliRunner().invoke(cli, ["train", *TINY, *args, "--tracking-uri", store,
                                    "--experiment", EXPERIMENT])


def only_run(store: str):
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [run] = client.search_runs([experiment.experiment_id])
    return run


def test_train_to_completion_logs_a_finished_run_whose_checkpoint_scores_what_it_logged(mlflow_store,
                                                                                        tmp_path):
    path = tmp_path / "model.pt"
    result = train("--checkpoint", str(path), store=mlflow_store)
    assert result.exit_code == 0, result.output
    run = only_run(mlflow_store)
    assert run.info.status == "FINISHED"
    assert f"MLflow run {run.info.run_id}" in result.output and f"Checkpoint: {path}" in result.output
    assert run.data.params["hidden_size"] == "16" and run.data.params["epochs"] == "1"
    checkpoint = load_checkpoint(path)
    assert checkpoint.config["hidden_size"] == 16
    evaluation, _ = serving.evaluate_file(path)  # the test set, recomputed from the file
    assert evaluation.accuracy == pytest.approx(run.data.metrics["test_acc"], abs=2 / 10_000)
    assert run.data.metrics["best_val_acc"] == pytest.approx(checkpoint.metrics["best_val_acc"])
    assert 0.5 < run.data.metrics["best_val_acc"] < 1.0  # one epoch of a small MLP learns this much


def test_no_track_writes_the_checkpoint_and_no_run(mlflow_store, tmp_path):
    path = tmp_path / "model.pt"
    result = train("--no-track", "--checkpoint", str(path), store=mlflow_store)
    assert result.exit_code == 0, result.output
    assert f"Checkpoint: {path}" in result.output and "MLflow run" not in result.output
    assert load_checkpoint(path).config["hidden_size"] == 16
    assert MlflowClient(mlflow_store).get_experiment_by_name(EXPERIMENT) is None  # nothing was tracked


def test_a_diverging_run_ends_in_one_line_with_exit_code_1_and_its_run_failed(mlflow_store, tmp_path):
    path = tmp_path / "model.pt"
    result = train(*DIVERGING, "--checkpoint", str(path), store=mlflow_store)
    assert result.exit_code == 1, result.output
    [line] = [text for text in result.stderr.splitlines() if text.startswith("Error")]  # after the bar
    assert line.startswith("Error: training diverged: non-finite loss at epoch 1")
    assert "Try a lower --lr" in line
    assert "Traceback" not in result.output
    run = only_run(mlflow_store)
    assert run.info.status == "FAILED" and run.data.tags["stop_reason"] == "diverged"
    assert not path.exists()


def test_a_diverging_untracked_run_ends_in_one_line_with_exit_code_1(mlflow_store, tmp_path):
    result = train(*DIVERGING, "--no-track", "--checkpoint", str(tmp_path / "model.pt"),
                   store=mlflow_store)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # an exit, not an exception: no traceback
    assert [text for text in result.stderr.splitlines() if text.startswith("Error: training diverged")]
