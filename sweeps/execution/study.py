"""From a plan to an Optuna study: the sampler, creating or loading the study, its queue and counts.

Kept apart from the trial loop (runner.py) so that creating a study and working on one are
separate steps: any number of workers can `open_study` the same plan and run trials on it.
Exactly one of them creates it (the storage's unique study name decides); the others wait
until the creator has stored the study's settings, which it does last.

A grid is a queue: every grid point (x seed) is enqueued as a WAITING trial when the study is
created, and workers only take queued trials (trials.claim_population), which the storage hands out
atomically. Optuna's GridSampler is not used for it: it does not count queued trials as
visited, fails on the last tell of a one-point grid with queued trials, and with several
workers samples a point that is still running elsewhere again.

A study stores its plan's settings (sweeps/definitions/plan.py); re-running with other settings is
refused rather than mixing trials trained differently in one study (--fresh replaces the study).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from fmnist_core.config import ConfigError
from fmnist_tracking import store
from sweeps import trial_record as record
from sweeps.definitions.plan import StudyPlan
from sweeps.definitions.rule import Rule
from sweeps.definitions.schema import make_pruner

STORAGE_FILE = "optuna.db"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StudyError(ConfigError):
    """The stored study cannot be used as asked; the message says what to do."""


def default_storage(tracking_uri: str | None = None) -> str:
    """SQLite `optuna.db` next to MLflow's SQLite database (mlruns/ by default)."""
    uri = store.resolve_tracking_uri(tracking_uri)
    folder = Path(uri.removeprefix("sqlite:///")).resolve().parent if uri.startswith("sqlite:///") \
        else store.STORE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / STORAGE_FILE}"


def make_sampler(plan: StudyPlan) -> optuna.samplers.BaseSampler:
    d = plan.definition
    if d.sampler == "grid":
        # Never consulted: every grid trial comes from the queue with all its params fixed.
        return optuna.samplers.RandomSampler(seed=0)
    if d.sampler == "random":
        return optuna.samplers.RandomSampler(seed=d.sampler_options.get("seed"))
    # constant_liar: trials asked together (a population) are steered apart from each other.
    return optuna.samplers.TPESampler(constant_liar=True, **d.sampler_options)


def open_study(plan: StudyPlan, storage, *, fresh: bool = False) -> tuple[optuna.Study, bool]:
    """(study, created): create the plan's study, or load it when it exists (another worker made it,
    or the sweep resumes); `fresh` deletes a stored one first.

    Two workers creating at once is safe: the storage refuses the second name, which then loads.
    Its MLflow runs are kept when a study is deleted; a new parent run is made for the new study.
    """
    d = plan.definition
    if fresh:
        try:
            optuna.delete_study(study_name=plan.study_name, storage=storage)
        except KeyError:
            pass  # nothing stored yet
    sampler, pruner = make_sampler(plan), make_pruner(d.pruner, d.pruner_options)
    try:
        study, created = optuna.create_study(storage=storage, study_name=plan.study_name, sampler=sampler,
                                             pruner=pruner, direction=d.direction), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=plan.study_name, storage=storage, sampler=sampler,
                                           pruner=pruner), False
    name_objective(study, d.metric)
    return study, created


def name_objective(study: optuna.Study, metric: str) -> None:
    """The objective's name in the study (optuna-dashboard and Optuna's plots say `val_acc`, not
    "Objective 0"); older studies get it when they resume."""
    if study.metric_names != [metric]:
        with warnings.catch_warnings():  # set_metric_names is marked experimental since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])


def check_settings(study: optuna.Study, plan: StudyPlan, storage_label: str) -> bool:
    """True when the study's stored settings are the plan's, False when none are stored yet;
    a study trained with other settings is refused rather than mixed."""
    wanted = json.loads(json.dumps(plan.settings()))  # as the storage will give it back
    stored = record.settings(study)
    if stored is None:
        return False
    if stored != wanted:
        raise StudyError(f"study {plan.study_name!r} in {storage_label} was trained with other settings "
                         f"({_difference(stored, wanted)}); re-run with the old settings to resume it, or "
                         "add --fresh to start it again")
    return True


