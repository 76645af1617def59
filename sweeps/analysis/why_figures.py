"""Why a sweep came out as it did: per-configuration diagnostics from the trials' `history` user attrs.

Which figures a sweep gets follows from the RunConfig fields it varies (plan.definition.fields), not
from its name, so a user's own sweep of `clip_value` gets the clipping figure:
  clip_mode, clip_value         -> how often each setting clipped, and the gradient norm it saw
  init, init_scale, activation  -> never-positive (dead, for ReLU) units and gradient norm, first epochs
  lr, momentum, optimizer, warmup_epochs -> training loss per epoch, divergence marked
  hidden_size, dropout, weight_decay     -> train-validation gap against the value (overfitting)
Curves are the mean over a configuration's seeds. Studies from before `history` was kept get none.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fmnist_tracking import plots
from sweeps.analysis.figures import caption, ordered, palette, row_palette
from sweeps.trial_record import TrialRecord

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from sweeps.analysis.summary import ConfigRow, Summary
    from sweeps.definitions.plan import StudyPlan

CLIPPING_FIELDS = {"clip_mode", "clip_value"}
EARLY_FIELDS = {"init", "init_scale", "activation"}
STABILITY_FIELDS = {"lr", "momentum", "optimizer", "warmup_epochs"}
CAPACITY_FIELDS = ("hidden_size", "dropout", "weight_decay")  # the first one swept is the gap figure's x
EARLY_EPOCHS = 5  # what an init or activation does to the units shows in the first epochs


def chosen(fields: set[str]) -> list[str]:
    """The why-figures (artifact names) of a sweep that varies these RunConfig fields, in a fixed order."""
    names = []
    if fields & CLIPPING_FIELDS:
        names.append("why_clipping")
    if fields & EARLY_FIELDS:
        names.append("why_dead_units")
    if fields & STABILITY_FIELDS:
        names.append("why_training_loss")
    capacity = [name for name in CAPACITY_FIELDS if name in fields]
    if capacity:
        names.append(f"why_train_val_gap_vs_{capacity[0]}")
    return names


def figures(plan: StudyPlan, summary: Summary) -> list[tuple[str, Figure]]:
    names = chosen(plan.definition.fields)
    trials = [t for row in summary.rows for t in row.trials] + summary.failed
    if not names or not trials:
        return []
    if not any(history(t) for t in trials):
        click.echo(f"note: {summary.study_name} kept no per-epoch diagnostics (trials from before they were "
                   f"recorded): {', '.join(names)} not drawn", err=True)
        return []
    rows = ordered(summary.rows, plan)
    draw = {"why_clipping": lambda: clipping(plan, summary, rows),
            "why_dead_units": lambda: dead_units(plan, summary, rows),
            "why_training_loss": lambda: training_loss(plan, summary, rows)}
    return [(name, draw[name]() if name in draw else train_val_gap(plan, summary, rows,
                                                                 name.removeprefix("why_train_val_gap_vs_")))
            for name in names]


def history(trial: FrozenTrial) -> list[dict[str, float]]:
    return TrialRecord.of(trial).history


def mean_curve(trials, key: str, last_epoch: int | None = None) -> tuple[list[int], list[float]]:
    """Epochs and the mean of `key` over the trials that reached each epoch (early stops end sooner)."""
    by_epoch: dict[int, list[float]] = {}
    for trial in trials:
        for metrics in history(trial):
            if key in metrics and (last_epoch is None or metrics["epoch"] <= last_epoch):
                by_epoch.setdefault(int(metrics["epoch"]), []).append(float(metrics[key]))
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs]


def _two_panels(title: str) -> tuple[Figure, Any]:
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    axes = figure.subplots(1, 2, sharex=True)
    caption(figure, title, fontsize=10)
    for panel in axes:
        panel.grid(alpha=0.3)
        panel.set_xlabel("epoch")
        plots.epoch_axis(panel)
    return figure, axes


def _curves(axes, rows: list[ConfigRow], colors, key: str, last_epoch: int | None = None) -> None:
    for row in rows:
        epochs, values = mean_curve(row.trials, key, last_epoch)
        axes.plot(epochs, values, marker="o", markersize=3, color=colors.colors[row.label])


def clipping(plan: StudyPlan, summary: Summary, rows: list[ConfigRow]) -> Figure:
    colors = row_palette(rows, plan)
    figure, (share, norm) = _two_panels(f"{summary.study_name}: how often each setting clipped, and the "
                                        "gradient it saw (mean over seeds)")
    _curves(share, rows, colors, "clip_fraction")
    share.set(ylabel="fraction of steps clipped", ylim=(-0.03, 1.03))
    _curves(norm, rows, colors, "grad_norm")
    norm.set(ylabel="gradient L2 norm before clipping\n(mean over the epoch's steps)", yscale="log")
    colors.finish(figure, [share, norm])
    return figure


def dead_units(plan: StudyPlan, summary: Summary, rows: list[ConfigRow]) -> Figure:
    """The logged `dead_relu_fraction`: units whose pre-activation is <= 0 on every validation image.
    Dead (no gradient) for ReLU only; other activations still pass gradient there, so it is named so."""
    colors = row_palette(rows, plan)
    only_relu = {row.config.activation for row in rows} == {"relu"}
    name = "dead ReLU units" if only_relu else "never-positive units"
    meaning = "no gradient flows through them" if only_relu else \
        "dead (no gradient) for relu only; leaky_relu, elu and silu pass a small gradient there, tanh and " \
        "sigmoid a full one"
    figure, (dead, norm) = _two_panels(f"{summary.study_name}: {name} and gradient norm over the first "
                                       f"{EARLY_EPOCHS} epochs (mean over seeds). {name.capitalize()}: "
                                       f"pre-activation <= 0 on every validation image; {meaning}")
    _curves(dead, rows, colors, "dead_relu_fraction", EARLY_EPOCHS)
    dead.set(ylabel=f"fraction of {name}", ylim=(-0.03, 1.03))
    _curves(norm, rows, colors, "grad_norm", EARLY_EPOCHS)
    norm.set(ylabel="gradient L2 norm (mean over the epoch's steps)", yscale="log")
    colors.finish(figure, [dead, norm])
    return figure


def training_loss(plan: StudyPlan, summary: Summary, rows: list[ConfigRow]) -> Figure:
    """Training loss of every trial, COMPLETE and FAIL; a diverged trial ends in an x at its last finite
    epoch (at the top edge when it diverged in its first epoch)."""
    x = plan.definition.plot_x
    groups: dict[str, tuple[Any, list[FrozenTrial]]] = {row.label: (row.params.get(x), list(row.trials))
                                                         for row in rows}
    for label, failed in summary.failed_by_label().items():
        value, members = groups.get(label, (failed[0].params.get(x), []))
        groups[label] = (value, members + failed)
    entries = [(label, value) for label, (value, _) in groups.items()]
    if x and all(isinstance(v, (int, float)) for _, v in entries):
        entries.sort(key=lambda entry: entry[1])
    colors = palette(entries, x, plan.definition.plot_log_x)
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    for label, (_, trials) in groups.items():
        for trial in trials:
            points = [(m["epoch"], m["train_loss"]) for m in history(trial) if np.isfinite(m["train_loss"])]
            if points:
                axes.plot(*zip(*points, strict=True), color=colors.colors[label], alpha=0.8,
                          marker=plots.curve_marker(len(points)))
            if "diverged" in (TrialRecord.of(trial).failure or ""):
                _mark_divergence(axes, trial, points, colors.colors[label])
    axes.set(xlabel="epoch", ylabel="training loss (mean over the epoch)", yscale="log")
    caption(figure, f"{summary.study_name}: training loss per epoch, one line per seed", fontsize=10)
    axes.grid(alpha=0.3)
    plots.epoch_axis(axes)
    colors.extra = [Line2D([], [], marker="x", color="black", linestyle="", markersize=9,
                           label="diverged: last finite epoch")]
    colors.finish(figure, axes)
    return figure


def _mark_divergence(axes, trial: FrozenTrial, points: list, color) -> None:
    if points:
        axes.plot(*points[-1], marker="x", markersize=10, markeredgewidth=2, color=color)
        return
    found = re.search(r"epoch (\d+)", (TrialRecord.of(trial).failure or ""))
    epoch = int(found.group(1)) if found else 1
    axes.plot(epoch, 0.97, marker="x", markersize=10, markeredgewidth=2, color=color,
              transform=axes.get_xaxis_transform(), clip_on=False)


def train_val_gap(plan: StudyPlan, summary: Summary, rows: list[ConfigRow], field: str) -> Figure:
    """train_acc - val_acc at each trial's selected epoch (points), its mean per configuration (line), and
    the same at the last epoch (dashed): growing with capacity is the overfitting story."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    rows = sorted(rows, key=lambda row: getattr(row.config, field))
    for which, style in (("selected", "-o"), ("last", "--s")):
        values, means = [], []
        for row in rows:
            gaps = [gap for gap in (_gap(t, which) for t in row.trials) if gap is not None]
            values.append(getattr(row.config, field))
            means.append(float(np.mean(gaps)) if gaps else np.nan)
            axes.plot([values[-1]] * len(gaps), gaps, style[-1], color="gray", alpha=0.4, markersize=4)
        axes.plot(values, means, style, label=f"at the {which} epoch (mean over seeds)")
    if field == plan.definition.plot_x and plan.definition.plot_log_x:
        axes.set_xscale("log", base=2 if field == "hidden_size" else 10)
    ticks = sorted({getattr(row.config, field) for row in rows})
    axes.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
    axes.minorticks_off()
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set(xlabel=field, ylabel="train accuracy - validation accuracy")
    caption(figure, f"{summary.study_name}: train-validation gap vs {field}\n(train accuracy: the running "
                    "accuracy during the epoch, with dropout and augmentation where they are on)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _gap(trial: FrozenTrial, which: str) -> float | None:
    epochs = history(trial)
    if not epochs:
        return None
    if which == "last":
        metrics = epochs[-1]
    else:
        selected = [m for m in epochs if m["epoch"] == TrialRecord.of(trial).metric("best_epoch")]
        metrics = selected[0] if selected else epochs[-1]
    if "train_acc" not in metrics or "val_acc" not in metrics:
        return None
    return float(metrics["train_acc"] - metrics["val_acc"])
