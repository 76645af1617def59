"""sweeps/execution/repair.py: `cli.py sweep NAME --repair` on real studies (Optuna SQLite storage) and a
real MLflow store, trained on tiny synthetic data as in test_runner.

A killed worker is a real one: a `run_sweep` process that SIGKILLs itself at the lease's `training`
point (lease.HOOKS), so its trials stay RUNNING and their child runs open, as after `kill -9`. The
other states repair meets are made with the runner itself: a sweep finished but for its parent run, and
a sweep stopped by Ctrl-C. Layers per test: the killed worker is a process (e2e), the rest integration.
"""

import signal
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState
from support import ROOT

from fmnist_core import trainer
from fmnist_core.config import ConfigError
from fmnist_tracking import store
from fmnist_tracking.names import FAILURE_TAG
from sweeps.execution import runner
from sweeps.execution import trials as trial_loop
from sweeps.execution.repair import repair_sweep
from sweeps.execution.study import StudyError

EXPERIMENT = "repair-test"
ONE_SHAPE = """
    description: two learning rates, one population
    base: {hidden_size: 8, epochs: 2, batch_size: 32}
    space:
      lr: [0.05, 0.1]
"""
# argv: the definition, the Optuna storage, the MLflow store, the experiment, the test's splits (torch.save)
KILLED_AT_TRAINING = """
import os, signal, sys
import torch
from sweeps.execution import lease, runner
lease.HOOKS.append(lambda point, held: os.kill(os.getpid(), signal.SIGKILL) if point == "training" else None)
path, storage, tracking_uri, experiment, splits = sys.argv[1:]
runner.run_sweep(path, storage=storage, tracking_uri=tracking_uri, experiment=experiment,
                 splits=torch.load(splits, weights_only=False), progress=False)
sys.exit(3)  # not reached: killed in its first epoch
"""


@pytest.fixture
def stores(tmp_path, mlflow_store):
    """Keyword arguments for run_sweep and repair_sweep: this test's Optuna storage and MLflow store."""
    return {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "tracking_uri": mlflow_store,
            "experiment": EXPERIMENT}