def as_trained(study: optuna.Study, plan: StudyPlan) -> StudyPlan:
    """The plan as the study was run: a sweep decided with --max-seeds/--margin/--confirm (or a fixed
    --seeds N) is reported as it was run, whatever the definition's defaults say today."""
    stored = record.settings(study) or {}
    decide = stored.get("decide")
    seeds = stored.get("seeds", plan.seeds)
    if decide is None:
        return dataclasses.replace(plan, rounds=False, confirm=0, seeds=seeds)
    rule = Rule(**{k: v for k, v in decide.items() if k != "budget"})  # studies of 4 Dec 2026 stored one
    confirm = int(stored.get("confirm") or 0)
    return dataclasses.replace(plan, rule=rule, rounds=not confirm, confirm=confirm, seeds=seeds)


def mark_ready(study: optuna.Study, plan: StudyPlan) -> None:
    """Store the settings: the last step of creating a study, which other workers wait for."""
    if record.settings(study) is None:
        record.store_settings(study, plan.definition.name, json.loads(json.dumps(plan.settings())))


def wait_until_ready(study: optuna.Study, timeout: float) -> bool:
    """Wait for the worker creating the study to finish (its settings appear); False on timeout."""
    deadline = time.monotonic() + timeout
    while record.settings(study) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def enqueue_grid(study: optuna.Study, plan: StudyPlan) -> int:
    """Queue every grid point (x seed) that has no trial yet; returns how many were queued.

    With an n_trials budget below the grid size, a seeded random subset of that size is queued.
    Only the study's creator (or `--create`) calls this, so two workers never queue the same point.
    """
    if plan.definition.sampler != "grid":
        return 0
    grid = plan.grid()
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if plan.rounds:  # a decided sweep's round 1: seed 0 of every point (rounds.py queues the rest)
        points = [point for point in points if point[record.SEED_PARAM] == 0]
    total = plan.total_trials()
    if total is not None and total < len(points):
        random.Random(0).shuffle(points)
        points = points[:total]
    def key(params: dict, seed: int) -> tuple:
        return _point_key({**params, record.SEED_PARAM: seed} if plan.seed_axis else params)

    taken = {key(record.params_of(t), record.seed_of(t)) for t in study.get_trials(deepcopy=False)}
    missing = []
    for point in points:
        params = {name: value for name, value in point.items() if name != record.SEED_PARAM}
        if key(params, point.get(record.SEED_PARAM, 0)) not in taken:
            missing.append((params, point.get(record.SEED_PARAM)))
    for params, seed in missing:  # a seed axis' seed goes in the trial's record, not its params
        study.enqueue_trial(params, user_attrs=None if seed is None else record.seeded_as(seed))
    return len(missing)


def trials_done(study: optuna.Study) -> int:
    """Finished trials that count against the budget; a failed trial that was re-queued does not."""
    trials = study.get_trials(deepcopy=False)
    retried = record.retried(trials)
    return sum(t.state in FINISHED_STATES and t.number not in retried for t in trials)


def trials_claimed(study: optuna.Study) -> int:
    """Trials that count against the budget once finished: all but the failed ones that were re-queued."""
    trials = study.get_trials(deepcopy=False)
    retried = record.retried(trials)
    return sum(t.number not in retried for t in trials)


def study_done(study: optuna.Study, plan: StudyPlan) -> bool:
    """Nothing queued or running, and (TPE/random) the budget is used up; a timeout-only budget never is."""
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        return False
    total = plan.total_trials()
    return plan.definition.sampler == "grid" or (total is not None and trials_claimed(study) >= total)


def _point_key(params: dict) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def load_study(plan: StudyPlan, storage, storage_label: str | None = None) -> optuna.Study:
    """The plan's stored study (for reports and repairs); an error if the sweep never ran."""
    try:
        return optuna.load_study(study_name=plan.study_name, storage=storage, sampler=make_sampler(plan))
    except KeyError:
        raise no_study(plan, storage_label or without_password(storage)) from None


def no_study(plan: StudyPlan, where: str) -> StudyError:
    """The plan's study is not in the storage `where`: run the sweep first."""
    return StudyError(f"no study {plan.study_name!r} in {where}; run `python cli.py sweep "
                      f"{plan.definition.name}` first (same --impl and --storage)")


def _difference(stored: dict, wanted: dict) -> str:
    changes = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if key == "base" and isinstance(old, dict) and isinstance(new, dict):
            changes += [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                        if old.get(k) != new.get(k)]
        elif old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")
    return "; ".join(changes)


def without_password(url: str) -> str:
    """A storage URL fit for messages and tags: user:password@ removed."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.split('@', 1)[1]}" if "@" in rest.split("/", 1)[0] else url
