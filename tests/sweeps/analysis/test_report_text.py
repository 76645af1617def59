"""sweeps/analysis/text.py: the answer as text (ranked table, conclusion, summary.csv, verdicts.json, the
run note), from summaries of constructed in-memory Optuna studies (support.add)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import optuna
import pytest
from support import VERDICT_KEYS, add, losing, plan_of, right_on, width_study

from fmnist_core.cost import parameter_count
from sweeps.analysis import report
from sweeps.analysis import text as report_text

pytestmark = pytest.mark.unit

CSV_COLUMNS = ["rank", "configuration", "seeds", "val_acc_mean", "val_acc_low95", "val_acc_high95",
               "interval_kind", "vs_best", "difference_images", "p_adjusted", "test_acc_mean", "parameters",
               "epoch_seconds_mean", "population", "trials", "run_ids"]


def many_study(count: int = 40):
    """`count` weight decays, each one image behind the one before: more rows than a terminal shows."""
    decays = [i * 1e-5 for i in range(count)]
    plan = plan_of({"description": "many", "space": {"weight_decay": decays}}, "many")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    for index, value in enumerate(plan.grid()["weight_decay"]):
        add(study, plan, {"weight_decay": value}, correct=losing(best, index))
    return study, plan


def test_run_note_fits_mlflow_tag_limit_with_many_configurations():
    study, plan = many_study()
    summary = report.summarise(study, plan)
    note = report_text.run_note(summary)
    assert len(note) <= report_text.NOTE_LIMIT and note.startswith("**Conclusion.**")
    assert "| rank |" in note


def test_run_note_keeps_the_conclusion_first_and_cuts_it_at_the_limit_when_it_alone_is_too_long():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    note = report_text.run_note(summary)
    assert note.index("**Conclusion.**") < note.index("| rank |")
    assert note.count("| hidden_size=") == 4  # a short study: every row fits
    wordy = dataclasses.replace(summary, conclusion="words " * 3000)
    cut = report_text.run_note(wordy)
    assert len(cut) == report_text.NOTE_LIMIT and cut.startswith("**Conclusion.** words")
    assert "| rank |" not in cut


def test_ranked_table_shows_terminal_rows_and_points_to_summary_md_for_the_rest():
    study, plan = many_study()
    summary = report.summarise(study, plan)
    shown = report_text.ranked_table(summary)
    rows = [line for line in shown.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == report_text.TERMINAL_ROWS
    assert f"... and {40 - report_text.TERMINAL_ROWS} more in the parent run's sweep/summary.md" in shown
    every = report_text.answer(summary, limit=None)
    assert len([line for line in every.splitlines() if "| weight_decay=" in line]) == 40
    assert "more in the parent run" not in every
    assert "Trials: 40 complete" in shown
    assert "Checkpoint of the recommended weight_decay=0: its best seed, 0 (trial 0)" in shown


def test_ranked_table_lists_parameters_only_where_they_differ():
    study, plan = width_study()
    widths = report_text.ranked_table(report.summarise(study, plan))
    header = next(line for line in widths.splitlines() if line.startswith("| rank"))
    assert "parameters" in header and "| 1,628,170 |" in widths  # 2048 wide: 784*2048 + 2048 + 10*2048 + 10
    study, plan = many_study(3)
    decays = report_text.ranked_table(report.summarise(study, plan))
    assert "parameters" not in next(line for line in decays.splitlines() if line.startswith("| rank"))


def test_conclusion_paragraph_is_one_line_the_ui_does_not_break():
    """The MLflow UI renders a note's line breaks: the hard-wrapped paragraph read "Within noise of / it:"."""
    study, plan = many_study(20)
    summary = report.summarise(study, plan)
    paragraph = report_text.conclusion_paragraph(summary)
    assert paragraph == "**Conclusion.** " + summary.conclusion and "\n" not in paragraph
    assert len(paragraph) > 200  # long enough that the old wrap at 100 characters broke it


def test_summary_csv_has_its_columns_and_a_row_per_configuration_best_first():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    reader = csv.reader(io.StringIO(report_text.summary_csv(summary)))
    assert next(reader) == CSV_COLUMNS
    rows = [dict(zip(CSV_COLUMNS, line, strict=True)) for line in reader]
    lower = "lower on these images (seed noise not measured)"
    assert [(r["rank"], r["configuration"], r["vs_best"]) for r in rows] == [
        ("1", "hidden_size=2048", "best"), ("2", "hidden_size=1024", "not shown different"),
        ("3", "hidden_size=512", lower), ("4", "hidden_size=256", lower)]
    best, tie = rows[0], rows[1]
    assert float(best["difference_images"]) == 0 and best["p_adjusted"] == ""  # the best is not tested
    assert tie["difference_images"] == "-4.0" and 0 < float(tie["p_adjusted"]) <= 1  # rounded as in verdicts
    assert float(best["val_acc_low95"]) < float(best["val_acc_mean"]) < float(best["val_acc_high95"])
    assert best["interval_kind"] == "Wilson" and best["parameters"] == "1628170"
    assert (best["trials"], best["run_ids"], best["population"]) == ("3", "run-3", "1")
    assert float(best["test_acc_mean"]) == pytest.approx(float(best["val_acc_mean"]) - 0.005)


