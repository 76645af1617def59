"""sweeps/trial_record.py: what the execution writes of a trial is what the analysis reads back.

Written on live trials of a real (in-memory) Optuna study, read from its frozen trials, as a sweep
and its report do; and no module of sweeps/ but this one names a trial's user attr.
"""

from __future__ import annotations

import ast
import math

import numpy as np
import optuna
import pytest
from support import ROOT

from sweeps import trial_record as record
from sweeps.trial_record import TrialRecord

pytestmark = pytest.mark.unit


def test_the_verdicts_judge_on_the_last_epochs_vectors_and_never_mix_the_two_kinds():
    study = optuna.create_study(direction="maximize")
    rng = np.random.default_rng(1)
    selected, last = rng.random((3, 50)) < 0.8, rng.random((3, 50)) < 0.8
    for i in range(3):
        trial = study.ask()
        record.trained(trial, [{"val_acc": 0.8, "epoch_seconds": 1.0}], selected[i], last[i])
        study.tell(trial, 0.8)
    trials = study.get_trials(deepcopy=False)
    assert record.at_last_epoch(trials)
    assert all(np.array_equal(v, last[n]) for n, v in record.judged_vectors(trials).items())
    assert all(np.array_equal(v, selected[n]) for n, v in record.selected_vectors(trials).items())
    old = study.ask()  # a trial trained before last epochs' vectors were kept: every trial falls back
    record.trained(old, [{"val_acc": 0.8, "epoch_seconds": 1.0}], selected[0])
    study.tell(old, 0.8)
    judged = record.judged_vectors(study.get_trials(deepcopy=False))
    assert not record.at_last_epoch(study.get_trials(deepcopy=False))
    assert all(np.array_equal(v, selected[n % 3]) for n, v in judged.items())


def test_what_the_execution_writes_the_reader_gives_back():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    correct = np.random.default_rng(0).random(1001) < 0.9  # not a multiple of 8: the padding is dropped
    record.claimed(trial, "host:123")
    record.tracked(trial, "run-1")
    record.seeded(trial, 2)
    record.started(trial, 4)
    record.trained(trial, [{"val_acc": 0.81234567, "epoch_seconds": 1.0},
                           {"val_acc": 0.9, "epoch_seconds": 3.0}], correct)
    record.completed(trial, {"test_acc": 0.88, "best_epoch": 2}, "run-1")
    study.tell(trial, 0.9)
    read = TrialRecord.of(study.trials[0])
    assert (read.worker, read.owner, read.run_id, read.seed, read.population) == ("host:123", "host:123",
                                                                                   "run-1", 2, 4)
    assert read.epochs == 2 and read.epoch_seconds == 2.0
    assert read.history == [{"val_acc": 0.812346, "epoch_seconds": 1.0, "epoch": 1},
                            {"val_acc": 0.9, "epoch_seconds": 3.0, "epoch": 2}]
    assert np.array_equal(read.val_correct, correct)
    assert read.metric("test_acc") == 0.88 and read.metric("best_epoch") == 2
    assert read.checkpoint == "runs:/run-1/checkpoint.pt" and read.failure is None


def test_a_queued_repeat_carries_its_seed_and_origin():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1}, user_attrs=record.repeat(3, of=7))
    trial = study.ask()
    assert (TrialRecord.of(trial).seed, TrialRecord.of(trial).repeat_of) == (3, 7)


def test_an_old_or_failed_trial_reads_as_missing_not_as_an_error():
    study = optuna.create_study()
    trial = study.ask()
    record.failed(trial, "diverged at epoch 2")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    read = TrialRecord.of(study.trials[0])
    assert read.failure == "diverged at epoch 2"
    assert (read.worker, read.owner, read.run_id, read.seed, read.repeat_of) == (None, "?", None, None, None)
    assert read.population == 1 and read.epochs is None and math.isnan(read.epoch_seconds)
    assert read.history == [] and read.val_correct is None and read.checkpoint is None
    assert read.metric("test_acc") is None and math.isnan(read.metric("test_acc", math.nan))


def test_a_vector_packs_into_one_bit_an_image():
    correct = np.random.default_rng(1).random(10_000) < 0.5
    text = record.pack_correct(correct)
    assert len(text) == 1668 and np.array_equal(record.unpack_correct(text, 10_000), correct)


def test_no_other_module_names_a_study_or_trial_attribute():
    """Study and trial attributes (user attrs and Optuna's system attrs) are read and written through
    trial_record only: no other module of the product touches `user_attrs`, `system_attrs` or their
    setters, on a study or a trial, nor spells one of Optuna's system attr keys."""
    attributes = {"user_attrs", "set_user_attr", "system_attrs", "set_system_attr"}
    keys = {record.FIXED_PARAMS, record.RETRY_HISTORY, record.FAILED_TRIAL, record.PARENT_RUN}
    paths = [*(ROOT / "sweeps").rglob("*.py"), *(ROOT / "fmnist_tracking").rglob("*.py"),
             *(ROOT / "bench").rglob("*.py"), ROOT / "cli.py"]
    offenders = []
    for path in sorted(paths):
        if path.name == "trial_record.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, ast.Attribute) and node.attr in attributes
            spelled = isinstance(node, ast.Constant) and node.value in keys
            if named or spelled:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
    assert len(paths) > 40  # the walk saw the product, not an empty folder
