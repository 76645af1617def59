"""Riding out a database that goes away for a while: the retry policy of the Optuna storage and of an
MLflow store on a database, in one place.

A sweep spread over many machines should not die because its database restarted. Every public method
of the Optuna storage (`OutageTolerantStorage`, an RDBStorage) and of MLflow's SqlAlchemyStore
(`tolerate_mlflow_store`) goes through `OutagePolicy.call`: an error that says the server is away
(`transient`: connection refused, reset or closed, the server starting up or shutting down, a pool
invalidated) is retried with a backoff capped at `max_delay`, for at most `timeout` seconds from the
moment this process first saw the store down; anything else (an integrity or programming error, a
wrong password, a missing database) is raised at once. Each outage is one line when it starts and one
when the store is back, whatever the number of threads waiting on it; past the bound the caller gets
`OutageTooLong`, which the runner turns into one line saying that re-running resumes the sweep. The
stores are opened unwrapped: a wrong URL at start-up is reported at once, not retried for a minute.

MLflow's SqlAlchemyStore turns an OperationalError into MlflowException(TEMPORARILY_UNAVAILABLE), other
SQLAlchemy errors into BAD_REQUEST, after logging a traceback; it retries only while it creates its
engine. So errors are judged by their chain (`__cause__`), which reaches the database driver's error
under Optuna's StorageInternalError and MLflow's MlflowException alike, and the traceback MLflow logs
for a transient error is filtered out (the outage's line says it). An MLflow *server* needs none of
this: MLflow's REST client retries by itself.

Heartbeats across an outage. While the database is away no worker can record a heartbeat, so when it
comes back every trial looks stale to a worker that compares the last heartbeat with the clock: it
would fail and re-queue the trials of workers that are alive and training, and each point would be
trained twice. Two rules keep that from happening (workers.py applies them):
  1. A worker that sees its storage back records the heartbeats of all its trials first, before the
     call that found the storage back returns (`when_back`): its trials are then at most one backoff
     step (`max_delay`) behind the moment the database accepted connections again.
  2. A worker judges others' trials stale only after it has itself seen the storage up for a whole
     grace period since its last outage (`up_for`): staleness is measured from when the storage came
     back, not across the outage. A trial is failed only if its worker recorded no heartbeat during
     the grace period after the database was back, i.e. it is dead or still cut off.
  So the storage's `max_delay` must stay well below the grace period (storage.open_storage makes it at
  most half a heartbeat, against a grace period of GRACE_BEATS heartbeats). A worker that made no call
  during a short outage saw none; such an outage was shorter than its calls' interval (at most a
  heartbeat), which the grace period of GRACE_BEATS heartbeats already covers. A worker cut off alone
  (the others still reach the database) gets its trials failed after the grace period, as it should: the
  grace period is for dead or unreachable workers, and its leases find them LOST when it is back
  (lease.settle).

Not covered: a write whose commit reached the database just before the connection broke is retried,
so it is done twice. Most writes are idempotent (heartbeats, attributes, tags, metrics); a repeated
finishing state change is refused by Optuna (UpdateFinishedTrialError) rather than applied twice; a
repeated create (a trial, a run) would leave a duplicate. The window is the instant between a commit
and its acknowledgement. Ctrl-C during an outage interrupts the wait, but the clean-up that follows
(re-queueing the trials held) waits for the database again, up to the same bound.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from optuna.storages import RDBStorage
from tqdm import tqdm

from sweeps.defaults import DEFAULT_OUTAGE_TIMEOUT
from sweeps.execution.study import without_password

MAX_DELAY = 2.0  # seconds: the longest wait between two tries; a store is seen back at most this late
FIRST_DELAY = 0.1  # seconds; doubled at each try up to MAX_DELAY, each wait drawn in [1/2, 1] of it

# The driver's message -> the reason shown: libpq (psycopg2, psycopg), SQLAlchemy, MySQL's clients.
TRANSIENT_MESSAGES = (
    ("connection refused", "connection refused"),
    ("is the server running", "connection refused"),
    ("the database system is starting up", "the database system is starting up"),
    ("the database system is shutting down", "the database system is shutting down"),
    ("the database system is in recovery mode", "the database system is in recovery"),
    ("the database system is not yet accepting connections", "the database system is starting up"),
    ("terminating connection due to administrator command", "the server shut down"),
    ("server closed the connection unexpectedly", "connection closed by the server"),
    ("connection reset", "connection reset"),
    ("could not receive data from server", "connection lost"),
    ("could not send data to server", "connection lost"),
    ("no connection to the server", "connection lost"),
    ("connection already closed", "connection lost"),
    ("the connection is closed", "connection lost"),
    ("the connection is lost", "connection lost"),
    ("ssl syscall error", "connection lost"),
    ("ssl connection has been closed unexpectedly", "connection lost"),
    ("timeout expired", "connection timed out"),
    ("connection timed out", "connection timed out"),
    ("server has gone away", "connection lost"),
    ("lost connection to", "connection lost"),
)
# SQLSTATEs (class 08: connection exceptions): the server says it is going or not there yet.
TRANSIENT_SQLSTATES = {"57P01": "the server shut down", "57P02": "the server crashed",
                       "57P03": "the database system is starting up"}
DRIVERS = ("psycopg2", "psycopg", "pymysql", "MySQLdb", "pyodbc", "sqlalchemy")


class OutageTooLong(Exception):
    """A store stayed unreachable past the bound; the message names it and says what to do."""


def transient(error: BaseException) -> str | None:
    """Why `error` means the database is away for now (a short reason for the log), or None when it is
    an error that retrying cannot fix. Judged along the chain of causes: Optuna and MLflow wrap the
    driver's error in their own."""
    import sqlalchemy.exc

    reason = None
    for link in _chain(error):
        if isinstance(link, OutageTooLong):
            # The store given up on (None), or what failed next while handling that (the clean-up on the way
            # out): still the outage, raised as OutageTooLong by a policy that has given up.
            return reason
        if isinstance(link, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError
                      | sqlalchemy.exc.DataError):
            return None  # the statement itself is wrong
        if reason is None:
            reason = _reason(link)
    return reason


