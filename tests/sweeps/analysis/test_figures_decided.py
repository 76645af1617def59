"""sweeps/analysis/figures.py and why_figures.py against the verdicts of decided sweeps: the main figure
plots the paired differences the verdicts rest on (with the ±δ band where a tie can be declared), the
cost figure plots parameters and FLOPs, and no figure's text is cut off at its edges.

The verdicts are report.summarise's on constructed studies (support.add), given the difference
intervals and margins that evidence.py's decided verdicts carry (dataclasses.replace), so that these
tests do not wait on how the intervals are computed."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from optuna.trial import TrialState
from support import add, clipping_study, history, losing, plan_of, right_on, width_study

from fmnist_core.config import RunConfig
from fmnist_core.cost import parameter_count, training_flops
from sweeps.analysis import evidence, report, why_figures
from sweeps.analysis import figures as sweep_figures

pytestmark = pytest.mark.unit

MARGIN = 0.005  # δ = 0.5 percentage point
HALF_WIDTH = 0.002  # of each made-up difference interval: 1024 units (-0.2 pp) lands inside ±δ


def decided(summary, margin: float | None = MARGIN):
    """`summary` with each verdict as a decided sweep gives it: an interval of HALF_WIDTH around the
    difference, the margin, and the word it implies (tied inside ±margin, else worse below 0)."""
    rows = []
    for row in summary.rows:
        verdict = row.verdict
        if verdict.verdict != evidence.BEST:
            low, high = verdict.difference - HALF_WIDTH, verdict.difference + HALF_WIDTH
            word = evidence.TIED if margin and -margin < low and high < margin else \
                evidence.WORSE if high < 0 else evidence.UNDECIDED
            verdict = dataclasses.replace(verdict, verdict=word, difference_interval=(low, high))
        rows.append(dataclasses.replace(row, verdict=dataclasses.replace(verdict, margin=margin)))
    return dataclasses.replace(summary, rows=rows)


def accuracy_figure(summary, plan):
    return dict(sweep_figures.figures(plan, summary))["accuracy_vs_hidden_size"]


def bands(axes) -> list[tuple[float, float]]:
    """The y extents of the horizontal spans (axhspan, a Rectangle) of `axes`."""
    return [(round(patch.get_y(), 9), round(patch.get_y() + patch.get_height(), 9))
            for patch in axes.patches if isinstance(patch, Rectangle)]


def bar_segments(axes) -> list:
    """The interval bars of `axes`: each a segment ((x, low), (x, high))."""
    return [segment for bars in axes.collections if isinstance(bars, LineCollection)
            for segment in bars.get_segments()]


def test_the_main_figure_plots_each_paired_difference_and_its_interval_in_percentage_points():
    study, plan = width_study()
    summary = decided(report.summarise(study, plan))
    paired = accuracy_figure(summary, plan).axes[0]
    by_width = {row.params["hidden_size"]: row.verdict for row in summary.rows}
    points = {float(line.get_xdata()[0]): float(line.get_ydata()[0]) for line in paired.lines
              if len(line.get_xdata()) == 1}
    assert points == pytest.approx({w: 100 * v.difference for w, v in by_width.items()})
    assert points[2048] == 0 and points[256] == pytest.approx(-6.0)  # 120 of 2000 images behind
    spans = sorted((round(x), round(low, 6), round(high, 6)) for (x, low), (_, high) in bar_segments(paired))
    expected = sorted((w, round(100 * v.difference_interval[0], 6), round(100 * v.difference_interval[1], 6))
                      for w, v in by_width.items() if v.verdict != evidence.BEST)
    assert spans == expected  # the leader has no interval of a difference to itself
    assert paired.get_xscale() == "log"


def test_the_tie_band_is_drawn_where_a_tie_can_be_declared_and_not_otherwise():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    with_margin = accuracy_figure(decided(summary), plan)
    assert bands(with_margin.axes[0]) == [(-100 * MARGIN, 100 * MARGIN)]
    assert "δ = 0.5 percentage points" in with_margin.get_suptitle().replace("\n", " ")
    without = accuracy_figure(decided(summary, margin=None), plan)
    assert bands(without.axes[0]) == []
    assert "no tie margin" in without.get_suptitle().replace("\n", " ")


def test_each_verdict_present_is_in_the_legend_and_a_zero_line_is_drawn():
    study, plan = width_study()
    figure = accuracy_figure(decided(report.summarise(study, plan)), plan)
    named = {text.get_text() for legend in figure.legends for text in legend.get_texts()}
    assert named == {"best (0 by definition)", "tied: within ±δ of the best", "worse", "±δ: the tie margin"}
    assert any(list(line.get_ydata()) == [0, 0] for line in figure.axes[0].lines)  # axhline(0)


def test_points_without_an_interval_are_hollow_and_older_words_read_as_not_shown_different():
    study, plan = width_study()
    summary = decided(report.summarise(study, plan))
    rows = [dataclasses.replace(row, verdict=dataclasses.replace(
        row.verdict, verdict="within noise" if row.params["hidden_size"] == 1024 else row.verdict.verdict,
        difference_interval=(math.nan, math.nan) if row.params["hidden_size"] == 512 else
        row.verdict.difference_interval)) for row in summary.rows]
    figure = accuracy_figure(dataclasses.replace(summary, rows=rows), plan)
    named = {text.get_text() for legend in figure.legends for text in legend.get_texts()}
    assert {"not shown different (no tie claimed)", "hollow: no interval of the difference"} <= named
    [hollow] = [line for line in figure.axes[0].lines if line.get_markerfacecolor() == "none"]
    assert list(hollow.get_xdata()) == [512]
    assert 512 not in {round(segment[0][0]) for segment in bar_segments(figure.axes[0])}


def test_the_absolute_accuracies_stay_below_with_the_tables_intervals():
    study, plan = width_study()
    summary = decided(report.summarise(study, plan))
    paired, absolute = accuracy_figure(summary, plan).axes
    assert absolute.get_ylabel() == "accuracy" and absolute.get_xlabel() == "hidden_size"
    assert absolute.get_position().height < paired.get_position().height  # the smaller panel
    spans = sorted((round(seg[0][1], 6), round(seg[1][1], 6)) for seg in bar_segments(absolute))
    assert spans == sorted((round(r.verdict.interval[0], 6), round(r.verdict.interval[1], 6))
                           for r in summary.rows)


def test_the_cost_figure_plots_parameters_and_training_flops_not_the_shared_seconds():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    figure = dict(sweep_figures.figures(plan, summary))["cost_vs_hidden_size"]
    weights, flops = figure.axes
    [counts], [giga] = ([list(line.get_ydata()) for line in panel.lines] for panel in (weights, flops))
    assert list(weights.lines[0].get_xdata()) == [256, 512, 1024, 2048]
    assert counts == [parameter_count(w) for w in (256, 512, 1024, 2048)] == sorted(counts)
    # 3 x 2 (784 H + 10 H) per image would count a gradient to the pixels that nothing computes
    per_image = [2 * (784 * w + 10 * w) + 2 * (784 * w + 2 * 10 * w) for w in (256, 512, 1024, 2048)]
    assert giga == pytest.approx([f * 50_000 / 1e9 for f in per_image])  # val_size 10,000 held out
    assert giga == sorted(giga) and "seconds" not in flops.get_ylabel()
    words = figure.get_suptitle().replace("\n", " ")
    assert "shared by all its members" in words and "population sizes here: 1" in words


def test_training_flops_follow_the_held_out_images_and_the_width():
    base = RunConfig()
    assert training_flops(base.replace({"val_size": 0})) == \
        training_flops(base) * 60_000 / 50_000
    assert training_flops(base.replace({"hidden_size": 512})) == \
        2 * training_flops(base)  # every counted product is linear in the width


def out_of_bounds(figure) -> list[str]:
    """What of `figure` reaches past its edges once drawn: each text but the tick labels by name, and the
    extent of everything drawn (tick labels included: of the ticks only those in view are drawn)."""
    FigureCanvasAgg(figure).draw()
    renderer = figure.canvas.get_renderer()
    edge, slack = figure.bbox, 1.0  # pixels: antialiasing
    ticks = {id(label) for axes in figure.axes for axis in (axes.xaxis, axes.yaxis)
             for tick in axis.majorTicks + axis.minorTicks for label in (tick.label1, tick.label2)}
    boxes = [(text.get_text(), text.get_window_extent(renderer)) for text in figure.findobj(Text)
             if id(text) not in ticks and text.get_visible() and text.get_text().strip()]
    boxes.append(("everything drawn", figure.get_tightbbox(renderer).transformed(figure.dpi_scale_trans)))
    return [name for name, box in boxes if box.x0 < edge.x0 - slack or box.y0 < edge.y0 - slack or
            box.x1 > edge.x1 + slack or box.y1 > edge.y1 + slack]


def small_studies():
    """(study, plan) of a width sweep with a long name, the clipping sweep, an init sweep and an lr sweep
    with a divergence: every figure and why-figure the sweeps get, with long titles."""
    study, plan = width_study()
    yield study, plan
    yield clipping_study()
    init = plan_of({"description": "init", "base": {"epochs": 3},
                    "space": {"init": ["zeros", "kaiming_uniform", "xavier_normal"]},
                    "plot": {"x": "init"}}, "a_long_sweep_name_that_a_user_might_well_choose_for_inits")
    lr = plan_of({"description": "lr", "base": {"epochs": 3}, "space": {"lr": [0.03, 0.3]},
                  "plot": {"x": "lr", "log_x": True}}, "lr")
    for plan, values in ((init, ["zeros", "kaiming_uniform", "xavier_normal"]), (lr, [0.03])):
        study = optuna.create_study(direction="maximize")
        axis = next(iter(plan.grid()))
        for index, value in enumerate(values):
            add(study, plan, {axis: value}, correct=losing(right_on(0.9), index * 30),
                attrs={"history": history(dead=0.3 * index)})
        if plan is lr:
            add(study, plan, {"lr": 0.3}, state=TrialState.FAIL, attrs={
                "failure": "training diverged: non-finite loss at epoch 2, step 1", "history": history(1)})
        yield study, plan


def test_no_figure_text_is_cut_off_at_the_figures_edges():
    seen = set()
    for study, plan in small_studies():
        summary = report.summarise(study, plan)
        for variant in (summary, decided(summary)):
            for name, figure in sweep_figures.figures(plan, variant) + why_figures.figures(plan, variant):
                seen.add(name.split("_vs_")[0])
                assert out_of_bounds(figure) == [], name
    assert seen >= {"validation_curves", "accuracy", "cost", "why_train_val_gap", "why_clipping",
                    "why_dead_units", "why_training_loss"}
