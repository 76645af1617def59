"""A sweep's answer as text: the ranked table, the conclusion, summary.csv, verdicts.json and the run note.

One ranked table (markdown) serves the terminal, `sweep/summary.md` and the parent run's note in the
MLflow UI; the conclusion is report.summarise's, word for word, in all three. Each accuracy carries
its 95% interval and the header says which kind: across seeds (Student's t) with >= 2 seeds, else
Wilson over the validation images (one seed: seed-to-seed training noise is not in it).
"""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING

import numpy as np

from fmnist_tracking.names import SWEEP_ARTIFACT_DIR
from sweeps.analysis.words import BEST, WORSE, p_shown
from sweeps.trial_record import TrialRecord, seed_of

if TYPE_CHECKING:
    from sweeps.analysis.summary import ConfigRow, Summary

TERMINAL_ROWS = 15  # rows printed in the terminal; summary.md has them all
NOTE_LIMIT = 8000  # characters: MLflow's limit on a tag value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH)
INTERVAL_KINDS = {"t over seeds": "95% t over seeds", "Wilson": "95% Wilson over images",
                  "none": "no interval: one seed, no per-image results"}


def answer(summary: Summary, limit: int | None = TERMINAL_ROWS) -> str:
    """What `cli.py sweep` and `cli.py report` print, and summary.md holds: the table, the rounds of a
    decided sweep, then the conclusion."""
    return f"{ranked_table(summary, limit)}\n\n{rounds_section(summary)}{conclusion_paragraph(summary)}"


def rounds_section(summary: Summary) -> str:
    """A decided sweep's line per round (markdown list), or nothing."""
    if not summary.rounds:
        return ""
    return "**Rounds.**\n" + "".join(f"- {line}\n" for line in summary.rounds) + "\n"


def run_note(summary: Summary) -> str:
    """The parent run's note (markdown): the conclusion first, where the Overview page shows it, then the
    table, with as many rows as MLflow's limit on a tag value allows."""
    head = f"{conclusion_paragraph(summary)}\n\n{rounds_section(summary)}"
    for limit in (None, TERMINAL_ROWS, 5, 1, 0):
        note = head + ranked_table(summary, limit)
        if len(note) <= NOTE_LIMIT:
            return note
    return head[:NOTE_LIMIT]


def conclusion_paragraph(summary: Summary) -> str:
    """One line: the MLflow UI renders a note's line breaks, so a hard-wrapped paragraph read "Within
    noise of / it:"; terminals and editors wrap it themselves."""
    return "**Conclusion.** " + summary.conclusion


