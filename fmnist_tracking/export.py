"""The MLflow model of a run: `serving_model` (raw pixels in, probabilities out) logged as pt2, at the
end of training or later from the run's checkpoint (`ensure_model`, for serving and registering).

The network itself is built by `fmnist_core.serving` (torch only); this module is the MLflow side.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException

from fmnist_core.config import first_line
from fmnist_tracking.names import CHECKPOINT_ARTIFACT
from fmnist_tracking.store import TrackingError

if TYPE_CHECKING:
    from fmnist_core.checkpoint import Checkpoint

# torch and the core's modules are imported where a model is built or a checkpoint read: `serve` of a run
# that has its MLflow model (ensure_model finds it) needs neither.

# (hidden size, activation) of the networks whose MLflow model this process has loaded back and served its
# input example with: MLflow's check that a logged model serves, done once per shape (log_mlflow_model).
_SERVED_SHAPES: set[tuple[int, str]] = set()


def log_mlflow_model(client, experiment_id: str, run_id: str, checkpoint: Checkpoint, example, *,
                     name: str = "model") -> str:
    """Log `serving_model(checkpoint)` to the run as an MLflow PyTorch model; returns its model id.

    Saved as pt2 (torch.export: loading it unpickles nothing), with a signature and an input
    example (`example`: float32 pixels [N>1, 784]), so that `mlflow.pyfunc.load_model` and
    `mlflow models serve` work on it without this project's code. MLflow checks that a model serves
    its input example by loading it back, a third of the cost of logging it: that is done for the first
    model of each shape in a process (a sweep's later trials differ only in their weights).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from fmnist_core.mlp_manual import TRACING_LOCK
    from fmnist_core.serving import serving_model

    network = serving_model(checkpoint)
    with torch.no_grad():
        output = network(torch.from_numpy(example)).numpy()
    # Created here, in the run's experiment: mlflow.pytorch.log_model alone files the model
    # under the fluent API's active experiment (the Default one), not the run's.
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                                        params={k: str(v) for k, v in checkpoint.config.items()},
                                        model_type="fmnist-mlp")
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)  # log_model writes to the process-wide store
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    metadata = {"input": "float32 [N, 784]: pixel values 0..255 of 28x28 grayscale images, row-major",
                "output": "float32 [N, 10]: class probabilities", "classes": list(checkpoint.classes)}
    shape = (checkpoint.hidden_size, checkpoint.config["activation"])
    try:
        with TRACING_LOCK:  # torch.export traces the network: not beside a torch.compile of the trainer's
            mlflow.pytorch.log_model(
                network, name=name, model_id=logged.model_id, run_id=run_id,
                signature=infer_signature(example, output), input_example=example, serialization_format="pt2",
                pip_requirements=requirements, metadata=metadata,
                validate_serving_input=shape not in _SERVED_SHAPES)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    _SERVED_SHAPES.add(shape)
    return logged.model_id


def run_checkpoint(client, run_id: str, needed_for: str) -> Checkpoint:
    """The run's checkpoint.pt, downloaded and loaded (weights_only); a run without a readable one is a
    TrackingError that ends with `needed_for`, what cannot be done without it."""
    from fmnist_core.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory(prefix="fmnist-checkpoint-") as scratch:
        return load_checkpoint(download_checkpoint(client, run_id, scratch, needed_for))


def download_checkpoint(client, run_id: str, folder, needed_for: str = "") -> Path:
    """The run's checkpoint.pt downloaded into `folder`; a TrackingError (ending with `needed_for`) when
    the run has none or it cannot be read."""
    try:
        return Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(folder)))
    except (MlflowException, OSError) as error:
        reason = f"run {run_id} has no readable {CHECKPOINT_ARTIFACT} artifact ({first_line(error)})"
        raise TrackingError(f"{reason}: {needed_for}" if needed_for else reason) from None


def ensure_model(client, run, *, name: str = "model") -> str:
    """The id of the run's MLflow model `name` (`runs:/<run id>/<name>`); when the run has none, it is
    logged first from the run's checkpoint.pt (loaded with weights_only=True).

    The input example of a model logged this way is random pixels of the right shape: the run's
    images are not at hand here, and an example only shows the format.
    """
    import numpy as np

    run_id = run.info.run_id
    outputs = client.get_run(run_id).outputs  # a run found by search_runs carries no outputs
    for output in outputs.model_outputs if outputs else []:
        if client.get_logged_model(output.model_id).name == name:
            return output.model_id
    from fmnist_core.data import INPUT_SIZE

    checkpoint = run_checkpoint(client, run_id, f"it has no MLflow model {name!r} either, so none to serve")
    example = np.random.default_rng(0).integers(0, 256, size=(5, INPUT_SIZE)).astype(np.float32)
    return log_mlflow_model(client, run.info.experiment_id, run_id, checkpoint, example, name=name)
