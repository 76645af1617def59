"""Decided sweeps end to end on tiny synthetic data: rounds of seeds queued where undecided, recorded once,
and the same decisions after an interruption at any point of a round (real SQLite Optuna storage, real
MLflow store). The interruptions are reached through execution/rounds.py's hooks, never a timer."""

import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from sweeps import trial_record as record
from sweeps.analysis import rounds as analysis_rounds
from sweeps.execution import rounds, runner
from sweeps.trial_record import seed_of

EXPERIMENT = "rounds-test"

DECIDED = """
    description: width grid, decided
    base: {epochs: 2, batch_size: 32}
    space:
      hidden_size: [8, 12, 16]
    decide: {max_seeds: 3, margin: 0.2}
"""


@pytest.fixture
def stores(tmp_path, mlflow_store):
    return {"storage": f"sqlite:///{tmp_path / 'optuna.db'}", "tracking_uri": mlflow_store,
            "experiment": EXPERIMENT}


def write(tmp_path, text: str, name: str = "decided"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def study_of(stores, name="decided-manual") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=stores["storage"])


def trained(study) -> list[tuple]:
    """(hidden_size, seed) of every COMPLETE trial, sorted."""
    return sorted((t.params["hidden_size"], seed_of(t)) for t in study.get_trials()
                  if t.state == TrialState.COMPLETE)


def test_a_decided_sweep_adds_seeds_only_where_undecided_and_records_each_round(tmp_path, stores,
                                                                                 tiny_splits, capsys):
    [summary] = runner.run_sweep(write(tmp_path, DECIDED), splits=tiny_splits, progress=False, **stores)
    study = study_of(stores)
    recorded = record.rounds(study)
    done = trained(study)
    # round 1: seed 0 of every width; every later round is recorded before its trials are queued
    assert {(h, 0) for h in (8, 12, 16)} <= set(done)
    assert [item["round"] for item in recorded] == list(range(2, 2 + len(recorded)))
    queued = sorted((dict(analysis_rounds.entry_key(e)[0])["hidden_size"], analysis_rounds.entry_key(e)[1])
                    for item in recorded for e in item["trials"])
    assert sorted(done) == sorted({(h, 0) for h in (8, 12, 16)} | set(queued))  # exactly once each
    assert len(recorded) >= 1  # with one seed each nothing is decided: round 2 is always needed
    assert len(recorded[0]["trials"]) == 3  # ... and gives every configuration its second seed
    assert max(seed for _, seed in done) <= 2  # max_seeds 3
    state = analysis_rounds.state(study, runner.plan_studies(runner.load_definition(
        write(tmp_path, DECIDED)))[0])
    assert not state.decision.additions  # it stopped because it was decided or out of rounds
    # what the terminal, summary.md and the note say: a line per round and the verdict words
    out = capsys.readouterr().out
    assert "Round 1 (3 trials)" in out and "Round 2:" in out
    assert summary.rounds and summary.rounds[0].startswith("Round 1 (3 trials)")
    words = {row.vs_best for row in summary.rows}
    assert words <= {"best", "worse", "tied", "undecided"}
    # max_seeds 3 is the first look (no verdict before three seeds each): decided, or stopped undecided
    conclusion = summary.conclusion
    assert f"instead of {3 * 3}" in conclusion or f"of the fixed design's {3 * 3}" in conclusion
    assert summary.margin == 0.2


class Stop(BaseException):
    """Raised by a hook: the worker dies there (as SIGKILL would, nothing after it runs)."""


@pytest.mark.parametrize("error", [Stop, KeyboardInterrupt], ids=["killed", "ctrl-c"])
@pytest.mark.parametrize("point", ["before_record", "recorded", "queued_one"])
def test_an_interrupted_round_resumes_to_the_same_decisions(tmp_path, stores, tiny_splits, monkeypatch,
                                                            point, error):
    """Stopped between a round's last trial and its record, between the record and the queue, or half-way
    through the queue, by a kill (nothing after the point runs) or Ctrl-C: re-running queues and trains
    exactly what an uninterrupted sweep does."""
    path = write(tmp_path, DECIDED)
    reference_stores = dict(stores, storage=f"sqlite:///{tmp_path / 'reference.db'}")
    runner.run_sweep(path, splits=tiny_splits, progress=False, **reference_stores)
    reference = study_of(reference_stores)

    calls = []

    def stop(study):
        calls.append(point)
        if len(calls) == 1:
            raise error(point)

    monkeypatch.setitem(rounds.hooks, point, stop)
    with pytest.raises(error):
        runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    monkeypatch.delitem(rounds.hooks, point)
    runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    resumed = study_of(stores)
    assert trained(resumed) == trained(reference)
    assert record.rounds(resumed) == record.rounds(reference)
    assert not resumed.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))


