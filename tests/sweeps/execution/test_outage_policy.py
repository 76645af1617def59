"""The retry policy of outage.py on its own: which errors mean "the database is away for now", how long
and how often it retries, and that an outage is one line when it starts and one when it ends.

The errors are the drivers' and libraries' own exception types, with the messages PostgreSQL and libpq
give (a refused connection is a real one, to a port nothing listens on); time is a clock the test
advances, so a minute of retrying takes no time and every wait can be checked.
"""

from __future__ import annotations

import logging
import threading

import psycopg
import psycopg2
import psycopg2.errors
import pytest
import sqlalchemy
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, TEMPORARILY_UNAVAILABLE
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from support import free_port

from sweeps.execution import outage
from sweeps.execution.outage import OutagePolicy, OutageTolerantStorage, OutageTooLong, transient

LIBPQ = 'connection to server at "127.0.0.1", port 5432 failed: '
STORAGE = "Optuna storage postgresql://db/optuna"


def refused_psycopg2() -> psycopg2.OperationalError:
    try:
        psycopg2.connect(host="127.0.0.1", port=free_port(), user="postgres", dbname="postgres",
                         connect_timeout=5)
    except psycopg2.OperationalError as error:
        return error
    raise AssertionError("something listens on the free port")


def refused_sqlalchemy() -> sqlalchemy.exc.OperationalError:
    """What Optuna's and MLflow's engines raise (SQLAlchemy's default PostgreSQL driver: psycopg 3)."""
    engine = sqlalchemy.create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                                      pool_pre_ping=True)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError("something listens on the free port")


def wrapped(outer: type[BaseException] | BaseException, cause: BaseException) -> BaseException:
    """`outer` raised from `cause`, as a library re-raises a driver's error."""
    try:
        try:
            raise cause
        except BaseException as error:
            raise (outer() if isinstance(outer, type) else outer) from error
    except BaseException as raised:  # noqa: BLE001 - returned to the test
        return raised


def in_handling_of(error: BaseException, context: BaseException) -> BaseException:
    """`error` raised while `context` was being handled (its __context__), as SQLAlchemy's pool does."""
    try:
        try:
            raise context
        except BaseException:  # noqa: BLE001
            raise error  # noqa: B904 - the implicit chain is the point
    except BaseException as raised:  # noqa: BLE001
        return raised


def statement_error(kind, orig: BaseException, **options) -> sqlalchemy.exc.DBAPIError:
    return kind("SELECT 1", {}, orig, **options)


def test_the_errors_of_a_database_going_away_are_transient():
    admin_shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    cases = {
        "connection refused": [
            refused_psycopg2(), refused_sqlalchemy(),
            wrapped(StorageInternalError("An exception is raised during the commit."), refused_sqlalchemy()),
            wrapped(MlflowException("db error", error_code=TEMPORARILY_UNAVAILABLE), refused_sqlalchemy()),
            in_handling_of(refused_sqlalchemy(), sqlalchemy.exc.InvalidatePoolError()),
            ConnectionRefusedError(111, "Connection refused"),
            in_handling_of(refused_sqlalchemy(), OutageTooLong("given up")),  # the clean-up on the way out
        ],
        "the database system is starting up": [
            psycopg2.OperationalError(LIBPQ + "FATAL:  the database system is starting up\n"),
            statement_error(sqlalchemy.exc.OperationalError, psycopg.OperationalError(
                "connection failed: " + LIBPQ + "FATAL:  the database system is starting up")),
        ],
        "the database system is shutting down": [
            psycopg2.OperationalError(LIBPQ + "FATAL:  the database system is shutting down\n")],
        "the server shut down": [
            admin_shutdown,
            statement_error(sqlalchemy.exc.OperationalError, admin_shutdown, connection_invalidated=True),
            psycopg2.errors.AdminShutdown("terminating connection due to administrator command\n"),
        ],
        "connection closed by the server": [
            psycopg2.OperationalError("server closed the connection unexpectedly\n\tThis probably means "
                                      "the server terminated abnormally\n\tbefore or while processing the "
                                      "request.")],
        "connection lost": [
            statement_error(sqlalchemy.exc.InterfaceError,
                            psycopg2.InterfaceError("connection already closed")),
            statement_error(sqlalchemy.exc.DBAPIError, psycopg2.Error("no reason given"),
                            connection_invalidated=True),
            sqlalchemy.exc.InvalidatePoolError(),
            wrapped(MlflowException("db error"), statement_error(
                sqlalchemy.exc.OperationalError, psycopg.OperationalError("the connection is lost"))),
        ],
    }
    for reason, errors in cases.items():
        for error in errors:
            assert transient(error) == reason, repr(error)


