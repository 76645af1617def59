"""What a training run leaves behind and shows, beside the training core: MLflow and the terminal.

store.py     the MLflow store, the experiment, run search, the best run, run provenance
run_log.py   one MLflow run per training (RunLogger), `cli.py train` tracked
signals.py   SIGTERM as an exception, deferring signals around steps that must not be cut
registry.py  runs table, best checkpoint fetched and verified, Model Registry, the UI command
export.py    the run's MLflow model (pt2) for `mlflow models serve`
plots.py     matplotlib figures of a run (curves, confusion matrix, misclassified images)
console.py   the progress bar and summary of `cli.py train`

Arrows point one way: this package imports fmnist_core; fmnist_core imports nothing of it.
"""
