"""Getting models back out of MLflow: the runs table, the best checkpoint fetched and verified (with
its sweep's recommendation, or the verdicts of a run picked by its metric: verdicts.py), and the Model
Registry champion.

`fetch_best` trusts nothing it downloads: the checkpoint goes through
`checkpoint.load_checkpoint` (weights_only=True), and its validation accuracy, recomputed
on the same split the trainer used (data.SPLIT_SEED, the run's val_size), must match
what the run logged before the file is moved to where the user asked.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException

from fmnist_tracking.names import (
    CHECKPOINT_ARTIFACT,
    DATASET_DIGEST_TAG,
    MODEL_NAME,
    PARENT_RUN_TAG,
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
from fmnist_tracking.verdicts import RunInSweep, run_in_sweep, sweep_answer

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
    table = [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]
    answer = sweep_answer(client, experiment_ids, sweep) if ranking is not None and sweep else None
    if answer is not None:  # the sweep's answer first: configurations over their seeds, then single runs
        table = [*configurations_table(answer), "", "single runs (each seed apart):", *table]
    notes = []
    if ranking is not None:
        notes.append(f"ranked by the sweep's objective: {ranking.metric} at each run's selected epoch, "
                     f"{ranking.direction}d ({ranking.logged}); test_acc is reported, not used to rank")
        notes += [f"parent run {parent.info.run_id[:8]} ({parent.info.run_name}): figures, ranked summary "
                  "and conclusion" for parent in parents]
    if more:
        notes.append(f"more runs than shown: --limit {limit * 2}")
    return "\n".join([*table, *notes])


def configurations_table(answer) -> list[str]:
    """A sweep's configurations as its report ranked them (mean over seeds, best first), each with its
    verdict and seeds, the recommended one marked: what `runs --sweep` shows before single runs."""
    chosen = answer.recommended
    rows = [["rank", "configuration", "verdict", "seeds", "val_acc (mean)", "test_acc (mean)", "use"]]
    for rank, entry in enumerate(answer.configurations, 1):
        test = entry.get("test_acc")
        rows.append([str(rank), entry["label"], entry["verdict"], str(len(entry.get("run_ids") or [])),
                     f"{entry['accuracy']:.4f}", "-" if test is None else f"{test:.4f}",
                     "<- recommended" if entry["label"] == chosen["label"] else ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    head = (f"configurations of sweep {answer.parent.data.tags.get(SWEEP_TAG, '?')} (parent run "
            f"{answer.parent.info.run_id[:8]}, {chosen['decision']}): use {chosen['label']}, {chosen['why']}")
    return [head, table[0], "  ".join("-" * w for w in widths), *table[1:]]


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
    metric: str  # how it was chosen: the sweep's recommendation, or the logged metric it was selected by
    checkpoint_path: Path
    logged_val_acc: float
    recomputed_val_acc: float
    val_images: int
    registered: str | None = None  # "name version N (alias champion)" after --register
    sweep_verdict: list[str] = field(default_factory=list)  # its sweep's recommendation, or why there is none
    recomputed_test_acc: float | None = None  # an ensemble's, beside its members' (they are reported)
    in_sweep: RunInSweep | None = None  # a run picked by its metric, in a sweep: its sweep's verdicts

    def describe(self, standing: Sequence[str] = ()) -> str:
        """What `best` prints; `standing`: the sentences on how a run picked by its metric stands in its
        sweep (cli.py says them from `in_sweep`: sweeps/analysis/standing.py)."""
        run, tags = self.run, self.run.data.tags
        kind = "Ensemble" if ENSEMBLE_TAG in tags else "Best"
        lines = [f"{kind} run {run.info.run_id} ({run.info.run_name}) by {self.metric}, "
                 f"status {run.info.status}",
                 f"  checkpoint: {self.checkpoint_path}",
                 f"  val_acc: logged {self.logged_val_acc:.4f}, recomputed {self.recomputed_val_acc:.4f} "
                 f"on {self.val_images} validation images",
                 "  metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(run.data.metrics.items())),
                 "  params: " + ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()))]
        if SWEEP_TAG in tags and TRIAL_TAG in tags:
            lines.append(f"  sweep: {tags[SWEEP_TAG]} trial {tags[TRIAL_TAG]}")
        lines += [f"  sweep verdict: {line}" for line in [*self.sweep_verdict, *standing]]
        if self.registered:
            lines.append(f"  registered: {self.registered}")
        return "\n".join(lines)


ENSEMBLE_TAG = "ensemble_of"  # an ensemble run (`best --sweep --ensemble`): the run ids of its members
RECOMMENDATION = "the sweep's recommendation"


@dataclass(frozen=True)
class Chosen:
    """What `best` and `serve` give, how it was chosen, and what its sweep says of it."""

    run: Run
    by: str  # the sweep's recommendation, or the logged metric it was selected by
    lines: list[str]  # the recommendation's lines, or why the sweep has none
    in_sweep: RunInSweep | None = None  # picked by its metric: its sweep's verdicts (None: outside one)


def chosen_run(client: MlflowClient, experiment_ids: list[str], *, sweep: str | None = None,
               metric: str = "val_acc") -> Chosen:
    """What `best` and `serve` give: a sweep's recommended configuration's best seed where its report
    recorded one; else the best FINISHED run by `metric` (outside a sweep, or a sweep reported before
    recommendations were recorded: said so), with its sweep's verdicts."""
    answer = sweep_answer(client, experiment_ids, sweep) if sweep else None
    if answer is not None:
        return Chosen(client.get_run(answer.recommended["run_id"]), RECOMMENDATION, answer.lines())
    run = find_best_run(client, experiment_ids, sweep=sweep, metric=metric)
    lines = []
    if sweep:
        lines.append(f"no recommendation recorded for sweep {sweep!r} (reported before they were): the "
                     f"best single run by {metric}; `python cli.py report {sweep}` records one")
    return Chosen(run, selection_metric(metric), lines, run_in_sweep(client, run))


