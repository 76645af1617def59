"""Sweep definitions: shipped files cover what they promise; malformed ones fail naming file and field."""

import textwrap

import pytest

from fmnist_core.config import ACTIVATIONS, CLIP_MODES, INITS, ConfigError
from sweeps.definitions import DefinitionError, list_definitions, load_definition
from sweeps.study import plan_studies


def write(tmp_path, text: str, name: str = "tiny"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_every_shipped_definition_loads_and_the_required_ones_exist():
    names = set(list_definitions())
    required = {"hidden_size", "learning_rate", "init", "clipping", "activation", "impl_parity", "search"}
    assert required <= names
    for name in names:
        assert load_definition(name).description


def test_shipped_grids_cover_their_question():
    assert load_definition("hidden_size").grid() == {"hidden_size": [128, 256, 512, 1024, 2048]}
    assert set(load_definition("init").grid()["init"]) == set(INITS)
    assert set(load_definition("activation").grid()["activation"]) == set(ACTIVATIONS)
    lrs = load_definition("learning_rate").grid()["lr"]
    assert len(lrs) >= 5 and lrs == sorted(lrs) and lrs[-1] / lrs[0] >= 100  # a log grid
    parity = load_definition("impl_parity")
    assert parity.grid() == {"impl": ["manual", "torch"]} and parity.seeds >= 3
    [clipping] = load_definition("clipping").space
    thresholds = {mode: {b.get("clip_value") for b in clipping.bundles.values() if b["clip_mode"] == mode}
                  for mode in CLIP_MODES}
    assert thresholds["none"] and len(thresholds["value"]) >= 2 and len(thresholds["norm"]) >= 2


def test_search_is_a_pruned_tpe_study_over_the_promised_parameters():
    search = load_definition("search")
    assert search.sampler == "tpe" and search.pruner != "none" and search.n_trials
    assert {"hidden_size", "lr", "init", "clip_mode", "clip_value", "weight_decay", "dropout",
            "schedule"} <= search.fields
    assert search.metric == "val_acc"  # selects on validation, never on test


D = "description: x\n"


@pytest.mark.parametrize("body, fragments", [
    (D + "space: {hidden_size: [8]}\nsampler: grid\nepochs: 3\n", ["epochs", "unknown key"]),
    (D + "space: {hidden_size: [8, big]}\n", ["space.hidden_size", "hidden_size must be of type int"]),
    (D + "space: {lr: []}\n", ["space.lr", "empty"]),
    (D + "space: {hidden_sise: [8, 16]}\n", ["space.hidden_sise", "unknown config field"]),
    (D + "base: {hiden_size: 8}\nspace: {lr: [0.1]}\n", ["base", "hiden_size"]),
    (D + "base: {lr: -1}\nspace: {seed: [0]}\n", ["base", "lr must be a positive"]),
    (D + "space: {lr: {low: 0.1, high: 1}}\n", ["space.lr", "needs a list"]),
    (D + "sampler: tpe\nspace: {lr: {low: 0.1, high: 1}}\n", ["budget", "n_trials or timeout"]),
    (D + "sampler: tpe\nbudget: {n_trials: 2}\nspace: {lr: {low: 0, high: 1, log: true}}\n",
     ["space.lr", "low > 0"]),
    (D + "sampler: annealing\nspace: {lr: [0.1]}\n", ["sampler", "annealing"]),
    (D + "pruner: {type: median, patience: 3}\nspace: {lr: [0.1]}\n", ["pruner", "patience"]),
    (D + "space: {val_size: [100, 200]}\n", ["space.val_size", "cannot vary"]),
    (D + "seeds: 0\nspace: {lr: [0.1]}\n", ["seeds", "positive integer"]),
    (D + "space: {optimizer: [sgd, adam]}\n", ["space.optimizer='adam'", "only for impl 'torch'"]),
    (D + "base: {impl: torch}\nspace: {impl: [torch, manual], optimizer: [sgd, adam]}\n",
     ["grid point impl=manual, optimizer=adam", "only for impl 'torch'"]),
    (D + "space: {clip: {bundles: {a: {clip_mod: norm}}}}\n", ["space.clip.bundles.a", "clip_mod"]),
    (D + "space: {clip_mode: [none], c: {bundles: {a: {clip_mode: norm}}}}\n", ["space.c", "also sets"]),
    ("space: {lr: [0.1]}\n", ["description", "required"]),
    (D + "space: {lr: [0.1]\n", ["not valid YAML"]),
])
def test_malformed_definitions_fail_naming_the_file_and_the_field(tmp_path, body, fragments):
    path = write(tmp_path, body)
    with pytest.raises(DefinitionError) as caught:
        load_definition(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(caught.value, ConfigError)  # the CLI turns it into one line and exit code 2


def test_unknown_sweep_name_lists_the_known_ones():
    with pytest.raises(DefinitionError, match="hidden_size"):
        load_definition("hiden_size")


def test_plans_name_studies_by_variant_and_refuse_overrides_of_swept_fields(tmp_path):
    definition = load_definition("hidden_size")
    assert [p.study_name for p in plan_studies(definition, impl="both")] == ["hidden_size-manual",
                                                                            "hidden_size-torch"]
    [plan] = plan_studies(definition, overrides={"epochs": "3", "lr": "0.1"}, seeds=2)
    assert plan.base.epochs == 3 and plan.base.lr == 0.1 and plan.total_trials() == 10
    assert plan.grid()["seed"] == [0, 1]
    with pytest.raises(DefinitionError, match="--set hidden_size"):
        plan_studies(definition, overrides={"hidden_size": "64"})
    with pytest.raises(DefinitionError, match="--impl"):
        plan_studies(load_definition("impl_parity"), impl="torch")
    [parity] = plan_studies(load_definition("impl_parity"))
    assert parity.study_name == "impl_parity"
    # an override that makes the base invalid fails before anything runs, naming --set
    with pytest.raises(ConfigError, match="--set: optimizer 'adam' exists only"):
        plan_studies(definition, overrides={"optimizer": "adam"})
    with pytest.raises(ConfigError, match="unknown config field"):
        plan_studies(definition, overrides={"epoch": "3"})
