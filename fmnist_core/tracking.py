"""MLflow tracking: the store, one logger per run, run status on every exit path, best-run lookup.

The trainer knows nothing of MLflow; `RunLogger` plugs into it as the `on_epoch` callback
and logs the result afterwards. It talks to MLflow through `MlflowClient` with explicit run
ids, never the fluent active-run API, because a sweep keeps several runs open at once
(population training).

Store: by default a SQLite database `mlruns/mlflow.db` at the project root, with artifacts in
`mlruns/artifacts/<experiment>` (MLflow 3 refuses a plain `./mlruns` file store).
`--tracking-uri` / $MLFLOW_TRACKING_URI point everything at another store or a tracking server.

Status: a run ends FINISHED, FAILED (with a `failure_reason` tag, e.g. divergence) or KILLED
(Ctrl-C, SIGTERM under `handle_sigterm`). `with RunLogger.start(...)` never leaves it RUNNING.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import click
import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException

from fmnist_core import data as fdata
from fmnist_core import plots, serving
from fmnist_core.checkpoint import load_checkpoint
from fmnist_core.config import ConfigError, RunConfig, first_line
from fmnist_core.trainer import SPLIT_SEED, Diverged, TrainResult, resolve_device

ROOT = Path(__file__).resolve().parent.parent
STORE_DIR = ROOT / "mlruns"
DEFAULT_EXPERIMENT = "fmnist"
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                 "samples_per_second", "grad_norm", "clip_fraction", "dead_relu_fraction")
FINAL_METRICS = ("test_loss", "test_acc", "best_epoch", "best_val_acc")
CHECKPOINT_ARTIFACT = "checkpoint.pt"
MODEL_NAME = "model"  # the MLflow model inside each run: runs:/<run_id>/model
FAILURE_TAG = "failure_reason"
# Without it the MLflow 3 UI opens an experiment on its GenAI pages, not on the training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# Metrics a model may be selected by (all on the validation split) -> the logged metric.
SELECTION_METRICS = {"best_val_acc": "best_val_acc", "val_acc": "best_val_acc"}
_TAG_LIMIT = 5000  # characters kept of a failure reason (MLflow caps tag values at 8000)


class TrackingError(ConfigError):
    """A tracking request cannot be served (no such experiment, no finished run, ...); says what to do."""


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so `except Exception` cannot swallow it."""