def fetch_best(client: MlflowClient, experiment_ids: list[str], out: Path, *, sweep: str | None = None,
               metric: str = "val_acc", data_dir=None, register: bool = False) -> BestRun:
    """Find what `best` gives (chosen_run), download its checkpoint, verify it, move it to `out`."""
    from fmnist_core import serving  # torch: only where a checkpoint is checked, not for `runs`
    from fmnist_tracking.export import download_checkpoint

    chosen = chosen_run(client, experiment_ids, sweep=sweep, metric=metric)
    run = chosen.run
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fmnist-best-") as scratch:
        downloaded = download_checkpoint(client, run.info.run_id, scratch)
        model, checkpoint = serving.load_model(downloaded)  # refuses anything but a plain-data checkpoint
        splits = _splits_of(run, data_dir)
        recomputed = _recheck(run, model, checkpoint, splits)
        os.replace(downloaded, out)
    best = BestRun(run, chosen.by, out, run.data.metrics["best_val_acc"], recomputed, splits.val_x.shape[0],
                   sweep_verdict=chosen.lines, in_sweep=chosen.in_sweep)
    if register:
        best.registered = _register(client, run)
    return best


def fetch_ensemble(client: MlflowClient, experiment_ids: list[str], out: Path, *, sweep: str,
                   data_dir=None, register: bool = False) -> BestRun:
    """The sweep's recommended configuration's seeds folded into one checkpoint (fmnist_core/ensemble.py)
    at `out`, its validation and test accuracy recomputed, logged as an MLflow run under the sweep's
    parent (servable: `serve --run-id`, registrable: `--register`); the members are checked as `best`
    checks one checkpoint."""
    from fmnist_core import ensemble, serving  # torch: only where a checkpoint is checked
    from fmnist_tracking.export import download_checkpoint

    answer = sweep_answer(client, experiment_ids, sweep)
    if answer is None:
        raise TrackingError(f"--ensemble folds the seeds of a sweep's recommended configuration, and sweep "
                            f"{sweep!r} has no recommendation recorded: `python cli.py report {sweep}`")
    members = [client.get_run(run_id) for run_id in answer.chosen["run_ids"] if run_id]
    if len(members) < 2:
        raise TrackingError(f"{answer.recommended['label']} has {len(members)} seed: nothing to fold; a "
                            f"decided sweep gives it more (`python cli.py sweep {sweep}`)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fmnist-ensemble-") as scratch:
        checkpoints = []
        splits = _splits_of(members[0], data_dir)  # one load: the seeds of one configuration share it
        for member in members:
            path = download_checkpoint(client, member.info.run_id, Path(scratch, member.info.run_id))
            model, checkpoint = serving.load_model(path)
            _check_digest(member, splits)
            _recheck(member, model, checkpoint, splits)
            checkpoints.append(checkpoint)
        described = [{"run_id": member.info.run_id} for member in members]
        folded = ensemble.score(ensemble.fold(checkpoints, described), splits)
        ensemble.save(folded, out)
        run = _log_ensemble(client, answer, members, folded, out, splits.digest)
    metrics = folded.metrics
    best = BestRun(run, f"{RECOMMENDATION}, its {len(members)} seeds folded", out, metrics["best_val_acc"],
                   metrics["best_val_acc"], splits.val_x.shape[0], recomputed_test_acc=metrics["test_acc"])
    chosen = answer.recommended
    seed = next(member for member in members if member.info.run_id == chosen["run_id"]).data.metrics
    single = seed.get("test_acc")
    best.sweep_verdict = answer.lines()[:1] + [
        f"the ensemble of its {len(members)} seeds ({folded.hidden_size} units, logits = the seeds' mean): "
        f"val {metrics['best_val_acc']:.4f}, test {metrics['test_acc']:.4f}; its best single seed "
        f"{chosen['seed']}: val {seed['best_val_acc']:.4f}, test "
        + ("-" if single is None else f"{single:.4f}")]
    if register:
        best.registered = _register(client, run)
    return best


