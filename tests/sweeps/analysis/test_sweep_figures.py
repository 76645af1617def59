"""sweeps/analysis/figures.py: the figures every sweep gets, checked for what they show (intervals, every
configuration named, which figures a sweep gets), on constructed in-memory Optuna studies (support.add).
What the figures show of decided verdicts (paired differences, the ±δ band, the cost) and that no text is
cut off: test_figures_decided.py."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from matplotlib.collections import LineCollection
from support import add, clipping_study, losing, plan_of, right_on, width_study

from sweeps.analysis import figures as sweep_figures
from sweeps.analysis import report

pytestmark = pytest.mark.unit


def legend_texts(figure) -> set[str]:
    named = {text.get_text() for legend in figure.legends for text in legend.get_texts()}
    return named | {text.get_text() for axes in figure.axes if axes.get_legend()
                    for text in axes.get_legend().get_texts()}


def drawn(plan, study) -> dict:
    return dict(sweep_figures.figures(plan, report.summarise(study, plan)))


def test_every_configuration_is_named_in_the_overlays():
    study, plan = clipping_study()
    summary = report.summarise(study, plan)
    labels = {row.label for row in summary.rows}
    assert len(labels) == 7
    figures = dict(sweep_figures.figures(plan, summary))
    assert labels <= legend_texts(figures["validation_curves"])
    lowest = figures["accuracy_vs_clipping"].axes[-1]  # the panel that carries the x axis
    ticks = {tick.get_text() for tick in lowest.get_xticklabels()}
    assert {label.removeprefix("clipping=") for label in labels} <= ticks  # configurations on the x axis


def test_more_configurations_than_a_legend_holds_get_a_colorbar():
    numeric = sweep_figures.palette([(f"lr={v}", v) for v in np.geomspace(0.001, 1, 14)], "lr", True)
    assert numeric.colorbar is not None and numeric.colorbar[1] == "lr"
    named = sweep_figures.palette([(f"init={i}", f"s{i}") for i in range(14)], "init", False)
    assert named.colorbar[1].startswith("rank by validation accuracy")
    few = sweep_figures.palette([(f"lr={v}", v) for v in (0.01, 0.1)], "lr", True)
    assert few.colorbar is None and list(few.colors) == ["lr=0.01", "lr=0.1"]


def test_accuracy_figure_draws_the_wilson_intervals_of_the_table():
    """In the accuracy panel: the whole figure for studies without difference intervals, the lower panel
    below the paired differences otherwise (test_figures_decided)."""
    study, plan = width_study()
    summary = report.summarise(study, plan)
    figure = dict(sweep_figures.figures(plan, summary))["accuracy_vs_hidden_size"]
    [axes] = [panel for panel in figure.axes if panel.get_ylabel() == "accuracy"]
    assert "Wilson" in figure.get_suptitle()
    bars = next(c for c in axes.collections if isinstance(c, LineCollection))
    spans = sorted((round(seg[0][1], 6), round(seg[1][1], 6)) for seg in bars.get_segments())
    expected = sorted((round(r.verdict.interval[0], 6), round(r.verdict.interval[1], 6))
                      for r in summary.rows)
    assert spans == expected and all(high - low > 0.02 for low, high in spans)  # ~±0.013 on 2000 images


def test_a_sweep_with_a_plot_axis_gets_curves_accuracy_and_time_against_it():
    study, plan = width_study()
    figures = drawn(plan, study)
    assert list(figures) == ["validation_curves", "accuracy_vs_hidden_size", "cost_vs_hidden_size"]
    accuracy = figures["accuracy_vs_hidden_size"].axes[-1]  # the lowest panel carries the x axis
    assert accuracy.get_xscale() == "log" and accuracy.get_xlabel() == "hidden_size"  # plot: {log_x: true}
    assert [tick.get_text() for tick in accuracy.get_xticklabels()] == ["256", "512", "1024", "2048"]
    cost = figures["cost_vs_hidden_size"].axes
    assert [panel.get_ylabel() for panel in cost] == ["parameters (weights and biases)",
                                                      "training GFLOP per epoch"]
    assert all(panel.get_xscale() == "log" for panel in cost)


def test_a_sweep_of_two_axes_without_plot_x_gets_only_the_curves():
    plan = plan_of({"description": "two", "space": {"hidden_size": [64, 128], "lr": [0.01, 0.1]}}, "two")
    assert plan.definition.plot_x is None  # two names in space: no axis chosen for it
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    for index, (width, lr) in enumerate(((64, 0.01), (64, 0.1), (128, 0.01), (128, 0.1))):
        add(study, plan, {"hidden_size": width, "lr": lr}, correct=losing(best, index * 20))
    figures = drawn(plan, study)
    assert list(figures) == ["validation_curves"]
    curves = figures["validation_curves"].axes[0]
    assert curves.get_ylabel() == "validation error" and len(curves.lines) == 4  # one line per trial
    named = legend_texts(figures["validation_curves"])
    assert {"hidden_size=64, lr=0.01", "hidden_size=128, lr=0.1"} <= named


def test_a_study_without_complete_trials_gets_no_figures():
    plan = plan_of({"description": "lr", "space": {"lr": [0.01, 10.0]}}, "lr")
    study = optuna.create_study(direction="maximize")
    add(study, plan, {"lr": 10.0}, state=optuna.trial.TrialState.FAIL, attrs={"failure": "diverged"})
    assert drawn(plan, study) == {}


def test_rows_are_ordered_along_the_plot_axis_as_the_definition_lists_them():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    assert [row.params["hidden_size"] for row in summary.rows] == [2048, 1024, 512, 256]  # by rank
    along = sweep_figures.ordered(summary.rows, plan)
    assert [row.params["hidden_size"] for row in along] == [256, 512, 1024, 2048]
    two = plan_of({"description": "two", "space": {"hidden_size": [64, 128], "lr": [0.01, 0.1]}}, "two")
    assert sweep_figures.ordered(summary.rows, two) == summary.rows  # no plot axis: by rank


def optuna_figure_names(plan, complete: list[dict]) -> list[str]:
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    for index, params in enumerate(complete):
        add(study, plan, params, correct=losing(best, index * 7))
    names = []
    for name, figure in sweep_figures.optuna_figures(study, plan):
        names.append(name)
        sweep_figures.close(figure)  # Optuna draws with pyplot
    return names


def test_optuna_plots_only_where_they_say_something():
    widths = plan_of({"description": "w", "space": {"hidden_size": [64, 128, 256]}}, "w")
    assert optuna_figure_names(widths, [{"hidden_size": w} for w in (64, 128, 256)]) == []  # one axis, grid
    grid = plan_of({"description": "g", "space": {"hidden_size": [64, 128], "lr": [0.01, 0.1]}}, "g")
    points = [{"hidden_size": w, "lr": lr} for w in (64, 128) for lr in (0.01, 0.1)]
    assert optuna_figure_names(grid, points) == ["optuna_parallel_coordinate", "optuna_param_importances"]
    one_varied = [{"hidden_size": 64, "lr": lr} for lr in (0.01, 0.1)]
    assert optuna_figure_names(grid, one_varied) == []
    random_sampler = {"type": "random", "seed": 0}
    sampled = plan_of({"description": "r", "sampler": random_sampler, "budget": {"n_trials": 4},
                       "space": {"hidden_size": [64, 128], "lr": [0.01, 0.1]}}, "r")
    assert optuna_figure_names(sampled, points) == [
        "optuna_optimization_history", "optuna_parallel_coordinate", "optuna_param_importances"]
    assert optuna_figure_names(sampled, []) == []
