"""One MLflow run per training: params and tags at the start, metrics per epoch, artifacts at the end.

The trainer knows nothing of MLflow; `RunLogger` plugs into it as the `on_epoch` callback
and logs the result afterwards. It talks to MLflow through `MlflowClient` with explicit run
ids, never the fluent active-run API, because a sweep keeps several runs open at once
(population training).

Status: a run ends FINISHED, FAILED (with a `failure_reason` tag, e.g. divergence) or KILLED
(Ctrl-C, SIGTERM under `signals.handle_sigterm`). `with RunLogger.start(...)` never leaves it RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import numpy
import torch
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from fmnist_core import data as fdata
from fmnist_core import serving
from fmnist_core.checkpoint import Checkpoint
from fmnist_core.config import RunConfig, first_line
from fmnist_core.trainer import Diverged, TrainResult, resolve_device, save_result, splits_for
from fmnist_tracking import export, plots
from fmnist_tracking.names import (
    CHECKPOINT_ARTIFACT,
    DATASET_DIGEST_TAG,
    FAILURE_TAG,
    MODEL_NAME,
    PARENT_RUN_TAG,
    STOP_REASON_TAG,
    VAL_CORRECT_ARTIFACT,
)
from fmnist_tracking.signals import Terminated, handle_sigterm, signals_deferred
from fmnist_tracking.store import DEFAULT_EXPERIMENT, TrackingError, device_name, git_state, setup

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                 "samples_per_second", "grad_norm", "clip_fraction", "dead_relu_fraction")
# best_val_acc and best_value (the objective at the best epoch) exist only with a validation split
FINAL_METRICS = ("test_loss", "test_acc", "best_epoch", "best_val_acc", "best_value")
MODEL_EXAMPLES = 5  # test images in the MLflow model's input example
SYSTEM_METRICS_SECONDS = 5.0  # between samples of a sweep's system metrics
_TAG_LIMIT = 5000  # characters kept of a failure reason (MLflow caps tag values at 8000)


class RunLogger:
    """One MLflow run: params and tags at the start, metrics per epoch, artifacts at the end."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str | None = None):
        """Wrap an existing run (`start` makes a new one); the experiment id is looked up when not given."""
        self.client, self.run_id = client, run_id
        self.experiment_id = experiment_id or client.get_run(run_id).info.experiment_id
        self._ended = False

    @classmethod
    def start(cls, client: MlflowClient, experiment_id: str, cfg: RunConfig, *, run_name: str | None = None,
              tags: dict[str, str] | None = None, parent_run_id: str | None = None,
              params: dict[str, object] | None = None, dataset: fdata.Splits | None = None,
              device: torch.device | None = None) -> RunLogger:
        """A new run of `cfg`: its params (`params` instead, e.g. a sweep's description of what it
        varies), tags naming the code and `device` (where its data was loaded: trainer.splits_for), and
        `dataset` as the run's MLflow dataset input. Without a device (a run that trains nothing here,
        e.g. a sweep's parent) the config's is named; an unavailable one fails before a run exists."""
        device = device if device is not None else resolve_device(cfg.device)
        commit, dirty = git_state()
        all_tags = {"implementation": cfg.impl, "device": str(device), "device_name": device_name(device),
                    "torch_version": torch.__version__, "git_commit": commit, "git_dirty": dirty,
                    "mlflow.source.name": "fmnist_core", "mlflow.source.type": "LOCAL"}
        if commit != "unknown":
            all_tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
        if parent_run_id:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        logger, run_name = None, run_name or default_run_name(cfg)
        try:
            # Callers make this one step for signals (the trial lease, train_tracked): a Ctrl-C between
            # these two lines would leave a run nobody closes.
            run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            logger = cls(client, run.info.run_id, experiment_id)
            params = cfg.as_dict() if params is None else params
            client.log_batch(logger.run_id, params=[Param(k, str(v)) for k, v in params.items()])
            if dataset is not None:
                log_dataset(client, logger.run_id, dataset)
        except BaseException as error:
            if logger is not None:  # the run exists: close it with the reason
                logger.__exit__(type(error), error, error.__traceback__)
            raise
        return logger

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set or overwrite tags. log_batch, not set_tag: workers that tag one run at once (the parent,
        a dead worker's run) race to insert a key; MLflow's SQL store retries log_batch on that
        conflict, while set_tag's insert fails with a unique-key violation."""
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """Every metric of one epoch in one call, at step = metrics["epoch"]."""
        step, now = int(metrics["epoch"]), int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in metrics.items() if k != "epoch"])

    def log_result(self, result: TrainResult, splits: fdata.Splits, checkpoint: Checkpoint, *,
                   figures: bool = True, model: bool = True) -> None:
        """Final metrics, figures, per-class accuracy, per-image validation correctness, the checkpoint
        (one upload of one folder: a round trip per run, not per file, to a tracking server) and the
        MLflow model. `checkpoint`: the result's, as `save_result` wrote and checked it; its file is
        uploaded as it is, not read back. `figures=False` (a sweep's trials) leaves the three figures to
        `log_figures`, which makes them later from what is logged here: rendering them costs about 1 s of
        CPU a run, more than the rest of this put together. `model=False` (a sweep's trials) leaves the
        MLflow model to where a run is served or registered (`export.ensure_model` logs it from
        checkpoint.pt then): torch.export of every trial's network served nobody."""
        if checkpoint.path is None:
            raise ValueError("log_result uploads a checkpoint file: pass what save_result returned")
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, result.best_epoch)
                                  for k, v in result.final_metrics().items()],
            tags=[RunTag(STOP_REASON_TAG, result.stop_reason)])
        # The test predictions of the trainer's own test pass (a result made elsewhere: a pass of the
        # checkpoint): per-class table, figures.
        test = evaluate_on_test(checkpoint, splits) if result.test_predictions is None else \
            serving.evaluation_of(result.test_predictions, splits.test_y, result.test_loss)
        with tempfile.TemporaryDirectory(prefix="fmnist-result-") as scratch:
            folder = Path(scratch)
            if figures:
                pixels = serving.pixels_of(splits.test_x, splits.mean, splits.std)  # misclassified images
                save_figures(folder, run_figures(result.config, result.history, result.best_epoch, test,
                                                 pixels, splits))
            (folder / "per_class_accuracy.json").write_text(json.dumps(
                {"split": "test", "accuracy": test.accuracy,
                 "classes": serving.per_class_table(test, splits.classes)}, indent=2))
            if result.val_correct is not None:  # which validation images the best epoch got right
                numpy.save(folder / VAL_CORRECT_ARTIFACT, result.val_correct.numpy())
            shutil.copyfile(checkpoint.path, folder / CHECKPOINT_ARTIFACT)
            self.client.log_artifacts(self.run_id, scratch)
        if model:
            example = serving.pixels_of(splits.test_x[:MODEL_EXAMPLES], splits.mean, splits.std)
            export.log_mlflow_model(self.client, self.experiment_id, self.run_id, checkpoint,
                                    example.numpy(), name=MODEL_NAME)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Close the run as FINISHED, FAILED or KILLED; a second call does nothing."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        if self._ended:
            return
        with signals_deferred():  # a second Ctrl-C must not leave the run RUNNING halfway through
            if reason:
                self.set_tags({FAILURE_TAG: reason[:_TAG_LIMIT]})
            self.client.set_terminated(self.run_id, status)
            self._ended = True

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None:
            self.end("FINISHED")
        elif isinstance(error, Diverged):
            self.set_tags({STOP_REASON_TAG: "diverged"})
            self.end("FAILED", str(error))  # "training diverged: non-finite loss at epoch E, step S"
        elif isinstance(error, KeyboardInterrupt):
            self.end("KILLED", "interrupted (Ctrl-C / SIGINT)")
        elif isinstance(error, Terminated):
            self.end("KILLED", "terminated (SIGTERM)")
        else:
            self.end("FAILED", f"{type(error).__name__}: {error}")
        return False


