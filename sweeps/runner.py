"""The trial loop: ask Optuna for trials, train them (together where they share a shape), tell it.

`run_sweep` is what `python cli.py sweep NAME` calls: load the definition, the data (once)
and the MLflow store, then for each study of the plan join the study (creating it, its parent
run and its queue of grid points if it is new) and `run_trials`. Any number of such workers,
on any machines, can share a study on PostgreSQL (storage.py): each takes queued trials,
trains them and tells Optuna, and leaves when no trial is queued or running anywhere. The
worker that tells the study's last trial rebuilds the parent's report and closes the parent.
`--repair` (repair.py) recovers what dead workers left behind, without training.

MLflow mapping (one parent run per study, reused when the study resumes; one nested child
run per trial, tagged sweep=<name>, trial=<number>):
  COMPLETE -> child FINISHED with its checkpoint and model;
  PRUNED   -> child KILLED, tag pruned=true;
  FAIL     -> child FAILED with the reason (e.g. divergence); the sweep goes on.
Ctrl-C or SIGTERM fail the running trials, re-queue them for the next run (Optuna's retry
callback keeps their grid point), close their runs KILLED and end the worker (the parent run is
KILLED too unless other workers still have trials running). A worker killed outright is
recovered by the others through its trials' heartbeats. A trial's life, and what every interruption
does to it, is lease.py's.

Population: up to `population` trials are asked at once; those whose configurations share
trainer.SHARED_FIELDS are trained together by `train_population`, each still its own trial
and child run. On a shared storage a worker stops taking trials at the first change of shape,
so it holds only what it trains together and leaves the rest of the queue to other workers.
Each sampled configuration of a TPE/random sweep with K seeds is re-queued with seeds
1..K-1, so its repeats are asked next and trained alongside it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import optuna
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState
from tqdm import tqdm

from fmnist_core import data as fdata
from fmnist_core.checkpoint import save_checkpoint
from fmnist_core.config import ConfigError, Objective, RunConfig
from fmnist_core.trainer import (
    SHARED_FIELDS,
    SPLIT_SEED,
    TrainResult,
    checkpoint_payload,
    resolve_device,
    train_population,
)
from fmnist_tracking import run_log, signals, store
from sweeps import evidence, lease, report
from sweeps import storage as stores
from sweeps.background import Background
from sweeps.defaults import DEFAULT_HEARTBEAT, DEFAULT_POPULATION
from sweeps.definitions import load_definition
from sweeps.lease import TrialLease, Worker
from sweeps.study import (
    PARENT_ATTR,
    SETTINGS_ATTR,
    StudyPlan,
    check_settings,
    default_storage,
    enqueue_grid,
    mark_ready,
    open_study,
    plan_studies,
    study_done,
    trials_claimed,
    trials_done,
    wait_until_ready,
    without_password,
)

READY_TIMEOUT = 120  # seconds a worker waits for another one that is creating the study


@dataclass(frozen=True)
class Tracker:
    client: object  # MlflowClient
    experiment_id: str
    parent_run_id: str
    splits: fdata.Splits  # every child run's dataset input

    @property
    def dataset_digest(self) -> str:  # tagged on every child run: `best` checks a checkpoint against its data
        return self.splits.digest


def run_sweep(name: str | Path, *, impl: str | None = None, overrides: dict | None = None,
              seeds: int | None = None, n_trials: int | None = None, timeout: float | None = None,
              population: int = DEFAULT_POPULATION,
              storage: str | None = None, tracking_uri: str | None = None,
              experiment: str = store.DEFAULT_EXPERIMENT, fresh: bool = False, data_dir=None,
              splits: fdata.Splits | None = None, progress: bool = True, create: bool = False,
              heartbeat: int = DEFAULT_HEARTBEAT) -> list[report.Summary]:
    """Run (or resume, or join) the sweep `name`; returns the ranked summary of each study this worker
    closed. `create`: only create the studies (parent runs, queued grid points) and return."""
    definition = load_definition(name)
    plans = plan_studies(definition, impl=impl, overrides=overrides, seeds=seeds, n_trials=n_trials,
                         timeout=timeout)  # every setting checked before anything is loaded or trained
    storage = storage or default_storage(tracking_uri)
    with stores.sqlite_guard(storage, store.resolve_tracking_uri(tracking_uri)) as exclusive:
        client, experiment_id = store.setup(tracking_uri, experiment)
        worker = Worker.open(storage, heartbeat, exclusive=exclusive)
        if splits is None and not create:
            base = plans[0].base
            splits = fdata.load_splits(data_dir, val_size=base.val_size, seed=SPLIT_SEED,
                                       device=resolve_device(base.device))
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it instead
        summaries = []
        for plan in plans:
            with signals.handle_sigterm():
                study, parent_id, queued = join_study(plan, worker, storage, client, experiment_id,
                                                      fresh=fresh, owner=create or exclusive)
                if create:
                    held = len(study.get_trials(deepcopy=False))
                    click.echo(f"Study {plan.study_name} ready in {without_password(storage)}: {queued} "
                               f"trials queued, {held} in all; MLflow parent run {parent_id}. Start workers "
                               "with the same NAME, --storage and --tracking-uri.")
                    continue
                tracker = Tracker(client, experiment_id, parent_id, splits)
                summary = work(study, plan, splits, tracker, worker, storage, population=population,
                               progress=progress)
            if summary is not None:
                click.echo(report.answer(summary))
                summaries.append(summary)
    return summaries


def join_study(plan: StudyPlan, worker: Worker, storage: str, client, experiment_id: str, *, fresh: bool,
               owner: bool) -> tuple[optuna.Study, str, int]:
    """(study, parent run id, trials queued now). The owner (the worker that created the study,
    `--create`, or the only worker of a SQLite study) makes the parent run and queues the grid,
    then stores the settings; other workers wait for those, then check them against their own."""
    study, created = open_study(plan, worker.storage, fresh=fresh)
    owner = owner or created
    if not owner and study.user_attrs.get(SETTINGS_ATTR) is None:
        if not wait_until_ready(study, READY_TIMEOUT):
            click.echo(f"note: study {plan.study_name} was not finished by the worker creating it within "
                       f"{READY_TIMEOUT} s; finishing it here", err=True)
            owner = True
    check_settings(study, plan, without_password(storage))
    parent = open_parent_run(study, plan, client, experiment_id)
    queued = 0
    if owner:
        queued = enqueue_grid(study, plan)
        mark_ready(study, plan)
    return study, parent.run_id, queued


def open_parent_run(study: optuna.Study, plan: StudyPlan, client, experiment_id: str,
                    digest: str | None = None) -> run_log.RunLogger:
    """The study's parent run when it exists in this experiment, else a new one (RUNNING)."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:  # the study was run against another store: start a new parent here
            run = None
        usable = run is not None and run.info.lifecycle_stage == "active"
        if usable and run.info.experiment_id == experiment_id:
            return run_log.RunLogger(client, run_id, experiment_id)
    d = plan.definition
    tags = {"sweep": d.name, "sweep_role": "parent", "study": plan.study_name, "sampler": d.sampler,
            "seeds": plan.seeds, "mlflow.note.content": d.description, "swept": ", ".join(sorted(d.fields))}
    if digest:
        tags["dataset_digest"] = digest
    parent = run_log.RunLogger.start(client, experiment_id, plan.base, run_name=plan.study_name, tags=tags,
                                     params=sweep_params(plan))
    study.set_user_attr(PARENT_ATTR, parent.run_id)
    return parent


