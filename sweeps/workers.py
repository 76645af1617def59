"""Many workers on one study: the storage with heartbeats, the SQLite guard, taking queued trials,
recovering the trials (and MLflow runs) of workers that died, and local worker processes.

Workers share nothing but the Optuna storage and the MLflow store. On PostgreSQL each worker
records a heartbeat for its running trials from a background thread (study.optimize would run
one; our ask-and-tell loop runs its own). A trial whose heartbeat is older than
GRACE_BEATS x the interval belongs to a worker that was killed or cut off: any other worker
fails it (optuna.storages.fail_stale_trials) and re-queues a copy with the same params, and
closes its MLflow run KILLED. `python cli.py sweep NAME --repair` does the same on demand.

SQLite serves one worker at a time ("database is locked" otherwise), so a worker holds an
exclusive lock on each SQLite file it writes; a second one is refused with a message that
says what to use instead. The lock also proves that any trial left RUNNING in a SQLite study
is an orphan, so it is recovered at once, with no heartbeat to wait for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from fmnist_core.config import first_line
from fmnist_tracking import run_log, store
from sweeps import report
from sweeps.definitions import load_definition
from sweeps.study import (
    PARENT_ATTR,
    StudyError,
    default_storage,
    load_study,
    plan_studies,
    study_done,
    trials_done,
    without_password,
)

DEFAULT_HEARTBEAT = 10  # seconds between a worker's heartbeats for its running trials
GRACE_BEATS = 3  # a trial whose last heartbeat is this many intervals old is stale
MAX_STALE_RETRIES = 3  # a trial that kills its worker every time (e.g. out of memory) stops being retried
SCALING_OUT = ("use --storage postgresql://USER:PASSWORD@HOST/DATABASE and an MLflow server "
               "(--tracking-uri http://HOST:5000); see README, Scaling out")


def worker_name() -> str:
    """host:pid, stored on every trial a worker takes (user attr `worker`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite:/// URL; None for other URLs and in-memory databases."""
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def require_shared_stores(storage: str, tracking_uri: str, workers: int) -> None:
    """Several local workers need stores that serve several writers: refuse SQLite and plain files."""
    local = [label for label, url in (("the Optuna storage", storage), ("the MLflow store", tracking_uri))
             if sqlite_file(url) is not None or "://" not in url or url.startswith("file:")]
    if local:
        raise StudyError(f"--workers {workers}: {' and '.join(local)} ({without_password(storage)}"
                         f"{', ' + tracking_uri if len(local) > 1 else ''}) serve one worker at a time; "
                         f"for several, {SCALING_OUT}")


@contextlib.contextmanager
def sqlite_guard(storage: str, tracking_uri: str) -> Iterator[bool]:
    """Hold an exclusive lock on each SQLite file this worker writes, for as long as it works.

    Yields True when the Optuna storage is SQLite: this worker is then the study's only one.
    """
    files = [path for path in (sqlite_file(storage), sqlite_file(tracking_uri)) if path is not None]
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(path.resolve() for path in files):
            stack.enter_context(_locked(path))
        yield sqlite_file(storage) is not None


@contextlib.contextmanager
def _locked(database: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; SQLite's own locking is all there is
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    # A file of its own: flock on the database itself could meet SQLite's fcntl locks on NFS.
    lock = open(f"{database}.worker-lock", "a+")  # noqa: SIM115 - held until the block ends
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise StudyError(f"another sweep worker ({holder}) is using {database}; SQLite serves one "
                             f"worker at a time: wait for it, or for several workers {SCALING_OUT}") from None
        lock.truncate(0)
        lock.write(worker_name())
        lock.flush()
        yield
    finally:
        lock.close()  # releases the lock, as the death of the process would


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT) -> RDBStorage:
    """Optuna's RDB storage; with heartbeats (and re-queueing of stale trials) unless it is SQLite,
    which the lock above already makes single-worker. A table race between workers creating the
    schema at once is retried."""
    options = {}
    if sqlite_file(url) is None and not url.startswith("sqlite"):
        options = {"heartbeat_interval": heartbeat, "grace_period": GRACE_BEATS * heartbeat,
                   "heartbeat_stale_trial_callback": RequeueStale(),
                   "engine_kwargs": {"pool_pre_ping": True}}  # survive a database restart
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, **options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class RequeueStale:
    """Heartbeat-stale trial callback: queue a copy of the trial (same params) and say so."""

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


class Worker:
    """This process as a worker: its storage, its name, and the heartbeats of the trials it holds."""

    def __init__(self, storage: RDBStorage, *, exclusive: bool, name: str | None = None):
        self.storage, self.exclusive, self.name = storage, exclusive, name or worker_name()
        self.heartbeat = storage.get_heartbeat_interval()  # None on SQLite
        self._trial_ids: list[int] = []
        self._stop = threading.Event()
        self._unowned_since: dict[int, float] = {}  # trial number -> when first seen RUNNING without a worker

    @property
    def grace(self) -> int | None:
        return None if self.heartbeat is None else GRACE_BEATS * self.heartbeat

    def pop_queued(self, study: optuna.Study) -> tuple[optuna.Trial, FrozenTrial] | None:
        """The next queued trial, now RUNNING and this worker's; None when the queue is empty.

        study.ask() pops the queue the same way (an atomic WAITING -> RUNNING update, row-locked on
        PostgreSQL) but creates a new trial when the queue is empty: on a grid, a point trained twice.
        """
        study_id = self.storage.get_study_id_from_name(study.study_name)
        for queued in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, queued.number)
            if self.heartbeat is not None:  # beat first: killed right after the pop, it still goes stale
                self.storage.record_heartbeat(trial_id)
            try:
                if self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(study, trial_id), queued
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # taken and finished by another worker meanwhile
        return None

    def hold(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Keep `trial` alive (heartbeats) until `release`; the first beat is recorded now."""
        study_id = self.storage.get_study_id_from_name(study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        self._trial_ids.append(trial_id)
        if self.heartbeat is not None:
            self.storage.record_heartbeat(trial_id)

    def release(self) -> None:
        """Stop the heartbeats of the held trials (all told by now)."""
        self._trial_ids = []

    def _beat(self) -> None:
        for trial_id in list(self._trial_ids):  # a finished trial's heartbeat is ignored: harmless
            self.storage.record_heartbeat(trial_id)

    @contextlib.contextmanager
    def heartbeats(self) -> Iterator[None]:
        """A daemon thread records the held trials' heartbeats every `heartbeat` seconds."""
        if self.heartbeat is None:
            yield
            return

        def beat_until_stopped() -> None:
            while not self._stop.wait(self.heartbeat):
                try:
                    self._beat()
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
            self._trial_ids = []

    def recover(self, study: optuna.Study, *, startup: bool = False) -> None:
        """Fail and re-queue the trials of dead workers: stale heartbeats on a shared storage; on
        SQLite at start-up, every RUNNING trial (the lock proves its worker is gone)."""
        orphans = []
        if self.heartbeat is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # runs RequeueStale for each
            orphans = self._unowned(study)
        elif startup and self.exclusive:
            orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for orphan in orphans:
            if self.fail_and_requeue(study, orphan.number):
                tqdm.write(f"trial {orphan.number} was left running by a worker that stopped: failed and "
                           "re-queued")

    def fail_and_requeue(self, study: optuna.Study, number: int) -> bool:
        """Fail a RUNNING trial and queue a copy; False (and nothing queued) when it had finished
        meanwhile, e.g. failed by another worker: two copies would train its point twice."""
        study_id = self.storage.get_study_id_from_name(study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        try:
            if not self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        requeue(study, number)
        return True

    def _unowned(self, study: optuna.Study) -> list[FrozenTrial]:
        """RUNNING trials that no worker claimed (user attr `worker`) for a grace period of our watching.

        A worker claims a trial milliseconds after creating it; one killed in between (a newly
        sampled TPE trial has no heartbeat before its first beat) leaves a trial no heartbeat ages.
        """
        now, seen = time.monotonic(), {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "worker" not in trial.user_attrs:
                seen[trial.number] = self._unowned_since.get(trial.number, now)
        self._unowned_since = seen
        return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.number in seen and now - seen[t.number] > self.grace]


def requeue(study: optuna.Study, number: int) -> None:
    """Queue a copy of failed trial `number` (same params, grid point and user attrs) to train again."""
    [frozen] = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)


def recover(study: optuna.Study, worker: Worker, client, experiment_id: str, parent_run_id: str | None, *,
            startup: bool = False) -> None:
    """Fail and re-queue the trials of dead workers, and close their MLflow runs."""
    worker.recover(study, startup=startup)
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
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                                "attributes.status = 'RUNNING'", max_results=1000)
    closed = []
    for run in runs:
        number = run.data.tags.get("trial", "")
        trial = trials.get(int(number)) if number.isdigit() else None
        if trial is not None and trial.state == TrialState.RUNNING:
            continue
        logger = run_log.RunLogger(client, run.info.run_id, experiment_id)
        if trial is not None and trial.state == TrialState.COMPLETE:  # everything was logged before tell
            logger.end("FINISHED")
        else:
            worker = trial.user_attrs.get("worker", "?") if trial is not None else "?"
            logger.set_tags({"stop_reason": "worker_lost"})
            logger.end("KILLED", f"worker {worker} stopped during trial {number} (killed, interrupted or cut "
                                 "off); Optuna failed the trial and re-queued its configuration")
        closed.append(run.info.run_id)
    return closed