def _reason(error: BaseException) -> str | None:
    import sqlalchemy.exc

    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionError):
        return "connection reset"
    if not (isinstance(error, sqlalchemy.exc.SQLAlchemyError) or type(error).__module__.startswith(DRIVERS)):
        return None
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None) or ""
    if state in TRANSIENT_SQLSTATES:
        return TRANSIENT_SQLSTATES[state]
    text = str(error).lower()
    found = next((reason for message, reason in TRANSIENT_MESSAGES if message in text), None)
    if found is not None:
        return found
    if state.startswith("08") or isinstance(error, sqlalchemy.exc.DisconnectionError):
        return "connection lost"
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return "connection lost"  # SQLAlchemy's dialect saw a disconnect in the driver's error
    return None


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


class OutagePolicy:
    """Retries one store's calls through its outages (see the module docstring), shared by its threads.

    `clock`, `sleep` and `log` are time.monotonic, time.sleep and a line on stderr; tests give their own."""

    def __init__(self, label: str, timeout: float = DEFAULT_OUTAGE_TIMEOUT, *, max_delay: float = MAX_DELAY,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] | None = None, seed: int | None = None):
        self.label, self.timeout, self.max_delay = label, timeout, max_delay
        self._clock, self._sleep, self._log = clock, sleep, log or _warn
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._local = threading.local()  # a call made inside a retried call is not retried again
        self._down_since: float | None = None
        self._reason = ""
        self._back_at: float | None = None  # when the last outage ended; None: none seen
        self._listeners: list[Callable[[], None]] = []

    def call(self, function: Callable[..., Any], *args, **kwargs) -> Any:
        """`function(*args, **kwargs)`, retried while the store is away, up to the bound."""
        if getattr(self._local, "inside", False):
            return function(*args, **kwargs)
        attempt = 0
        while True:
            self._local.inside = True
            try:
                result = function(*args, **kwargs)
            except Exception as error:
                reason = transient(error)
                if reason is None:
                    raise
                self._sleep(self._wait(reason, attempt))
                attempt += 1
                continue
            finally:
                self._local.inside = False
            self._up()
            return result

    def when_back(self, listener: Callable[[], None]) -> None:
        """Call `listener()` each time the store is back, before the call that found it back returns."""
        self._listeners.append(listener)

    def up_for(self, seconds: float) -> bool:
        """Whether the store has been up (as far as this process saw) for `seconds` since its last outage."""
        with self._lock:
            if self._down_since is not None:
                return False
            return self._back_at is None or self._clock() - self._back_at >= seconds

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def delay(self, attempt: int) -> float:
        """The wait before try `attempt + 1`: doubling from FIRST_DELAY, capped, with jitter (workers that
        lost the database together do not all knock again at the same instant)."""
        ceiling = min(self.max_delay, FIRST_DELAY * 2 ** min(attempt, 30))
        return ceiling * (0.5 + self._random.random() / 2)

    def _wait(self, reason: str, attempt: int) -> float:
        with self._lock:
            now = self._clock()
            if self._down_since is None:
                self._down_since, self._reason = now, reason
                self._log(f"{self.label} unreachable ({reason}); retrying for up to {self.timeout:g} s")
            waited = now - self._down_since
            if waited >= self.timeout:
                raise OutageTooLong(f"{self.label} unreachable for {self.timeout:g} s ({self._reason}); "
                                    "re-run the same command once it is back to resume the sweep") from None
            return min(self.delay(attempt), self.timeout - waited)

    def _up(self) -> None:
        if self._down_since is None:  # the usual case, without the lock
            return
        with self._lock:
            if self._down_since is None:  # another thread saw it back first
                return
            now = self._clock()
            self._log(f"{self.label} is back after {now - self._down_since:.0f} s")
            self._down_since, self._back_at = None, now
        for listener in self._listeners:
            listener()