def sweep_params(plan: StudyPlan) -> dict[str, str]:
    """The parent run's params describe the sweep: each axis with the values it takes, and the settings
    every trial shares; a field the sweep varies never shows the base value it overrides."""
    d = plan.definition
    params = {k: v for k, v in plan.base.as_dict().items() if k not in d.fields}
    for param in d.space:
        if param.choices:
            params[param.name] = "[" + ", ".join(_fmt(value) for value in param.choices) + "]"
        else:
            params[param.name] = f"{_fmt(param.low)}..{_fmt(param.high)}{' (log)' if param.log else ''}"
    if plan.seeds > 1:
        params["seed"] = f"[0..{plan.seeds - 1}]"
    params["swept"] = ", ".join(p.name for p in d.space)
    return params


def work(study: optuna.Study, plan: StudyPlan, splits: fdata.Splits, tracker: Tracker, worker: Worker,
         storage: str, *, population: int, progress: bool) -> report.Summary | None:
    """One worker on one study: recover what dead workers left, run trials, and close the sweep if
    this worker finished it (report, parent FINISHED). Returns the summary when it did."""
    client, parent_id = tracker.client, tracker.parent_run_id
    client.update_run(parent_id, status="RUNNING")
    parent = run_log.RunLogger(client, parent_id, tracker.experiment_id)
    parent.set_tags({"dataset_digest": tracker.dataset_digest})  # `--create` made it without data
    client.log_inputs(parent_id, datasets=[run_log.dataset_input(splits)])  # MLflow keeps one of each
    click.echo(f"Sweep {plan.study_name}: {plan.definition.description}\n"
               f"  Optuna study in {without_password(storage)}; MLflow parent run {parent_id}; "
               f"worker {worker.name}")
    lease.recover(study, worker, client, tracker.experiment_id, parent_id, startup=True)
    try:
        with run_log.system_metrics(client, parent_id):
            closes = run_trials(study, plan, splits, tracker, worker, population=population,
                                progress=progress)
    except BaseException as error:
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # no other worker at work
            parent.__exit__(type(error), error, error.__traceback__)
        raise
    if not closes:
        click.echo(f"Worker {worker.name} done; the sweep is closed by the worker that finished it.")
        return None
    summary = report.build_report(study, plan, client, parent_id)
    parent.end("FINISHED")
    return summary


