"""The figures every sweep gets: validation curves, what the verdicts rest on and what a configuration
costs against the swept value, Optuna's plots.

`accuracy_vs_<x>` shows each configuration's paired difference to the best with the interval its verdict
(report.summarise's, evidence.py) was read from and the ±δ tie band, each point marked by its verdict;
the absolute accuracies, whose unpaired intervals overlap where a paired test still separates two
configurations, sit below, smaller. `cost_vs_<x>` shows parameters and training FLOPs, not the
measured seconds, which a pack's members share. Every configuration is named: in a legend up to
LEGEND_MAX of them, else a colorbar (the swept value where it is a number, else the rank). Titles are
wrapped to the figure's width (`caption`). why_figures.py adds the diagnostics that explain the outcome.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from optuna.trial import TrialState

from fmnist_core.cost import training_flops
from fmnist_tracking import plots
from sweeps.analysis import evidence
from sweeps.analysis.words import BEST, NOT_SHOWN, NOT_TESTED, TIED, UNDECIDED, WORSE, current
from sweeps.definitions.plan import fmt_value
from sweeps.trial_record import TrialRecord

if TYPE_CHECKING:
    import optuna

    from sweeps.analysis.summary import ConfigRow, Summary
    from sweeps.definitions.plan import StudyPlan

LEGEND_MAX = 12  # more configurations than this get a colorbar instead of a legend
INTERVAL_CAPTIONS = {"t over seeds": "95% t-interval over seeds",
                     "Wilson": "95% Wilson interval over the validation images (one seed: training noise "
                               "not in it)",
                     "none": "no interval (one seed, no per-image results kept)"}
METHOD_CAPTIONS = {evidence.MCNEMAR: "paired over the validation images, one seed: training noise not in "
                                     "it"}  # the decided verdicts name themselves
VERDICT_STYLES = {  # verdict word -> (colour, marker, legend text), in the legend's order
    BEST: ("black", "*", "best (0 by definition)"),
    TIED: ("tab:green", "D", "tied: within ±δ of the best"),
    WORSE: ("tab:red", "v", "worse"),
    UNDECIDED: ("tab:orange", "o", "undecided"),
    NOT_SHOWN: ("tab:blue", "s", "not shown different (no tie claimed)"),
    NOT_TESTED: ("gray", "X", "not tested"),
}


@dataclass
class Palette:
    """A colour for each configuration label, and how the figure names them."""

    colors: dict[str, Any]
    colorbar: tuple[ScalarMappable, str] | None = None  # None: a legend naming every label
    extra: list = field(default_factory=list)  # legend handles beyond the configurations (markers)

    def finish(self, figure: Figure, axes) -> None:
        if self.colorbar is not None:
            figure.colorbar(self.colorbar[0], ax=axes, label=self.colorbar[1])
            handles = self.extra
        else:
            handles = [Line2D([], [], color=c, label=label) for label, c in self.colors.items()] + self.extra
        if handles:
            figure.legend(handles=handles, loc="outside right center", fontsize="small")


def palette(entries: list[tuple[str, Any]], x_name: str | None, log_x: bool) -> Palette:
    """`entries`: (label, swept value) in plot order."""
    cmap = colormaps["viridis"]
    count = len(entries)
    values = [value for _, value in entries]
    if count <= LEGEND_MAX:
        return Palette({label: cmap(i / max(1, count - 1) * 0.9) for i, (label, _) in enumerate(entries)})
    if x_name and all(_numeric(v) for v in values):
        positive = log_x and min(values) > 0
        norm = (LogNorm if positive else Normalize)(min(values), max(values))
        return Palette({label: cmap(norm(value)) for label, value in entries},
                       (ScalarMappable(norm, cmap), x_name))
    norm = Normalize(1, count)
    return Palette({label: cmap(norm(i + 1)) for i, (label, _) in enumerate(entries)},
                   (ScalarMappable(norm, cmap), "rank by validation accuracy (1 = best)"))


def ordered(rows: list[ConfigRow], plan: StudyPlan) -> list[ConfigRow]:
    """Along the plot axis (in the order of the definition's values) where there is one, else by rank."""
    x = plan.definition.plot_x
    if not x:
        return list(rows)
    order = {value: i for p in plan.definition.space if p.name == x for i, value in enumerate(p.choices)}
    return sorted(rows, key=lambda row: (order.get(row.params.get(x), len(order)),
                                         _sort_key(row.params.get(x))))


def row_palette(rows: list[ConfigRow], plan: StudyPlan) -> Palette:
    x = plan.definition.plot_x
    return palette([(row.label, row.params.get(x)) for row in rows], x, plan.definition.plot_log_x)


def figures(plan: StudyPlan, summary: Summary) -> list[tuple[str, Figure]]:
    """Validation curves and, with a plot axis, the verdicts' differences and the cost against it."""
    rows = ordered(summary.rows, plan)
    result = [("validation_curves", validation_curves(plan, summary, rows))] if rows else []
    x = plan.definition.plot_x
    along = [row for row in rows if x in row.params] if x else []
    if along:
        result += [(f"accuracy_vs_{x}", accuracy_vs(plan, summary, along, x)),
                   (f"cost_vs_{x}", cost_vs(plan, summary, along, x))]
    return result


def validation_curves(plan: StudyPlan, summary: Summary, rows: list[ConfigRow]) -> Figure:
    error = summary.metric == "val_acc"  # the validation error, where differences are easier to see
    colors = row_palette(rows, plan)
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    for row in rows:
        for trial in row.trials:
            steps = sorted(trial.intermediate_values)
            values = [trial.intermediate_values[s] for s in steps]
            axes.plot(steps, [1 - v for v in values] if error else values, color=colors.colors[row.label],
                      alpha=0.8, marker=plots.curve_marker(len(steps)))
    name = "validation error" if error else summary.metric
    axes.set(xlabel="epoch", ylabel=name)
    caption(figure, f"{summary.study_name}: {name} per epoch (one line per seed)", fontsize=10)
    axes.grid(alpha=0.3)
    plots.epoch_axis(axes)
    colors.finish(figure, axes)
    return figure


def accuracy_vs(plan: StudyPlan, summary: Summary, rows: list[ConfigRow], x: str) -> Figure:
    """What the verdicts rest on: each configuration's paired difference to the best with the interval the
    verdict was read from, the ±δ tie band where a tie can be declared, each point marked by its verdict;
    below, smaller, the absolute validation (and test) accuracy. Unpaired accuracy intervals overlap where
    a paired test still separates two configurations, so they are not the main message. Studies without
    any difference interval (older runs) get the accuracies alone."""
    if not any(_has_interval(row.verdict) for row in rows):
        return _accuracies_only(plan, summary, rows, x)
    positions, labels, numeric = _positions(rows, x)
    figure = Figure(figsize=(8, 6.5), layout="constrained")
    paired, absolute = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    margins = sorted({row.verdict.margin for row in rows if row.verdict.margin is not None})
    for margin in margins:
        paired.axhspan(-100 * margin, 100 * margin, color="tab:green", alpha=0.12, linewidth=0)
    paired.axhline(0, color="black", linewidth=0.8)
    handles, hollow = {}, False
    for position, row in zip(positions, rows, strict=True):
        verdict, word = row.verdict, current(row.verdict.verdict)
        if math.isnan(verdict.difference):  # no accuracy recorded: nothing to place
            continue
        color, marker, text = VERDICT_STYLES.get(word, ("tab:purple", "o", word))
        low, high = verdict.difference_interval
        has_interval = _has_interval(verdict)
        if has_interval:
            paired.vlines(position, 100 * low, 100 * high, color=color, linewidth=2)
        empty = not has_interval and word != BEST
        hollow |= empty
        paired.plot(position, 100 * verdict.difference, marker=marker, color=color, linestyle="",
                    markersize=12 if word == BEST else 8, markerfacecolor="none" if empty else color)
        handles.setdefault(word, Line2D([], [], color=color, marker=marker, linestyle="", label=text))
    paired.set(ylabel="validation accuracy minus the best's\n(percentage points)")
    paired.grid(alpha=0.3)
    words = [w for w in VERDICT_STYLES if w in handles] + [w for w in handles if w not in VERDICT_STYLES]
    legend = [handles[word] for word in words]
    if margins:
        legend.append(Patch(color="tab:green", alpha=0.25, label="±δ: the tie margin"))
    if hollow:
        legend.append(Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="",
                             label="hollow: no interval of the difference"))
    figure.legend(handles=legend, loc="outside right center", fontsize="small")
    _absolute_panel(absolute, rows, positions)
    _x_axis(absolute, x, positions, labels, numeric, plan.definition.plot_log_x)
    methods = sorted({row.verdict.method for row in rows if _has_interval(row.verdict)})
    band = f"; band: ±δ = {', '.join(f'{100 * m:g}' for m in margins)} percentage points, the tie margin" \
        if margins else "; no tie margin (one seed: no tie can be declared)"
    kinds = "; ".join(INTERVAL_CAPTIONS[kind] for kind in sorted({row.verdict.interval_kind for row in rows}))
    caption(figure, f"{summary.study_name}: validation accuracy vs {x}, as the difference to the best "
                    f"({_leader(rows)})\nbars: the interval of the difference each verdict rests on "
                    f"({'; '.join(METHOD_CAPTIONS.get(m, m) for m in methods)}){band}\nlower panel: mean "
                    f"validation accuracy, {kinds}; test accuracy beside, not used to choose")
    return figure


