"""The lease's settled states (TOLD, LOST, REQUEUED) and recovery's refusal to re-queue a finished trial,
in-process and in milliseconds: an in-memory Optuna storage, and a stand-in for the MLflow child run
that records how it was closed. tests/sweeps/execution/test_lease.py reaches the same states with real
SQLite stores and real signals; tests/sweeps/execution/test_workers.py with worker processes.

What a user would be hurt by: a trial another worker already failed and re-queued, closed REQUEUED by
this one (a second copy: its grid point trained twice), or re-queued by recovery after its own worker
finished it (the same).
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from fmnist_tracking.names import STOP_REASON_TAG
from sweeps.execution import workers
from sweeps.execution.lease import SETTLED, State, TrialLease
from sweeps.execution.workers import Worker

pytestmark = pytest.mark.unit


class MemoryStorage(optuna.storages.InMemoryStorage):
    """Optuna's in-memory storage, without heartbeats (as SQLite): what Worker asks of a storage."""

    def get_heartbeat_interval(self) -> None:
        return None


class StandInRun:
    """The child run's side of a lease: how it was closed, once."""

    run_id = "run0"

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.closed: list[tuple[str, str | None]] = []

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        self.closed.append((status, reason))

    def __exit__(self, kind, error, traceback) -> bool:
        self.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED", repr(error))
        return False


