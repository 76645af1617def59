"""A trial's life in one place: claimed from the queue, kept alive, tracked, and settled or re-queued.

The rule this module keeps: a trial that is RUNNING in Optuna is either held by a live worker
(its lease is in `Worker.leases` and its heartbeat is recorded) or recoverable by any other
worker (a stale heartbeat, or on SQLite any RUNNING trial at start-up). Every state change of a
lease is one step for signals: Ctrl-C and SIGTERM that arrive inside `TrialLease._step` are
raised when the step has ended, so a trial is always in a state of the table below, never
between two. Long work (training, logging artifacts) happens between steps, where a signal
interrupts it and the runner calls `Worker.requeue_all`: first for the leases in training, then,
once the background thread has finished what it can (its leases settle themselves), for the rest.
A lock per lease makes settle (background thread) and requeue (main thread) exclusive: the first
one wins, the other finds the lease settled and leaves it.

    state     entered by                                 Optuna trial       MLflow child run
    --------  -----------------------------------------  -----------------  -----------------------
    CLAIMED   claim(): a queued trial popped, or a new   RUNNING, held      none yet
              one sampled; heartbeats from now on
    TRACKED   track(): its child run created             RUNNING, held      RUNNING, params logged
    TRAINED   trained(): training done; figures,         RUNNING, held      RUNNING, being filled
              checkpoint and model logged in the                            (background.py)
              background, then settle()
    TOLD      settle(): told COMPLETE, PRUNED or FAIL    finished           FINISHED / KILLED /
              (diverged, refused config), run closed                        FAILED, to match
    LOST      settle() found the trial already failed    FAIL (by another)  KILLED (heartbeat lost)
              by another worker (stale heartbeat): its
              copy trains the point again
    REQUEUED  requeue(error): Ctrl-C, SIGTERM or an      FAIL + a copy      KILLED (signal) or
              exception                                  queued             FAILED (exception)

A worker killed outright leaves CLAIMED or TRACKED leases behind: `recover` (run by every worker
between populations, and by `--repair`) fails their trials once the heartbeat is stale, queues a
copy, and closes their runs KILLED, as `requeue` would have.

Tests reach each point through `HOOKS` (in-process) or, for worker processes, the handshake
directory `$FMNIST_LEASE_HANDSHAKE`: at each point a file `<pid>-t<trial>.<point>` is written
there, and where `$FMNIST_LEASE_PAUSE_AT` names the point the lease waits until a file `go` appears.
"""

from __future__ import annotations

import contextlib
import enum
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from fmnist_core.config import first_line
from fmnist_tracking.run_log import RunLogger
from fmnist_tracking.signals import signals_deferred
from sweeps.execution import storage as stores

MAX_STALE_RETRIES = 3  # a trial that kills its worker every time (e.g. out of memory) stops being retried
HANDSHAKE_ENV, PAUSE_ENV = "FMNIST_LEASE_HANDSHAKE", "FMNIST_LEASE_PAUSE_AT"
HOOKS: list[Callable[[str, TrialLease], None]] = []  # called at each point: (point, lease)


class State(enum.Enum):
    CLAIMED = "claimed"
    TRACKED = "tracked"
    TRAINED = "trained"
    TOLD = "told"
    LOST = "lost"
    REQUEUED = "requeued"


SETTLED = (State.TOLD, State.LOST, State.REQUEUED)