def run_trials(study: optuna.Study, plan: StudyPlan, splits: fdata.Splits, tracker: Tracker,
               worker: Worker, *, population: int = DEFAULT_POPULATION, progress: bool = True) -> bool:
    """Take, train and tell trials until none is queued or running anywhere, the budget is used up or
    this invocation's timeout passes. Returns True when this worker closes the sweep: it told the
    last trial, found the study already finished, or timed out with no other worker at work.

    Interrupted (Ctrl-C, SIGTERM, an error): the trials in training are re-queued at once, the trials
    already trained get their pending MLflow work finished (a second Ctrl-C re-queues them too)."""
    total = plan.total_trials()
    to_go = None if total is None else max(0, total - trials_done(study))
    bar = tqdm(total=to_go, unit="trial", desc=plan.study_name, disable=not progress, dynamic_ncols=True)
    background = Background()
    with bar, worker.heartbeats():
        try:
            closes = trial_loop(study, plan, splits, tracker, worker, background, population,
                                shown=lambda held: show_progress(bar, study, plan, held, worker, progress))
        except BaseException as error:
            stop_cleanly(worker, background, error)
            raise
        finally:
            background.close()
    return closes


def stop_cleanly(worker: Worker, background: Background, error: BaseException) -> None:
    """Interrupted: re-queue the trials in training, let the background thread finish and tell the trained
    ones; a second Ctrl-C (or a failed upload) meanwhile drops what it has not started, re-queued too."""
    try:
        worker.requeue_all(error, trained=False)
        background.drain()
    except BaseException:  # noqa: B036 - whatever it was, every lease left is re-queued below
        background.abort()
    worker.requeue_all(error)


def trial_loop(study: optuna.Study, plan: StudyPlan, splits: fdata.Splits, tracker: Tracker, worker: Worker,
               background: Background, population: int, shown) -> bool:
    """run_trials' loop: recover, claim a population, train it, queue its MLflow work; repeat."""
    deadline = time.monotonic() + plan.timeout if plan.timeout else None
    total = plan.total_trials()
    trained = waited = fresh = False  # fresh: trained since this worker last found nothing to take
    poll = min(5.0, worker.heartbeat or 1.0)  # seconds between looks at the queue while others train
    while deadline is None or time.monotonic() < deadline:
        lease.recover(study, worker, tracker.client, tracker.experiment_id, tracker.parent_run_id)
        leases = claim_population(study, plan, population, total, worker)
        for group in by_shape(leases):
            train_group(study, plan, group, splits, tracker, background, shown)
        if leases:
            trained = fresh = True
            continue
        background.drain()  # nothing more to take: this worker's trials are told before it looks
        if study_done(study, plan):
            return fresh or not (trained or waited)  # it told the last trial, or found it done (a re-run)
        fresh = False
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not waited and running:
            owners = ", ".join(sorted({t.user_attrs.get("worker", "?") for t in running}))
            tqdm.write(f"{worker.name} waits for {len(running)} trial(s) running on {owners}; a trial "
                       f"whose worker stops is re-queued after {worker.grace} s without a heartbeat")
        waited = True
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            time.sleep(poll)
    background.drain()
    return not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def show_progress(bar: tqdm, study: optuna.Study, plan: StudyPlan, held: TrialLease, worker: Worker,
                  progress: bool) -> None:
    """After a trial is told (in the background thread): the bar, or one line per trial."""
    bar.update(1)
    best = best_value(study)
    if best is not None:
        bar.set_postfix({f"best {plan.definition.metric}": f"{best:.4f}"})
    if not progress:
        tqdm.write(outcome_line(study, held, plan, worker))


