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
"""

from __future__ import annotations

from pathlib import Path

import click
import optuna
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState
from tqdm import tqdm

from fmnist_core import data as fdata
from fmnist_core.config import ConfigError
from fmnist_core.trainer import splits_for
from fmnist_tracking import run_log, signals, store
from fmnist_tracking.names import DATASET_DIGEST_TAG, NOTE_TAG, PARENT, STUDY_TAG, SWEEP_ROLE_TAG, SWEEP_TAG
from sweeps import trial_record as record
from sweeps.analysis import report, text
from sweeps.analysis.summary import Summary
from sweeps.definitions.loader import load_definition
from sweeps.definitions.plan import StudyPlan, fmt_value, plan_studies
from sweeps.definitions.request import SweepRequest
from sweeps.execution import outage
from sweeps.execution import storage as stores
from sweeps.execution.study import (
    as_trained,
    check_settings,
    default_storage,
    enqueue_grid,
    load_study,
    mark_ready,
    open_study,
    wait_until_ready,
    without_password,
)
from sweeps.execution.trials import TimeBudgetSpent, Tracker, run_trials
from sweeps.execution.workers import Worker, recover

READY_TIMEOUT = 120  # seconds a worker waits for another one that is creating the study


@outage.ends_in_one_line  # a database away past `outage_timeout` seconds: one line, exit code 1
def run_sweep(request: SweepRequest | str | Path, *, splits: fdata.Splits | None = None,
              **fields) -> list[report.Summary]:
    """Run (or resume, or join) the sweep asked for; returns the ranked summary of each study this worker
    closed. `request`: the CLI's SweepRequest, or a sweep's name (or path) with `fields` (SweepRequest's
    fields) for a library caller. `request.create`: only create the studies (parent runs, queued grid
    points) and return. `splits`: the data, already loaded (tests); else loaded once here."""
    request = request if isinstance(request, SweepRequest) else SweepRequest(name=request, **fields)
    # every setting is checked before anything is loaded or trained
    plans = plan_studies(load_definition(request.name), request)
    storage = request.storage or default_storage(request.tracking_uri)
    tracking_uri = store.resolve_tracking_uri(request.tracking_uri)
    with stores.sqlite_guard(storage, tracking_uri) as exclusive:
        outage.tolerate_mlflow_store(tracking_uri, request.outage_timeout)
        client, experiment_id = store.setup(request.tracking_uri, request.experiment)
        worker = Worker.open(storage, request.heartbeat, exclusive=exclusive,
                             outage_timeout=request.outage_timeout)
        if splits is None and not request.create:
            splits = splits_for(plans[0].base, request.data_dir)  # the one load: its device, its split
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it instead
        summaries = []
        for plan in plans:
            with signals.handle_sigterm():
                study, parent_id, queued = join_study(plan, worker, storage, client, experiment_id,
                                                      fresh=request.fresh, owner=request.create or exclusive)
                if request.create:
                    held = len(study.get_trials(deepcopy=False))
                    click.echo(f"Study {plan.study_name} ready in {without_password(storage)}: {queued} "
                               f"trials queued, {held} in all; MLflow parent run {parent_id}. Start workers "
                               "with the same NAME, --storage and --tracking-uri.")
                    continue
                tracker = Tracker(client, experiment_id, parent_id, splits)
                summary = work(study, plan, splits, tracker, worker, storage, population=request.population,
                               progress=request.progress)
            if summary is not None:
                click.echo(text.answer(summary))
                summaries.append(summary)
    return summaries


def join_study(plan: StudyPlan, worker: Worker, storage: str, client, experiment_id: str, *, fresh: bool,
               owner: bool) -> tuple[optuna.Study, str, int]:
    """(study, parent run id, trials queued now). The owner (the worker that created the study,
    `--create`, or the only worker of a SQLite study) makes the parent run and queues the grid,
    then stores the settings; other workers wait for those, then check them against their own."""
    study, created = open_study(plan, worker.storage, fresh=fresh)
    owner = owner or created
    if not owner and record.settings(study) is None:
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
    run_id = record.parent_run_id(study)
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException:  # the study was run against another store: start a new parent here
            run = None
        usable = run is not None and run.info.lifecycle_stage == "active"
        if usable and run.info.experiment_id == experiment_id:
            return run_log.RunLogger(client, run_id, experiment_id)
    d = plan.definition
    tags = {SWEEP_TAG: d.name, SWEEP_ROLE_TAG: PARENT, STUDY_TAG: plan.study_name, "sampler": d.sampler,
            "seeds": plan.seeds, NOTE_TAG: d.description, "swept": ", ".join(sorted(d.fields))}
    if digest:
        tags[DATASET_DIGEST_TAG] = digest
    parent = run_log.RunLogger.start(client, experiment_id, plan.base, run_name=plan.study_name, tags=tags,
                                     params=sweep_params(plan))
    record.set_parent_run_id(study, parent.run_id)
    return parent


def sweep_params(plan: StudyPlan) -> dict[str, str]:
    """The parent run's params describe the sweep: each axis with the values it takes, and the settings
    every trial shares; a field the sweep varies never shows the base value it overrides."""
    d = plan.definition
    params = {k: v for k, v in plan.base.as_dict().items() if k not in d.fields}
    for param in d.space:
        if param.choices:
            params[param.name] = "[" + ", ".join(fmt_value(value) for value in param.choices) + "]"
        else:
            scale = " (log)" if param.log else ""
            params[param.name] = f"{fmt_value(param.low)}..{fmt_value(param.high)}{scale}"
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
    parent.set_tags({DATASET_DIGEST_TAG: tracker.dataset_digest})  # `--create` made it without data
    run_log.log_dataset(client, parent_id, splits)  # every worker: MLflow keeps one of each
    click.echo(f"Sweep {plan.study_name}: {plan.definition.description}\n"
               f"  Optuna study in {without_password(storage)}; MLflow parent run {parent_id}; "
               f"worker {worker.name}")
    recover(study, worker, client, tracker.experiment_id, parent_id, startup=True)

    def answer_so_far() -> None:  # after each round: every place a user looks holds the answer so far
        summary = report.build_report(study, plan, client, parent_id, state="running", figures=False)
        if summary.recommendation is not None:
            tqdm.write(f"  So far: {summary.recommendation.sentence()}")

    try:
        with run_log.system_metrics(client, parent_id):
            closes = run_trials(study, plan, splits, tracker, worker, population=population,
                                progress=progress, on_round=answer_so_far if plan.decides else None)
    except TimeBudgetSpent as spent:
        summary = report.build_report(study, plan, client, parent_id, state="stopped", figures=False)
        resume = f"python cli.py sweep {plan.definition.name}"
        parent.end("KILLED", f"stopped by {spent}; run `{resume}` again to continue the rounds")
        click.echo(f"Stopped: {spent}. The verdicts so far stand (a time budget never changes one); run "
                   f"`{resume}` (same --storage and --tracking-uri) to continue the rounds.")
        return summary
    except BaseException as error:
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # no other worker at work
            _stopped(parent, plan, error)
        raise
    if not closes:
        click.echo(f"Worker {worker.name} done; the sweep is closed by the worker that finished it.")
        return None
    summary = report.build_report(study, plan, client, parent_id, splits=splits)
    parent.end("FINISHED")
    return summary


def _stopped(parent: run_log.RunLogger, plan: StudyPlan, error: BaseException) -> None:
    """Ctrl-C, SIGTERM or an error with no other worker at work: the parent is closed and tagged stopped,
    with the command that resumes (cli.py says it too); the answer so far is the last round's report."""
    resume = f"python cli.py sweep {plan.definition.name}"
    try:
        parent.set_tags({"decision": "stopped", "next_command": resume})
    except Exception:  # noqa: BLE001 - the store itself may be what failed; closing it is what matters
        pass
    parent.__exit__(type(error), error, error.__traceback__)


def rebuild_reports(name, *, impl: str | None = None, storage: str | None = None,
                    tracking_uri: str | None = None,
                    experiment: str = store.DEFAULT_EXPERIMENT) -> list[Summary]:
    """`python cli.py report NAME`: the parent runs' answer, figures and tables, made again from the study."""
    plans = plan_studies(load_definition(name), impl=impl)
    storage = storage or default_storage(tracking_uri)
    client, _ = store.setup(tracking_uri, experiment, create=False,
                            first=f"run the sweep first (python cli.py sweep {name})")
    summaries = []
    for plan in plans:
        study = load_study(plan, storage)
        plan = as_trained(study, plan)
        parent_id = record.parent_run_id(study)
        try:
            client.get_run(parent_id or "none")
        except MlflowException:
            raise ConfigError(f"the parent run {parent_id} of study {plan.study_name!r} is not in this "
                              "MLflow store; pass the --tracking-uri and --experiment of the sweep") from None
        summaries.append(report.build_report(study, plan, client, parent_id))
        click.echo(f"Report of {plan.study_name} logged to MLflow run {parent_id}")
        click.echo(text.answer(summaries[-1]))
    return summaries
