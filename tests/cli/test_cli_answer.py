"""One answer: after a decided sweep, every command a user takes the answer from gives the sweep's
recommendation, not the single run with the highest accuracy: `best --sweep` (and `--ensemble`,
`--register`), `serve --sweep`'s model, `runs --sweep`, the parent run, the study and its
optuna-dashboard note. Real data with tiny settings (1,000 validation images, one epoch), real MLflow
and Optuna stores, the CLI through click."""

import json
import textwrap

import optuna
import optuna_dashboard
import pytest
import torch
from click.testing import CliRunner

from cli import cli
from fmnist_tracking import store, verdicts
from fmnist_tracking.registry import CHAMPION_ALIAS, ENSEMBLE_TAG, REGISTERED_MODEL
from fmnist_tracking.servers import served_model

pytestmark = pytest.mark.e2e


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def decided(tmp_path, mlflow_store):
    """A decided sweep of three widths (a wide margin: it ties quickly), run through the CLI."""
    definition = tmp_path / "answer.yaml"
    definition.write_text(textwrap.dedent("""
        description: one answer on the real data
        base: {epochs: 1, batch_size: 250, val_size: 1000}
        space:
          hidden_size: [8, 16, 32]
        decide: {max_seeds: 3, margin: 0.05}
    """))
    stores = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", mlflow_store,
              "--experiment", "answer"]
    result = invoke("sweep", str(definition), *stores)
    assert result.exit_code == 0, result.output
    client, experiment_id = store.setup(mlflow_store, "answer")
    study = optuna.load_study(study_name="answer-manual", storage=stores[1])
    return {"client": client, "experiment_id": experiment_id, "stores": stores[2:], "study": study,
            "output": result.output, "tmp_path": tmp_path}


def test_every_consumer_gives_the_sweeps_recommendation(decided):
    client, stores, tmp_path = decided["client"], decided["stores"], decided["tmp_path"]
    [parent] = store.search_runs(client, [decided["experiment_id"]], sweep="answer",
                                 extra_filter="tags.sweep_role = 'parent'")
    chosen = verdicts.read_recommended(client, parent)
    assert chosen is not None and parent.data.tags["recommended"] == chosen["label"]
    assert parent.data.tags["decision"] == chosen["decision"]
    assert chosen["decision"] in ("decided", "undecided")
    assert f"Recommended: {chosen['label']}" in decided["output"]

    out = tmp_path / "best.pt"
    result = invoke("best", "--sweep", "answer", "--out", str(out), *stores)
    assert result.exit_code == 0, result.output
    assert f"Best run {chosen['run_id']}" in result.output
    assert f"recommends {chosen['label']}" in result.output
    checkpoint = torch.load(out, weights_only=True)
    assert f"hidden_size={checkpoint['config']['hidden_size']}" == chosen["label"]
    assert checkpoint["config"]["seed"] == chosen["seed"]

    # a trial saves no MLflow model (torch.export of every trial served nobody): serving logs it, once
    assert not client.get_run(chosen["run_id"]).outputs.model_outputs
    uri, what, _ = served_model(client, decided["experiment_id"], sweep="answer")
    assert chosen["run_id"] in what and uri.startswith("models:/")
    [logged] = client.get_run(chosen["run_id"]).outputs.model_outputs
    assert uri == f"models:/{logged.model_id}"

    result = invoke("runs", "--sweep", "answer", *stores)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"configurations of sweep answer (parent run {parent.info.run_id[:8]}")
    marked = [line for line in lines if line.endswith("<- recommended")]
    assert len(marked) == 1 and chosen["label"] in marked[0]
    assert lines.index("single runs (each seed apart):") > lines.index(marked[0])

    study = decided["study"]
    assert all("seed" not in t.distributions for t in study.trials)  # importance speaks of hidden_size
    assert chosen["label"] in optuna_dashboard.get_note(study)
    assert study.user_attrs["recommended"]["label"] == chosen["label"]


def test_the_ensemble_folds_the_recommended_seeds_and_is_servable_and_registrable(decided):
    client, stores, tmp_path = decided["client"], decided["stores"], decided["tmp_path"]
    [parent] = store.search_runs(client, [decided["experiment_id"]], sweep="answer",
                                 extra_filter="tags.sweep_role = 'parent'")
    chosen = verdicts.read_recommended(client, parent)
    entry = next(c for c in verdicts.read_verdicts(client, parent) if c["label"] == chosen["label"])
    k = len(entry["run_ids"])
    assert k >= 2  # a decided sweep trains at least two seeds of every configuration it compares
    out = tmp_path / "ensemble.pt"
    result = invoke("best", "--sweep", "answer", "--ensemble", "--register", "--out", str(out), *stores)
    assert result.exit_code == 0, result.output
    folded = torch.load(out, weights_only=True)  # plain torch reads it
    width = int(chosen["label"].split("=")[1])
    assert folded["config"]["hidden_size"] == k * width
    assert folded["state_dict"]["fc1.weight"].shape[0] == k * width
    assert f"the ensemble of its {k} seeds" in result.output
    [run] = store.search_runs(client, [decided["experiment_id"]], extra_filter=f"tags.{ENSEMBLE_TAG} != ''")
    assert run.data.tags[ENSEMBLE_TAG] == " ".join(entry["run_ids"])
    assert run.data.metrics["best_val_acc"] == pytest.approx(folded["metrics"]["best_val_acc"])
    version = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    assert version.run_id == run.info.run_id
    uri, what, _ = served_model(client, decided["experiment_id"], run_id=run.info.run_id)
    assert run.info.run_id in what
    print(json.dumps({"single_seed_test": client.get_run(chosen["run_id"]).data.metrics["test_acc"],
                      "ensemble_test": folded["metrics"]["test_acc"], "k": k}))
