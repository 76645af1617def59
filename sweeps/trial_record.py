"""The study's record: every attribute a sweep keeps in Optuna, of the study and of each trial, written
and read here, and what is derived from it (a trial's seed, its configuration key, its RunConfig).

The contract between running a sweep and analysing it. The execution writes (lease.py, trials.py,
study.py, rounds.py call the writers below, on the live study or `optuna.Trial`); the analysis,
`--repair`, recovery and the benchmarks read (`TrialRecord.of(frozen_trial)` and the study readers).
No other module names an attribute, a user attr or one of Optuna's system attrs
(tests/sweeps/test_trial_record.py checks). The keys are stored in every study, so old studies are
read with them: keep them as they are.

Study user attrs:
    sweep           the definition's name
    settings        what the study's trials were trained with (plan.settings(); compared on resume)
    mlflow_parent_run_id   the sweep's parent run in MLflow
    rounds          a decided sweep's rounds after the first: [{"round": r, "trials": [[pairs, seed]]}]
    confirmed       --confirm K: the K configurations chosen for confirmation, best first
    recommended     the report's recommendation (label, decision, why), for optuna-dashboard's readers

Trial user attrs:
    worker          the worker that claimed it (`host:pid`); its absence marks a trial nobody claimed
    mlflow_run_id   its child run in MLflow
    seed            the seed it trains with: set when it is queued (grid points, rounds, repeats) and
                    when it is claimed. Not an Optuna param: a seed is not a searched parameter, so
                    optuna-dashboard's importance speaks of the swept ones. Studies before 7 December
                    2026 also have a `seed` param on grid trials, read when the attr is missing.
    round           decided sweeps: the round that queued the trial (the study's `rounds` is the truth)
    repeat_of       a repeat of a sampled configuration (TPE/random with seeds): the trial it repeats
    population      how many trials trained with it as one population
    epochs          epochs trained;  epoch_seconds: their mean wall time (the population's)
    history         per-epoch metrics, rounded to 6 digits (the why-figures)
    val_correct     which validation images its best epoch got right: 1 bit an image, base64;
    n_val           with the number of images (paired tests)
    last_correct    the same images at its last epoch (TrainResult.last_correct): a fixed epoch, chosen
                    on no image, what the verdicts judge on. Trials before 7 December 2026 lack it and
                    are judged on val_correct
    failure         why it failed (diverged, a refused configuration)
    checkpoint      `runs:/<run id>/checkpoint.pt`
    best_epoch, best_val_acc, best_value, test_loss, test_acc   TrainResult.final_metrics()

Optuna's system attrs, read only: `fixed_params` (a queued trial's params), `retry_history` and
`failed_trial` (a failed trial re-queued by Optuna's retry callbacks); optuna-dashboard's note.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from fmnist_core.config import ConfigError, RunConfig
from fmnist_tracking.names import checkpoint_uri

WORKER, RUN_ID, SEED, REPEAT_OF = "worker", "mlflow_run_id", "seed", "repeat_of"
ROUND = "round"  # decided sweeps: the round that queued the trial (the study's `rounds` record is the truth)
POPULATION, EPOCHS, EPOCH_SECONDS, HISTORY = "population", "epochs", "epoch_seconds", "history"
VAL_CORRECT, N_VAL, FAILURE, CHECKPOINT = "val_correct", "n_val", "failure", "checkpoint"
LAST_CORRECT = "last_correct"
# the study's user attrs
SWEEP, SETTINGS, PARENT_RUN, ROUNDS, CONFIRMED, RECOMMENDED = (
    "sweep", "settings", "mlflow_parent_run_id", "rounds", "confirmed", "recommended")
# Optuna's system attrs (written by Optuna; read here only)
FIXED_PARAMS, RETRY_HISTORY, FAILED_TRIAL = "fixed_params", "retry_history", "failed_trial"
SEED_PARAM = "seed"  # grid studies before 7 December 2026 searched the seed as a param


# --- The study's own record ---------------------------------------------------------------------------

def settings(study: optuna.Study) -> dict | None:
    """What the study's trials were trained with; None until its creator has stored them."""
    return study.user_attrs.get(SETTINGS)


def store_settings(study: optuna.Study, sweep: str, stored: dict) -> None:
    """The last step of creating a study (other workers wait for it): its sweep and settings."""
    study.set_user_attr(SWEEP, sweep)
    study.set_user_attr(SETTINGS, stored)


def parent_run_id(study: optuna.Study) -> str | None:
    return study.user_attrs.get(PARENT_RUN)


def set_parent_run_id(study: optuna.Study, run_id: str) -> None:
    study.set_user_attr(PARENT_RUN, run_id)


def rounds(study: optuna.Study) -> list[dict]:
    """A decided sweep's rounds recorded after round 1, oldest first."""
    return list(study.user_attrs.get(ROUNDS) or [])


def record_rounds(study: optuna.Study, recorded: list[dict]) -> None:
    """The whole `rounds` record in one write: the decision to queue a round is made once."""
    study.set_user_attr(ROUNDS, recorded)


