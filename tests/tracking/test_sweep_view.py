"""The sweep's saved view (fmnist_tracking/servers.py save_sweep_view) as MLflow's UI will read it: the
state saved on a real store, and its keys against the lists the installed MLflow UI bundle reads; and
the names of the trial runs it groups, each with its seed.

What the UI makes of the view, seen in a browser, is tests/tracking/test_browser.py.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

from fmnist_core.config import RunConfig
from fmnist_tracking import run_log, store
from fmnist_tracking.registry import Ranking
from fmnist_tracking.servers import SAVED_VIEW_TAG, save_sweep_view

BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
# Every metric a trial logs: per epoch, then the one-value ones at the best epoch (as run_log does).
PER_EPOCH, ONE_VALUE = ("train_loss", "val_acc", "val_loss"), ("best_val_acc", "best_value", "best_epoch",
                                                              "test_acc")


def _sweep(client, experiment_id: str, name: str, configs: list[dict], seeds=(0, 1),
           val_acc=lambda trial, epoch: 0.5 + 0.1 * epoch) -> None:
    """A sweep's parent and one trial run per config and seed, logged as the runner logs them (every
    per-epoch metric but val_acc at 0.5 + 0.1 * epoch; val_acc(trial, epoch)), with the tags the report
    sets on each: its verdict and whether it is the recommendation."""
    parent = run_log.RunLogger.start(client, experiment_id, RunConfig(), run_name=name,
                                     tags={"sweep": name, "sweep_role": "parent"})
    for trial, (overrides, seed) in enumerate((c, s) for c in configs for s in seeds):
        cfg = RunConfig(epochs=3, device="cpu", seed=seed, **overrides)
        tags = {"sweep": name, "sweep_role": "trial", "trial": str(trial),
                "verdict": "best" if trial < len(seeds) else "worse", "recommended": "no"}
        with run_log.RunLogger.start(client, experiment_id, cfg, parent_run_id=parent.run_id,
                                     tags=tags) as child:
            for epoch in (1, 2, 3):
                child.log_epoch({"epoch": epoch, **{key: 0.5 + 0.1 * epoch for key in PER_EPOCH},
                                 "val_acc": val_acc(trial, epoch)})
            for key in ONE_VALUE:
                client.log_metric(child.run_id, key, 0.9, step=3)
    parent.end()


def _saved_state(client, experiment_id: str, view: str) -> dict:
    envelope = json.loads(client.get_experiment(experiment_id).tags[SAVED_VIEW_TAG + view])
    return json.loads(envelope["state"])


@functools.cache
def _bundle() -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted(BUNDLE.glob("*.js")))


def _card_fields(card_type: str) -> set[str]:
    """The fields MLflow's UI gives a chart card of `card_type` (its card class and their base class)."""
    base = re.search(r"class p\{constructor\(e,t,n\)\{(.*?)\}", _bundle())
    typed = re.findall(r"extends p\{constructor\(\.\.\.e\)\{super\(\.\.\.e\),this\.type=c\." + card_type
                       + r",(.*?)\}\}", _bundle())
    assert base and len(typed) == 1, f"MLflow's UI bundle {BUNDLE} has no single {card_type} card class"
    return set(re.findall(r"this\.(\w+)=", base.group(1) + typed[0]))


def _bundle_list(*first: str) -> set[str]:
    """The one string array in the MLflow UI's JS that starts with `first` (the keys it reads)."""
    prefix = re.escape(json.dumps(list(first), separators=(",", ":"))[:-1])
    found = set(re.findall(prefix + r'(?:,"[A-Za-z]+")*\]', _bundle()))
    assert len(found) == 1, f"MLflow's UI bundle {BUNDLE} holds {len(found)} lists starting with {first}"
    return set(json.loads(found.pop()))


@pytest.mark.unit
def test_every_trial_run_is_named_with_its_seed_also_while_the_sweep_has_one():
    from sweeps.execution.trials import run_name

    def held(params: dict, seed: int):  # the two things of a TrialLease a name is made of
        return SimpleNamespace(trial=SimpleNamespace(params={**params, "seed": seed}),
                               config=RunConfig(seed=seed, **params))

    plan = SimpleNamespace(study_name="hidden_size-manual", seeds=1)  # a first round: one seed so far
    assert run_name(plan, held({"hidden_size": 1024}, 0)) == "hidden_size=1024, seed=0"
    assert run_name(plan, held({"hidden_size": 64, "lr": 0.1}, 3)) == "hidden_size=64, lr=0.1, seed=3"
    assert run_name(plan, held({}, 2)) == "hidden_size-manual, seed=2"  # nothing sampled but the seed


