"""Shared fixtures: an MLflow store per test, tiny synthetic data, a small slice of the real data.

Every test runs with MLFLOW_TRACKING_URI pointing into its own tmp_path, so nothing ever
writes to the project's mlruns/. A fresh SQLite store costs seconds of schema migrations;
`mlflow_store` copies a migrated empty database made once per session instead.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from support import POSTGRES, compose_command, env_example, free_port, postgres_admin, synthetic_splits

# Each test module's layer (pytest -m unit | integration | e2e). A module may mark itself instead
# (pytestmark); a module in neither place is an error, so every new test chooses its layer.
LAYERS = {
    "unit": {"test_activations", "test_checkpoint", "test_inits", "test_mlp_manual", "test_mlp_packed_manual",
             "test_mlp_parity",
             "test_schedules", "test_definitions_loader", "test_background", "test_outage_policy"},
    "integration": {"test_data", "test_tracking", "test_runner", "test_rounds", "test_report", "test_compose",
                    "test_outage_heartbeats"},
    "e2e": {"test_workers", "test_cli_sweep", "test_cli_tracking", "test_browser", "test_outage"},
    "simulation": set(),  # modules mark themselves (pytestmark): the decided verdicts' error rates
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(layer) for layer in LAYERS):
            continue
        module = item.module.__name__.rsplit(".", 1)[-1]
        layer = next((layer for layer, modules in LAYERS.items() if module in modules), None)
        if layer is None:
            raise pytest.UsageError(f"{module}: add it to tests/conftest.py LAYERS or give it a pytestmark "
                                    f"({', '.join(LAYERS)})")
        item.add_marker(layer)


@pytest.fixture(autouse=True)
def _mlflow_isolated(tmp_path, monkeypatch):
    """No test reaches the project's store: the default URI is a store inside tmp_path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns-default' / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield
    if "mlflow" in sys.modules:  # setup() sets the process-wide URI; do not leak it into the next test
        import mlflow

        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def _empty_store_template(tmp_path_factory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture
def make_mlflow_store(tmp_path, _empty_store_template):
    """make_mlflow_store(name) -> tracking URI of an empty SQLite store in tmp_path/name/
    (artifacts in tmp_path/name/artifacts)."""

    def make(name: str = "mlruns") -> str:
        database = tmp_path / name / "mlflow.db"
        database.parent.mkdir(parents=True)
        shutil.copyfile(_empty_store_template, database)
        return f"sqlite:///{database}"

    return make


@pytest.fixture
def mlflow_store(make_mlflow_store, monkeypatch) -> str:
    """Tracking URI of an empty SQLite store in tmp_path/mlruns, also set as $MLFLOW_TRACKING_URI
    for code and subprocesses that read it."""
    uri = make_mlflow_store("mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def tiny_splits():
    """256 train / 64 val / 64 test synthetic images that an MLP learns in a few steps."""
    return synthetic_splits(256, 64, 64, seed=0)


@pytest.fixture
def two_threads():
    """Training on 2 torch threads, as on the 2-core CI machine; the count it had is put back after."""
    import os

    import torch

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no OpenMP worker threads to share it")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_real_splits():
    """The real validation (10k, data.SPLIT_SEED) and test (10k) sets, with only 3000 training images:
    real accuracies in seconds. Fails (not skips) without the data: `make data` installs it."""
    from fmnist_core.data import load_splits
    splits = load_splits(val_size=10_000)
    splits.train_x, splits.train_y = splits.train_x[:3000], splits.train_y[:3000]
    return splits


# --- PostgreSQL, docker-compose.yml's command lines, an MLflow server: the many-workers tests --------


@pytest.fixture
def make_postgres_database():
    """make_postgres_database(prefix) -> URL of a new empty database on the local PostgreSQL;
    dropped when the test ends, whatever connections killed workers left behind."""
    import uuid

    made = []

    def make(prefix: str = "test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        postgres_admin(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"postgresql://postgres@{POSTGRES}/{name}"

    yield make
    for name in made:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """http://127.0.0.1:PORT of an `mlflow server` started with docker-compose.yml's own command
    line and environment (PostgreSQL backend in a database of its own, artifacts served from a
    tmp folder, host checks on), shared by the session: each test uses its own experiment."""
    import os
    import signal
    import subprocess
    import time
    import urllib.request
    import uuid

    database = f"mlflow_{uuid.uuid4().hex[:12]}"
    postgres_admin(f'CREATE DATABASE "{database}"')
    port, artifacts = free_port(), tmp_path_factory.mktemp("mlartifacts")
    variables = dict(env_example(), POSTGRES_USER="postgres", MLFLOW_DB=database, MLFLOW_WORKERS="1")
    argv, environment = compose_command("mlflow", variables, {
        "@postgres:5432/": f"@{POSTGRES}/", "/mlartifacts": str(artifacts), "0.0.0.0": "127.0.0.1"})
    assert argv[:2] == ["mlflow", "server"] and argv[argv.index("--port") + 1] == "5000"
    argv[argv.index("--port") + 1] = str(port)
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115 - the server's lifetime
    server = subprocess.Popen([sys.executable, "-m", "mlflow", *argv[1:]], env={**os.environ, **environment},
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=artifacts)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                log_text = (artifacts.parent / "mlflow-server.log").read_text()
                pytest.fail(f"mlflow server did not start: {log_text}")
            time.sleep(0.3)
    yield url
    os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
    server.wait(timeout=30)
    log.close()
    postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
