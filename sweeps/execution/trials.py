"""A worker's trials: claim a population from the queue, train it, and hand its MLflow work to the
background thread while the next population trains (runner.py sets up the sweep around this).

Population: up to `population` trials are asked at once; those whose configurations share
trainer.SHARED_FIELDS are trained together by `train_population`, each still its own trial
and child run. On a shared storage a worker stops taking trials at the first change of shape,
so it holds only what it trains together and leaves the rest of the queue to other workers.
Each sampled configuration of a TPE/random sweep with K seeds is re-queued with seeds
1..K-1, so its repeats are asked next and trained alongside it.

Every trial taken is a `lease.TrialLease` from the moment it is RUNNING: what an interruption does
to it is lease.py's; this module decides when to claim, train and settle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from fmnist_core import data as fdata
from fmnist_core.config import ConfigError, Objective, RunConfig
from fmnist_core.trainer import (
    SHARED_FIELDS,
    train_population,
)
from fmnist_tracking import run_log
from fmnist_tracking.names import (
    DATASET_DIGEST_TAG,
    SEED_TAG,
    STUDY_TAG,
    SWEEP_ROLE_TAG,
    SWEEP_TAG,
    TRIAL,
    TRIAL_TAG,
)
from sweeps import trial_record as record
from sweeps.defaults import DEFAULT_POPULATION
from sweeps.definitions.plan import StudyPlan, describe_params
from sweeps.execution import rounds
from sweeps.execution.background import Background
from sweeps.execution.lease import TrialLease
from sweeps.execution.study import (
    study_done,
    trials_claimed,
    trials_done,
)
from sweeps.execution.workers import Worker, recover
from sweeps.trial_record import TrialRecord


@dataclass(frozen=True)
class Tracker:
    client: object  # MlflowClient
    experiment_id: str
    parent_run_id: str
    splits: fdata.Splits  # every child run's dataset input

    @property
    def dataset_digest(self) -> str:  # tagged on every child run: `best` checks a checkpoint against its data
        return self.splits.digest


class TimeBudgetSpent(Exception):
    """A decided sweep's --time-budget ran out between rounds: no new round was started (a re-run goes on
    from the study's record; the verdicts so far stand, as the budget never changes one)."""


def run_trials(study: optuna.Study, plan: StudyPlan, splits: fdata.Splits, tracker: Tracker,
               worker: Worker, *, population: int = DEFAULT_POPULATION, progress: bool = True,
               on_round: Callable[[], None] | None = None) -> bool:
    """Take, train and tell trials until none is queued or running anywhere, the budget is used up or
    this invocation's timeout passes. Returns True when this worker closes the sweep: it told the
    last trial, found the study already finished, or timed out with no other worker at work.
    `on_round`: called after this worker queued a decided sweep's next round (the answer so far).
    Raises TimeBudgetSpent where plan.time_budget stops it between rounds.

    Interrupted (Ctrl-C, SIGTERM, an error): the trials in training are re-queued at once, the trials
    already trained get their pending MLflow work finished (a second Ctrl-C re-queues them too)."""
    total = plan.total_trials()
    to_go = None if total is None else max(0, total - trials_done(study))
    bar = tqdm(total=to_go, unit="trial", desc=plan.study_name, disable=not progress, dynamic_ncols=True)
    background = Background()
    with bar, worker.heartbeats():
        try:
            closes = trial_loop(study, plan, splits, tracker, worker, background, population,
                                shown=lambda held: show_progress(bar, study, plan, held, worker, progress),
                                on_round=on_round or (lambda: None))
        except TimeBudgetSpent:
            raise  # between rounds: nothing held, nothing to re-queue
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
               background: Background, population: int, shown, on_round: Callable[[], None]) -> bool:
    """run_trials' loop: recover, claim a population, train it, queue its MLflow work; repeat."""
    started = time.monotonic()
    deadline = started + plan.timeout if plan.timeout else None
    total = plan.total_trials()
    trained = waited = fresh = False  # fresh: trained since this worker last found nothing to take
    poll = min(5.0, worker.heartbeat or 1.0)  # seconds between looks at the queue while others train
    while deadline is None or time.monotonic() < deadline:
        recover(study, worker, tracker.client, tracker.experiment_id, tracker.parent_run_id)
        with worker.claiming(study):  # on a shared storage, a pack goes whole to one worker
            leases = claim_population(study, plan, population, total, worker)
        for group in by_shape(leases):
            train_group(study, plan, group, splits, tracker, background, shown)
        if leases:
            trained = fresh = True
            continue
        background.drain()  # nothing more to take: this worker's trials are told before it looks
        if plan.decides and plan.time_budget is not None and \
                time.monotonic() - started >= plan.time_budget and rounds.pending(study, plan):
            raise TimeBudgetSpent(f"--time-budget {plan.time_budget:g} s spent after "
                                  f"{time.monotonic() - started:.0f} s")
        if plan.decides and rounds.advance(study, plan, worker, say=tqdm.write):
            on_round()
            fresh = True  # it queued the next round: this worker goes on, and may close the sweep
            continue
        if study_done(study, plan):
            return fresh or not (trained or waited)  # it told the last trial, or found it done (a re-run)
        fresh = False
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not waited and running:
            owners = ", ".join(sorted({TrialRecord.of(t).owner for t in running}))
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
    label = describe_params(record.params_of(frozen))
    return f"trial {frozen.number} {frozen.state.name} ({label}){value} [{worker.name}]"


