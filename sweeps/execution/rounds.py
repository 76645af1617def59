"""A decided sweep's next round: recorded once, then queued, by the worker that finds a round finished.

trials.trial_loop calls `advance` when it finds nothing to take. Under the study's claim lock (on
PostgreSQL an advisory lock, workers.Worker.claiming; a SQLite study has one worker), with no trial
queued or running anywhere: if the latest recorded round still has trials not queued (a worker stopped
between recording and queueing), those are queued; otherwise the study is replayed
(analysis/rounds.state) and, if the decision goes on, the next round is recorded in the study's user
attr `rounds` in one write, then its trials are queued. A tpe/random sweep with --confirm K does the
same once its budget is sampled, over the K best configurations (recorded first, in `confirmed`).

The record is the decision: it is written before any trial of the round exists. A worker interrupted
after it only leaves trials to queue, which the next one queues from the record without deciding
again; one interrupted before it leaves nothing, so the next worker decides from the same finished
trials. Either way a resumed sweep queues what an uninterrupted one would (the time budget aside: it
reads the clock). The queue itself is one enqueue per trial, not one transaction; the record makes it
idempotent, which is what "exactly once" needs.

`hooks` let tests stop a worker at each of those points (between the last trial of a round and its
record, between the record and the queue, half-way through the queue); in a worker process,
`$FMNIST_ROUNDS_KILL_AT` naming one of them makes the process SIGKILL itself there (the e2e test).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from sweeps import trial_record as record
from sweeps.analysis import rounds as analysis_rounds
from sweeps.definitions.plan import StudyPlan
from sweeps.execution.study import trials_claimed
from sweeps.execution.workers import Worker
from sweeps.trial_record import TrialRecord, config_key, seed_of

# Test hooks, called with the study: "before_record" (the round is finished, nothing recorded yet),
# "recorded" (the next round is recorded, nothing queued), "queued_one" (after the first trial is queued).
hooks: dict[str, Callable[[optuna.Study], None]] = {}


def advance(study: optuna.Study, plan: StudyPlan, worker: Worker, say: Callable[[str], None]) -> int:
    """Queue what the next round needs; returns the trials queued (0: the sweep is decided, or ended, or
    another worker still trains this round). `say` gets the line per round."""
    with worker.claiming(study):
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            return 0
        recorded = record.rounds(study)
        trials = study.get_trials(deepcopy=False)
        if plan.confirm and not _choose_confirmed(study, plan, trials):
            return 0  # still sampling (another worker's trials), or nothing finished to confirm
        missing = _unqueued(recorded, trials)
        if missing:
            return _queue(study, missing, recorded[-1]["round"], plan)
        state = analysis_rounds.state(study, plan, trials)
        if state is None:
            return 0
        additions = state.decision.additions
        _hook("before_record", study)
        if not additions:
            say(analysis_rounds.round_line(state, state.rounds_done, 0))
            return 0
        number = state.rounds_done + 1
        entries = []
        for c in additions:
            seeds = [seed_of(t) for t in trials if config_key(t) == state.keys[c]]
            entries.append([record.stored_key(state.keys[c]), max(seeds, default=-1) + 1])
        record.record_rounds(study, recorded + [{"round": number, "trials": entries}])
        _hook("recorded", study)
        say(analysis_rounds.round_line(state, state.rounds_done, len(entries)))
        return _queue(study, entries, number, plan)


def pending(study: optuna.Study, plan: StudyPlan) -> bool:
    """Whether a decided sweep with nothing queued or running still has a round to queue (its worker
    stopped between a round's end and the next round's record, or before queueing all of it)."""
    if not plan.decides:
        return False
    trials = study.get_trials(deepcopy=False)
    if _unqueued(record.rounds(study), trials):
        return True
    if plan.confirm and not record.confirmed(study):
        return True
    state = analysis_rounds.state(study, plan, trials)
    return state is not None and bool(state.decision.additions)


def _unqueued(recorded: list[dict], trials: list) -> list:
    """The latest recorded round's entries with no trial yet (any state: a failed seed is not trained
    again): what a worker stopped between recording a round and queueing all of it left."""
    if not recorded:
        return []
    existing = {(config_key(t), seed_of(t)) for t in trials}
    return [entry for entry in recorded[-1]["trials"] if analysis_rounds.entry_key(entry) not in existing]


def _choose_confirmed(study: optuna.Study, plan: StudyPlan, trials: list) -> bool:
    """A sampler sweep with --confirm K: once its budget is sampled, the K best configurations (by their
    first trial's objective; trial number breaks ties) are recorded once as the confirmation's round 1."""
    if record.confirmed(study):
        return True
    if trials_claimed(study) < (plan.total_trials() or 0):
        return False
    sign = -1 if plan.definition.direction == "maximize" else 1
    sampled = [t for t in trials if t.state == TrialState.COMPLETE and TrialRecord.of(t).repeat_of is None]
    if not sampled:
        return False
    top = sorted(sampled, key=lambda t: (sign * t.value, t.number))[:plan.confirm]
    record.record_confirmed(study, [[record.stored_key(config_key(t)), t.number] for t in top])
    return True


def _queue(study: optuna.Study, entries: list, number: int, plan: StudyPlan) -> int:
    first = dict(analysis_rounds.confirmed(study))  # --confirm: configuration -> its sampled trial
    for index, entry in enumerate(entries):
        key, seed = analysis_rounds.entry_key(entry)
        if plan.confirm:  # a repeat of the sampled trial: its params fixed, its seed in its user attrs
            study.enqueue_trial(dict(key), user_attrs={**record.repeat(seed, of=first[key]),
                                                       **record.in_round(number)})
        else:  # the seed is the trial's record, not a param (the study searches the swept params only)
            study.enqueue_trial(dict(key), user_attrs={**record.seeded_as(seed), **record.in_round(number)})
        if index == 0:
            _hook("queued_one", study)
    return len(entries)


KILL_ENV = "FMNIST_ROUNDS_KILL_AT"


def _hook(name: str, study: optuna.Study) -> None:
    if name in hooks:
        hooks[name](study)
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
