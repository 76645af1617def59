"""A database that goes away mid-sweep (outage.py), with a real PostgreSQL that each test starts, stops
and starts again: a cluster of its own on its own port (never the shared server on 5432), made with
Debian's initdb/pg_ctl as the `postgres` user, trust authentication, listening on 127.0.0.1 only.

Workers are `python cli.py sweep` processes on test_workers.py's tiny grids; the moment "training is
going on" is reached through the lease's handshake files (lease.py), not a guess of how long start-up
takes. The outage itself lasts what the scenario says (20 s: a database restart), far more than the
grace period of the 1 s heartbeats (3 s), so a heartbeat missed across it would fail trials. The two
heartbeat rules that prevent it are tested one at a time in test_outage_heartbeats.py: in a whole sweep
the heartbeat threads usually beat in time even without them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from support import ROOT, free_port
from test_workers import (
    assert_every_point_complete_once,
    children_and_parent,
    finish,
    grid_file,
    output,
    wait_for,
)
from test_workers import start as start_process

from sweeps.execution import lease

OUTAGE_SECONDS = 20  # the scenario: the database stopped for 20 s and started again
STUDY = "tiny_grid-torch"


class PrivatePostgres:
    """A PostgreSQL cluster in a folder of its own (owned by `postgres`) on `port`: start, stop, databases."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            pytest.fail("no PostgreSQL server under /usr/lib/postgresql/*/bin: apt-get install postgresql")
        self.bin = Path(found[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))  # not tmp_path: postgres cannot enter it
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(self.bin / "initdb", "-D", self.folder / "data", "-A", "trust", "-U", "postgres",
                          "--no-sync")
        self.running = False

    def _as_postgres(self, *argv) -> None:
        command = [str(arg) for arg in argv]
        if os.geteuid() == 0:  # the server refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")

    def _pg_ctl(self, *argv) -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", self.folder / "data", "-l", self.folder / "server.log",
                          "-w", *argv)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("start", "-o", options)
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)
        self.running = False

    def database(self, name: str, password: str = "") -> str:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return f"postgresql://postgres{':' + password if password else ''}@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


    @classmethod
    @contextlib.contextmanager
    def started(cls):
        """A new cluster, up; removed (stopped, its folder deleted) when the block ends."""
        cluster = cls()
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.remove()


@pytest.fixture
def private_postgres():
    with PrivatePostgres.started() as cluster:
        yield cluster


def mlflow_database(cluster: PrivatePostgres, tmp_path: Path, experiment: str) -> str:
    """A tracking URI on the cluster (MLflow's SQL store used directly) with `experiment` in it, its artifacts
    in tmp_path. Made by a process of its own: this one keeps no connection to a server it stops."""
    uri = cluster.database("mlflow")
    make = ("import sys; from mlflow import MlflowClient; "
            "MlflowClient(sys.argv[1]).create_experiment(sys.argv[2], artifact_location=sys.argv[3])")
    subprocess.run([sys.executable, "-c", make, uri, experiment, (tmp_path / "artifacts").as_uri()],
                   check=True, timeout=300, capture_output=True)
    return uri


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    opened = optuna.storages.RDBStorage(storage)
    try:
        return optuna.load_study(study_name=STUDY, storage=opened).get_trials()
    finally:
        opened.engine.dispose()


def sweep_argv(sweep: Path, storage: str, tracking_uri: str, experiment: str, *extra: str) -> list[str]:
    return [sys.executable, "cli.py", "sweep", str(sweep), "--storage", storage, "--tracking-uri",
            tracking_uri, "--experiment", experiment, "--heartbeat", "1", "--no-progress", *extra]


@contextlib.contextmanager
def paused_in_training(tmp_path: Path, argv: list[str], workers: int):
    """The sweep process, once `workers` of its workers are paused at the end of their first epoch (the
    lease's `training` point); `go()` lets them train on. No worker is left paused after a failure."""
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    process = start_process(argv, tmp_path, "sweep", {lease.HANDSHAKE_ENV: str(handshake),
                                                      lease.PAUSE_ENV: "training"})
    try:
        # A bound for the workers to start (Python, torch, MLflow, the data) on a busy machine, not a timing.
        wait_for(lambda: len({path.name.split("-")[0] for path in handshake.glob("*.training")}) == workers,
                 timeout=300, what=f"{workers} worker(s) paused in training")
        yield process, lambda: (handshake / "go").touch()
    except BaseException:
        for pid in {int(path.name.split("-")[0]) for path in handshake.iterdir() if "-t" in path.name}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        raise


def test_a_two_worker_sweep_rides_out_a_20_s_database_restart(tmp_path, private_postgres):
    """Both stores on the cluster (Optuna's storage and MLflow's SQL store used directly), stopped while both
    workers train. The sweep ends by itself with every grid point trained exactly once: no trial was failed
    as stale for the heartbeats nobody could write, no worker died, and the output holds no traceback."""
    storage = private_postgres.database("optuna")
    tracking_uri = mlflow_database(private_postgres, tmp_path, "outage")
    sweep = grid_file(tmp_path, [8, 16], [0.05, 0.1], epochs=2)
    # --population 2: the four points are one pack, and each worker is to hold half of it
    argv = sweep_argv(sweep, storage, tracking_uri, "outage", "--workers", "2", "--population", "2")
    down_line = f"Optuna storage postgresql://127.0.0.1:{private_postgres.port}/optuna unreachable ("

    with paused_in_training(tmp_path, argv, workers=2) as (process, go):
        stopped = time.monotonic()
        private_postgres.stop()
        go()  # training goes on without the database
        wait_for(lambda: output(process).count(down_line) >= 2, timeout=OUTAGE_SECONDS,
                 what="both workers retrying the storage")  # their heartbeats meet the outage within 1 s
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))  # the outage's length
        assert process.poll() is None, output(process)  # still there, waiting for the database
        private_postgres.start()
        assert finish([process]) == [0], output(process)

    log = output(process)
    assert "Traceback" not in log, log
    assert "lost its heartbeat" not in log and "left running by a worker" not in log, log
    assert f"Optuna storage postgresql://127.0.0.1:{private_postgres.port}/optuna is back after" in log, log
    finished = trials(storage)
    assert_every_point_complete_once(finished, {(h, lr) for h in (8, 16) for lr in (0.05, 0.1)})
    assert [t.state for t in finished] == [TrialState.COMPLETE] * 4  # none failed and trained again
    _, children, parent = children_and_parent(tracking_uri, "outage")
    assert parent.info.status == "FINISHED"
    assert sorted(run.info.status for run in children) == ["FINISHED"] * 4


@pytest.mark.parametrize("away", ["optuna", "mlflow"])
def test_a_database_away_past_the_outage_timeout_ends_the_worker_in_one_line(tmp_path, private_postgres, away,
                                                                            make_mlflow_store,
                                                                            make_postgres_database):
    """One store on the cluster, kept down past --outage-timeout 5: the worker exits 1 with one line that
    names the store (no password) and says that re-running resumes; re-run once it is back, it does."""
    if away == "optuna":
        storage = private_postgres.database("optuna", password="secret")
        tracking_uri = make_mlflow_store()
        label = f"Optuna storage postgresql://127.0.0.1:{private_postgres.port}/optuna"
    else:
        storage = make_postgres_database("optuna")  # the shared server, which stays up
        tracking_uri = mlflow_database(private_postgres, tmp_path, "outage")
        label = f"MLflow store postgresql://127.0.0.1:{private_postgres.port}/mlflow"
    sweep = grid_file(tmp_path, [8, 16], [0.05], epochs=2)
    argv = sweep_argv(sweep, storage, tracking_uri, "outage", "--outage-timeout", "5")

    with paused_in_training(tmp_path, argv, workers=1) as (process, go):
        private_postgres.stop()
        go()
        assert finish([process]) == [1], output(process)

    log = output(process)
    assert "Traceback" not in log and "secret" not in log, log
    [error] = [line for line in log.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: {label} unreachable for 5 s (")
    assert error.endswith("re-run the same command once it is back to resume the sweep")
    assert f"{label} unreachable (" in log  # the outage's first line, before it was given up

    private_postgres.start()
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stdout + again.stderr
    finished = trials(storage)
    assert_every_point_complete_once(finished, {(8, 0.05), (16, 0.05)})
    _, children, parent = children_and_parent(tracking_uri, "outage")
    assert parent.info.status == "FINISHED"
    assert not [run for run in children if run.info.status == "RUNNING"]