@pytest.fixture
def setting():
    """A study of two queued grid points on an in-memory storage, this worker and another one."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = MemoryStorage()
    study = optuna.create_study(study_name="lease", storage=storage)
    for hidden in (8, 16):
        study.enqueue_trial({"hidden_size": hidden})
    return study, Worker(storage, exclusive=True, name="this:1"), Worker(storage, exclusive=False,
                                                                          name="other:2")


def tracked(study, worker) -> tuple[TrialLease, StandInRun]:
    held = TrialLease.claim(worker, study, sample=False)
    run = StandInRun()
    held.track(lambda: run)
    return held, run


def state_of(study, number: int) -> TrialState:
    return study.get_trials(deepcopy=False)[number].state


def copies_of(study, number: int) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == number]


def test_a_lease_moves_claimed_tracked_trained_and_is_held_until_settled(setting):
    study, worker, _ = setting
    held = TrialLease.claim(worker, study, sample=False)
    assert held.state == State.CLAIMED and worker.leases == [held]
    assert state_of(study, held.number) == TrialState.RUNNING
    run = StandInRun()
    held.track(lambda: run)
    assert held.state == State.TRACKED and not held.training_done
    held.trained()
    assert held.state == State.TRAINED and held.training_done
    worker.requeue_all(KeyboardInterrupt(), trained=False)  # the background thread still closes it
    assert held.state == State.TRAINED and worker.leases == [held]
    assert held.settle(TrialState.COMPLETE, 0.75) == State.TOLD
    assert worker.leases == [] and held.state in SETTLED


def test_told_the_trial_is_complete_and_its_run_finished(setting):
    study, worker, _ = setting
    held, run = tracked(study, worker)
    assert held.settle(TrialState.COMPLETE, 0.75) == State.TOLD
    frozen = study.get_trials(deepcopy=False)[held.number]
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.75
    assert run.closed == [("FINISHED", None)]
    assert copies_of(study, held.number) == []


def test_requeued_an_interrupted_trial_is_failed_and_queued_once_and_its_run_killed(setting):
    study, worker, _ = setting
    held, run = tracked(study, worker)
    worker.requeue_all(KeyboardInterrupt())
    assert held.state == State.REQUEUED and worker.leases == []
    assert state_of(study, held.number) == TrialState.FAIL
    [copy] = copies_of(study, held.number)
    assert copy.state == TrialState.WAITING and copy.system_attrs["fixed_params"] == {"hidden_size": 8}
    assert [status for status, _ in run.closed] == ["KILLED"]


def test_lost_on_settle_another_worker_failed_the_trial_so_it_stays_failed_with_one_copy(setting):
    study, worker, other = setting
    held, run = tracked(study, worker)
    assert workers.fail_and_requeue(other, study, held.number)  # its heartbeat went stale, as seen by `other`
    assert held.settle(TrialState.COMPLETE, 0.75) == State.LOST
    assert state_of(study, held.number) == TrialState.FAIL  # not overwritten by this worker's tell
    assert len(copies_of(study, held.number)) == 1
    assert run.closed[0][0] == "KILLED" and run.tags[STOP_REASON_TAG] == "heartbeat_lost"
    assert worker.leases == []


def test_lost_on_requeue_another_worker_failed_the_trial_so_no_second_copy_is_queued(setting):
    """Interrupted after another worker failed and re-queued the trial: LOST, not REQUEUED; the one copy
    the other worker queued trains the point, and this lease adds none."""
    study, worker, other = setting
    held, run = tracked(study, worker)
    assert workers.fail_and_requeue(other, study, held.number)
    worker.requeue_all(KeyboardInterrupt())
    assert held.state == State.LOST
    assert state_of(study, held.number) == TrialState.FAIL
    assert len(copies_of(study, held.number)) == 1
    assert worker.leases == []


def test_a_settled_lease_is_left_as_it_is_by_a_later_requeue_or_settle(setting):
    study, worker, _ = setting
    told, _ = tracked(study, worker)
    told.settle(TrialState.COMPLETE, 0.75)
    told.requeue(KeyboardInterrupt())  # a late interrupt
    assert told.state == State.TOLD and state_of(study, told.number) == TrialState.COMPLETE
    requeued, run = tracked(study, worker)
    requeued.requeue(KeyboardInterrupt())
    assert requeued.settle(TrialState.COMPLETE, 0.5) == State.REQUEUED  # the background close, too late
    assert state_of(study, requeued.number) == TrialState.FAIL and len(run.closed) == 1
    assert len(copies_of(study, told.number)) == 0 and len(copies_of(study, requeued.number)) == 1


def test_fail_and_requeue_leaves_a_trial_another_worker_finished(setting):
    study, worker, other = setting
    held, _ = tracked(study, worker)
    held.settle(TrialState.COMPLETE, 0.75)
    assert not workers.fail_and_requeue(other, study, held.number)
    assert state_of(study, held.number) == TrialState.COMPLETE
    assert copies_of(study, held.number) == []
    assert len(study.get_trials(deepcopy=False)) == 2  # no grid point queued a second time


def test_recovery_re_queues_a_dead_workers_trial_once(setting):
    study, worker, _ = setting
    held, _ = tracked(study, worker)  # then this worker "dies": nothing more happens to the lease
    survivor = Worker(worker.storage, exclusive=True, name="survivor:3")
    workers.recover(study, survivor, client=None, experiment_id="", parent_run_id=None, startup=True)
    assert state_of(study, held.number) == TrialState.FAIL
    assert [copy.state for copy in copies_of(study, held.number)] == [TrialState.WAITING]


def test_recovery_leaves_a_trial_its_worker_finished_after_recovery_saw_it_running(setting):
    """The race: recovery lists the RUNNING trials, then the trial's own worker tells it COMPLETE, then
    recovery comes to fail it. Reached through the storage call recovery makes, which first lets the
    trial's worker settle it."""
    study, worker, _ = setting
    held, _ = tracked(study, worker)
    storage = worker.storage
    set_state = storage.set_trial_state_values

    def settled_first(trial_id, state, values=None):
        if state == TrialState.FAIL and held.state not in SETTLED:
            held.settle(TrialState.COMPLETE, 0.75)  # the live worker's tell lands first
        return set_state(trial_id, state, values)

    storage.set_trial_state_values = settled_first
    survivor = Worker(storage, exclusive=True, name="survivor:3")
    workers.recover(study, survivor, client=None, experiment_id="", parent_run_id=None, startup=True)
    assert held.state == State.TOLD
    assert state_of(study, held.number) == TrialState.COMPLETE
    assert copies_of(study, held.number) == []
