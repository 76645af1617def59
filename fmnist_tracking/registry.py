"""Getting models back out of MLflow: the runs table, the best checkpoint fetched and verified (with
what its sweep's paired tests say of it, verdicts.py), and the Model Registry champion.

`fetch_best` trusts nothing it downloads: the checkpoint goes through
`checkpoint.load_checkpoint` (weights_only=True), and its validation accuracy, recomputed
on the same split the trainer used (data.SPLIT_SEED, the run's val_size), must match
what the run logged before the file is moved to where the user asked.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fmnist_tracking.names import (
    DATASET_DIGEST_TAG,
    MODEL_NAME,
    SWEEP_PARENTS,
    SWEEP_TAG,
    TRIAL_TAG,
    is_sweep_parent,
)
from fmnist_tracking.store import (
    TrackingError,
    find_best_run,
    search_runs,
    selection_metric,
)
from fmnist_tracking.verdicts import tie_report

REGISTERED_MODEL = "fmnist-mlp"
CHAMPION_ALIAS = "champion"
# Recomputed and logged validation accuracy may differ by this many images: the trainer's
# batched matmuls and nn.Linear round differently, which can flip a near-tie.
VAL_TOLERANCE_IMAGES = 2


@dataclass(frozen=True)
class Ranking:
    """How a sweep ranks its runs: its objective (a validation metric) and direction."""

    metric: str = "val_acc"  # val_acc | val_loss (a sweep definition's objective.metric)
    direction: str = "maximize"

    @property
    def logged(self) -> str:
        """The run metric holding the objective at the selected epoch (older runs lack best_value)."""
        return "best_val_acc" if self.metric == "val_acc" else "best_value"

    @property
    def header(self) -> str:
        return "best_val_acc" if self.metric == "val_acc" else f"{self.metric} (best epoch)"


DEFAULT_PARAM_COLUMNS = {"impl": "impl", "hidden": "hidden_size", "activation": "activation",
                         "optimizer": "optimizer", "lr": "lr"}


def runs_table(client: MlflowClient, experiment_ids: list[str], *, sweep: str | None = None,
               limit: int = 20, ranking: Ranking | None = None) -> str:
    """The newest `limit` runs, or with `ranking` a sweep's trial runs best first by its objective
    (runs without the metric, e.g. FAILED ones, last) with the params that vary across them."""
    order = None
    if ranking is not None:
        direction = "DESC" if ranking.direction == "maximize" else "ASC"
        order = [f"metrics.{ranking.logged} {direction}", "attributes.start_time ASC"]
    parents = search_runs(client, experiment_ids, sweep=sweep, extra_filter=SWEEP_PARENTS) \
        if ranking else []
    shown_apart = {parent.info.run_id for parent in parents}
    runs = search_runs(client, experiment_ids, sweep=sweep, order_by=order, limit=limit + 1 + len(parents))
    runs = [run for run in runs if run.info.run_id not in shown_apart]
    more, runs = len(runs) > limit, runs[:limit]
    if not runs:
        return "no runs" + (f" of sweep {sweep!r}" if sweep else "") + " in this experiment"

    columns = _columns(runs, ranking)
    cells = [list(columns)]
    for place, run in enumerate(runs, 1):
        ranked = ranking is not None and ranking.logged in run.data.metrics
        cells.append([str(cell(run)) if cell else str(place) if ranked else "-" for cell in columns.values()])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    notes = []
    if ranking is not None:
        notes.append(f"ranked by the sweep's objective: {ranking.metric} at each run's selected epoch, "
                     f"{ranking.direction}d ({ranking.logged}); test_acc is reported, not used to rank")
        notes += [f"parent run {parent.info.run_id[:8]} ({parent.info.run_name}): figures, ranked summary "
                  "and conclusion" for parent in parents]
    if more:
        notes.append(f"more runs than shown: --limit {limit * 2}")
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], *notes])


def _columns(runs: list[Run], ranking: Ranking | None) -> dict:
    """The runs table's columns: header -> cell of a run (None: the rank, filled in by the caller)."""
    def metric(run: Run, key: str) -> str:
        value = run.data.metrics.get(key)
        return "-" if value is None else f"{value:.4f}"

    def sweep_cell(run: Run) -> str:
        tags = run.data.tags
        if SWEEP_TAG not in tags:
            return "-"
        if is_sweep_parent(tags):
            return f"{tags[SWEEP_TAG]} (parent)"
        return f"{tags[SWEEP_TAG]} #{tags.get(TRIAL_TAG, '?')}"

    params = DEFAULT_PARAM_COLUMNS
    if ranking is not None:
        varying = sorted(key for key in {k for run in runs for k in run.data.params}
                         if len({run.data.params.get(key) for run in runs}) > 1)
        params = {key: key for key in varying} or params
    columns = {"rank": None} if ranking else {}
    columns.update({"run": lambda r: r.info.run_id[:8], "name": lambda r: r.info.run_name or "-",
                    "status": lambda r: r.info.status})
    columns.update({header: lambda r, key=key: r.data.params.get(key, "-") for header, key in params.items()})
    columns.update({
        # the epoch whose weights were kept (selected on validation) / the epochs asked for
        "best/epochs": lambda r: f"{metric(r, 'best_epoch').split('.')[0]}/{r.data.params.get('epochs')}",
        "best_val_acc": lambda r: metric(r, "best_val_acc")})
    if ranking is not None and ranking.logged != "best_val_acc":
        columns[ranking.header] = lambda r: metric(r, ranking.logged)
    columns["test_acc"] = lambda r: metric(r, "test_acc")
    if ranking is None:
        columns["sweep"] = sweep_cell
    columns["started"] = lambda r: time.strftime("%Y-%m-%d %H:%M", time.localtime(r.info.start_time / 1000))
    return columns