def _validation_bars(axes, rows: list[ConfigRow], positions, **style) -> np.ndarray:
    """Mean validation accuracy with the verdicts' intervals (the ranked table's); the means."""
    means = np.array([row.verdict.accuracy for row in rows])
    lows, highs = (np.array([row.verdict.interval[i] for row in rows]) for i in (0, 1))
    axes.errorbar(positions, means, yerr=[np.nan_to_num(means - lows), np.nan_to_num(highs - means)], **style)
    return means


def _absolute_panel(axes, rows: list[ConfigRow], positions) -> None:
    _validation_bars(axes, rows, positions, marker="o", markersize=4, capsize=3, label="validation")
    axes.plot(positions, [np.mean(_test_accuracies(row)) for row in rows], "s", markerfacecolor="none",
              color="tab:orange", markersize=4, label="test")
    axes.set_ylabel("accuracy")
    handles, names = axes.get_legend_handles_labels()
    axes.legend(handles[::-1], names[::-1], fontsize="x-small")  # validation first, as drawn


def _accuracies_only(plan: StudyPlan, summary: Summary, rows: list[ConfigRow], x: str) -> Figure:
    """Older studies (no difference intervals): validation accuracy with the verdicts' intervals, test
    accuracy beside (t over seeds, if any), each point named by its verdict."""
    positions, labels, numeric = _positions(rows, x)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    means = _validation_bars(axes, rows, positions, marker="o", capsize=4,
                             label="validation (selected epoch)")
    tests = [_test_accuracies(row) for row in rows]
    test_intervals = [evidence.t_interval(values, bounds=(0.0, 1.0)) for values in tests]
    test_means = np.array([np.mean(values) for values in tests])
    axes.errorbar(positions, test_means, marker="s", capsize=4, alpha=0.7, label="test (not used to choose)",
                  yerr=[np.nan_to_num(test_means - [lo for lo, _ in test_intervals]),
                        np.nan_to_num([hi for _, hi in test_intervals] - test_means)])
    for position, mean, row in zip(positions, means, rows, strict=True):
        axes.annotate(row.vs_best, (position, mean), textcoords="offset points", xytext=(6, -12), fontsize=7)
    _x_axis(axes, x, positions, labels, numeric, plan.definition.plot_log_x)
    kinds = sorted({row.verdict.interval_kind for row in rows})
    seeded = all(len(row.trials) >= 2 for row in rows)
    test_caption = "test: t over seeds" if seeded else "test: one seed, no interval"
    axes.set_ylabel("accuracy")
    caption(figure, f"{summary.study_name}: accuracy vs {x}\nvalidation: "
                    f"{'; '.join(INTERVAL_CAPTIONS[kind] for kind in kinds)}; {test_caption}")
    axes.legend(fontsize="small")
    return figure


