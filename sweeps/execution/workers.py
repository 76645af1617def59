"""This process as a worker, and what becomes of the trials of workers that died.

A Worker holds its leases (lease.py: the life of each trial it holds), beats their heartbeats on a
daemon thread, pops queued trials atomically and re-queues what it holds when interrupted.
A worker killed outright cannot do any of that: its trials stay RUNNING with their heartbeats
stopping, and `recover` (run by every worker between populations, and by `--repair`) fails them
once stale, queues a copy (`fail_and_requeue`, as an interrupted lease does) and closes their
MLflow runs KILLED. Imports nothing of lease.py: the arrow runs lease -> workers.

On a shared PostgreSQL storage a worker claims its population under a lock of the study's
(`claiming`, a PostgreSQL advisory lock), so a pack goes whole to one worker, not split between two that
claim at once; each trial is taken exactly once either way (the atomic pop).

Across an outage of the database (outage.py) a worker beats for its trials as soon as the storage is
back, and judges others' trials stale only once it has seen the storage up for a grace period: a
heartbeat that could not be written while the database was away does not fail a live worker's trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Protocol

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from fmnist_core.config import first_line
from fmnist_tracking.names import PARENT_RUN_TAG, STOP_REASON_TAG, TRIAL_TAG
from fmnist_tracking.run_log import RunLogger
from fmnist_tracking.signals import signals_deferred
from sweeps import trial_record as record
from sweeps.defaults import DEFAULT_OUTAGE_TIMEOUT
from sweeps.execution import storage as stores
from sweeps.execution.outage import OutageTooLong
from sweeps.trial_record import TrialRecord

MAX_STALE_RETRIES = 3  # a trial that kills its worker every time (e.g. out of memory) stops being retried


class Held(Protocol):
    """What a worker needs of a lease it holds (lease.TrialLease)."""

    trial: optuna.Trial

    @property
    def training_done(self) -> bool: ...

    def requeue(self, error: BaseException) -> None: ...


class Worker:
    """This process as a worker: its storage, its name, and the leases it holds (heartbeated)."""

    def __init__(self, storage: optuna.storages.RDBStorage, *, exclusive: bool, name: str | None = None):
        self.storage, self.exclusive, self.name = storage, exclusive, name or stores.worker_name()
        self.heartbeat = storage.get_heartbeat_interval()  # None on SQLite
        self.leases: list[Held] = []
        self._lock = threading.Lock()  # leases are read by the heartbeat thread
        self._stop = threading.Event()
        self._unowned_since: dict[int, float] = {}  # trial number -> when first seen RUNNING without a worker
        if self.heartbeat is not None:  # back from an outage: this worker's trials are beaten for first
            storage.outage.when_back(self._beat_held)

    @classmethod
    def open(cls, url: str, heartbeat: int, *, exclusive: bool,
             outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT) -> Worker:
        """A worker on the storage at `url`: stale trials found there are failed and re-queued."""
        return cls(stores.open_storage(url, heartbeat, RequeueStale(), outage_timeout), exclusive=exclusive)

    @property
    def grace(self) -> int | None:
        return None if self.heartbeat is None else stores.GRACE_BEATS * self.heartbeat

    def trial_id(self, study: optuna.Study, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def trial_state(self, study: optuna.Study, number: int) -> TrialState:
        return self.storage.get_trial(self.trial_id(study, number)).state

    def pop_queued(self, study: optuna.Study, accept: Callable[[FrozenTrial], bool] | None = None
                   ) -> tuple[optuna.Trial, FrozenTrial] | None:
        """The next queued trial, now RUNNING and this worker's; None when the queue is empty, or when
        the next one still queued is not one `accept`s (taken by another worker meanwhile, the one
        after it may be of another shape).

        study.ask() pops the queue the same way (an atomic WAITING -> RUNNING update, row-locked on
        PostgreSQL) but creates a new trial when the queue is empty: on a grid, a point trained twice.
        """
        for queued in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if accept is not None and not accept(queued):
                return None
            trial_id = self.trial_id(study, queued.number)
            if self.heartbeat is not None:  # beat first: killed right after the pop, it still goes stale
                self.storage.record_heartbeat(trial_id)
            try:
                if self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(study, trial_id), queued
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # taken and finished by another worker meanwhile
        return None

    @contextlib.contextmanager
    def claiming(self, study: optuna.Study) -> Iterator[None]:
        """Hold the study's claim lock while claiming a population: a PostgreSQL advisory lock on a
        connection of its own, so that the claims of two workers do not interleave and one pack goes
        whole to one of them. The lock goes with its connection, so a worker killed while it holds it
        holds nothing. Elsewhere (SQLite: one worker), or with the database unreachable, claims go on
        without it: the atomic pop still gives each trial to one worker."""
        engine = self.storage.engine
        if self.exclusive or engine.dialect.name != "postgresql":
            yield
            return
        key = int.from_bytes(hashlib.sha256(f"fmnist-claim:{study.study_name}".encode()).digest()[:8],
                             "big", signed=True)
        connection = None
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
            connection = engine.connect()
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            if connection is not None:
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    connection.close()

    def hold(self, lease: Held) -> None:
        """Keep the lease's trial alive (heartbeats) until it is released; the first beat is now."""
        with self._lock:
            self.leases.append(lease)
        if self.heartbeat is not None:
            self.storage.record_heartbeat(lease.trial._trial_id)

    def release(self, lease: Held) -> None:
        with self._lock:
            self.leases = [held for held in self.leases if held is not lease]

    def requeue_all(self, error: BaseException, *, trained: bool = True) -> None:
        """Every lease this worker still holds is re-queued, in one step for signals; `trained=False`
        leaves those whose training is done (their background work may still finish them). A store
        given up on (OutageTooLong) is raised once every lease has had its try: with only the MLflow
        store gone, the trials are still re-queued in Optuna."""
        given_up = []
        with signals_deferred():  # one step for signals, as a lease's own moves
            for held in list(self.leases):
                if trained or not held.training_done:
                    try:
                        held.requeue(error)
                    except OutageTooLong as outage:
                        given_up.append(outage)
        if given_up:
            raise given_up[0]

    @contextlib.contextmanager
    def heartbeats(self) -> Iterator[None]:
        """A daemon thread records the held trials' heartbeats every `heartbeat` seconds."""
        if self.heartbeat is None:
            yield
            return

        def beat_until_stopped() -> None:
            while not self._stop.wait(self.heartbeat):
                with self._lock:
                    trial_ids = [lease.trial._trial_id for lease in self.leases]
                try:
                    for trial_id in trial_ids:  # a finished trial's heartbeat is ignored: harmless
                        self.storage.record_heartbeat(trial_id)  # waits through an outage (outage.py)
                except OutageTooLong:
                    return  # the main thread meets it too, and ends the worker with its line
                except Exception as error:  # not an outage; the next beat may get through
                    tqdm.write(f"heartbeat not recorded: {first_line(error)}")

        self._stop.clear()
        thread = threading.Thread(target=beat_until_stopped, name="optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def _beat_held(self) -> None:
        """Record the heartbeat of every trial held (the storage is back from an outage)."""
        with self._lock:
            trial_ids = [lease.trial._trial_id for lease in self.leases]
        try:
            for trial_id in trial_ids:
                self.storage.record_heartbeat(trial_id)
        except OutageTooLong:
            pass  # down again and given up: whoever made the call that found it back meets it too
        except Exception as error:  # noqa: BLE001 - as the heartbeat thread: the next beat may get through
            tqdm.write(f"heartbeat not recorded: {first_line(error)}")

    def judges_staleness(self) -> bool:
        """Whether this worker may fail others' trials as stale: it has seen the storage up for a grace
        period since its last outage (heartbeats could not be written while it was away)."""
        return self.heartbeat is None or self.storage.outage.up_for(self.grace)

    def unowned(self, study: optuna.Study) -> list[FrozenTrial]:
        """RUNNING trials that no worker claimed (user attr `worker`) for a grace period of our watching.

        A worker claims a trial milliseconds after creating it; one killed in between (a newly
        sampled TPE trial has no heartbeat before its first beat) leaves a trial no heartbeat ages.
        """
        now, seen = time.monotonic(), {}
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in running:
            if TrialRecord.of(trial).worker is None:
                seen[trial.number] = self._unowned_since.get(trial.number, now)
        self._unowned_since = seen
        return [t for t in running if t.number in seen and now - seen[t.number] > self.grace]


def fail_and_requeue(worker: Worker, study: optuna.Study, number: int) -> bool:
    """Fail a RUNNING trial and queue a copy; False (and nothing queued) when it had finished
    meanwhile, e.g. failed by another worker: two copies would train its point twice."""
    trial_id = worker.trial_id(study, number)
    try:
        if not worker.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    [frozen] = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)  # same params, grid point, attrs
    return True


