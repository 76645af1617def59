"""sweeps/report.py, report_text.py, sweep_figures.py, why_figures.py on constructed Optuna studies.

Each study is a real Optuna study (in memory) holding trials made with optuna.trial.create_trial and
the user attrs the runner stores: per-image correctness vectors built here so that each configuration's
true difference from the best is known by construction, per-epoch `history`, failures. One test logs
the report to a real MLflow store. Figures are checked for what they show (intervals, every
configuration named, divergence marked); tests that only check that a figure is drawn say "smoke".
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.collections import LineCollection
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from sweeps.analysis import evidence, report, why_figures
from sweeps.analysis import figures as sweep_figures
from sweeps.analysis import summary as summary_types
from sweeps.analysis import text as report_text
from sweeps.definitions.loader import parse_definition
from sweeps.definitions.plan import plan_studies

N_VAL = 2000
VERDICT_KEYS = {"label", "params", "trials", "run_ids", "seeds", "accuracy", "interval", "interval_kind",
                "diff_images", "p_value", "p_adjusted", "verdict", "method", "cost_seconds_per_epoch",
                "cost", "cost_name", "test_acc"}
WIDTHS = {"description": "Which hidden size works best?", "base": {"epochs": 3},
          "space": {"hidden_size": [256, 512, 1024, 2048]}, "plot": {"x": "hidden_size", "log_x": True}}


def plan_of(raw: dict, name: str = "question"):
    [plan] = plan_studies(parse_definition(raw, name=name, path=Path(f"{name}.yaml")))
    return plan


def right_on(accuracy: float, seed: int = 0) -> np.ndarray:
    vector = np.zeros(N_VAL, dtype=bool)
    vector[np.random.default_rng(seed).choice(N_VAL, size=round(N_VAL * accuracy), replace=False)] = True
    return vector


def losing(vector: np.ndarray, images: int, seed: int = 1) -> np.ndarray:
    """`vector` with `images` of its right answers made wrong: the best minus a known number of images."""
    out = vector.copy()
    out[np.random.default_rng(seed).choice(np.flatnonzero(vector), size=images, replace=False)] = False
    return out


def history(epochs: int = 3, *, val: float = 0.88, gap: float = 0.02, clip: float = 0.0,
            dead: float = 0.1) -> list[dict]:
    return [{"epoch": e, "train_loss": 0.6 / e, "train_acc": val + gap, "val_loss": 0.4, "val_acc": val,
             "lr": 0.03, "epoch_seconds": 1.0, "samples_per_second": 5e4, "grad_norm": 2.0 / e,
             "clip_fraction": clip, "dead_relu_fraction": dead} for e in range(1, epochs + 1)]


def add(study, plan, params: dict, *, correct=None, seed: int = 0, state=TrialState.COMPLETE,
        attrs: dict | None = None, accuracy: float | None = None) -> None:
    """A finished trial with the runner's user attrs; `correct` None: an old trial without vectors."""
    grid = plan.grid()
    params = dict(params, **({"seed": seed} if "seed" in grid else {}))
    distributions = {name: CategoricalDistribution(grid[name]) for name in params}
    user_attrs = {"seed": seed, "epoch_seconds": 1.0, "population": 1, "epochs": 3,
                  "mlflow_run_id": f"run-{len(study.trials)}"}
    value = None
    if state == TrialState.COMPLETE:
        value = float(correct.mean()) if correct is not None else accuracy
        user_attrs.update(test_acc=value - 0.005, test_loss=0.3, best_epoch=3, best_val_acc=value,
                          checkpoint="runs:/x/checkpoint.pt")
        if correct is not None:
            user_attrs.update(val_correct=evidence.pack_correct(correct), n_val=N_VAL,
                              history=history(val=value))
    user_attrs.update(attrs or {})
    curve = {1: 0.8, 2: 0.85, 3: value or 0.1}
    study.add_trial(create_trial(params=params, distributions=distributions, value=value, state=state,
                                 user_attrs=user_attrs, intermediate_values=curve))