def repair_sweep(name: str | Path, *, impl: str | None = None, storage: str | None = None,
                 tracking_uri: str | None = None, experiment: str = store.DEFAULT_EXPERIMENT,
                 heartbeat: int = DEFAULT_HEARTBEAT) -> None:
    """`--repair`: recover the trials and runs of dead workers and close an idle parent run, no training."""
    plans = plan_studies(load_definition(name), impl=impl)
    storage = storage or default_storage(tracking_uri)
    with sqlite_guard(storage, store.resolve_tracking_uri(tracking_uri)) as exclusive:
        client, experiment_id = store.setup(tracking_uri, experiment, create=False)
        worker = Worker(open_storage(storage, heartbeat), exclusive=exclusive)
        for plan in plans:
            study = load_study(plan, worker.storage, without_password(storage))
            parent_id = study.user_attrs.get(PARENT_ATTR)
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            recover(study, worker, client, experiment_id, parent_id, startup=True)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            recovered = len(before - {t.number for t in running})
            click.echo(f"{plan.study_name}: {recovered} stale trial(s) failed and re-queued; {len(running)} "
                       f"running, {len(waiting)} queued, {trials_done(study)} finished")
            if running:
                owners = ", ".join(sorted({t.user_attrs.get("worker", "?") for t in running}))
                click.echo(f"  still running on {owners}; a worker that is gone is recovered once its "
                           f"heartbeat is {worker.grace} s old: repair again then")
                continue
            parent = client.get_run(parent_id) if parent_id else None
            if parent is None or parent.info.status != "RUNNING":
                continue
            logger = run_log.RunLogger(client, parent_id, experiment_id)
            if not waiting and study_done(study, plan):
                report.build_report(study, plan, client, parent_id)
                logger.end("FINISHED")
                click.echo(f"  complete: report rebuilt, parent run {parent_id} FINISHED")
            else:
                logger.end("KILLED", f"sweep stopped with {len(waiting)} trials queued; re-run it to resume")
                click.echo(f"  parent run {parent_id} closed KILLED; re-run the sweep to train the queued "
                           "trials")


