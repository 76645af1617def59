"""A decided sweep's worker SIGKILLed at each point of a round's end (before the next round is recorded,
after the record, after the first of its trials is queued), then run again: it trains and records exactly
what an uninterrupted worker does. Real processes (`cli.py sweep`), the real data, SQLite stores; the
worker kills itself at the point through execution/rounds.py's $FMNIST_ROUNDS_KILL_AT, never a timer."""

import os
import signal
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState
from support import ROOT

from sweeps import trial_record as record
from sweeps.execution.rounds import KILL_ENV
from sweeps.trial_record import seed_of

pytestmark = pytest.mark.e2e

DEFINITION = """
    description: a tiny decided grid for the kill tests
    base: {impl: torch, epochs: 1, batch_size: 500, val_size: 1000}
    space:
      hidden_size: [8, 16]
    decide: {max_seeds: 3, margin: 0.2}
"""


def sweep(folder, kill_at: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop(KILL_ENV, None)
    if kill_at:
        environment[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "sweep", str(folder / "killed.yaml"),
                           "--no-progress", "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def outcome(folder) -> tuple[list, list]:
    study = optuna.load_study(study_name="killed-torch", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    trained = sorted((t.params["hidden_size"], seed_of(t)) for t in study.get_trials()
                     if t.state == TrialState.COMPLETE)
    return trained, record.rounds(study)


def prepared(folder):
    folder.mkdir()
    (folder / "killed.yaml").write_text(textwrap.dedent(DEFINITION))
    return folder


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = prepared(tmp_path_factory.mktemp("rounds") / "reference")
    done = sweep(folder)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return outcome(folder)


@pytest.mark.parametrize("point", ["before_record", "recorded", "queued_one"])
def test_a_worker_killed_at_a_rounds_end_resumes_to_the_same_trials_and_record(tmp_path, uninterrupted,
                                                                                point):
    folder = prepared(tmp_path / "killed")
    killed = sweep(folder, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    resumed = sweep(folder)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trained, record = outcome(folder)
    assert (trained, record) == uninterrupted
    assert len(record) >= 1  # the kill happened at a round's end that queued a further round


def test_repair_of_a_worker_killed_before_the_next_round_leaves_the_sweep_to_resume(tmp_path,
                                                                                   uninterrupted):
    """`--repair` after a worker died between a round's end and the next round's record: nothing is queued
    or running, but the sweep is not done, so the parent run is closed KILLED ("re-run it to resume"), not
    FINISHED with a report of a sweep that stopped half-way; re-running then finishes it as usual."""
    from mlflow import MlflowClient

    folder = prepared(tmp_path / "repaired")
    assert sweep(folder, kill_at="before_record").returncode == -signal.SIGKILL
    repair = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sweep", str(folder / "killed.yaml"),
                             "--repair", "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "complete: report rebuilt" not in repair.stdout
    study = optuna.load_study(study_name="killed-torch", storage=f"sqlite:///{folder / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "KILLED"
    assert sweep(folder).returncode == 0
    assert outcome(folder) == uninterrupted
