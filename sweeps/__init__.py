"""Sweeps: definitions as data (`sweeps/*.yaml`), Optuna studies, nested MLflow runs, reports.

Three concerns, a folder each; arrows run one way: execution -> analysis -> definitions.

definitions/   what a sweep is: the YAML schema, loading and checking a file, the study plan
execution/     running it: studies, the trial loop, a trial's lease, workers, storage, repair
analysis/      what it found: evidence, the summary types, the report, its text and figures
trial_record.py  the contract between them: the study's record in Optuna (every study and trial attr)
defaults.py    the sweep options' defaults, importable without Optuna (the CLI's --help)
"""
