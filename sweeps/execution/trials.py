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

import itertools
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
from fmnist_tracking.console import Outlook, PackProgress
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
    # no time on this bar: the trials of a pack end together, and the pack's bar below it
    # (console.PackProgress) gives the time left
    layout = "{desc}: {n_fmt} trials done{postfix}" if to_go is None else \
        "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} trials done{postfix}"
    bar = tqdm(total=to_go, unit="trial", desc=plan.study_name, disable=not progress, dynamic_ncols=True,
               bar_format=layout)
    background = Background()
    with bar, worker.heartbeats():
        try:
            closes = trial_loop(study, plan, splits, tracker, worker, background, population,
                                shown=lambda held: show_progress(bar, study, plan, held, worker, progress),
                                on_round=on_round or (lambda: None),
                                watch=lambda group, after: pack_progress(study, plan, group, after, splits,
                                                                         worker, tty=progress))
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
               background: Background, population: int, shown, on_round: Callable[[], None],
               watch=None) -> bool:
    """run_trials' loop: recover, claim a population, train it, queue its MLflow work; repeat. `watch(group,
    trials claimed after it)` makes the display of a pack (pack_progress); `on_round()` follows the queueing
    of a decided sweep's next round."""
    started = time.monotonic()
    deadline = started + plan.timeout if plan.timeout else None
    total = plan.total_trials()
    trained = waited = fresh = False  # fresh: trained since this worker last found nothing to take
    poll = min(5.0, worker.heartbeat or 1.0)  # seconds between looks at the queue while others train
    while deadline is None or time.monotonic() < deadline:
        recover(study, worker, tracker.client, tracker.experiment_id, tracker.parent_run_id)
        with worker.claiming(study):  # on a shared storage, a pack goes whole to one worker
            leases = claim_population(study, plan, population, total, worker)
        groups = list(by_shape(leases))
        for index, group in enumerate(groups):
            after = sum(map(len, groups[index + 1:]))  # claimed with it, trained next (another shape)
            train_group(study, plan, group, splits, tracker, background, shown,
                        progress=watch(group, after) if watch else None)
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
    """After a trial is told (in the background thread): the bar, or one line per trial. The bar shows the
    top single trial's value, named so: the sweep's best is the recommendation its report gives, not the
    luckiest seed."""
    bar.update(1)
    top = best_value(study)
    if top is not None:
        bar.set_postfix({f"top trial {plan.definition.metric}": f"{top:.4f}"})
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
                tracker: Tracker, background: Background, shown: Callable[[TrialLease], None],
                progress: PackProgress | None = None) -> None:
    """Train leases of one shape as one population: a child run each, every epoch reported to Optuna
    at once and logged to MLflow in the background; what a trained trial still needs is queued there too.
    `progress` displays the pack (closed here)."""
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
    try:
        results = train_population([held.config for held in leases], splits, on_epoch=on_epoch,
                                   objective=objective,
                                   on_progress=progress.on_progress if progress else None,
                                   on_epoch_end=progress.on_epoch_end if progress else None)
    finally:
        if progress is not None:
            progress.close()
    for member, (held, result) in enumerate(zip(leases, results, strict=True)):
        held.trained()
        background.submit(held.close, result, splits, pruned_epoch=pruned_at.get(member),
                          pruner=plan.definition.pruner, on_error=held.requeue)
        background.submit(shown, held)


def pack_progress(study: optuna.Study, plan: StudyPlan, leases: list[TrialLease], claimed_after: int,
                  splits: fdata.Splits, worker: Worker, *, tty: bool) -> PackProgress:
    """The display of a pack about to train: its trials, the trials queued after it (this worker's other
    claimed shapes and the study's WAITING trials: a decided sweep's round, else the sweep's queue) and
    the most trials the sweep's later rounds can add (trials_later_at_most)."""
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    config = leases[0].config
    title = plan.study_name if worker.exclusive else f"{plan.study_name} [{worker.name}]"
    return PackProgress(title, [held.number for held in leases], config.epochs,
                        -(-len(splits.train_y) // config.batch_size), tty=tty,
                        outlook=Outlook(queued_after=waiting + claimed_after,
                                        later_at_most=trials_later_at_most(study, plan),
                                        round_name="round" if plan.decides else "sweep"))


def trials_later_at_most(study: optuna.Study, plan: StudyPlan) -> int | None:
    """The most trials the sweep can still ask for beyond those queued or running now (None: no bound,
    a sampler with only a time budget).

    A grid queues all its points at once: 0. A sampler with a budget: the trials not yet sampled. A decided
    sweep adds at most one seed per undecided configuration per round, up to max_seeds: every configuration
    not yet decided (or the leader) can still get the seeds below max_seeds it has not tried; one decided
    gets none (definitions/rule.py, execution/rounds.py). With --confirm, before the K best are chosen:
    the budget left to sample, and K configurations' seeds 1..max_seeds-1.
    """
    if not plan.decides:
        total = plan.total_trials()
        if plan.definition.sampler == "grid":
            return 0
        return None if total is None else max(0, total - trials_claimed(study))
    from sweeps.analysis import rounds as analysis_rounds

    trials = study.get_trials(deepcopy=False)
    if plan.confirm and not analysis_rounds.confirmed(study):
        left_to_sample = max(0, (plan.total_trials() or 0) - trials_claimed(study))
        return left_to_sample + plan.confirm * (plan.max_seeds - 1)
    tried: dict[tuple, set[int]] = {}
    for trial in trials:
        key, seed = _key_and_seed(trial)
        tried.setdefault(key, set()).add(seed)
    if plan.confirm:
        configurations = [_normal(key) for key, _ in analysis_rounds.confirmed(study)]
    else:
        grid = plan.definition.grid()
        configurations = [_normal(tuple(zip(grid, values, strict=True)))
                          for values in itertools.product(*grid.values())]
    state = analysis_rounds.state(study, plan, trials)
    decided = set()
    if state is not None:
        decided = {_normal(key) for key, at in zip(state.keys, state.decision.decided_at, strict=True)
                   if at is not None}
        if not state.decision.additions and not study.get_trials(
                deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            return 0  # the decision stopped (or the budget did): no later round
    return sum(max(0, plan.max_seeds - len(tried.get(key, ()))) for key in configurations
               if key not in decided)


def _normal(key) -> tuple:
    return tuple(sorted((str(name), repr(value)) for name, value in key))


def _key_and_seed(trial: FrozenTrial) -> tuple[tuple, int]:
    """(configuration, seed) of a trial in any state, as the study's record derives them."""
    return _normal(record.config_key(trial)), record.seed_of(trial)


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