@pytest.mark.integration
def test_the_sweep_view_groups_seeds_by_configuration_and_charts_only_the_answer(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    grid = [{"hidden_size": hidden, "lr": lr} for hidden in (16, 32) for lr in (0.1, 0.2)]
    _sweep(client, experiment_id, "grid", grid)
    view, _ = save_sweep_view(client, experiment_id, "grid")
    state = _saved_state(client, experiment_id, view)

    # Every key is one MLflow 3.17's UI reads from a saved view: search facets and shareable UI state.
    readable = (_bundle_list("searchFilter", "orderByKey") | _bundle_list("selectedColumns", "columnOrder")) \
        - _bundle_list("runsExpanded", "runsPinned")  # the per-run and personal UI state it leaves out
    assert set(state) <= readable, set(state) - readable
    # The table: a group per configuration (the seed is not a grouping key), ranked by the objective.
    assert state["groupBy"] == {"aggregateFunction": "average", "groupByKeys": [
        {"mode": "param", "groupByData": "hidden_size"}, {"mode": "param", "groupByData": "lr"}]}
    # Columns: the objective (val_acc: MLflow shows the last epoch's, what the verdicts judge), the best
    # epoch's (the checkpoint's) and test accuracy, the swept params, the report's verdict and
    # recommendation; each with a width, which MLflow applies only to the columns it orders.
    assert state["selectedColumns"] == ["metrics.`val_acc`", "metrics.`best_val_acc`", "metrics.`test_acc`",
                                        "params.`hidden_size`", "params.`lr`",
                                        "tags.`verdict`", "tags.`recommended`"]
    assert set(state["columnWidths"]) == set(state["selectedColumns"]) <= set(state["columnOrder"])
    assert state["columnOrder"][-len(state["selectedColumns"]):] == state["selectedColumns"]
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val_acc`", False)
    # The charts: the objective against each swept param and all of them, the objective per epoch; every
    # other metric has a card, deleted, so MLflow adds none of its own (a line of best_epoch against Step).
    shown = {(card["type"], json.dumps(card.get("xaxis") or card.get("selectedParams") or card["metricKey"]))
             for card in state["compareRunCharts"] if not card["deleted"]}
    assert shown == {("SCATTER", json.dumps({"key": "hidden_size", "type": "PARAM"})),
                     ("SCATTER", json.dumps({"key": "lr", "type": "PARAM"})),
                     ("PARALLEL", json.dumps(["hidden_size", "lr"])), ("LINE", json.dumps("val_acc"))}
    named = {card.get("metricKey") for card in state["compareRunCharts"]}
    assert set(PER_EPOCH + ONE_VALUE) <= named
    [section] = state["compareRunSections"]
    assert {card["metricSectionId"] for card in state["compareRunCharts"]} == {section["uuid"]}
    # Every field of every card is one MLflow's card class of that type has.
    for card in state["compareRunCharts"]:
        assert set(card) <= _card_fields(card["type"]), (card["type"], set(card) - _card_fields(card["type"]))


@pytest.mark.integration
def test_the_sweep_view_follows_the_sweeps_objective_and_groups_nothing_when_only_seeds_vary(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    _sweep(client, experiment_id, "losses", [{"hidden_size": 16}, {"hidden_size": 32}])
    _sweep(client, experiment_id, "seeds", [{"hidden_size": 16}], seeds=(0, 1, 2))

    view, _ = save_sweep_view(client, experiment_id, "losses", Ranking("val_loss", "minimize"))
    losses = _saved_state(client, experiment_id, view)
    assert (losses["orderByKey"], losses["orderByAsc"]) == ("metrics.`best_value`", True)
    live = [card for card in losses["compareRunCharts"] if not card["deleted"]]
    assert [(card["type"], card.get("metricKey")) for card in live] == [("SCATTER", None),
                                                                         ("LINE", "val_loss")]
    assert live[0]["yaxis"] == {"key": "best_value", "type": "METRIC"}

    seeds = _saved_state(client, experiment_id, save_sweep_view(client, experiment_id, "seeds")[0])
    assert seeds["groupBy"] is None  # one configuration: nothing to group by, the run names say the seed
    assert seeds["selectedColumns"] == ["metrics.`val_acc`", "metrics.`best_val_acc`", "metrics.`test_acc`",
                                        "tags.`verdict`", "tags.`recommended`"]
    assert [card["type"] for card in seeds["compareRunCharts"] if not card["deleted"]] == ["LINE"]


@pytest.mark.integration
def test_the_sweep_view_fits_the_accuracy_axis_and_drops_the_linear_scatter_of_a_log_param(mlflow_store):
    client, experiment_id = store.setup(mlflow_store)
    grid = [{"hidden_size": hidden, "lr": 0.1} for hidden in (128, 512, 2048)]
    grid += [{"hidden_size": 128, "lr": 0.2}]  # lr varies too: a second swept param, on a linear axis

    def val_acc(trial: int, epoch: int) -> float:  # epoch 1 far below; later epochs 0.88-0.90
        return 0.30 if epoch == 1 else 0.88 + 0.0025 * trial + 0.001 * epoch

    _sweep(client, experiment_id, "widths", grid, val_acc=val_acc)
    view, _ = save_sweep_view(client, experiment_id, "widths", log_axes={"hidden_size"})
    state = _saved_state(client, experiment_id, view)
    live = [card for card in state["compareRunCharts"] if not card["deleted"]]

    # MLflow's scatter has a linear axis only: none for hidden_size (the definition's plot.log_x), one for lr.
    assert [card["xaxis"]["key"] for card in live if card["type"] == "SCATTER"] == ["lr"]
    assert [card["selectedParams"] for card in live if card["type"] == "PARALLEL"] == [["hidden_size", "lr"]]
    # The per-epoch chart's axes hold every run's value after epoch 1, with a margin narrower than their
    # span, and leave out epoch 1 (0.30): not a 0-1 axis on which the curves are flat.
    [line] = [card for card in live if card["type"] == "LINE"]
    later = [val_acc(trial, epoch) for trial in range(2 * len(grid)) for epoch in (2, 3)]
    low, high = line["range"]["yMin"], line["range"]["yMax"]
    assert low < min(later) and max(later) < high
    assert (min(later) - low) < (max(later) - min(later)) and (high - max(later)) < (max(later) - min(later))
    assert low > 0.30
    assert 1 < line["range"]["xMin"] < 2 and 3 < line["range"]["xMax"] < 4  # epochs 2 and 3 in, 1 out
    assert line["scaleType"] == "linear" and line["displayPoints"] is True
    # Every configuration's trace readable: at most two cards a row, taller than MLflow's 360 px default.
    [section] = state["compareRunSections"]
    assert section["columns"] == 2 and section["cardHeight"] > 360
    assert section["name"] == "sweep widths: val_acc against lr; val_acc per epoch"
