"""Defaults of the tracking options, in a module that imports nothing: the CLI reads them for its --help
without loading MLflow."""

DEFAULT_EXPERIMENT = "fmnist"  # the MLflow experiment runs and sweeps go to
