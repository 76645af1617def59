"""Tracking against a real MLflow store in tmp_path: what a run logs, how it ends, which run is best."""

from __future__ import annotations

import json
import os
import signal
import time

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from support import runs_with_prefixes

from fmnist_core import serving
from fmnist_core.config import RunConfig
from fmnist_core.trainer import Diverged
from fmnist_tracking import names, run_log, signals, store

TINY = RunConfig(hidden_size=8, epochs=2, batch_size=32, device="cpu", lr=0.05)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One short tracked run on synthetic data, shared by the tests that only read it."""
    from support import synthetic_splits

    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    splits = synthetic_splits(256, 64, 64, seed=0)
    result, run_id = run_log.train_tracked(TINY, splits=splits, tracking_uri=uri,
                                            checkpoint=root / "ckpt.pt")
    mlflow.set_tracking_uri(None)
    return {"uri": uri, "run_id": run_id, "result": result, "splits": splits, "checkpoint": root / "ckpt.pt"}


def test_a_short_run_logs_params_tags_one_value_per_epoch_and_final_metrics(tracked_run):
    client = MlflowClient(tracked_run["uri"])
    run, result = client.get_run(tracked_run["run_id"]), tracked_run["result"]
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in TINY.as_dict().items()}
    for name in run_log.EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2], name
        assert [m.value for m in history] == pytest.approx([epoch[name] for epoch in result.history]), name
    assert set(run.data.metrics) == set(run_log.EPOCH_METRICS) | set(run_log.FINAL_METRICS)
    for name, value in result.final_metrics().items():
        assert run.data.metrics[name] == pytest.approx(value)
    tags = run.data.tags
    assert tags["implementation"] == "manual" and tags["device"] == "cpu" and tags["device_name"]
    assert tags["torch_version"] == torch.__version__ and tags["dataset_digest"] == "synthetic"
    assert tags["git_dirty"] in ("true", "false", "unknown") and tags["git_commit"]
    assert tags["stop_reason"] == "completed" and names.FAILURE_TAG not in tags


def test_a_short_run_logs_figures_per_class_table_and_the_checkpoint(tracked_run, tmp_path):
    client, run_id = MlflowClient(tracked_run["uri"]), tracked_run["run_id"]
    files = {a.path for folder in (None, "plots") for a in client.list_artifacts(run_id, folder)}
    assert {"checkpoint.pt", "per_class_accuracy.json", "plots/learning_curves.png",
            "plots/confusion_matrix_test.png", "plots/misclassified_test.png"} <= files
    for name in ("learning_curves", "confusion_matrix_test", "misclassified_test"):
        png = client.download_artifacts(run_id, f"plots/{name}.png", str(tmp_path))
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    logged = client.download_artifacts(run_id, "checkpoint.pt", str(tmp_path))
    assert open(logged, "rb").read() == tracked_run["checkpoint"].read_bytes()
    table_file = client.download_artifacts(run_id, "per_class_accuracy.json", str(tmp_path))
    table = json.loads(open(table_file).read())
    rows = table["classes"]
    assert [row["index"] for row in rows] == list(range(10))
    assert sum(row["samples"] for row in rows) == len(tracked_run["splits"].test_y)
    # The table and the logged test_acc come from the same weights: they must agree.
    accuracy = sum(row["correct"] for row in rows) / sum(row["samples"] for row in rows)
    assert accuracy == pytest.approx(client.get_run(run_id).data.metrics["test_acc"])


def test_figures_made_later_from_what_the_run_logged_are_the_ones_it_logged_at_the_end(tracked_run, tmp_path):
    """What a sweep's trials leave for later (log_result(figures=False), then log_figures on demand)
    gives the same PNGs, to the byte, as a run that made them at the end."""
    client, run_id = MlflowClient(tracked_run["uri"]), tracked_run["run_id"]
    names = ["plots/learning_curves.png", "plots/confusion_matrix_test.png", "plots/misclassified_test.png"]
    at_the_end = {name: open(client.download_artifacts(run_id, name, str(tmp_path / "end")), "rb").read()
                  for name in names}
    assert sorted(run_log.log_figures(client, run_id, tracked_run["splits"])) == sorted(names)
    later = {name: open(client.download_artifacts(run_id, name, str(tmp_path / "later")), "rb").read()
             for name in names}
    assert later == at_the_end


def test_figures_of_a_run_without_a_checkpoint_or_of_no_run_are_refused_in_one_sentence(tracked_run):
    client = MlflowClient(tracked_run["uri"])
    experiment_id = client.get_run(tracked_run["run_id"]).info.experiment_id
    empty = client.create_run(experiment_id).info.run_id
    with pytest.raises(store.TrackingError, match="no readable checkpoint.pt"):
        run_log.log_figures(client, empty, tracked_run["splits"])
    with pytest.raises(store.TrackingError, match="no run 0123456789abcdef"):
        run_log.log_figures(client, "0123456789abcdef", tracked_run["splits"])


def test_the_logged_mlflow_model_predicts_the_classes_of_the_checkpoint(tracked_run):
    mlflow.set_tracking_uri(tracked_run["uri"])
    client = MlflowClient(tracked_run["uri"])
    [output] = client.get_run(tracked_run["run_id"]).outputs.model_outputs
    model_info = mlflow.models.get_model_info(f"models:/{output.model_id}")
    assert model_info.signature is not None and model_info.saved_input_example_info is not None
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{tracked_run['run_id']}/model")
    splits = tracked_run["splits"]
    pixels = serving.pixels_of(splits.test_x, splits.mean, splits.std).numpy()
    served = torch.as_tensor(pyfunc.predict(pixels))
    assert served.shape == (len(pixels), 10)
    assert torch.allclose(served.sum(1), torch.ones(len(pixels)), atol=1e-5)  # probabilities
    model, _ = serving.load_model(tracked_run["checkpoint"])
    assert torch.equal(served.argmax(1), serving.logits_of(model, splits.test_x).argmax(1))


def test_a_diverged_run_ends_failed_with_the_reason(mlflow_store, tiny_splits, tmp_path):
    cfg = RunConfig(hidden_size=8, epochs=2, batch_size=32, device="cpu", lr=1e6, weight_decay=0.0)
    with pytest.raises(Diverged):
        run_log.train_tracked(cfg, splits=tiny_splits, tracking_uri=mlflow_store,
                               checkpoint=tmp_path / "c.pt")
    [run] = MlflowClient(mlflow_store).search_runs([_experiment_id(mlflow_store)])
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags[names.FAILURE_TAG] and run.data.tags["stop_reason"] == "diverged"
    assert "checkpoint.pt" not in {a.path for a in MlflowClient(mlflow_store).list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("raised, status, reason", [
    (ValueError("boom"), "FAILED", "ValueError: boom"),
    (KeyboardInterrupt(), "KILLED", "Ctrl-C"),
    (signals.Terminated(), "KILLED", "SIGTERM"),
])
def test_every_exit_path_of_a_run_ends_it_with_a_status(mlflow_store, raised, status, reason):
    client, experiment_id = store.setup(mlflow_store)
    with pytest.raises(type(raised)):
        with run_log.RunLogger.start(client, experiment_id, TINY) as run:
            raise raised
    ended = client.get_run(run.run_id)
    assert ended.info.status == status and reason in ended.data.tags[names.FAILURE_TAG]
    run.end("FINISHED")  # idempotent: a second end changes nothing
    assert client.get_run(run.run_id).info.status == status


def test_sigterm_inside_handle_sigterm_ends_the_run_killed_and_the_old_handler_returns(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(signals.Terminated):
        with signals.handle_sigterm(), run_log.RunLogger.start(client, experiment_id, TINY) as run:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler's exception interrupts the sleep at once
    assert client.get_run(run.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_run_can_be_nested_under_a_parent_and_tagged(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    with run_log.RunLogger.start(client, experiment_id, TINY, run_name="parent") as parent:
        with run_log.RunLogger.start(client, experiment_id, TINY, parent_run_id=parent.run_id,
                                      tags={"sweep": "s1", "trial": "3"}) as child:
            child.set_tags({"dataset_digest": "abc"})
    tags = client.get_run(child.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent.run_id and tags["sweep"] == "s1" and tags["trial"] == "3"
    assert tags["dataset_digest"] == "abc"


def _logged_run(client, experiment_id, best_val_acc, status="FINISHED", tags=None, **overrides):
    run = run_log.RunLogger.start(client, experiment_id, TINY.replace(overrides), tags=tags)
    run.client.log_metric(run.run_id, "best_val_acc", best_val_acc)
    if status != "RUNNING":
        run.end(status)
    return run.run_id


def test_find_best_run_takes_the_best_finished_run_by_validation_only(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    _logged_run(client, experiment_id, 0.80)
    good = _logged_run(client, experiment_id, 0.85)
    _logged_run(client, experiment_id, 0.99, "FAILED")
    _logged_run(client, experiment_id, 0.98, "KILLED")
    running = _logged_run(client, experiment_id, 0.97, "RUNNING")
    _logged_run(client, experiment_id, 0.96, val_size=0)  # selected on training accuracy: not comparable
    _logged_run(client, experiment_id, 0.999, tags={"sweep": "s", "sweep_role": "parent"})
    in_sweep = _logged_run(client, experiment_id, 0.70, tags={"sweep": "s", "trial": "0"})
    _logged_run(client, experiment_id, 0.60, tags={"sweep": "s", "trial": "1"})
    for metric in ("best_val_acc", "val_acc"):
        assert store.find_best_run(client, [experiment_id], metric=metric).info.run_id == good
    assert store.find_best_run(client, [experiment_id], sweep="s").info.run_id == in_sweep
    with pytest.raises(store.TrackingError, match="test-set metric"):
        store.find_best_run(client, [experiment_id], metric="test_acc")
    with pytest.raises(store.TrackingError, match="unknown selection metric"):
        store.find_best_run(client, [experiment_id], metric="train_acc")
    with pytest.raises(store.TrackingError, match="no FINISHED run of sweep 'other'"):
        store.find_best_run(client, [experiment_id], sweep="other")
    client.set_terminated(running, "KILLED")


def test_a_run_is_found_by_its_id_or_by_a_start_of_it_that_only_it_has(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    ids, shared, unused = runs_with_prefixes(client, experiment_id)
    _, elsewhere = store.setup(mlflow_store, "other")
    other = client.create_run(elsewhere).info.run_id

    for given, found in ((ids[3], ids[3]), (ids[3][:8], ids[3]), (ids[3][:8].upper(), ids[3]),
                         (f" {ids[3][:12]} ", ids[3]), (other, other)):  # a whole id: in any experiment
        assert store.resolve_run(client, [experiment_id], given).info.run_id == found, given
    with pytest.raises(store.TrackingError) as several:
        store.resolve_run(client, [experiment_id], shared)
    message = str(several.value)
    assert message.startswith(f"run id {shared!r} is the start of several runs: ") and "give more" in message
    sharing = [i for i in ids if i.startswith(shared)]
    shown = sharing[:store.RUN_CHOICES_SHOWN]
    assert all(f"{i[:8]} (run-{ids.index(i)})" in message for i in shown)
    assert message.endswith("and more; give more of it") == (len(sharing) > len(shown))
    for nothing in (unused, other[:8], "zz'; drop", ""):  # `other` is in another experiment
        with pytest.raises(store.TrackingError, match="no run id starts with .*`python cli.py runs` lists"):
            store.resolve_run(client, [experiment_id], nothing)


def test_setup_refuses_a_missing_experiment_unless_asked_to_create_it(mlflow_store):
    with pytest.raises(store.TrackingError, match="no experiment 'nope'"):
        store.setup(mlflow_store, "nope", create=False)
    client, experiment_id = store.setup(mlflow_store, "nope")
    assert store.setup(mlflow_store, "nope", create=False)[1] == experiment_id
    location = client.get_experiment(experiment_id).artifact_location
    assert location.startswith(f"file://{store.local_artifact_root(mlflow_store)}")


def _experiment_id(uri: str) -> str:
    return MlflowClient(uri).get_experiment_by_name(store.DEFAULT_EXPERIMENT).experiment_id


def test_the_default_store_is_sqlite_inside_the_project_mlruns():
    assert store.default_tracking_uri() == f"sqlite:///{store.ROOT / 'mlruns' / 'mlflow.db'}"
    artifacts = store.local_artifact_root(store.default_tracking_uri())
    assert artifacts == store.ROOT / "mlruns" / "artifacts"

