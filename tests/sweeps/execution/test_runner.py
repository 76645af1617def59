"""Sweeps end to end on tiny synthetic data, with a real Optuna SQLite storage and a real MLflow store.

Each test writes a small definition (hidden sizes of 8-16, 2-3 epochs) into tmp_path and runs
it through `run_sweep(..., splits=...)`, then checks the study and the MLflow runs.
"""

import csv
import io
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from fmnist_core import trainer
from fmnist_tracking import names, store
from sweeps.analysis import evidence, text
from sweeps.definitions.loader import DefinitionError
from sweeps.execution import runner
from sweeps.execution import trials as trial_loop
from sweeps.execution.study import StudyError
from sweeps.trial_record import seed_of

EXPERIMENT = "sweeps-test"


@pytest.fixture
def stores(tmp_path, mlflow_store):
    """Keyword arguments for run_sweep: this test's Optuna storage and MLflow store."""
    return {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "tracking_uri": mlflow_store,
            "experiment": EXPERIMENT}


@pytest.fixture
def count_training(monkeypatch):
    """Records the population size of every train_population call the runner makes."""
    calls = []

    def counting(configs, *args, **kwargs):
        calls.append(len(configs))
        return trainer.train_population(configs, *args, **kwargs)

    monkeypatch.setattr(trial_loop, "train_population", counting)
    return calls


def definition(tmp_path, text: str, name: str = "tiny"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def runs_of(stores, sweep: str):
    client, experiment_id = store.setup(stores["tracking_uri"], stores["experiment"])
    found = store.search_runs(client, [experiment_id], sweep=sweep)
    parents = [r for r in found if r.data.tags.get("sweep_role") == "parent"]
    children = sorted((r for r in found if r.data.tags.get("sweep_role") != "parent"),
                      key=lambda r: int(r.data.tags["trial"]))
    return client, parents, children


def study_of(stores, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=stores["storage"])


GRID = """
    description: width grid
    base: {epochs: 2, batch_size: 32}
    space:
      hidden_size: [8, 16]
"""


def test_grid_sweep_gives_a_parent_and_a_finished_child_per_point(tmp_path, stores, tiny_splits):
    path = definition(tmp_path, GRID)
    [summary] = runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    client, [parent], children = runs_of(stores, "tiny")
    assert parent.info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert sorted(int(c.data.params["hidden_size"]) for c in children) == [8, 16]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["sweep"] == "tiny" and child.data.tags["sampled.hidden_size"]
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert steps == [1, 2]  # one value per epoch
    study = study_of(stores, "tiny-manual")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.metric_names == ["val_acc"]  # optuna-dashboard names the objective, not "Objective 0"
    assert sorted(len(t.intermediate_values) for t in study.trials) == [2, 2]
    # the parent holds the question's figures, the ranked tables and the verdicts; no Optuna history
    # for a grid (its trial order says nothing)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/validation_curves.png", "sweep/accuracy_vs_hidden_size.png",
            "sweep/cost_vs_hidden_size.png", "sweep/summary.csv", "sweep/summary.md",
            "sweep/verdicts.json"} <= artifacts
    assert "sweep/optuna_optimization_history.png" not in artifacts
    # ... and names the best trial, which is what `best --sweep` finds
    best = store.find_best_run(client, [parent.info.experiment_id], sweep="tiny")
    assert parent.data.tags["recommended_run_id"] == best.info.run_id  # one seed: the highest
    assert parent.data.tags["recommended_checkpoint"] == \
        f"runs:/{best.info.run_id}/{names.CHECKPOINT_ARTIFACT}"
    assert summary.recommended_trial.user_attrs["mlflow_run_id"] == best.info.run_id
    assert len(summary.rows) == 2 and summary.rows[0].vs_best == "best"
    # every child has its result; the three figures are made for the best run only (on demand for others)
    figures = {"plots/learning_curves.png", "plots/confusion_matrix_test.png", "plots/misclassified_test.png"}
    for child in children:
        run_id = child.info.run_id
        files = {a.path for folder in (None, "plots") for a in client.list_artifacts(run_id, folder)}
        assert {"checkpoint.pt", "per_class_accuracy.json", "val_correct.npy"} <= files
        [dataset] = client.get_run(run_id).inputs.dataset_inputs  # logged in the background
        assert dataset.dataset.digest == tiny_splits.digest
        assert (figures <= files) == (run_id == best.info.run_id), files