def train_tracked(cfg: RunConfig, *, data_dir=None, tracking_uri: str | None = None,
                  experiment: str = DEFAULT_EXPERIMENT, checkpoint: Path | None = None,
                  splits: fdata.Splits | None = None, run_name: str | None = None,
                  tags: dict[str, str] | None = None) -> tuple[TrainResult, str]:
    """`cli.py train`: train with a progress bar, every epoch and the result logged to one run."""
    from fmnist_tracking.console import train_with_progress

    client, experiment_id = setup(tracking_uri, experiment)
    if splits is None:  # loaded before the run starts: missing data is an error, not a FAILED run
        splits = splits_for(cfg, data_dir)
    with handle_sigterm():
        with signals_deferred():  # the run made and `run` bound, or neither: every run made gets closed
            run = RunLogger.start(client, experiment_id, cfg, run_name=run_name, dataset=splits,
                                  device=splits.device,
                                  tags={DATASET_DIGEST_TAG: splits.digest, **(tags or {})})
        with run:
            click.echo(f"MLflow run {run.run_id} in experiment {experiment!r} ({client.tracking_uri})")
            result = train_with_progress(cfg, splits, on_epoch=run.log_epoch)
            saved = save_result(result, splits, checkpoint)
            click.echo(f"Checkpoint: {saved.path}")
            started = time.monotonic()  # seconds of figures and the MLflow model's export: say so
            click.echo("Logging to the MLflow run: test metrics, figures, checkpoint, MLflow model")
            run.log_result(result, splits, saved)
            click.echo(f"Logged in {time.monotonic() - started:.1f} s")
    return result, run.run_id


