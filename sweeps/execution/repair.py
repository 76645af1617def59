"""`python cli.py sweep NAME --repair`: recover what stopped workers left, without training.

Stale trials are failed and re-queued and their runs closed (workers.recover, the same code every
worker runs between populations); an idle parent run is closed: FINISHED with its report when the
study is complete, else KILLED so that re-running the sweep resumes it.
"""

from __future__ import annotations

from pathlib import Path

import click
from optuna.trial import TrialState

from fmnist_tracking import run_log, store
from sweeps import trial_record as record
from sweeps.analysis import report
from sweeps.defaults import DEFAULT_HEARTBEAT
from sweeps.definitions.loader import load_definition
from sweeps.definitions.plan import plan_studies
from sweeps.execution import rounds
from sweeps.execution import storage as stores
from sweeps.execution.study import (
    as_trained,
    default_storage,
    load_study,
    no_study,
    study_done,
    trials_done,
    without_password,
)
from sweeps.execution.workers import Worker, recover
from sweeps.trial_record import TrialRecord


def repair_sweep(name: str | Path, *, impl: str | None = None, storage: str | None = None,
                 tracking_uri: str | None = None, experiment: str = store.DEFAULT_EXPERIMENT,
                 heartbeat: int = DEFAULT_HEARTBEAT) -> None:
    """`--repair`: recover the trials and runs of dead workers and close an idle parent run, no training."""
    plans = plan_studies(load_definition(name), impl=impl)
    storage = storage or default_storage(tracking_uri)
    database = stores.sqlite_file(storage)
    if database is not None and not database.exists():  # repair creates no file, for a mistyped path neither
        raise no_study(plans[0], without_password(storage))
    with stores.sqlite_guard(storage, store.resolve_tracking_uri(tracking_uri)) as exclusive:
        client, experiment_id = store.setup(tracking_uri, experiment, create=False)
        worker = Worker.open(storage, heartbeat, exclusive=exclusive)
        for plan in plans:
            study = load_study(plan, worker.storage, without_password(storage))
            plan = as_trained(study, plan)
            parent_id = record.parent_run_id(study)
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            recover(study, worker, client, experiment_id, parent_id, startup=True)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            recovered = len(before - {t.number for t in running})
            click.echo(f"{plan.study_name}: {recovered} stale trial(s) failed and re-queued; {len(running)} "
                       f"running, {len(waiting)} queued, {trials_done(study)} finished")
            if running:
                owners = ", ".join(sorted({TrialRecord.of(t).owner for t in running}))
                click.echo(f"  still running on {owners}; a worker that is gone is recovered once its "
                           f"heartbeat is {worker.grace} s old: repair again then")
                continue
            parent = client.get_run(parent_id) if parent_id else None
            if parent is None or parent.info.status != "RUNNING":
                continue
            logger = run_log.RunLogger(client, parent_id, experiment_id)
            if not waiting and study_done(study, plan) and not rounds.pending(study, plan):
                report.build_report(study, plan, client, parent_id)
                logger.end("FINISHED")
                click.echo(f"  complete: report rebuilt, parent run {parent_id} FINISHED")
            else:
                left = f"{len(waiting)} trials queued" if waiting else "its next round not yet queued"
                resume = f"python cli.py sweep {plan.definition.name}"
                logger.set_tags({"decision": "stopped", "next_command": resume})
                logger.end("KILLED", f"sweep stopped with {left}; re-run it to resume")
                click.echo(f"  parent run {parent_id} closed KILLED; re-run the sweep to train the queued "
                           "trials")