@dataclass
class BestRun:
    run: Run
    metric: str  # the logged metric it was selected by
    checkpoint_path: Path
    logged_val_acc: float
    recomputed_val_acc: float
    val_images: int
    registered: str | None = None  # "name version N (alias champion)" after --register
    sweep_verdict: list[str] = field(default_factory=list)  # the pick against the rest of its sweep

    def describe(self) -> str:
        run, tags = self.run, self.run.data.tags
        lines = [f"Best run {run.info.run_id} ({run.info.run_name}) by {self.metric}, "
                 f"status {run.info.status}",
                 f"  checkpoint: {self.checkpoint_path}",
                 f"  val_acc: logged {self.logged_val_acc:.4f}, recomputed {self.recomputed_val_acc:.4f} "
                 f"on {self.val_images} validation images",
                 "  metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(run.data.metrics.items())),
                 "  params: " + ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()))]
        if SWEEP_TAG in tags:
            lines.append(f"  sweep: {tags[SWEEP_TAG]} trial {tags.get(TRIAL_TAG, '?')}")
        lines += [f"  sweep verdict: {line}" for line in self.sweep_verdict]
        if self.registered:
            lines.append(f"  registered: {self.registered}")
        return "\n".join(lines)


def fetch_best(client: MlflowClient, experiment_ids: list[str], out: Path, *, sweep: str | None = None,
               metric: str = "val_acc", data_dir=None, register: bool = False) -> BestRun:
    """Find the best FINISHED run, download its checkpoint, verify it, move it to `out`."""
    from fmnist_core import data as fdata  # torch: only where a checkpoint is checked, not for `runs`
    from fmnist_core import serving
    from fmnist_tracking.export import download_checkpoint

    key = selection_metric(metric)
    run = find_best_run(client, experiment_ids, sweep=sweep, metric=metric)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fmnist-best-") as scratch:
        downloaded = download_checkpoint(client, run.info.run_id, scratch)
        model, checkpoint = serving.load_model(downloaded)  # refuses anything but a plain-data checkpoint
        splits = fdata.load_splits(data_dir, val_size=int(run.data.params["val_size"]))
        trained_on = run.data.tags.get(DATASET_DIGEST_TAG)
        if trained_on and trained_on != splits.digest:
            raise TrackingError(f"run {run.info.run_id} was trained on data with digest {trained_on}, "
                                f"but the data here has digest {splits.digest}; "
                                f"point --data-dir at the run's data")
        x = serving.renormalise(splits.val_x, (splits.mean, splits.std), checkpoint.normalization)
        recomputed = serving.evaluate(model, x, splits.val_y).accuracy
        logged = run.data.metrics["best_val_acc"]
        images = splits.val_x.shape[0]
        if abs(recomputed - logged) * images > VAL_TOLERANCE_IMAGES + 1e-6:
            raise TrackingError(f"the checkpoint of run {run.info.run_id} scores val_acc {recomputed:.4f} "
                                f"on the validation split, but the run logged {logged:.4f}; not using it")
        os.replace(downloaded, out)
    best = BestRun(run, key, out, logged, recomputed, images, sweep_verdict=tie_report(client, run))
    if register:
        version = register_champion(client, run)
        best.registered = f"{REGISTERED_MODEL} version {version.version} (alias {CHAMPION_ALIAS})"
    return best


def register_champion(client: MlflowClient, run: Run, name: str = REGISTERED_MODEL):
    """Register the run's MLflow model (logged from its checkpoint if missing) as a new version of `name`;
    point the alias `champion` at it."""
    from fmnist_tracking.export import ensure_model

    model_id = ensure_model(client, run, name=MODEL_NAME)
    try:
        client.create_registered_model(name, description="Fashion-MNIST MLP: 784 pixels 0..255 -> 10 class "
                                                         "probabilities; alias champion = best by validation")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run.info.run_id, model_id=model_id,
        tags={"best_val_acc": str(run.data.metrics.get("best_val_acc")),
              "test_acc": str(run.data.metrics.get("test_acc"))})
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    return version