def test_summary_csv_joins_the_seeds_of_a_configuration():
    plan = plan_of({"description": "lr", "seeds": 2, "space": {"lr": [0.01, 0.1]}}, "lr")
    study = optuna.create_study(direction="maximize")
    for seed in (0, 1):
        best = right_on(0.9, seed)
        add(study, plan, {"lr": 0.1}, correct=best, seed=seed, attrs={"population": 2 + seed})
        add(study, plan, {"lr": 0.01}, correct=losing(best, 60, seed), seed=seed)
    rows = list(csv.DictReader(io.StringIO(report_text.summary_csv(report.summarise(study, plan)))))
    assert [(r["configuration"], r["seeds"], r["trials"], r["run_ids"]) for r in rows] == [
        ("lr=0.1", "2", "0 2", "run-0 run-2"), ("lr=0.01", "2", "1 3", "run-1 run-3")]
    assert rows[0]["population"] == "3"  # the largest population any seed trained in
    assert rows[0]["interval_kind"] == "t over seeds"


def test_verdict_records_keep_the_keys_cli_best_reads_in_strict_json():
    study, plan = width_study()
    summary = report.summarise(study, plan)
    records = report_text.verdict_records(summary)
    assert [set(record) for record in records] == [VERDICT_KEYS] * 4
    assert [record["label"] for record in records] == [row.label for row in summary.rows]  # best first
    best, tie = records[0], records[1]
    assert best["verdict"] == "best" and best["params"] == {"hidden_size": 2048}
    assert best["trials"] == [3] and best["run_ids"] == ["run-3"] and best["seeds"] == [0]
    assert tie["diff_images"] == -4 and tie["cost_name"] == "parameters" and tie["cost"] == 814_090
    assert all(low < high for low, high in (record["interval"] for record in records))
    assert json.loads(json.dumps(records, allow_nan=False)) == records


def test_verdict_records_take_the_seed_from_the_param_of_an_old_grid_with_seeds():
    plan = plan_of(dict({"description": "w", "space": {"hidden_size": [64, 128]}}, seeds=2), "w")
    study = optuna.create_study(direction="maximize")
    for seed in (0, 1):
        add(study, plan, {"hidden_size": 128}, correct=right_on(0.9, seed), seed=seed, seed_param=True,
            attrs={"seed": None})  # no recorded seed: the old grid's seed param says it
    [record] = report_text.verdict_records(report.summarise(study, plan))
    assert record["seeds"] == [0, 1] and record["label"] == "hidden_size=128"


def test_the_one_seed_answer_never_says_worse_in_the_table_the_note_or_the_verdict_file():
    """Issue 24: one seed's McNemar "worse" read like a decided verdict in the terminal's heading, the table's
    column, the run note and verdicts.json (false in 8-37% of sweeps of identical configurations)."""
    study, plan = width_study()
    summary = report.summarise(study, plan)
    lower = "lower on these images (seed noise not measured)"
    table = report_text.ranked_table(summary)
    assert f"| {lower} |" in table and "| worse |" not in table
    note = report_text.run_note(summary)
    assert "worse" not in note.split("One seed per configuration")[0].lower()
    assert f"{lower[0].upper()}{lower[1:]}: hidden_size=512" in note
    records = report_text.verdict_records(summary)
    assert [r["verdict"] for r in records[2:]] == [lower, lower]


def test_the_verdict_column_says_worse_within_the_margin():
    """A decided "worse" whose interval also lies within the margin (issue 24: they were exclusive)."""
    plan = plan_of({"description": "close", "space": {"hidden_size": [64, 128]}, "seeds": 5}, "close")
    study = optuna.create_study(direction="maximize")
    best = right_on(0.9)
    for seed in range(5):  # 0.25 pp below in every seed, no seed noise: an interval inside (-0.5, 0) pp
        add(study, plan, {"hidden_size": 128}, correct=best, seed=seed)
        add(study, plan, {"hidden_size": 64}, correct=losing(best, round(0.0025 * len(best))), seed=seed)
    summary = report.summarise(study, plan)
    row = summary.rows[1]
    assert row.vs_best == "worse" and row.verdict.within_margin
    assert "| worse, within ±0.5 pp |" in report_text.ranked_table(summary)
    assert "Within ±0.5 pp of it: hidden_size=64" in summary.conclusion
    assert "worse, and within the margin" in summary.conclusion
    # the pick is said once, by the recommendation, with its cost (it was also "Use hidden_size=64: ...")
    assert (f"Recommended: hidden_size=64 (the cheapest of the best and those within ±0.5 pp of it, at "
            f"{parameter_count(64):,} parameters; ") in summary.conclusion
    assert "Use " not in summary.conclusion and summary.conclusion.count("Recommended:") == 1


def test_cli_best_reads_the_one_seed_word():
    """`best` reads a verdicts file in sweeps/analysis/words.py's words (fmnist_tracking/verdicts.py knows
    none): the one-seed word is read, not a KeyError, and an all-"lower" sweep is said as such."""
    from fmnist_tracking.verdicts import RunInSweep
    from sweeps.analysis import evidence, words
    from sweeps.analysis.standing import standing

    records = [{"label": "a", "verdict": words.BEST, "run_ids": ["run-a"], "accuracy": 0.9},
               {"label": "b", "verdict": words.LOWER, "p_adjusted": 0.001, "method": evidence.MCNEMAR,
                "run_ids": ["run-b"], "accuracy": 0.89}]
    [said] = standing(RunInSweep("run-a", 0.9, "s", records))
    assert "every other configuration is lower on these images" in said and "worse" not in said
