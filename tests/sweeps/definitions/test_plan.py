"""sweeps/definitions/plan.py: a definition + base config + variant = one study's plan; its grid, its size,
the settings a study stores and compares on resume, and how swept values are labelled."""

import json
import textwrap

import pytest

from fmnist_core.config import ConfigError, RunConfig
from sweeps.definitions.loader import DefinitionError, load_definition
from sweeps.definitions.plan import StudyPlan, describe_params, fmt_value, plan_studies

pytestmark = pytest.mark.unit


def definition(tmp_path, text: str, name: str = "tiny"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return load_definition(path)


GRID = """
    description: a 3 x 2 grid
    base: {epochs: 2}
    space:
      hidden_size: [8, 16, 32]
      lr: [0.05, 0.1]
"""
TPE = """
    description: a sampled search
    sampler: {type: tpe, seed: 0}
    space:
      lr: {low: 0.01, high: 0.1, log: true}
    budget: {n_trials: 5}
"""


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


def test_a_plan_is_the_definition_base_with_the_variant_and_overrides_on_top(tmp_path):
    tiny = definition(tmp_path, GRID)
    [plan] = plan_studies(tiny)
    assert plan.study_name == "tiny-manual" and plan.base == RunConfig().replace({"epochs": 2})
    manual, torch = plan_studies(tiny, impl="both", overrides={"batch_size": "64"})
    assert (manual.base.impl, torch.base.impl) == ("manual", "torch")
    assert manual.base.batch_size == torch.base.batch_size == 64 and torch.base.epochs == 2
    assert manual.definition is tiny and (manual.seeds, manual.n_trials, manual.timeout) == (1, None, None)
    [torch_only] = plan_studies(tiny, impl="torch")
    assert torch_only.study_name == "tiny-torch"


def test_the_command_line_budget_wins_over_the_files(tmp_path):
    sampled = definition(tmp_path, TPE + "    seeds: 2\n")
    [plan] = plan_studies(sampled)
    assert (plan.n_trials, plan.timeout, plan.seeds) == (5, None, 2)
    [plan] = plan_studies(sampled, n_trials=9, timeout=30.0, seeds=3)
    assert (plan.n_trials, plan.timeout, plan.seeds) == (9, 30.0, 3)
    timed = definition(tmp_path, TPE.replace("n_trials: 5", "n_trials: 5, timeout: 60"), name="timed")
    [plan] = plan_studies(timed, timeout=0)
    assert plan.timeout == 0  # given (even 0) beats the file's 60


def test_a_sweep_without_a_validation_split_is_refused(tmp_path):
    with pytest.raises(DefinitionError, match="needs val_size > 0"):
        plan_studies(definition(tmp_path, GRID), overrides={"val_size": "0"})


def test_seeds_given_on_the_command_line_clash_with_a_swept_seed(tmp_path):
    seeded = definition(tmp_path, "description: seeds\nspace: {hidden_size: [8]}\nseeds: 2\n")
    with pytest.raises(DefinitionError, match="--set seed"):
        plan_studies(seeded, overrides={"seed": "4"})
    [plan] = plan_studies(definition(tmp_path, GRID), overrides={"seed": "4"})  # one seed: seed is free
    assert plan.base.seed == 4


def test_grid_puts_the_seed_on_the_grid_only_for_grid_sweeps_with_seeds(tmp_path):
    [one] = plan_studies(definition(tmp_path, GRID))
    assert not one.seed_axis and one.grid() == {"hidden_size": [8, 16, 32], "lr": [0.05, 0.1]}
    [three] = plan_studies(definition(tmp_path, GRID), seeds=3)
    assert three.seed_axis and three.grid() == {"hidden_size": [8, 16, 32], "lr": [0.05, 0.1],
                                                "seed": [0, 1, 2]}
    [sampled] = plan_studies(definition(tmp_path, TPE, name="sampled"), seeds=3)
    assert not sampled.seed_axis and "seed" not in sampled.grid()  # repeats of sampled configurations instead
    assert one.grid() == one.definition.grid()  # the plan's grid is a copy: adding the seed changes no other
    assert "seed" not in three.definition.grid()


@pytest.mark.parametrize("seeds, n_trials, expected", [(1, None, 6), (2, None, 12), (2, 5, 5), (1, 100, 6)])
def test_total_trials_of_a_grid_is_its_size_times_the_seeds_capped_by_the_budget(tmp_path, seeds, n_trials,
                                                                                   expected):
    [plan] = plan_studies(definition(tmp_path, GRID), seeds=seeds, n_trials=n_trials)
    assert plan.total_trials() == expected


def test_total_trials_of_a_sampled_search_is_its_budget_or_none(tmp_path):
    [plan] = plan_studies(definition(tmp_path, TPE))
    assert plan.total_trials() == 5
    timed = definition(tmp_path, TPE.replace("n_trials: 5", "timeout: 60"), name="timed")
    [plan] = plan_studies(timed)
    assert plan.total_trials() is None  # a timeout-only budget: no count to reach


def test_settings_say_what_makes_two_trials_comparable_and_survive_json(tmp_path):
    tiny = definition(tmp_path, GRID)
    [plan] = plan_studies(tiny)
    settings = plan.settings()
    assert set(settings) == {"base", "space", "seeds", "sampler", "pruner", "objective"}
    assert settings["base"] == plan.base.as_dict() and settings["seeds"] == 1
    assert settings["space"] == [repr(p) for p in tiny.space]
    assert settings["sampler"] == ["grid", {}] and settings["pruner"] == ["none", {}]
    assert settings["objective"] == ["val_acc", "maximize"]
    assert json.loads(json.dumps(settings))["base"] == json.loads(json.dumps(plan.base.as_dict()))
    [again] = plan_studies(tiny)
    assert again.settings() == settings  # the same plan twice: the same settings, a study resumes
    [longer] = plan_studies(tiny, overrides={"epochs": "3"})
    assert longer.settings()["base"]["epochs"] == 3 and longer.settings() != settings
    [seeded] = plan_studies(tiny, seeds=2)
    assert seeded.settings()["seeds"] == 2
    # the budget is not a setting: a resumed study may be given more trials or time
    [budget] = plan_studies(tiny, n_trials=3, timeout=10.0)
    assert budget.settings() == settings


def test_study_plans_are_frozen(tmp_path):
    [plan] = plan_studies(definition(tmp_path, GRID))
    assert isinstance(plan, StudyPlan)
    with pytest.raises(AttributeError):
        plan.seeds = 3


@pytest.mark.parametrize("value, shown", [
    (0.1, "0.1"), (0.0123456, "0.01235"), (1e-05, "1e-05"), (1.0, "1"), (2048.0, "2048"),
    (123456.0, "1.235e+05"), (1024, "1024"), (123456, "123456"), ("kaiming_uniform", "kaiming_uniform"),
    (True, "True"), (None, "None"),
])
def test_fmt_value_shows_floats_to_four_significant_digits_and_the_rest_as_they_are(value, shown):
    assert fmt_value(value) == shown


def test_describe_params_labels_a_configuration_in_its_order():
    assert describe_params({"hidden_size": 1024, "lr": 0.1}) == "hidden_size=1024, lr=0.1"
    assert describe_params({"lr": 0.1, "hidden_size": 1024}) == "lr=0.1, hidden_size=1024"
    assert describe_params({"lr": 0.030000001, "clipping": "norm-5"}) == "lr=0.03, clipping=norm-5"
    assert describe_params({}) == ""