def default_tracking_uri() -> str:
    return f"sqlite:///{STORE_DIR / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def local_artifact_root(tracking_uri: str) -> Path | None:
    """`artifacts/` next to a SQLite database; None for servers and other databases (they decide)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"


def setup(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, *,
          create: bool = True) -> tuple[MlflowClient, str]:
    """(client, experiment id); creates the store and, if `create`, the experiment.

    Also makes this the process-wide MLflow URI: `mlflow.pytorch.log_model`, model loading
    and registration resolve the store globally.
    """
    uri = resolve_tracking_uri(tracking_uri)
    artifacts = local_artifact_root(uri)
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None and create:
            location = (artifacts / _slug(experiment)).as_uri() if artifacts is not None else None
            kind = {EXPERIMENT_KIND_TAG: "custom_model_development"}
            try:
                return client, client.create_experiment(experiment, artifact_location=location, tags=kind)
            except MlflowException as error:  # created meanwhile by a parallel process
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(experiment)
    except MlflowException as error:
        raise TrackingError(f"cannot use the MLflow store {uri}: {first_line(error)}") from None
    if found is None:
        raise TrackingError(f"no experiment {experiment!r} in {uri}; train a model first "
                            f"(python cli.py train) or choose another --experiment")
    if found.lifecycle_stage != "active":
        raise TrackingError(f"experiment {experiment!r} is deleted; restore it (mlflow experiments restore "
                            f"--experiment-id {found.experiment_id}) or choose another --experiment")
    return client, found.experiment_id


class RunLogger:
    """One MLflow run: params and tags at the start, metrics per epoch, artifacts at the end."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str | None = None):
        """Wrap an existing run (`start` makes a new one); the experiment id is looked up when not given."""
        self.client, self.run_id = client, run_id
        self.experiment_id = experiment_id or client.get_run(run_id).info.experiment_id
        self._ended = False

    @classmethod
    def start(cls, client: MlflowClient, experiment_id: str, cfg: RunConfig, *, run_name: str | None = None,
              tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> RunLogger:
        device = resolve_device(cfg.device)  # an unavailable device fails here, before a run exists
        commit, dirty = git_state()
        all_tags = {"implementation": cfg.impl, "device": str(device), "device_name": device_name(device),
                    "torch_version": torch.__version__, "git_commit": commit, "git_dirty": dirty,
                    "mlflow.source.name": "fmnist_core", "mlflow.source.type": "LOCAL"}
        if commit != "unknown":
            all_tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        logger, run_name = None, run_name or default_run_name(cfg)
        try:
            with signals_deferred():  # Ctrl-C here surfaces once `logger` exists, so the run gets closed
                run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
                logger = cls(client, run.info.run_id, experiment_id)
            client.log_batch(logger.run_id, params=[Param(k, str(v)) for k, v in cfg.as_dict().items()])
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

    def log_result(self, result: TrainResult, splits: fdata.Splits, checkpoint_path: Path) -> None:
        """Final metrics, figures, per-class accuracy, the checkpoint and the MLflow model."""
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, result.best_epoch)
                                  for k, v in result.final_metrics().items()],
            tags=[RunTag("stop_reason", result.stop_reason)])
        checkpoint = load_checkpoint(checkpoint_path)
        model = serving.plain_model(checkpoint.state_dict, result.config.activation)
        test = serving.evaluate(model, splits.test_x, splits.test_y)
        cfg = result.config
        title = f"{cfg.impl} MLP 784-{cfg.hidden_size}-10, {cfg.activation}, lr {cfg.lr:g}"
        self.client.log_figure(self.run_id, plots.learning_curves(result.history, title=title),
                               "plots/learning_curves.png")
        confusion = plots.confusion_matrix(test.confusion, splits.classes,
                                           title=f"test set, best epoch {result.best_epoch}")
        self.client.log_figure(self.run_id, confusion, "plots/confusion_matrix_test.png")
        pixels = serving.pixels_of(splits.test_x, splits.mean, splits.std)
        self.client.log_figure(self.run_id, plots.misclassified_grid(pixels, splits.test_y, test.predictions,
                                                                     splits.classes),
                               "plots/misclassified_test.png")
        self.client.log_dict(self.run_id, {"split": "test", "accuracy": test.accuracy,
                                           "classes": serving.per_class_table(test, splits.classes)},
                             "per_class_accuracy.json")
        with tempfile.TemporaryDirectory(prefix="fmnist-ckpt-") as scratch:
            shutil.copyfile(checkpoint_path, Path(scratch, CHECKPOINT_ARTIFACT))
            self.client.log_artifact(self.run_id, str(Path(scratch, CHECKPOINT_ARTIFACT)))
        serving.log_mlflow_model(self.client, self.experiment_id, self.run_id, checkpoint, pixels[:5].numpy(),
                                 name=MODEL_NAME)

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
            self.set_tags({"stop_reason": "diverged"})
            self.end("FAILED", str(error))  # "training diverged: non-finite loss at epoch E, step S"
        elif isinstance(error, KeyboardInterrupt):
            self.end("KILLED", "interrupted (Ctrl-C / SIGINT)")
        elif isinstance(error, Terminated):
            self.end("KILLED", "terminated (SIGTERM)")
        else:
            self.end("FAILED", f"{type(error).__name__}: {error}")
        return False


