"""The figures every sweep gets: validation curves, accuracy and time against the swept value, Optuna's plots.

Accuracies carry the same 95% intervals as the ranked table (report.summarise's verdicts): across seeds
with >= 2 seeds, Wilson over the validation images with one; the caption says which. Every
configuration is named: in a legend up to LEGEND_MAX of them, else a colorbar (the swept value where it
is a number, else the rank). why_figures.py adds the diagnostics that explain the outcome.
"""

from __future__ import annotations

import math
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
from optuna.trial import TrialState

from fmnist_tracking import plots
from sweeps.analysis import evidence
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
    """Validation curves and, with a plot axis, accuracy and seconds per epoch against it."""
    rows = ordered(summary.rows, plan)
    result = [("validation_curves", validation_curves(plan, summary, rows))] if rows else []
    x = plan.definition.plot_x
    along = [row for row in rows if x in row.params] if x else []
    if along:
        result += [(f"accuracy_vs_{x}", accuracy_vs(plan, summary, along, x)),
                   (f"epoch_seconds_vs_{x}", seconds_vs(plan, summary, along, x))]
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
    axes.set(xlabel="epoch", ylabel=name, title=f"{summary.study_name}: {name} per epoch (one line per seed)")
    axes.grid(alpha=0.3)
    plots.epoch_axis(axes)
    colors.finish(figure, axes)
    return figure


def accuracy_vs(plan: StudyPlan, summary: Summary, rows: list[ConfigRow], x: str) -> Figure:
    """Validation accuracy with the verdicts' intervals; test accuracy beside (t over seeds, if any)."""
    positions, labels, numeric = _positions(rows, x)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    means = np.array([row.verdict.accuracy for row in rows])
    lows, highs = (np.array([row.verdict.interval[i] for row in rows]) for i in (0, 1))
    below, above = np.nan_to_num(means - lows), np.nan_to_num(highs - means)
    axes.errorbar(positions, means, yerr=[below, above], marker="o", capsize=4,
                  label="validation (selected epoch)")
    tests = [[TrialRecord.of(t).metric("test_acc", math.nan) for t in row.trials] for row in rows]
    test_intervals = [evidence.t_interval(values, bounds=(0.0, 1.0)) for values in tests]
    test_means = np.array([np.mean(values) for values in tests])
    axes.errorbar(positions, test_means, marker="s", capsize=4, alpha=0.7, label="test (not used to choose)",
                  yerr=[np.nan_to_num(test_means - [lo for lo, _ in test_intervals]),
                        np.nan_to_num([hi for _, hi in test_intervals] - test_means)])
    for position, mean, row in zip(positions, means, rows, strict=True):
        axes.annotate(row.vs_best, (position, mean), textcoords="offset points", xytext=(6, -12), fontsize=7)
    _x_axis(axes, x, positions, labels, numeric, plan.definition.plot_log_x)
    kinds = sorted({row.verdict.interval_kind for row in rows})
    caption = "; ".join(INTERVAL_CAPTIONS[kind] for kind in kinds)
    seeded = all(len(row.trials) >= 2 for row in rows)
    test_caption = "test: t over seeds" if seeded else "test: one seed, no interval"
    axes.set(ylabel="accuracy",
             title=f"{summary.study_name}: accuracy vs {x}\nvalidation: {caption}; {test_caption}")
    axes.title.set_fontsize(9)
    axes.legend(fontsize="small")
    return figure


def seconds_vs(plan: StudyPlan, summary: Summary, rows: list[ConfigRow], x: str) -> Figure:
    positions, labels, numeric = _positions(rows, x)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for position, row in zip(positions, rows, strict=True):
        seconds = [TrialRecord.of(t).epoch_seconds for t in row.trials]
        axes.plot([position] * len(seconds), seconds, "o", color="tab:blue", alpha=0.6)
    axes.plot(positions, [row.seconds_per_epoch for row in rows], "-", color="tab:blue")
    _x_axis(axes, x, positions, labels, numeric, plan.definition.plot_log_x)
    axes.set(ylabel="seconds per epoch", title=f"{summary.study_name}: training time per epoch vs {x}\n"
             "(points: each seed; wall time of the population it trained in)")
    return figure


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