def run_local_workers(argv: list[str], count: int) -> int:
    """Run `count` copies of the worker command line `argv` and wait for them; returns an exit code.

    Each child has a session of its own, so a Ctrl-C in the terminal reaches it exactly once,
    forwarded from here (twice would cut short the clean-up of its first). SIGTERM is forwarded too.
    The forwarding handlers are set before the children start: a child inherits SIG_IGN where this
    process ignores a signal (a script's `cmd &` starts it with SIGINT ignored), and would then
    carry on through the forwarded Ctrl-C; a handled signal starts out default in the child.
    The CPU cores are shared out ($OMP_NUM_THREADS, unless set): torch would give each child all of
    them, and N processes spinning on the same cores train many times slower than one.
    """
    environment = dict(os.environ)
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    children: list[subprocess.Popen] = []
    received: list[int] = []
    reached = 0  # how many of `children` the last forwarded signal went to

    def forward(signum, frame) -> None:
        nonlocal reached
        received.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)
        reached = len(children)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        while len(children) < count and not received:  # none started after a Ctrl-C
            children.append(subprocess.Popen(argv, start_new_session=True, env=environment))
        for child in children[reached:] if received else ():  # started while the signal came
            child.send_signal(received[-1])
        codes = [child.wait() for child in children]
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        return 128 + received[0]  # 130 for Ctrl-C, 143 for SIGTERM, as a single worker would
    failed = [128 - code if code < 0 else code for code in codes if code != 0]  # -9 (SIGKILL) -> 137
    return failed[0] if failed else 0
