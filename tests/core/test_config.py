"""RunConfig and Objective: validation, coercion of CLI/YAML values, unknown keys."""

import dataclasses

import pytest

from fmnist_core.config import ConfigError, Objective, RunConfig, field_names

pytestmark = pytest.mark.unit


def test_defaults_are_valid_and_round_trip_through_a_plain_dict():
    cfg = RunConfig()
    assert RunConfig.from_dict(cfg.as_dict()) == cfg
    assert set(cfg.as_dict()) == set(field_names())


@pytest.mark.parametrize("overrides, fragment", [
    ({"hidden_size": 0}, "hidden_size"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1.0}, "lr"),
    ({"init": "glorot"}, "unknown init 'glorot'"),
    ({"activation": "gelu"}, "unknown activation"),
    ({"device": "tpu"}, "unknown device"),
    ({"dropout": 1.0}, "dropout"),
    ({"momentum": 1.0}, "momentum"),
    ({"impl": "manual", "optimizer": "adam"}, "only for impl 'torch'"),
    ({"momentum": 0.0, "nesterov": True}, "nesterov needs momentum"),
    ({"patience": 2, "val_size": 0}, "validation set"),
])
def test_invalid_values_raise_a_config_error_naming_the_field(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig(**overrides)


def test_unknown_keys_are_errors_that_name_the_source():
    with pytest.raises(ConfigError, match=r"sweeps/x.yaml: unknown config field\(s\) hiden_size"):
        RunConfig.from_dict({"hiden_size": 3}, source="sweeps/x.yaml")


def test_strings_from_the_command_line_are_coerced_to_the_field_type():
    cfg = RunConfig().replace({"lr": "0.1", "hidden_size": "512", "nesterov": "false", "init": "zeros"})
    assert (cfg.lr, cfg.hidden_size, cfg.nesterov, cfg.init) == (0.1, 512, False, "zeros")
    assert RunConfig().replace({"hidden_size": 64.0}).hidden_size == 64


@pytest.mark.parametrize("overrides", [{"hidden_size": "1.5"}, {"hidden_size": True}, {"nesterov": "maybe"},
                                       {"lr": "fast"}, {"init": 3}])
def test_values_of_the_wrong_type_are_refused(overrides):
    with pytest.raises(ConfigError, match="must be of type"):
        RunConfig().replace(overrides)


def test_the_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("metric, direction, fragment", [
    ("train_acc", "maximize", "unknown objective metric 'train_acc'; choose one of: val_acc, val_loss"),
    ("test_acc", "maximize", "unknown objective metric"),  # the test set is never used to select
    ("val_loss", "down", "unknown objective direction 'down'"),
])
def test_an_objective_must_be_a_validation_metric_with_a_direction(metric, direction, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Objective(metric, direction)


def test_an_objective_improves_only_on_a_strictly_better_value():
    maximise, minimise = Objective("val_acc", "maximize"), Objective("val_loss", "minimize")
    assert maximise.improves(0.9, 0.8) and not maximise.improves(0.8, 0.8) and not maximise.improves(0.7, 0.8)
    assert minimise.improves(0.1, 0.2) and not minimise.improves(0.2, 0.2) and not minimise.improves(0.3, 0.2)
    nan = float("nan")
    assert minimise.improves(5.0, nan) and not minimise.improves(nan, 5.0) and not minimise.improves(nan, nan)
