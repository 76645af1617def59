"""Sweep definitions: shipped files cover what they promise; malformed ones fail naming file and field."""

import textwrap

import pytest

from fmnist_core.config import ACTIVATIONS, CLIP_MODES, INITS, ConfigError
from sweeps.definitions.loader import DefinitionError, list_definitions, load_definition
from sweeps.definitions.plan import plan_studies


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
TPE = D + "sampler: tpe\nbudget: {n_trials: 2}\n"


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
    # unknown keys and wrong types, at any depth, name the dotted field
    (D + "budget: {trials: 2}\nspace: {lr: [0.1]}\n", ["budget.trials", "unknown key", "n_trials, timeout"]),
    (TPE + "space: {lr: {low: 0.1, high: 1, lg: true}}\n", ["space.lr.lg", "unknown key"]),
    (D + "seeds: '2'\nspace: {lr: [0.1]}\n", ["seeds", "positive integer", "'2'"]),
    (D + "budget: {n_trials: 2.5}\nspace: {lr: [0.1]}\n", ["budget.n_trials", "positive integer"]),
    (D + "plot: {log_x: 1}\nspace: {lr: [0.1]}\n", ["plot.log_x", "true or false"]),
    (TPE + "space: {lr: {low: x, high: 1}}\n", ["space.lr.low", "a number"]),
    (TPE + "space: {lr: {low: 1, high: 0.1}}\n", ["space.lr", "below high"]),
    (TPE + "space: {hidden_size: {low: 8, high: 64, step: 2.5}}\n",
     ["space.hidden_size.step", "hidden_size must be of type int"]),
    (D + "sampler: {type: random, n_startup_trials: 3}\nbudget: {n_trials: 2}\nspace: {lr: [0.1]}\n",
     ["sampler", "n_startup_trials", "not an option of random"]),
    (D + "pruner: {type: none, patience: 3}\nspace: {lr: [0.1]}\n", ["pruner", "patience"]),
    (D + "space: {c: {bundles: {a: {val_size: 100}}}}\n", ["space.c.bundles.a.val_size", "cannot vary"]),
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


def test_a_malformed_definition_is_one_line_listing_every_schema_problem(tmp_path):
    path = write(tmp_path, D + "budget: {trials: 2, n_trials: 0}\nspace: {lr: [], seed: 1}\n")
    with pytest.raises(DefinitionError) as caught:
        load_definition(path)
    message = str(caught.value)
    assert "\n" not in message
    for field in ("budget.trials", "budget.n_trials", "space.lr", "space.seed"):
        assert field in message
    with pytest.raises(DefinitionError) as caught:
        load_definition(write(tmp_path, D + "space: {lr: [0.1]\n", name="broken"))
    assert "\n" not in str(caught.value) and "line 3" in str(caught.value)


def test_param_reprs_stay_as_studies_stored_them(tmp_path):
    """StudyPlan.settings() stores repr(param) in each Optuna study and compares it on resume."""
    search = {param.name: param for param in load_definition("search").space}
    assert repr(search["lr"]) == ("Param(name='lr', choices=(), low=0.03, high=0.08, log=True, step=None, "
                                  "integer=False, bundles={})")
    assert repr(search["clipping"]) == (
        "Param(name='clipping', choices=('none', 'norm-5'), low=None, high=None, log=False, step=None, "
        "integer=False, bundles={'none': {'clip_mode': 'none'}, "
        "'norm-5': {'clip_mode': 'norm', 'clip_value': 5.0}})")
    [width] = load_definition("hidden_size").space
    assert repr(width) == ("Param(name='hidden_size', choices=(128, 256, 512, 1024, 2048), low=None, "
                           "high=None, log=False, step=None, integer=False, bundles={})")
    stepped = write(tmp_path, TPE + "space: {hidden_size: {low: 8, high: 64, step: 8}}\n")
    [width] = load_definition(stepped).space
    assert repr(width) == ("Param(name='hidden_size', choices=(), low=8, high=64, log=False, step=8, "
                           "integer=True, bundles={})")


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
