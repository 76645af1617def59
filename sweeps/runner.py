"""The trial loop: ask Optuna for trials, train them (together where they share a shape), tell it.

`run_sweep` is what `python cli.py sweep NAME` calls: load the definition, the data (once)
and the MLflow store, then for each study of the plan open the study and its parent run,
`run_trials`, and rebuild the parent's report. `run_trials` is the worker: it only needs an
open study, so several workers can share one.

MLflow mapping (one parent run per study, reused when the study resumes; one nested child
run per trial, tagged sweep=<name>, trial=<number>):
  COMPLETE -> child FINISHED with its checkpoint and model;
  PRUNED   -> child KILLED, tag pruned=true;
  FAIL     -> child FAILED with the reason (e.g. divergence); the sweep goes on.
Ctrl-C or SIGTERM fail the running trials, re-queue them for the next run (Optuna's retry
callback keeps their grid point), close their runs KILLED and end the sweep.

Population: up to `population` trials are asked at once; those whose configurations share
trainer.SHARED_FIELDS are trained together by `train_population`, each still its own trial
and child run. Each sampled configuration of a TPE/random sweep with K seeds is re-queued
with seeds 1..K-1, so its repeats are asked next and trained alongside it.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import optuna
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState
from tqdm import tqdm

from fmnist_core import data as fdata
from fmnist_core import tracking
from fmnist_core.checkpoint import save_checkpoint
from fmnist_core.config import ConfigError, RunConfig
from fmnist_core.trainer import (
    SHARED_FIELDS,
    SPLIT_SEED,
    TrainResult,
    checkpoint_payload,
    resolve_device,
    train_population,
)
from sweeps import report
from sweeps.definitions import load_definition
from sweeps.study import PARENT_ATTR, StudyPlan, default_storage, open_study, plan_studies

DEFAULT_POPULATION = 8
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class Tracker:
    client: object  # MlflowClient
    experiment_id: str
    parent_run_id: str
    dataset_digest: str  # tagged on every child run: `best` checks a checkpoint against its data


@dataclass
class Job:
    trial: optuna.Trial
    config: RunConfig
    logger: tracking.RunLogger | None = None
    told: bool = False
    retry_of: int | None = None  # the failed trial this one trains again


def run_sweep(name: str | Path, *, impl: str | None = None, overrides: dict | None = None,
              seeds: int | None = None, n_trials: int | None = None, timeout: float | None = None,
              population: int = DEFAULT_POPULATION,
              storage: str | None = None, tracking_uri: str | None = None,
              experiment: str = tracking.DEFAULT_EXPERIMENT, fresh: bool = False, data_dir=None,
              splits: fdata.Splits | None = None, progress: bool = True) -> list[report.Summary]:
    """Run (or resume) the sweep `name`; returns one ranked summary per study."""
    definition = load_definition(name)
    plans = plan_studies(definition, impl=impl, overrides=overrides, seeds=seeds, n_trials=n_trials,
                         timeout=timeout)  # every setting checked before anything is loaded or trained
    storage = storage or default_storage(tracking_uri)
    client, experiment_id = tracking.setup(tracking_uri, experiment)
    if splits is None:
        base = plans[0].base
        splits = fdata.load_splits(data_dir, val_size=base.val_size, seed=SPLIT_SEED,
                                   device=resolve_device(base.device))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it instead
    summaries = []
    for plan in plans:
        study = open_study(plan, storage, fresh=fresh)
        with tracking.handle_sigterm():
            parent = open_parent_run(study, plan, client, experiment_id, splits.digest)
            with parent:
                click.echo(f"Sweep {plan.study_name}: {definition.description}\n"
                           f"  Optuna study in {storage}; MLflow parent run {parent.run_id}")
                run_trials(study, plan, splits, Tracker(client, experiment_id, parent.run_id, splits.digest),
                           population=population, progress=progress)
                summary = report.build_report(study, plan, client, parent.run_id)
        click.echo(report.ranked_table(summary))
        summaries.append(summary)
    return summaries


def open_parent_run(study: optuna.Study, plan: StudyPlan, client, experiment_id: str,
                    digest: str) -> tracking.RunLogger:
    """The study's parent run, reopened when it exists in this experiment, else a new one."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:  # the study was run against another store: start a new parent here
            run = None
        usable = run is not None and run.info.lifecycle_stage == "active"
        if usable and run.info.experiment_id == experiment_id:
            client.update_run(run_id, status="RUNNING")
            return tracking.RunLogger(client, run_id)
    d = plan.definition
    parent = tracking.RunLogger.start(client, experiment_id, plan.base, run_name=plan.study_name, tags={
        "sweep": d.name, "sweep_role": "parent", "study": plan.study_name, "sampler": d.sampler,
        "seeds": plan.seeds, "dataset_digest": digest, "mlflow.note.content": d.description,
        "swept": ", ".join(sorted(d.fields)) + "; params hold the base the trials vary from"})
    study.set_user_attr(PARENT_ATTR, parent.run_id)
    return parent


