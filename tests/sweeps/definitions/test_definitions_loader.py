"""sweeps/definitions/loader.py: shipped files cover what they promise; a file is found, read as YAML and
every field, value and grid point tried as a RunConfig, so a malformed one fails naming file and field.
The schema alone (unknown keys, types) is test_definition_schema's; the study plan is test_plan's."""

import textwrap
from pathlib import Path

import pytest
import yaml

from fmnist_core.config import ACTIVATIONS, CLIP_MODES, INITS, ConfigError, RunConfig
from sweeps.definitions.loader import (
    DefinitionError,
    Param,
    check_space,
    list_definitions,
    load_definition,
    parse_definition,
)
from sweeps.definitions.schema import read_file


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


# What the schema cannot know: RunConfig's fields and values, the sampler a range needs, the grid points,
# and the YAML itself. The schema's own refusals are in test_definition_schema.
@pytest.mark.parametrize("body, fragments", [
    (D + "space: {hidden_size: [8, big]}\n", ["space.hidden_size", "hidden_size must be of type int"]),
    (D + "space: {hidden_sise: [8, 16]}\n", ["space.hidden_sise", "unknown config field"]),
    (D + "base: {hiden_size: 8}\nspace: {lr: [0.1]}\n", ["base", "hiden_size"]),
    (D + "base: {lr: -1}\nspace: {seed: [0]}\n", ["base", "lr must be a positive"]),
    (D + "space: {lr: {low: 0.1, high: 1}}\n", ["space.lr", "needs a list"]),
    (D + "sampler: tpe\nspace: {lr: {low: 0.1, high: 1}}\n", ["budget", "n_trials or timeout"]),
    (D + "space: {val_size: [100, 200]}\n", ["space.val_size", "cannot vary"]),
    (D + "space: {optimizer: [sgd, adam]}\n", ["space.optimizer='adam'", "only for impl 'torch'"]),
    (D + "base: {impl: torch}\nspace: {impl: [torch, manual], optimizer: [sgd, adam]}\n",
     ["grid point impl=manual, optimizer=adam", "only for impl 'torch'"]),
    (D + "space: {clip: {bundles: {a: {clip_mod: norm}}}}\n", ["space.clip.bundles.a", "clip_mod"]),
    (D + "space: {clip_mode: [none], c: {bundles: {a: {clip_mode: norm}}}}\n", ["space.c", "also sets"]),
    (D + "space: {lr: [0.1]\n", ["not valid YAML"]),
    (TPE + "space: {hidden_size: {low: 8, high: 64, step: 2.5}}\n",
     ["space.hidden_size.step", "hidden_size must be of type int"]),
    (D + "space: {c: {bundles: {a: {val_size: 100}}}}\n", ["space.c.bundles.a.val_size", "cannot vary"]),
    (D + "space: {lr: [0.1, 0.10]}\n", ["space.lr", "repeats a value"]),
    (TPE + "space: {init: {low: 1, high: 2}}\n", ["space.init", "not numeric"]),
    (D + "seeds: 2\nspace: {seed: [0, 1]}\n", ["seeds", "space already varies seed"]),
    (D + "space: {hidden_size: [8, 16], lr: [0.1]}\nplot: {x: width}\n", ["plot.x", "'width' is not a name"]),
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
    body = D + "budget: {trials: 2, n_trials: 0}\nspace: {lr: [], seed: 1}\n"
    path = write(tmp_path, body)
    with pytest.raises(DefinitionError) as caught:
        load_definition(path)
    message = str(caught.value)
    assert "\n" not in message
    for field in ("budget.trials", "budget.n_trials", "space.lr", "space.seed"):
        assert field in message
    with pytest.raises(DefinitionError) as schema_only:  # the schema's message, word for word
        read_file(yaml.safe_load(body), path)
    assert str(schema_only.value) == message
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


def test_a_missing_file_or_a_yaml_that_is_not_a_mapping_fails_in_a_sentence(tmp_path):
    with pytest.raises(DefinitionError, match="no such sweep file"):
        load_definition(tmp_path / "absent.yaml")
    with pytest.raises(DefinitionError, match="`python cli.py sweeps` lists them"):
        load_definition("no_such_sweep")
    with pytest.raises(DefinitionError) as caught:
        load_definition(write(tmp_path, "- a list\n- not a definition\n", name="listed"))
    assert "listed.yaml" in str(caught.value) and "top level" in str(caught.value)


def test_list_definitions_finds_the_yaml_files_beside_the_package():
    found = list_definitions()
    assert list(found) == sorted(found) and all(path.suffix == ".yaml" for path in found.values())
    assert found["hidden_size"].parent.name == "sweeps" and found["hidden_size"].is_file()
    assert load_definition(found["hidden_size"]).path == found["hidden_size"]  # by name or by path alike


def test_values_take_the_type_of_their_config_field(tmp_path):
    space = "space: {lr: [1, 2], hidden_size: [8], augment_flip: [true]}\n"
    definition = load_definition(write(tmp_path, D + space))
    lr, width, flip = definition.space
    assert lr.choices == (1.0, 2.0) and all(isinstance(value, float) for value in lr.choices)
    assert width.choices == (8,) and flip.choices == (True,)
    ranged = load_definition(write(tmp_path, TPE + "space: {hidden_size: {low: 8, high: 64}}\n", "ranged"))
    [width] = ranged.space
    assert (width.low, width.high, width.integer) == (8, 64, True) and isinstance(width.low, int)


def test_a_definition_keeps_what_the_file_says(tmp_path):
    definition = load_definition(write(tmp_path, """
        description: '  a question  '
        base: {epochs: 2}
        sampler: {type: tpe, seed: 3, n_startup_trials: 4}
        pruner: {type: median, n_warmup_steps: 2}
        objective: {metric: val_loss}
        seeds: 2
        budget: {n_trials: 6, timeout: 60}
        plot: {x: lr, log_x: true}
        space:
          lr: {low: 0.01, high: 0.1, log: true}
          hidden_size: [8, 16]
    """))
    assert definition.name == "tiny" and definition.description == "a question"
    assert definition.base == {"epochs": 2} and definition.seeds == 2
    assert (definition.sampler, definition.sampler_options) == ("tpe", {"seed": 3, "n_startup_trials": 4})
    assert (definition.pruner, definition.pruner_options) == ("median", {"n_warmup_steps": 2})
    assert (definition.metric, definition.direction) == ("val_loss", "minimize")  # the metric's direction
    assert (definition.n_trials, definition.timeout) == (6, 60)
    assert (definition.plot_x, definition.plot_log_x) == ("lr", True)
    assert definition.fields == {"lr", "hidden_size"}


@pytest.mark.parametrize("space, plot, expected", [
    ("{hidden_size: [8, 16]}", "", "hidden_size"),  # one name: the plot axis
    ("{hidden_size: [8, 16], seed: [0, 1]}", "", "hidden_size"),  # the seed is never the axis
    ("{hidden_size: [8, 16], lr: [0.1, 0.3]}", "", None),  # two: none chosen for the user
    ("{hidden_size: [8, 16], lr: [0.1, 0.3]}", "plot: {x: lr}\n", "lr"),
    ("{hidden_size: [8, 16]}", "plot: {x: null}\n", None),  # asked for none
])
def test_the_plot_axis_defaults_to_the_one_swept_name(tmp_path, space, plot, expected):
    assert load_definition(write(tmp_path, D + f"space: {space}\n" + plot)).plot_x == expected


def test_a_bundle_sets_its_fields_and_a_plain_axis_its_own():
    bundles = {"none": {"clip_mode": "none"}, "norm-5": {"clip_mode": "norm", "clip_value": 5.0}}
    bundle = Param("clipping", choices=("none", "norm-5"), bundles=bundles)
    assert bundle.overrides("norm-5") == {"clip_mode": "norm", "clip_value": 5.0}
    assert bundle.fields() == ["clip_mode", "clip_value"]
    bundle.overrides("none")["clip_value"] = 1.0  # a copy: the definition is not changed through it
    assert bundle.bundles["none"] == {"clip_mode": "none"}
    plain = Param("lr", choices=(0.1, 0.3))
    assert plain.overrides(0.3) == {"lr": 0.3} and plain.fields() == ["lr"]
    clipping = load_definition("clipping")
    assert clipping.fields == {"clip_mode", "clip_value"} and list(clipping.grid()) == ["clipping"]


def test_check_space_tries_every_grid_point_on_the_base_it_is_given(tmp_path):
    body = D + "base: {impl: torch}\nspace: {optimizer: [sgd, adam]}\n"
    definition = load_definition(write(tmp_path, body))
    check_space(definition, RunConfig(impl="torch"))  # valid: adam exists for torch
    with pytest.raises(DefinitionError, match=r"space.optimizer='adam'.*only for impl 'torch'"):
        check_space(definition, RunConfig(impl="manual"))  # what `--set impl=manual` would make of it


def test_parse_definition_names_the_path_it_is_given():
    with pytest.raises(DefinitionError, match=r"^elsewhere.yaml: space.hidden_sise"):
        parse_definition({"description": "x", "space": {"hidden_sise": [8]}}, name="x",
                         path=Path("elsewhere.yaml"))