def _log_ensemble(client: MlflowClient, answer, members: list[Run], folded, path: Path, digest: str) -> Run:
    """The ensemble as an MLflow run under the sweep's parent: params, recomputed metrics, checkpoint.pt and
    its MLflow model; the run of the same members is reused."""
    from fmnist_core import ensemble
    from fmnist_tracking.export import ensure_model

    parent, ids = answer.parent, " ".join(m.info.run_id for m in members)
    experiment_id = parent.info.experiment_id
    for run in search_runs(client, [experiment_id], extra_filter=f"tags.{ENSEMBLE_TAG} = '{ids}' "
                                                                 "and attributes.status = 'FINISHED'"):
        client.log_artifact(run.info.run_id, str(path))  # the same members: the same fold, refreshed
        return client.get_run(run.info.run_id)
    name = f"{answer.recommended['label']}, ensemble of {len(members)} seeds"
    run = client.create_run(experiment_id, run_name=name, tags={
        PARENT_RUN_TAG: parent.info.run_id, SWEEP_TAG: parent.data.tags.get(SWEEP_TAG, ""),
        ENSEMBLE_TAG: ids, DATASET_DIGEST_TAG: digest})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in folded.config.items()],
                     metrics=[Metric(k, v, int(time.time() * 1000), 0)
                              for k, v in ensemble.scalar_metrics(folded).items()])
    with tempfile.TemporaryDirectory(prefix="fmnist-ensemble-") as scratch:
        named = Path(scratch, CHECKPOINT_ARTIFACT)
        named.write_bytes(path.read_bytes())
        client.log_artifact(run_id, str(named))
    ensure_model(client, client.get_run(run_id), name=MODEL_NAME)
    client.set_terminated(run_id, "FINISHED")
    return client.get_run(run_id)


def _splits_of(run: Run, data_dir):
    """The splits the run trained on (its val_size), refused when the data's digest is not the run's."""
    from fmnist_core import data as fdata

    splits = fdata.load_splits(data_dir, val_size=int(run.data.params["val_size"]))
    _check_digest(run, splits)
    return splits


def _check_digest(run: Run, splits) -> None:
    """Refuse `splits` for a run trained on data with another digest (runs before the tag pass)."""
    trained_on = run.data.tags.get(DATASET_DIGEST_TAG)
    if trained_on and trained_on != splits.digest:
        raise TrackingError(f"run {run.info.run_id} was trained on data with digest {trained_on}, "
                            f"but the data here has digest {splits.digest}; "
                            f"point --data-dir at the run's data")


def _recheck(run: Run, model, checkpoint, splits) -> float:
    """The checkpoint's validation accuracy, recomputed; refused when it is not what the run logged."""
    from fmnist_core import serving

    x = serving.renormalise(splits.val_x, (splits.mean, splits.std), checkpoint.normalization)
    recomputed = serving.evaluate(model, x, splits.val_y).accuracy
    logged = run.data.metrics["best_val_acc"]
    if abs(recomputed - logged) * splits.val_x.shape[0] > VAL_TOLERANCE_IMAGES + 1e-6:
        raise TrackingError(f"the checkpoint of run {run.info.run_id} scores val_acc {recomputed:.4f} "
                            f"on the validation split, but the run logged {logged:.4f}; not using it")
    return recomputed


def _register(client: MlflowClient, run: Run) -> str:
    version = register_champion(client, run)
    return f"{REGISTERED_MODEL} version {version.version} (alias {CHAMPION_ALIAS})"


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
