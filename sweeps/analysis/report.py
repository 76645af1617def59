"""A sweep's answer: which configuration won, by how much, whether that is noise, and what to use.

Everything is computed from the Optuna study, so `python cli.py report NAME` can rebuild it at any
time. A configuration is a trial's params without the seed. Its COMPLETE seeds become an
evidence.ConfigResult: per-image correctness vectors where the trials kept them (user attrs
`last_correct`, at the last epoch: chosen on no image; for trials before 7 December 2026 `val_correct`,
at the epoch chosen on these very images), otherwise per-seed
validation accuracies (studies run before the vectors were kept: seed intervals and Welch's t-test
only, and the conclusion says so). evidence.compare_to_best ranks them and tests each against the best;
wording.conclusion puts it into words.

The answer goes to the terminal (`answer`), to the parent run's `sweep/summary.md`, `summary.csv`
and `verdicts.json` (read by `cli.py best`), and to the parent's run note (the tag
`mlflow.note.content`, shown on the run's Overview page in the MLflow UI). Figures are in
figures.py (accuracy, curves, cost, Optuna) and why_figures.py (the diagnostics behind the
outcome). Test accuracy is reported beside, never used to choose.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter

import click
import numpy as np
import optuna
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from optuna.trial import FrozenTrial, TrialState

from fmnist_core import data as fdata
from fmnist_core.config import ConfigError, RunConfig, first_line
from fmnist_core.cost import parameter_count, training_flops
from fmnist_tracking import run_log
from fmnist_tracking.names import NOTE_TAG, SWEEP_ARTIFACT_DIR
from fmnist_tracking.verdicts import log_verdicts
from sweeps import trial_record as record
from sweeps.analysis import evidence, recommend, rounds, why_figures, wording
from sweeps.analysis import figures as sweep_figures
from sweeps.analysis.summary import ConfigRow, Summary, label_of
from sweeps.analysis.text import answer, run_note, summary_csv, verdict_records
from sweeps.definitions.plan import StudyPlan
from sweeps.trial_record import TrialRecord, config_key


def summarise(study: optuna.Study, plan: StudyPlan, state: str = "final") -> Summary:
    """Group COMPLETE trials by configuration, compare every configuration with the best, recommend one, say
    it in words. `state`: "final" (the sweep closed), "running" (after a round) or "stopped" (a re-run
    goes on): how settled the recommendation is (recommend.py)."""
    trials = study.get_trials(deepcopy=False)
    groups: dict[tuple, list[FrozenTrial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            groups.setdefault(config_key(trial), []).append(trial)
    configs = {key: record.trained_config(plan, members[0]) for key, members in groups.items()}
    seconds = {key: float(np.mean([TrialRecord.of(t).epoch_seconds for t in members]))
               for key, members in groups.items()}
    costs, cost_name = _costs(configs)
    labels = _labels(groups)
    finished = [t for members in groups.values() for t in members]
    judged = record.judged_vectors(finished)
    results = {key: _evidence(labels[key], members, [judged[t.number] for t in members], costs[key],
                              plan.definition.metric)
               for key, members in groups.items()}
    vectors = all(result.correct for result in results.values())
    seeded = any(len(members) >= 2 for members in groups.values())
    decided = rounds.state(study, plan, trials) if results and vectors and (plan.decides or seeded) else None
    if decided is not None:  # decide.py's verdicts: rounds replayed, or the fixed design's one look
        verdicts = evidence.compare_to_best([results[key] for key in decided.keys], rule=plan.rule,
                                            decision=decided.decision)
        leader = results[decided.keys[decided.decision.final.leader]]
        left_out = [key for key in sorted(results, key=lambda k: -results[k].accuracy)
                    if key not in decided.keys]
        verdicts += [evidence.untested(results[key], leader, f"not among the {plan.confirm} confirmed")
                     for key in left_out]
    else:
        verdicts = evidence.compare_to_best(list(results.values()), rule=plan.rule)
    key_of = {results[key].label: key for key in groups}  # one to one: labels are unique (_labels)
    rows = [ConfigRow(dict(key_of[v.label]), configs[key_of[v.label]], tuple(groups[key_of[v.label]]), v,
                      seconds[key_of[v.label]], bool(results[key_of[v.label]].correct)) for v in verdicts]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    recommendation = recommend.recommend(rows, sweep=plan.definition.name, state=state,
                                         direction=plan.definition.direction,
                                         max_seeds=plan.max_seeds if plan.decides else None,
                                         cost_name=cost_name)
    chosen = None if recommendation is None else \
        next(t for row in rows for t in row.trials if t.number == recommendation.trial)
    at_last = record.at_last_epoch(finished)
    metric_name = "validation accuracy at the last epoch" if at_last else "validation accuracy" \
        if plan.definition.metric == "val_acc" else \
        f"validation accuracy (at the epochs {plan.definition.metric} selected)"
    summary = Summary(plan.study_name, plan.definition.description, plan.definition.metric, rows,
                      dict(Counter(t.state.name for t in trials)), chosen, failed, cost_name, "",
                      rounds=rounds.history(decided) if decided is not None and plan.decides else [],
                      margin=plan.rule.margin if decided is not None else None,
                      recommendation=recommendation, at_last_epoch=at_last)
    text = wording.conclusion(verdicts, plan.definition.description, metric_name, cost_name,
                               spent=decided.spent if decided is not None and plan.decides else None,
                               decision=decided.decision if decided is not None else None)
    said = [recommendation.sentence()] if recommendation is not None else []
    return dataclasses.replace(summary, conclusion=" ".join([text, *said, *_failures(summary),
                                                             *_missing_vectors(rows)]))


def _labels(keys) -> dict[tuple, str]:
    """configuration key -> its label, one label per configuration: two sampled points that print alike
    (labels keep 4 significant digits) are spelled in full, so they stay two rows, never one."""
    short = {key: label_of(dict(key)) for key in keys}
    shared = {label for label, count in Counter(short.values()).items() if count > 1}
    return {key: ", ".join(f"{name}={value!r}" for name, value in key) if label in shared else label
            for key, label in short.items()}


def _evidence(label: str, members: list[FrozenTrial], vectors: list[np.ndarray | None], cost: float,
              metric: str) -> evidence.ConfigResult:
    """Per-image vectors (`vectors`, the judged ones) when every seed kept one, else per-seed validation
    accuracies."""
    records = [TrialRecord.of(t) for t in members]
    tests = [r.metric("test_acc") for r in records]
    test_acc = float(np.mean(tests)) if all(v is not None for v in tests) else None
    if all(v is not None for v in vectors):
        return evidence.ConfigResult(label, correct=vectors, cost=cost, test_acc=test_acc)
    accuracies = [r.metric("best_val_acc", t.value if metric == "val_acc" else math.nan)
                  for r, t in zip(records, members, strict=True)]
    return evidence.ConfigResult(label, accuracies=accuracies, cost=cost, test_acc=test_acc)


def _costs(configs: dict[tuple, RunConfig]) -> tuple[dict[tuple, float], str]:
    """What "cheapest" means here: the parameter count where it differs between configurations, else the
    training FLOPs of the run (fmnist_core/cost.py) where they differ, else nothing (all cost the same:
    no cheapest to name). Never seconds: they wobble with the machine's load, a pack's members share
    theirs (an init trained alone in a pack of one looked twice as cheap as eight packed together), and
    the recommendation must be the same on any machine."""
    parameters = {key: float(parameter_count(config.hidden_size)) for key, config in configs.items()}
    if len(set(parameters.values())) > 1:
        return parameters, "parameters"
    flops = {key: float(training_flops(config) * config.epochs) for key, config in configs.items()}
    if len(set(flops.values())) > 1:
        return flops, "training FLOPs"
    return {key: math.nan for key in configs}, ""


def _failures(summary: Summary) -> list[str]:
    """A sentence naming the configurations whose trials failed (diverged), which are not ranked."""
    described = [f"{label} ({len(trials)} trial{'s' if len(trials) > 1 else ''}: "
                 f"{TrialRecord.of(trials[0]).failure or 'no reason recorded'})"
                 for label, trials in summary.failed_by_label().items()]
    return [f"Failed, so not ranked: {'; '.join(described)}."] if described else []


def _missing_vectors(rows: list[ConfigRow]) -> list[str]:
    missing = [row for row in rows if not row.vectors_kept]
    if not missing:
        return []
    which = "This study's trials" if len(missing) == len(rows) else \
        f"{len(missing)} of the {len(rows)} configurations"
    return [f"{which} kept no per-image validation results (trained before they were recorded), so only "
            "seed accuracies are compared: intervals and Welch's t-test over seeds where there are >= 2, "
            "and with one seed nothing measures the noise."]


def build_report(study: optuna.Study, plan: StudyPlan, client, run_id: str,
                 splits: fdata.Splits | None = None, *, state: str = "final",
                 figures: bool = True) -> Summary:
    """Summarise the study; log figures, tables, verdicts with the recommendation, the run note and the
    recommendation's tags and metrics to the parent, each child run's `verdict`/`recommended` tags, and
    the recommendation to the study (its optuna-dashboard note). With `splits` (the sweep closing), the
    recommended trial's run also gets its own figures, which a sweep makes for no other trial
    (lease.TrialLease.close): `cli.py figures RUN_ID` makes them for any run. `state` and `figures=False`:
    the answer so far, after a round or when the sweep stops (no figures: they cost more than the rest)."""
    summary = summarise(study, plan, state)
    drawn = sweep_figures.figures(plan, summary) + why_figures.figures(plan, summary) + \
        sweep_figures.optuna_figures(study, plan) if figures else []
    for name, figure in drawn:
        # ours are laid out (constrained) when drawn; "tight" (Optuna's) draws the whole figure once more
        tight = None if figure.get_layout_engine() is not None else {"bbox_inches": "tight"}
        client.log_figure(run_id, figure, f"{SWEEP_ARTIFACT_DIR}/{name}.png", save_kwargs=tight)
        sweep_figures.close(figure)
    client.log_text(run_id, summary_csv(summary), f"{SWEEP_ARTIFACT_DIR}/summary.csv")
    client.log_text(run_id, answer(summary, limit=None) + "\n", f"{SWEEP_ARTIFACT_DIR}/summary.md")
    chosen = summary.recommendation
    log_verdicts(client, run_id, verdict_records(summary), chosen.as_record() if chosen else None)
    finished = sum(summary.counts.values())
    # every state, 0 included: MLflow shows a metric's latest value, so a state that empties (the waiting
    # trials of a round, once trained) must be logged as 0, not left at its last count
    metrics = {f"trials_{state.name.lower()}": summary.counts.get(state.name, 0) for state in TrialState}
    tags = {NOTE_TAG: run_note(summary)}
    if chosen is not None:
        metrics.update(chosen.parent_metrics())
        tags.update(chosen.parent_tags(summary.rows))
        record.recommend(study, chosen.as_record(), note=answer(summary, limit=None))
    client.log_batch(run_id, metrics=[Metric(key, float(value), int(time.time() * 1000), finished)
                                      for key, value in metrics.items()],
                     tags=[RunTag(key, str(value)) for key, value in tags.items()])  # race-safe
    for child, child_tags in recommend.child_tags(summary.rows, chosen).items():
        try:
            client.log_batch(child, tags=[RunTag(key, value) for key, value in child_tags.items()])
        except MlflowException:  # a run of another store (a study resumed elsewhere): its tags stay
            pass
    if splits is not None and chosen is not None and chosen.run_id:
        try:
            run_log.log_figures(client, chosen.run_id, splits)
        except (ConfigError, MlflowException) as error:  # e.g. a study resumed against another store
            click.echo(f"note: the recommended run's figures were not made: {first_line(error)}", err=True)
    return summary
