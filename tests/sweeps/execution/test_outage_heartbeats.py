"""The two heartbeat rules of outage.py, each on its own, with two in-process workers on a PostgreSQL
cluster of the test's own (test_outage.PrivatePostgres) that is stopped longer than the grace period.

In a whole sweep (test_outage.py) both rules act at once and the heartbeat threads retry every half
second, so a worker usually beats before another one judges it: a sweep passes most of the time even
without them. Here one worker makes no call during the outage (it lags: it is the case the rules are
for), so each rule decides the outcome on its own, every time.
"""

from __future__ import annotations

import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from test_outage import PrivatePostgres
from test_workers import wait_for

from sweeps.definitions.loader import load_definition
from sweeps.definitions.plan import plan_studies
from sweeps.execution.lease import TrialLease
from sweeps.execution.study import enqueue_grid, open_study
from sweeps.execution.workers import Worker, recover

HEARTBEAT = 1  # second; grace period 3 s


@pytest.fixture
def cluster():
    with PrivatePostgres.started() as started:
        yield started


def claimed_trial(cluster: PrivatePostgres, tmp_path):
    """(worker A, worker B, B's view of the study, A's lease): A holds the one grid point, beaten once."""
    path = tmp_path / "one.yaml"
    path.write_text("description: one point\nspace: {hidden_size: [8]}\n")
    [plan] = plan_studies(load_definition(path))
    url = cluster.database("optuna")
    holder, judge = (Worker.open(url, HEARTBEAT, exclusive=False) for _ in range(2))
    study, _ = open_study(plan, holder.storage)
    enqueue_grid(study, plan)
    held = TrialLease.claim(holder, study, sample=False)  # its heartbeat recorded now; no thread beats after
    return holder, judge, optuna.load_study(study_name=plan.study_name, storage=judge.storage), held


def outage_longer_than_the_grace_period(cluster: PrivatePostgres, meets_it: list[Worker], call, since: float):
    """Stop the cluster; each worker of `meets_it` makes `call(worker)` in a thread, which waits through the
    outage; start the cluster once the last heartbeat is older than the grace period, and join them."""
    cluster.stop()
    threads = [threading.Thread(target=call, args=(worker,)) for worker in meets_it]
    for thread in threads:
        thread.start()
    for worker in meets_it:
        wait_for(lambda worker=worker: worker.storage.outage.down, what="the worker retrying the storage")
    time.sleep(max(0.0, since + meets_it[0].grace + 1 - time.monotonic()))  # the scenario: a long outage
    cluster.start()
    for thread in threads:
        thread.join()


def stale(worker: Worker, study: optuna.Study) -> list[int]:
    """The trials whose heartbeat is older than the grace period by the database's clock (Optuna's test)."""
    return worker.storage._get_stale_trial_ids(study._study_id)


def test_a_worker_back_from_an_outage_judges_others_only_after_a_grace_period_of_its_own(cluster, tmp_path):
    holder, judge, study, held = claimed_trial(cluster, tmp_path)
    outage_longer_than_the_grace_period(cluster, [judge], lambda worker: worker.storage.get_all_studies(),
                                        since=time.monotonic())
    assert stale(judge, study) == [held.trial._trial_id]  # Optuna alone would fail it now

    recover(study, judge, None, "", None)
    assert judge.trial_state(study, held.number) == TrialState.RUNNING  # not judged across the outage
    wait_for(judge.judges_staleness, what="a grace period of the storage up")
    recover(study, judge, None, "", None)  # the holder stayed silent a whole grace period: it is judged
    states = sorted(t.state.name for t in study.get_trials())
    assert judge.trial_state(study, held.number) == TrialState.FAIL and states == ["FAIL", "WAITING"]
    for worker in (holder, judge):
        worker.storage.engine.dispose()


def test_a_worker_back_from_an_outage_beats_for_its_trials_before_its_call_returns(cluster, tmp_path):
    holder, judge, study, held = claimed_trial(cluster, tmp_path)
    outage_longer_than_the_grace_period(cluster, [holder],
                                        lambda worker: worker.trial_state(study, held.number),
                                        since=time.monotonic())
    assert stale(judge, study) == []  # beaten when the holder found the storage back, by no thread of its own
    with judge.storage.engine.connect() as connection:
        beaten_after_the_restart = connection.execute(sqlalchemy.text(
            "SELECT heartbeat > pg_postmaster_start_time()::timestamp FROM trial_heartbeats "
            "WHERE trial_id = :id"), {"id": held.trial._trial_id}).scalar_one()
    assert beaten_after_the_restart
    for worker in (holder, judge):
        worker.storage.engine.dispose()
