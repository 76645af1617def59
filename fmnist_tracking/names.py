"""The names runs are found by: MLflow artifact paths and tags that more than one module writes or reads.

A contract between packages (run_log writes a run, the sweeps tag it, `best`, `serve`, `runs` and
the UI's saved view read it back), so each name is typed once, here. Imports nothing: the CLI and
every package can use it. Stores written before keep being read, so keep the strings as they are.
"""

# --- Artifacts of a training run --------------------------------------------------------------------
CHECKPOINT_ARTIFACT = "checkpoint.pt"  # the checkpoint `best`, `evaluate` and `serve` use
VAL_CORRECT_ARTIFACT = "val_correct.npy"  # bool [n_val]: which validation images the best epoch got right
MODEL_NAME = "model"  # the MLflow model inside each run: runs:/<run_id>/model

# --- Artifacts of a sweep's parent run --------------------------------------------------------------
SWEEP_ARTIFACT_DIR = "sweep"  # figures, summary.md, summary.csv, verdicts.json
VERDICTS_ARTIFACT = f"{SWEEP_ARTIFACT_DIR}/verdicts.json"  # its format: fmnist_tracking/verdicts.py

# --- Tags --------------------------------------------------------------------------------------------
SWEEP_TAG = "sweep"  # the sweep's name, on its parent and every child run
SWEEP_ROLE_TAG = "sweep_role"  # PARENT or TRIAL
PARENT, TRIAL = "parent", "trial"
STUDY_TAG = "study"  # the Optuna study (sweep and implementation variant)
TRIAL_TAG = "trial"  # a child run's trial number in its study
SEED_TAG = "seed"
DATASET_DIGEST_TAG = "dataset_digest"  # the splits a run trained on: `best` checks a checkpoint against it
STOP_REASON_TAG = "stop_reason"  # completed, early_stopped, diverged, pruned, heartbeat_lost, worker_lost
FAILURE_TAG = "failure_reason"
NOTE_TAG = "mlflow.note.content"  # MLflow's run description, shown on the run's Overview page
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's nesting of child runs under a parent

SWEEP_PARENTS = f"tags.{SWEEP_ROLE_TAG} = '{PARENT}'"  # search filter: the sweeps' parent runs
SWEEP_TRIALS = f"tags.{SWEEP_ROLE_TAG} = '{TRIAL}'"  # search filter: the sweeps' trial runs


def checkpoint_uri(run_id: str) -> str:
    """Where a run's checkpoint is, as an MLflow artifact URI."""
    return f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}"


def sweep_filter(sweep: str) -> str:
    """Search filter: the runs of one sweep (its parent and its trials)."""
    return f"tags.{SWEEP_TAG} = '{sweep}'"


def is_sweep_parent(tags: dict[str, str]) -> bool:
    return tags.get(SWEEP_ROLE_TAG) == PARENT