def cost_vs(plan: StudyPlan, summary: Summary, rows: list[ConfigRow], x: str) -> Figure:
    """What a configuration costs each member of a pack: its parameters and the training FLOPs of an
    epoch, exact from its RunConfig. The measured seconds are the wall time of the whole population a
    trial trained in, the same for every member, so they cannot tell two widths of one pack apart."""
    positions, labels, numeric = _positions(rows, x)
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    weights, flops = figure.subplots(1, 2, sharex=True)
    counts = [row.parameters for row in rows]
    giga = [training_flops(row.config) / 1e9 for row in rows]
    for panel, values, name, shown in ((weights, counts, "parameters (weights and biases)", "{:,.0f}"),
                                       (flops, giga, "training GFLOP per epoch", "{:.3g}")):
        panel.plot(positions, values, "-o")
        _x_axis(panel, x, positions, labels, numeric, plan.definition.plot_log_x)
        if plan.definition.plot_log_x:
            panel.set_yscale("log")
        ticks = sorted(set(values))  # each configuration's value, read off the axis exactly
        panel.set_yticks(ticks, [shown.format(tick) for tick in ticks])
        panel.minorticks_off()
        panel.set_ylabel(name)
    populations = sorted({TrialRecord.of(t).population for row in rows for t in row.trials})
    epochs = sorted({row.config.epochs for row in rows})
    caption(figure, f"{summary.study_name}: what one configuration costs vs {x}\nFLOPs: the two matrix "
                    "products forward and backward, 2 per multiply-add, over an epoch's training images "
                    f"(60,000 - val_size); a trial trains {', '.join(map(str, epochs))} epochs. Measured "
                    "seconds are not shown: they are the wall time of the population a trial trained in "
                    f"(population sizes here: {', '.join(map(str, populations))}), shared by all its members")
    return figure


