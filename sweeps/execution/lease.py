"""A trial's life in one place: claimed from the queue, kept alive, tracked, closed, settled or re-queued.

Every state and every move between them is a method of `TrialLease` here, the background close
(`record_start`, `close`: what background.py's thread does for a trained trial) included; trials.py
decides when to claim and train, workers.py is the process that holds the leases.

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
    TRAINED   trained(): training done; close(), on the  RUNNING, held      RUNNING, being filled
              background thread, records it, logs the                       (background.py)
              checkpoint and tables, then settle()
    TOLD      settle(): told COMPLETE, PRUNED or FAIL    finished           FINISHED / KILLED /
              (diverged, refused config), run closed                        FAILED, to match
    LOST      settle() found the trial already failed    FAIL (by another)  KILLED (heartbeat lost)
              by another worker (stale heartbeat): its
              copy trains the point again
    REQUEUED  requeue(error): Ctrl-C, SIGTERM or an      FAIL + a copy      KILLED (signal) or
              exception                                  queued             FAILED (exception)

A worker killed outright leaves CLAIMED or TRACKED leases behind: `workers.recover` (run by every
worker between populations, and by `--repair`) fails their trials once the heartbeat is stale, queues
a copy (`workers.fail_and_requeue`, as `requeue` does), and closes their runs KILLED.
What each move records of the trial in Optuna is sweeps/trial_record.py's.

Tests reach each point through `HOOKS` (in-process) or, for worker processes, the handshake
directory `$FMNIST_LEASE_HANDSHAKE`: at each point a file `<pid>-t<trial>.<point>` is written
there, and where `$FMNIST_LEASE_PAUSE_AT` names the point the lease waits until a file `go` appears.
"""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from fmnist_core import data as fdata
from fmnist_core.trainer import TrainResult, save_result
from fmnist_tracking import run_log
from fmnist_tracking.names import CHECKPOINT_ARTIFACT, STOP_REASON_TAG
from fmnist_tracking.run_log import RunLogger
from fmnist_tracking.signals import signals_deferred
from sweeps import trial_record as record
from sweeps.definitions.plan import describe_params
from sweeps.execution.workers import Worker, fail_and_requeue

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

    @property
    def training_done(self) -> bool:
        """TRAINED: only the background close is left (Worker.requeue_all can leave it to finish)."""
        return self.state == State.TRAINED

    @classmethod
    def claim(cls, worker: Worker, study: optuna.Study, *, sample: bool,
              accept: Callable[[FrozenTrial], bool] | None = None) -> TrialLease | None:
        """The next queued trial (if `accept`s it), else (`sample`) a newly sampled one, now this
        worker's; None if none."""
        with _step():  # taken and listed in worker.leases at once: requeue_all finds every trial taken
            popped = worker.pop_queued(study, accept)
            if popped is not None:
                trial, queued = popped
                retry_of = record.retry_of(queued)
            elif not sample:
                return None
            else:
                with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": we beat
                    warnings.simplefilter("ignore", UserWarning)
                    trial, retry_of = study.ask(), None
            lease = cls(worker, study, trial, retry_of)
            worker.hold(lease)
        record.claimed(trial, worker.name)
        lease._reached("claimed")
        return lease

    def track(self, start_run: Callable[[], RunLogger]) -> None:
        """CLAIMED -> TRACKED: `start_run` makes the child run, which this lease closes from now on."""
        with _step():
            self.run = start_run()
            self.state = State.TRACKED
        record.tracked(self.trial, self.run.run_id)
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
                    run_status, run_tags = "KILLED", {STOP_REASON_TAG: "heartbeat_lost"}
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

    # --- The background close: done on background.py's thread, one trial after another -------------

    def record_start(self, client, splits: fdata.Splits, population: int) -> None:
        """What a tracked trial's start still needs (a database write each): the child run's dataset
        input and the trial's population size (its epoch_seconds are the whole population's)."""
        run_log.log_dataset(client, self.run.run_id, splits)
        record.started(self.trial, population)

    def close(self, result: TrainResult, splits: fdata.Splits, *, pruned_epoch: int | None,
              pruner: str) -> None:
        """TRAINED -> TOLD: record the training, log the outcome to the child run, then settle. A COMPLETE
        trial always has its artifacts: they are logged before Optuna is told."""
        trial = self.trial
        record.trained(trial, result.history,
                       None if result.val_correct is None else result.val_correct.numpy(),
                       None if result.last_correct is None else result.last_correct.numpy())
        if result.error is not None:
            record.failed(trial, str(result.error))
            self.settle(TrialState.FAIL, run_status="FAILED", reason=str(result.error),
                        run_tags={STOP_REASON_TAG: "diverged"})
            label = describe_params(record.params_of(trial))
            tqdm.write(f"trial {trial.number} ({label}) failed: {result.error}")
            return
        if pruned_epoch is not None:
            self.settle(TrialState.PRUNED, run_status="KILLED",
                        run_tags={"pruned": "true", STOP_REASON_TAG: "pruned"},
                        reason=f"pruned by the {pruner} pruner after epoch {pruned_epoch}")
            return
        with tempfile.TemporaryDirectory(prefix="fmnist-sweep-") as scratch:
            checkpoint = save_result(result, splits, Path(scratch, CHECKPOINT_ARTIFACT))
            # figures: the recommended run's, when the sweep closes (report.build_report); the MLflow model:
            # where a run is served or registered (export.ensure_model)
            self.run.log_result(result, splits, checkpoint, figures=False, model=False)
        record.completed(trial, result.final_metrics(), self.run.run_id)
        self.settle(TrialState.COMPLETE, result.best_value)

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