def test_errors_that_retrying_cannot_fix_are_not_transient():
    duplicate = psycopg2.errors.UniqueViolation('duplicate key value violates unique constraint "x_pkey"')
    errors = [
        psycopg2.OperationalError(LIBPQ + 'FATAL:  password authentication failed for user "postgres"\n'),
        psycopg2.OperationalError(LIBPQ + 'FATAL:  database "optuna" does not exist\n'),
        statement_error(sqlalchemy.exc.OperationalError, psycopg.OperationalError(
            "connection failed: " + LIBPQ + 'FATAL:  role "sweeper" does not exist')),
        statement_error(sqlalchemy.exc.IntegrityError, duplicate),
        statement_error(sqlalchemy.exc.ProgrammingError, psycopg2.errors.UndefinedTable(
            'relation "trials" does not exist')),
        wrapped(StorageInternalError("An exception is raised during the commit."),
                statement_error(sqlalchemy.exc.DataError, psycopg2.errors.StringDataRightTruncation(
                    "value too long for type character varying(512)"))),
        in_handling_of(statement_error(sqlalchemy.exc.IntegrityError, duplicate), refused_sqlalchemy()),
        OutageTooLong("storage x unreachable for 60 s"),
        wrapped(OutageTooLong("storage x unreachable for 60 s"), refused_sqlalchemy()),
        MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS),
        UpdateFinishedTrialError("trial 3 is finished"), KeyError("no study"), ValueError("refused"),
    ]
    for error in errors:
        assert transient(error) is None, repr(error)