def outcome_line(study: optuna.Study, held: TrialLease, plan: StudyPlan, worker: Worker) -> str:
    """One line per trial where there is no progress bar (several workers, logs)."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == held.number)
    value = "" if frozen.value is None else f": {plan.definition.metric} {frozen.value:.4f}"
    return f"trial {frozen.number} {frozen.state.name} ({describe(frozen)}){value} [{worker.name}]"


def claim_population(study: optuna.Study, plan: StudyPlan, limit: int, total: int | None,
                     worker: Worker) -> list[TrialLease]:
    """Up to `limit` trials with their configurations: queued trials first (grid points, re-queued
    and repeated trials), then, for TPE/random within the budget, newly sampled ones. Every trial
    taken is held by `worker` from the moment it is RUNNING (see lease.py)."""
    leases: list[TrialLease] = []
    shared = not worker.exclusive
    while len(leases) < limit:
        if shared and leases and next_shape_differs(study, plan, leases[0].config):
            break  # leave it to a worker that is free
        sample = plan.definition.sampler != "grid" and (total is None or trials_claimed(study) < total)
        held = TrialLease.claim(worker, study, sample=sample)
        if held is None:
            break
        try:
            held.config = suggest_config(held.trial, plan)
        except ConfigError as error:  # a sampled combination the config refuses: this trial only
            held.trial.set_user_attr("failure", str(error))
            held.settle(TrialState.FAIL)
            tqdm.write(f"trial {held.number} failed: {error}")
            continue
        leases.append(held)
        trial = held.trial
        if plan.seeds > 1 and not plan.seed_axis and "seed" not in trial.user_attrs:
            for seed in range(1, plan.seeds):  # the repeats of a newly sampled configuration
                study.enqueue_trial(trial.params, user_attrs={"seed": seed, "repeat_of": trial.number})
        trial.set_user_attr("seed", held.config.seed)
        if shared and len(leases) > 1 and shape(held.config) != shape(leases[0].config):
            break  # a newly sampled trial of another shape: trained after the first group
    return leases


def shape(config: RunConfig) -> tuple:
    """What population members must share (trainer.SHARED_FIELDS)."""
    return tuple(getattr(config, f) for f in SHARED_FIELDS)


def next_shape_differs(study: optuna.Study, plan: StudyPlan, first: RunConfig) -> bool:
    """Whether the next queued trial (the one pop_queued would take) cannot join `first`'s population."""
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not queued:
        return False  # nothing queued: a new trial is sampled, or the loop ends
    params = queued[0].system_attrs.get("fixed_params", queued[0].params)
    overrides = {}
    for param in plan.definition.space:
        if param.name in params:
            overrides.update(param.overrides(params[param.name]))
    try:
        return shape(plan.base.replace(overrides, source="queued trial")) != shape(first)
    except ConfigError:
        return True


def suggest_config(trial: optuna.Trial, plan: StudyPlan) -> RunConfig:
    """The trial's RunConfig: each axis of the space suggested, then applied to the base."""
    overrides = {}
    for param in plan.definition.space:
        if param.choices:
            value = trial.suggest_categorical(param.name, list(param.choices))
        elif param.integer:
            value = trial.suggest_int(param.name, int(param.low), int(param.high), log=param.log,
                                      step=int(param.step or 1))
        else:
            value = trial.suggest_float(param.name, param.low, param.high, log=param.log, step=param.step)
        overrides.update(param.overrides(value))
    if plan.seed_axis:
        overrides["seed"] = trial.suggest_categorical("seed", plan.grid()["seed"])
    elif plan.seeds > 1:
        overrides["seed"] = trial.user_attrs.get("seed", 0)
    return plan.base.replace(overrides, source=f"trial {trial.number}")


def by_shape(leases: list[TrialLease]) -> Iterator[list[TrialLease]]:
    """Leases grouped by the fields population members must share, in order of first appearance."""
    groups: dict[tuple, list[TrialLease]] = {}
    for held in leases:
        groups.setdefault(shape(held.config), []).append(held)
    yield from groups.values()


