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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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
    from fmnist_core.data import synthetic_splits

    return synthetic_splits(256, 64, 64, seed=0)


@pytest.fixture(scope="session")
def small_real_splits():
    """The real validation (10k, trainer.SPLIT_SEED) and test (10k) sets, with only 3000 training images:
    real accuracies in seconds. Fails (not skips) without the data: `make data` installs it."""
    from fmnist_core.data import load_splits
    from fmnist_core.trainer import SPLIT_SEED

    splits = load_splits(val_size=10_000, seed=SPLIT_SEED)
    splits.train_x, splits.train_y = splits.train_x[:3000], splits.train_y[:3000]
    return splits
