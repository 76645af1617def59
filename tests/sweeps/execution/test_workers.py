"""Many workers on one study, with real processes and real signals.

The topology is docker-compose.yml's, without Docker: the local PostgreSQL (a database per
test), an `mlflow server` started from the compose file's own command line (conftest), and
workers that are `python cli.py sweep` processes. Real Fashion-MNIST with tiny settings:
1000 validation images, hidden sizes 8-32, one epoch at batch 500; a grid point costs a few
seconds, mostly the figures and the model logged to MLflow.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from optuna.trial import TrialState
from support import POSTGRES, ROOT, compose_command, env_example

from cli import cli
from fmnist_tracking import names, run_log, store
from sweeps.definitions.loader import load_definition
from sweeps.definitions.plan import plan_studies
from sweeps.execution import lease, runner, workers
from sweeps.execution import storage as stores
from sweeps.execution.study import StudyError, default_storage, enqueue_grid, open_study

WORKER_TIMEOUT = 150  # seconds; a sweep here takes well under a minute


def grid_file(tmp_path, hidden_sizes: list[int], lrs: list[float], name: str = "tiny_grid", epochs: int = 1):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        description: tiny {len(hidden_sizes) * len(lrs)}-point grid for the workers tests
        base: {{impl: torch, epochs: {epochs}, batch_size: 500, val_size: 1000}}
        space:
          hidden_size: {hidden_sizes}
          lr: {lrs}
    """))
    return path


