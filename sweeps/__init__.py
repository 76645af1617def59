"""Sweeps: definitions as data (`sweeps/*.yaml`), Optuna studies, nested MLflow runs, reports.

definitions.py  load and check the YAML files (definition_schema.py: their schema, pydantic models)
study.py        definition -> study plan -> Optuna study (create, resume, --fresh)
runner.py       `cli.py sweep`: join or create the study and its parent run, work on it, close it
trials.py       the trial loop: claim a population, train it, hand its MLflow work to the background
lease.py        a trial's life: claimed, tracked, trained, told or re-queued; recovery of dead workers
background.py   the thread that does a sweep's MLflow work while training goes on
storage.py      Optuna's storage, heartbeats, the SQLite guard;  repair.py: --repair
supervisor.py   --workers N: local worker processes, signals passed on
report.py       the sweep's answer: configurations compared with the best (evidence.py), logged to the parent
report_text.py  that answer as text: ranked table, conclusion, summary.csv, verdicts.json, the run note
sweep_figures.py  accuracy with intervals, curves, time, Optuna's plots
why_figures.py  the diagnostics behind the outcome, chosen by the fields a sweep varies
"""