def definition(tmp_path, text: str = ONE_SHAPE, name: str = "tiny"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def trials(stores) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny-manual", storage=stores["storage"]).trials


def runs(stores):
    """(client, parent run, child runs by trial number)."""
    client, experiment_id = store.setup(stores["tracking_uri"], stores["experiment"])
    found = store.search_runs(client, [experiment_id], sweep="tiny")
    [parent] = [r for r in found if r.data.tags.get("sweep_role") == "parent"]
    children = {int(r.data.tags["trial"]): r for r in found if r.data.tags.get("sweep_role") != "parent"}
    return client, parent, children


def repair(stores, capsys) -> str:
    capsys.readouterr()
    repair_sweep(stores["path"], storage=stores["storage"], tracking_uri=stores["tracking_uri"],
                 experiment=stores["experiment"])
    return capsys.readouterr().out


@pytest.mark.e2e
def test_repair_recovers_what_a_killed_worker_left_and_the_sweep_then_resumes(tmp_path, stores, tiny_splits,
                                                                              capsys):
    import torch

    path, splits = definition(tmp_path), tmp_path / "splits.pt"
    torch.save(tiny_splits, splits)  # the worker trains on the test's data, as the resumed sweep below
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_TRAINING, str(path), stores["storage"],
                             stores["tracking_uri"], EXPERIMENT, str(splits)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [t.state for t in trials(stores)] == [TrialState.RUNNING] * 2  # one population, both taken
    _, parent, children = runs(stores)
    assert parent.info.status == "RUNNING" and [r.info.status for r in children.values()] == ["RUNNING"] * 2

    out = repair(dict(stores, path=path), capsys)
    assert "tiny-manual: 2 stale trial(s) failed and re-queued; 0 running, 2 queued, 0 finished" in out
    assert f"parent run {parent.info.run_id} closed KILLED; re-run the sweep to train the queued" in out
    after = trials(stores)
    assert [t.state for t in after] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert [t.system_attrs["failed_trial"] for t in after[2:]] == [0, 1]  # a copy of each, same point
    assert [t.system_attrs["fixed_params"] for t in after[2:]] == [t.system_attrs["fixed_params"]
                                                                   for t in after[:2]]
    client, parent, children = runs(stores)
    assert parent.info.status == "KILLED" and parent.data.tags["decision"] == "stopped"
    for number, run in children.items():
        assert run.info.status == "KILLED"
        assert f"stopped during trial {number}" in run.data.tags[FAILURE_TAG]

    out = repair(dict(stores, path=path), capsys)  # nothing left to repair: the same again changes nothing
    assert "0 stale trial(s) failed and re-queued; 0 running, 2 queued, 0 finished" in out
    assert "closed KILLED" not in out

    runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    resumed = trials(stores)
    assert [t.state for t in resumed] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2
    assert sorted(t.params["lr"] for t in resumed if t.state == TrialState.COMPLETE) == [0.05, 0.1]
    _, parent, children = runs(stores)
    assert parent.info.status == "FINISHED"
    assert sorted(run.info.status for run in children.values()) == ["FINISHED"] * 2 + ["KILLED"] * 2


@pytest.mark.integration
def test_repair_closes_the_idle_parent_of_a_complete_sweep_finished_with_its_report(tmp_path, stores,
                                                                                    tiny_splits, capsys):
    path = definition(tmp_path)
    runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    client, parent, _ = runs(stores)
    best_run_id = parent.data.tags["recommended_run_id"]
    # a worker killed after telling the last trial and before closing the parent leaves it RUNNING
    client.update_run(parent.info.run_id, status="RUNNING")
    client.delete_tag(parent.info.run_id, "recommended_run_id")

    out = repair(dict(stores, path=path), capsys)
    assert "tiny-manual: 0 stale trial(s) failed and re-queued; 0 running, 0 queued, 2 finished" in out
    assert f"complete: report rebuilt, parent run {parent.info.run_id} FINISHED" in out
    _, parent, _ = runs(stores)
    assert parent.info.status == "FINISHED" and parent.data.tags["recommended_run_id"] == best_run_id
    assert [t.state for t in trials(stores)] == [TrialState.COMPLETE] * 2

    out = repair(dict(stores, path=path), capsys)  # a closed parent is left as it is
    assert "complete: report rebuilt" not in out and "closed KILLED" not in out


@pytest.mark.integration
def test_repair_leaves_a_sweep_stopped_by_ctrl_c_and_closes_its_parent_if_left_running(tmp_path, stores,
                                                                                        tiny_splits, capsys,
                                                                                        monkeypatch):
    path = definition(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trial_loop, "train_population", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    monkeypatch.setattr(trial_loop, "train_population", trainer.train_population)
    before = [(t.state, t.system_attrs.get("failed_trial")) for t in trials(stores)]
    assert before == [(TrialState.FAIL, None)] * 2 + [(TrialState.WAITING, 0), (TrialState.WAITING, 1)]
    client, parent, _ = runs(stores)
    assert parent.info.status == "KILLED"

    out = repair(dict(stores, path=path), capsys)
    assert "tiny-manual: 0 stale trial(s) failed and re-queued; 0 running, 2 queued, 0 finished" in out
    assert "closed KILLED" not in out  # the interrupted worker closed it already
    assert [(t.state, t.system_attrs.get("failed_trial")) for t in trials(stores)] == before

    client.update_run(parent.info.run_id, status="RUNNING")  # a worker killed between populations leaves it
    out = repair(dict(stores, path=path), capsys)
    assert f"parent run {parent.info.run_id} closed KILLED; re-run the sweep to train the queued" in out
    _, parent, _ = runs(stores)
    assert parent.info.status == "KILLED"
    assert [(t.state, t.system_attrs.get("failed_trial")) for t in trials(stores)] == before  # no training


@pytest.mark.integration
def test_repair_of_a_sweep_that_never_ran_says_how_to_run_it(tmp_path, stores):
    path = definition(tmp_path)
    never_ran = (f"no study 'tiny-manual' in {stores['storage']}; run `python cli.py sweep tiny` first "
                 "(same --impl and --storage)")
    with pytest.raises(StudyError) as caught:
        repair_sweep(path, **stores)  # no storage at all: nothing is created for a mistyped path
    assert str(caught.value) == never_ran
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("optuna")) == []
    optuna.create_study(storage=stores["storage"], study_name="another")  # a storage, not this study
    with pytest.raises(ConfigError, match=f"no experiment '{EXPERIMENT}'"):
        repair_sweep(path, **stores)  # the MLflow side next: nothing was ever logged here
    store.setup(stores["tracking_uri"], EXPERIMENT)
    with pytest.raises(StudyError) as caught:
        repair_sweep(path, **stores)
    assert str(caught.value) == never_ran