def test_rerun_resumes_without_retraining_and_fresh_starts_over(tmp_path, stores, tiny_splits,
                                                               count_training):
    path = definition(tmp_path, GRID)
    runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    assert sum(count_training) == 2
    runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    assert sum(count_training) == 2  # both grid points were done: nothing trained again
    _, parents, children = runs_of(stores, "tiny")
    assert len(parents) == 1 and len(children) == 2  # the study's parent run is reused
    assert parents[0].info.status == "FINISHED"
    with pytest.raises(StudyError, match="epochs: 2 -> 3.*--fresh"):
        runner.run_sweep(path, splits=tiny_splits, progress=False, overrides={"epochs": 3}, **stores)
    runner.run_sweep(path, splits=tiny_splits, progress=False, fresh=True, **stores)
    assert sum(count_training) == 4
    assert len(study_of(stores, "tiny-manual").trials) == 2
    _, parents, children = runs_of(stores, "tiny")
    assert len(parents) == 2 and len(children) == 4


def test_an_interrupted_trial_is_requeued_and_trained_on_resume(tmp_path, stores, tiny_splits, monkeypatch):
    path = definition(tmp_path, GRID)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trial_loop, "train_population", interrupted)
    with pytest.raises(KeyboardInterrupt):  # both points asked at once: one pack of two widths
        runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    _, [parent], children = runs_of(stores, "tiny")  # the pack had started both runs
    assert parent.info.status == "KILLED" and [c.info.status for c in children] == ["KILLED"] * 2
    states = [t.state for t in study_of(stores, "tiny-manual").trials]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
    monkeypatch.setattr(trial_loop, "train_population", trainer.train_population)
    runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    trials = study_of(stores, "tiny-manual").trials
    assert sorted(t.params["hidden_size"] for t in trials if t.state == TrialState.COMPLETE) == [8, 16]
    assert len(trials) == 4  # no grid point trained twice
    _, [parent], children = runs_of(stores, "tiny")
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]
    assert sorted(c.data.tags.get("retry_of") for c in children if c.info.status == "FINISHED") == ["0", "1"]


def test_a_diverging_trial_fails_alone_and_the_sweep_goes_on(tmp_path, stores, tiny_splits):
    path = definition(tmp_path, """
        description: one sane and one absurd learning rate
        base: {hidden_size: 8, epochs: 2, batch_size: 32, clip_mode: none}
        space:
          lr: [0.05, 100000.0]
    """)
    runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)  # one population of two
    _, _, children = runs_of(stores, "tiny")
    status = {float(c.data.params["lr"]): c for c in children}
    assert status[0.05].info.status == "FINISHED"
    assert status[100000.0].info.status == "FAILED"
    assert "diverged" in status[100000.0].data.tags[names.FAILURE_TAG]
    states = {t.params["lr"]: t.state for t in study_of(stores, "tiny-manual").trials}
    assert states == {0.05: TrialState.COMPLETE, 100000.0: TrialState.FAIL}


def test_a_diverging_member_of_a_pack_fails_alone_and_its_packmates_finish(tmp_path, stores, tiny_splits,
                                                                          count_training):
    path = definition(tmp_path, """
        description: two widths in one pack, one of them at an absurd learning rate
        base: {epochs: 2, batch_size: 32, clip_mode: none}
        space:
          setting:
            bundles:
              sane: {hidden_size: 8, lr: 0.05}
              absurd: {hidden_size: 16, lr: 100000.0}
              wide: {hidden_size: 24, lr: 0.05}
    """)
    runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    assert count_training == [3]  # three widths, one packed model
    states = {t.params["setting"]: t.state for t in study_of(stores, "tiny-manual").trials}
    assert states == {"sane": TrialState.COMPLETE, "absurd": TrialState.FAIL, "wide": TrialState.COMPLETE}
    _, _, children = runs_of(stores, "tiny")
    status = {c.data.params["hidden_size"]: c for c in children}
    assert status["16"].info.status == "FAILED" and "diverged" in status["16"].data.tags[names.FAILURE_TAG]
    for width in ("8", "24"):
        assert status[width].info.status == "FINISHED"
        assert float(status[width].data.metrics["best_val_acc"]) > 0.5  # it learnt: no NaN reached it


