"""sweeps/definitions/schema.py: the YAML file's schema. Unknown keys and wrong types are refused in one
line naming the file and each dotted field; the shorthands (`sampler: tpe`, a list for an axis) and the
defaults are what a definition that leaves them out gets. What depends on RunConfig (field names, values,
grid points) is loader.py's and tested in test_definitions_loader."""

import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from fmnist_core.config import ConfigError
from sweeps.definitions.schema import METRICS, DefinitionError, DefinitionFile, make_pruner, read_file

pytestmark = pytest.mark.unit

PATH = Path("sweeps/tiny.yaml")
D = "description: x\n"
TPE = D + "sampler: tpe\nbudget: {n_trials: 2}\n"


def read(body: str) -> DefinitionFile:
    return read_file(yaml.safe_load(textwrap.dedent(body)), PATH)


@pytest.mark.parametrize("body, fragments", [
    (D + "space: {hidden_size: [8]}\nsampler: grid\nepochs: 3\n", ["epochs", "unknown key"]),
    (D + "space: {lr: []}\n", ["space.lr", "empty"]),
    (D + "sampler: tpe\nbudget: {n_trials: 2}\nspace: {lr: {low: 0, high: 1, log: true}}\n",
     ["space.lr", "low > 0"]),
    (D + "sampler: annealing\nspace: {lr: [0.1]}\n", ["sampler", "annealing"]),
    (D + "pruner: {type: median, patience: 3}\nspace: {lr: [0.1]}\n", ["pruner", "patience"]),
    (D + "seeds: 0\nspace: {lr: [0.1]}\n", ["seeds", "positive integer"]),
    ("space: {lr: [0.1]}\n", ["description", "required"]),
    # unknown keys and wrong types, at any depth, name the dotted field
    (D + "budget: {trials: 2}\nspace: {lr: [0.1]}\n", ["budget.trials", "unknown key", "n_trials, timeout"]),
    (TPE + "space: {lr: {low: 0.1, high: 1, lg: true}}\n", ["space.lr.lg", "unknown key"]),
    (D + "seeds: '2'\nspace: {lr: [0.1]}\n", ["seeds", "positive integer", "'2'"]),
    (D + "budget: {n_trials: 2.5}\nspace: {lr: [0.1]}\n", ["budget.n_trials", "positive integer"]),
    (D + "plot: {log_x: 1}\nspace: {lr: [0.1]}\n", ["plot.log_x", "true or false"]),
    (TPE + "space: {lr: {low: x, high: 1}}\n", ["space.lr.low", "a number"]),
    (TPE + "space: {lr: {low: 1, high: 0.1}}\n", ["space.lr", "below high"]),
    (D + "sampler: {type: random, n_startup_trials: 3}\nbudget: {n_trials: 2}\nspace: {lr: [0.1]}\n",
     ["sampler", "n_startup_trials", "not an option of random"]),
    (D + "pruner: {type: none, patience: 3}\nspace: {lr: [0.1]}\n", ["pruner", "patience"]),
])
def test_malformed_definitions_fail_naming_the_file_and_the_field(body, fragments):
    with pytest.raises(DefinitionError) as caught:
        read(body)
    message = str(caught.value)
    assert message.startswith(f"{PATH}: ")
    for fragment in fragments:
        assert fragment in message
    assert isinstance(caught.value, ConfigError)  # the CLI turns it into one line and exit code 2


def test_a_malformed_definition_is_one_line_listing_every_schema_problem():
    with pytest.raises(DefinitionError) as caught:
        read(D + "budget: {trials: 2, n_trials: 0}\nspace: {lr: [], seed: 1}\n")
    message = str(caught.value)
    assert "\n" not in message
    for field in ("budget.trials", "budget.n_trials", "space.lr", "space.seed"):
        assert field in message