def run_trials(study: optuna.Study, plan: StudyPlan, splits: fdata.Splits, tracker: Tracker, *,
               population: int = DEFAULT_POPULATION, progress: bool = True) -> None:
    """Ask, train and tell until the study's budget or this invocation's timeout is used up."""
    deadline = time.monotonic() + plan.timeout if plan.timeout else None
    total = plan.total_trials()
    to_go = None if total is None else max(0, total - trials_done(study))
    bar = tqdm(total=to_go, unit="trial", desc=plan.study_name, disable=not progress, dynamic_ncols=True)
    with bar:
        while deadline is None or time.monotonic() < deadline:
            jobs = ask_jobs(study, plan, population, total)
            if not jobs:
                break
            try:
                for group in by_shape(jobs):
                    train_group(study, plan, group, splits, tracker)
                    bar.update(len(group))
                    best = best_value(study)
                    if best is not None:
                        bar.set_postfix({f"best {plan.definition.metric}": f"{best:.4f}"})
            except BaseException as error:
                abandon(study, [job for job in jobs if not job.told], error)
                raise


def trials_done(study: optuna.Study) -> int:
    """Finished trials that count against the budget; a failed trial that was re-queued does not."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.state in FINISHED_STATES and t.number not in retried for t in trials)


def ask_jobs(study: optuna.Study, plan: StudyPlan, limit: int, total: int | None) -> list[Job]:
    """Up to `limit` new trials with their configurations; re-queued trials come first."""
    jobs: list[Job] = []
    while len(jobs) < limit and (total is None or trials_done(study) + len(jobs) < total):
        waiting = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
        if plan.definition.sampler == "grid" and not waiting and study.sampler.is_exhausted(study):
            break
        trial = study.ask()
        retry_of = waiting[trial.number].system_attrs.get("failed_trial") if trial.number in waiting else None
        try:
            config = suggest_config(trial, plan)
        except ConfigError as error:  # a sampled combination the config refuses: this trial only
            trial.set_user_attr("failure", str(error))
            tell(study, trial, None, TrialState.FAIL)
            tqdm.write(f"trial {trial.number} failed: {error}")
            continue
        if plan.seeds > 1 and not plan.seed_axis and "seed" not in trial.user_attrs:
            for seed in range(1, plan.seeds):  # the repeats of a newly sampled configuration
                study.enqueue_trial(trial.params, user_attrs={"seed": seed, "repeat_of": trial.number})
        trial.set_user_attr("seed", config.seed)
        jobs.append(Job(trial, config, retry_of=retry_of))
    return jobs


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


def by_shape(jobs: list[Job]) -> Iterator[list[Job]]:
    """Jobs grouped by the fields population members must share, in order of first appearance."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(getattr(job.config, f) for f in SHARED_FIELDS), []).append(job)
    yield from groups.values()