def test_tpe_with_a_pruner_prunes_and_closes_the_trial_killed(tmp_path, stores, tiny_splits):
    # The threshold pruner stops any trial under 50% validation accuracy after epoch 1: the
    # tiny learning rate stays near chance (10%), the sane one learns this data at once.
    path = definition(tmp_path, """
        description: pruning
        base: {hidden_size: 8, epochs: 3, batch_size: 32}
        sampler: {type: tpe, seed: 0}
        pruner: {type: threshold, lower: 0.5}
        space:
          lr: [0.000001, 0.1]
        budget: {n_trials: 4}
    """)
    runner.run_sweep(path, splits=tiny_splits, progress=False, population=1, **stores)
    study = study_of(stores, "tiny-manual")
    assert len(study.trials) == 4
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["lr"] == 0.000001 for t in pruned)
    assert all(t.state == TrialState.COMPLETE for t in study.trials if t.params["lr"] == 0.1)
    client, _, children = runs_of(stores, "tiny")
    killed = [c for c in children if c.info.status == "KILLED"]
    assert len(killed) == len(pruned)
    for run in killed:
        assert run.data.tags["pruned"] == "true"
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 1  # stopped after epoch 1


def test_population_training_matches_one_by_one_and_gives_seed_statistics(tmp_path, tiny_splits,
                                                                         mlflow_store, count_training):
    path = definition(tmp_path, """
        description: lr grid with seeds
        base: {hidden_size: 16, epochs: 2, batch_size: 32}
        space:
          lr: [0.01, 0.3]
        seeds: 2
    """)
    results = {}
    for population in (1, 8):
        stores = {"storage": f"sqlite:///{tmp_path / f'optuna-{population}.db'}",
                  "tracking_uri": mlflow_store, "experiment": f"population-{population}"}
        [summary] = runner.run_sweep(path, splits=tiny_splits, progress=False, population=population,
                                     **stores)
        trials = study_of(stores, "tiny-manual").trials
        results[population] = {(t.params["lr"], seed_of(t)): t for t in trials}
    assert count_training == [1, 1, 1, 1, 4]  # one by one, then all four grid points at once
    for key, alone in results[1].items():
        together = results[8][key]
        assert together.state == alone.state == TrialState.COMPLETE
        for epoch, value in alone.intermediate_values.items():
            assert together.intermediate_values[epoch] == pytest.approx(value, abs=1e-6)
        assert together.user_attrs["test_acc"] == pytest.approx(alone.user_attrs["test_acc"], abs=1e-6)
    # configurations are grouped over their seeds: mean and a 95% t-interval over seeds
    assert [len(row.trials) for row in summary.rows] == [2, 2]
    values = [t.value for t in summary.rows[0].trials]
    assert summary.rows[0].verdict.accuracy == pytest.approx(sum(values) / 2)
    assert summary.rows[0].verdict.interval == pytest.approx(evidence.t_interval(values, bounds=(0.0, 1.0)))
    assert summary.rows[0].vs_best == "best" and summary.rows[1].vs_best in ("tied", "undecided", "worse")
    assert "| 1 |" in text.ranked_table(summary) and "95% t over seeds" in text.ranked_table(summary)
    rows = list(csv.DictReader(io.StringIO(text.summary_csv(summary))))
    assert [(r["rank"], r["seeds"], r["population"]) for r in rows] == [("1", "2", "4"), ("2", "2", "4")]


def test_tpe_repeats_each_sampled_configuration_over_the_seeds(tmp_path, stores, tiny_splits, count_training):
    path = definition(tmp_path, """
        description: seeds for a sampled search
        base: {hidden_size: 8, epochs: 1, batch_size: 64}
        sampler: {type: random, seed: 3}
        space:
          lr: {low: 0.01, high: 0.5, log: true}
          weight_decay: [0.0, 0.001]
        seeds: 2
        budget: {n_trials: 4}
    """)
    [summary] = runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    client, [parent], _ = runs_of(stores, "tiny")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/optuna_parallel_coordinate.png", "sweep/optuna_param_importances.png"} <= artifacts
    trials = study_of(stores, "tiny-manual").trials
    assert len(trials) == 4
    by_config = {}
    for trial in trials:
        by_config.setdefault(trial.params["lr"], []).append(trial.user_attrs["seed"])
    assert sorted(sorted(seeds) for seeds in by_config.values()) == [[0, 1], [0, 1]]
    assert {t.params["weight_decay"] for t in trials} == {0.0, 0.001}  # seed 3 draws both: plots below
    assert count_training == [4]  # same shape: both configurations and their repeats in one population
    assert [len(row.trials) for row in summary.rows] == [2, 2]


def test_a_malformed_definition_fails_before_anything_is_created(tmp_path, stores, tiny_splits,
                                                                 count_training):
    path = definition(tmp_path, "description: x\nspace: {hidden_size: [8, 16]}\nbudget: {trials: 3}\n")
    with pytest.raises(DefinitionError, match="tiny.yaml: budget"):
        runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    assert count_training == []
    assert not (tmp_path / "optuna.db").exists()
