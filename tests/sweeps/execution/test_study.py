"""sweeps/execution/study.py: from a plan to an Optuna study on a real SQLite storage in tmp_path.

Creating, loading and replacing a study; the settings it stores and refuses to mix; the grid's queue,
each point once; the counts a budget is measured in (a failed trial that was re-queued does not count).
Trials are moved through their states as a worker moves them: study.ask pops the queue, tell finishes,
Optuna's retry callback queues a copy of a failed trial.
"""

import itertools
import textwrap
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from sweeps import trial_record as record
from sweeps.definitions.loader import load_definition
from sweeps.definitions.plan import plan_studies
from sweeps.execution.study import (
    StudyError,
    check_settings,
    default_storage,
    enqueue_grid,
    load_study,
    make_sampler,
    mark_ready,
    open_study,
    study_done,
    trials_claimed,
    trials_done,
    without_password,
)
from sweeps.trial_record import TrialRecord

pytestmark = pytest.mark.integration

GRID = """
    description: a 2 x 2 grid
    base: {epochs: 2}
    space:
      hidden_size: [8, 16]
      lr: [0.05, 0.1]
"""
TPE = """
    description: a sampled search
    sampler: {type: tpe, seed: 0, n_startup_trials: 2}
    pruner: {type: median, n_warmup_steps: 1}
    objective: {metric: val_loss}
    space:
      lr: {low: 0.01, high: 0.1, log: true}
    budget: {n_trials: 2}
"""


@pytest.fixture
def storage(tmp_path):
    """A real Optuna RDB storage on SQLite in tmp_path, and its URL."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.storages.RDBStorage(url), url


def plan(tmp_path, text: str = GRID, name: str = "tiny", **options):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    [made] = plan_studies(load_definition(path), **options)
    return made


def queued_points(study) -> list[tuple]:
    """The queued points, each with its seed where the point has one (kept in the trial's record)."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [tuple(sorted({**record.params_of(t), **({} if TrialRecord.of(t).seed is None else
                                                   {"seed": record.seed_of(t)})}.items())) for t in waiting]


def retry(study, trial) -> None:
    """What a worker does to a trial it cannot finish: fail it and queue a copy of the same point."""
    study.tell(trial, state=TrialState.FAIL)
    [frozen] = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)  # as workers.fail_and_requeue


def test_open_study_creates_then_loads_and_fresh_starts_over(tmp_path, storage):
    rdb, url = storage
    grid = plan(tmp_path)
    study, created = open_study(grid, rdb)
    assert created and study.study_name == "tiny-manual"
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert enqueue_grid(study, grid) == 4
    again, created = open_study(grid, rdb)  # another worker, or the sweep resumed
    assert not created and again._study_id == study._study_id and len(again.trials) == 4
    replaced, created = open_study(grid, rdb, fresh=True)
    assert created and replaced.trials == [] and replaced.user_attrs == {}
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["tiny-manual"]
    nothing_yet, created = open_study(plan(tmp_path, name="other"), rdb, fresh=True)  # nothing to delete
    assert created and nothing_yet.study_name == "other-manual"


def test_open_study_takes_the_definitions_direction_sampler_and_pruner(tmp_path, storage):
    sampled = plan(tmp_path, TPE)
    study, _ = open_study(sampled, storage[0])
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # val_loss
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    assert isinstance(make_sampler(plan(tmp_path)), optuna.samplers.RandomSampler)  # grid: never consulted
    random = plan(tmp_path, TPE.replace("type: tpe, seed: 0, n_startup_trials: 2", "type: random, seed: 4"),
                  name="random")
    assert isinstance(make_sampler(random), optuna.samplers.RandomSampler)
    unit = optuna.distributions.FloatDistribution(0, 1)
    draws = [make_sampler(random).sample_independent(None, None, "x", unit) for _ in range(2)]
    assert draws[0] == draws[1]  # seeded as the file says: two samplers draw alike