def ranked_table(summary: Summary, limit: int | None = TERMINAL_ROWS) -> str:
    """Markdown: configurations ranked by mean validation accuracy, with intervals, verdicts and p-values."""
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.counts.items()))
    kinds = sorted({row.verdict.interval_kind for row in summary.rows})
    header = INTERVAL_KINDS[kinds[0]] if len(kinds) == 1 else "95%; (t) over seeds, (W) Wilson over images"
    show_parameters = len({row.parameters for row in summary.rows}) > 1
    objective = [] if summary.metric == "val_acc" else [summary.metric]
    decided = summary.margin is not None
    tests = ["difference to best, pp [interval]"] if decided else ["difference", "p (Holm)"]
    # a pack's members share its wall time: the column says so rather than pricing 512 units like 2048
    packed = any(TrialRecord.of(t).population > 1 for row in summary.rows for t in row.trials)
    columns = ["rank", "configuration", "seeds", f"val_acc [{header}]", *objective, "vs best",
               *tests, "test_acc", *(["parameters"] if show_parameters else []),
               "s/epoch of its pack" if packed else "s/epoch"]
    ranked = "val_acc at the last epoch" if summary.at_last_epoch else "val_acc at the selected epoch"
    lines = [f"### {summary.study_name}: ranked by mean {ranked}",
             f"Trials: {counts or 'none'}", "", "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c in ("configuration", "vs best") else "---:" for c in columns) + "|"]
    for rank, row in enumerate(summary.rows[:limit], 1):
        cells = [str(rank), row.label, str(len(row.trials)), _accuracy(row, len(kinds) > 1),
                 *[_number(float(np.mean([t.value for t in row.trials]))) for _ in objective], _vs_best(row),
                 *([_decided_difference(row)] if decided else [_difference(row), _p(row.verdict.p_adjusted)]),
                 _number(_test_acc(row)),
                 *([f"{row.parameters:,}"] if show_parameters else []), _number(row.seconds_per_epoch, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    if limit is not None and len(summary.rows) > limit:
        more = len(summary.rows) - limit
        lines.append(f"\n... and {more} more in the parent run's {SWEEP_ARTIFACT_DIR}/summary.md")
    if summary.recommended_trial is not None:
        chosen = summary.recommended_trial
        lines.append(f"\nCheckpoint of the recommended {summary.recommendation.label}: its best seed, "
                     f"{seed_of(chosen)} (trial {chosen.number}): {summary.metric} {chosen.value:.4f}, "
                     f"test_acc {TrialRecord.of(chosen).metric('test_acc', math.nan):.4f}, "
                     f"run {TrialRecord.of(chosen).run_id}")
    return "\n".join(lines)


def summary_csv(summary: Summary) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rank", "configuration", "seeds", "val_acc_mean", "val_acc_low95", "val_acc_high95",
                     "interval_kind", "vs_best", "difference_images", "p_adjusted", "test_acc_mean",
                     "parameters", "epoch_seconds_mean", "population", "trials", "run_ids"])
    for rank, row in enumerate(summary.rows, 1):
        verdict = row.verdict
        population = max(TrialRecord.of(t).population for t in row.trials)
        writer.writerow([rank, row.label, len(row.trials), *map(_csv, (verdict.accuracy, *verdict.interval)),
                         verdict.interval_kind, verdict.verdict, _blank(_rounded(verdict.difference_images)),
                         _blank(verdict.p_adjusted), _blank(_csv(_test_acc(row))), row.parameters,
                         _csv(row.seconds_per_epoch), population, " ".join(str(t.number) for t in row.trials),
                         " ".join(TrialRecord.of(t).run_id or "" for t in row.trials)])
    return out.getvalue()


def verdict_records(summary: Summary) -> list[dict]:
    """sweep/verdicts.json, best first; `cli.py best` reads it (keep the key names). NaN becomes null."""
    records = []
    for row in summary.rows:
        verdict = row.verdict
        records.append({
            "label": row.label, "params": row.params, "trials": [t.number for t in row.trials],
            "run_ids": [TrialRecord.of(t).run_id for t in row.trials],
            "seeds": [seed_of(t) for t in row.trials],
            "accuracy": verdict.accuracy, "interval": [_null(v) for v in verdict.interval],
            "interval_kind": verdict.interval_kind, "diff_images": _rounded(verdict.difference_images),
            "p_value": verdict.p_value, "p_adjusted": verdict.p_adjusted, "verdict": verdict.verdict,
            "method": verdict.method, "margin": verdict.margin,
            "difference": _null(verdict.difference),
            "difference_interval": [_null(v) for v in verdict.difference_interval],
            "decided_at": verdict.decided_at, "within_margin": verdict.within_margin,
            "cost_seconds_per_epoch": _null(row.seconds_per_epoch),
            "cost": _null(verdict.cost), "cost_name": summary.cost_name,  # as the conclusion prices
            "test_acc": verdict.test_acc})
    return records


def _accuracy(row: ConfigRow, mixed: bool) -> str:
    verdict = row.verdict
    low, high = verdict.interval
    if verdict.interval_kind == "none":
        return f"{verdict.accuracy:.4f}"
    mark = {"t over seeds": " (t)", "Wilson": " (W)"}[verdict.interval_kind] if mixed else ""
    return f"{verdict.accuracy:.4f} [{low:.4f}, {high:.4f}]{mark}"


def _difference(row: ConfigRow) -> str:
    verdict = row.verdict
    if verdict.verdict == BEST:
        return ""
    images = verdict.difference_images
    if images is None:
        return f"{100 * verdict.difference:+.2f} pp"
    shown = f"{images:+.0f}" if len(row.trials) == 1 else f"{images:+.1f}"
    return f"{100 * verdict.difference:+.2f} pp ({shown} images)"


def _vs_best(row: ConfigRow) -> str:
    """The verdict column: the verdict's word (one seed: "lower on these images (seed noise not
    measured)", never "worse"), and for a decided "worse" within the margin, that too."""
    verdict = row.verdict
    if verdict.verdict == WORSE and verdict.within_margin and verdict.margin is not None:
        return f"worse, within ±{100 * verdict.margin:.2g} pp"
    return verdict.verdict


def _decided_difference(row: ConfigRow) -> str:
    """The difference to the best in percentage points, with the interval its verdict rests on."""
    verdict = row.verdict
    if verdict.verdict == BEST:
        return ""
    low, high = verdict.difference_interval
    span = "" if math.isnan(low) else f" [{100 * low:+.2f}, {100 * high:+.2f}]"
    return f"{100 * verdict.difference:+.2f}{span}"


def _test_acc(row: ConfigRow) -> float:
    return math.nan if row.verdict.test_acc is None else row.verdict.test_acc


def _p(value: float | None) -> str:
    return "" if value is None else p_shown(value, 3)


def _number(value: float, digits: int = 4) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _csv(value: float) -> float:
    """An accuracy, interval end or seconds for summary.csv: 6 decimals, not the float dust of a mean
    (0.8977999999999999); NaN stays NaN (blank)."""
    return value if math.isnan(value) else round(value, 6)


def _rounded(images: float | None) -> float | None:
    """A count of images (a mean over seeds): the float dust of accuracy x n removed."""
    return None if images is None else round(images, 3)


def _null(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def _blank(value: float | None):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value