class TrialLease:
    """One trial held by this worker, from the queue to Optuna's verdict (see the table above)."""

    def __init__(self, worker: Worker, study: optuna.Study, trial: optuna.Trial, retry_of: int | None):
        self.worker, self.study, self.trial, self.retry_of = worker, study, trial, retry_of
        self.state = State.CLAIMED
        self._lock = threading.RLock()  # settle (background thread) vs requeue (main thread)
        self.run: RunLogger | None = None
        self.config = None  # the trial's RunConfig, set by the runner once suggested

    @property
    def number(self) -> int:
        return self.trial.number

    @classmethod
    def claim(cls, worker: Worker, study: optuna.Study, *, sample: bool,
              accept: Callable[[FrozenTrial], bool] | None = None) -> TrialLease | None:
        """The next queued trial (if `accept`s it), else (`sample`) a newly sampled one, now this
        worker's; None if none."""
        with _step():  # taken and listed in worker.leases at once: requeue_all finds every trial taken
            popped = worker.pop_queued(study, accept)
            if popped is not None:
                trial, queued = popped
                retry_of = queued.system_attrs.get("failed_trial")
            elif not sample:
                return None
            else:
                with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": we beat
                    warnings.simplefilter("ignore", UserWarning)
                    trial, retry_of = study.ask(), None
            lease = cls(worker, study, trial, retry_of)
            worker.hold(lease)
        trial.set_user_attr("worker", worker.name)
        lease._reached("claimed")
        return lease

    def track(self, start_run: Callable[[], RunLogger]) -> None:
        """CLAIMED -> TRACKED: `start_run` makes the child run, which this lease closes from now on."""
        with _step():
            self.run = start_run()
            self.state = State.TRACKED
        self.trial.set_user_attr("mlflow_run_id", self.run.run_id)
        self._reached("tracked")

    def report(self, metrics: dict[str, float], metric: str) -> bool:
        """One finished epoch to Optuna (the run gets it from the runner, in the background); True when
        the pruner stops the trial."""
        epoch = int(metrics["epoch"])
        self.trial.report(metrics[metric], epoch)
        if epoch == 1:
            self._reached("training")
        return self.trial.should_prune()

    def trained(self) -> None:
        """TRACKED -> TRAINED: what is left (artifacts, the verdict) is the background thread's."""
        with _step(), self._lock:
            if self.state == State.TRACKED:
                self.state = State.TRAINED

    def settle(self, state: TrialState, value: float | None = None, *, run_status: str = "FINISHED",
               reason: str | None = None, run_tags: dict[str, str] | None = None) -> State:
        """Tell Optuna and close the run to match, in one step: -> TOLD, or LOST when another worker
        failed the trial meanwhile (its heartbeats did not get through) and queued a copy."""
        self._reached("settling")
        with _step(), self._lock:
            if self.state in SETTLED:  # re-queued meanwhile by the main thread (a second Ctrl-C)
                return self.state
            lost = self.worker.trial_state(self.study, self.number).is_finished()
            if not lost:  # tell first: killed before the run is closed, recovery finishes the run to match
                self.study.tell(self.trial, value, state=state, skip_if_finished=True)
            if self.run is not None:
                if lost:
                    run_status, run_tags = "KILLED", {"stop_reason": "heartbeat_lost"}
                    reason = (f"trial {self.number} was failed by another worker after {self.worker.name}'s "
                              "heartbeats did not reach the storage; a copy trains its point again")
                if run_tags:
                    self.run.set_tags(run_tags)
                self.run.end(run_status, reason)
            self.state = State.LOST if lost else State.TOLD
            self.worker.release(self)
        self._reached(self.state.value)
        return self.state

    def requeue(self, error: BaseException) -> None:
        """Interrupted or broken: fail the trial and queue a copy, close the run KILLED (Ctrl-C,
        SIGTERM) or FAILED (an exception). A lease already settled is left as it is."""
        with _step(), self._lock:
            if self.state in SETTLED:
                return
            requeued = fail_and_requeue(self.worker, self.study, self.number)
            if self.run is not None:
                self.run.__exit__(type(error), error, error.__traceback__)
            self.state = State.REQUEUED if requeued else State.LOST
            self.worker.release(self)
        self._reached("requeued")

    def _reached(self, point: str) -> None:
        for hook in HOOKS:
            hook(point, self)
        handshake = os.environ.get(HANDSHAKE_ENV)
        if handshake:
            folder = Path(handshake)
            (folder / f"{os.getpid()}-t{self.number}.{point}").touch()
            if os.environ.get(PAUSE_ENV) == point:
                while not (folder / "go").exists():
                    time.sleep(0.02)