@contextlib.contextmanager
def system_metrics(client: MlflowClient, run_id: str,
                   interval: float = SYSTEM_METRICS_SECONDS) -> Iterator[None]:
    """MLflow system metrics (CPU, memory, disk, network; GPU where there is one) logged to `run_id`
    every `interval` seconds while the block runs: how busy the machine was during a sweep."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started monitoring" lines
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True,
                                   tracking_uri=client.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def run_figures(cfg: RunConfig, history: list[dict[str, float]], best_epoch: int, test: serving.Evaluation,
                pixels: torch.Tensor, splits: fdata.Splits) -> dict[str, Figure]:
    """A finished run's figures by artifact path: learning curves, test confusion, misclassified images."""
    title = f"{cfg.impl} MLP 784-{cfg.hidden_size}-10, {cfg.activation}, lr {cfg.lr:g}"
    return {"plots/learning_curves.png": plots.learning_curves(history, title=title),
            "plots/confusion_matrix_test.png": plots.confusion_matrix(
                test.confusion, splits.classes, title=f"test set, best epoch {best_epoch}"),
            "plots/misclassified_test.png": plots.misclassified_grid(pixels, splits.test_y, test.predictions,
                                                                     splits.classes)}


def save_figures(folder: Path, figures: dict[str, Figure]) -> None:
    for name, figure in figures.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / name)


def evaluate_on_test(checkpoint: Checkpoint, splits: fdata.Splits) -> serving.Evaluation:
    """The checkpoint's predictions on the test split: confusion matrix, per-class table, figures."""
    return serving.evaluate(serving.plain_model(checkpoint.state_dict, checkpoint.config["activation"]),
                            splits.test_x, splits.test_y)


def log_figures(client: MlflowClient, run_id: str, splits: fdata.Splits) -> list[str]:
    """Make a finished run's three figures now and log them to it; returns their artifact paths.

    They come from what the run logged: its per-epoch metrics (the curves) and its checkpoint.pt (the test
    predictions), so they are the figures `log_result` would have made. A sweep makes them this way for
    its best run when it closes; `cli.py figures RUN_ID` for any other.
    """
    try:
        client.get_run(run_id)
    except MlflowException as error:
        raise TrackingError(f"no run {run_id} in {client.tracking_uri}: {first_line(error)}") from None
    checkpoint = export.run_checkpoint(client, run_id, "figures are made from it (a finished run has one)")
    cfg = RunConfig.from_dict(checkpoint.config, source=f"run {run_id}'s checkpoint")
    test = evaluate_on_test(checkpoint, splits)
    pixels = serving.pixels_of(splits.test_x, splits.mean, splits.std)
    figures = run_figures(cfg, logged_history(client, run_id), int(checkpoint.metrics["best_epoch"]), test,
                          pixels, splits)
    with tempfile.TemporaryDirectory(prefix="fmnist-figures-") as folder:
        save_figures(Path(folder), figures)
        client.log_artifacts(run_id, folder)
    return list(figures)


def logged_history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    """The run's learning curves as the trainer's history: one dict per epoch (step), in order."""
    by_epoch: dict[int, dict[str, float]] = {}
    for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
        for metric in client.get_metric_history(run_id, name):
            by_epoch.setdefault(metric.step, {})[name] = metric.value
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def log_dataset(client: MlflowClient, run_id: str, splits: fdata.Splits, attempts: int = 3) -> None:
    """`splits` as the run's dataset input. The first run of an experiment to log it inserts the
    dataset row; workers starting at once race on that insert (a unique-key violation on PostgreSQL,
    which MLflow does not retry), and a second try finds the row and links it."""
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=[dataset_input(splits)])
            return
        except MlflowException as error:
            duplicate = any(word in str(error) for word in ("duplicate key", "UNIQUE constraint"))
            if not duplicate or attempt == attempts - 1:
                raise


def dataset_input(splits: fdata.Splits) -> DatasetInput:
    """Fashion-MNIST as an MLflow dataset input: the UI's "Dataset" column shows its name and digest."""
    profile = {"train": len(splits.train_y), "validation": len(splits.val_y), "test": len(splits.test_y)}
    dataset = Dataset(name="fashion-mnist", digest=splits.digest, source_type="local",
                      source=json.dumps({"uri": "Fashion-MNIST IDX files, checked by SHA-256"}),
                      profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def default_run_name(cfg: RunConfig) -> str:
    return f"{cfg.impl}-h{cfg.hidden_size}-{cfg.activation}-lr{cfg.lr:g}-seed{cfg.seed}"