def start(argv: list[str], tmp_path, label: str, environment: dict[str, str] | None = None):
    """A worker process from the project root, its output in tmp_path/<label>.log; one CPU thread."""
    log = open(tmp_path / f"{label}.log", "w")  # noqa: SIM115 - read back by output()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(environment or {})}
    process = subprocess.Popen(argv, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log.name
    return process


def output(process: subprocess.Popen) -> str:
    with open(process.log_path) as log:
        return log.read()


def finish(processes: list[subprocess.Popen], timeout: float = WORKER_TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [process.wait(timeout=max(1, deadline - time.monotonic())) for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail("workers did not exit by themselves:\n" + "\n".join(output(p)[-3000:] for p in processes))


def wait_for(condition, timeout: float = 90, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def worker_argv(sweep, storage: str, server: str, experiment: str, *extra: str) -> list[str]:
    return [sys.executable, "cli.py", "sweep", str(sweep), "--storage", storage, "--tracking-uri", server,
            "--experiment", experiment, "--heartbeat", "1", *extra]


_storages: dict[str, optuna.storages.RDBStorage] = {}  # one connection pool per database, polled often


@pytest.fixture(autouse=True)
def _close_storages():
    yield
    while _storages:
        _storages.popitem()[1].engine.dispose()  # before the database is dropped


def trials(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none while the workers have not created it yet."""
    if storage not in _storages:
        _storages[storage] = stores.open_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=_storages[storage]).get_trials()
    except KeyError:
        return []


def children_and_parent(server: str, experiment: str):
    client = MlflowClient(server)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [parent] = [r for r in found if r.data.tags.get("sweep_role") == "parent"]
    return client, [r for r in found if r.data.tags.get("sweep_role") == "trial"], parent


def assert_every_point_complete_once(finished: list, points: set[tuple]) -> None:
    complete = [(t.params["hidden_size"], t.params["lr"]) for t in finished if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == len(points)  # no duplicates
    assert set(complete) == points  # none lost
    assert not [t for t in finished if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_compose_topology_workers_finish_an_8_point_grid_exactly_once(tmp_path, mlflow_server,
                                                                    make_postgres_database):
    storage = make_postgres_database("optuna")
    sweep = grid_file(tmp_path, [8, 16, 24, 32], [0.05, 0.1])
    variables = dict(env_example(), POSTGRES_USER="postgres", OPTUNA_DB=storage.rsplit("/", 1)[1],
                     SWEEP=str(sweep))
    local = {"@postgres:5432/": f"@{POSTGRES}/", "http://mlflow:5000": mlflow_server}
    create_argv, create_environment = compose_command("create", variables, local)
    worker_argv_, worker_environment = compose_command("worker", variables, local)
    assert worker_argv_[:2] == ["python", "cli.py"]
    assert worker_environment["MLFLOW_TRACKING_URI"] == mlflow_server
    # the 8 points are one shape: populations of 2 make 4 packs for the 3 workers to share
    worker_environment["FMNIST_POPULATION"] = "2"

    create = start([sys.executable, *create_argv[1:]], tmp_path, "create", create_environment)
    assert finish([create]) == [0], output(create)
    pool = [start([sys.executable, *worker_argv_[1:]], tmp_path, f"worker{i}", worker_environment)
            for i in range(3)]
    assert finish(pool) == [0, 0, 0], "\n".join(output(p)[-2000:] for p in pool)  # each exits by itself

    finished = trials(storage, "tiny_grid-torch")
    assert_every_point_complete_once(finished, {(h, lr) for h in (8, 16, 24, 32) for lr in (0.05, 0.1)})
    assert len(finished) == 8
    assert len({t.user_attrs["worker"] for t in finished}) >= 2  # the queue was shared
    client, children, parent = children_and_parent(mlflow_server, "fmnist")
    assert parent.info.status == "FINISHED" and parent.data.tags["recommended_run_id"]
    assert sorted(r.info.status for r in children) == ["FINISHED"] * 8
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in finished}
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1]
        assert names.CHECKPOINT_ARTIFACT in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/summary.csv"}


def test_a_worker_killed_mid_trial_is_recovered_by_another(tmp_path, mlflow_server, make_postgres_database):
    storage = make_postgres_database("optuna")
    sweep = grid_file(tmp_path, [8, 16], [0.05, 0.1])
    argv = worker_argv(sweep, storage, mlflow_server, "killed", "--no-progress", "--population", "1")
    victim, survivor = start(argv, tmp_path, "victim"), start(argv, tmp_path, "survivor")
    owner = f"{socket.gethostname()}:{victim.pid}"

    def victim_mid_trial():  # its trial is RUNNING and its MLflow run exists
        return [t for t in trials(storage, "tiny_grid-torch") if t.state == TrialState.RUNNING
                and t.user_attrs.get("worker") == owner and "mlflow_run_id" in t.user_attrs]

    held = {t.number for t in wait_for(victim_mid_trial, what="a trial of the victim in training")}
    completed_before = {t.number for t in trials(storage, "tiny_grid-torch")
                        if t.state == TrialState.COMPLETE}
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert finish([survivor]) == [0], output(survivor)

    finished = trials(storage, "tiny_grid-torch")
    assert_every_point_complete_once(finished, {(h, lr) for h in (8, 16) for lr in (0.05, 0.1)})
    complete = {t.number for t in finished if t.state == TrialState.COMPLETE}
    assert completed_before <= complete  # nothing that had finished was lost or trained again
    client, children, parent = children_and_parent(mlflow_server, "killed")
    killed_trials = [t for t in finished if t.number in held and t.state == TrialState.FAIL]
    assert killed_trials  # (one that finished in the milliseconds before the kill stays COMPLETE)
    for killed in killed_trials:
        retried = [t for t in finished if t.system_attrs.get("failed_trial") == killed.number]
        assert [t.state for t in retried] == [TrialState.COMPLETE]  # same point, trained by the survivor
        assert retried[0].params == killed.params
        run = client.get_run(killed.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED"  # closed by the survivor, not left RUNNING
        assert f"worker {owner} stopped during trial {killed.number}" in run.data.tags[names.FAILURE_TAG]
    assert "lost its heartbeat" in output(survivor)
    assert parent.info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]
    best = store.find_best_run(client, [parent.info.experiment_id], sweep="tiny_grid")
    assert best.info.run_id not in {t.user_attrs["mlflow_run_id"] for t in killed_trials}

    repair = subprocess.run(worker_argv(sweep, storage, mlflow_server, "killed", "--repair"), cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert repair.returncode == 0, repair.stderr
    assert "0 stale trial(s) failed and re-queued; 0 running, 0 queued" in repair.stdout


CHILD = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
(out / f"{os.getpid()}.ready").touch()
try:
    time.sleep(60)
except KeyboardInterrupt:
    (out / f"{os.getpid()}.interrupted").touch()
    sys.exit(130)
"""


def test_ctrl_c_reaches_local_workers_when_the_sweep_was_started_with_sigint_ignored(tmp_path):
    """A script's `cmd &` starts cmd with SIGINT ignored, and children inherit that. The `--workers`
    process forwards Ctrl-C to its workers, so they must start with SIGINT handled, or they train on
    while it reports the sweep interrupted. Workers here: tiny Python programs that wait for it."""
    harness = ("import sys; from sweeps.execution.supervisor import run_local_workers; "
               f"sys.exit(run_local_workers([sys.executable, '-c', {CHILD!r}, {str(tmp_path)!r}], 2))")
    process = subprocess.Popen([sys.executable, "-c", harness], cwd=ROOT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_for(lambda: len(list(tmp_path.glob("*.ready"))) == 2, timeout=60, what="two workers started")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        process.kill()  # after a failure; nothing once it has exited
    ready = {path.stem for path in tmp_path.glob("*.ready")}
    assert {path.stem for path in tmp_path.glob("*.interrupted")} == ready  # each worker got Ctrl-C once


def test_ctrl_c_stops_all_local_workers_cleanly_and_the_next_run_resumes(tmp_path, mlflow_server,
                                                                          make_postgres_database):
    """Ctrl-C with --workers 2 while both workers train: every trial in training ends FAIL with a queued
    copy and its run KILLED as interrupted; the resumed sweep trains each grid point exactly once.

    The workers stop at the end of their first epoch (the lease's `training` point) and write a
    handshake file there, so the signal lands while every held trial is in training, on any machine."""
    ctrl_c_with_two_workers(tmp_path, mlflow_server, make_postgres_database("optuna"), "interrupted")


def ctrl_c_with_two_workers(tmp_path, mlflow_server, storage: str, experiment: str) -> None:
    """The Ctrl-C scenario above, in its own experiment (a loop of it shares one MLflow server)."""
    sweep = grid_file(tmp_path, [8, 16], [0.05, 0.1], epochs=2)
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    # --population 2: the four points are one pack, and each worker is to hold half of it
    argv = worker_argv(sweep, storage, mlflow_server, experiment, "--workers", "2", "--population", "2")
    parent_process = start(argv, tmp_path, "interrupted", {lease.HANDSHAKE_ENV: str(handshake),
                                                           lease.PAUSE_ENV: "training"})

    def both_workers_training():
        return len({path.name.split("-")[0] for path in handshake.glob("*.training")}) == 2

    # A bound for two workers to start (Python, torch, MLflow, the data) on a busy machine, not a timing.
    try:
        wait_for(both_workers_training, timeout=300, what="both workers paused in training")
        claimed = {int(path.stem.split("-t")[1]) for path in handshake.glob("*.claimed")}
        parent_process.send_signal(signal.SIGINT)  # what Ctrl-C sends; the --workers process forwards it
        assert parent_process.wait(timeout=60) == 130, output(parent_process)
    except BaseException:  # no worker is left paused after a failure (each has a session of its own)
        for pid in {int(path.name.split("-")[0]) for path in handshake.iterdir() if "-t" in path.name}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent_process.kill()
        raise
    assert "Interrupted: the running trials are re-queued" in output(parent_process)

    stopped = trials(storage, "tiny_grid-torch")
    client, children, parent = children_and_parent(mlflow_server, experiment)
    story = [(t.number, t.state.name, t.system_attrs.get("failed_trial"), t.user_attrs.get("worker"))
             for t in stopped]
    # Each worker holds one population of two: between them, every point.
    assert claimed == {0, 1, 2, 3}, story
    for number in claimed:
        [trial] = [t for t in stopped if t.number == number]
        assert trial.state == TrialState.FAIL, story
        [copy] = [t for t in stopped if t.system_attrs.get("failed_trial") == number]
        assert copy.state == TrialState.WAITING and copy.system_attrs["fixed_params"] == trial.params, story
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED", story
        assert run.data.tags[names.FAILURE_TAG] == "interrupted (Ctrl-C / SIGINT)", story
    assert not [t for t in stopped if t.state == TrialState.RUNNING]
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert parent.info.status == "KILLED"

    again = start(worker_argv(sweep, storage, mlflow_server, experiment), tmp_path, "resumed")  # one
    assert finish([again]) == [0], output(again)
    assert_every_point_complete_once(trials(storage, "tiny_grid-torch"), {(h, lr) for h in (8, 16)
                                                                         for lr in (0.05, 0.1)})
    _, children, parent = children_and_parent(mlflow_server, experiment)
    assert parent.info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]


def test_workers_that_tag_one_run_at_once_all_get_through(mlflow_server):
    """Every worker tags the parent run as it starts (`dataset_digest`), and two workers may close the
    same dead worker's run (a reason tag). On PostgreSQL concurrent inserts of one tag break the tags'
    unique key: set_tag then fails (a worker of the compose test once exited 1 on it). Four threads
    at a barrier, ten runs: every call must return and the run end with the tags."""
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"tag-race-{uuid.uuid4().hex[:8]}")

    def at_once(action) -> list[Exception]:
        barrier, errors = threading.Barrier(4), []

        def call() -> None:
            barrier.wait()
            try:
                action()
            except Exception as error:  # noqa: BLE001 - collected, asserted by the caller
                errors.append(error)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return errors

    def tags(run_id: str):  # each thread a worker: a RunLogger of its own on the same run
        return lambda: run_log.RunLogger(client, run_id, experiment).set_tags({"dataset_digest": "d1"})

    def closes(run_id: str):
        return lambda: run_log.RunLogger(client, run_id, experiment).end("KILLED", "worker lost")

    for _ in range(10):
        run_id = client.create_run(experiment).info.run_id
        assert at_once(tags(run_id)) == []
        assert at_once(closes(run_id)) == []
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        found = run.data.tags
        assert found["dataset_digest"] == "d1" and found[names.FAILURE_TAG] == "worker lost"


def test_workers_that_log_the_dataset_at_once_all_get_through(mlflow_server, tiny_splits):
    """The first runs of an experiment to log the dataset input race on inserting its row (a
    unique-key violation on PostgreSQL; a --workers 2 sweep once lost a worker to it). Four runs,
    one thread each, in a fresh experiment, ten times: every call returns and each run has it."""
    client = MlflowClient(mlflow_server)
    for _ in range(10):
        experiment = client.create_experiment(f"dataset-race-{uuid.uuid4().hex[:8]}")
        runs = [client.create_run(experiment).info.run_id for _ in range(4)]
        barrier, errors = threading.Barrier(4), []

        def log(run_id: str, barrier=barrier, errors=errors) -> None:
            barrier.wait()
            try:
                run_log.log_dataset(client, run_id, tiny_splits)
            except Exception as error:  # noqa: BLE001 - collected, asserted below
                errors.append(error)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for run_id in runs:
            [found] = client.get_run(run_id).inputs.dataset_inputs
            assert found.dataset.digest == tiny_splits.digest


def test_several_workers_on_the_embedded_sqlite_stores_are_refused_in_one_line():
    result = CliRunner().invoke(cli, ["sweep", "hidden_size", "--workers", "2"])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: --workers 2: the Optuna storage and the MLflow store")
    assert "--storage postgresql://" in line and "MLflow server" in line


def test_a_second_worker_on_the_same_sqlite_store_is_refused(mlflow_store):
    storage = default_storage(mlflow_store)
    with stores.sqlite_guard(storage, mlflow_store):  # a worker at work on these files
        result = CliRunner().invoke(cli, ["sweep", "hidden_size", "--tracking-uri", mlflow_store])
    assert result.exit_code == 2
    assert "another sweep worker" in result.output and "--storage postgresql://" in result.output
    with stores.sqlite_guard(storage, mlflow_store) as exclusive:  # released: free again
        assert exclusive


def test_a_sqlite_sweep_recovers_what_a_killed_worker_left_on_its_next_run(tmp_path, mlflow_store,
                                                                            tiny_splits):
    path = tmp_path / "tiny.yaml"
    path.write_text("description: widths\nbase: {epochs: 1, batch_size: 64}\nspace: {hidden_size: [8, 16]}\n")
    where = {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "tracking_uri": mlflow_store,
              "experiment": "orphans"}
    runner.run_sweep(path, create=True, **where)
    # a worker that died mid-trial: its trial RUNNING, its child run RUNNING (no heartbeats on SQLite)
    [plan] = plan_studies(load_definition(path))
    worker = workers.Worker(stores.open_storage(where["storage"]), exclusive=True)
    study, _ = open_study(plan, worker.storage)
    trial, _ = worker.pop_queued(study)
    client, experiment_id = store.setup(mlflow_store, "orphans")
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    orphan = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent_id, "sweep": "tiny",
                                                   "trial": str(trial.number), "sweep_role": "trial"})
    [summary] = runner.run_sweep(path, splits=tiny_splits, progress=False, **where)

    finished = optuna.load_study(study_name="tiny-manual", storage=where["storage"]).trials
    assert sorted(t.params["hidden_size"] for t in finished if t.state == TrialState.COMPLETE) == [8, 16]
    assert [t.state for t in finished if t.number == trial.number] == [TrialState.FAIL]
    closed = client.get_run(orphan.info.run_id)
    assert closed.info.status == "KILLED" and "stopped during trial" in closed.data.tags[names.FAILURE_TAG]
    assert len(summary.rows) == 2


def test_the_grid_is_queued_once_and_a_budget_queues_a_seeded_subset(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("description: g\nspace: {hidden_size: [8, 16, 32], lr: [0.1, 0.2]}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    [plan] = plan_studies(load_definition(path))
    study, created = open_study(plan, storage)
    assert created and enqueue_grid(study, plan) == 6 and enqueue_grid(study, plan) == 0
    assert not open_study(plan, storage)[1]  # a second worker loads it
    queued = {(t.system_attrs["fixed_params"]["hidden_size"], t.system_attrs["fixed_params"]["lr"])
              for t in study.get_trials()}
    assert queued == {(h, lr) for h in (8, 16, 32) for lr in (0.1, 0.2)}
    [small] = plan_studies(load_definition(path), n_trials=4)
    subset = optuna.create_study()
    assert enqueue_grid(subset, small) == 4 and len(subset.trials) == 4


def test_workers_refuse_to_join_a_study_with_other_settings(tmp_path, mlflow_store):
    path = tmp_path / "grid.yaml"
    path.write_text("description: g\nbase: {epochs: 1}\nspace: {hidden_size: [8, 16]}\n")
    stores = {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "tracking_uri": mlflow_store}
    runner.run_sweep(path, create=True, **stores)
    with pytest.raises(StudyError, match="epochs: 1 -> 2"):
        runner.run_sweep(path, create=True, overrides={"epochs": 2}, **stores)
