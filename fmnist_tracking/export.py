"""The MLflow model of a run: `serving_model` (raw pixels in, probabilities out) logged as pt2.

The network itself is built by `fmnist_core.serving` (torch only); this module is the MLflow side.
"""

from __future__ import annotations

import torch

from fmnist_core.checkpoint import Checkpoint
from fmnist_core.serving import serving_model


def log_mlflow_model(client, experiment_id: str, run_id: str, checkpoint: Checkpoint, example, *,
                     name: str = "model") -> str:
    """Log `serving_model(checkpoint)` to the run as an MLflow PyTorch model; returns its model id.

    Saved as pt2 (torch.export: loading it unpickles nothing), with a signature and an input
    example (`example`: float32 pixels [N>1, 784]), so that `mlflow.pyfunc.load_model` and
    `mlflow models serve` work on it without this project's code.
    """
    import mlflow
    from mlflow.models import infer_signature

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
    try:
        mlflow.pytorch.log_model(
            network, name=name, model_id=logged.model_id, run_id=run_id,
            signature=infer_signature(example, output), input_example=example, serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            metadata={"input": "float32 [N, 784]: pixel values 0..255 of 28x28 grayscale images, row-major",
                      "output": "float32 [N, 10]: class probabilities", "classes": list(checkpoint.classes)})
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return logged.model_id