@pytest.mark.parametrize("body, fragments", [
    (D, ["space: required: a mapping of at least one parameter to vary"]),
    (D + "space: {}\n", ["space", "a mapping of at least one parameter"]),
    (D + "space: [lr]\n", ["space: must be a mapping of at least one parameter to vary, got ['lr']"]),
    (D + "space: {lr: 0.1}\n", ["space.lr", "expected a list of values or a {low, high} range, got 0.1"]),
    (D + "space: {lr: {values: [0.1]}}\n", ["space.lr", "expected a list of values"]),
    (TPE + "space: {lr: {low: 0.1}}\n", ["space.lr", "a range is {low, high}"]),
    (TPE + "space: {lr: {low: 0.1, high: 1, log: true, step: 0.1}}\n",
     ["space.lr", "step cannot go with log"]),
    (TPE + "space: {lr: {low: 0.1, high: 1, step: -1}}\n", ["space.lr.step", "a positive number"]),
    (D + "space: {c: {bundles: {}}}\n", ["space.c", "empty"]),
    (TPE + "space: {c: {bundles: {a: {clip_mode: norm}}, low: 1}}\n",
     ["space.c", "a bundle axis holds only"]),
    ("description: '  '\nspace: {lr: [0.1]}\n", ["description", "required: one line"]),
    (D + "objective: {metric: test_acc}\nspace: {lr: [0.1]}\n", ["objective.metric"]),
    (D + "objective: {direction: up}\nspace: {lr: [0.1]}\n", ["objective.direction"]),
    (D + "budget: {timeout: 0}\nspace: {lr: [0.1]}\n", ["budget.timeout", "a positive number of seconds"]),
    (D + "sampler: {type: tpe, seed: -1}\nspace: {lr: [0.1]}\n", ["sampler.seed", "a non-negative integer"]),
    (D + "pruner: {type: percentile}\nspace: {lr: [0.1]}\n", ["pruner", "percentile rejects", "percentile"]),
])
def test_what_a_type_cannot_say_is_refused_by_a_validator_in_words(body, fragments):
    with pytest.raises(DefinitionError) as caught:
        read(body)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_definition_that_leaves_everything_out_gets_the_defaults():
    schema = read(D + "space: {lr: [0.1, 0.3]}\n")
    assert schema.description == "x" and schema.base == {} and schema.seeds == 1
    assert (schema.sampler.type, schema.pruner.type) == ("grid", "none")
    assert (schema.objective.metric, schema.objective.direction) == ("val_acc", None)
    assert METRICS[schema.objective.metric] == "maximize"  # what None means for val_acc
    assert (schema.budget.n_trials, schema.budget.timeout) == (None, None)
    assert (schema.plot.x, schema.plot.log_x) == (None, False) and "x" not in schema.plot.model_fields_set
    assert schema.space["lr"].values == [0.1, 0.3]  # a list is an axis of values


def test_shorthands_and_nulls_read_as_their_long_forms():
    short = read(D + "sampler: tpe\npruner: median\nbase:\nbudget: {n_trials: 3}\nplot:\n"
                 "space: {lr: [0.1]}\n")
    assert short.sampler.type == "tpe" and short.sampler.seed is None
    assert short.pruner.type == "median" and short.pruner.model_extra == {}
    assert short.base == {} and short.plot.log_x is False  # `base:` with nothing after it is YAML null
    long = read(D + "sampler: {type: tpe, seed: 3, n_startup_trials: 5}\n"
                "pruner: {type: median, n_warmup_steps: 2}\nspace: {lr: [0.1]}\n")
    assert (long.sampler.seed, long.sampler.n_startup_trials) == (3, 5)
    assert long.pruner.model_extra == {"n_warmup_steps": 2}  # the options, as optuna's pruner takes them


def test_axes_are_values_ranges_or_bundles_and_bundle_labels_are_text():
    schema = read(TPE + textwrap.dedent("""
        space:
          hidden_size: [8, 16]
          lr: {low: 0.01, high: 0.1, log: true}
          dropout: {low: 0.0, high: 0.5, step: 0.1}
          clip: {bundles: {1: {clip_mode: value, clip_value: 1.0}, none: {clip_mode: none}}}
    """))
    space = schema.space
    assert space["hidden_size"].values == [8, 16] and space["hidden_size"].bundles is None
    assert (space["lr"].low, space["lr"].high, space["lr"].log, space["lr"].step) == (0.01, 0.1, True, None)
    assert (space["dropout"].step, space["dropout"].log) == (0.1, False)
    assert list(space["clip"].bundles) == ["1", "none"]  # YAML reads the label `1:` as a number
    assert space["clip"].bundles["1"] == {"clip_mode": "value", "clip_value": 1.0}


def test_a_bundle_label_yaml_reads_as_a_boolean_is_refused_not_renamed():
    with pytest.raises(DefinitionError, match=r"bundle label reads as a boolean .* quote it"):
        read(TPE + textwrap.dedent("""
            space:
              clip: {bundles: {off: {clip_mode: none}, value-1: {clip_mode: value, clip_value: 1.0}}}
        """))
    quoted = read(TPE + "space:\n  clip: {bundles: {'off': {clip_mode: none}}}\n")
    assert list(quoted.space["clip"].bundles) == ["off"]


def test_make_pruner_builds_optunas_pruner_and_refuses_what_optuna_refuses():
    assert isinstance(make_pruner("none", {}), optuna.pruners.NopPruner)
    median = make_pruner("median", {"n_startup_trials": 2, "n_warmup_steps": 3})
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("hyperband", {}), optuna.pruners.HyperbandPruner)
    with pytest.raises(TypeError, match="patience"):
        make_pruner("median", {"patience": 3})
    with pytest.raises(TypeError):
        make_pruner("threshold", {})  # lower or upper is required
    with pytest.raises(ValueError):
        make_pruner("percentile", {"percentile": 150.0})
    definition = read(D + "pruner: {type: threshold, lower: 0.5}\nspace: {lr: [0.1]}\n")
    assert isinstance(make_pruner(definition.pruner.type, definition.pruner.model_extra),
                      optuna.pruners.ThresholdPruner)


def test_definition_error_is_a_config_error():
    assert issubclass(DefinitionError, ConfigError)  # the CLI's one-line, exit-2 handling covers it
