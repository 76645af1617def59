"""sweeps/analysis/report.py: a study summarised (summarise) and logged to the parent run (build_report).

Each study is a real Optuna study (in memory) holding trials made with optuna.trial.create_trial and
the user attrs the runner stores (support.add): per-image correctness vectors built so that each
configuration's true difference from the best is known by construction, per-epoch `history`, failures.
One test logs the report to a real MLflow store. The text, the figures and the summary types have test
modules of their own (test_report_text, test_sweep_figures, test_why_figures, test_summary).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from support import VERDICT_KEYS, WIDTHS, add, losing, plan_of, right_on, width_study

from fmnist_core.cost import parameter_count
from sweeps import trial_record as record
from sweeps.analysis import evidence, report, why_figures
from sweeps.analysis import text as report_text
from sweeps.trial_record import seed_of


@pytest.mark.unit
def test_conclusion_names_best_ties_worse_and_the_cheapest_tie():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    assert [row.label for row in summary.rows] == [f"hidden_size={w}" for w in (2048, 1024, 512, 256)]
    assert [row.vs_best for row in summary.rows] == ["best", "not shown different", *[evidence.LOWER] * 2]
    assert summary.rows[1].verdict.discordant == (0, 4) and summary.rows[1].verdict.method == evidence.MCNEMAR
    assert summary.recommended_trial.params == {"hidden_size": 2048}
    chosen = summary.recommendation  # one seed: the highest, and said to be undecided
    assert (chosen.label, chosen.decision, chosen.seeds) == ("hidden_size=2048", "undecided", 1)
    assert chosen.next_command == "python cli.py sweep hidden_size --fresh --max-seeds 5"
    text = summary.conclusion
    assert "Recommended: hidden_size=2048 (the highest validation accuracy; one seed measures no seed " \
        "noise, so nothing is decided; undecided;" in text
    assert text.startswith("Which hidden size works best? hidden_size=2048 has the best validation accuracy")
    assert "Not shown different from it: hidden_size=1024 (-0.20 pp, 0 images only it got right vs 4 only " \
        "the best" in text
    lower = "Lower on these images (seed noise not measured):"
    assert f"{lower} hidden_size=512" in text and "hidden_size=256" in text.split(lower)[1]
    assert summary.cost_name == "parameters" and parameter_count(1024) == 814_090
    assert "Cheapest of those not shown different: hidden_size=1024 at 814,090 parameters; not a tie" in text
    assert "seed-to-seed training noise" in text  # one seed: McNemar's blind spot is named
    answer = report_text.answer(summary)
    assert answer.index("| rank |") < answer.index("**Conclusion.**")
    assert " ".join(answer.split("**Conclusion.**")[1].split()) == text
    assert "val_acc [95% Wilson over images]" in answer and "| not shown different |" in answer


@pytest.mark.unit
def test_seeds_give_t_intervals_decided_verdicts_and_failures_are_named():
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
    assert best.interval_kind == "t over seeds" and worse.method == evidence.DECIDED
    assert worse.margin == plan.rule.margin and worse.difference_interval[1] < 0
    assert best.interval == pytest.approx(evidence.t_interval([t.value for t in summary.rows[0].trials]))
    assert "Failed, so not ranked: lr=1 (2 trials: training diverged: non-finite loss at epoch 1" in \
        summary.conclusion
    assert "Cheapest" not in summary.conclusion  # every configuration costs the same: nothing to pick by cost
    assert "95% t over seeds" in report_text.ranked_table(summary)


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
def test_summarise_ranks_complete_trials_only_and_counts_every_state():
    """PRUNED and RUNNING trials are counted but not ranked; FAIL trials are listed apart."""
    plan = plan_of(WIDTHS, "hidden_size")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    add(study, plan, {"hidden_size": 1024}, correct=best)
    add(study, plan, {"hidden_size": 512}, correct=losing(best, 40))
    add(study, plan, {"hidden_size": 256}, state=TrialState.PRUNED)
    add(study, plan, {"hidden_size": 2048}, state=TrialState.FAIL, attrs={"failure": "out of memory"})
    summary = report.summarise(study, plan)
    assert [row.label for row in summary.rows] == ["hidden_size=1024", "hidden_size=512"]
    assert summary.counts == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
    assert [t.params for t in summary.failed] == [{"hidden_size": 2048}]
    assert "Failed, so not ranked: hidden_size=2048 (1 trial: out of memory)." in summary.conclusion
    assert summary.recommended_trial.params == {"hidden_size": 1024}


@pytest.mark.unit
def test_a_minimised_objective_picks_the_lowest_seed_as_best_trial():
    plan = plan_of({"description": "loss", "base": {"epochs": 3}, "seeds": 2,
                    "objective": {"metric": "val_loss"}, "space": {"lr": [0.01, 0.1]}}, "loss")
    study = optuna.create_study(direction="minimize")
    for seed, (loss, accuracy) in enumerate(((0.40, 0.88), (0.30, 0.87))):  # the trial's value is its loss
        add(study, plan, {"lr": 0.1}, accuracy=loss, seed=seed, attrs={"best_val_acc": accuracy})
    summary = report.summarise(study, plan)
    assert summary.recommended_trial.value == 0.30 and seed_of(summary.recommended_trial) == 1
    assert (summary.recommendation.seed, summary.recommendation.val_acc) == (1, pytest.approx(0.875))
    assert summary.rows[0].verdict.accuracy == pytest.approx(0.875)  # ranked on validation accuracy still


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
    assert run.data.tags["recommended_run_id"] == summary.recommended_trial.user_attrs["mlflow_run_id"]
    assert (run.data.tags["recommended"], run.data.tags["decision"]) == ("hidden_size=2048", "undecided")
    assert run.data.tags["seeds"] == ", ".join(f"hidden_size={w}: 1" for w in (2048, 1024, 512, 256))
    assert run.data.metrics["recommended_val_acc"] == pytest.approx(summary.rows[0].verdict.accuracy)
    assert "best_val_acc" not in run.data.metrics  # one seed's value is not the sweep's answer
    artifacts = {a.path for a in client.list_artifacts(parent, "sweep")}
    assert {"sweep/accuracy_vs_hidden_size.png", "sweep/why_train_val_gap_vs_hidden_size.png",
            "sweep/verdicts.json", "sweep/summary.md", "sweep/summary.csv"} <= artifacts
    assert "sweep/optuna_optimization_history.png" not in artifacts  # a grid's trial order says nothing
    folder = Path(client.download_artifacts(parent, "sweep", str(tmp_path)))
    document = json.loads((folder / "verdicts.json").read_text())
    records = document["configurations"]
    assert document["recommended"] == summary.recommendation.as_record()
    assert [set(record) for record in records] == [VERDICT_KEYS] * 4
    assert [(r["label"], r["verdict"]) for r in records][:2] == [("hidden_size=2048", "best"),
                                                                 ("hidden_size=1024", "not shown different")]
    assert records[1]["diff_images"] == pytest.approx(-4) and records[1]["method"] == evidence.MCNEMAR
    assert records[0]["run_ids"] == ["run-3"] and records[0]["seeds"] == [0]
    markdown = (folder / "summary.md").read_text()
    assert " ".join(summary.conclusion.split()) in " ".join(markdown.split())


@pytest.mark.integration
def test_the_parents_trial_counts_drop_to_zero_when_a_state_empties(mlflow_store):
    """A round's queued trials show as trials_waiting on the parent; once they are trained the next report
    says 0 waiting, not the last count that had any (MLflow shows a metric's latest value)."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    parent = client.create_run(client.create_experiment("counts-test")).info.run_id
    study, plan = width_study()
    study.enqueue_trial({"hidden_size": 2048})  # a second seed of the best, queued
    report.build_report(study, plan, client, parent, state="running", figures=False)
    assert client.get_run(parent).data.metrics["trials_waiting"] == 1
    study, plan = width_study()
    add(study, plan, {"hidden_size": 2048}, correct=losing(right_on(0.90), 2), seed=1)
    report.build_report(study, plan, client, parent, figures=False)
    metrics = client.get_run(parent).data.metrics
    assert (metrics["trials_complete"], metrics["trials_waiting"], metrics["trials_fail"]) == (5, 0, 0)


@pytest.mark.unit
def test_summary_csv_holds_rounded_numbers_not_float_dust():
    import csv
    import io

    study, plan = width_study()
    rows = list(csv.DictReader(io.StringIO(report_text.summary_csv(report.summarise(study, plan)))))
    columns = ("val_acc_mean", "val_acc_low95", "val_acc_high95", "test_acc_mean", "epoch_seconds_mean")
    cells = [row[column] for row in rows for column in columns if row[column] not in ("", "nan")]
    assert cells and all(len(cell.partition(".")[2]) <= 6 for cell in cells), cells


@pytest.mark.unit
def test_one_seed_differences_are_in_pp_and_said_without_a_double_negative():
    plan = plan_of(WIDTHS, "hidden_size")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    add(study, plan, {"hidden_size": 2048}, correct=best)
    add(study, plan, {"hidden_size": 512}, correct=losing(best, 300))
    add(study, plan, {"hidden_size": 256}, correct=losing(best, 400))
    summary = report.summarise(study, plan)
    assert {row.vs_best for row in summary.rows[1:]} == {evidence.LOWER}
    assert "Every other configuration is shown lower." in summary.conclusion
    assert "not shown different" not in summary.conclusion.lower().split("caveat")[0]
    assert "hidden_size=512 (-15.00 pp, " in summary.conclusion  # one unit, pp, as the decided verdicts
    table = report_text.ranked_table(summary)
    assert "| -15.00 pp (-300 images) |" in table


@pytest.mark.unit
def test_two_sampled_points_that_print_alike_stay_two_rows():
    """Labels keep 4 significant digits; rows are joined by configuration, so two sampled learning rates
    that round alike are two configurations with their own trials, not one row with a merged seed."""
    plan = plan_of({"description": "lr", "sampler": "tpe", "budget": {"n_trials": 4},
                    "space": {"lr": {"low": 0.001, "high": 0.1, "log": True}}}, "lr")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    space = {"lr": optuna.distributions.FloatDistribution(0.001, 0.1, log=True)}
    for lr, correct in ((0.0123451, best), (0.0123452, losing(best, 40))):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions=space,
            value=float(correct.mean()), user_attrs={"seed": 0, "val_correct": record.pack_correct(correct),
                                                     "n_val": len(correct), "mlflow_run_id": f"run-{lr}"}))
    summary = report.summarise(study, plan)
    assert len(summary.rows) == 2 and [len(row.trials) for row in summary.rows] == [1, 1]
    assert [row.label for row in summary.rows] == ["lr=0.0123451", "lr=0.0123452"]
    assert summary.rows[0].params == {"lr": 0.0123451}