def train_group(study: optuna.Study, plan: StudyPlan, jobs: list[Job], splits: fdata.Splits,
                tracker: Tracker) -> None:
    """Train jobs of one shape as one population: a child run each, every epoch reported to Optuna."""
    metric = plan.definition.metric
    pruned_at: dict[int, int] = {}

    def on_epoch(member: int, metrics: dict[str, float]) -> bool:
        trial = jobs[member].trial
        jobs[member].logger.log_epoch(metrics)
        trial.report(metrics[metric], int(metrics["epoch"]))
        if trial.should_prune():
            pruned_at[member] = int(metrics["epoch"])
            return True
        return False

    for job in jobs:
        job.logger = tracking.RunLogger.start(
            tracker.client, tracker.experiment_id, job.config, parent_run_id=tracker.parent_run_id,
            run_name=f"{plan.study_name}-t{job.trial.number:03d}",
            tags=dict(trial_tags(plan, job), dataset_digest=tracker.dataset_digest))
        job.trial.set_user_attr("mlflow_run_id", job.logger.run_id)
        job.trial.set_user_attr("population", len(jobs))  # epoch_seconds is the whole population's
    results = train_population([job.config for job in jobs], splits, on_epoch=on_epoch)
    for member, (job, result) in enumerate(zip(jobs, results, strict=True)):
        finish_trial(study, plan, job, result, splits, pruned_at.get(member))


def abandon(study: optuna.Study, jobs: list[Job], error: BaseException) -> None:
    """Interrupted (Ctrl-C, SIGTERM) or broken: close the runs, fail the trials and re-queue them,
    so that the next run of the sweep trains them again."""
    for job in jobs:
        if job.logger is not None:  # KILLED for an interrupt, FAILED with the error otherwise
            job.logger.__exit__(type(error), error, error.__traceback__)
        tell(study, job.trial, None, TrialState.FAIL)
        requeue(study, job.trial.number)
        job.told = True


def trial_tags(plan: StudyPlan, job: Job) -> dict[str, str]:
    tags = {"sweep": plan.definition.name, "study": plan.study_name, "sweep_role": "trial",
            "trial": str(job.trial.number), "seed": str(job.config.seed)}
    tags.update({f"sampled.{k}": str(v) for k, v in job.trial.params.items()})
    if "repeat_of" in job.trial.user_attrs:
        tags["repeat_of"] = str(job.trial.user_attrs["repeat_of"])
    if job.retry_of is not None:
        tags["retry_of"] = str(job.retry_of)
    return tags


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a copy of failed trial `number` (same params, grid point and user attrs) to train again."""
    [frozen] = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)


def finish_trial(study: optuna.Study, plan: StudyPlan, job: Job, result: TrainResult, splits: fdata.Splits,
                 pruned_epoch: int | None) -> None:
    """Log the outcome to the child run, then tell Optuna: a COMPLETE trial always has its artifacts."""
    trial, logger = job.trial, job.logger
    history = result.history
    trial.set_user_attr("epochs", len(history))
    trial.set_user_attr("epoch_seconds", sum(m["epoch_seconds"] for m in history) / max(1, len(history)))
    if result.error is not None:
        trial.set_user_attr("failure", str(result.error))
        logger.set_tags({"stop_reason": "diverged"})
        logger.end("FAILED", str(result.error))
        state, value = TrialState.FAIL, None
        tqdm.write(f"trial {trial.number} ({describe(trial)}) failed: {result.error}")
    elif pruned_epoch is not None:
        logger.set_tags({"pruned": "true", "stop_reason": "pruned"})
        logger.end("KILLED", f"pruned by the {plan.definition.pruner} pruner after epoch {pruned_epoch}")
        state, value = TrialState.PRUNED, None
    else:
        values = [m[plan.definition.metric] for m in history]
        value = max(values) if plan.definition.direction == "maximize" else min(values)
        with tempfile.TemporaryDirectory(prefix="fmnist-sweep-") as scratch:
            path = save_checkpoint(Path(scratch, tracking.CHECKPOINT_ARTIFACT),
                                   **checkpoint_payload(result, splits))
            logger.log_result(result, splits, path)
        for key, metric_value in result.final_metrics().items():
            trial.set_user_attr(key, metric_value)
        trial.set_user_attr("checkpoint", f"runs:/{logger.run_id}/{tracking.CHECKPOINT_ARTIFACT}")
        logger.end("FINISHED")
        state = TrialState.COMPLETE
    tell(study, trial, value, state)
    job.told = True


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState) -> None:
    """study.tell, minus the RuntimeError a GridSampler raises after the last grid point.

    The grid sampler calls study.stop() once every point is done, which is an error outside
    study.optimize (optuna issue 4121). The trial's state is stored before that, so it is harmless.
    """
    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


def describe(trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no COMPLETE trial yet
        return None