def test_seeds_force_a_fixed_design_and_max_seeds_is_refused_with_them(tmp_path, stores, tiny_splits):
    path = write(tmp_path, DECIDED)
    [summary] = runner.run_sweep(path, splits=tiny_splits, progress=False, seeds=2, **stores)
    assert trained(study_of(stores)) == [(h, s) for h in (8, 12, 16) for s in (0, 1)]
    assert not record.rounds(study_of(stores)) and not summary.rounds
    assert {row.vs_best for row in summary.rows} <= {"best", "worse", "tied", "undecided"}
    with pytest.raises(runner.ConfigError, match="--seeds and --max-seeds"):
        runner.run_sweep(path, splits=tiny_splits, progress=False, seeds=2, max_seeds=3, **stores)


SAMPLED = """
    description: a sampled search, its best confirmed
    base: {hidden_size: 8, epochs: 1, batch_size: 64}
    sampler: {type: random, seed: 3}
    space:
      lr: {low: 0.01, high: 0.5, log: true}
    budget: {n_trials: 4}
"""


def test_confirm_runs_the_top_k_sampled_configurations_through_the_rounds(tmp_path, stores, tiny_splits):
    path = write(tmp_path, SAMPLED, name="sampled")
    [summary] = runner.run_sweep(path, splits=tiny_splits, progress=False, confirm=2, max_seeds=3,
                                 margin=0.2, **stores)
    study = study_of(stores, "sampled-manual")
    sampled = [t for t in study.get_trials() if "repeat_of" not in t.user_attrs]
    assert len(sampled) == 4  # the budget is sampled first
    chosen = analysis_rounds.confirmed(study)
    best_two = sorted(sampled, key=lambda t: (-t.value, t.number))[:2]
    assert [number for _, number in chosen] == [t.number for t in best_two]
    repeats = [t for t in study.get_trials() if "repeat_of" in t.user_attrs]
    assert repeats and {t.user_attrs["repeat_of"] for t in repeats} <= {t.number for t in best_two}
    assert all(t.state == TrialState.COMPLETE for t in repeats)
    # every repeat trained its own seed: seeds 1.. of the confirmed configurations, none twice
    seeds = sorted((t.user_attrs["repeat_of"], t.user_attrs["seed"]) for t in repeats)
    assert len(seeds) == len(set(seeds)) and all(1 <= seed <= 2 for _, seed in seeds)
    words = [row.vs_best for row in summary.rows]
    assert words[0] == "best" and set(words[1:2]) <= {"worse", "tied", "undecided"}
    assert words[2:] == ["not tested", "not tested"]  # the two not confirmed
    assert "not among the 2 confirmed" in summary.conclusion


@pytest.mark.parametrize("locked", [True, False])
def test_two_workers_finding_a_round_finished_queue_the_next_once(make_postgres_database, monkeypatch,
                                                                 locked):
    """Two workers on PostgreSQL find round 1 finished at the same moment. Under the study's claim lock
    one records and queues round 2, the other finds it queued and adds nothing: each new seed once. The
    control (no lock) shows what the lock prevents: both record and queue the round."""
    import contextlib
    import threading

    from support import add, plan_of, right_on

    from sweeps.execution.workers import Worker

    plan = plan_of({"description": "decided", "space": {"hidden_size": [8, 16]},
                    "decide": {"max_seeds": 3}}, "decided")
    url = make_postgres_database("rounds")
    study = optuna.create_study(study_name=plan.study_name, storage=url, direction="maximize")
    for hidden in (8, 16):
        add(study, plan, {"hidden_size": hidden}, correct=right_on(0.9, hidden), seed=0)
    workers = [Worker.open(url, heartbeat=60, exclusive=False) for _ in range(2)]
    if not locked:
        monkeypatch.setattr(Worker, "claiming", lambda self, study: contextlib.nullcontext())
    recorded, go = threading.Event(), threading.Event()

    def hold(study):  # the first to record waits until the other has tried too
        recorded.set()
        go.wait(10)

    monkeypatch.setitem(rounds.hooks, "recorded", hold)
    queued = [0, 0]

    def advance(index: int) -> None:
        mine = optuna.load_study(study_name=plan.study_name, storage=workers[index].storage)
        queued[index] = rounds.advance(mine, plan, workers[index], say=lambda line: None)

    first = threading.Thread(target=advance, args=(0,))
    first.start()
    assert recorded.wait(30)
    monkeypatch.setitem(rounds.hooks, "recorded", lambda study: None)
    second = threading.Thread(target=advance, args=(1,))
    second.start()
    second.join(5 if locked else 30)  # under the lock it waits for the first: it cannot finish yet
    assert second.is_alive() == locked
    go.set()
    first.join(30)
    second.join(30)
    waiting = [(record.params_of(t)["hidden_size"], seed_of(t))
               for t in study.get_trials(states=(TrialState.WAITING,))]
    if locked:
        assert sorted(queued) == [0, 2] and sorted(waiting) == [(8, 1), (16, 1)]
        assert len(record.rounds(study)) == 1
    else:
        assert queued == [2, 2] and sorted(waiting) == [(8, 1), (8, 1), (16, 1), (16, 1)]