@contextlib.contextmanager
def _step() -> Iterator[None]:
    """One state change of a lease: signals arriving inside are raised when it has ended."""
    with signals_deferred():
        yield


class Worker:
    """This process as a worker: its storage, its name, and the leases it holds (heartbeated)."""

    def __init__(self, storage: optuna.storages.RDBStorage, *, exclusive: bool, name: str | None = None):
        self.storage, self.exclusive, self.name = storage, exclusive, name or stores.worker_name()
        self.heartbeat = storage.get_heartbeat_interval()  # None on SQLite
        self.leases: list[TrialLease] = []
        self._lock = threading.Lock()  # leases are read by the heartbeat thread
        self._stop = threading.Event()
        self._unowned_since: dict[int, float] = {}  # trial number -> when first seen RUNNING without a worker

    @classmethod
    def open(cls, url: str, heartbeat: int, *, exclusive: bool) -> Worker:
        """A worker on the storage at `url`: stale trials found there are failed and re-queued."""
        return cls(stores.open_storage(url, heartbeat, RequeueStale()), exclusive=exclusive)

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

    def hold(self, lease: TrialLease) -> None:
        """Keep the lease's trial alive (heartbeats) until it is released; the first beat is now."""
        with self._lock:
            self.leases.append(lease)
        if self.heartbeat is not None:
            self.storage.record_heartbeat(lease.trial._trial_id)

    def release(self, lease: TrialLease) -> None:
        with self._lock:
            self.leases = [held for held in self.leases if held is not lease]

    def requeue_all(self, error: BaseException, *, trained: bool = True) -> None:
        """Every lease this worker still holds is re-queued, in one step for signals; `trained=False`
        leaves those whose training is done (their background work may still finish them)."""
        with _step():
            for held in list(self.leases):
                if trained or held.state != State.TRAINED:
                    held.requeue(error)

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
                        self.storage.record_heartbeat(trial_id)
                except Exception as error:  # the database is away: the next beat may get through
                    tqdm.write(f"heartbeat not recorded: {first_line(error)}")

        self._stop.clear()
        thread = threading.Thread(target=beat_until_stopped, name="optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def unowned(self, study: optuna.Study) -> list[FrozenTrial]:
        """RUNNING trials that no worker claimed (user attr `worker`) for a grace period of our watching.

        A worker claims a trial milliseconds after creating it; one killed in between (a newly
        sampled TPE trial has no heartbeat before its first beat) leaves a trial no heartbeat ages.
        """
        now, seen = time.monotonic(), {}
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in running:
            if "worker" not in trial.user_attrs:
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
        retries = len(trial.system_attrs.get("retry_history", [])) + 1
        outcome = "re-queued" if retries <= MAX_STALE_RETRIES else f"not retried again ({retries} tries)"
        tqdm.write(f"trial {trial.number} of worker {trial.user_attrs.get('worker', '?')} lost its heartbeat "
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
    if worker.heartbeat is not None:
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
    running = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    runs = client.search_runs([experiment_id], running, max_results=1000)
    closed = []
    for run in runs:
        number = run.data.tags.get("trial", "")
        trial = trials.get(int(number)) if number.isdigit() else None
        if trial is not None and trial.state == TrialState.RUNNING:
            continue
        logger = RunLogger(client, run.info.run_id, experiment_id)
        if trial is not None and trial.state == TrialState.COMPLETE:  # everything was logged before tell
            logger.end("FINISHED")
        else:
            owner = trial.user_attrs.get("worker", "?") if trial is not None else "?"
            logger.set_tags({"stop_reason": "worker_lost"})
            logger.end("KILLED", f"worker {owner} stopped during trial {number} (killed, interrupted or cut "
                                 "off); Optuna failed the trial and re-queued its configuration")
        closed.append(run.info.run_id)
    return closed