def caption(figure: Figure, text: str, fontsize: float = 9) -> None:
    """The figure's title, each line of `text` wrapped to the figure's width: constrained layout makes
    room for any number of lines, but a line wider than the figure is cut at both edges."""
    # DejaVu Sans averages about 0.55 em a character in running text; 0.6 leaves a margin
    chars = max(30, int(figure.get_figwidth() * 72 / (0.6 * fontsize)))
    lines = [line for paragraph in text.split("\n")
             for line in textwrap.wrap(paragraph, chars, break_on_hyphens=False) or [""]]
    figure.suptitle("\n".join(lines), fontsize=fontsize)


def _leader(rows: list[ConfigRow]) -> str:
    return next((row.label for row in rows if row.verdict.verdict == BEST), "none")


def _has_interval(verdict: evidence.Verdict) -> bool:
    return not any(math.isnan(end) for end in verdict.difference_interval)


def _test_accuracies(row: ConfigRow) -> list[float]:
    return [TrialRecord.of(t).metric("test_acc", math.nan) for t in row.trials]


def optuna_figures(study: optuna.Study, plan: StudyPlan) -> list[tuple[str, Figure]]:
    """Optuna's plots where they say something: the history only for samplers that learn from it
    (a grid's order is arbitrary), importance and parallel coordinates only with >= 2 varied params."""
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    metric = plan.definition.metric
    varied = [p.name for p in plan.definition.space
              if len({repr(t.params.get(p.name)) for t in complete}) > 1]
    wanted = []
    if complete and plan.definition.sampler != "grid":
        wanted.append(("optuna_optimization_history",
                       lambda: optuna_plots.plot_optimization_history(study, target_name=metric)))
    if len(complete) >= 2 and len(varied) >= 2:
        wanted.append(("optuna_parallel_coordinate", lambda: optuna_plots.plot_parallel_coordinate(
            study, params=varied, target_name=metric)))
        wanted.append(("optuna_param_importances",
                       lambda: optuna_plots.plot_param_importances(study, params=varied, target_name=metric)))
    result = []
    for name, draw in wanted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" notices of the matplotlib backend
            try:
                axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as error:  # too few distinct trials
                click.echo(f"note: skipped {name}: {error}", err=True)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(11, 6)
        result.append((name, figure))
    return result


def close(figure: Figure) -> None:
    """Optuna draws with pyplot, which keeps its figures alive until closed."""
    import matplotlib.pyplot as plt

    plt.close(figure)


def _positions(rows: list[ConfigRow], x: str) -> tuple[list, list[str], bool]:
    numeric = all(_numeric(row.params[x]) for row in rows)
    positions = [row.params[x] for row in rows] if numeric else list(range(len(rows)))
    return positions, [fmt_value(row.params[x]) for row in rows], numeric


def _x_axis(axes, name: str, positions, labels, numeric: bool, log: bool) -> None:
    if numeric and log and min(positions) > 0:
        axes.set_xscale("log", base=2 if all(float(p).is_integer() for p in positions) else 10)
    axes.set_xticks(positions, labels, rotation=30 if not numeric else 0)
    axes.minorticks_off()
    axes.set_xlabel(name)
    axes.grid(alpha=0.3)


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sort_key(value):
    return (0, value, "") if _numeric(value) else (1, 0, str(value))