def test_report_rebuilds_a_sweep_as_it_was_decided_not_as_the_file_says_today(tmp_path, stores,
                                                                             tiny_splits):
    """A grid without a `decide:` block, decided with --max-seeds: `cli.py report` replays its rounds."""
    path = write(tmp_path, """
        description: width grid, decided from the command line
        base: {epochs: 2, batch_size: 32}
        space:
          hidden_size: [8, 16]
    """, name="plain")
    [ran] = runner.run_sweep(path, splits=tiny_splits, progress=False, max_seeds=2, margin=0.2, **stores)
    [rebuilt] = runner.rebuild_reports(path, **stores)
    assert rebuilt.rounds == ran.rounds and rebuilt.rounds
    assert [row.vs_best for row in rebuilt.rows] == [row.vs_best for row in ran.rows]
    assert rebuilt.conclusion == ran.conclusion


def test_a_time_budget_stops_between_rounds_and_a_rerun_reaches_the_uninterrupted_verdicts(
        tmp_path, stores, tiny_splits, capsys):
    """--time-budget never changes a verdict: spent after round 1, the sweep stops (no new round, parent
    KILLED, decision `stopped`, the command that goes on); running it again ends with the trials, rounds,
    verdicts and recommendation of a sweep that was never stopped."""
    from mlflow import MlflowClient

    path = write(tmp_path, DECIDED)
    reference_stores = dict(stores, storage=f"sqlite:///{tmp_path / 'reference.db'}", experiment="reference")
    [reference] = runner.run_sweep(path, splits=tiny_splits, progress=False, **reference_stores)
    [stopped] = runner.run_sweep(path, splits=tiny_splits, progress=False, time_budget=1e-6, **stores)
    out = capsys.readouterr().out
    assert "Stopped: --time-budget 1e-06 s spent" in out and "run `python cli.py sweep decided`" in out
    study = study_of(stores)
    assert trained(study) == [(8, 0), (12, 0), (16, 0)] and not record.rounds(study)  # round 1 only
    assert stopped.recommendation.decision == "stopped"
    assert stopped.recommendation.next_command == "python cli.py sweep decided"
    client = MlflowClient(stores["tracking_uri"])
    parent = client.get_run(record.parent_run_id(study))
    assert parent.info.status == "KILLED" and parent.data.tags["decision"] == "stopped"

    [resumed] = runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    study = study_of(stores)
    assert trained(study) == trained(study_of(reference_stores))
    assert record.rounds(study) == record.rounds(study_of(reference_stores))
    assert [(r.label, r.vs_best) for r in resumed.rows] == [(r.label, r.vs_best) for r in reference.rows]
    assert resumed.recommendation.label == reference.recommendation.label
    assert resumed.recommendation.decision == reference.recommendation.decision != "stopped"
    parent = client.get_run(record.parent_run_id(study))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["recommended"] == resumed.recommendation.label


def test_every_round_leaves_the_answer_so_far_where_users_look(tmp_path, stores, tiny_splits, capsys):
    """After each round the parent run holds the answer so far (decision `running`, its note, tags and
    verdicts.json), the terminal prints it, and every place agrees with the final recommendation once
    the sweep closes: parent tags, verdicts.json, the child runs' tags, the study's attr and its
    optuna-dashboard note; the study searched no `seed` param."""
    import json

    import optuna_dashboard
    from mlflow import MlflowClient

    from fmnist_tracking import verdicts

    path = write(tmp_path, DECIDED)
    seen = []
    real = runner.report.build_report

    def spy(*args, **kwargs):
        summary = real(*args, **kwargs)
        seen.append((kwargs.get("state", "final"), summary.recommendation.decision))
        return summary

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(runner.report, "build_report", spy)
    try:
        [summary] = runner.run_sweep(path, splits=tiny_splits, progress=False, **stores)
    finally:
        monkeypatch.undo()
    study = study_of(stores)
    rounds_run = 1 + len(record.rounds(study))
    assert seen[:-1] == [("running", "running")] * (rounds_run - 1) and seen[-1][0] == "final"
    assert capsys.readouterr().out.count("So far: Recommended: ") == rounds_run - 1
    chosen = summary.recommendation
    assert chosen.decision in ("decided", "undecided")
    client = MlflowClient(stores["tracking_uri"])
    parent = client.get_run(record.parent_run_id(study))
    assert (parent.data.tags["recommended"], parent.data.tags["decision"]) == (chosen.label, chosen.decision)
    assert parent.data.tags["recommended_run_id"] == chosen.run_id
    assert parent.data.metrics["recommended_val_acc"] == pytest.approx(chosen.val_acc)
    assert parent.data.tags["seeds"] == ", ".join(f"{row.label}: {len(row.trials)}" for row in summary.rows)
    assert verdicts.read_recommended(client, parent) == json.loads(json.dumps(chosen.as_record()))
    assert record.recommended(study)["label"] == chosen.label
    assert chosen.label in optuna_dashboard.get_note(study)
    children = {run.info.run_id: run for run in client.search_runs([parent.info.experiment_id])
                if run.info.run_id != parent.info.run_id}
    for row in summary.rows:
        for trial in row.trials:
            tags = children[trial.user_attrs["mlflow_run_id"]].data.tags
            assert tags["verdict"] == row.vs_best
            assert tags["recommended"] == ("yes" if row.label == chosen.label else "no")
    assert all("seed" not in t.distributions for t in study.trials)  # the seed is not searched