def test_check_settings_refuses_a_study_trained_with_other_settings(tmp_path, storage):
    rdb, url = storage
    grid = plan(tmp_path)
    study, _ = open_study(grid, rdb)
    assert check_settings(study, grid, url) is False  # nothing stored yet: the creator is still at work
    mark_ready(study, grid)
    assert study.user_attrs["sweep"] == "tiny" and record.settings(study) is not None
    assert check_settings(study, grid, url) is True
    longer = plan(tmp_path, overrides={"epochs": 3})
    with pytest.raises(StudyError) as caught:
        check_settings(study, longer, "the-storage")
    assert str(caught.value) == (
        "study 'tiny-manual' in the-storage was trained with other settings (epochs: 2 -> 3); re-run with "
        "the old settings to resume it, or add --fresh to start it again")
    seeded = plan(tmp_path, seeds=2)
    with pytest.raises(StudyError, match=r"seeds: 1 -> 2"):
        check_settings(study, seeded, url)
    mark_ready(study, longer)  # stored settings are never overwritten by a later worker
    assert check_settings(optuna.load_study(study_name="tiny-manual", storage=url), grid, url) is True


def test_enqueue_grid_queues_each_point_once_and_a_second_call_none(tmp_path, storage):
    seeded = plan(tmp_path, seeds=2)
    study, _ = open_study(seeded, storage[0])
    assert enqueue_grid(study, seeded) == 8
    expected = {tuple(sorted(dict(hidden_size=h, lr=lr, seed=s).items()))
                for h, lr, s in itertools.product((8, 16), (0.05, 0.1), (0, 1))}
    points = queued_points(study)
    assert len(points) == 8 and set(points) == expected
    assert all("seed" not in t.system_attrs["fixed_params"] for t in study.trials)  # not a searched param
    assert enqueue_grid(study, seeded) == 0 and len(study.trials) == 8
    trial = study.ask()  # a worker takes one and trains it: its point is no longer queued, and not again
    study.tell(trial, 0.9)
    assert enqueue_grid(study, seeded) == 0 and len(study.trials) == 8


def test_enqueue_grid_queues_a_missing_point_again_and_nothing_for_a_sampled_search(tmp_path, storage):
    grid = plan(tmp_path)
    study, _ = open_study(grid, storage[0])
    study.enqueue_trial({"hidden_size": 8, "lr": 0.05})  # a creator stopped half-way: the rest is queued
    assert enqueue_grid(study, grid) == 3 and len(set(queued_points(study))) == 4
    sampled = plan(tmp_path, TPE, name="sampled")
    tpe, _ = open_study(sampled, storage[0])
    assert enqueue_grid(tpe, sampled) == 0 and tpe.trials == []


def test_an_n_trials_budget_below_the_grid_queues_a_seeded_subset(tmp_path, storage):
    subset = plan(tmp_path, n_trials=3)
    study, _ = open_study(subset, storage[0])
    assert subset.total_trials() == 3 and enqueue_grid(study, subset) == 3
    points = queued_points(study)
    grid = {tuple(sorted(dict(hidden_size=h, lr=lr).items())) for h in (8, 16) for lr in (0.05, 0.1)}
    assert len(set(points)) == 3 and set(points) < grid
    assert enqueue_grid(study, subset) == 0
    same = plan(tmp_path, name="same", n_trials=3)
    other, _ = open_study(same, storage[0])
    enqueue_grid(other, same)
    assert queued_points(other) == points  # the same subset every time: a resumed study queues nothing new


def test_trials_done_and_claimed_leave_out_failed_trials_that_were_requeued(tmp_path, storage):
    grid = plan(tmp_path)
    study, _ = open_study(grid, storage[0])
    enqueue_grid(study, grid)
    first, second, third = study.ask(), study.ask(), study.ask()  # three of the four points popped
    assert (trials_done(study), trials_claimed(study)) == (0, 4)
    study.tell(first, 0.9)
    retry(study, second)  # interrupted: failed, a copy queued
    assert len(study.trials) == 5
    assert trials_done(study) == 1  # the failed one is not done: its copy will be
    assert trials_claimed(study) == 4  # all but the re-queued failure: #0, #2, the fourth point, the copy
    study.tell(third, state=TrialState.FAIL)  # diverged: failed for good, and counts
    assert (trials_done(study), trials_claimed(study)) == (2, 4)
    study.tell(study.ask(), 0.8)  # the fourth point
    copy = study.ask()
    assert copy.number == 4 and study.trials[4].system_attrs["failed_trial"] == 1
    retry(study, copy)  # the copy fails too and is queued again: its history holds both failures
    requeued = study.trials[5]
    assert requeued.state == TrialState.WAITING and requeued.system_attrs["retry_history"] == [1, 4]
    assert trials_done(study) == 3  # #0, #2 and #3
    assert trials_claimed(study) == 4  # #0, #2, #3 and the queued #5