class Clock:
    """time.monotonic and time.sleep for a policy: sleeping advances the clock, and is recorded."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(clock: Clock, lines: list[str], timeout: float = 60, max_delay: float = 2.0) -> OutagePolicy:
    return OutagePolicy(STORAGE, timeout, max_delay=max_delay, clock=clock,
                        sleep=clock.sleep, log=lines.append, seed=0)


def failing(times: int, error_of=refused_psycopg2, result="done"):
    """A call that fails `times` times with `error_of()`, then returns `result`; .calls counts the tries."""
    def call():
        call.calls += 1
        if call.calls <= times:
            raise error_of()
        return result

    call.calls = 0
    return call


def test_a_call_is_retried_through_an_outage_with_a_bounded_backoff_and_logged_in_two_lines():
    clock, lines = Clock(), []
    retrying = policy(clock, lines)
    call = failing(12)
    assert retrying.call(call) == "done" and call.calls == 13
    assert lines == [f"{STORAGE} unreachable (connection refused); retrying for up to 60 s",
                     f"{STORAGE} is back after {sum(clock.sleeps):.0f} s"]
    assert len(clock.sleeps) == 12 and all(0 < wait <= 2.0 for wait in clock.sleeps)
    ceilings = [min(2.0, outage.FIRST_DELAY * 2 ** attempt) for attempt in range(12)]
    assert all(ceiling / 2 <= wait <= ceiling for wait, ceiling in zip(clock.sleeps, ceilings, strict=True))
    assert max(clock.sleeps) > 1.0  # it does back off (to the cap), not knock ten times a second
    assert retrying.call(failing(0)) == "done" and len(lines) == 2  # nothing to say when all is well


def test_past_the_bound_the_call_raises_one_line_and_later_calls_do_not_wait_again():
    clock, lines = Clock(), []
    retrying = policy(clock, lines, timeout=10)
    call = failing(10**6)
    with pytest.raises(OutageTooLong) as raised:
        retrying.call(call)
    assert str(raised.value) == (f"{STORAGE} unreachable for 10 s (connection refused); re-run the same "
                                 "command once it is back to resume the sweep")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no driver traceback
    assert clock.now - 1000.0 == pytest.approx(10)  # it waited the bound, not one backoff step more
    assert lines == [f"{STORAGE} unreachable (connection refused); retrying for up to 10 s"]
    tries, waits = call.calls, len(clock.sleeps)
    with pytest.raises(OutageTooLong):  # e.g. the clean-up on the way out: one try each, no wait
        retrying.call(call)
    assert call.calls == tries + 1 and len(clock.sleeps) == waits
    assert retrying.call(failing(0)) == "done"  # and a store that is back is used again
    assert lines[-1] == f"{STORAGE} is back after 10 s"


def test_a_timeout_of_zero_gives_up_at_the_first_transient_error():
    clock, lines = Clock(), []
    with pytest.raises(OutageTooLong):
        policy(clock, lines, timeout=0).call(failing(1))
    assert clock.sleeps == []


def test_an_error_that_is_not_transient_is_raised_at_once_without_a_line():
    clock, lines = Clock(), []
    wrong_password = failing(1, lambda: psycopg2.OperationalError(
        LIBPQ + 'FATAL:  password authentication failed for user "postgres"\n'))
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        policy(clock, lines).call(wrong_password)
    assert wrong_password.calls == 1 and clock.sleeps == [] and lines == []


def test_threads_waiting_on_one_outage_share_its_two_lines_and_the_listener_runs_once_before_returning():
    lines, events = [], []
    retrying = OutagePolicy("MLflow store postgresql://db/mlflow", 60, max_delay=0.01, log=lines.append)
    retrying.when_back(lambda: events.append(("listener", threading.get_ident())))
    met = threading.Condition()
    failed_in: set[int] = set()  # the threads that met the outage
    back = threading.Event()

    def through_the_outage() -> None:
        if not back.is_set():
            with met:
                failed_in.add(threading.get_ident())
                met.notify_all()
            raise psycopg2.OperationalError(LIBPQ + "Connection refused")

    def worker_thread() -> None:
        retrying.call(through_the_outage)
        events.append(("returned", threading.get_ident()))

    threads = [threading.Thread(target=worker_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    with met:  # a handshake, not a sleep: both threads are in the outage
        met.wait_for(lambda: len(failed_in) == 2)
    back.set()
    for thread in threads:
        thread.join()
    assert len(lines) == 2, lines
    assert lines[0] == ("MLflow store postgresql://db/mlflow unreachable (connection refused); retrying for "
                        "up to 60 s")
    assert lines[1].startswith("MLflow store postgresql://db/mlflow is back after")
    [listener] = [event for event in events if event[0] == "listener"]
    assert events.index(listener) < events.index(("returned", listener[1]))  # beat first, then carry on
    assert sorted(kind for kind, _ in events) == ["listener", "returned", "returned"]


def test_the_store_counts_as_up_only_a_grace_period_after_its_last_outage():
    clock, lines = Clock(), []
    retrying = policy(clock, lines)
    assert retrying.up_for(30)  # no outage seen: trials are judged as usual
    retrying.call(failing(3))
    assert not retrying.up_for(30)
    clock.now += 29.9
    assert not retrying.up_for(30)
    clock.now += 0.2
    assert retrying.up_for(30)


class Store:
    """A store whose methods call each other, as Optuna's and MLflow's do."""

    def __init__(self, fails: int) -> None:
        self.tries = 0
        self.fails = fails
        self.opened = self.read()  # the constructor's calls are not retried (outage not set yet)

    def read(self) -> int:
        self.tries += 1
        if self.tries <= self.fails:
            raise refused_psycopg2()
        return self.tries

    def read_twice(self) -> tuple[int, int]:
        return self.read(), self.read()

    @staticmethod
    def version() -> str:
        return "1"


def test_a_tolerant_class_retries_its_public_methods_once_each_but_not_its_constructor():
    clock, lines = Clock(), []
    tolerant = outage.tolerant(Store)
    assert issubclass(tolerant, Store) and tolerant.version() == "1"
    with pytest.raises(psycopg2.OperationalError):
        tolerant(fails=1)  # a store that cannot be opened is reported at once
    store = tolerant(fails=0)
    store.outage = policy(clock, lines)
    store.fails = 3
    assert store.read_twice() == (4, 5)  # the inner calls are not retried on their own: the outer one is
    assert len(clock.sleeps) == 2 and len(lines) == 2


def test_every_method_of_optunas_storage_goes_through_the_policy():
    public = [name for name in dir(RDBStorage)
              if not name.startswith("_") and callable(getattr(RDBStorage, name))]
    assert "record_heartbeat" in public and "set_trial_state_values" in public
    for name in [*public, "_get_stale_trial_ids"]:  # fail_stale_trials calls the private one
        assert getattr(OutageTolerantStorage, name) is not getattr(RDBStorage, name), name


def test_the_traceback_a_library_logs_for_a_transient_error_is_dropped():
    logger = logging.getLogger("test_outage_policy.store")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.addFilter(outage.QuietTransient())
    try:
        duplicate = statement_error(sqlalchemy.exc.IntegrityError, psycopg2.errors.UniqueViolation("dup"))
        for error in (refused_sqlalchemy(), duplicate):
            try:
                raise error
            except sqlalchemy.exc.SQLAlchemyError:
                logger.exception("SQLAlchemy database error")  # as mlflow.store.db.utils does
    finally:
        logger.removeHandler(handler)
    assert [type(record.exc_info[1]).__name__ for record in records] == ["IntegrityError"]