@contextlib.contextmanager
def handle_sigterm():
    """In the block SIGTERM raises Terminated (once), so open runs end KILLED; restores the old handler."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    fired = False

    def on_sigterm(signum, frame):
        nonlocal fired
        if not fired:  # a second SIGTERM while runs are being closed is ignored
            fired = True
            raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_tracked(cfg: RunConfig, *, data_dir=None, tracking_uri: str | None = None,
                  experiment: str = DEFAULT_EXPERIMENT, checkpoint: Path | None = None,
                  splits: fdata.Splits | None = None, run_name: str | None = None,
                  tags: dict[str, str] | None = None) -> tuple[TrainResult, str]:
    """`cli.py train`: train with a progress bar, every epoch and the result logged to one run."""
    from fmnist_core.console import train_with_progress

    client, experiment_id = setup(tracking_uri, experiment)
    if splits is None:  # loaded before the run starts: missing data is an error, not a FAILED run
        device = resolve_device(cfg.device)
        splits = fdata.load_splits(data_dir, val_size=cfg.val_size, seed=SPLIT_SEED, device=device)
    with handle_sigterm(), RunLogger.start(client, experiment_id, cfg, run_name=run_name,
                                           tags={"dataset_digest": splits.digest, **(tags or {})}) as run:
        click.echo(f"MLflow run {run.run_id} in experiment {experiment!r} ({client.tracking_uri})")
        result, path = train_with_progress(cfg, checkpoint=checkpoint, splits=splits, on_epoch=run.log_epoch)
        run.log_result(result, splits, path)
    return result, run.run_id


def selection_metric(metric: str) -> str:
    """The logged metric behind a selection metric name; test metrics are refused."""
    if metric.startswith("test"):
        raise TrackingError(f"{metric!r} is a test-set metric: the test set is only reported, never used "
                            f"to pick a model; use {' or '.join(SELECTION_METRICS)}")
    if metric not in SELECTION_METRICS:
        raise TrackingError(f"unknown selection metric {metric!r}; choose a validation metric: "
                            f"{', '.join(SELECTION_METRICS)}")
    return SELECTION_METRICS[metric]


def search_runs(client: MlflowClient, experiment_ids: list[str], *, sweep: str | None = None,
                extra_filter: str = "", order_by: list[str] | None = None,
                limit: int | None = None) -> list[Run]:
    """Runs of the experiments, optionally of one sweep (tag `sweep`), newest first by default."""
    filters = [f for f in (extra_filter,) if f]
    if sweep is not None:
        if "'" in sweep or "\\" in sweep:
            raise TrackingError(f"sweep name {sweep!r} may not contain quotes or backslashes")
        filters.append(f"tags.sweep = '{sweep}'")
    found, token = [], None
    while limit is None or len(found) < limit:
        page = client.search_runs(experiment_ids, " and ".join(filters),
                                  order_by=order_by or ["attributes.start_time DESC"],
                                  max_results=1000 if limit is None else min(1000, limit - len(found)),
                                  page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    return found


def find_best_run(client: MlflowClient, experiment_ids: list[str], *, sweep: str | None = None,
                  metric: str = "best_val_acc") -> Run:
    """The FINISHED run with the highest validation metric (ties: the earlier run); parent runs excluded.

    FAILED, KILLED and RUNNING runs never qualify, nor do runs without a validation split.
    """
    key = selection_metric(metric)
    candidates = search_runs(client, experiment_ids, sweep=sweep,
                             extra_filter=f"attributes.status = 'FINISHED' and metrics.{key} >= 0 "
                                          f"and params.val_size != '0'",
                             order_by=[f"metrics.{key} DESC", "attributes.start_time ASC"])
    for run in candidates:
        if run.data.tags.get("sweep_role") != "parent":
            return run
    where = f" of sweep {sweep!r}" if sweep else ""
    raise TrackingError(f"no FINISHED run{where} with {key} in this experiment; train one first "
                        f"(python cli.py train) or check --experiment / --tracking-uri")


def default_run_name(cfg: RunConfig) -> str:
    return f"{cfg.impl}-h{cfg.hidden_size}-{cfg.activation}-lr{cfg.lr:g}-seed{cfg.seed}"


@functools.cache
def git_state() -> tuple[str, str]:
    """(commit, "true"/"false" for a dirty tree) of the project; ("unknown", "unknown") outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown", "unknown"
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", "unknown"
    return head.stdout.strip(), "true" if status.stdout.strip() else "false"


@functools.cache
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM that arrive in the block are recorded, then raised again when it ends."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    pending: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: pending.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(pending):
            signal.raise_signal(number)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"

