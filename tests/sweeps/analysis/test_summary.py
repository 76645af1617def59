"""sweeps/analysis/summary.py: the analysis' data types (ConfigRow, Summary) and the helpers that key,
label and rebuild a trial's configuration, on trials made with optuna.trial.create_trial."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from support import add, clipping_study, losing, plan_of, right_on, width_study

from fmnist_core.config import ConfigError
from fmnist_core.cost import parameter_count
from fmnist_core.data import INPUT_SIZE, NUM_CLASSES
from sweeps.analysis import report
from sweeps.analysis.summary import Summary, label_of
from sweeps.trial_record import config_key, config_of, seed_of, trained_config

pytestmark = pytest.mark.unit


def trial(params: dict, state=TrialState.COMPLETE, **user_attrs) -> optuna.trial.FrozenTrial:
    distributions = {name: CategoricalDistribution([value]) for name, value in params.items()}
    return create_trial(params=params, distributions=distributions, state=state, user_attrs=user_attrs,
                        value=0.9 if state == TrialState.COMPLETE else None)


def test_parameter_count_is_weights_and_biases_of_both_layers():
    assert (INPUT_SIZE, NUM_CLASSES) == (784, 10)
    assert parameter_count(1024) == 814_090
    assert parameter_count(1) == 784 + 1 + 10 + 10  # W1, b1, W2, b2
    assert parameter_count(512) - parameter_count(256) == 256 * (784 + 1 + 10)  # linear in the width


def test_config_key_drops_the_seed_and_keeps_the_rest_in_order():
    one = trial({"lr": 0.1, "seed": 0, "hidden_size": 64})
    other = trial({"lr": 0.1, "seed": 3, "hidden_size": 64})
    assert config_key(one) == (("lr", 0.1), ("hidden_size", 64))
    assert config_key(one) == config_key(other)  # seeds of one configuration share a key
    assert config_key(trial({"lr": 0.3, "seed": 0, "hidden_size": 64})) != config_key(one)
    assert config_key(trial({"seed": 1})) == ()


def test_label_of_names_the_params_or_base_when_there_are_none():
    assert label_of({}) == "base"  # a sweep that only varies the seed
    assert label_of({"hidden_size": 1024, "lr": 0.1}) == "hidden_size=1024, lr=0.1"
    assert label_of({"lr": 0.0123456}) == "lr=0.01235"  # 4 significant digits, as every label


def test_failed_by_label_groups_fail_trials_by_configuration():
    failed = [trial({"lr": 1.0, "seed": 0}, TrialState.FAIL), trial({"lr": 0.3, "seed": 0}, TrialState.FAIL),
              trial({"lr": 1.0, "seed": 1}, TrialState.FAIL), trial({"seed": 2}, TrialState.FAIL)]
    summary = Summary("s", "q", "val_acc", rows=[], counts={"FAIL": 4}, recommended_trial=None, failed=failed,
                      cost_name="s/epoch", conclusion="")
    groups = summary.failed_by_label()
    assert list(groups) == ["lr=1", "lr=0.3", "base"]  # in the order first failed
    assert [len(members) for members in groups.values()] == [2, 1, 1]
    assert [t.params["seed"] for t in groups["lr=1"]] == [0, 1]


def test_config_of_expands_bundle_labels_into_their_overrides():
    study, plan = clipping_study()
    config = config_of(plan, {"clipping": "norm-2"})
    assert (config.clip_mode, config.clip_value, config.lr) == ("norm", 2.0, 0.3)  # the bundle on the base
    assert config_of(plan, {"clipping": "none"}).clip_mode == "none"
    assert config_of(plan, {}) == plan.base
    rows = {row.label: row for row in report.summarise(study, plan).rows}
    value = rows["clipping=value-0.1"].config
    assert (value.clip_mode, value.clip_value) == ("value", 0.1)


def test_config_of_refuses_what_the_config_refuses_and_a_stored_trial_falls_back_to_the_base():
    plan = plan_of({"description": "widths", "space": {"hidden_size": [64, 128]}}, "widths")
    assert config_of(plan, {"hidden_size": 128}).hidden_size == 128
    assert config_of(plan, {"not_in_the_space": 1}) == plan.base  # names the space lacks are ignored
    with pytest.raises(ConfigError):  # a sampled combination the config refuses fails that trial
        config_of(plan, {"hidden_size": -5})
    stored = trial({"hidden_size": -5}, seed=2)
    assert trained_config(plan, stored) == plan.base  # a space edited since: best effort, no crash
    assert trained_config(plan, trial({"hidden_size": 128}, seed=2)).seed == 2


def test_the_seed_has_one_precedence_the_record_then_an_old_param_then_zero():
    assert seed_of(trial({"hidden_size": 64}, seed=3)) == 3  # the record (every trial since 7 Dec 2026)
    assert seed_of(trial({"hidden_size": 64, "seed": 2})) == 2  # an old grid study's searched seed
    assert seed_of(trial({"hidden_size": 64, "seed": 2}, seed=2)) == 2
    assert seed_of(trial({"hidden_size": 64})) == 0  # a sampled trial's first seed
    queued = optuna.create_study()
    queued.enqueue_trial({"hidden_size": 64, "seed": 4})  # an old study's queued grid point
    queued.enqueue_trial({"hidden_size": 64}, user_attrs={"seed": 1})
    first, second = queued.get_trials(deepcopy=False)
    assert (seed_of(first), config_key(first)) == (4, (("hidden_size", 64),))
    assert (seed_of(second), config_key(second)) == (1, (("hidden_size", 64),))


def test_config_rows_carry_their_trials_verdict_and_parameter_count():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    for row in summary.rows:
        assert row.parameters == parameter_count(row.params["hidden_size"])
        assert row.config.hidden_size == row.params["hidden_size"]
        assert row.label == row.verdict.label == f"hidden_size={row.params['hidden_size']}"
        assert row.vs_best == row.verdict.verdict and row.vectors_kept
        assert [t.params for t in row.trials] == [row.params]
    assert summary.rows[0].seconds_per_epoch == pytest.approx(1.0)


def test_a_row_without_vectors_for_every_seed_says_so():
    plan = plan_of({"description": "lr", "seeds": 2, "space": {"lr": [0.01, 0.1]}}, "lr")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    add(study, plan, {"lr": 0.1}, correct=best, seed=0)
    add(study, plan, {"lr": 0.1}, accuracy=0.895, seed=1)  # one seed kept no vector
    add(study, plan, {"lr": 0.01}, correct=losing(best, 10), seed=0)
    add(study, plan, {"lr": 0.01}, correct=losing(best, 12, seed=2), seed=1)
    rows = {row.label: row for row in report.summarise(study, plan).rows}
    assert not rows["lr=0.1"].vectors_kept and rows["lr=0.01"].vectors_kept