def claim_population(study: optuna.Study, plan: StudyPlan, limit: int, total: int | None,
                     worker: Worker) -> list[TrialLease]:
    """Up to `limit` trials with their configurations: queued trials first (grid points, re-queued
    and repeated trials), then, for TPE/random within the budget, newly sampled ones. Every trial
    taken is held by `worker` from the moment it is RUNNING (see lease.py)."""
    leases: list[TrialLease] = []
    shared = not worker.exclusive
    while len(leases) < limit:
        # On a shared storage only trials of the first one's shape join: the rest is left to other workers.
        fits = joins_population(plan, leases[0].config) if shared and leases else None
        if fits is not None:  # read only where it decides something: each read loads every queued trial
            queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if queued and not fits(queued[0]):
                break  # leave it to a worker that is free
        sample = plan.definition.sampler != "grid" and (total is None or trials_claimed(study) < total)
        held = TrialLease.claim(worker, study, sample=sample, accept=fits)
        if held is None:
            break
        try:
            held.config = suggest_config(held.trial, plan)
        except ConfigError as error:  # a sampled combination the config refuses: this trial only
            record.failed(held.trial, str(error))
            held.settle(TrialState.FAIL)
            tqdm.write(f"trial {held.number} failed: {error}")
            continue
        leases.append(held)
        trial = held.trial
        if plan.seeds > 1 and not plan.seed_axis and TrialRecord.of(trial).seed is None:
            for seed in range(1, plan.seeds):  # the repeats of a newly sampled configuration
                study.enqueue_trial(record.params_of(trial), user_attrs=record.repeat(seed, of=trial.number))
        record.seeded(trial, held.config.seed)
        if shared and len(leases) > 1 and shape(held.config) != shape(leases[0].config):
            break  # a newly sampled trial of another shape: trained after the first group
    return leases


def shape(config: RunConfig) -> tuple:
    """What population members must share (trainer.SHARED_FIELDS)."""
    return tuple(getattr(config, f) for f in SHARED_FIELDS)


def joins_population(plan: StudyPlan, first: RunConfig) -> Callable[[FrozenTrial], bool]:
    """Whether a queued trial can join `first`'s population (same shape, from its fixed params)."""
    def fits(queued: FrozenTrial) -> bool:
        try:
            queued_config = record.config_of(plan, record.params_of(queued), source="queued trial")
            return shape(queued_config) == shape(first)
        except ConfigError:
            return False

    return fits


def suggest_config(trial: optuna.Trial, plan: StudyPlan) -> RunConfig:
    """The trial's RunConfig: each axis of the space suggested, then applied to the base. The seed is
    not suggested (not a searched parameter): a queued trial's is in its record, a sampled trial's is 0;
    with one seed and no rounds, the base's."""
    params = {}
    for param in plan.definition.space:
        if param.choices:
            params[param.name] = trial.suggest_categorical(param.name, list(param.choices))
        elif param.integer:
            params[param.name] = trial.suggest_int(param.name, int(param.low), int(param.high), log=param.log,
                                                   step=int(param.step or 1))
        else:
            params[param.name] = trial.suggest_float(param.name, param.low, param.high, log=param.log,
                                                     step=param.step)
    config = record.config_of(plan, params, source=f"trial {trial.number}")
    if plan.seed_axis or plan.seeds > 1 or plan.confirm:
        seed = TrialRecord.of(trial).seed
        if seed is None and plan.seed_axis:  # a grid point queued before 7 Dec 2026: its seed a fixed param
            seed = trial.suggest_categorical(record.SEED_PARAM, plan.grid()[record.SEED_PARAM])
        config = config.replace({"seed": seed or 0}, source=f"trial {trial.number}")
    return config


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
            device=splits.device,
            run_name=run_name(plan, held),
            tags={**trial_tags(plan, held), DATASET_DIGEST_TAG: tracker.dataset_digest}))
        background.submit(held.record_start, tracker.client, tracker.splits, len(leases))
    objective = Objective(plan.definition.metric, plan.definition.direction)
    results = train_population([held.config for held in leases], splits, on_epoch=on_epoch,
                               objective=objective)
    for member, (held, result) in enumerate(zip(leases, results, strict=True)):
        held.trained()
        background.submit(held.close, result, splits, pruned_epoch=pruned_at.get(member),
                          pruner=plan.definition.pruner, on_error=held.requeue)
        background.submit(shown, held)


def trial_tags(plan: StudyPlan, held: TrialLease) -> dict[str, str]:
    tags = {SWEEP_TAG: plan.definition.name, STUDY_TAG: plan.study_name, SWEEP_ROLE_TAG: TRIAL,
            TRIAL_TAG: str(held.number), SEED_TAG: str(held.config.seed)}
    tags.update({f"sampled.{k}": str(v) for k, v in record.params_of(held.trial).items()})
    repeat_of = TrialRecord.of(held.trial).repeat_of
    if repeat_of is not None:
        tags["repeat_of"] = str(repeat_of)
    if held.retry_of is not None:
        tags["retry_of"] = str(held.retry_of)
    return tags


def run_name(plan: StudyPlan, held: TrialLease) -> str:
    """What varies and the seed, e.g. `hidden_size=1024, seed=0`: always the seed, since a sweep may add
    seeds in later rounds, and a configuration's runs are told apart by it."""
    label = describe_params(record.params_of(held.trial)) or plan.study_name
    return f"{label}, seed={held.config.seed}"


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no COMPLETE trial yet
        return None