class RequeueStale:
    """Heartbeat-stale trial callback (Optuna failed the trial): queue a copy with the same params."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_STALE_RETRIES)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._retry(study, trial)
        retries = record.retries(trial) + 1
        outcome = "re-queued" if retries <= MAX_STALE_RETRIES else f"not retried again ({retries} tries)"
        tqdm.write(f"trial {trial.number} of worker {TrialRecord.of(trial).owner} lost its heartbeat "
                   f"(worker killed or cut off): failed and {outcome}")


def recover(study: optuna.Study, worker: Worker, client, experiment_id: str, parent_run_id: str | None, *,
            startup: bool = False) -> None:
    """Fail and re-queue the trials of dead workers and close their MLflow runs: stale heartbeats on a
    shared storage; on SQLite at start-up, every RUNNING trial (the lock proves its worker is gone).
    Without heartbeats (SQLite) nothing can be left behind by another worker after start-up, so the
    calls between populations return at once (a search of the run table each time, before)."""
    if worker.heartbeat is None and not startup:
        return
    orphans = []
    if worker.heartbeat is not None and worker.judges_staleness():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # runs RequeueStale for each
        orphans = worker.unowned(study)
    elif startup and worker.exclusive:
        orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for orphan in orphans:
        if fail_and_requeue(worker, study, orphan.number):
            tqdm.write(f"trial {orphan.number} was left running by a worker that stopped: failed and "
                       "re-queued")
    closed = close_orphan_runs(study, client, experiment_id, parent_run_id)
    if closed:
        tqdm.write(f"closed {len(closed)} MLflow run(s) of stopped workers as KILLED: {', '.join(closed)}")


def close_orphan_runs(study: optuna.Study, client, experiment_id: str,
                      parent_run_id: str | None) -> list[str]:
    """Close the sweep's child runs left RUNNING by dead workers; returns their run ids.

    A child run is live while its trial (tag `trial`) is RUNNING in Optuna; once the trial is
    finished (failed as stale, or interrupted), nobody will close the run but this.
    """
    if not parent_run_id:
        return []
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    running = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    runs = client.search_runs([experiment_id], running, max_results=1000)
    closed = []
    for run in runs:
        number = run.data.tags.get(TRIAL_TAG, "")
        trial = trials.get(int(number)) if number.isdigit() else None
        if trial is not None and trial.state == TrialState.RUNNING:
            continue
        logger = RunLogger(client, run.info.run_id, experiment_id)
        if trial is not None and trial.state == TrialState.COMPLETE:  # everything was logged before tell
            logger.end("FINISHED")
        else:
            owner = TrialRecord.of(trial).owner if trial is not None else "?"
            logger.set_tags({STOP_REASON_TAG: "worker_lost"})
            logger.end("KILLED", f"worker {owner} stopped during trial {number} (killed, interrupted or cut "
                                 "off); Optuna failed the trial and re-queued its configuration")
        closed.append(run.info.run_id)
    return closed