def confirmed(study: optuna.Study) -> list:
    """--confirm K: [[[[name, value], ...], first trial number], ...], best first; [] before the choice."""
    return list(study.user_attrs.get(CONFIRMED) or [])


def record_confirmed(study: optuna.Study, chosen: list) -> None:
    study.set_user_attr(CONFIRMED, chosen)


def recommend(study: optuna.Study, recommendation: dict, note: str) -> None:
    """The report's recommendation on the study: a user attr, and the conclusion as its optuna-dashboard
    note (replacing the last report's), so the dashboard says what the sweep concluded."""
    study.set_user_attr(RECOMMENDED, recommendation)
    try:
        import optuna_dashboard
    except ImportError:  # the dashboard is optional at run time; the attr still says it
        return
    optuna_dashboard.save_note(study, note)


def recommended(study: optuna.Study) -> dict | None:
    return study.user_attrs.get(RECOMMENDED)


def retried(trials: list) -> set[int]:
    """Numbers of the failed trials that Optuna re-queued (their copies carry the work on)."""
    return {number for t in trials for number in t.system_attrs.get(RETRY_HISTORY, [])}


def retries(trial: optuna.trial.FrozenTrial) -> int:
    """How many times this trial's work has been retried before it."""
    return len(trial.system_attrs.get(RETRY_HISTORY, []))


def retry_of(queued: optuna.trial.FrozenTrial) -> int | None:
    """The failed trial a queued one repeats (Optuna's retry callbacks), None for a fresh one."""
    return queued.system_attrs.get(FAILED_TRIAL)


# --- A trial's identity: derived here only ------------------------------------------------------------

def _fixed(trial) -> dict:
    """A stored trial's fixed params (queued ones); a live `optuna.Trial` shows only what it suggested."""
    return (trial.system_attrs.get(FIXED_PARAMS) or {}) if isinstance(trial, optuna.trial.FrozenTrial) else {}


def params_of(trial) -> dict:
    """The trial's params without the seed: a queued trial's fixed ones (it has no params yet), else those
    it suggested. In the order they were suggested or queued (the definition's)."""
    params = _fixed(trial) or trial.params
    return {name: value for name, value in params.items() if name != SEED_PARAM}


def seed_of(trial) -> int:
    """The seed a trial trains or trained with. One precedence everywhere: its record's `seed` (every
    queued and claimed trial), else an old grid study's `seed` param (fixed, or suggested), else 0 (a
    sampled trial's first seed)."""
    seed = trial.user_attrs.get(SEED)
    if seed is None:
        seed = _fixed(trial).get(SEED_PARAM, trial.params.get(SEED_PARAM))
    return int(seed or 0)


def config_key(trial) -> tuple:
    """A configuration: the trial's (name, value) pairs without the seed; its seeds share it."""
    return tuple(params_of(trial).items())


def key_of(pairs) -> tuple:
    """A stored [[name, value], ...] (the rounds' and confirmation's records) as a configuration key."""
    return tuple((name, value) for name, value in pairs)


def stored_key(key: tuple) -> list:
    """A configuration key as the records store it."""
    return [list(pair) for pair in key]


def config_of(plan, params: dict, *, source: str = "stored trial") -> RunConfig:
    """The RunConfig a trial with `params` (without its seed) trains: each axis' overrides (bundle labels
    expanded) applied to the plan's base. Raises ConfigError where the base refuses the combination."""
    overrides = {}
    for param in plan.definition.space:
        if param.name in params:
            overrides.update(param.overrides(params[param.name]))
    return plan.base.replace(overrides, source=source)


def trained_config(plan, trial) -> RunConfig:
    """The RunConfig a stored trial trained (for reports): best effort for a space edited since."""
    try:
        return config_of(plan, params_of(trial)).replace({"seed": seed_of(trial)}, source="stored trial")
    except ConfigError:  # a space edited since (settings mismatch is refused on resume): best effort
        return plan.base


# --- Writers: the execution, on the live trial ------------------------------------------------------

def claimed(trial: optuna.Trial, worker: str) -> None:
    trial.set_user_attr(WORKER, worker)


def tracked(trial: optuna.Trial, run_id: str) -> None:
    trial.set_user_attr(RUN_ID, run_id)


def seeded(trial: optuna.Trial, seed: int) -> None:
    trial.set_user_attr(SEED, seed)


def in_round(number: int) -> dict[str, int]:
    """The user attrs of a trial queued by a decided sweep's round `number` (execution/rounds.py)."""
    return {ROUND: number}


def seeded_as(seed: int) -> dict[str, int]:
    """The user attrs of a queued trial that trains with `seed` (grid points, a round's seeds)."""
    return {SEED: seed}


def repeat(seed: int, of: int) -> dict[str, int]:
    """The user attrs of a queued repeat of trial `of` with another seed (study.enqueue_trial)."""
    return {SEED: seed, REPEAT_OF: of}