def train_group(study: optuna.Study, plan: StudyPlan, leases: list[TrialLease], splits: fdata.Splits,
                tracker: Tracker, background: Background, shown: Callable[[TrialLease], None]) -> None:
    """Train leases of one shape as one population: a child run each, every epoch reported to Optuna
    at once and logged to MLflow in the background; what a trained trial still needs is queued there too."""
    metric = plan.definition.metric
    pruned_at: dict[int, int] = {}

    def on_epoch(member: int, metrics: dict[str, float]) -> bool:
        held = leases[member]
        background.submit(held.run.log_epoch, metrics)
        if held.report(metrics, metric):
            pruned_at[member] = int(metrics["epoch"])
            return True
        return False

    for held in leases:
        held.track(lambda held=held: run_log.RunLogger.start(
            tracker.client, tracker.experiment_id, held.config, parent_run_id=tracker.parent_run_id,
            run_name=run_name(plan, held), dataset=tracker.splits,
            tags=dict(trial_tags(plan, held), dataset_digest=tracker.dataset_digest)))
        held.trial.set_user_attr("population", len(leases))  # epoch_seconds is the whole population's
    objective = Objective(plan.definition.metric, plan.definition.direction)
    results = train_population([held.config for held in leases], splits, on_epoch=on_epoch,
                               objective=objective)
    for member, (held, result) in enumerate(zip(leases, results, strict=True)):
        held.trained()
        background.submit(finish_trial, plan, held, result, splits, pruned_at.get(member),
                          on_error=held.requeue)
        background.submit(shown, held)


def trial_tags(plan: StudyPlan, held: TrialLease) -> dict[str, str]:
    tags = {"sweep": plan.definition.name, "study": plan.study_name, "sweep_role": "trial",
            "trial": str(held.number), "seed": str(held.config.seed)}
    tags.update({f"sampled.{k}": str(v) for k, v in held.trial.params.items()})
    if "repeat_of" in held.trial.user_attrs:
        tags["repeat_of"] = str(held.trial.user_attrs["repeat_of"])
    if held.retry_of is not None:
        tags["retry_of"] = str(held.retry_of)
    return tags


def record_training(held: TrialLease, result: TrainResult) -> None:
    """What the report needs of a trained trial, in its Optuna user attrs: the per-epoch history (the
    why-figures) and, with a result, which validation images its best epoch got right (paired tests)."""
    trial, history = held.trial, result.history
    trial.set_user_attr("epochs", len(history))
    trial.set_user_attr("epoch_seconds", sum(m["epoch_seconds"] for m in history) / max(1, len(history)))
    trial.set_user_attr("history", [{k: round(v, 6) for k, v in dict(m, epoch=e).items()}
                                    for e, m in enumerate(history, 1)])
    if result.val_correct is not None:
        trial.set_user_attr("val_correct", evidence.pack_correct(result.val_correct.numpy()))
        trial.set_user_attr("n_val", len(result.val_correct))


def finish_trial(plan: StudyPlan, held: TrialLease, result: TrainResult, splits: fdata.Splits,
                 pruned_epoch: int | None) -> None:
    """Log the outcome to the child run, then settle the lease: a COMPLETE trial always has its artifacts.
    Runs in the background thread (train_group), one trial after another."""
    trial = held.trial
    record_training(held, result)
    if result.error is not None:
        trial.set_user_attr("failure", str(result.error))
        held.settle(TrialState.FAIL, run_status="FAILED", reason=str(result.error),
                    run_tags={"stop_reason": "diverged"})
        tqdm.write(f"trial {trial.number} ({describe(trial)}) failed: {result.error}")
        return
    if pruned_epoch is not None:
        held.settle(TrialState.PRUNED, run_status="KILLED",
                    run_tags={"pruned": "true", "stop_reason": "pruned"},
                    reason=f"pruned by the {plan.definition.pruner} pruner after epoch {pruned_epoch}")
        return
    with tempfile.TemporaryDirectory(prefix="fmnist-sweep-") as scratch:
        path = save_checkpoint(Path(scratch, run_log.CHECKPOINT_ARTIFACT),
                               **checkpoint_payload(result, splits))
        held.run.log_result(result, splits, path)
    for key, metric_value in result.final_metrics().items():
        trial.set_user_attr(key, metric_value)
    trial.set_user_attr("checkpoint", f"runs:/{held.run.run_id}/{run_log.CHECKPOINT_ARTIFACT}")
    held.settle(TrialState.COMPLETE, result.best_value)


def run_name(plan: StudyPlan, held: TrialLease) -> str:
    """What varies, e.g. `hidden_size=1024`, with `, seed=1` when the sweep has several seeds."""
    label = describe_params({k: v for k, v in held.trial.params.items() if k != "seed"}) or plan.study_name
    return f"{label}, seed={held.config.seed}" if plan.seeds > 1 else label


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def describe(trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
    return describe_params(trial.params)


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no COMPLETE trial yet
        return None

