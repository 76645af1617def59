"""What a sweep's parent run holds: the figures that answer its question, Optuna's plots, a ranked table.

Everything is computed from the Optuna study (params, states, per-epoch values, and the user
attrs the runner stores: seed, test_acc, epoch_seconds, mlflow_run_id), so `python cli.py
report NAME` can rebuild it at any time. A configuration is a trial's params without the seed;
its seeds give a mean and a 95% interval (Student's t), and a configuration is "within noise"
of the best when Welch's t-test cannot tell them apart at the 5% level (needs >= 2 seeds each).
Seconds per epoch are wall time of the population a trial was trained in (column `population`).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field

import click
import optuna
from matplotlib.figure import Figure
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from fmnist_core.config import ConfigError
from fmnist_tracking import store
from sweeps.definitions import load_definition
from sweeps.study import PARENT_ATTR, StudyPlan, default_storage, load_study, plan_studies

ARTIFACT_DIR = "sweep"
CONFIDENCE = 0.95


@dataclass
class ConfigRow:
    """One configuration (params without the seed) over its COMPLETE seeds."""

    params: dict
    trials: list[FrozenTrial]
    value: tuple[float, float]  # mean, 95% half-width of the objective (best epoch's value)
    test_acc: tuple[float, float]
    epoch_seconds: tuple[float, float]
    vs_best: str = "n/a"  # best | within noise | worse | n/a (fewer than 2 seeds)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items()) or "base"


@dataclass
class Summary:
    study_name: str
    metric: str
    rows: list[ConfigRow]  # ranked, best first
    counts: dict[str, int] = field(default_factory=dict)  # trial state name -> number of trials
    best_trial: FrozenTrial | None = None


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (NaN with fewer than 2 values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)


def within_noise(best: list[float], other: list[float]) -> bool | None:
    """Welch's t-test at 5%: True when the difference could be noise; None without 2 seeds each."""
    if len(best) < 2 or len(other) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "precision loss" when the seeds agree exactly
        p_value = stats.ttest_ind(best, other, equal_var=False).pvalue
    if math.isnan(p_value):  # no spread at all: noise cannot explain a difference
        return sum(best) / len(best) == sum(other) / len(other)
    return bool(p_value >= 1 - CONFIDENCE)


def rebuild_reports(name, *, impl: str | None = None, storage: str | None = None,
                    tracking_uri: str | None = None,
                    experiment: str = store.DEFAULT_EXPERIMENT) -> list[Summary]:
    """`python cli.py report NAME`: the parent runs' figures and tables, made again from the studies."""
    plans = plan_studies(load_definition(name), impl=impl)
    storage = storage or default_storage(tracking_uri)
    client, _ = store.setup(tracking_uri, experiment, create=False)
    summaries = []
    for plan in plans:
        study = load_study(plan, storage)
        parent_id = study.user_attrs.get(PARENT_ATTR)
        try:
            client.get_run(parent_id or "none")
        except MlflowException:
            raise ConfigError(f"the parent run {parent_id} of study {plan.study_name!r} is not in this "
                              "MLflow store; pass the --tracking-uri and --experiment of the sweep") from None
        summaries.append(build_report(study, plan, client, parent_id))
        click.echo(f"Report of {plan.study_name} logged to MLflow run {parent_id}")
        click.echo(ranked_table(summaries[-1]))
    return summaries