def width_study():
    """One seed per width: 2048 best, 1024 four images behind (a tie), 512 and 256 far behind."""
    plan = plan_of(WIDTHS, "hidden_size")
    study = optuna.create_study(study_name=plan.study_name, direction="maximize")
    best = right_on(0.90)
    for width, lost in ((256, 120), (512, 80), (1024, 4), (2048, 0)):
        add(study, plan, {"hidden_size": width}, correct=losing(best, lost))
    return study, plan


@pytest.mark.unit
def test_conclusion_names_best_ties_worse_and_the_cheapest_tie():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    assert [row.label for row in summary.rows] == [f"hidden_size={w}" for w in (2048, 1024, 512, 256)]
    assert [row.vs_best for row in summary.rows] == ["best", "within noise", "worse", "worse"]
    assert summary.rows[1].verdict.discordant == (0, 4) and summary.rows[1].verdict.method == evidence.MCNEMAR
    assert summary.best_trial.params == {"hidden_size": 2048}
    text = summary.conclusion
    assert text.startswith("Which hidden size works best? hidden_size=2048 has the best validation accuracy")
    assert "Within noise of it: hidden_size=1024 (-0.0020, 0 images only it got right vs 4 only the " \
        "best" in text
    assert "Worse: hidden_size=512" in text and "hidden_size=256" in text.split("Worse:")[1]
    assert summary.cost_name == "parameters" and summary_types.parameter_count(1024) == 814_090
    assert "Cheapest within noise: hidden_size=1024 at 814,090 parameters" in text
    assert "seed-to-seed training noise" in text  # one seed: McNemar's blind spot is named
    answer = report_text.answer(summary)
    assert answer.index("| rank |") < answer.index("**Conclusion.**")
    assert " ".join(answer.split("**Conclusion.**")[1].split()) == text
    assert "val_acc [95% Wilson over images]" in answer and "| within noise |" in answer


@pytest.mark.unit
def test_seeds_give_t_intervals_a_bootstrap_and_failures_are_named():
    plan = plan_of({"description": "Which learning rate?", "base": {"epochs": 3}, "seeds": 2,
                    "space": {"lr": [0.01, 0.03, 1.0]}, "plot": {"x": "lr", "log_x": True}}, "learning_rate")
    study = optuna.create_study(direction="maximize")
    for seed in (0, 1):
        best = right_on(0.90, seed)
        add(study, plan, {"lr": 0.03}, correct=best, seed=seed)
        add(study, plan, {"lr": 0.01}, correct=losing(best, 150, seed), seed=seed)
        add(study, plan, {"lr": 1.0}, seed=seed, state=TrialState.FAIL,
            attrs={"failure": "training diverged: non-finite loss at epoch 1, step 7", "history": []})
    summary = report.summarise(study, plan)
    assert [(row.label, row.vs_best) for row in summary.rows] == [("lr=0.03", "best"), ("lr=0.01", "worse")]
    best, worse = (row.verdict for row in summary.rows)
    assert best.interval_kind == "t over seeds" and worse.method == evidence.BOOTSTRAP
    assert best.interval == pytest.approx(evidence.t_interval([t.value for t in summary.rows[0].trials]))
    assert "Failed, so not ranked: lr=1 (2 trials: training diverged: non-finite loss at epoch 1" in \
        summary.conclusion
    assert "Cheapest" not in summary.conclusion  # every configuration costs the same: nothing to pick by cost
    assert "95% t over seeds" in report_text.ranked_table(summary)


@pytest.mark.unit
def test_t_interval_known_value():
    low, high = evidence.t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / np.sqrt(3)  # t(0.975, 2) = 4.3027, sd = 1
    assert (low, high) == pytest.approx((2 - half, 2 + half), rel=1e-5)


@pytest.mark.unit
def test_old_study_without_vectors_still_reports_and_says_so(capsys):
    plan = plan_of(WIDTHS, "hidden_size")
    study = optuna.create_study(direction="maximize")
    for width, accuracy in ((256, 0.89), (512, 0.895), (1024, 0.90)):
        add(study, plan, {"hidden_size": width}, accuracy=accuracy)  # no val_correct, no history
    summary = report.summarise(study, plan)
    assert [row.vs_best for row in summary.rows] == ["best", "not tested", "not tested"]
    assert {row.verdict.interval_kind for row in summary.rows} == {"none"}
    assert "kept no per-image validation results" in summary.conclusion
    assert "nothing measures the noise" in summary.conclusion
    assert "no interval: one seed" in report_text.ranked_table(summary)
    assert why_figures.figures(plan, summary) == []
    assert "kept no per-epoch diagnostics" in capsys.readouterr().err
    records = report_text.verdict_records(summary)
    assert records[1]["interval"] == [None, None] and records[1]["p_value"] is None
    json.dumps(records, allow_nan=False)  # strict JSON: no NaN


