"""sweeps/analysis/why_figures.py: the diagnostics behind a sweep's outcome, chosen by the RunConfig fields
it varies, drawn from the trials' per-epoch `history` (constructed in-memory Optuna studies, support.add).
Figures are checked for what they show; tests that only check that a figure is drawn say "smoke"."""

from __future__ import annotations

import io

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from support import add, clipping_study, history, losing, plan_of, right_on

from sweeps.analysis import report, why_figures

pytestmark = pytest.mark.unit


def legend_texts(figure) -> set[str]:
    named = {text.get_text() for legend in figure.legends for text in legend.get_texts()}
    return named | {text.get_text() for axes in figure.axes if axes.get_legend()
                    for text in axes.get_legend().get_texts()}


def one_axis_study(raw: dict, **history_of_index):
    """A study of the definition `raw` (one axis): a trial per value, each a few images behind the one
    before; `history_of_index` maps a history() keyword to a function of the value's index."""
    plan = plan_of({"description": "why", "base": {"epochs": 3}, **raw}, "why")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    [(axis, values)] = plan.grid().items()
    for index, value in enumerate(values):
        curve = history(**{key: make(index) for key, make in history_of_index.items()})
        add(study, plan, {axis: value}, correct=losing(best, index * 5), attrs={"history": curve})
    return study, plan


@pytest.mark.parametrize("fields, expected", [
    ({"clip_value"}, ["why_clipping"]), ({"clip_mode", "clip_value"}, ["why_clipping"]),
    ({"init"}, ["why_dead_units"]), ({"activation"}, ["why_dead_units"]), ({"lr"}, ["why_training_loss"]),
    ({"hidden_size"}, ["why_train_val_gap_vs_hidden_size"]), ({"impl"}, []),
    ({"hidden_size", "lr", "init", "clip_mode", "dropout"},
     ["why_clipping", "why_dead_units", "why_training_loss", "why_train_val_gap_vs_hidden_size"]),
])
def test_why_figure_follows_the_swept_fields(fields, expected):
    assert why_figures.chosen(fields) == expected


@pytest.mark.parametrize("fields, expected", [
    ({"dropout"}, ["why_train_val_gap_vs_dropout"]),
    ({"weight_decay", "dropout"}, ["why_train_val_gap_vs_dropout"]),
    ({"momentum"}, ["why_training_loss"]), ({"optimizer"}, ["why_training_loss"]),
    ({"warmup_epochs"}, ["why_training_loss"]), ({"init_scale"}, ["why_dead_units"]),
    ({"batch_size", "epochs", "schedule"}, []),
])
def test_each_field_group_chooses_its_figure_and_capacity_names_the_first_one_swept(fields, expected):
    assert why_figures.chosen(fields) == expected


def test_a_users_own_clip_value_sweep_gets_the_clipping_figure():
    plan = plan_of({"description": "my thresholds", "base": {"clip_mode": "norm"},
                    "space": {"clip_value": [0.5, 5.0]}}, "my_clipping")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    add(study, plan, {"clip_value": 0.5}, correct=best, attrs={"history": history(clip=0.8)})
    add(study, plan, {"clip_value": 5.0}, correct=losing(best, 10), attrs={"history": history(clip=0.1)})
    names = [name for name, _ in why_figures.figures(plan, report.summarise(study, plan))]
    assert names == ["why_clipping"]


def test_a_sweep_of_many_fields_gets_every_chosen_figure_in_order():
    plan = plan_of({"description": "many", "base": {"epochs": 3},
                    "space": {"lr": [0.01, 0.1], "init": ["zeros", "kaiming_uniform"]}}, "many")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    for index, (lr, init) in enumerate(((0.01, "zeros"), (0.1, "zeros"), (0.01, "kaiming_uniform"))):
        add(study, plan, {"lr": lr, "init": init}, correct=losing(best, index * 9))
    names = [name for name, _ in why_figures.figures(plan, report.summarise(study, plan))]
    assert names == why_figures.chosen({"lr", "init"}) == ["why_dead_units", "why_training_loss"]


def test_no_figure_for_a_sweep_whose_fields_choose_none_or_that_has_no_trials():
    study, plan = one_axis_study({"space": {"batch_size": [32, 64]}})
    assert why_figures.figures(plan, report.summarise(study, plan)) == []
    empty = optuna.create_study(direction="maximize")
    lr = plan_of({"description": "lr", "space": {"lr": [0.01, 0.1]}}, "lr")
    assert why_figures.figures(lr, report.summarise(empty, lr)) == []


def test_every_configuration_is_named_in_the_clipping_figure():
    study, plan = clipping_study()
    summary = report.summarise(study, plan)
    labels = {row.label for row in summary.rows}
    assert len(labels) == 7
    figures = dict(why_figures.figures(plan, summary))
    assert labels <= legend_texts(figures["why_clipping"])


def test_clipping_figure_plots_each_configurations_clip_fraction_mean_over_seeds():
    study, plan = clipping_study()
    summary = report.summarise(study, plan)
    figure = dict(why_figures.figures(plan, summary))["why_clipping"]
    share, norm = figure.axes[:2]
    fractions = sorted(round(float(line.get_ydata()[0]), 6) for line in share.lines)
    assert fractions == [index / 10 for index in range(7)]  # history(clip=index / 10), same for both seeds
    assert norm.get_yscale() == "log" and [list(line.get_xdata()) for line in norm.lines][0] == [1, 2, 3]


