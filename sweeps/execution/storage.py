"""Where a study lives: Optuna's RDB storage (with heartbeats on shared databases) and the SQLite guard.

SQLite serves one worker at a time ("database is locked" otherwise), so a worker holds an
exclusive lock on each SQLite file it writes; a second one is refused with a message that
says what to use instead. The lock also proves that any trial left RUNNING in a SQLite study
is an orphan, so it is recovered at once, with no heartbeat to wait for (lease.recover).

Every call of the storage rides out an outage of its database for `outage_timeout` seconds (outage.py);
opening it does not: a wrong URL, password or database name is one line at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna

from sweeps.defaults import DEFAULT_HEARTBEAT, DEFAULT_OUTAGE_TIMEOUT, GRACE_BEATS
from sweeps.execution.outage import MAX_DELAY, OutagePolicy, OutageTolerantStorage
from sweeps.execution.study import StudyError, without_password

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


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT, stale_callback=None,
                 outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT) -> OutageTolerantStorage:
    """Optuna's RDB storage; with heartbeats (and `stale_callback` for stale trials) unless it is SQLite,
    which the lock above already makes single-worker. A table race between workers creating the schema
    at once is retried; a database that cannot be opened is a StudyError."""
    options = {}
    if sqlite_file(url) is None and not url.startswith("sqlite"):
        options = {"heartbeat_interval": heartbeat, "grace_period": GRACE_BEATS * heartbeat,
                   "heartbeat_stale_trial_callback": stale_callback,
                   "engine_kwargs": {"pool_pre_ping": True}}  # a connection the server dropped is replaced
        if url.startswith("postgresql"):  # an unreachable host fails a try in seconds, not minutes (TCP)
            options["engine_kwargs"]["connect_args"] = {"connect_timeout": 10}
    # Its backoff stays under a heartbeat: back, this worker beats for its trials before others judge them.
    policy = OutagePolicy(f"Optuna storage {without_password(url)}", outage_timeout,
                          max_delay=min(MAX_DELAY, heartbeat / 2))
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return OutageTolerantStorage(url, outage=policy, **options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 2:
                raise
        except sqlalchemy.exc.OperationalError as error:
            raise StudyError(f"cannot open the Optuna storage {without_password(url)}: "
                             f"{' '.join(str(error.orig).split())}; check --storage, and that its server "
                             "is up") from None
    raise AssertionError("unreachable")