@pytest.mark.unit
def test_old_study_with_seeds_falls_back_to_welch():
    plan = plan_of(dict(WIDTHS, seeds=2), "hidden_size")
    study = optuna.create_study(direction="maximize")
    for seed, (small, large) in enumerate(((0.80, 0.90), (0.801, 0.901))):
        add(study, plan, {"hidden_size": 256}, accuracy=small, seed=seed)
        add(study, plan, {"hidden_size": 1024}, accuracy=large, seed=seed)
    summary = report.summarise(study, plan)
    assert summary.rows[1].verdict.method == evidence.WELCH and summary.rows[1].vs_best == "worse"
    assert summary.rows[0].verdict.interval_kind == "t over seeds"
    assert "Welch" in summary.conclusion


@pytest.mark.unit
@pytest.mark.parametrize("fields, expected", [
    ({"clip_value"}, ["why_clipping"]), ({"clip_mode", "clip_value"}, ["why_clipping"]),
    ({"init"}, ["why_dead_units"]), ({"activation"}, ["why_dead_units"]), ({"lr"}, ["why_training_loss"]),
    ({"hidden_size"}, ["why_train_val_gap_vs_hidden_size"]), ({"impl"}, []),
    ({"hidden_size", "lr", "init", "clip_mode", "dropout"},
     ["why_clipping", "why_dead_units", "why_training_loss", "why_train_val_gap_vs_hidden_size"]),
])
def test_why_figure_follows_the_swept_fields(fields, expected):
    assert why_figures.chosen(fields) == expected


@pytest.mark.unit
def test_a_users_own_clip_value_sweep_gets_the_clipping_figure():
    plan = plan_of({"description": "my thresholds", "base": {"clip_mode": "norm"},
                    "space": {"clip_value": [0.5, 5.0]}}, "my_clipping")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    add(study, plan, {"clip_value": 0.5}, correct=best, attrs={"history": history(clip=0.8)})
    add(study, plan, {"clip_value": 5.0}, correct=losing(best, 10), attrs={"history": history(clip=0.1)})
    names = [name for name, _ in why_figures.figures(plan, report.summarise(study, plan))]
    assert names == ["why_clipping"]


def clipping_study():
    """The clipping sweep's seven bundles, two seeds each."""
    bundles = {"none": {"clip_mode": "none"}} | {
        f"{mode}-{value:g}": {"clip_mode": mode, "clip_value": value}
        for mode, values in (("value", (0.01, 0.1, 1.0)), ("norm", (0.5, 2.0, 10.0))) for value in values}
    plan = plan_of({"description": "clipping", "base": {"lr": 0.3}, "seeds": 2,
                    "space": {"clipping": {"bundles": bundles}}}, "clipping")
    study = optuna.create_study(direction="maximize")
    for seed in (0, 1):
        for index, label in enumerate(bundles):
            add(study, plan, {"clipping": label}, seed=seed, correct=losing(right_on(0.9, seed), index * 3),
                attrs={"history": history(clip=index / 10)})
    return study, plan


@pytest.mark.unit
def test_every_configuration_is_named_in_the_overlays():
    study, plan = clipping_study()
    summary = report.summarise(study, plan)
    labels = {row.label for row in summary.rows}
    assert len(labels) == 7
    drawn = dict(sweep_figures.figures(plan, summary) + why_figures.figures(plan, summary))
    for name in ("validation_curves", "accuracy_vs_clipping", "why_clipping"):
        named = {text.get_text() for legend in drawn[name].legends for text in legend.get_texts()}
        named |= {text.get_text() for axes in drawn[name].axes if axes.get_legend()
                  for text in axes.get_legend().get_texts()}
        assert labels <= named or name == "accuracy_vs_clipping", name
        if name == "accuracy_vs_clipping":  # configurations on the x axis instead
            ticks = {tick.get_text() for tick in drawn[name].axes[0].get_xticklabels()}
            assert {label.removeprefix("clipping=") for label in labels} <= ticks