@pytest.mark.unit
def test_the_verdicts_and_the_table_judge_on_the_last_epochs_when_every_trial_kept_its_vector():
    plan = plan_of({"description": "Which learning rate?", "base": {"epochs": 3}, "seeds": 2,
                    "space": {"lr": [0.01, 0.03]}}, "learning_rate")

    def study_of(last_everywhere: bool):
        study = optuna.create_study(direction="maximize")
        for seed in (0, 1):
            shared = right_on(0.90, seed)
            for lr, selected in ((0.03, shared), (0.01, losing(shared, 150, seed))):
                # best epochs' vectors: lr=0.01 lower by 1.5 pp; last epochs': the same images right
                keep = last_everywhere or (lr, seed) != (0.01, 1)
                add(study, plan, {"lr": lr}, correct=selected, seed=seed,
                    attrs={"last_correct": record.pack_correct(shared)} if keep else None)
        return study

    summary = report.summarise(study_of(True), plan)
    mean = float((right_on(0.90, 0).mean() + right_on(0.90, 1).mean()) / 2)
    assert summary.at_last_epoch
    assert [row.verdict.accuracy for row in summary.rows] == pytest.approx([mean] * 2)
    assert all(row.vs_best != "worse" for row in summary.rows)
    assert "ranked by mean val_acc at the last epoch" in report_text.ranked_table(summary)
    assert "best validation accuracy at the last epoch" in summary.conclusion
    mixed = report.summarise(study_of(False), plan)  # one trial without: every trial on its own best epoch
    assert not mixed.at_last_epoch and [row.vs_best for row in mixed.rows] == ["best", "worse"]
    assert "ranked by mean val_acc at the selected epoch" in report_text.ranked_table(mixed)