def summarise(study: optuna.Study, plan: StudyPlan) -> Summary:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    groups: dict[tuple, list[FrozenTrial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            groups.setdefault(config_key(trial), []).append(trial)
    maximize = plan.definition.direction == "maximize"
    def attr(members: list[FrozenTrial], key: str) -> tuple[float, float]:
        return mean_interval([t.user_attrs.get(key, math.nan) for t in members])

    rows = [ConfigRow(params=dict(key), trials=members, value=mean_interval([t.value for t in members]),
                      test_acc=attr(members, "test_acc"), epoch_seconds=attr(members, "epoch_seconds"))
            for key, members in groups.items()]
    rows.sort(key=lambda row: -row.value[0] if maximize else row.value[0])
    if rows:
        best_values = [t.value for t in rows[0].trials]
        rows[0].vs_best = "best"
        for row in rows[1:]:
            verdict = within_noise(best_values, [t.value for t in row.trials])
            row.vs_best = "n/a" if verdict is None else "within noise" if verdict else "worse"
    best = max(rows[0].trials, key=lambda t: t.value if maximize else -t.value) if rows else None
    return Summary(plan.study_name, plan.definition.metric, rows, counts, best)


def config_key(trial: FrozenTrial) -> tuple:
    return tuple((k, v) for k, v in trial.params.items() if k != "seed")


def build_report(study: optuna.Study, plan: StudyPlan, client, run_id: str) -> Summary:
    """Summarise the study and log figures, tables and best-trial tags to the parent run."""
    summary = summarise(study, plan)
    figures = question_figures(study, plan, summary) + optuna_figures(study, plan)
    for name, figure in figures:
        client.log_figure(run_id, figure, f"{ARTIFACT_DIR}/{name}.png", save_kwargs={"bbox_inches": "tight"})
        _close(figure)
    client.log_text(run_id, summary_csv(summary), f"{ARTIFACT_DIR}/summary.csv")
    client.log_text(run_id, ranked_table(summary, limit=None), f"{ARTIFACT_DIR}/summary.md")
    for state, count in summary.counts.items():
        client.log_metric(run_id, f"trials_{state.lower()}", count)
    if summary.best_trial is not None:
        best = summary.best_trial
        client.log_metric(run_id, f"best_{plan.definition.metric}", best.value)
        tags = {"best_trial": best.number, "best_run_id": best.user_attrs.get("mlflow_run_id"),
                "best_checkpoint": best.user_attrs.get("checkpoint"),
                "best_params": ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())}
        client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])  # race-safe
    return summary


def summary_csv(summary: Summary) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "configuration", "seeds", f"{summary.metric}_mean", f"{summary.metric}_ci95",
                     "test_acc_mean", "test_acc_ci95", "epoch_seconds_mean", "population", "vs_best",
                     "trials", "run_ids"])
    for rank, row in enumerate(summary.rows, 1):
        population = max(t.user_attrs.get("population", 1) for t in row.trials)
        writer.writerow([rank, row.label, len(row.trials), *row.value, *row.test_acc, row.epoch_seconds[0],
                         population, row.vs_best, " ".join(str(t.number) for t in row.trials),
                         " ".join(t.user_attrs.get("mlflow_run_id", "") for t in row.trials)])
    return out.getvalue()


def ranked_table(summary: Summary, limit: int | None = 15) -> str:
    """Markdown: configurations ranked by mean objective, with 95% intervals over seeds."""
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.counts.items()))
    lines = [f"### {summary.study_name}: ranked by mean {summary.metric} over seeds",
             f"Trials: {counts or 'none'}", "",
             f"| rank | configuration | seeds | {summary.metric} | test_acc | s/epoch | vs best |",
             "|---:|---|---:|---|---|---:|---|"]
    for rank, row in enumerate(summary.rows[:limit], 1):
        lines.append(f"| {rank} | {row.label} | {len(row.trials)} | {_pm(row.value)} | {_pm(row.test_acc)} "
                     f"| {row.epoch_seconds[0]:.2f} | {row.vs_best} |")
    if limit is not None and len(summary.rows) > limit:
        more = len(summary.rows) - limit
        lines.append(f"\n... and {more} more in the parent run's {ARTIFACT_DIR}/summary.md")
    if summary.best_trial is not None:
        best = summary.best_trial
        lines.append(f"\nBest trial {best.number}: {summary.metric} {best.value:.4f}, "
                     f"test_acc {best.user_attrs.get('test_acc', math.nan):.4f}, "
                     f"run {best.user_attrs.get('mlflow_run_id')}")
    return "\n".join(lines)