def test_study_done_for_a_grid_is_nothing_queued_or_running(tmp_path, storage):
    grid = plan(tmp_path)
    study, _ = open_study(grid, storage[0])
    enqueue_grid(study, grid)
    assert not study_done(study, grid)
    running = [study.ask() for _ in range(4)]
    assert not study_done(study, grid)  # all taken, none finished
    for trial in running[:3]:
        study.tell(trial, 0.9)
    retry(study, running[3])
    assert not study_done(study, grid)  # the copy is queued
    study.tell(study.ask(), 0.8)
    assert study_done(study, grid)


def test_study_done_for_a_sampled_search_is_its_budget_used_up(tmp_path, storage):
    sampled = plan(tmp_path, TPE)
    study, _ = open_study(sampled, storage[0])
    assert not study_done(study, sampled)  # nothing yet, two to go
    study.tell(study.ask(), 0.5)
    trial = study.ask()
    assert not study_done(study, sampled)  # one running
    retry(study, trial)
    assert not study_done(study, sampled)  # its copy is queued
    study.tell(study.ask(), 0.4)
    assert study_done(study, sampled) and trials_done(study) == 2
    timed = plan(tmp_path, TPE.replace("n_trials: 2", "timeout: 60"), name="timed")
    forever, _ = open_study(timed, storage[0])
    for _ in range(3):
        forever.tell(forever.ask(), 0.5)
    assert not study_done(forever, timed)  # a timeout-only budget is never used up by trials


def test_load_study_finds_the_stored_study_or_says_how_to_make_it(tmp_path, storage):
    rdb, url = storage
    grid = plan(tmp_path)
    with pytest.raises(StudyError) as caught:
        load_study(grid, url)
    assert str(caught.value) == (f"no study 'tiny-manual' in {url}; run `python cli.py sweep tiny` first "
                                 "(same --impl and --storage)")
    with pytest.raises(StudyError, match="no study 'tiny-manual' in the shared database;"):
        load_study(grid, rdb, "the shared database")
    study, _ = open_study(grid, rdb)
    enqueue_grid(study, grid)
    loaded = load_study(grid, url)
    assert loaded.study_name == "tiny-manual" and len(loaded.trials) == 4
    with pytest.raises(StudyError, match="no study 'tiny-torch'"):  # another --impl: another study
        load_study(plan(tmp_path, impl="torch"), url)


@pytest.mark.parametrize("url, shown", [
    ("postgresql://optuna:secret@db.example:5432/optuna", "postgresql://db.example:5432/optuna"),
    ("postgresql://optuna@db/optuna", "postgresql://db/optuna"),
    ("postgresql+psycopg2://u:p%40ss@host/db", "postgresql+psycopg2://host/db"),
    ("postgresql://host/db", "postgresql://host/db"),
    ("sqlite:////data/runs@2024/optuna.db", "sqlite:////data/runs@2024/optuna.db"),  # @ in a path stays
    ("sqlite:///optuna.db", "sqlite:///optuna.db"),
])
def test_without_password_removes_the_credentials_of_a_url(url, shown):
    assert without_password(url) == shown
    assert "secret" not in without_password(url)


def test_default_storage_is_optuna_db_next_to_an_sqlite_mlflow_store(tmp_path):
    mlruns = tmp_path / "somewhere" / "mlruns"
    assert default_storage(f"sqlite:///{mlruns / 'mlflow.db'}") == f"sqlite:///{mlruns / 'optuna.db'}"
    assert mlruns.is_dir()  # made, so that the storage can be created there