def test_mean_curve_averages_the_trials_that_reached_each_epoch():
    plan = plan_of({"description": "lr", "seeds": 2, "space": {"lr": [0.1]}}, "lr")
    study = optuna.create_study(direction="maximize")
    long = [dict(m, grad_norm=float(m["epoch"])) for m in history(3)]
    short = [dict(m, grad_norm=3.0 * m["epoch"]) for m in history(2)]  # stopped early after epoch 2
    add(study, plan, {"lr": 0.1}, seed=0, correct=right_on(0.9), attrs={"history": long})
    add(study, plan, {"lr": 0.1}, seed=1, correct=right_on(0.9, 1), attrs={"history": short})
    epochs, values = why_figures.mean_curve(study.trials, "grad_norm")
    assert epochs == [1, 2, 3] and values == pytest.approx([2.0, 4.0, 3.0])  # epoch 3: the long one only
    assert why_figures.mean_curve(study.trials, "grad_norm", last_epoch=1) == ([1], [2.0])
    assert why_figures.mean_curve(study.trials, "no_such_metric") == ([], [])


def test_train_val_gap_plots_the_mean_gap_per_configuration_at_the_selected_and_last_epoch():
    study, plan = one_axis_study({"space": {"hidden_size": [64, 128, 256]},
                                  "plot": {"x": "hidden_size", "log_x": True}},
                                 gap=lambda index: 0.01 * (index + 1))
    [(name, figure)] = why_figures.figures(plan, report.summarise(study, plan))
    assert name == "why_train_val_gap_vs_hidden_size"
    axes = figure.axes[0]
    means = [line for line in axes.lines if line.get_label().startswith("at the")]
    assert [line.get_label() for line in means] == ["at the selected epoch (mean over seeds)",
                                                    "at the last epoch (mean over seeds)"]
    for line in means:
        assert list(line.get_xdata()) == [64, 128, 256]
        assert list(line.get_ydata()) == pytest.approx([0.01, 0.02, 0.03])
    assert axes.get_xscale() == "log" and axes.get_xlabel() == "hidden_size"


def test_dead_units_figure_says_dead_only_for_relu():
    relu, relu_plan = one_axis_study({"space": {"init": ["zeros", "kaiming_uniform"]}},
                                     dead=lambda index: 0.5 * index)
    [(_, figure)] = why_figures.figures(relu_plan, report.summarise(relu, relu_plan))
    title = figure.get_suptitle().replace("\n", " ")  # wrapped at 100 characters
    assert "dead ReLU units" in title and "never-positive" not in title
    assert sorted(float(line.get_ydata()[0]) for line in figure.axes[0].lines) == [0.0, 0.5]
    mixed, mixed_plan = one_axis_study({"space": {"activation": ["relu", "tanh"]}})
    [(_, figure)] = why_figures.figures(mixed_plan, report.summarise(mixed, mixed_plan))
    title = figure.get_suptitle().replace("\n", " ")
    assert "never-positive units" in title and "dead (no gradient) for relu only" in title


def test_training_loss_marks_each_divergence():
    plan = plan_of({"description": "lr", "base": {"epochs": 3}, "space": {"lr": [0.03, 0.3, 1.0]}}, "lr")
    study = optuna.create_study(direction="maximize")
    add(study, plan, {"lr": 0.03}, correct=right_on(0.9))
    add(study, plan, {"lr": 0.3}, state=TrialState.FAIL, attrs={
        "failure": "training diverged: non-finite loss at epoch 3, step 2", "history": history(2)})
    add(study, plan, {"lr": 1.0}, state=TrialState.FAIL, attrs={
        "failure": "training diverged: non-finite loss at epoch 1, step 5", "history": []})
    summary = report.summarise(study, plan)
    [(name, figure)] = why_figures.figures(plan, summary)
    assert name == "why_training_loss"
    marks = [line for line in figure.axes[0].lines if line.get_marker() == "x"]
    assert sorted(tuple(line.get_xdata()) for line in marks) == [(1,), (2,)]  # epoch 1 at the top edge
    named = {text.get_text() for legend in figure.legends for text in legend.get_texts()}
    assert {"lr=0.03", "lr=0.3", "lr=1", "diverged: last finite epoch"} <= named


@pytest.mark.parametrize("raw, expected", [
    ({"space": {"init": ["zeros", "kaiming_uniform"]}}, "why_dead_units"),
    ({"space": {"activation": ["relu", "tanh"]}}, "why_dead_units"),
    ({"space": {"hidden_size": [64, 128]}, "plot": {"x": "hidden_size", "log_x": True}},
     "why_train_val_gap_vs_hidden_size"),
])
def test_smoke_why_figures_render(raw, expected):
    plan = plan_of({"description": "smoke", "base": {"epochs": 3}, **raw}, "smoke")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    for index, value in enumerate(next(iter(plan.grid().values()))):
        add(study, plan, {next(iter(plan.grid())): value}, correct=losing(best, index * 5),
            attrs={"history": history(dead=0.5 * index, gap=0.01 * (index + 1))})
    drawn = why_figures.figures(plan, report.summarise(study, plan))
    assert [name for name, _ in drawn] == [expected]
    drawn[0][1].savefig(io.BytesIO(), format="png")


def test_diverged_trial_without_any_finite_epoch_is_marked_at_the_top_edge():
    plan = plan_of({"description": "lr", "space": {"lr": [0.03, 5.0]}}, "lr")
    study = optuna.create_study(direction="maximize")
    add(study, plan, {"lr": 0.03}, correct=right_on(0.9))
    add(study, plan, {"lr": 5.0}, state=TrialState.FAIL,
        attrs={"failure": "training diverged: non-finite loss at epoch 2, step 1",
               "history": [dict(m, train_loss=np.inf) for m in history(1)]})
    [(_, figure)] = why_figures.figures(plan, report.summarise(study, plan))
    [mark] = [line for line in figure.axes[0].lines if line.get_marker() == "x"]
    assert list(mark.get_xdata()) == [2] and list(mark.get_ydata()) == [0.97]  # the epoch the message names
