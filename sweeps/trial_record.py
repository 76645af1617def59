"""A trial's record: what a sweep keeps of each trial in its Optuna user attrs, written and read here.

The contract between running a sweep and analysing it. The execution writes (lease.py and
trials.py call the functions below, on the live `optuna.Trial`); the analysis, `--repair`,
recovery and the benchmarks read (`TrialRecord.of(frozen_trial)`). No other module names a key.
The keys are stored in every study, so old studies are read with them: keep them as they are.

    worker          the worker that claimed it (`host:pid`); its absence marks a trial nobody claimed
    mlflow_run_id   its child run in MLflow
    seed            the seed it trained with (grid sweeps with seeds: also a param)
    repeat_of       a repeat of a sampled configuration (TPE/random with seeds): the trial it repeats
    population      how many trials trained with it as one population
    epochs          epochs trained;  epoch_seconds: their mean wall time (the population's)
    history         per-epoch metrics, rounded to 6 digits (the why-figures)
    val_correct     which validation images its best epoch got right: 1 bit an image, base64;
    n_val           with the number of images (paired tests)
    failure         why it failed (diverged, a refused configuration)
    checkpoint      `runs:/<run id>/checkpoint.pt`
    best_epoch, best_val_acc, best_value, test_loss, test_acc   TrainResult.final_metrics()
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from fmnist_tracking.names import checkpoint_uri

WORKER, RUN_ID, SEED, REPEAT_OF = "worker", "mlflow_run_id", "seed", "repeat_of"
ROUND = "round"  # decided sweeps: the round that queued the trial (the study's `rounds` record is the truth)
POPULATION, EPOCHS, EPOCH_SECONDS, HISTORY = "population", "epochs", "epoch_seconds", "history"
VAL_CORRECT, N_VAL, FAILURE, CHECKPOINT = "val_correct", "n_val", "failure", "checkpoint"


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


def repeat(seed: int, of: int) -> dict[str, int]:
    """The user attrs of a queued repeat of trial `of` with another seed (study.enqueue_trial)."""
    return {SEED: seed, REPEAT_OF: of}


def started(trial: optuna.Trial, population: int) -> None:
    trial.set_user_attr(POPULATION, population)


def failed(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(FAILURE, reason)


def trained(trial: optuna.Trial, history: list[dict[str, float]], val_correct) -> None:
    """The per-epoch history and, where known, the bool vector of validation images got right."""
    trial.set_user_attr(EPOCHS, len(history))
    trial.set_user_attr(EPOCH_SECONDS, sum(m["epoch_seconds"] for m in history) / max(1, len(history)))
    trial.set_user_attr(HISTORY, [{k: round(v, 6) for k, v in dict(m, epoch=e).items()}
                                  for e, m in enumerate(history, 1)])
    if val_correct is not None:
        trial.set_user_attr(VAL_CORRECT, pack_correct(val_correct))
        trial.set_user_attr(N_VAL, len(val_correct))


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

    def metric(self, name: str, default: float | None = None) -> float | None:
        """A final metric (`test_acc`, `best_val_acc`, `best_epoch`, ...)."""
        return self.attrs.get(name, default)