@pytest.mark.unit
def test_seconds_never_price_the_pick_so_a_pack_of_one_is_not_cheaper():
    plan = plan_of({"description": "Which init?", "base": {"epochs": 3}, "seeds": 3,
                    "space": {"init": ["xavier_uniform", "kaiming_uniform"]}}, "init")
    study = optuna.create_study(direction="maximize")
    shared = right_on(0.90)
    for seed in range(3):
        # the same images right at every seed (no seed noise) but one: within the margin of each other;
        # kaiming_uniform trained alone (a pack of one: its epoch took half the seconds of the pack of
        # eight that trained xavier_uniform)
        add(study, plan, {"init": "xavier_uniform"}, correct=shared, seed=seed,
            attrs={"epoch_seconds": 4.5, "population": 8})
        add(study, plan, {"init": "kaiming_uniform"}, correct=losing(shared, 1), seed=seed,
            attrs={"epoch_seconds": 2.2, "population": 1})
    summary = report.summarise(study, plan)
    assert summary.cost_name == "" and [row.label for row in summary.rows] == ["init=xavier_uniform",
                                                                               "init=kaiming_uniform"]
    assert summary.rows[1].verdict.within_margin
    chosen = summary.recommendation
    assert chosen.label == "init=xavier_uniform"  # the best: the two cost the same
    assert chosen.why.startswith("the best; within ±0.5 pp of it, at the same cost: init=kaiming_uniform")
    assert "cheapest" not in summary.conclusion and "s/epoch" not in chosen.why