@pytest.mark.unit
def test_more_configurations_than_a_legend_holds_get_a_colorbar():
    numeric = sweep_figures.palette([(f"lr={v}", v) for v in np.geomspace(0.001, 1, 14)], "lr", True)
    assert numeric.colorbar is not None and numeric.colorbar[1] == "lr"
    named = sweep_figures.palette([(f"init={i}", f"s{i}") for i in range(14)], "init", False)
    assert named.colorbar[1].startswith("rank by validation accuracy")
    few = sweep_figures.palette([(f"lr={v}", v) for v in (0.01, 0.1)], "lr", True)
    assert few.colorbar is None and list(few.colors) == ["lr=0.01", "lr=0.1"]


@pytest.mark.unit
def test_accuracy_figure_draws_the_wilson_intervals_of_the_table():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    figure = dict(sweep_figures.figures(plan, summary))["accuracy_vs_hidden_size"]
    axes = figure.axes[0]
    assert "Wilson" in axes.get_title()
    bars = next(c for c in axes.collections if isinstance(c, LineCollection))
    spans = sorted((round(seg[0][1], 6), round(seg[1][1], 6)) for seg in bars.get_segments())
    expected = sorted((round(r.verdict.interval[0], 6), round(r.verdict.interval[1], 6))
                      for r in summary.rows)
    assert spans == expected and all(high - low > 0.02 for low, high in spans)  # ~±0.013 on 2000 images


@pytest.mark.unit
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


@pytest.mark.unit
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


@pytest.mark.unit
def test_run_note_fits_mlflow_tag_limit_with_many_configurations():
    plan = plan_of({"description": "many", "space": {"weight_decay": [i * 1e-5 for i in range(40)]}}, "many")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    for index, value in enumerate(plan.grid()["weight_decay"]):
        add(study, plan, {"weight_decay": value}, correct=losing(best, index))
    summary = report.summarise(study, plan)
    note = report_text.run_note(summary)
    assert len(note) <= report_text.NOTE_LIMIT and note.startswith("**Conclusion.**")
    assert "| rank |" in note


@pytest.mark.integration
def test_build_report_logs_verdicts_note_and_figures_to_the_parent(mlflow_store, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    experiment_id = client.create_experiment("report-test")
    parent = client.create_run(experiment_id, tags={"mlflow.note.content": "the question"}).info.run_id
    study, plan = width_study()
    summary = report.build_report(study, plan, client, parent)
    run = client.get_run(parent)
    note = run.data.tags[report.NOTE_TAG]
    assert note.startswith("**Conclusion.** Which hidden size works best?") and "| hidden_size=2048 |" in note
    assert run.data.tags["best_run_id"] == summary.best_trial.user_attrs["mlflow_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent, "sweep")}
    assert {"sweep/accuracy_vs_hidden_size.png", "sweep/why_train_val_gap_vs_hidden_size.png",
            "sweep/verdicts.json", "sweep/summary.md", "sweep/summary.csv"} <= artifacts
    assert "sweep/optuna_optimization_history.png" not in artifacts  # a grid's trial order says nothing
    folder = Path(client.download_artifacts(parent, "sweep", str(tmp_path)))
    records = json.loads((folder / "verdicts.json").read_text())
    assert [set(record) for record in records] == [VERDICT_KEYS] * 4
    assert [(r["label"], r["verdict"]) for r in records][:2] == [("hidden_size=2048", "best"),
                                                                 ("hidden_size=1024", "within noise")]
    assert records[1]["diff_images"] == pytest.approx(-4) and records[1]["method"] == evidence.MCNEMAR
    assert records[0]["run_ids"] == ["run-3"] and records[0]["seeds"] == [0]
    markdown = (folder / "summary.md").read_text()
    assert " ".join(summary.conclusion.split()) in " ".join(markdown.split())
