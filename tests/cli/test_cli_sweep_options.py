"""`cli.py sweep`'s options, in-process and before anything trains: the combinations it refuses (exit code
2 and one line), and `--timeout`, from the option to the plan to the trial loop that honours it.

Nothing here opens a store or loads data: the refusals come before either, the option's way to the plan
stops at a stand-in for the runner, and the trial loop runs on an in-memory Optuna study with a stand-in
for training and a clock the test moves.
"""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from cli import cli
from sweeps.definitions.loader import load_definition, parse_definition
from sweeps.definitions.plan import plan_studies
from sweeps.definitions.request import SweepRequest
from sweeps.execution import repair, runner, study, trials
from sweeps.execution.background import Background
from sweeps.execution.workers import Worker

pytestmark = pytest.mark.unit
ONE_AT_A_TIME = "use one of --create, --repair and --workers N at a time"


@pytest.fixture
def no_store(monkeypatch):
    """A refusal that regressed fails here at once, instead of running the sweep it should refuse."""
    def reached(*args, **kwargs):
        raise AssertionError("not refused: the sweep went on to open its stores")

    monkeypatch.setattr(runner.stores, "sqlite_guard", reached)
    monkeypatch.setattr(repair, "repair_sweep", reached)


@pytest.mark.parametrize("args, message", [
    (["hidden_size", "--seeds", "2", "--max-seeds", "3"], "--seeds and --max-seeds: give one"),
    (["hidden_size", "--create", "--repair"], ONE_AT_A_TIME),
    (["hidden_size", "--create", "--workers", "2"], ONE_AT_A_TIME),
    (["hidden_size", "--confirm", "3"], "--confirm: a grid sweep decides every configuration itself"),
    (["hidden_size", "--n-trials", "3"], "--n-trials: a decided sweep sizes itself"),
    (["search", "--max-seeds", "3"], "rounds of seeds over every configuration are for grid sweeps"),
    (["search", "--confirm", "3", "--seeds", "2"], "--confirm and --seeds: confirmation adds seeds itself"),
    (["hidden_size", "--margin", "1.5"], "--margin"),
])
def test_sweep_refuses_option_combinations_in_one_line_with_exit_code_2(args, message, tmp_path, no_store):
    result = CliRunner().invoke(cli, ["sweep", *args, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error")]  # click's usage
    assert message in error and "Traceback" not in result.output  # lines may come first, then this one
    assert not (tmp_path / "optuna.db").exists()  # refused before any store was opened


def test_timeout_reaches_the_request_and_the_plan(monkeypatch):
    asked = []
    monkeypatch.setattr(runner, "run_sweep", asked.append)
    result = CliRunner().invoke(cli, ["sweep", "learning_rate", "--timeout", "7.5", "--time-budget", "30"])
    assert result.exit_code == 0, result.output
    [request] = asked
    assert request.timeout == 7.5 and request.time_budget == 30
    [plan] = plan_studies(load_definition(request.name), request)
    assert plan.timeout == 7.5


def test_the_definitions_timeout_holds_unless_the_option_overrides_it():
    raw = {"description": "Widths", "sampler": "tpe", "budget": {"timeout": 60},
           "space": {"hidden_size": [8, 16]}}
    definition = parse_definition(raw, name="widths", path=None)
    assert plan_studies(definition, SweepRequest("widths"))[0].timeout == 60
    assert plan_studies(definition, SweepRequest("widths", timeout=5))[0].timeout == 5


class MemoryStorage(optuna.storages.InMemoryStorage):
    engine = None  # no database: an exclusive worker claims without a lock

    def get_heartbeat_interval(self) -> None:  # as SQLite: no heartbeats
        return None


def test_the_trial_loop_asks_for_no_new_trial_once_the_timeout_has_passed(monkeypatch):
    """Three grid points, one per population, each population 4 s on the test's clock, --timeout 5: the
    first two are trained (the second starts at 4 s), the third is left queued for the next invocation."""
    raw = {"description": "Widths", "base": {"epochs": 1}, "space": {"hidden_size": [8, 16, 32]}}
    [plan] = plan_studies(parse_definition(raw, name="widths", path=None), SweepRequest("widths", timeout=5))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = MemoryStorage()
    grid = optuna.create_study(study_name=plan.study_name, storage=storage)
    study.enqueue_grid(grid, plan)
    worker = Worker(storage, exclusive=True, name="this:1")
    now = [0.0]
    monkeypatch.setattr(trials, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=lambda s: None))
    trained = []

    def train_group(study_, plan_, leases, splits, tracker, background, shown, progress=None):  # stand-in
        now[0] += 4.0
        for held in leases:
            trained.append(held.config.hidden_size)
            held.settle(TrialState.COMPLETE, 0.5)

    monkeypatch.setattr(trials, "train_group", train_group)
    tracker = SimpleNamespace(client=None, experiment_id="", parent_run_id=None)
    background = Background()
    try:
        closes = trials.trial_loop(grid, plan, None, tracker, worker, background, 1, shown=lambda held: None,
                                   on_round=lambda: None)
    finally:
        background.close()
    assert trained == [8, 16]
    assert [t.state for t in grid.get_trials()] == [TrialState.COMPLETE] * 2 + [TrialState.WAITING]
    assert closes  # nothing left running: this worker closes the invocation
