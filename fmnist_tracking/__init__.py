"""What a training run leaves behind and shows, beside the training core: MLflow and the terminal.

store.py     the MLflow store, the experiment, run search, the best run, run provenance
run_log.py   one MLflow run per training (RunLogger), `cli.py train` tracked
names.py     the artifact and tag names packages agree on, typed once (imports nothing)
signals.py   SIGTERM as an exception, deferring signals around steps that must not be cut
registry.py  runs table, best checkpoint fetched and verified, Model Registry
verdicts.py  the parent's sweep/verdicts.json: written by a sweep's report, read by `best` (no words)
servers.py   the servers the CLI starts: MLflow UI (and a sweep's saved view), model serving, optuna-dashboard
export.py    the run's MLflow model (pt2) for `mlflow models serve`, logged late from a checkpoint if missing
plots.py     matplotlib figures of a run (curves, confusion matrix, misclassified images)
console.py   the progress of `cli.py train` and of a sweep's packs: bars, log lines, summary (displays only)
defaults.py  the tracking options' defaults, importable without MLflow (the CLI's --help)

Arrows point one way: this package imports fmnist_core; fmnist_core imports nothing of it.
"""
