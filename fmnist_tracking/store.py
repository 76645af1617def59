"""The MLflow store: where it is, the experiment, searching runs, a run by (the start of) its id, the best
run, run provenance.

Store: by default a SQLite database `mlruns/mlflow.db` at the project root, with artifacts in
`mlruns/artifacts/<experiment>` (MLflow 3 refuses a plain `./mlruns` file store).
`--tracking-uri` / $MLFLOW_TRACKING_URI point everything at another store or a tracking server.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist_core.config import ConfigError, first_line
from fmnist_tracking.defaults import DEFAULT_EXPERIMENT  # noqa: F401 - store.DEFAULT_EXPERIMENT for callers
from fmnist_tracking.names import is_sweep_parent, sweep_filter

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Run

# mlflow is imported where the store is opened (setup): the paths and names here (resolve_tracking_uri,
# TrackingError, selection_metric) serve commands that never open it, e.g. `dashboard`.

ROOT = Path(__file__).resolve().parent.parent
STORE_DIR = ROOT / "mlruns"
# Without it the MLflow 3 UI opens an experiment on its GenAI pages, not on the training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# Metrics a model may be selected by (all on the validation split) -> the logged metric.
SELECTION_METRICS = {"best_val_acc": "best_val_acc", "val_acc": "best_val_acc"}
RUN_CHOICES_SHOWN = 5  # runs listed when a run id prefix is the start of several


class TrackingError(ConfigError):
    """A tracking request cannot be served (no such experiment, no finished run, ...); says what to do."""


def default_tracking_uri() -> str:
    return f"sqlite:///{STORE_DIR / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def local_artifact_root(tracking_uri: str) -> Path | None:
    """`artifacts/` next to a SQLite database; None for servers and other databases (they decide)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"


def setup(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, *, create: bool = True,
          first: str = "train a model first (python cli.py train)") -> tuple[MlflowClient, str]:
    """(client, experiment id); creates the store and, if `create`, the experiment; without it, a missing
    experiment is an error that says what to do `first` (train a model, run a sweep).

    Also makes this the process-wide MLflow URI: `mlflow.pytorch.log_model`, model loading
    and registration resolve the store globally; and quiets MLflow's INFO lines (quiet_mlflow).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    quiet_mlflow()
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
        raise TrackingError(f"no experiment {experiment!r} in {uri}; {first} or choose another --experiment")
    if found.lifecycle_stage != "active":
        raise TrackingError(f"experiment {experiment!r} is deleted; restore it (mlflow experiments restore "
                            f"--experiment-id {found.experiment_id}) or choose another --experiment")
    return client, found.experiment_id


def quiet_mlflow() -> None:
    """MLflow's own INFO lines (`Creating initial MLflow database tables...` on a new store) and its
    "Downloading artifacts" bar (a verdicts file of a few kB drew one above `runs --sweep`'s table) out of
    the commands' output, which says what happens itself; warnings stay. $MLFLOW_LOGGING_LEVEL and
    $MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR still rule."""
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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
        filters.append(sweep_filter(sweep))
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
        if not is_sweep_parent(run.data.tags):
            return run
    where = f" of sweep {sweep!r}" if sweep else ""
    raise TrackingError(f"no FINISHED run{where} with {key} in this experiment; train one first "
                        f"(python cli.py train) or check --experiment / --tracking-uri")


def resolve_run(client: MlflowClient, experiment_ids: list[str], run_id: str) -> Run:
    """The run that `run_id` names: a whole run id (of any experiment in the store), else the one run of
    the experiments whose id starts with it, as `cli.py runs` shows them (8 characters).

    A prefix of several runs, or of none, is a TrackingError that lists them / points at `cli.py runs`.
    """
    from mlflow.exceptions import MlflowException

    text = run_id.strip().lower()
    if re.fullmatch(r"[0-9a-f]{32}", text):
        with contextlib.suppress(MlflowException):  # not in the store: no run can start with it either
            return client.get_run(text)
    matches = search_runs(client, experiment_ids, extra_filter=f"attributes.run_id LIKE '{text}%'",
                          limit=RUN_CHOICES_SHOWN + 1) if re.fullmatch(r"[0-9a-f]+", text) else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TrackingError(f"no run id starts with {run_id!r} in this experiment ({client.tracking_uri}); "
                            "`python cli.py runs` lists the runs, or check --experiment / --tracking-uri")
    ids = [run.info.run_id for run in matches]
    # the first characters that tell the matches apart, but never fewer than `cli.py runs` shows
    width = next(width for width in range(max(8, len(text) + 1), 33)
                 if len({full[:width] for full in ids}) == len(ids))
    shown = ", ".join(f"{run.info.run_id[:width]} ({run.info.run_name or '-'})"
                      for run in matches[:RUN_CHOICES_SHOWN])
    more = " and more" if len(matches) > RUN_CHOICES_SHOWN else ""
    raise TrackingError(f"run id {run_id!r} is the start of several runs: {shown}{more}; give more of it")


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
        import torch  # only where a run trains: `runs`, `ui` and the rest of the store's users need no torch

        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"