def _warn(line: str) -> None:
    tqdm.write(line, file=sys.stderr)  # above a progress bar; stderr is written line by line


@functools.cache
def tolerant(cls: type, also: tuple[str, ...] = ()) -> type:
    """A subclass of `cls` whose public methods (and those named in `also`) go through `self.outage`, an
    OutagePolicy; until it is set (the constructor) they are called as they are."""

    def retried(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            policy = self.__dict__.get("outage")
            if policy is None:
                return method(self, *args, **kwargs)
            return policy.call(method, self, *args, **kwargs)

        return call

    names = [name for name in dir(cls) if not name.startswith("_") or name in also]
    methods = {name: retried(raw) for name in names
               if isinstance(raw := inspect.getattr_static(cls, name), types.FunctionType)}
    return type(f"OutageTolerant{cls.__name__}", (cls,), {**methods, "__module__": __name__})


# Optuna's heartbeat code (fail_stale_trials) calls the storage's private _get_stale_trial_ids.
_TolerantRDBStorage = tolerant(RDBStorage, ("_get_stale_trial_ids",))


class OutageTolerantStorage(_TolerantRDBStorage):
    """Optuna's RDB storage whose every call rides out an outage of the database (`outage`)."""

    def __init__(self, url: str, *, outage: OutagePolicy, **options):
        super().__init__(url, **options)
        self.outage = outage


_mlflow_policies: dict[str, OutagePolicy] = {}  # tracking URI -> its policy
MLFLOW_DATABASES = ("postgresql", "mysql", "mssql")  # MLflow's SQL stores on a server (not SQLite)


def tolerate_mlflow_store(tracking_uri: str, timeout: float = DEFAULT_OUTAGE_TIMEOUT) -> OutagePolicy | None:
    """Make the MLflow store at `tracking_uri`, when it is a database server, ride out its outages; call it
    before the store is first used in this process (MLflow builds one store per URI and keeps it).
    Returns its policy; None for the stores that need none (servers, SQLite, files)."""
    if tracking_uri.split(":", 1)[0].split("+", 1)[0].lower() not in MLFLOW_DATABASES:
        return None
    from mlflow.tracking._tracking_service import utils

    policy = _mlflow_policies.get(tracking_uri)
    if policy is None:
        policy = OutagePolicy(f"MLflow store {without_password(tracking_uri)}", timeout)
        _mlflow_policies[tracking_uri] = policy
    policy.timeout = timeout
    for scheme in MLFLOW_DATABASES:
        utils._tracking_store_registry.register(scheme, _build_mlflow_store)
    quiet = QuietTransient()
    for name in ("mlflow.store.db.utils", "sqlalchemy.pool.impl.QueuePool"):  # tracebacks they log
        logger = logging.getLogger(name)
        if not any(isinstance(existing, QuietTransient) for existing in logger.filters):
            logger.addFilter(quiet)
    return policy


def _build_mlflow_store(store_uri: str, artifact_uri: str | None = None):
    """MLflow's own builder (its choice of class and artifact root), then its methods made to retry."""
    from mlflow.tracking._tracking_service import utils

    store = utils._get_sqlalchemy_store(store_uri, artifact_uri)
    policy = _mlflow_policies.get(store_uri)
    if policy is not None:
        store.__class__ = tolerant(type(store))  # a subclass that adds only methods: same instance layout
        store.outage = policy
    return store


class QuietTransient(logging.Filter):
    """Drops a library's log record of a transient error (with its traceback): the outage has its line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[1] is not None and transient(record.exc_info[1]))


def given_up(error: BaseException) -> OutageTooLong | None:
    """The OutageTooLong behind `error` (a library may wrap what a store raised), or None."""
    return next((link for link in _chain(error) if isinstance(link, OutageTooLong)), None)


def ends_in_one_line(command: Callable[..., Any]) -> Callable[..., Any]:
    """A store away past its bound ends `command` with the outage's one line and exit code 1 (click)."""
    import click

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Exception as error:
            outage = given_up(error)
            if outage is None:
                raise
            raise click.ClickException(str(outage)) from None

    return run
