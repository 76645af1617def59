"""The trials bar names its number for what it is: the top single trial, not the sweep's best."""

from types import SimpleNamespace

import optuna
import pytest
from tqdm import tqdm

from sweeps.execution.trials import show_progress

pytestmark = pytest.mark.unit


def test_the_trials_bar_shows_the_top_trial_and_never_calls_it_the_best():
    study = optuna.create_study(direction="maximize")
    for value in (0.8990, 0.9018, 0.9005):
        study.add_trial(optuna.trial.create_trial(value=value))
    plan = SimpleNamespace(definition=SimpleNamespace(metric="val_acc"))
    with tqdm(total=3, disable=True) as bar:
        show_progress(bar, study, plan, held=None, worker=None, progress=True)
        assert bar.postfix == "top trial val_acc=0.9018"
        assert "best" not in bar.postfix