def question_figures(study: optuna.Study, plan: StudyPlan, summary: Summary) -> list[tuple[str, Figure]]:
    """Validation curves per configuration and, with a plot axis, accuracy and time vs that parameter."""
    metric = plan.definition.metric
    error = metric == "val_acc"  # plot the validation error, where differences are easier to see
    x = plan.definition.plot_x
    order = {value: i for p in plan.definition.space if p.name == x for i, value in enumerate(p.choices)}

    def along_x(row: ConfigRow):
        return order.get(row.params.get(x), len(order)), _sort_key(row.params.get(x, 0))

    rows = sorted(summary.rows, key=along_x) if x else summary.rows
    curves = Figure(figsize=(7, 4.5), layout="constrained")
    axes = curves.subplots()
    for index, row in enumerate(rows):
        color = _color(index, len(rows))
        for number, trial in enumerate(row.trials):
            steps = sorted(trial.intermediate_values)
            values = [trial.intermediate_values[s] for s in steps]
            axes.plot(steps, [1 - v for v in values] if error else values, color=color, alpha=0.8,
                      label=(row.label if x else f"trial {trial.number}") if number == 0 and len(rows) <= 12
                      else None)
    axes.set(xlabel="epoch", ylabel="validation error" if error else metric,
             title=f"{plan.study_name}: {'validation error' if error else metric} per epoch")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figures = [("validation_curves", curves)]
    rows = [r for r in rows if x in r.params] if x else []
    if not rows:
        return figures
    labels = [_fmt(r.params[x]) for r in rows]
    numeric = all(isinstance(r.params[x], (int, float)) and not isinstance(r.params[x], bool) for r in rows)
    positions = [r.params[x] for r in rows] if numeric else list(range(len(rows)))
    accuracy = Figure(figsize=(7, 4.5), layout="constrained")
    axes = accuracy.subplots()
    series = ((f"validation ({metric}, best epoch)", lambda r: r.value), ("test", lambda r: r.test_acc))
    for name, pick in series:
        means = [pick(r)[0] for r in rows]
        halves = [0 if math.isnan(pick(r)[1]) else pick(r)[1] for r in rows]
        axes.errorbar(positions, means, yerr=halves, marker="o", capsize=4, label=name)
    _x_axis(axes, x, positions, labels, numeric, plan.definition.plot_log_x)
    axes.set(ylabel="accuracy" if metric == "val_acc" else metric,
             title=f"{plan.study_name}: accuracy vs {x}\n(mean and 95% interval over seeds)")
    axes.legend()
    seconds = Figure(figsize=(7, 4.5), layout="constrained")
    axes = seconds.subplots()
    axes.errorbar(positions, [r.epoch_seconds[0] for r in rows], marker="o", capsize=4,
                  yerr=[0 if math.isnan(r.epoch_seconds[1]) else r.epoch_seconds[1] for r in rows])
    _x_axis(axes, x, positions, labels, numeric, plan.definition.plot_log_x)
    axes.set(ylabel="seconds per epoch", title=f"{plan.study_name}: training time per epoch vs {x}")
    return figures + [(f"accuracy_vs_{x}", accuracy), (f"epoch_seconds_vs_{x}", seconds)]


def optuna_figures(study: optuna.Study, plan: StudyPlan) -> list[tuple[str, Figure]]:
    """Optuna's own plots, where they have something to show (matplotlib backend)."""
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = [p.name for p in plan.definition.space]  # the seed is not a hyperparameter
    metric = plan.definition.metric
    wanted = []
    if complete:
        wanted.append(("optuna_optimization_history",
                       lambda: optuna_plots.plot_optimization_history(study, target_name=metric)))
    varied = [p for p in params if len({repr(t.params.get(p)) for t in complete}) > 1]
    if len(complete) >= 2 and len(varied) >= 2:  # with one parameter these say no more than the table
        wanted.append(("optuna_parallel_coordinate", lambda: optuna_plots.plot_parallel_coordinate(
            study, params=varied, target_name=metric)))
        wanted.append(("optuna_param_importances",
                       lambda: optuna_plots.plot_param_importances(study, params=varied, target_name=metric)))
    figures = []
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
        figures.append((name, figure))
    return figures


def _x_axis(axes, name: str, positions, labels, numeric: bool, log: bool) -> None:
    if numeric and log:
        axes.set_xscale("log", base=2 if all(float(p).is_integer() for p in positions) else 10)
    axes.set_xticks(positions, labels, rotation=30 if not numeric else 0)
    axes.minorticks_off()
    axes.set_xlabel(name)
    axes.grid(alpha=0.3)


def _close(figure: Figure) -> None:
    """Optuna draws with pyplot, which keeps its figures alive until closed."""
    import matplotlib.pyplot as plt

    plt.close(figure)


def _color(index: int, count: int):
    from matplotlib import colormaps

    return colormaps["viridis"](index / max(1, count - 1) * 0.9)


def _pm(pair: tuple[float, float]) -> str:
    mean, half = pair
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))