def started(trial: optuna.Trial, population: int) -> None:
    trial.set_user_attr(POPULATION, population)


def failed(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(FAILURE, reason)


def trained(trial: optuna.Trial, history: list[dict[str, float]], val_correct, last_correct=None) -> None:
    """The per-epoch history and, where known, the bool vectors of validation images got right (at the
    best epoch, and at the last)."""
    trial.set_user_attr(EPOCHS, len(history))
    trial.set_user_attr(EPOCH_SECONDS, sum(m["epoch_seconds"] for m in history) / max(1, len(history)))
    trial.set_user_attr(HISTORY, [{k: round(v, 6) for k, v in dict(m, epoch=e).items()}
                                  for e, m in enumerate(history, 1)])
    if val_correct is not None:
        trial.set_user_attr(VAL_CORRECT, pack_correct(val_correct))
        trial.set_user_attr(N_VAL, len(val_correct))
    if last_correct is not None:
        trial.set_user_attr(LAST_CORRECT, pack_correct(last_correct))


def completed(trial: optuna.Trial, final_metrics: dict[str, float], run_id: str) -> None:
    for key, value in final_metrics.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(CHECKPOINT, checkpoint_uri(run_id))


def pack_correct(correct) -> str:
    """Per-image correctness (bool, n_val) as text for a user attr: 1 bit an image, base64
    (10,000 images -> 1,668 characters)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def unpack_correct(text: str, n: int) -> np.ndarray:
    """The bool vector of `pack_correct`; `n` (`n_val`) drops the padding bits."""
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=n).astype(bool)


def judged_vectors(trials: list[optuna.trial.FrozenTrial]) -> dict[int, np.ndarray | None]:
    """trial number -> the vector the verdicts judge it on: the last epoch's when every trial kept one
    (a fixed epoch, chosen on no image), else every trial's val_correct (a study begun before 7 December
    2026: its epochs chosen on the images that judge them, slightly optimistic; docs/benchmarks.md
    measures by how much). One kind for all, so no pair of configurations is compared across kinds."""
    if not at_last_epoch(trials):
        return selected_vectors(trials)
    return {trial.number: TrialRecord.of(trial).last_correct for trial in trials}


def at_last_epoch(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether every trial kept its last epoch's vector, so the verdicts judge on those (judged_vectors)."""
    return all(LAST_CORRECT in trial.user_attrs for trial in trials)


def selected_vectors(trials: list[optuna.trial.FrozenTrial]) -> dict[int, np.ndarray | None]:
    """trial number -> its best epoch's own vector (val_correct), scored on the images that chose it."""
    return {trial.number: TrialRecord.of(trial).val_correct for trial in trials}


# --- Reader: the analysis, repair, recovery ---------------------------------------------------------

class _Key:
    """A stored key read as an attribute of TrialRecord, `default` where the trial has none."""

    def __init__(self, key: str, default: Any = None):
        self.key, self.default = key, default

    def __get__(self, record: TrialRecord, owner: type) -> Any:
        return record.attrs.get(self.key, self.default)


@dataclass(frozen=True)
class TrialRecord:
    """A read-only view of one trial's record (absent keys read as None, NaN or empty)."""

    attrs: Mapping[str, Any]

    worker = _Key(WORKER)  # str | None
    run_id = _Key(RUN_ID)  # str | None
    seed = _Key(SEED)  # int | None
    repeat_of = _Key(REPEAT_OF)  # int | None
    population = _Key(POPULATION, 1)  # int
    epochs = _Key(EPOCHS)  # int | None
    epoch_seconds = _Key(EPOCH_SECONDS, math.nan)  # float
    failure = _Key(FAILURE)  # str | None
    checkpoint = _Key(CHECKPOINT)  # str | None

    @classmethod
    def of(cls, trial: optuna.Trial | optuna.trial.FrozenTrial) -> TrialRecord:
        return cls(trial.user_attrs)

    @property
    def owner(self) -> str:
        """The worker's name for messages, `?` when unknown."""
        return self.worker or "?"

    @property
    def history(self) -> list[dict[str, float]]:
        return list(self.attrs.get(HISTORY) or [])

    @property
    def val_correct(self) -> np.ndarray | None:
        """The per-image vector, None for trials trained before it was recorded."""
        if VAL_CORRECT not in self.attrs or N_VAL not in self.attrs:
            return None
        return unpack_correct(self.attrs[VAL_CORRECT], int(self.attrs[N_VAL]))

    @property
    def last_correct(self) -> np.ndarray | None:
        """The last epoch's vector, None for trials trained before it was recorded."""
        if LAST_CORRECT not in self.attrs or N_VAL not in self.attrs:
            return None
        return unpack_correct(self.attrs[LAST_CORRECT], int(self.attrs[N_VAL]))


    def metric(self, name: str, default: float | None = None) -> float | None:
        """A final metric (`test_acc`, `best_val_acc`, `best_epoch`, ...)."""
        return self.attrs.get(name, default)
